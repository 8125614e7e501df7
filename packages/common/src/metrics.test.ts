import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { HotCounter } from './metrics.js';

describe('HotCounter', () => {
  it('shows every increment made before a scrape, once, by label value', async () => {
    const registry = new Registry();
    const frames = new HotCounter<'type'>({
      name: 'test_frames_total',
      help: 'Frames.',
      labelNames: ['type'],
      registers: [registry],
    });
    frames.inc('ack');
    frames.inc('ack');
    frames.inc('ping', 3);
    const text = await registry.metrics();
    expect(text).toContain('test_frames_total{type="ack"} 2');
    expect(text).toContain('test_frames_total{type="ping"} 3');
    // A second scrape adds nothing that was already added.
    frames.inc('ack');
    const values = (await frames.counter.get()).values;
    expect(values.find((value) => value.labels.type === 'ack')?.value).toBe(3);
    expect(values.find((value) => value.labels.type === 'ping')?.value).toBe(3);
  });

  it('counts without a label, from zero', async () => {
    const registry = new Registry();
    const bytes = new HotCounter({ name: 'test_bytes_total', help: 'Bytes.', registers: [registry] });
    expect(await registry.metrics()).toContain('test_bytes_total 0');
    bytes.inc(undefined, 252);
    bytes.inc(undefined, 48);
    expect(await registry.metrics()).toContain('test_bytes_total 300');
  });

  it('refuses a negative or non-finite increment at the call, counting nothing, and scrapes on', async () => {
    const registry = new Registry();
    const bytes = new HotCounter({ name: 'test_refused_total', help: 'Bytes.', registers: [registry] });
    bytes.inc(undefined, 5);
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => bytes.inc(undefined, bad)).toThrow(/test_refused_total: cannot add .*finite amount/);
    }
    expect(await registry.metrics()).toContain('test_refused_total 5');
  });

  it('refuses more than one label name', () => {
    expect(
      () =>
        new HotCounter<'a' | 'b'>({
          name: 'test_two_total',
          help: 'Two.',
          labelNames: ['a', 'b'],
          registers: [],
        }),
    ).toThrow(/at most one label name/);
  });
});

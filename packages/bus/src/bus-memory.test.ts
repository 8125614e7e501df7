import { ManualClock, PushdError } from '@pushd/common';
import { describe, expect, it, vi } from 'vitest';
import { describeBusContract } from './bus.contract.js';
import type { Bus } from './bus.js';
import { MemoryBroker, MemoryBus } from './bus-memory.js';
import { subjectMatches } from './subject-match.js';

describeBusContract('MemoryBus', async () => {
  const broker = new MemoryBroker();
  const opened: Bus[] = [];
  return {
    async createBus(streams) {
      const bus = new MemoryBus({ broker, streams });
      opened.push(bus);
      return bus;
    },
    async teardown() {
      await Promise.all(opened.map((bus) => bus.close()));
    },
  };
});

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);

describe('subjectMatches', () => {
  it.each([
    ['a', 'a', true],
    ['a', 'b', false],
    ['a', 'a.b', false],
    ['a.b', 'a', false],
    ['a.*', 'a.b', true],
    ['a.*', 'a.b.c', false],
    ['*.b', 'a.b', true],
    ['a.*.c', 'a.bb.c', true],
    ['a.>', 'a', false],
    ['a.>', 'a.b', true],
    ['a.>', 'a.b.c', true],
    ['>', 'a', true],
    ['>', 'a.b', true],
    ['*', 'a.b', false],
    ['ab', 'a', false],
    ['a.b', 'a.bc', false],
    ['pushd.events.>', 'pushd.events.gateway', true],
    ['pushd.events.>', 'pushd.eventsx.gateway', false],
  ])('%s matches %s: %s', (pattern, subject, expected) => {
    expect(subjectMatches(pattern, subject)).toBe(expected);
  });
});

describe('MemoryBus specifics', () => {
  it('uses a private broker by default: two default buses do not see each other', async () => {
    const a = new MemoryBus();
    const b = new MemoryBus();
    const seen: string[] = [];
    b.subscribe('x', (data) => seen.push(text(data)));
    a.publish('x', bytes('hello'));
    await a.flush();
    await b.flush();
    expect(seen).toEqual([]);
    await Promise.all([a.close(), b.close()]);
  });

  it('drops stream messages older than maxAgeMs, using the injected clock', async () => {
    const clock = new ManualClock();
    const broker = new MemoryBroker({ clock });
    const bus = new MemoryBus({ broker, streams: [{ name: 'S', subjects: ['s.>'], maxAgeMs: 60_000 }] });
    await bus.publishDurable('s.a', bytes('old'));
    clock.advance(45_000);
    await bus.publishDurable('s.a', bytes('recent'));
    clock.advance(30_000); // 'old' is 75 s old, 'recent' 30 s
    const seen: string[] = [];
    bus.consume({
      stream: 'S',
      consumer: 'c',
      handler: async (data) => {
        seen.push(text(data));
      },
    });
    await vi.waitFor(() => expect(seen).toEqual(['recent']));
    await bus.close();
  });

  it('forgets a dedupKey once the duplicate window (default 2 minutes, at most maxAgeMs) is over', async () => {
    const clock = new ManualClock();
    const bus = new MemoryBus({
      clock,
      streams: [
        { name: 'S', subjects: ['s.>'] },
        { name: 'SHORT', subjects: ['short.>'], maxAgeMs: 60_000 },
      ],
    });
    expect(await bus.publishDurable('s.a', bytes('1'), { dedupKey: 'k' })).toEqual({
      seq: 1,
      duplicate: false,
    });
    expect(await bus.publishDurable('short.a', bytes('1'), { dedupKey: 'k' })).toEqual({
      seq: 1,
      duplicate: false,
    });
    clock.advance(59_999);
    expect(await bus.publishDurable('short.a', bytes('2'), { dedupKey: 'k' })).toEqual({
      seq: 1,
      duplicate: true,
    });
    clock.advance(1);
    expect(await bus.publishDurable('short.a', bytes('3'), { dedupKey: 'k' })).toEqual({
      seq: 2,
      duplicate: false,
    });
    clock.advance(59_999);
    expect(await bus.publishDurable('s.a', bytes('2'), { dedupKey: 'k' })).toEqual({
      seq: 1,
      duplicate: true,
    });
    clock.advance(1);
    expect(await bus.publishDurable('s.a', bytes('3'), { dedupKey: 'k' })).toEqual({
      seq: 2,
      duplicate: false,
    });
    await bus.close();
  });

  it('redelivers a message whose handler takes longer than redeliverAfterMs (at least once)', async () => {
    const bus = new MemoryBus({ streams: [{ name: 'S', subjects: ['s.>'] }] });
    const counts: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const consumer = bus.consume({
      stream: 'S',
      consumer: 'slow',
      redeliverAfterMs: 50,
      concurrency: 2,
      handler: async (_data, meta) => {
        counts.push(meta.deliveryCount);
        await gate;
      },
    });
    await bus.publishDurable('s.a', bytes('x'));
    await vi.waitFor(() => expect(counts).toEqual([1, 2]));
    release();
    await consumer.stop();
    await bus.close();
  });

  it('throws for consume() on a stream the broker does not have', () => {
    const bus = new MemoryBus();
    expect(() => bus.consume({ stream: 'NOPE', consumer: 'c', handler: async () => {} })).toThrow(PushdError);
  });

  it('keeps delivering to other subscribers when one handler throws', async () => {
    const bus = new MemoryBus();
    const seen: string[] = [];
    bus.subscribe('t', () => {
      throw new Error('boom');
    });
    bus.subscribe('t', (data) => seen.push(text(data)));
    bus.publish('t', bytes('1'));
    bus.publish('t', bytes('2'));
    await bus.flush();
    expect(seen).toEqual(['1', '2']);
    await bus.close();
  });

  it('refuses traffic once closed', async () => {
    const bus = new MemoryBus();
    await bus.close();
    expect(() => bus.publish('x', bytes('x'))).toThrow(PushdError);
    await expect(bus.publishDurable('x', bytes('x'))).rejects.toBeInstanceOf(PushdError);
  });

  it('rounds robin among queue group members', async () => {
    const bus = new MemoryBus();
    const counts = [0, 0, 0];
    for (let i = 0; i < 3; i++) bus.subscribe('q', () => counts[i]!++, { queue: 'g' });
    for (let i = 0; i < 30; i++) bus.publish('q', bytes('x'));
    await bus.flush();
    expect(counts).toEqual([10, 10, 10]);
    await bus.close();
  });
});

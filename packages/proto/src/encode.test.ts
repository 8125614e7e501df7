import { describe, expect, it } from 'vitest';
import { encodeMessage } from './encode.js';
import { Event, EventBatch, EventType, PushLogApplied } from './gen/pushd/v1/bus.js';

const event = (tokens: number): Event =>
  Event.create({
    type: EventType.EVENT_TYPE_ARRIVED,
    accessId: 1000,
    pushId: 'p-0123456789',
    msgId: 42,
    atMs: 1_764_400_000_000,
    tokens: Array.from({ length: tokens }, (_, index) => `token-${index}`),
    tokensAtMs: Array.from({ length: tokens }, (_, index) => 1_764_400_000_000 + index),
  });

describe('encodeMessage', () => {
  it('gives the bytes a fresh writer gives, call after call, small after large', () => {
    // Large then small: a kept writer has a buffer bigger than what it writes next.
    for (const message of [EventBatch.create({ events: [event(500), event(3)] }), EventBatch.create({})]) {
      const bytes = encodeMessage(EventBatch, message);
      expect(Buffer.from(bytes).equals(Buffer.from(EventBatch.encode(message).finish()))).toBe(true);
      expect(EventBatch.decode(bytes)).toEqual(message);
    }
    const single = event(1);
    expect(Event.decode(encodeMessage(Event, single))).toEqual(single);
  });

  it('returns bytes of their own: a later call does not change an earlier result', () => {
    const first = encodeMessage(Event, event(2));
    const copy = Buffer.from(first);
    encodeMessage(Event, event(9));
    expect(Buffer.from(first).equals(copy)).toBe(true);
  });

  it('starts clean after an encode that threw midway', () => {
    // A sequence beyond uint64 makes the writer throw after it has written the partition field.
    expect(() =>
      encodeMessage(PushLogApplied, PushLogApplied.create({ partition: 3, throughSeq: 2 ** 70 })),
    ).toThrow();
    const message = EventBatch.create({ events: [event(2)] });
    expect(EventBatch.decode(encodeMessage(EventBatch, message))).toEqual(message);
  });

  it('encodes a result over the kept-writer cap, and a small one after it', () => {
    const huge = EventBatch.create({ events: [event(40_000)] });
    const bytes = encodeMessage(EventBatch, huge);
    expect(bytes.byteLength).toBeGreaterThan(256 * 1024);
    expect(EventBatch.decode(bytes).events[0]?.tokens).toHaveLength(40_000);
    expect(EventBatch.decode(encodeMessage(EventBatch, EventBatch.create({})))).toEqual(
      EventBatch.create({}),
    );
  });
});

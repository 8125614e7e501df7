import { type Bus, MemoryBus, streams, subjects, withDurablePublish } from '@pushd/bus';
import { PushdError, silentLogger } from '@pushd/common';
import { type Event, EventBatch, EventType, Platform } from '@pushd/proto';
import { waitFor } from '@pushd/testkit';
import { Counter, Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { EventBatcher, type EventBatcherOptions } from './event-batcher.js';

const arrived = (msgId: number): Event => ({
  type: EventType.EVENT_TYPE_ARRIVED,
  accessId: 1_500_000_001,
  pushId: String(msgId),
  msgId,
  token: 'a'.repeat(40),
  platform: Platform.PLATFORM_ANDROID,
  atMs: 1_767_225_600_000,
  tokens: [],
  tokensAtMs: [],
  windowless: false,
});

/**
 * A bus that records every durable publish (as the msg ids of its batch) and can be told to fail or to
 * hold publishes; what it lets through goes to a MemoryBus with the event stream.
 */
class RecordingBus {
  readonly memory = new MemoryBus({ streams: [streams.events] });
  /** Msg ids of each batch that was stored, in order. */
  readonly stored: number[][] = [];
  /** Subjects of every attempt, stored or not. */
  readonly attempts: string[] = [];
  failures = 0;
  private held: (() => void)[] = [];
  hold = false;

  readonly bus: Bus = withDurablePublish(this.memory, async (real, subject, data) => {
    this.attempts.push(subject);
    if (this.failures > 0) {
      this.failures--;
      throw new PushdError('UNAVAILABLE', 'stream unreachable (test)');
    }
    if (this.hold) {
      await new Promise<void>((resolve) => this.held.push(resolve));
    }
    const result = await real(subject, data);
    this.stored.push(EventBatch.decode(data).events.map((e) => e.msgId));
    return result;
  });

  get heldCount(): number {
    return this.held.length;
  }

  releaseHeld(): void {
    for (const release of this.held.splice(0)) release();
  }

  /** All stored msg ids, in publish order. */
  get storedIds(): number[] {
    return this.stored.flat();
  }
}

const batchers: EventBatcher[] = [];
afterEach(async () => {
  for (const batcher of batchers.splice(0)) await batcher.stop();
});

function makeBatcher(bus: Bus, options: Partial<EventBatcherOptions> = {}) {
  const failures = new Counter({ name: 'test_failures_total', help: 'test', registers: [new Registry()] });
  const batcher = new EventBatcher({
    bus,
    source: 'gateway',
    logger: silentLogger(),
    failures,
    // Long enough never to fire on its own in a test that does not want it to.
    flushIntervalMs: 3_600_000,
    // Tests that leave the bus failing stop at once.
    stopRetryMs: 0,
    ...options,
  });
  batchers.push(batcher);
  const failureCount = async () => (await failures.get()).values[0]?.value ?? 0;
  return { batcher, failureCount };
}

describe('EventBatcher', () => {
  it('splits batches by size, so that SENT events carrying thousands of tokens stay under 1 MB a publish', async () => {
    const recording = new RecordingBus();
    const { batcher } = makeBatcher(recording.bus);
    const sizes: number[] = [];
    let tokens = 0;
    recording.memory.subscribe(subjects.events('gateway'), (data) => {
      sizes.push(data.length);
      for (const event of EventBatch.decode(data).events) tokens += event.tokens.length;
    });
    for (let n = 0; n < 25; n++) {
      batcher.add({
        type: EventType.EVENT_TYPE_SENT,
        accessId: 1,
        pushId: '1',
        msgId: 7,
        platform: Platform.PLATFORM_ANDROID,
        token: '',
        tokens: Array.from({ length: 2_000 }, (_, i) => `${n}`.padStart(8, '0') + `${i}`.padStart(32, '0')),
        tokensAtMs: [],
        windowless: false,
        atMs: 0,
      });
    }
    await batcher.flush();
    await recording.memory.flush();
    expect(tokens).toBe(50_000);
    expect(sizes.length).toBeGreaterThan(1);
    for (const size of sizes) expect(size).toBeLessThan(1024 * 1024);
  });

  it('publishes a batch as soon as it holds maxBatch events, on the source subject', async () => {
    const recording = new RecordingBus();
    const { batcher } = makeBatcher(recording.bus, { maxBatch: 3 });
    const published: Event[][] = [];
    recording.memory.subscribe(subjects.events('gateway'), (data) =>
      published.push(EventBatch.decode(data).events),
    );

    batcher.add(arrived(1));
    batcher.add(arrived(2));
    batcher.add(arrived(3));
    await waitFor(() => published.length >= 1, 'the first batch');
    // One batch with all three: two events alone never triggered a publish.
    expect(recording.stored).toEqual([[1, 2, 3]]);
    expect(published).toEqual([[arrived(1), arrived(2), arrived(3)]]);
    expect(recording.attempts).toEqual(['pushd.events.gateway']);

    for (const n of [4, 5, 6, 7]) batcher.add(arrived(n));
    await waitFor(() => recording.stored.length >= 2, 'the second batch');
    await batcher.flush();
    expect(recording.stored).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
  });

  it('publishes what it holds once the flush interval passes', async () => {
    const recording = new RecordingBus();
    makeBatcher(recording.bus, { maxBatch: 500, flushIntervalMs: 20 }).batcher.add(arrived(1));
    batchers[0]!.add(arrived(2));
    await waitFor(() => recording.stored.length >= 1, 'a batch published by the interval');
    expect(recording.stored).toEqual([[1, 2]]);
  });

  it('splits what it holds into batches of at most maxBatch, in order', async () => {
    const recording = new RecordingBus();
    recording.failures = 1;
    const { batcher } = makeBatcher(recording.bus, { maxBatch: 4 });
    // The first publish fails, so the events pile up past one batch.
    for (let n = 1; n <= 10; n++) batcher.add(arrived(n));
    await waitFor(() => recording.failures === 0, 'the failed attempt');
    // The first flush may be the failed run still finishing; the second publishes.
    await batcher.flush();
    await batcher.flush();
    expect(recording.stored).toEqual([
      [1, 2, 3, 4],
      [5, 6, 7, 8],
      [9, 10],
    ]);
  });

  it('keeps a batch whose publish failed and publishes it on the next flush, losing and repeating nothing', async () => {
    // First no stream stores the subject (the MemoryBus refuses), then the stream appears.
    const bus = new MemoryBus();
    const { batcher, failureCount } = makeBatcher(bus, { maxBatch: 2 });
    batcher.add(arrived(1));
    batcher.add(arrived(2));
    await waitFor(async () => (await failureCount()) === 1, 'the failed publish to be counted');
    batcher.add(arrived(3));
    await batcher.flush();
    expect(await failureCount()).toBe(2);

    bus.broker.addStream(streams.events);
    const consumed: number[] = [];
    const consumer = bus.consume({
      stream: streams.events.name,
      consumer: 'test',
      handler: async (data) => {
        consumed.push(...EventBatch.decode(data).events.map((e) => e.msgId));
      },
    });
    try {
      batcher.add(arrived(4));
      await batcher.flush();
      await waitFor(() => consumed.length >= 4, 'all four events in the stream');
      await batcher.flush();
      await bus.flush();
      expect(consumed).toEqual([1, 2, 3, 4]);
    } finally {
      await consumer.stop();
    }
  });

  it('retries by itself on the interval after a failure', async () => {
    const recording = new RecordingBus();
    recording.failures = 2;
    const { batcher, failureCount } = makeBatcher(recording.bus, { flushIntervalMs: 20 });
    batcher.add(arrived(1));
    batcher.add(arrived(2));
    await waitFor(() => recording.stored.length >= 1, 'the events to be published after two failures');
    expect(await failureCount()).toBe(2);
    expect(recording.storedIds).toEqual([1, 2]);
  });

  it('drops the oldest events past maxBuffered while it cannot publish', async () => {
    const recording = new RecordingBus();
    recording.failures = Number.POSITIVE_INFINITY;
    const { batcher, failureCount } = makeBatcher(recording.bus, { maxBatch: 3, maxBuffered: 5 });
    // Every third event starts a publish, which fails.
    for (let n = 1; n <= 9; n++) batcher.add(arrived(n));
    await batcher.flush();
    expect(await failureCount()).toBeGreaterThan(0);
    expect(recording.stored).toEqual([]);

    recording.failures = 0;
    await batcher.flush();
    // 9 events, room for 5: the newest five are kept, in order.
    expect(recording.storedIds).toEqual([5, 6, 7, 8, 9]);
  });

  it('drops only the oldest events when the buffer overflows while a publish is in flight', async () => {
    const recording = new RecordingBus();
    recording.hold = true;
    const { batcher } = makeBatcher(recording.bus, { maxBatch: 2, maxBuffered: 4 });
    batcher.add(arrived(1));
    batcher.add(arrived(2)); // publishes [1, 2]; the bus holds the call
    await waitFor(() => recording.heldCount === 1, 'the publish of [1, 2] to be in flight');
    // Meanwhile more events come than the buffer holds: [1, 2] are the oldest, and are in flight anyway.
    for (const n of [3, 4, 5]) batcher.add(arrived(n));
    recording.hold = false;
    recording.releaseHeld();
    await batcher.flush();
    await batcher.flush();
    // Everything added after the batch in flight must be published: none of it was the oldest.
    expect(recording.storedIds).toEqual([1, 2, 3, 4, 5]);
  });

  it('publishes up to maxInFlight batches at once, and puts failed ones back in order before newer events', async () => {
    const recording = new RecordingBus();
    recording.hold = true;
    const { batcher, failureCount } = makeBatcher(recording.bus, { maxBatch: 2, maxInFlight: 3 });
    for (let n = 1; n <= 10; n++) batcher.add(arrived(n));
    // [1, 2] went alone (the buffer reached maxBatch); the rest piled up meanwhile.
    await waitFor(() => recording.heldCount === 1, 'the first publish in flight');
    recording.releaseHeld();
    // The next round: three batches wait for the stream at once, the fourth for the round to end.
    await waitFor(() => recording.heldCount === 3, 'three publishes in flight');
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(recording.heldCount).toBe(3);
    recording.hold = false;
    recording.releaseHeld();
    await batcher.flush();
    await batcher.flush();
    expect(recording.stored).toEqual([
      [1, 2],
      [3, 4],
      [5, 6],
      [7, 8],
      [9, 10],
    ]);

    // The first batch of a round fails, the others are stored; the failed one goes back ahead of newer events.
    recording.stored.length = 0;
    recording.failures = 1;
    for (let n = 11; n <= 16; n++) batcher.add(arrived(n));
    await batcher.flush();
    expect(await failureCount()).toBe(1);
    recording.failures = 1;
    batcher.add(arrived(17));
    await batcher.flush();
    expect(await failureCount()).toBe(2);
    await batcher.flush();
    expect(recording.stored).toEqual([[13, 14], [15, 16], [11, 12], [17]]);
  });

  it('drops a tenth of maxBuffered at once when full, counting the drops, so an outage costs one log line per many', async () => {
    const recording = new RecordingBus();
    recording.failures = Number.POSITIVE_INFINITY;
    const dropped = new Counter({ name: 'test_dropped_total', help: 'test', registers: [new Registry()] });
    const lines: unknown[] = [];
    const logger = { ...silentLogger(), error: (...args: unknown[]) => lines.push(args) } as never;
    const { batcher } = makeBatcher(recording.bus, { maxBatch: 1_000, maxBuffered: 100, dropped, logger });
    for (let n = 1; n <= 150; n++) batcher.add(arrived(n));
    const droppedCount = (await dropped.get()).values[0]?.value ?? 0;
    // 150 events, room for 100: 50 went, ten at a time (a tenth of the bound), in five drops.
    expect(droppedCount).toBe(50);
    expect(lines).toHaveLength(5);
    recording.failures = 0;
    await batcher.flush();
    expect(recording.storedIds).toEqual(Array.from({ length: 100 }, (_, i) => 51 + i));
  });

  it('publishes what it holds when stopped', async () => {
    const recording = new RecordingBus();
    const { batcher } = makeBatcher(recording.bus);
    batcher.add(arrived(1));
    batcher.add(arrived(2));
    expect(recording.stored).toEqual([]);
    await batcher.stop();
    expect(recording.stored).toEqual([[1, 2]]);
  });

  it('keeps trying to publish what it holds when stopped, through a short outage', async () => {
    const recording = new RecordingBus();
    const { batcher, failureCount } = makeBatcher(recording.bus, { stopRetryMs: 5_000 });
    batcher.add(arrived(1));
    batcher.add(arrived(2));
    recording.failures = 2;
    await batcher.stop();
    expect(recording.stored).toEqual([[1, 2]]);
    expect(recording.attempts).toHaveLength(3);
    expect(await failureCount()).toBe(2);
  });
});

import { type Bus, type EventSource, subjects } from '@pushd/bus';
import type { Logger } from '@pushd/common';
import { type Event, EventBatch, encodeMessage } from '@pushd/proto';
import type { Counter } from 'prom-client';

/** Estimated size budget of one published batch, well under NATS's default 1 MB payload limit. */
const MAX_BATCH_BYTES = 512 * 1024;
/**
 * Upper estimates of an event's encoded size without its tokens, per token (40 characters + framing) and
 * per arrival time (a varint of a millisecond timestamp).
 */
const EVENT_OVERHEAD_BYTES = 128;
const TOKEN_BYTES = 44;
const TIMESTAMP_BYTES = 7;

export interface EventBatcherOptions {
  bus: Bus;
  source: EventSource;
  logger: Logger;
  /** Counts batches that failed to publish (and were retried). */
  failures: Counter;
  /** Counts events dropped because the buffer was full (the stream unreachable for too long). */
  dropped?: Counter;
  /** Longest an event waits before its batch is published. Default: 50 ms. */
  flushIntervalMs?: number;
  /** A batch is published as soon as it holds this many events. Default: 500. */
  maxBatch?: number;
  /**
   * Batches published at once, each waiting for the stream's acknowledgement. 1 keeps the events' order
   * in the stream, even across failures (presence needs it: a session's DISCONNECTED must follow its
   * CONNECTED); more hides the round trip to JetStream when events pour in (a fan-out's acks), at the cost
   * of order between batches. Default: 1.
   */
  maxInFlight?: number;
  /**
   * Events held while the durable stream is unreachable; past this the oldest are dropped (and logged),
   * so that an outage cannot exhaust the gateway's memory. Default: 200000.
   */
  maxBuffered?: number;
  /**
   * How long stop() keeps trying to publish what is left when a publish fails (a NATS reconnect, a
   * JetStream leader election), with doubling pauses from 100 ms; 0: one attempt. Default: 5000 ms, well
   * inside a service's shutdown grace.
   */
  stopRetryMs?: number;
}

/**
 * Collects delivery events and publishes them in batches to the durable stream, so that counting costs one
 * publish per batch, not per device. On failure the batch is kept and retried on the next flush.
 */
export class EventBatcher {
  /** Events not yet handed to a publish; batches in flight are out of it and come back if they fail. */
  private buffer: Event[] = [];
  private readonly timer: NodeJS.Timeout;
  private flushing: Promise<void> | undefined;
  private readonly maxBatch: number;
  private readonly maxInFlight: number;
  private readonly maxBuffered: number;

  constructor(private readonly options: EventBatcherOptions) {
    this.maxBatch = options.maxBatch ?? 500;
    this.maxInFlight = Math.max(1, options.maxInFlight ?? 1);
    this.maxBuffered = options.maxBuffered ?? 200_000;
    this.timer = setInterval(() => void this.flush(), options.flushIntervalMs ?? 50);
    this.timer.unref();
  }

  add(event: Event): void {
    this.buffer.push(event);
    if (this.buffer.length > this.maxBuffered) this.dropOldest();
    if (this.buffer.length >= this.maxBatch) void this.flush();
  }

  /** Publishes everything buffered; concurrent calls share one run. */
  flush(): Promise<void> {
    this.flushing ??= this.publishAll().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    const deadline = performance.now() + (this.options.stopRetryMs ?? 5_000);
    // The last arrivals and disconnects of a gateway going away: one failed publish must not lose them.
    for (let pauseMs = 100; ; pauseMs *= 2) {
      await this.flush();
      if (this.buffer.length === 0 || performance.now() + pauseMs > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
    if (this.buffer.length > 0) {
      this.options.logger.error({ events: this.buffer.length }, 'stopping with unpublished delivery events');
    }
  }

  /**
   * Drops the oldest events once the buffer is over its bound: a tenth of the bound at once (at least the
   * excess), so that an outage costs one array shift and one log line per many events, not per event.
   */
  private dropOldest(): void {
    const excess = this.buffer.length - this.maxBuffered;
    const dropped = Math.min(this.buffer.length, Math.max(excess, Math.ceil(this.maxBuffered / 10)));
    this.buffer.splice(0, dropped);
    this.options.dropped?.inc(dropped);
    this.options.logger.error({ dropped }, 'event buffer full: oldest delivery events dropped');
  }

  /**
   * Takes the next batch off the buffer: at most maxBatch events, and no more than fit MAX_BATCH_BYTES (a
   * SENT event can carry thousands of tokens; NATS refuses payloads over 1 MB by default), at least one.
   */
  private takeBatch(): Event[] {
    let bytes = 0;
    let length = Math.min(this.maxBatch, this.buffer.length);
    for (let i = 0; i < length; i++) {
      const event = this.buffer[i] as Event;
      bytes +=
        EVENT_OVERHEAD_BYTES + event.tokens.length * TOKEN_BYTES + event.tokensAtMs.length * TIMESTAMP_BYTES;
      if (bytes > MAX_BATCH_BYTES) {
        length = Math.max(1, i);
        break;
      }
    }
    return this.buffer.splice(0, length);
  }

  /**
   * Publishes in rounds of up to maxInFlight batches. A round's failed batches go back to the front of the
   * buffer in their order and the run ends (the interval retries); its other batches are stored.
   */
  private async publishAll(): Promise<void> {
    while (this.buffer.length > 0) {
      const round: { batch: Event[]; published: Promise<unknown> }[] = [];
      while (round.length < this.maxInFlight && this.buffer.length > 0) {
        const batch = this.takeBatch();
        let data: Uint8Array;
        try {
          data = encodeMessage(EventBatch, { events: batch });
        } catch (error) {
          // Not transient: retrying would block every later event. Callers validate, so this is a bug.
          this.options.logger.error({ err: error, events: batch.length }, 'unencodable event batch dropped');
          continue;
        }
        round.push({
          batch,
          published: this.options.bus.publishDurable(subjects.events(this.options.source), data),
        });
      }
      const results = await Promise.allSettled(round.map((entry) => entry.published));
      const failed: Event[] = [];
      let lastError: unknown;
      results.forEach((result, i) => {
        if (result.status === 'fulfilled') return;
        lastError = result.reason;
        failed.push(...(round[i] as { batch: Event[] }).batch);
      });
      if (failed.length === 0) continue;
      this.options.failures.inc(results.filter((result) => result.status === 'rejected').length);
      // Events added meanwhile are newer: the failed ones go before them, and the bound still holds.
      this.buffer = failed.concat(this.buffer);
      if (this.buffer.length > this.maxBuffered) this.dropOldest();
      this.options.logger.warn(
        { err: lastError, events: this.buffer.length },
        'publishing delivery events failed; will retry',
      );
      return;
    }
  }
}

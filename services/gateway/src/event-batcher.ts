import { type Bus, type EventSource, subjects } from '@pushd/bus';
import type { Logger } from '@pushd/common';
import { type Event, EventBatch } from '@pushd/proto';
import type { Counter } from 'prom-client';

/** Estimated size budget of one published batch, well under NATS's default 1 MB payload limit. */
const MAX_BATCH_BYTES = 512 * 1024;
/** Upper estimates of an event's encoded size without its tokens, and per token (40 characters + framing). */
const EVENT_OVERHEAD_BYTES = 128;
const TOKEN_BYTES = 44;

export interface EventBatcherOptions {
  bus: Bus;
  source: EventSource;
  logger: Logger;
  /** Counts batches that failed to publish (and were retried). */
  failures: Counter;
  /** Longest an event waits before its batch is published. Default: 50 ms. */
  flushIntervalMs?: number;
  /** A batch is published as soon as it holds this many events. Default: 500. */
  maxBatch?: number;
  /**
   * Events held while the durable stream is unreachable; past this the oldest are dropped (and logged),
   * so that an outage cannot exhaust the gateway's memory. Default: 200000.
   */
  maxBuffered?: number;
}

/**
 * Collects delivery events and publishes them in batches to the durable stream, so that counting costs one
 * publish per batch, not per device. On failure the batch is kept and retried on the next flush.
 */
export class EventBatcher {
  private buffer: Event[] = [];
  private readonly timer: NodeJS.Timeout;
  private flushing: Promise<void> | undefined;
  private readonly maxBatch: number;
  private readonly maxBuffered: number;

  constructor(private readonly options: EventBatcherOptions) {
    this.maxBatch = options.maxBatch ?? 500;
    this.maxBuffered = options.maxBuffered ?? 200_000;
    this.timer = setInterval(() => void this.flush(), options.flushIntervalMs ?? 50);
    this.timer.unref();
  }

  add(event: Event): void {
    this.buffer.push(event);
    if (this.buffer.length > this.maxBuffered) {
      const dropped = this.buffer.length - this.maxBuffered;
      this.buffer.splice(0, dropped);
      this.options.logger.error({ dropped }, 'event buffer full: oldest delivery events dropped');
    }
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
    await this.flush();
    if (this.buffer.length > 0) {
      this.options.logger.error({ events: this.buffer.length }, 'stopping with unpublished delivery events');
    }
  }

  /**
   * Events in the next batch: at most maxBatch, and no more than fit MAX_BATCH_BYTES (a SENT event can
   * carry thousands of tokens; NATS refuses payloads over 1 MB by default), at least one.
   */
  private batchLength(): number {
    let bytes = 0;
    const limit = Math.min(this.maxBatch, this.buffer.length);
    for (let i = 0; i < limit; i++) {
      const event = this.buffer[i] as Event;
      bytes += EVENT_OVERHEAD_BYTES + event.tokens.length * TOKEN_BYTES;
      if (bytes > MAX_BATCH_BYTES) return Math.max(1, i);
    }
    return limit;
  }

  private async publishAll(): Promise<void> {
    while (this.buffer.length > 0) {
      const batch = this.buffer.slice(0, this.batchLength());
      let data: Uint8Array;
      try {
        data = EventBatch.encode({ events: batch }).finish();
      } catch (error) {
        // Not transient: retrying would block every later event. Callers validate, so this is a bug.
        this.buffer.splice(0, batch.length);
        this.options.logger.error({ err: error, events: batch.length }, 'unencodable event batch dropped');
        continue;
      }
      try {
        await this.options.bus.publishDurable(subjects.events(this.options.source), data);
      } catch (error) {
        this.options.failures.inc();
        this.options.logger.warn(
          { err: error, events: this.buffer.length },
          'publishing delivery events failed; will retry',
        );
        return;
      }
      // While the publish was in flight, an overflow may have dropped part of this batch from the front
      // (add() only appends, overflow only drops the oldest): remove up to its last event, not its length.
      const last = batch[batch.length - 1];
      this.buffer.splice(0, last === undefined ? 0 : this.buffer.indexOf(last) + 1);
    }
  }
}

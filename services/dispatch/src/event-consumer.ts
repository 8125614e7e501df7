import { type Bus, type DurableConsumer, streams } from '@pushd/bus';
import type { Logger } from '@pushd/common';
import { EventBatch, EventType } from '@pushd/proto';
import type { InboxStore } from '@pushd/store';
import type { DispatchMetrics } from './metrics.js';

export interface DispatchEventConsumerOptions {
  bus: Bus;
  inboxes: InboxStore;
  metrics: DispatchMetrics;
  logger: Logger;
}

/**
 * Keeps offline windows in step with what devices did: an acknowledged message leaves the window (so it is
 * not delivered again on the next connection), an unregistered device's window is dropped. Applying an
 * event twice is harmless, which is what makes the stream's at-least-once delivery safe.
 */
export class DispatchEventConsumer {
  private consumer: DurableConsumer | undefined;

  constructor(private readonly options: DispatchEventConsumerOptions) {}

  start(): void {
    this.consumer = this.options.bus.consume({
      stream: streams.events.name,
      consumer: 'dispatch',
      handler: (data) => this.apply(EventBatch.decode(data)),
      concurrency: 4,
    });
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }

  private async apply(batch: EventBatch): Promise<void> {
    const acks = new Map<string, { accessId: number; token: string; msgIds: number[] }>();
    for (const event of batch.events) {
      if (event.type === EventType.EVENT_TYPE_ARRIVED) {
        // A live broadcast is in no window: nothing to remove (one Redis call per device saved).
        if (event.windowless) continue;
        // Merged per message (tokens) or one device (token).
        for (const token of event.tokens.length > 0 ? event.tokens : [event.token]) {
          const key = `${event.accessId}:${token}`;
          const entry = acks.get(key) ?? { accessId: event.accessId, token, msgIds: [] };
          entry.msgIds.push(event.msgId);
          acks.set(key, entry);
        }
      } else if (event.type === EventType.EVENT_TYPE_UNREGISTERED) {
        await this.options.inboxes.clear(event.accessId, event.token);
        this.options.metrics.eventsConsumed.inc({ type: 'unregistered' });
      }
    }
    await Promise.all(
      [...acks.values()].map((entry) => this.options.inboxes.ack(entry.accessId, entry.token, entry.msgIds)),
    );
    if (acks.size > 0) this.options.metrics.eventsConsumed.inc({ type: 'arrived' }, acks.size);
  }
}

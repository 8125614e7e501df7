import { type Bus, type DurableConsumer, streams } from '@pushd/bus';
import type { Logger } from '@pushd/common';
import { decodeEvents, type Event, type EventBatch, EventType } from '@pushd/proto';
import type { DeviceStore, InboxStore } from '@pushd/store';
import { MAX_EXPIRE_S } from './dispatch-service.js';
import type { DispatchMetrics } from './metrics.js';

export interface DispatchEventConsumerOptions {
  bus: Bus;
  inboxes: InboxStore;
  /** The registry's device records: an unregistration is applied only to the registration it is about. */
  devices: DeviceStore;
  metrics: DispatchMetrics;
  logger: Logger;
}

/**
 * How far back a consumer the bus has to create (first start, or after it was deleted) reads the 7-day
 * event stream: a message stays in a window at most MAX_EXPIRE_S, so older acknowledgements and
 * unregistrations concern windows that have emptied themselves since. An hour more for the redelivery
 * delays of the events' publishers.
 */
const REPLAY_WINDOW_MS = MAX_EXPIRE_S * 1000 + 3_600_000;

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
      handler: (data) => {
        const batch = decodeEvents(data, this.options.logger);
        return batch === undefined ? Promise.resolve() : this.apply(batch);
      },
      concurrency: 4,
      startWithinMs: REPLAY_WINDOW_MS,
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
        await this.clearUnregistered(event);
      }
    }
    await Promise.all(
      [...acks.values()].map((entry) => this.options.inboxes.ack(entry.accessId, entry.token, entry.msgIds)),
    );
    if (acks.size > 0) this.options.metrics.eventsConsumed.inc({ type: 'arrived' }, acks.size);
  }

  /**
   * Drops the window of an unregistered device, unless the device registered again since (same device id,
   * so the same token, under a new device index): its window then holds messages for the new registration,
   * which an unregistration applied late (a backlog after an outage, a replay) must not take away. (A
   * registration landing between the read and the clear is not caught: the device store and the window
   * live in different hash slots, so one script cannot do both.)
   */
  private async clearUnregistered(event: Event): Promise<void> {
    const device = await this.options.devices.get(event.accessId, event.token);
    // Still registered under the same index: the registry announces before it removes. A record from
    // before indexes existed (-1) is announced without one.
    const index = device === undefined || device.index < 0 ? undefined : device.index;
    if (device !== undefined && index !== event.deviceIndex) {
      this.options.metrics.eventsConsumed.inc({ type: 'unregistered_superseded' });
      return;
    }
    await this.options.inboxes.clear(event.accessId, event.token);
    this.options.metrics.eventsConsumed.inc({ type: 'unregistered' });
  }
}

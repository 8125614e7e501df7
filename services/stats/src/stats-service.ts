import { type Bus, type DurableConsumer, streams } from '@pushd/bus';
import { invalidArgument, type Logger } from '@pushd/common';
import {
  type DispatchServiceService,
  EventBatch,
  EventType,
  type RegistryServiceService,
  type StatsServiceService,
} from '@pushd/proto';
import {
  CallAuthorizer,
  type PromiseClient,
  type ServiceHandlers,
  verifyAppSecretWithRegistry,
} from '@pushd/rpc';
import type { StatsStore } from '@pushd/store';
import { Counter, type Registry } from 'prom-client';

export interface StatsServiceOptions {
  stats: StatsStore;
  bus: Bus;
  /** Registry client authorized with the cluster token (app secret checks). */
  registry: PromiseClient<typeof RegistryServiceService>;
  /** Dispatch client authorized with the cluster token (a push must exist to have statistics). */
  dispatch: PromiseClient<typeof DispatchServiceService>;
  clusterToken: string;
  metrics: Registry;
  logger: Logger;
}

/**
 * Per-push delivery counts (proto/pushd/v1/stats.proto), built from the durable event stream: gateways
 * and dispatch publish events in batches and this service folds them into the store. Counting is idempotent
 * per device, so the stream's redeliveries (after a crash or restart) do not inflate the figures.
 */
export class StatsService {
  private readonly authorizer: CallAuthorizer;
  private consumer: DurableConsumer | undefined;
  private readonly eventsApplied: Counter<'type'>;

  constructor(private readonly options: StatsServiceOptions) {
    this.authorizer = new CallAuthorizer({
      clusterToken: options.clusterToken,
      verifyAppSecret: verifyAppSecretWithRegistry(options.registry),
    });
    this.eventsApplied = new Counter({
      name: 'stats_events_applied_total',
      help: 'Delivery events folded into the counts, by type.',
      labelNames: ['type'],
      registers: [options.metrics],
    });
  }

  handlers(): ServiceHandlers<typeof StatsServiceService> {
    return {
      getPushStats: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        if (request.pushId === '') throw invalidArgument('push_id', 'required');
        // Fails with PUSH_NOT_FOUND for a push the app never sent (or another app's).
        await this.options.dispatch.getPush({ accessId, pushId: request.pushId });
        const counts = await this.options.stats.get(accessId, request.pushId);
        return { stats: { pushId: request.pushId, sent: counts.sent, arrived: counts.arrived } };
      },
    };
  }

  startConsuming(): void {
    this.consumer = this.options.bus.consume({
      stream: streams.events.name,
      consumer: 'stats',
      handler: (data) => this.apply(EventBatch.decode(data)),
      concurrency: 4,
    });
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }

  private async apply(batch: EventBatch): Promise<void> {
    const arrived = new Map<string, { accessId: number; pushId: string; tokens: string[] }>();
    const work: Promise<unknown>[] = [];
    for (const event of batch.events) {
      if (event.type === EventType.EVENT_TYPE_SENT && event.pushId !== '') {
        work.push(this.options.stats.addSent(event.accessId, event.pushId, event.tokens));
        this.eventsApplied.inc({ type: 'sent' });
      } else if (event.type === EventType.EVENT_TYPE_ARRIVED && event.pushId !== '') {
        const key = `${event.accessId}:${event.pushId}`;
        const entry = arrived.get(key) ?? { accessId: event.accessId, pushId: event.pushId, tokens: [] };
        entry.tokens.push(event.token);
        arrived.set(key, entry);
        this.eventsApplied.inc({ type: 'arrived' });
      }
    }
    for (const entry of arrived.values())
      work.push(this.options.stats.addArrived(entry.accessId, entry.pushId, entry.tokens));
    await Promise.all(work);
  }
}

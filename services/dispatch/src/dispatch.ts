import type { Bus } from '@pushd/bus';
import type { Clock, Logger } from '@pushd/common';
import type { RegistryServiceService } from '@pushd/proto';
import type { PromiseClient } from '@pushd/rpc';
import type { Stores } from '@pushd/store';
import { DispatchService } from './dispatch-service.js';
import { DispatchEventConsumer } from './event-consumer.js';
import type { DispatchMetrics } from './metrics.js';
import { PushApplier } from './push-applier.js';
import { Scheduler } from './scheduler.js';

export interface DispatchParts {
  /** The gRPC handlers' owner: accepts pushes, answers catch-up reads, lists and cancels. */
  service: DispatchService;
  /** Applies the push log in order. */
  applier: PushApplier;
  /** Fires scheduled and recurring pushes into the push log. */
  scheduler: Scheduler;
  /** Keeps offline windows in step with acks and unregistrations. */
  events: DispatchEventConsumer;
}

export interface CreateDispatchOptions {
  stores: Pick<
    Stores,
    'pushes' | 'inboxes' | 'routes' | 'broadcasts' | 'audience' | 'tags' | 'devices' | 'schedules'
  >;
  bus: Bus;
  /** Registry client authorized with the cluster token (account bindings, app secrets). */
  registry: PromiseClient<typeof RegistryServiceService>;
  clusterToken: string;
  /** Push-log partitions, the same on every dispatch instance. Default: 16. */
  partitions?: number;
  /** Entries the push applier applies together with a delivered one (PushApplierOptions). Default: 64. */
  lookAheadEntries?: number;
  /** Entries waiting behind a delivered one for a look-ahead (PushApplierOptions). Default: 4. */
  lookAheadMinPending?: number;
  metrics: DispatchMetrics;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
}

/**
 * The four parts of one dispatch instance, wired to each other and to the same stores. Every process that
 * runs dispatch (its main.ts, the embedded mode, tests and benchmarks) builds it here, so that none of
 * them forgets a part; starting and stopping them stays with the caller.
 */
export function createDispatch(options: CreateDispatchOptions): DispatchParts {
  const { stores, bus, metrics, logger, clock, partitions } = options;
  const common = { bus, metrics, logger, ...(clock === undefined ? {} : { clock }) };
  const scheduler = new Scheduler({
    ...common,
    schedule: stores.schedules,
    pushes: stores.pushes,
    ...(partitions === undefined ? {} : { partitions }),
  });
  const service = new DispatchService({
    ...common,
    pushes: stores.pushes,
    inboxes: stores.inboxes,
    broadcasts: stores.broadcasts,
    audience: stores.audience,
    tags: stores.tags,
    devices: stores.devices,
    registry: options.registry,
    clusterToken: options.clusterToken,
    scheduler,
    ...(partitions === undefined ? {} : { partitions }),
  });
  const applier = new PushApplier({
    ...common,
    pushes: stores.pushes,
    inboxes: stores.inboxes,
    routes: stores.routes,
    broadcasts: stores.broadcasts,
    ...(partitions === undefined ? {} : { partitions }),
    ...(options.lookAheadEntries === undefined ? {} : { lookAheadEntries: options.lookAheadEntries }),
    ...(options.lookAheadMinPending === undefined
      ? {}
      : { lookAheadMinPending: options.lookAheadMinPending }),
  });
  const events = new DispatchEventConsumer({
    bus,
    inboxes: stores.inboxes,
    devices: stores.devices,
    metrics,
    logger,
  });
  return { service, applier, scheduler, events };
}

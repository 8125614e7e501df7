import { MemoryBroker, MemoryBus, streams } from '@pushd/bus';
import {
  type Clock,
  createMetricsRegistry,
  type Logger,
  OpsServer,
  stopAll,
  systemClock,
} from '@pushd/common';
import { createDispatchMetrics, DispatchEventConsumer, DispatchService } from '@pushd/dispatch';
import { createGatewayMetrics, Gateway } from '@pushd/gateway';
import {
  DispatchServiceService,
  RegistryServiceService,
  StatsServiceService,
  TagServiceService,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import { bindService, GrpcServer } from '@pushd/rpc';
import { clusterClient } from '@pushd/runtime';
import { StatsService } from '@pushd/stats';
import { createMemoryStores, type Stores } from '@pushd/store';
import { TagService } from '@pushd/tag';
import { Registry } from 'prom-client';

export interface EmbeddedOptions {
  /** Interface every endpoint binds. Default: '0.0.0.0'. */
  host?: string;
  /** Ports; 0 picks free ones (read them from the returned `ports`). Defaults: see EMBEDDED_DEFAULT_PORTS. */
  ports?: Partial<EmbeddedPorts>;
  clusterToken: string;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
  /** Gateway heartbeat. Default: 25000 ms. */
  heartbeatIntervalMs?: number;
  /** Gateway node id. Default: 'embedded'. */
  nodeId?: string;
}

export interface EmbeddedPorts {
  websocket: number;
  ops: number;
  registry: number;
  tag: number;
  dispatch: number;
  stats: number;
}

export const EMBEDDED_DEFAULT_PORTS: EmbeddedPorts = {
  websocket: 8080,
  ops: 9100,
  registry: 50051,
  tag: 50052,
  dispatch: 50053,
  stats: 50054,
};

export interface EmbeddedSystem {
  ports: EmbeddedPorts;
  /** The in-memory stores every service shares (for tests and tools). */
  stores: Stores;
  stop(): Promise<void>;
}

/**
 * Every service in one process on the in-memory bus and stores, talking gRPC over loopback exactly as
 * they do in production: the same code path, with memory adapters in place of NATS and Redis.
 */
export async function startEmbedded(options: EmbeddedOptions): Promise<EmbeddedSystem> {
  const { logger, clusterToken } = options;
  const host = options.host ?? '0.0.0.0';
  const clock = options.clock ?? systemClock;
  const wanted = { ...EMBEDDED_DEFAULT_PORTS, ...options.ports };
  const stores = createMemoryStores({ clock });
  const bus = new MemoryBus({ broker: new MemoryBroker({ clock }), streams: [streams.events], clock });
  const started: { name: string; stop(): Promise<void> }[] = [{ name: 'bus', stop: () => bus.close() }];
  const registries: Registry[] = [createMetricsRegistry({ service: 'pushd', processMetrics: true })];
  const serviceRegistry = (service: string) => {
    const registry = createMetricsRegistry({ service, processMetrics: false });
    registries.push(registry);
    return registry;
  };
  const grpcServer = (service: string, binding: ReturnType<typeof bindService>, port: number) =>
    new GrpcServer({
      host,
      port,
      services: [binding],
      logger: logger.child({ service }),
      registry: serviceRegistry(service),
      metricPrefix: service,
    });
  const startComponent = async <T extends { start(): Promise<void>; stop(): Promise<void> }>(
    name: string,
    c: T,
  ) => {
    await c.start();
    started.push({ name, stop: () => c.stop() });
    return c;
  };

  try {
    const registryService = new RegistryService({
      apps: stores.apps,
      devices: stores.devices,
      bus,
      clusterToken,
      logger: logger.child({ service: 'registry' }),
      clock,
    });
    const registryServer = await startComponent(
      'registry',
      grpcServer(
        'registry',
        bindService('pushd.v1.RegistryService', RegistryServiceService, registryService.handlers()),
        wanted.registry,
      ),
    );
    const registryAddress = `127.0.0.1:${registryServer.port}`;
    const registryClient = clusterClient(RegistryServiceService, registryAddress, clusterToken);
    started.push({ name: 'registry-client', stop: async () => registryClient.close() });

    const dispatchLogger = logger.child({ service: 'dispatch' });
    const dispatchMetrics = createDispatchMetrics(serviceRegistry('dispatch'));
    const dispatchService = new DispatchService({
      pushes: stores.pushes,
      inboxes: stores.inboxes,
      routes: stores.routes,
      bus,
      registry: registryClient,
      clusterToken,
      metrics: dispatchMetrics,
      logger: dispatchLogger,
      clock,
    });
    const dispatchServer = await startComponent(
      'dispatch',
      grpcServer(
        'dispatch',
        bindService('pushd.v1.DispatchService', DispatchServiceService, dispatchService.handlers()),
        wanted.dispatch,
      ),
    );
    const dispatchEvents = new DispatchEventConsumer({
      bus,
      inboxes: stores.inboxes,
      metrics: dispatchMetrics,
      logger: dispatchLogger,
    });
    dispatchEvents.start();
    started.push({ name: 'dispatch-events', stop: () => dispatchEvents.stop() });
    const dispatchClient = clusterClient(
      DispatchServiceService,
      `127.0.0.1:${dispatchServer.port}`,
      clusterToken,
    );
    started.push({ name: 'dispatch-client', stop: async () => dispatchClient.close() });

    const tagService = new TagService({
      tags: stores.tags,
      bus,
      registry: registryClient,
      clusterToken,
      logger: logger.child({ service: 'tag' }),
    });
    const tagServer = await startComponent(
      'tag',
      grpcServer(
        'tag',
        bindService('pushd.v1.TagService', TagServiceService, tagService.handlers()),
        wanted.tag,
      ),
    );
    tagService.startConsuming();
    started.push({ name: 'tag-events', stop: () => tagService.stop() });

    const statsService = new StatsService({
      stats: stores.stats,
      bus,
      registry: registryClient,
      dispatch: dispatchClient,
      clusterToken,
      metrics: serviceRegistry('stats'),
      logger: logger.child({ service: 'stats' }),
    });
    const statsServer = await startComponent(
      'stats',
      grpcServer(
        'stats',
        bindService('pushd.v1.StatsService', StatsServiceService, statsService.handlers()),
        wanted.stats,
      ),
    );
    statsService.startConsuming();
    started.push({ name: 'stats-events', stop: () => statsService.stop() });

    const gateway = await startComponent(
      'gateway',
      new Gateway({
        nodeId: options.nodeId ?? 'embedded',
        host,
        port: wanted.websocket,
        registry: registryClient,
        dispatch: dispatchClient,
        routes: stores.routes,
        bus,
        metrics: createGatewayMetrics(serviceRegistry('gateway')),
        logger: logger.child({ service: 'gateway' }),
        clock,
        heartbeatIntervalMs: options.heartbeatIntervalMs,
      }),
    );

    const ops = await startComponent(
      'ops',
      new OpsServer({
        host,
        port: wanted.ops,
        registry: Registry.merge(registries),
        logger,
        checks: [{ name: 'bus', check: () => bus.ready() }],
      }),
    );

    const ports: EmbeddedPorts = {
      websocket: gateway.port,
      ops: ops.port,
      registry: registryServer.port,
      tag: tagServer.port,
      dispatch: dispatchServer.port,
      stats: statsServer.port,
    };
    return { ports, stores, stop: () => stopAll(started, logger) };
  } catch (error) {
    await stopAll(started, logger);
    throw error;
  }
}

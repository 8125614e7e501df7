import { MemoryBroker, MemoryBus, streams } from '@pushd/bus';
import {
  type Clock,
  createMetricsRegistry,
  type Logger,
  OpsServer,
  stopAll,
  systemClock,
} from '@pushd/common';
import { createDispatch, createDispatchMetrics } from '@pushd/dispatch';
import { createGatewayMetrics, Gateway } from '@pushd/gateway';
import {
  DispatchServiceService,
  RegistryServiceService,
  StatsServiceService,
  TagServiceService,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import { bindService, GrpcServer, type GrpcServiceBinding } from '@pushd/rpc';
import { clientsComponent, clusterClient } from '@pushd/runtime';
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
  const bus = new MemoryBus({
    broker: new MemoryBroker({ clock }),
    streams: [streams.events, streams.pushes],
    clock,
  });
  const started: { name: string; stop(): Promise<void> }[] = [{ name: 'bus', stop: () => bus.close() }];
  const registries: Registry[] = [createMetricsRegistry({ service: 'pushd', processMetrics: true })];
  const serviceRegistry = (service: string) => {
    const registry = createMetricsRegistry({ service, processMetrics: false });
    registries.push(registry);
    return registry;
  };
  const startComponent = async <T extends { start(): Promise<void>; stop(): Promise<void> }>(
    name: string,
    component: T,
  ) => {
    await component.start();
    started.push({ name, stop: () => component.stop() });
    return component;
  };
  /** Serves one service's gRPC API on loopback-reachable `port`; returns its address for the others. */
  const serveGrpc = async (service: string, binding: GrpcServiceBinding, port: number) => {
    const server = await startComponent(
      service,
      new GrpcServer({
        host,
        port,
        services: [binding],
        logger: logger.child({ service }),
        registry: serviceRegistry(service),
        metricPrefix: service,
      }),
    );
    return { port: server.port, address: `127.0.0.1:${server.port}` };
  };
  const consumer = (name: string, component: { start(): void; stop(): Promise<void> }) => {
    component.start();
    started.push({ name, stop: () => component.stop() });
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
    const registry = await serveGrpc(
      'registry',
      bindService('pushd.v1.RegistryService', RegistryServiceService, registryService.handlers()),
      wanted.registry,
    );
    const registryClient = clusterClient(RegistryServiceService, registry.address, clusterToken);

    const dispatchParts = createDispatch({
      stores,
      bus,
      registry: registryClient,
      clusterToken,
      metrics: createDispatchMetrics(serviceRegistry('dispatch')),
      logger: logger.child({ service: 'dispatch' }),
      clock,
    });
    const dispatch = await serveGrpc(
      'dispatch',
      bindService('pushd.v1.DispatchService', DispatchServiceService, dispatchParts.service.handlers()),
      wanted.dispatch,
    );
    consumer('dispatch-schedule', dispatchParts.scheduler);
    consumer('dispatch-apply', dispatchParts.applier);
    consumer('dispatch-events', dispatchParts.events);
    const dispatchClient = clusterClient(DispatchServiceService, dispatch.address, clusterToken);
    started.push(clientsComponent(registryClient, dispatchClient));

    const tagService = new TagService({
      tags: stores.tags,
      audience: stores.audience,
      bus,
      routes: stores.routes,
      registry: registryClient,
      clusterToken,
      logger: logger.child({ service: 'tag' }),
      clock,
    });
    const tag = await serveGrpc(
      'tag',
      bindService('pushd.v1.TagService', TagServiceService, tagService.handlers()),
      wanted.tag,
    );
    consumer('tag-events', { start: () => tagService.startConsuming(), stop: () => tagService.stop() });
    const tagClient = clusterClient(TagServiceService, tag.address, clusterToken);
    started.push(clientsComponent(tagClient));

    const statsService = new StatsService({
      stats: stores.stats,
      bus,
      registry: registryClient,
      dispatch: dispatchClient,
      tag: tagClient,
      clusterToken,
      metrics: serviceRegistry('stats'),
      logger: logger.child({ service: 'stats' }),
      clock,
    });
    const stats = await serveGrpc(
      'stats',
      bindService('pushd.v1.StatsService', StatsServiceService, statsService.handlers()),
      wanted.stats,
    );
    consumer('stats-events', { start: () => statsService.startConsuming(), stop: () => statsService.stop() });

    const gateway = await startComponent(
      'gateway',
      new Gateway({
        nodeId: options.nodeId ?? 'embedded',
        host,
        port: wanted.websocket,
        registry: registryClient,
        dispatch: dispatchClient,
        routes: stores.routes,
        tags: stores.tags,
        tag: tagClient,
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
      registry: registry.port,
      tag: tag.port,
      dispatch: dispatch.port,
      stats: stats.port,
    };
    return { ports, stores, stop: () => stopAll(started, logger) };
  } catch (error) {
    await stopAll(started, logger);
    throw error;
  }
}

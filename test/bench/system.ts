import {
  freePort,
  type ServiceProcess,
  startNatsServer,
  startRedisServer,
  startServiceProcess,
  type TestServer,
} from '@pushd/testkit';
import { ROOT } from './children.js';
import { Cleanup, log } from './lifecycle.js';
import { findPid, readMetric, readMetrics } from './measure.js';
import type { EnvService, ServiceEnv } from './options.js';

export const CLUSTER_TOKEN = 'bench-cluster-token-0123456789';

export interface BenchSystemOptions {
  gateways: number;
  /**
   * Which services get `--inspect` on a free loopback port: the gateways (to collect garbage before
   * reading memory) or every service (to profile a phase). Default: none.
   */
  inspect?: 'gateways' | 'all';
  /** Extra environment of the service processes, by service (e.g. the gateways' HEARTBEAT_INTERVAL_MS). */
  serviceEnv?: ServiceEnv;
}

export interface BenchGateway {
  url: string;
  opsPort: number;
  nodeId: string;
  process: ServiceProcess;
  inspectPort: number | undefined;
}

/** The production shape on real servers: nats-server, redis-server, registry, dispatch and N gateways. */
export interface BenchSystem {
  nats: TestServer;
  redis: TestServer;
  registry: string;
  dispatch: string;
  gateways: BenchGateway[];
  /** Process ids by name, for CPU and memory sampling. */
  pids(): Map<string, number>;
  /** Inspector ports of the services started with one, by name. */
  inspectPorts(): Map<string, number>;
  /** Ops ports (/metrics) of the services, by name. */
  opsPorts(): Map<string, number>;
  /** Every metric sample of every service, summed over services (gateways add up). */
  metrics(): Promise<Map<string, number>>;
  /** Every metric sample of each service, by service name. */
  metricsByService(): Promise<Map<string, Map<string, number>>>;
  /** Open device sessions summed over the gateways (gateway_connections). */
  sessions(): Promise<number>;
}

/**
 * Starts the system the way test/support/system.ts does (each service `node --import tsx
 * services/<name>/src/main.ts`, configured by its environment), registering every stop with `cleanup`.
 * Tag and stats are not started: no benchmark here needs them, and on a small machine they would take CPU
 * from what is measured.
 */
export async function startBenchSystem(cleanup: Cleanup, options: BenchSystemOptions): Promise<BenchSystem> {
  for (let attempt = 1; ; attempt++) {
    // Each attempt has its own cleanup, run at once if the attempt fails.
    const own = new Cleanup();
    const stopAttempt = cleanup.add('system', () => own.runAll());
    try {
      return await startOnce(own, options);
    } catch (error) {
      await stopAttempt();
      // A port freePort() found free can be taken before the service binds it (the OS hands out the same
      // range for outgoing connections); new ports fix that.
      const clash = error instanceof Error && error.message.includes('EADDRINUSE');
      if (!clash || attempt >= 3) throw error;
      log(`a port was taken before a service bound it; starting the system again (attempt ${attempt + 1})`);
    }
  }
}

async function startOnce(cleanup: Cleanup, options: BenchSystemOptions): Promise<BenchSystem> {
  const [nats, redis] = await Promise.all([startNatsServer(), startRedisServer()]);
  cleanup.add('nats-server', () => nats.stop());
  cleanup.add('redis-server', () => redis.stop());
  const grpc = { registry: await freePort(), dispatch: await freePort() };
  const common = {
    CLUSTER_TOKEN,
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    REGISTRY_ADDR: `127.0.0.1:${grpc.registry}`,
    DISPATCH_ADDR: `127.0.0.1:${grpc.dispatch}`,
  };
  const start = async (service: EnvService, env: Record<string, string>) => {
    const opsPort = await freePort();
    const inspect = options.inspect === 'all' || (options.inspect === 'gateways' && service === 'gateway');
    const inspectPort = inspect ? await freePort() : undefined;
    const started = await startServiceProcess({
      root: ROOT,
      service,
      // A diagnostic setting may override the common ones (LOG_LEVEL, say), not a process's ports or node id.
      env: { ...common, ...options.serviceEnv?.[service], ...env, OPS_PORT: String(opsPort) },
      opsPort,
      nodeArgs: inspectPort === undefined ? [] : [`--inspect=127.0.0.1:${inspectPort}`],
    });
    cleanup.add(service, () => started.stop());
    return { process: started, opsPort, inspectPort };
  };
  // All at once: each is ready when its Redis and NATS connections are; gRPC clients connect lazily.
  const registryStarting = start('registry', { GRPC_PORT: String(grpc.registry) });
  const dispatchStarting = start('dispatch', { GRPC_PORT: String(grpc.dispatch) });
  const gatewaysStarting = settleAll(
    Array.from({ length: options.gateways }, async (_, index): Promise<BenchGateway> => {
      const wsPort = await freePort();
      const nodeId = `gw-bench-${index + 1}`;
      const started = await start('gateway', {
        WS_PORT: String(wsPort),
        NODE_ID: nodeId,
      });
      return {
        url: `ws://127.0.0.1:${wsPort}/v1/ws`,
        opsPort: started.opsPort,
        nodeId,
        process: started.process,
        inspectPort: started.inspectPort,
      };
    }),
  );
  // Settled, not all: a failure must not leave a process that is still starting out of the cleanup.
  const [registry, dispatch, gateways] = await settleAll([
    registryStarting,
    dispatchStarting,
    gatewaysStarting,
  ]);
  const natsPid = findPid(['nats-server', `-p ${nats.port} `]);
  const redisPid = findPid(['redis-server', `:${redis.port}`]);
  const opsPorts = () => {
    const ports = new Map([
      ['registry', registry.opsPort],
      ['dispatch', dispatch.opsPort],
    ]);
    gateways.forEach((gateway, index) => {
      ports.set(gateways.length === 1 ? 'gateway' : `gateway${index + 1}`, gateway.opsPort);
    });
    return ports;
  };
  const metricsByService = async () =>
    new Map(
      await Promise.all(
        [...opsPorts()].map(async ([name, port]) => [name, await readMetrics(port)] as const),
      ),
    );
  return {
    nats,
    redis,
    registry: common.REGISTRY_ADDR,
    dispatch: common.DISPATCH_ADDR,
    gateways,
    pids() {
      const pids = new Map<string, number>();
      if (natsPid !== undefined) pids.set('nats', natsPid);
      if (redisPid !== undefined) pids.set('redis', redisPid);
      pids.set('registry', registry.process.pid);
      pids.set('dispatch', dispatch.process.pid);
      gateways.forEach((gateway, index) => {
        pids.set(gateways.length === 1 ? 'gateway' : `gateway${index + 1}`, gateway.process.pid);
      });
      return pids;
    },
    opsPorts,
    metrics: async () => mergeMetrics(await metricsByService()),
    metricsByService,
    inspectPorts() {
      const ports = new Map<string, number>();
      if (registry.inspectPort !== undefined) ports.set('registry', registry.inspectPort);
      if (dispatch.inspectPort !== undefined) ports.set('dispatch', dispatch.inspectPort);
      gateways.forEach((gateway, index) => {
        const name = gateways.length === 1 ? 'gateway' : `gateway${index + 1}`;
        if (gateway.inspectPort !== undefined) ports.set(name, gateway.inspectPort);
      });
      return ports;
    },
    async sessions() {
      const counts = await Promise.all(
        gateways.map((gateway) => readMetric(gateway.opsPort, 'gateway_connections')),
      );
      return counts.reduce((sum, count) => sum + count, 0);
    },
  };
}

/** Sums the samples of several services (a counter of N gateways is their total). */
export function mergeMetrics(byService: Map<string, Map<string, number>>): Map<string, number> {
  const merged = new Map<string, number>();
  for (const samples of byService.values()) {
    for (const [key, value] of samples) merged.set(key, (merged.get(key) ?? 0) + value);
  }
  return merged;
}

/**
 * The longest event-loop stall of each service since its previous /metrics scrape (prom-client's
 * nodejs_eventloop_lag_max_seconds, reset on each scrape), in ms.
 */
export function eventLoopLagMaxMs(byService: Map<string, Map<string, number>>): Map<string, number> {
  const lags = new Map<string, number>();
  for (const [name, samples] of byService) {
    for (const [key, value] of samples) {
      if (key.endsWith('_nodejs_eventloop_lag_max_seconds')) lags.set(name, value * 1000);
    }
  }
  return lags;
}

/** Promise.all that waits for every promise to settle before rejecting with the first failure. */
export async function settleAll<T extends readonly unknown[]>(
  promises: readonly [...{ [K in keyof T]: Promise<T[K]> }],
): Promise<T> {
  const settled = await Promise.allSettled(promises);
  const failure = settled.find((result) => result.status === 'rejected');
  if (failure !== undefined) throw (failure as PromiseRejectedResult).reason;
  return settled.map((result) => (result as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { silentLogger } from '@pushd/common';
import { startEmbedded } from '@pushd/embedded';
import {
  freePort,
  startNatsCluster,
  startNatsServer,
  startRedisCluster,
  startRedisServer,
  type TestServer,
  waitFor,
} from '@pushd/testkit';

export const CLUSTER_TOKEN = 'e2e-cluster-token-0123456789';
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Where a running system answers, whichever way it was started. */
export interface SystemUnderTest {
  mode: 'embedded' | 'processes';
  gatewayUrl: string;
  registry: string;
  dispatch: string;
  stats: string;
  tag: string;
  opsPorts: number[];
  stop(): Promise<void>;
  /**
   * Processes mode: kill one service process (SIGKILL) and start it again with the same settings
   * (`instance` picks one of several dispatch or gateway instances; default 0).
   */
  restart?(service: ServiceName, instance?: number): Promise<void>;
  /** Processes mode: kill one service process (SIGKILL) for good, as a crash would. */
  kill?(service: ServiceName, instance?: number): Promise<void>;
  /** Processes mode: every gateway's URL and every dispatch address, in instance order. */
  gatewayUrls?: string[];
  dispatches?: string[];
}

export interface ProcessSystemOptions {
  /** Dispatch processes sharing the work (the push log's partitions). Default: 1. */
  dispatchInstances?: number;
  /** Gateway processes (node ids gw-e2e-1, gw-e2e-2, ...). Default: 1. */
  gatewayInstances?: number;
  /** Store on a Redis Cluster of three masters instead of one redis-server. Default: false. */
  redisCluster?: boolean;
  /**
   * Bus on a NATS cluster of three servers instead of one, the durable streams replicated three times
   * (`NATS_STREAM_REPLICAS=3`). Default: false.
   */
  natsCluster?: boolean;
}

export type ServiceName = 'registry' | 'tag' | 'dispatch' | 'stats' | 'gateway';

/**
 * Production shape grown onto clusters (three NATS servers with replicated streams, a Redis Cluster of
 * three masters): what the suites that cover every store and stream (pushes, tags, audiences) run as
 * well, for `describe.each`.
 */
export const ON_CLUSTERS = [
  'separate processes on a NATS cluster and a Redis Cluster',
  () => startProcessSystem({ natsCluster: true, redisCluster: true }),
] as const;

/** The two ways end-to-end suites run the system, for `describe.each`. */
export const BOTH_MODES = [
  ['separate processes on NATS and Redis', () => startProcessSystem()],
  ['embedded mode', () => startEmbeddedSystem()],
] as const;

/** Every service in this test process on the in-memory bus and stores (`pnpm start`'s code path). */
export async function startEmbeddedSystem(): Promise<SystemUnderTest> {
  const system = await startEmbedded({
    host: '127.0.0.1',
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
    ports: { websocket: 0, ops: 0, registry: 0, tag: 0, dispatch: 0, stats: 0 },
  });
  const { ports } = system;
  return {
    mode: 'embedded',
    gatewayUrl: `ws://127.0.0.1:${ports.websocket}/v1/ws`,
    registry: `127.0.0.1:${ports.registry}`,
    dispatch: `127.0.0.1:${ports.dispatch}`,
    stats: `127.0.0.1:${ports.stats}`,
    tag: `127.0.0.1:${ports.tag}`,
    opsPorts: [ports.ops],
    stop: () => system.stop(),
  };
}

interface ServiceProcess {
  name: ServiceName;
  instance: number;
  env: Record<string, string>;
  opsPort: number;
  child?: ChildProcess;
  output: string[];
}

/**
 * Production shape: a real nats-server (JetStream) and redis-server on free ports, and each service as
 * its own Node.js process (`services/<name>/src/main.ts`) configured only through its environment.
 */
export async function startProcessSystem(
  options: ProcessSystemOptions = {},
): Promise<SystemUnderTest & { nats: Pick<TestServer, 'url' | 'stop'>; redis: TestServer }> {
  const [nats, redis] = await Promise.all([
    options.natsCluster ? startNatsCluster(3) : startNatsServer(),
    options.redisCluster ? startRedisCluster(3) : startRedisServer(),
  ]);
  const dispatchPorts: number[] = [];
  for (let i = 0; i < (options.dispatchInstances ?? 1); i++) dispatchPorts.push(await freePort());
  const wsPorts: number[] = [];
  for (let i = 0; i < (options.gatewayInstances ?? 1); i++) wsPorts.push(await freePort());
  const grpc = {
    registry: await freePort(),
    tag: await freePort(),
    dispatch: dispatchPorts[0] as number,
    stats: await freePort(),
  };
  const common = {
    CLUSTER_TOKEN,
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    REGISTRY_ADDR: `127.0.0.1:${grpc.registry}`,
    DISPATCH_ADDR: `127.0.0.1:${grpc.dispatch}`,
    TAG_ADDR: `127.0.0.1:${grpc.tag}`,
    ...(options.natsCluster ? { NATS_STREAM_REPLICAS: '3' } : {}),
  };
  const services: ServiceProcess[] = [];
  const add = async (name: ServiceName, instance: number, own: Record<string, string>) => {
    const opsPort = await freePort();
    services.push({
      name,
      instance,
      env: { ...common, ...own, OPS_PORT: String(opsPort) },
      opsPort,
      output: [],
    });
  };
  await add('registry', 0, { GRPC_PORT: String(grpc.registry) });
  for (const [instance, port] of dispatchPorts.entries())
    await add('dispatch', instance, { GRPC_PORT: String(port) });
  await add('tag', 0, { GRPC_PORT: String(grpc.tag) });
  await add('stats', 0, { GRPC_PORT: String(grpc.stats) });
  for (const [instance, port] of wsPorts.entries()) {
    await add('gateway', instance, { WS_PORT: String(port), NODE_ID: `gw-e2e-${instance + 1}` });
  }
  const find = (name: ServiceName, instance = 0) => {
    const service = services.find((s) => s.name === name && s.instance === instance);
    if (!service) throw new Error(`no service ${name} #${instance}`);
    return service;
  };
  const kill = async (service: ServiceProcess) => {
    const child = service.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  };
  const stopAllServices = async () => {
    await Promise.all(services.map((s) => stopProcess(s)));
    await Promise.all([nats.stop(), redis.stop()]);
  };
  try {
    for (const service of services) await startProcess(service);
  } catch (error) {
    await stopAllServices();
    throw error;
  }
  return {
    mode: 'processes',
    nats,
    redis,
    gatewayUrl: `ws://127.0.0.1:${wsPorts[0]}/v1/ws`,
    gatewayUrls: wsPorts.map((port) => `ws://127.0.0.1:${port}/v1/ws`),
    dispatches: dispatchPorts.map((port) => `127.0.0.1:${port}`),
    registry: `127.0.0.1:${grpc.registry}`,
    dispatch: `127.0.0.1:${grpc.dispatch}`,
    stats: `127.0.0.1:${grpc.stats}`,
    tag: `127.0.0.1:${grpc.tag}`,
    opsPorts: services.map((s) => s.opsPort),
    stop: stopAllServices,
    async restart(name, instance) {
      const service = find(name, instance);
      await kill(service);
      await startProcess(service);
    },
    async kill(name, instance) {
      await kill(find(name, instance));
    },
  };
}

async function startProcess(service: ServiceProcess): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', `services/${service.name}/src/main.ts`], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...service.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  service.child = child;
  const keep = (chunk: Buffer) => {
    service.output.push(chunk.toString());
    if (service.output.length > 200) service.output.shift();
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  await waitFor(
    async () => {
      if (exited) throw new Error(`${service.name} exited during start:\n${service.output.join('')}`);
      const response = await fetch(`http://127.0.0.1:${service.opsPort}/readyz`).catch(() => undefined);
      return response?.status === 200;
    },
    `${service.name} to become ready`,
    30_000,
  ).catch((error: Error) => {
    throw new Error(`${error.message}\n--- ${service.name} output ---\n${service.output.join('')}`);
  });
}

async function stopProcess(service: ServiceProcess): Promise<void> {
  const child = service.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

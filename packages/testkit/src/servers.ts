import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitFor, waitForPort } from './ports.js';

/** A server process a test started; `stop()` kills it and removes its files. */
export interface TestServer {
  url: string;
  port: number;
  stop(): Promise<void>;
}

const INSTALL_HINT: Record<string, string> = {
  'nats-server': 'apt-get update && apt-get install -y nats-server',
  'redis-server': 'apt-get update && apt-get install -y redis-server',
};

/** Finds a server binary or fails with the command that installs it: never a silent skip. */
export function requireBinary(name: 'nats-server' | 'redis-server'): string {
  for (const candidate of [
    process.env[`${name.toUpperCase().replace('-', '_')}_BIN`],
    name,
    `/usr/sbin/${name}`,
    `/usr/bin/${name}`,
  ]) {
    if (!candidate) continue;
    const probe = spawnSync(candidate, ['--version'], { stdio: 'ignore' });
    if (probe.status === 0) return candidate;
  }
  throw new Error(
    `${name} is required by the integration and end-to-end tests but was not found on PATH or in /usr/sbin. ` +
      `Install it with: ${INSTALL_HINT[name]}`,
  );
}

/**
 * A nats-server a test started. Besides `stop()` (kill and remove the store), the process can be taken
 * down and brought back on the same port with the same JetStream store, to test reconnects and persistence.
 */
export interface NatsTestServer extends TestServer {
  /** JetStream store directory, kept across `restart()`/`stopProcess()`; removed by `stop()`. */
  storeDir: string;
  /** Whether the process is currently running. */
  readonly running: boolean;
  /** Stops the process (SIGTERM, SIGKILL after 5 s) but keeps the port and the store for `startProcess()`. */
  stopProcess(): Promise<void>;
  /** Starts the process again on the same port and store; resolves once it accepts connections. */
  startProcess(): Promise<void>;
  /** `stopProcess()` then `startProcess()`. */
  restart(): Promise<void>;
}

/** Starts a nats-server with JetStream on a free port, storing in a fresh temporary directory. */
export async function startNatsServer(): Promise<NatsTestServer> {
  return startNatsProcess(requireBinary('nats-server'), await freePort(), []);
}

/** One nats-server process with JetStream on `port`, with `extra` arguments (cluster settings). */
async function startNatsProcess(binary: string, port: number, extra: string[]): Promise<NatsTestServer> {
  const dir = mkdtempSync(join(tmpdir(), 'pushd-nats-'));
  const spawnServer = () =>
    spawn(binary, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir, ...extra], { stdio: 'ignore' });
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const startProcess = async () => {
    if (child) return;
    const started = spawnServer();
    child = started;
    exited = new Promise<void>((resolve) => started.once('exit', () => resolve()));
    void exited.then(() => {
      if (child === started) child = undefined;
    });
    try {
      await Promise.race([
        waitForPort(port),
        exited.then(() => {
          throw new Error(`nats-server exited at start (port ${port}, store ${dir})`);
        }),
      ]);
    } catch (error) {
      started.kill('SIGKILL');
      throw error;
    }
  };
  const stopProcess = async () => {
    const running = child;
    if (!running) return;
    const gone = exited;
    running.kill('SIGTERM');
    const timer = setTimeout(() => running.kill('SIGKILL'), 5_000);
    await gone;
    clearTimeout(timer);
    child = undefined;
  };

  try {
    await startProcess();
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir: dir,
    get running() {
      return child !== undefined;
    },
    stopProcess,
    startProcess,
    async restart() {
      await stopProcess();
      await startProcess();
    },
    async stop() {
      await stopProcess();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Starts a redis-server with nothing persisted on a free port. */
export async function startRedisServer(): Promise<TestServer> {
  const binary = requireBinary('redis-server');
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pushd-redis-'));
  const child = spawn(
    binary,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' },
  );
  return track(child, port, `redis://127.0.0.1:${port}`, dir);
}

/** A NATS cluster a test started: one server per node, each of which can be taken down and back. */
export interface NatsTestCluster {
  /** Every node's client URL, comma-separated (as `NATS_URL` takes several servers). */
  url: string;
  nodes: NatsTestServer[];
  /** Each node's HTTP monitoring endpoint (`/jsz`, `/varz`...), in node order. */
  monitorUrls: string[];
  /**
   * Resolves once every node is up with JetStream current (`/healthz` answers 200 on each, and they agree
   * on a meta leader): after a node was brought back, before the next failure is made.
   */
  ready(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts a NATS cluster of `size` nats-servers with JetStream (routes between all of them, each with its
 * own store directory) and waits until JetStream has a meta leader, so that replicated streams can be
 * created at once. Each node is a NatsTestServer: stopProcess()/startProcess() take one down and back.
 */
export async function startNatsCluster(size = 3): Promise<NatsTestCluster> {
  const binary = requireBinary('nats-server');
  const specs: { port: number; routePort: number; monitorPort: number; name: string }[] = [];
  for (let i = 0; i < size; i++) {
    specs.push({
      port: await freePort(),
      routePort: await freePort(),
      monitorPort: await freePort(),
      name: `n${i + 1}`,
    });
  }
  const routes = specs.map((spec) => `nats://127.0.0.1:${spec.routePort}`).join(',');
  const monitorUrls = specs.map((spec) => `http://127.0.0.1:${spec.monitorPort}`);
  const ready = async (): Promise<void> => {
    await waitFor(
      async () => {
        for (const url of monitorUrls) {
          if ((await fetch(`${url}/healthz`)).status !== 200) return false;
          const jsz = (await (await fetch(`${url}/jsz`)).json()) as {
            meta_cluster?: { leader?: string; cluster_size?: number };
          };
          if (!jsz.meta_cluster?.leader || jsz.meta_cluster.cluster_size !== size) return false;
        }
        return true;
      },
      'every NATS cluster node to be healthy under one JetStream meta leader',
      30_000,
    );
  };
  const nodes: NatsTestServer[] = [];
  try {
    // Started together: JetStream waits for its peers before it elects a meta leader.
    for (const spec of specs) {
      nodes.push(
        await startNatsProcess(binary, spec.port, [
          ...['--server_name', spec.name, '--cluster_name', 'pushd-test'],
          ...['--cluster', `nats://127.0.0.1:${spec.routePort}`, '--routes', routes],
          ...['-m', String(spec.monitorPort)],
        ]),
      );
    }
    await ready();
  } catch (error) {
    await Promise.all(nodes.map((node) => node.stop()));
    throw error;
  }
  return {
    url: nodes.map((node) => node.url).join(','),
    nodes,
    monitorUrls,
    ready,
    async stop() {
      await Promise.all(nodes.map((node) => node.stop()));
    },
  };
}

/**
 * Starts a Redis Cluster of `masters` redis-server processes (no replicas), each on a free port with its
 * cluster bus on another, and waits until every node sees all 16,384 slots served. Its `url` lists every
 * node, comma-separated, as `createRedisClient` takes a cluster's seeds. The slots are split with
 * `redis-cli --cluster create` (Debian's redis-tools, which redis-server depends on).
 */
export async function startRedisCluster(masters = 3): Promise<TestServer> {
  const binary = requireBinary('redis-server');
  const nodes: TestServer[] = [];
  try {
    for (let i = 0; i < masters; i++) {
      const port = await freePort();
      const busPort = await freePort();
      const dir = mkdtempSync(join(tmpdir(), 'pushd-redis-cluster-'));
      const child = spawn(
        binary,
        [
          ...['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
          ...['--dir', dir, '--cluster-enabled', 'yes', '--cluster-port', String(busPort)],
          ...['--cluster-config-file', join(dir, 'nodes.conf'), '--cluster-node-timeout', '5000'],
        ],
        { stdio: 'ignore' },
      );
      nodes.push(await track(child, port, `redis://127.0.0.1:${port}`, dir));
    }
    const addresses = nodes.map((node) => `127.0.0.1:${node.port}`);
    const created = spawnSync(
      'redis-cli',
      ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'],
      { encoding: 'utf8', timeout: 30_000 },
    );
    if (created.status !== 0) {
      throw new Error(
        `redis-cli --cluster create failed (redis-cli comes with redis-tools: apt-get install -y ` +
          `redis-tools): ${created.error?.message ?? ''}${created.stdout ?? ''}${created.stderr ?? ''}`,
      );
    }
    // redis-cli returns once the nodes agree on the configuration; each must also serve every slot.
    await waitFor(
      () =>
        nodes.every((node) => {
          const info = spawnSync('redis-cli', ['-p', String(node.port), 'cluster', 'info'], {
            encoding: 'utf8',
          });
          return /cluster_state:ok/.test(info.stdout) && /cluster_slots_ok:16384/.test(info.stdout);
        }),
      'every Redis Cluster node to serve all 16384 slots',
    );
  } catch (error) {
    await Promise.all(nodes.map((node) => node.stop()));
    throw error;
  }
  return {
    url: nodes.map((node) => node.url).join(','),
    port: nodes[0]!.port,
    async stop() {
      await Promise.all(nodes.map((node) => node.stop()));
    },
  };
}

async function track(child: ChildProcess, port: number, url: string, dir: string): Promise<TestServer> {
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  try {
    await waitForPort(port);
  } catch (error) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    url,
    port,
    async stop() {
      if (!exited) {
        const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await gone;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

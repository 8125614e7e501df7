import { freePort } from '@pushd/testkit';
import { HarnessChild } from './children.js';
import type { ConnectArgs, ConnectResult, DeviceSpec, Received, WorkerStats } from './device-worker.js';
import type { Cleanup } from './lifecycle.js';
import { percentiles, type TcpCounters, tcpCounters, tcpIncrease } from './measure.js';

/** Connections one device process may hold: it is limited to 20,000 open files like every process. */
export const MAX_DEVICES_PER_WORKER = 15_000;
/** Loopback source addresses 127.0.0.2 ... 127.0.0.254. */
const SOURCE_ADDRESSES = 253;

export interface FleetConnectOptions {
  /** Handshakes in flight per server per device process. */
  inflight: number;
  timeoutMs: number;
  attempts: number;
}

export interface FleetConnectResult {
  /** Listen-queue overflows and SYN retransmissions on the machine meanwhile (kernel counters). */
  tcp: TcpCounters;
  ok: number;
  failed: number;
  errors: Record<string, number>;
  /** From the command to the last worker done, as the harness saw it. */
  elapsedMs: number;
  handshakeP50Ms: number;
  handshakeP99Ms: number;
  handshakeMaxMs: number;
}

export interface FleetStats {
  open: number;
  received: number;
  unexpectedCloses: Record<string, number>;
  rss: number;
  heapUsed: number;
}

/** The device processes of a run: each holds a contiguous share of the devices. */
export class DeviceFleet {
  private constructor(readonly workers: HarnessChild[]) {}

  /** `inspect`: give each process an inspector port (to profile it). */
  static async start(cleanup: Cleanup, workers: number, inspect = false): Promise<DeviceFleet> {
    const children: HarnessChild[] = [];
    for (let index = 0; index < workers; index++) {
      const inspectPort = inspect ? await freePort() : undefined;
      children.push(
        new HarnessChild(`devices${index + 1}`, 'test/bench/device-worker.ts', {
          nodeArgs: ['--expose-gc'],
          ...(inspectPort === undefined ? {} : { inspectPort }),
        }),
      );
    }
    for (const child of children) cleanup.add(child.name, () => child.stop());
    await Promise.all(children.map((child) => child.ready()));
    return new DeviceFleet(children);
  }

  /**
   * Device processes for `devices` connections: one per 12,500 (at most 15,000 each), and at least two
   * from 2,000 devices on, so that the harness is not held to one core.
   */
  static workersFor(devices: number, requested?: number): number {
    const needed = Math.max(1, Math.ceil(devices / MAX_DEVICES_PER_WORKER));
    const preferred = Math.max(devices >= 2_000 ? 2 : 1, Math.ceil(devices / 12_500));
    return Math.max(needed, requested ?? preferred);
  }

  /**
   * Handshakes in flight per server per device process, so that about `perServer` are in flight per
   * server: servers listen with Node's default backlog (511), and a burst over it overflows the accept
   * queue, after which the kernel's SYN retransmission timers (1 s, 3 s, 7 s...) and not the servers set
   * the pace.
   */
  static inflightFor(workers: number, perServer = 400): number {
    return Math.max(1, Math.floor(perServer / workers));
  }

  pids(): Map<string, number> {
    return new Map(this.workers.map((worker) => [worker.name, worker.pid]));
  }

  inspectPorts(): Map<string, number> {
    return inspectPortsOf(this.workers);
  }

  /**
   * Connects every device of the credential lists as a session: device i goes to gateway i mod
   * urls.length from source address 127.0.0.(2 + i mod 253), through the worker holding its share of the
   * list. All workers start at once.
   */
  async connect(
    urls: string[],
    accessId: number,
    devices: { tokens: string[]; credentials: string[] },
    options: FleetConnectOptions,
  ): Promise<FleetConnectResult> {
    const count = devices.tokens.length;
    const per = Math.ceil(count / this.workers.length);
    const started = performance.now();
    const tcpBefore = tcpCounters();
    const results = await Promise.all(
      this.workers.map((worker, w) => {
        const specs: DeviceSpec[] = [];
        for (let i = w * per; i < Math.min(count, (w + 1) * per); i++) {
          specs.push({
            token: devices.tokens[i]!,
            credential: devices.credentials[i]!,
            gateway: i % urls.length,
            localAddress: `127.0.0.${2 + (i % SOURCE_ADDRESSES)}`,
          });
        }
        const args: ConnectArgs = { urls, accessId, devices: specs, ...options };
        return worker.call<ConnectResult>('connect', args);
      }),
    );
    const elapsedMs = performance.now() - started;
    const tcp = tcpIncrease(tcpBefore);
    const errors: Record<string, number> = {};
    for (const result of results) {
      for (const [code, n] of Object.entries(result.errors)) errors[code] = (errors[code] ?? 0) + n;
    }
    const all = new Float64Array(results.reduce((sum, r) => sum + r.handshakeMs.length, 0));
    let offset = 0;
    for (const result of results) {
      all.set(result.handshakeMs, offset);
      offset += result.handshakeMs.length;
    }
    const [p50 = Number.NaN, p99 = Number.NaN, max = Number.NaN] = percentiles(all, [50, 99, 100]);
    return {
      tcp,
      ok: results.reduce((sum, r) => sum + r.ok, 0),
      failed: results.reduce((sum, r) => sum + r.failed, 0),
      errors,
      elapsedMs,
      handshakeP50Ms: p50,
      handshakeP99Ms: p99,
      handshakeMaxMs: max,
    };
  }

  /** Closes every connection (WebSocket close 1000). */
  async close(): Promise<number> {
    const started = performance.now();
    await Promise.all(this.workers.map((worker) => worker.call('close')));
    return performance.now() - started;
  }

  async stats(gc = false): Promise<FleetStats> {
    const all = await Promise.all(this.workers.map((worker) => worker.call<WorkerStats>('stats', { gc })));
    const unexpectedCloses: Record<string, number> = {};
    for (const stats of all) {
      for (const [code, n] of Object.entries(stats.unexpectedCloses)) {
        unexpectedCloses[code] = (unexpectedCloses[code] ?? 0) + n;
      }
    }
    return {
      open: all.reduce((sum, s) => sum + s.open, 0),
      received: all.reduce((sum, s) => sum + s.received, 0),
      unexpectedCloses,
      rss: all.reduce((sum, s) => sum + s.memory.rss, 0),
      heapUsed: all.reduce((sum, s) => sum + s.memory.heapUsed, 0),
    };
  }

  /** What the devices received since the last collect (and forgets it). */
  async collect(): Promise<Received> {
    const all = await Promise.all(this.workers.map((worker) => worker.call<Received>('collect')));
    return {
      msgIds: concat(all.map((r) => r.msgIds)),
      latencyMs: concat(all.map((r) => r.latencyMs)),
    };
  }
}

/** Pusher processes (pusher-worker.ts), ready to be given their init call. */
export async function startPushers(
  cleanup: Cleanup,
  count: number,
  inspect = false,
): Promise<HarnessChild[]> {
  const pushers: HarnessChild[] = [];
  for (let index = 0; index < count; index++) {
    const inspectPort = inspect ? await freePort() : undefined;
    pushers.push(
      new HarnessChild(`pusher${index + 1}`, 'test/bench/pusher-worker.ts', {
        ...(inspectPort === undefined ? {} : { inspectPort }),
      }),
    );
  }
  for (const pusher of pushers) cleanup.add(pusher.name, () => pusher.stop());
  await Promise.all(pushers.map((pusher) => pusher.ready()));
  return pushers;
}

/** Reference servers (ref-server.ts), listening on loopback. */
export interface References {
  servers: HarnessChild[];
  /** Device endpoint of each, as a gateway's URL looks. */
  urls: string[];
  /** Stops them (before the system's turn, so that they take nothing from it). */
  stop(): Promise<void>;
}

export async function startReferences(cleanup: Cleanup, count: number, inspect = false): Promise<References> {
  const servers: HarnessChild[] = [];
  for (let index = 0; index < count; index++) {
    const inspectPort = inspect ? await freePort() : undefined;
    servers.push(
      new HarnessChild(count === 1 ? 'reference' : `reference${index + 1}`, 'test/bench/ref-server.ts', {
        ...(inspectPort === undefined ? {} : { inspectPort }),
      }),
    );
  }
  const stops = servers.map((server) => cleanup.add(server.name, () => server.stop()));
  await Promise.all(servers.map((server) => server.ready()));
  const urls = await Promise.all(
    servers.map(
      async (server) => `ws://127.0.0.1:${await server.call<number>('listen', { host: '127.0.0.1' })}/v1/ws`,
    ),
  );
  return {
    servers,
    urls,
    stop: async () => {
      await Promise.all(stops.map((stop) => stop()));
    },
  };
}

/** Inspector ports of the harness processes that have one, by name. */
export function inspectPortsOf(children: HarnessChild[]): Map<string, number> {
  const ports = new Map<string, number>();
  for (const child of children) if (child.inspectPort !== undefined) ports.set(child.name, child.inspectPort);
  return ports;
}

function concat(parts: Float64Array[]): Float64Array {
  const out = new Float64Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

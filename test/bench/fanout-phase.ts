// One measured phase of the fanout and peers benchmarks: subscribers connect to one target (the gateways,
// the bare ws reference, socket.io, Mosquitto), a few unmeasured broadcasts warm every process up, then
// the measured broadcasts run, then the subscribers disconnect. Also the pushd side shared by both
// benchmarks: the system, its devices and the Push calls that broadcast.
import { DispatchServiceService, Platform, type PushRequest } from '@pushd/proto';
import { basicAuthorization, createRpcClient } from '@pushd/rpc';
import type { HarnessChild } from './children.js';
import {
  type FleetSubscribeResult,
  type LoopResult,
  runBroadcasts,
  type SubscribeOptions,
  type SubscriberFleet,
} from './fanout-fleet.js';
import { notification } from './fanout-message.js';
import { type Cleanup, log } from './lifecycle.js';
import { CpuMeter, formatCpu, PhaseProfiler, sleep } from './measure.js';
import type { ServiceEnv } from './options.js';
import { type BenchApp, createBenchApp, type RegisteredDevices, registerDevices } from './register.js';
import { formatCounts } from './report.js';
import { type BenchSystem, startBenchSystem } from './system.js';

/**
 * The audience of the repeated broadcasts: a tag push to the built-in tag every registered device of the
 * benchmark has (they are all Android). It takes the same path as `all` (stored once per app, published
 * once to pushd.broadcast.<access_id>, evaluated by every gateway against the sessions it holds) and is not
 * limited to one per 3 s per app as `all` is.
 */
export const BROADCAST_TAG = 'pushd:platform:android';
export const AUDIENCE_NOTE = `tag push to ${BROADCAST_TAG} (every device; not rate limited)`;
/** dispatch allows one `all` push per 3 s per app. */
export const ALL_INTERVAL_MS = 3_100;

/** Broadcast numbers: unique over a run, so that a phase never counts another's late messages. */
export class SeqCounter {
  private next = 1;

  take(count: number): number {
    const first = this.next;
    this.next += count;
    return first;
  }
}

export interface PhaseSpec {
  label: string;
  subscribe: SubscribeOptions;
  /** Subscriber processes to use (default: SubscriberFleet.workersFor). */
  workers?: number;
  publish: (seq: number, t: number) => Promise<void>;
  warmup: number;
  broadcasts: number;
  window: number;
  timeoutMs: number;
  /** The server side's processes, for CPU shares and profiles. */
  pids: () => Map<string, number>;
  inspectPorts: () => Map<string, number>;
  /** Runs around the measured loop (counters of the system). */
  beforeLoop?: () => Promise<void>;
  afterLoop?: () => Promise<void>;
  /** Runs after the subscribers disconnected (wait for the servers to forget them). */
  afterClose?: () => Promise<void>;
  /** Extra loops after the measured one, with the same subscribers (the `all` audience). */
  extra?: (run: (options: ExtraLoop) => Promise<LoopResult>) => Promise<void>;
}

export interface ExtraLoop {
  publish: (seq: number, t: number) => Promise<void>;
  count: number;
  minIntervalMs?: number;
}

export interface PhaseResult {
  label: string;
  connect: FleetSubscribeResult;
  loop: LoopResult;
  unexpectedCloses: Record<string, number>;
}

export async function runPhase(
  fleet: SubscriberFleet,
  seqs: SeqCounter,
  profileDir: string | undefined,
  phaseName: string,
  spec: PhaseSpec,
): Promise<PhaseResult> {
  const cpuOf = () => new Map([...spec.pids(), ...fleet.pids()]);
  log(`${spec.label}: connecting ${spec.subscribe.count} ${spec.subscribe.kind} subscribers`);
  const connect = await fleet.subscribe(spec.subscribe, spec.workers);
  log(
    `${spec.label}: ${connect.ok} connected in ${(connect.elapsedMs / 1000).toFixed(1)} s over ` +
      `${connect.workers} processes, ${connect.failed} failed (${formatCounts(connect.errors)})`,
  );
  if (connect.failed > 0) {
    throw new Error(
      `${spec.label}: ${connect.failed} subscribers could not connect: ${formatCounts(connect.errors)}`,
    );
  }
  const closesBefore = (await fleet.stats()).unexpectedCloses;
  const cpu = new CpuMeter(cpuOf);
  if (spec.warmup > 0) {
    log(`${spec.label}: ${spec.warmup} warm-up broadcasts`);
    const warm = await runBroadcasts(fleet, spec.publish, cpu, {
      firstSeq: seqs.take(spec.warmup),
      count: spec.warmup,
      window: 1,
      timeoutMs: spec.timeoutMs,
    });
    log(
      `${spec.label}: warm-up ${warm.delivered}/${warm.expected} received in ` +
        `${(warm.elapsedMs / 1000).toFixed(1)} s, last device p50 ${warm.lastP50.toFixed(0)} ms (not measured)`,
    );
  }
  await sleep(500);
  await spec.beforeLoop?.();
  const profiler = new PhaseProfiler(
    profileDir,
    () => new Map([...spec.inspectPorts(), ...fleet.inspectPorts()]),
  );
  await profiler.start(phaseName);
  log(`${spec.label}: ${spec.broadcasts} broadcasts, ${spec.window} in flight`);
  const loop = await runBroadcasts(fleet, spec.publish, cpu, {
    firstSeq: seqs.take(spec.broadcasts),
    count: spec.broadcasts,
    window: spec.window,
    timeoutMs: spec.timeoutMs,
  });
  const profiles = await profiler.stop();
  if (profiles.length > 0) log(`${spec.label}: profiles ${profiles.join(' ')}`);
  log(
    `${spec.label}: ${loop.delivered}/${loop.expected} received, ${Math.round(loop.msgsPerS)} msgs/s, ` +
      `p50 ${loop.p50.toFixed(1)} p99 ${loop.p99.toFixed(1)} ms, last device p50 ${loop.lastP50.toFixed(0)} ms, ` +
      `${loop.incomplete} incomplete; cpu ${formatCpu(loop.cpu, 8)}`,
  );
  await spec.afterLoop?.();
  if (spec.extra !== undefined) {
    await spec.extra((extra) =>
      runBroadcasts(fleet, extra.publish, cpu, {
        firstSeq: seqs.take(extra.count),
        count: extra.count,
        window: 1,
        timeoutMs: spec.timeoutMs,
        ...(extra.minIntervalMs === undefined ? {} : { minIntervalMs: extra.minIntervalMs }),
      }),
    );
  }
  const closesAfter = (await fleet.stats()).unexpectedCloses;
  const unexpectedCloses: Record<string, number> = {};
  for (const [code, n] of Object.entries(closesAfter)) {
    const delta = n - (closesBefore[code] ?? 0);
    if (delta > 0) unexpectedCloses[code] = delta;
  }
  log(
    `${spec.label}: subscribers closed without the harness closing them: ${formatCounts(unexpectedCloses)}`,
  );
  await fleet.close();
  await spec.afterClose?.();
  return { label: spec.label, connect, loop, unexpectedCloses };
}

/** An app of the pushd side with its registered (Android) devices, and the Push calls that broadcast. */
export interface OursApp {
  app: BenchApp;
  registered: RegisteredDevices;
  /** A tag push to BROADCAST_TAG carrying broadcast `seq`. */
  publishTags(seq: number, t: number): Promise<void>;
  /** A push to `all` carrying broadcast `seq` (one per 3 s per app). */
  publishAll(seq: number, t: number): Promise<void>;
}

/** The pushd side: the system, and apps created on it. */
export interface Ours {
  system: BenchSystem;
  /**
   * A new app with `devices` registered devices. Each configuration of a run uses its own, so that its
   * devices connect with no broadcasts of earlier phases owed to them.
   */
  createApp(devices: number): Promise<OursApp>;
  /** Waits until no gateway holds a session (after the devices disconnected). */
  drained(): Promise<void>;
}

export async function startOurs(
  cleanup: Cleanup,
  options: { gateways: number; profiling: boolean; serviceEnv?: ServiceEnv },
): Promise<Ours> {
  const system = await startBenchSystem(cleanup, {
    gateways: options.gateways,
    ...(options.profiling ? { inspect: 'all' as const } : {}),
    ...(options.serviceEnv === undefined ? {} : { serviceEnv: options.serviceEnv }),
  });
  const tags: PushRequest['audience'] = {
    target: {
      $case: 'tags',
      value: { form: { $case: 'tagList', value: { tags: [BROADCAST_TAG], op: 'OR' } } },
    },
  };
  const all: PushRequest['audience'] = { target: { $case: 'all', value: {} } };
  return {
    system,
    createApp: async (devices) => {
      const app = await createBenchApp(system.registry);
      log(`registering ${devices} devices (app ${app.accessId})`);
      const registered = await registerDevices(system.registry, app, devices);
      log(
        `registered in ${(registered.elapsedMs / 1000).toFixed(1)} s (${registered.perSecond.toFixed(0)}/s)`,
      );
      const client = createRpcClient(DispatchServiceService, {
        address: system.dispatch,
        authorization: basicAuthorization(app.accessId, app.secretKey),
        deadlineMs: 30_000,
      });
      cleanup.add(`dispatch client of app ${app.accessId}`, async () => client.close());
      const push = async (audience: PushRequest['audience'], seq: number, t: number) => {
        await client.push({
          accessId: app.accessId,
          audience,
          message: notification(seq, t),
          platform: Platform.PLATFORM_UNSPECIFIED,
        });
      };
      return {
        app,
        registered,
        publishTags: (seq, t) => push(tags, seq, t),
        publishAll: (seq, t) => push(all, seq, t),
      };
    },
    drained: async () => {
      const deadline = performance.now() + 60_000;
      while ((await system.sessions()) > 0 && performance.now() < deadline) await sleep(200);
    },
  };
}

/** The broadcast call of harness server processes (fanout-ref.ts, socketio-server.ts). */
export function publishToServers(servers: HarnessChild[]): (seq: number, t: number) => Promise<void> {
  return async (seq, t) => {
    await Promise.all(servers.map((server) => server.call('broadcast', { seq, t })));
  };
}

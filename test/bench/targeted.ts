// targeted: open-loop single-token pushes through dispatch's gRPC API to online devices, in steps of
// increasing rate; a step holds when its p99 publish-to-device latency is under 100 ms, nothing accepted
// is lost, nothing is refused and the pushers kept the rate.
import { availableParallelism } from 'node:os';
import { DispatchServiceService } from '@pushd/proto';
import { bearerAuthorization, createRpcClient } from '@pushd/rpc';
import type { HarnessChild } from './children.js';
import { DeviceFleet, inspectPortsOf, startPushers } from './fleet.js';
import { type Cleanup, log } from './lifecycle.js';
import {
  CpuMeter,
  cpuPerItem,
  formatCpu,
  formatIncrease,
  metricIncrease,
  PhaseProfiler,
  percentiles,
  sleep,
} from './measure.js';
import type { BenchOptions } from './options.js';
import type { PusherInit, RateArgs, RateResult } from './pusher-worker.js';
import { createBenchApp, registerDevices } from './register.js';
import { type BenchResult, formatCounts, round } from './report.js';
import { CLUSTER_TOKEN, eventLoopLagMaxMs, mergeMetrics, settleAll, startBenchSystem } from './system.js';

/** The latency bound of a sustained rate (the definition). */
const P99_BOUND_MS = 100;
const FULL_RATES = [
  25, 50, 100, 250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10_000, 12_500, 15_000, 20_000,
];
const SMOKE_RATES = [25, 50];
/** Calls in flight per pusher in the closed-loop step. */
const CLOSED_LOOP_INFLIGHT = 64;

interface Step {
  label: string;
  /** Offered rate; 0 for the closed-loop step. */
  rate: number;
  sent: number;
  accepted: number;
  received: number;
  lost: number;
  errors: Record<string, number>;
  p50: number;
  p99: number;
  max: number;
  apiP99: number;
  /** Pushes accepted per second over the step (sending time). */
  achieved: number;
  pusherLagMs: number;
  saturated: boolean;
  cpu: Map<string, number>;
  /** CPU ms per accepted push over the sending phase: the system's processes, and the devices' and pushers'. */
  cpuMsPerPush: { servers: number; harness: number };
  unexpectedCloses: Record<string, number>;
  /** Longest event-loop stall of each service over the step (and drain), ms. */
  lagMs: Map<string, number>;
  held: boolean;
  why: string;
}

export async function targetedBench(cleanup: Cleanup, options: BenchOptions): Promise<BenchResult> {
  const devices = options.devices ?? (options.smoke ? 50 : 18_000);
  // A full step outlasts the gateway's heartbeat interval (25 s), so that every step includes one sweep:
  // a rate is only "sustained" if it holds through the system's periodic work too.
  const stepMs = (options.durationS ?? (options.smoke ? 1 : 30)) * 1000;
  const drainMs = (options.drainS ?? (options.smoke ? 2 : 5)) * 1000;
  const rates = options.rates ?? (options.smoke ? SMOKE_RATES : FULL_RATES);
  const pusherCount = Math.min(options.pushers ?? (options.smoke ? 1 : 2), devices);
  const gateways = options.gateways ?? Math.ceil(devices / 18_000);

  log(`starting the system with ${gateways} gateway(s), ${pusherCount} pusher(s)`);
  const workerCount = DeviceFleet.workersFor(devices, options.deviceWorkers);
  const profiling = options.cpuProfDir !== undefined;
  const [system, fleet, pushers] = await settleAll([
    startBenchSystem(cleanup, {
      gateways,
      ...(profiling ? { inspect: 'all' as const } : {}),
      ...(options.serviceEnv === undefined ? {} : { serviceEnv: options.serviceEnv }),
    }),
    DeviceFleet.start(cleanup, workerCount, profiling),
    startPushers(cleanup, pusherCount, profiling),
  ] as const);
  const profiler = new PhaseProfiler(
    options.cpuProfDir,
    () => new Map([...system.inspectPorts(), ...fleet.inspectPorts(), ...inspectPortsOf(pushers)]),
  );
  const app = await createBenchApp(system.registry);
  log(`registering ${devices} devices`);
  const registered = await registerDevices(system.registry, app, devices);
  log(`registered in ${(registered.elapsedMs / 1000).toFixed(1)} s`);
  const ramp = await fleet.connect(
    system.gateways.map((g) => g.url),
    app.accessId,
    registered,
    {
      inflight: options.inflight ?? DeviceFleet.inflightFor(fleet.workers.length),
      timeoutMs: 30_000,
      attempts: 3,
    },
  );
  if (ramp.failed > 0)
    throw new Error(`${ramp.failed} devices could not connect: ${formatCounts(ramp.errors)}`);
  log(`${ramp.ok} devices online in ${(ramp.elapsedMs / 1000).toFixed(1)} s`);

  // Disjoint slices: two pushers never race on one device (the ordering machinery has its own tests).
  const per = Math.ceil(devices / pusherCount);
  const slices = pushers.map((_, index) => registered.tokens.slice(index * per, (index + 1) * per));
  await Promise.all(
    pushers.map((pusher, index) =>
      pusher.call('init', {
        dispatch: system.dispatch,
        accessId: app.accessId,
        secretKey: app.secretKey,
        tokens: slices[index]!,
        deadlineMs: 10_000,
      } satisfies PusherInit),
    ),
  );
  // The load generators, apart from the system under test in the CPU per push.
  const harness = new Set([...fleet.pids().keys(), ...pushers.map((p) => p.name)]);
  const cpu = new CpuMeter(
    () =>
      new Map([
        ...system.pids(),
        ...fleet.pids(),
        ...pushers.map((p) => [p.name, p.pid] as [string, number]),
      ]),
  );

  // Warm-up, not counted: first calls open gRPC channels, fill the app-secret cache and compile the hot
  // paths of every process.
  const warmRate = Math.min(rates[0] ?? 100, 500);
  log(`warm-up: ${warmRate}/s for ${options.smoke ? 0.5 : 3} s`);
  await Promise.all(
    pushers.map((pusher) =>
      pusher.call<RateResult>('rate', {
        rate: warmRate / pusherCount,
        durationMs: options.smoke ? 500 : 3_000,
        maxInflight: 10_000,
      } satisfies RateArgs),
    ),
  );
  await sleep(options.smoke ? 200 : 2_000);

  // The system's own counters around each step: where pushes went when they did not arrive, and each
  // service's longest event-loop stall (the scrape before the step resets it).
  const snapshot = () => system.metricsByService();
  const admin = createRpcClient(DispatchServiceService, {
    address: system.dispatch,
    authorization: bearerAuthorization(CLUSTER_TOKEN),
  });
  cleanup.add('dispatch client', async () => admin.close());

  /**
   * One step: the pushers run `call`, then the devices get `drainMs` to receive what was accepted.
   * `rate` is the offered rate of an open-loop step, undefined for the closed-loop one.
   */
  const runStep = async (
    label: string,
    rate: number | undefined,
    call: (pusher: HarnessChild) => Promise<RateResult>,
  ): Promise<Step> => {
    await fleet.collect();
    const closesBefore = (await fleet.stats()).unexpectedCloses;
    const metricsBefore = await snapshot();
    log(`step ${label} for ${stepMs / 1000} s`);
    await profiler.start(`targeted-${label.replace(/[^A-Za-z0-9]+/g, '-')}`);
    cpu.start();
    const results = await Promise.all(pushers.map(call));
    const shares = cpu.stop();
    const cpuSeconds = cpu.seconds;
    const profiles = await profiler.stop();
    if (profiles.length > 0) log(`  profiles: ${profiles.join(' ')}`);
    const accepted = new Set<number>();
    for (const result of results) for (const msgId of result.accepted) accepted.add(msgId);
    // Drain: wait until every accepted push arrived, or drainMs without progress.
    let received = 0;
    let lastProgress = performance.now();
    while (performance.now() - lastProgress < drainMs) {
      const now = (await fleet.stats()).received;
      if (now > received) lastProgress = performance.now();
      received = now;
      if (received >= accepted.size) break;
      await sleep(100);
    }
    const got = await fleet.collect();
    const latencies: number[] = [];
    const seen = new Set<number>();
    for (let i = 0; i < got.msgIds.length; i++) {
      const msgId = got.msgIds[i]!;
      if (!accepted.has(msgId) || seen.has(msgId)) continue;
      seen.add(msgId);
      latencies.push(got.latencyMs[i]!);
    }
    const [p50 = Number.NaN, p99 = Number.NaN, max = Number.NaN] = percentiles(latencies, [50, 99, 100]);
    const apiMs = results.flatMap((r) => Array.from(r.apiMs));
    const errors: Record<string, number> = {};
    for (const result of results) {
      for (const [code, n] of Object.entries(result.errors)) errors[code] = (errors[code] ?? 0) + n;
    }
    const sent = results.reduce((sum, r) => sum + r.sent, 0);
    const sendingS = Math.max(...results.map((r) => r.elapsedMs)) / 1000;
    const closesAfter = (await fleet.stats()).unexpectedCloses;
    const unexpectedCloses: Record<string, number> = {};
    for (const [code, n] of Object.entries(closesAfter)) {
      const delta = n - (closesBefore[code] ?? 0);
      if (delta > 0) unexpectedCloses[code] = delta;
    }
    const step: Step = {
      label,
      rate: rate ?? 0,
      sent,
      accepted: accepted.size,
      received: seen.size,
      lost: accepted.size - seen.size,
      errors,
      p50,
      p99,
      max,
      apiP99: percentiles(apiMs, [99])[0] ?? Number.NaN,
      achieved: accepted.size / Math.max(sendingS, stepMs / 1000),
      pusherLagMs: Math.max(...results.map((r) => r.maxLagMs)),
      saturated: results.some((r) => r.saturated),
      cpu: shares,
      cpuMsPerPush: cpuPerItem(shares, cpuSeconds, accepted.size, harness),
      unexpectedCloses,
      lagMs: new Map(),
      held: false,
      why: '',
    };
    const due = results.reduce((sum, r) => sum + r.due, 0);
    const reasons: string[] = [];
    if (!(step.p99 < P99_BOUND_MS)) reasons.push(`p99 ${step.p99.toFixed(0)} ms`);
    if (step.lost > 0) reasons.push(`${step.lost} lost`);
    const failedCalls = Object.values(errors).reduce((sum, n) => sum + n, 0);
    if (failedCalls > 0) reasons.push(`${failedCalls} refused (${formatCounts(errors)})`);
    if (step.saturated || sent < due) reasons.push(`pushers could not send (${sent}/${due})`);
    // Open loop means the rate was offered; a sending phase that ran long means it was not kept.
    if (sendingS > (stepMs / 1000) * 1.5) reasons.push(`took ${sendingS.toFixed(1)} s to answer`);
    step.held = reasons.length === 0;
    step.why = step.held ? 'held' : reasons.join('; ');
    const byServiceAfter = await snapshot();
    const metricsAfter = mergeMetrics(byServiceAfter);
    const merged = mergeMetrics(metricsBefore);
    const moved = (name: string) => formatIncrease(metricIncrease(merged, metricsAfter, name));
    step.lagMs = eventLoopLagMaxMs(byServiceAfter);
    log(
      `  ${label}: ${Math.round(step.achieved)}/s accepted, p50 ${p50.toFixed(1)} p99 ${p99.toFixed(1)} ms, ` +
        `${step.lost} lost, ${step.why}; cpu ${formatCpu(shares, 6)}; cpu per push: servers ` +
        `${step.cpuMsPerPush.servers} ms, devices and pushers ${step.cpuMsPerPush.harness} ms`,
    );
    log(
      `  routed ${moved('dispatch_deliveries_routed_total')}; delivered ` +
        `${moved('gateway_messages_delivered_total')}; gap refetches ${moved('gateway_gap_refetches_total')}; ` +
        `duplicates ${moved('gateway_duplicates_dropped_total')}; send-queue drops ` +
        `${moved('gateway_send_queue_drops_total')}; disconnects ${moved('gateway_disconnects_total')}; ` +
        `frames from devices ${moved('gateway_frames_in_total')}; ` +
        `devices closed ${formatCounts(unexpectedCloses)}; longest event-loop stall ${formatStalls(step.lagMs)}`,
    );
    if (step.lost > 0) {
      // A few of the lost ones: still in the device's offline window (never acknowledged) or not.
      const tokenOf = new Map<number, string>();
      results.forEach((result, index) => {
        result.accepted.forEach((msgId, i) => {
          tokenOf.set(msgId, slices[index]![result.acceptedTokens[i]!]!);
        });
      });
      const lostIds = [...accepted].filter((msgId) => !seen.has(msgId)).slice(0, 5);
      for (const msgId of lostIds) {
        const token = tokenOf.get(msgId) ?? '';
        const pending = await admin.fetchPending({ accessId: app.accessId, token, afterMsgId: 0 });
        const inWindow = pending.messages.some((message) => message.msgId === msgId);
        log(
          `  lost msg ${msgId} to ${token.slice(0, 12)}…: ${inWindow ? 'still in its window' : 'not in its window'}` +
            ` (window ${pending.messages.map((m) => m.msgId).join(',')}, last ${pending.lastMsgId})`,
        );
      }
    }
    return step;
  };

  const steps: Step[] = [];
  for (const rate of rates) {
    const step = await runStep(`${rate}/s`, rate, (pusher) =>
      pusher.call<RateResult>('rate', {
        rate: rate / pusherCount,
        durationMs: stepMs,
        maxInflight: Math.max(1_000, rate * 2),
      } satisfies RateArgs),
    );
    steps.push(step);
    if (!step.held) break;
  }
  // Not part of the figure: what the system accepts with a fixed number of calls in flight, whatever the
  // latency, so that the table shows how far the latency-bound rate is from the throughput-bound one.
  // In flight per pusher stays well under its devices, so that no two calls race on one device.
  const closedInflight = Math.max(1, Math.min(CLOSED_LOOP_INFLIGHT, Math.floor(per / 4)));
  const closedLoop = await runStep(
    `closed loop, ${closedInflight} in flight per pusher`,
    undefined,
    (pusher) => pusher.call<RateResult>('closed', { durationMs: stepMs, concurrency: closedInflight }),
  );

  // What the machine's cores allow at the closed loop's CPU per push (its batches are the largest, so
  // its cost per push the lowest): with the load generators sharing the cores, and for the system alone.
  const cores = availableParallelism();
  const closedCpu = closedLoop.cpuMsPerPush;
  const held = steps.filter((s) => s.held);
  const best = held[held.length - 1];
  const lost = steps.reduce((sum, s) => sum + s.lost, 0);
  return {
    tables: [
      {
        title: `targeted: single-token pushes to ${devices} online devices, open loop, ${stepMs / 1000} s steps`,
        headers: [
          'step',
          'accepted',
          'lost',
          'p50 ms',
          'p99 ms',
          'max ms',
          'api p99 ms',
          'achieved/s',
          'result',
          'cpu (cores)',
          'cpu ms/push: system + devices, pushers',
          'longest stall ms',
        ],
        rows: [...steps, closedLoop].map((s) => [
          s.label,
          s.accepted,
          s.lost,
          s.p50,
          s.p99,
          s.max,
          s.apiP99,
          Math.round(s.achieved),
          s.why,
          formatCpu(s.cpu, 5),
          `${s.cpuMsPerPush.servers} + ${s.cpuMsPerPush.harness}`,
          formatStalls(s.lagMs, 3),
        ]),
      },
    ],
    figures: {
      benchmark: 'targeted',
      devices,
      max_pushes_per_s: best?.rate ?? 0,
      p99_ms: round(best?.p99 ?? steps[0]?.p99 ?? Number.NaN),
      lost: lost + closedLoop.lost,
      steps: steps.length,
      closed_loop_pushes_per_s: Math.round(closedLoop.achieved),
      closed_loop_p99_ms: round(closedLoop.p99),
      first_failed_rate: steps.find((s) => !s.held)?.rate ?? 0,
      pushers: pusherCount,
      closed_loop_server_cpu_ms_per_push: closedCpu.servers,
      closed_loop_harness_cpu_ms_per_push: closedCpu.harness,
      cpu_bound_pushes_per_s: pushesPerSecondOf(cores, closedCpu.servers + closedCpu.harness),
      server_cpu_bound_pushes_per_s: pushesPerSecondOf(cores, closedCpu.servers),
    },
  };
}

/** The pushes per second `cores` allow at `msPerPush` of CPU each; NaN (null in JSON) when none was measured. */
function pushesPerSecondOf(cores: number, msPerPush: number): number {
  return msPerPush > 0 ? Math.round((cores * 1000) / msPerPush) : Number.NaN;
}

/** "gateway 1250 ms, dispatch 40 ms" (longest first). */
function formatStalls(lagMs: Map<string, number>, limit = 5): string {
  return [...lagMs]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, ms]) => `${name} ${ms.toFixed(0)} ms`)
    .join(', ');
}

// reconnect: devices spread over several gateways drop, get one push each while offline, then all
// reconnect at once with their credentials; how long until all are connected and all offline messages are
// delivered, next to the same device processes connecting at once to bare ws servers (the reference).
import {
  DeviceFleet,
  type FleetConnectOptions,
  type FleetConnectResult,
  inspectPortsOf,
  startPushers,
  startReferences,
} from './fleet.js';
import { type Cleanup, log } from './lifecycle.js';
import {
  CpuMeter,
  cpuPerItem,
  formatCpu,
  formatIncrease,
  metricIncrease,
  PhaseProfiler,
  sleep,
} from './measure.js';
import type { BenchOptions } from './options.js';
import type { EachResult, PusherInit } from './pusher-worker.js';
import { createBenchApp, registerDevices } from './register.js';
import { type BenchResult, formatCounts, round } from './report.js';
import { settleAll, startBenchSystem } from './system.js';

export async function reconnectBench(cleanup: Cleanup, options: BenchOptions): Promise<BenchResult> {
  const devices = options.devices ?? (options.smoke ? 60 : 50_000);
  // Smoke: two gateways still exercise devices spread over several, with fewer processes to start.
  const gatewayCount = options.gateways ?? (options.smoke ? 2 : 3);
  const pusherCount = Math.min(options.pushers ?? (options.smoke ? 1 : 2), devices);
  if (devices / gatewayCount > 19_000) {
    log(`warning: ${Math.ceil(devices / gatewayCount)} connections per gateway is over the open-file limit`);
  }

  log(`starting the system with ${gatewayCount} gateways, ${pusherCount} pushers`);
  const profiling = options.cpuProfDir !== undefined;
  const [system, fleet, pushers, references] = await settleAll([
    startBenchSystem(cleanup, {
      gateways: gatewayCount,
      ...(profiling ? { inspect: 'all' as const } : {}),
      ...(options.serviceEnv === undefined ? {} : { serviceEnv: options.serviceEnv }),
    }),
    DeviceFleet.start(cleanup, DeviceFleet.workersFor(devices, options.deviceWorkers), profiling),
    startPushers(cleanup, pusherCount, profiling),
    // Reference: the same device processes against bare ws servers, one per gateway.
    startReferences(cleanup, gatewayCount, profiling),
  ] as const);
  const connect: FleetConnectOptions = {
    inflight: options.inflight ?? DeviceFleet.inflightFor(fleet.workers.length),
    timeoutMs: 30_000,
    attempts: 5,
  };
  const app = await createBenchApp(system.registry);
  log(`registering ${devices} devices`);
  const registered = await registerDevices(system.registry, app, devices);
  log(`registered in ${(registered.elapsedMs / 1000).toFixed(1)} s (${registered.perSecond.toFixed(0)}/s)`);

  const refUrls = references.urls;
  const everything = () =>
    new Map([
      ...system.pids(),
      ...fleet.pids(),
      ...references.servers.filter((r) => !r.exited).map((r) => [r.name, r.pid] as [string, number]),
    ]);
  const cpu = new CpuMeter(everything);
  const profiler = new PhaseProfiler(
    options.cpuProfDir,
    () =>
      new Map([
        ...system.inspectPorts(),
        ...fleet.inspectPorts(),
        ...inspectPortsOf(references.servers.filter((r) => !r.exited)),
      ]),
  );
  const profiled = async <T>(phase: string, body: () => Promise<T>): Promise<T> => {
    await profiler.start(phase);
    try {
      return await body();
    } finally {
      const paths = await profiler.stop();
      if (paths.length > 0) log(`profiles: ${paths.join(' ')}`);
    }
  };

  // Same procedure for both: connect all, drop all, then all at once (measured).
  log('reference: connect, drop, then all at once');
  await fleet.connect(refUrls, app.accessId, registered, connect);
  await fleet.close();
  cpu.start();
  const ref = await profiled('reconnect-reference', () =>
    fleet.connect(refUrls, app.accessId, registered, connect),
  );
  const refCpu = cpu.stop();
  const refCpuSeconds = cpu.seconds;
  log(`reference: ${describe(ref)}; cpu ${formatCpu(refCpu, Infinity)}`);
  await fleet.close();
  await references.stop();

  const urls = system.gateways.map((gateway) => gateway.url);
  log(`system: first connect of ${devices} devices`);
  cpu.start();
  const first = await fleet.connect(urls, app.accessId, registered, connect);
  const firstCpu = cpu.stop();
  log(`system: first connect ${describe(first)}; cpu ${formatCpu(firstCpu, Infinity)}`);
  await fleet.close();
  // The drop is complete when no gateway holds a session (their routes are cleared then too).
  const dropDeadline = performance.now() + 60_000;
  while ((await system.sessions()) > 0 && performance.now() < dropDeadline) await sleep(200);

  log(`system: one push to each offline device (${pusherCount} pushers, 128 calls in flight each)`);
  const per = Math.ceil(devices / pusherCount);
  await Promise.all(
    pushers.map((pusher, index) =>
      pusher.call('init', {
        dispatch: system.dispatch,
        accessId: app.accessId,
        secretKey: app.secretKey,
        tokens: registered.tokens.slice(index * per, (index + 1) * per),
        deadlineMs: 30_000,
      } satisfies PusherInit),
    ),
  );
  const pushStarted = performance.now();
  const pushed = await Promise.all(
    pushers.map((pusher) => pusher.call<EachResult>('each', { concurrency: 128 })),
  );
  const pushS = (performance.now() - pushStarted) / 1000;
  const accepted = pushed.reduce((sum, r) => sum + r.accepted, 0);
  const pushErrors: Record<string, number> = {};
  for (const result of pushed) {
    for (const [code, n] of Object.entries(result.errors)) pushErrors[code] = (pushErrors[code] ?? 0) + n;
  }
  log(`system: ${accepted} offline pushes accepted in ${pushS.toFixed(1)} s (${formatCounts(pushErrors)})`);
  await fleet.collect();

  log(`system: all ${devices} devices reconnect at once`);
  const closesBefore = (await fleet.stats()).unexpectedCloses;
  const metricsBefore = await system.metrics();
  cpu.start();
  const started = performance.now();
  await profiler.start('reconnect-gateways');
  const again = await fleet.connect(urls, app.accessId, registered, connect);
  const connectedS = (performance.now() - started) / 1000;
  // Offline messages: wait until every accepted one arrived, or 30 s without progress.
  let received = 0;
  let lastProgress = performance.now();
  while (received < accepted && performance.now() - lastProgress < 30_000) {
    const now = (await fleet.stats()).received;
    if (now > received) lastProgress = performance.now();
    received = now;
    if (received < accepted) await sleep(50);
  }
  const deliveredS = (performance.now() - started) / 1000;
  const systemCpu = cpu.stop();
  const systemCpuSeconds = cpu.seconds;
  const paths = await profiler.stop();
  if (paths.length > 0) log(`profiles: ${paths.join(' ')}`);
  const got = await fleet.collect();
  const delivered = new Set(got.msgIds).size;
  log(`system: ${describe(again)}; ${delivered} offline messages in ${deliveredS.toFixed(1)} s`);
  log(`system: cpu ${formatCpu(systemCpu, Infinity)}`);
  // Sessions that reached Connected and were closed afterwards (the harness does not reconnect them), and
  // what the gateways counted meanwhile.
  const after = await fleet.stats();
  const closed: Record<string, number> = {};
  for (const [code, n] of Object.entries(after.unexpectedCloses)) {
    const delta = n - (closesBefore[code] ?? 0);
    if (delta > 0) closed[code] = delta;
  }
  const closedCount = Object.values(closed).reduce((sum, n) => sum + n, 0);
  const metricsAfter = await system.metrics();
  const moved = (name: string) => formatIncrease(metricIncrease(metricsBefore, metricsAfter, name));
  const gatewayCounts =
    `delivered ${moved('gateway_messages_delivered_total')}; disconnects ` +
    `${moved('gateway_disconnects_total')}; upgrade failures ${moved('gateway_upgrade_failures_total')}; ` +
    `catch-up retries ${moved('gateway_catch_up_retries_total')}; batch calls ${batchCalls(metricsBefore, metricsAfter)}`;
  log(
    `system: ${after.open} open, closed after Connected: ${formatCounts(closed)}; gateways: ${gatewayCounts}`,
  );

  const rate = again.ok / connectedS;
  const refRate = ref.ok / (ref.elapsedMs / 1000);
  // CPU per handshake moves less with the machine than handshakes per second do (see docs/benchmarks.md,
  // reconnect): the servers' side against the bare ws servers', and the device processes' in both runs.
  const deviceNames = new Set(fleet.pids().keys());
  const systemPerHandshake = cpuPerItem(systemCpu, systemCpuSeconds, again.ok, deviceNames);
  const refPerHandshake = cpuPerItem(refCpu, refCpuSeconds, ref.ok, deviceNames);
  log(
    `cpu per handshake: servers ${systemPerHandshake.servers} ms (bare ws ${refPerHandshake.servers} ms), ` +
      `device processes ${systemPerHandshake.harness} ms (${refPerHandshake.harness} ms)`,
  );
  const row = (name: string, r: FleetConnectResult, shares: Map<string, number>) => [
    name,
    r.ok,
    r.failed,
    formatCounts(r.errors),
    r.elapsedMs / 1000,
    r.ok / (r.elapsedMs / 1000),
    r.handshakeP50Ms,
    r.handshakeP99Ms,
    formatCpu(shares, 6),
  ];
  return {
    tables: [
      {
        title:
          `reconnect: ${devices} devices over ${gatewayCount} processes, ${fleet.workers.length} device ` +
          `processes, ${connect.inflight} handshakes in flight per server per device process`,
        headers: [
          'phase',
          'connected',
          'failed',
          'errors (retry: retried)',
          'secs',
          'handshakes/s',
          'p50 ms',
          'p99 ms',
          'cpu (cores)',
        ],
        rows: [
          row('gateways: reconnect at once, with offline messages', again, systemCpu),
          row('gateways: first connect (no messages)', first, firstCpu),
          row('reference (bare ws): connect at once', ref, refCpu),
        ],
      },
      {
        title: 'offline messages',
        headers: ['what', 'value'],
        rows: [
          ['registration (RegisterDevice, 256 in flight)', `${registered.perSecond.toFixed(0)}/s`],
          [
            'pushes to offline devices',
            `${accepted} in ${pushS.toFixed(1)} s (${(accepted / pushS).toFixed(0)}/s)`,
          ],
          ['push errors', formatCounts(pushErrors)],
          ['offline messages delivered', `${delivered} of ${accepted}`],
          ['reconnect to all delivered', `${deliveredS.toFixed(1)} s`],
          ['sessions closed by the gateway after Connected', `${closedCount} (${formatCounts(closed)})`],
          ['gateway counters over the reconnect', gatewayCounts],
        ],
      },
    ],
    figures: {
      benchmark: 'reconnect',
      devices,
      gateways: gatewayCount,
      secs_to_all_connected: round(connectedS),
      handshakes_per_s: Math.round(rate),
      ref_handshakes_per_s: Math.round(refRate),
      ratio: round(rate / refRate),
      offline_msgs_delivered: delivered,
      offline_msgs_accepted: accepted,
      secs_to_all_delivered: round(deliveredS),
      failed: again.failed,
      closed_after_connect: closedCount,
      listen_overflows: again.tcp.listenOverflows,
      first_connect_handshakes_per_s: Math.round(first.ok / (first.elapsedMs / 1000)),
      offline_pushes_per_s: Math.round(accepted / pushS),
      server_cpu_ms_per_handshake: systemPerHandshake.servers,
      ref_server_cpu_ms_per_handshake: refPerHandshake.servers,
      device_cpu_ms_per_handshake: systemPerHandshake.harness,
      ref_device_cpu_ms_per_handshake: refPerHandshake.harness,
    },
  };
}

function describe(result: FleetConnectResult): string {
  return (
    `${result.ok} connected in ${(result.elapsedMs / 1000).toFixed(1)} s ` +
    `(${(result.ok / (result.elapsedMs / 1000)).toFixed(0)}/s, p99 ${result.handshakeP99Ms.toFixed(0)} ms), ` +
    `${result.failed} failed (${formatCounts(result.errors)}); listen-queue overflows ` +
    `${result.tcp.listenOverflows}, SYN retransmissions ${result.tcp.synRetrans}`
  );
}

/**
 * The gateways' batched gRPC calls over a phase: per call, how many were made and their mean items (the
 * larger the batches, the less each handshake pays for its calls).
 */
function batchCalls(before: Map<string, number>, after: Map<string, number>): string {
  const calls = metricIncrease(before, after, 'gateway_batch_items_count');
  const items = metricIncrease(before, after, 'gateway_batch_items_sum');
  if (calls.size === 0) return 'none';
  return [...calls]
    .map(
      ([labels, n]) =>
        `${labels.replace('call=', '')} ${n} (${((items.get(labels) ?? 0) / n).toFixed(1)} items each)`,
    )
    .join(', ');
}

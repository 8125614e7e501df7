// fanout: broadcasts of a 200-byte notification to N online devices, repeated, through the full path (Push
// API call -> dispatch's push log and applier -> one NATS publish -> every gateway evaluates it against the
// sessions it holds -> the devices, which acknowledge), next to bare ws servers writing one pre-built frame
// to every socket, with the same device processes and DeviceClients. By default two configurations: 18,000
// devices on one gateway, then 50,000 over three. For each: the reference, the system, the reference again
// (the machine is shared: the reference is read before and after, and the ratio uses their mean).
import { freePort } from '@pushd/testkit';
import { HarnessChild } from './children.js';
import { SubscriberFleet } from './fanout-fleet.js';
import { NOTIFICATION_BYTES } from './fanout-message.js';
import {
  ALL_INTERVAL_MS,
  AUDIENCE_NOTE,
  type PhaseResult,
  publishToServers,
  runPhase,
  SeqCounter,
  startOurs,
} from './fanout-phase.js';
import { inspectPortsOf } from './fleet.js';
import { Cleanup, log } from './lifecycle.js';
import { formatCpu, formatIncrease, metricIncrease } from './measure.js';
import type { BenchOptions } from './options.js';
import { type BenchResult, type Figures, formatCounts, round, type Table } from './report.js';
import { eventLoopLagMaxMs, mergeMetrics, settleAll } from './system.js';

/** The target at 18,000 devices on one gateway. */
const TARGET_RATIO = 0.8;
const TARGET_P99_MS = 500;

interface Config {
  devices: number;
  gateways: number;
}

interface ConfigResult extends Config {
  ref1: PhaseResult;
  system: PhaseResult;
  ref2: PhaseResult;
  refMsgsPerS: number;
  ratio: number;
  /** The `all` audience, one per 3.1 s (first configuration only). */
  all?: PhaseResult['loop'];
  counters: string;
  stalls: Map<string, number>;
  frameBytes: number;
}

export async function fanoutBench(cleanup: Cleanup, options: BenchOptions): Promise<BenchResult> {
  const single = options.devices !== undefined || options.gateways !== undefined;
  const configs: Config[] = single
    ? [{ devices: options.devices ?? (options.smoke ? 40 : 18_000), gateways: options.gateways ?? 1 }]
    : options.smoke
      ? [
          { devices: 40, gateways: 1 },
          { devices: 60, gateways: 2 },
        ]
      : [
          { devices: 18_000, gateways: 1 },
          { devices: 50_000, gateways: 3 },
        ];
  for (const config of configs) {
    if (config.devices / config.gateways > 19_000) {
      log(
        `warning: ${Math.ceil(config.devices / config.gateways)} connections per gateway is over the open-file limit`,
      );
    }
  }
  const maxDevices = Math.max(...configs.map((c) => c.devices));
  const maxGateways = Math.max(...configs.map((c) => c.gateways));
  const window = options.window ?? 1;
  const warmup = options.smoke ? 1 : 3;
  const timeoutMs = options.smoke ? 10_000 : 30_000;
  const broadcastsFor = (devices: number) =>
    options.broadcasts ?? (options.smoke ? 5 : devices >= 20_000 ? 20 : 30);
  const profiling = options.cpuProfDir !== undefined;

  log(`starting ${maxGateways} reference server(s) and the subscriber processes`);
  const [fleet, refs] = await settleAll([
    SubscriberFleet.start(cleanup, SubscriberFleet.workersFor(maxDevices, options.deviceWorkers), profiling),
    startFanoutRefs(cleanup, maxGateways, profiling),
  ] as const);
  const seqs = new SeqCounter();
  const connectTimeoutMs = 30_000;

  const results: ConfigResult[] = [];
  for (const [index, config] of configs.entries()) {
    const broadcasts = broadcastsFor(config.devices);
    const tag = `${config.devices}x${config.gateways}`;
    const inflightPerServer = options.inflight ?? 400;
    // Each configuration has a system of its own, started for it and stopped after it: nothing one leaves
    // behind (a gateway's backlog of delivery events, say) weighs on the next.
    log(`configuration ${index + 1}: starting the system with ${config.gateways} gateway(s)`);
    const systemCleanup = new Cleanup();
    const stopSystem = cleanup.add(`system of ${tag}`, () => systemCleanup.runAll());
    const ours = await startOurs(systemCleanup, {
      gateways: config.gateways,
      profiling,
      ...(options.serviceEnv === undefined ? {} : { serviceEnv: options.serviceEnv }),
    });
    const { system } = ours;
    log(`configuration ${index + 1}: ${config.devices} devices over ${config.gateways} gateway(s)`);
    const app = await ours.createApp(config.devices);
    const devices = {
      count: config.devices,
      tokens: app.registered.tokens,
      credentials: app.registered.credentials,
      accessId: app.app.accessId,
      inflightPerServer,
      timeoutMs: connectTimeoutMs,
      attempts: 3,
    };
    const refServers = refs.servers.slice(0, config.gateways);
    const refPhase = (which: string) =>
      runPhase(fleet, seqs, options.cpuProfDir, `fanout-${tag}-${which}`, {
        label: `${tag} ${which}`,
        subscribe: { kind: 'pushd', urls: refs.urls.slice(0, config.gateways), ...devices },
        ...(options.deviceWorkers === undefined ? {} : { workers: options.deviceWorkers }),
        publish: publishToServers(refServers),
        warmup,
        broadcasts,
        window,
        timeoutMs,
        pids: () => new Map(refServers.map((s) => [s.name, s.pid] as [string, number])),
        inspectPorts: () => inspectPortsOf(refServers),
      });

    const ref1 = await refPhase('reference');
    let before = new Map<string, Map<string, number>>();
    let after = new Map<string, Map<string, number>>();
    let all: PhaseResult['loop'] | undefined;
    const gateways = system.gateways.slice(0, config.gateways);
    const sys = await runPhase(fleet, seqs, options.cpuProfDir, `fanout-${tag}-gateways`, {
      label: `${tag} gateways`,
      subscribe: { kind: 'pushd', urls: gateways.map((g) => g.url), ...devices },
      ...(options.deviceWorkers === undefined ? {} : { workers: options.deviceWorkers }),
      publish: app.publishTags,
      warmup,
      broadcasts,
      window,
      timeoutMs,
      pids: () => system.pids(),
      inspectPorts: () => system.inspectPorts(),
      beforeLoop: async () => {
        before = await system.metricsByService();
      },
      afterLoop: async () => {
        after = await system.metricsByService();
      },
      afterClose: () => ours.drained(),
      ...(index === 0
        ? {
            extra: async (run) => {
              const count = options.smoke ? 1 : 3;
              log(`${tag} gateways: ${count} broadcast(s) to all, one per ${ALL_INTERVAL_MS / 1000} s`);
              all = await run({ publish: app.publishAll, count, minIntervalMs: ALL_INTERVAL_MS });
              log(
                `${tag} gateways: all: ${all.delivered}/${all.expected} received, p50 ${all.p50.toFixed(1)} ` +
                  `p99 ${all.p99.toFixed(1)} ms`,
              );
            },
          }
        : {}),
    });
    // Stopped before the second reference run: a gateway still working off its backlog would take CPU from it.
    await stopSystem();
    const ref2 = await refPhase('reference again');
    const refMsgsPerS = (ref1.loop.msgsPerS + ref2.loop.msgsPerS) / 2;
    const moved = (name: string) =>
      formatIncrease(metricIncrease(mergeMetrics(before), mergeMetrics(after), name));
    const counters =
      `broadcasts received ${moved('gateway_broadcasts_received_total')}; delivered ` +
      `${moved('gateway_messages_delivered_total')}; frames from devices ${moved('gateway_frames_in_total')}; ` +
      `send-queue drops ${moved('gateway_send_queue_drops_total')}; gap refetches ` +
      `${moved('gateway_gap_refetches_total')}; duplicates ${moved('gateway_duplicates_dropped_total')}; ` +
      `disconnects ${moved('gateway_disconnects_total')}; dispatch events consumed ` +
      `${moved('dispatch_events_consumed_total')}`;
    log(`${tag}: ${counters}`);
    const frameBytes = await refs.servers[0]!.call<number>('frameBytes');
    results.push({
      ...config,
      ref1,
      system: sys,
      ref2,
      refMsgsPerS,
      ratio: sys.loop.msgsPerS / refMsgsPerS,
      ...(all === undefined ? {} : { all }),
      counters,
      stalls: eventLoopLagMaxMs(after),
      frameBytes,
    });
  }

  const first = results[0]!;
  const second = results[1];
  const lost = (r: ConfigResult) =>
    [r.ref1, r.system, r.ref2].reduce((sum, p) => sum + (p.loop.expected - p.loop.delivered), 0);
  const phaseRow = (config: ConfigResult, phase: PhaseResult, target: string) => [
    `${config.devices} / ${config.gateways}`,
    target,
    phase.loop.subscribers,
    phase.loop.broadcasts,
    `${phase.loop.delivered}/${phase.loop.expected}`,
    Math.round(phase.loop.msgsPerS),
    phase.loop.p50,
    phase.loop.p99,
    phase.loop.max,
    phase.loop.lastP50,
    phase.loop.publishP50,
    retries(phase.loop.publishRetries),
    formatCounts(phase.unexpectedCloses),
    formatCpu(phase.loop.cpu, 6),
  ];
  const rows: (string | number)[][] = [];
  for (const r of results) {
    rows.push(phaseRow(r, r.ref1, 'reference (bare ws)'));
    rows.push(phaseRow(r, r.system, `gateways, ${AUDIENCE_NOTE}`));
    if (r.all !== undefined) {
      rows.push(
        phaseRow(r, { ...r.system, loop: r.all }, `gateways, all (one per ${ALL_INTERVAL_MS / 1000} s)`),
      );
    }
    rows.push(phaseRow(r, r.ref2, 'reference (bare ws), again'));
  }
  const tables: Table[] = [
    {
      title:
        `fanout: ${NOTIFICATION_BYTES}-byte notification (${first.frameBytes}-byte Deliver frame), ` +
        `${window} broadcast(s) in flight; latency = publish (API call or IPC) to device receipt`,
      headers: [
        'devices / servers',
        'target',
        'subscribers',
        'broadcasts',
        'received',
        'msgs/s',
        'p50 ms',
        'p99 ms',
        'max ms',
        'last device p50 ms',
        'publish p50 ms',
        'publish retries',
        'devices closed (code)',
        'cpu (cores)',
      ],
      rows,
    },
    {
      title: 'per configuration',
      headers: [
        'devices / gateways',
        'msgs/s',
        'ref msgs/s (mean)',
        'ratio',
        'target',
        'gateway counters',
        'longest stall',
      ],
      rows: results.map((r, i) => [
        `${r.devices} / ${r.gateways}`,
        Math.round(r.system.loop.msgsPerS),
        Math.round(r.refMsgsPerS),
        r.ratio.toFixed(2),
        i === 0 ? `ratio >= ${TARGET_RATIO}, p99 <= ${TARGET_P99_MS} ms` : '',
        r.counters,
        [...r.stalls]
          .sort((a, b) => b[1] - a[1])
          .slice(0, 3)
          .map(([name, ms]) => `${name} ${ms.toFixed(0)} ms`)
          .join(', '),
      ]),
    },
  ];
  const figures: Figures = {
    benchmark: 'fanout',
    devices: first.devices,
    gateways: first.gateways,
    broadcasts: first.system.loop.broadcasts,
    window,
    audience: AUDIENCE_NOTE,
    notification_bytes: NOTIFICATION_BYTES,
    msgs_per_s: Math.round(first.system.loop.msgsPerS),
    ref_msgs_per_s: Math.round(first.refMsgsPerS),
    ratio: round(first.ratio),
    p50_ms: round(first.system.loop.p50),
    p99_ms: round(first.system.loop.p99),
    ref_p50_ms: round((first.ref1.loop.p50 + first.ref2.loop.p50) / 2),
    ref_p99_ms: round((first.ref1.loop.p99 + first.ref2.loop.p99) / 2),
    ref_msgs_per_s_before: Math.round(first.ref1.loop.msgsPerS),
    ref_msgs_per_s_after: Math.round(first.ref2.loop.msgsPerS),
    delivered: first.system.loop.delivered,
    expected: first.system.loop.expected,
    lost: lost(first),
    publish_retries: results.reduce(
      (sum, r) => sum + [r.ref1, r.system, r.ref2].reduce((n, p) => n + retries(p.loop.publishRetries), 0),
      0,
    ),
    closed: results.reduce(
      (sum, r) => sum + [r.ref1, r.system, r.ref2].reduce((n, p) => n + retries(p.unexpectedCloses), 0),
      0,
    ),
    target_met: first.ratio >= TARGET_RATIO && first.system.loop.p99 <= TARGET_P99_MS,
  };
  if (first.all !== undefined) {
    figures.all_broadcasts = first.all.broadcasts;
    figures.all_p50_ms = round(first.all.p50);
    figures.all_p99_ms = round(first.all.p99);
    figures.all_delivered = first.all.delivered;
    figures.all_expected = first.all.expected;
  }
  if (second !== undefined) {
    Object.assign(figures, {
      spread_devices: second.devices,
      spread_gateways: second.gateways,
      spread_broadcasts: second.system.loop.broadcasts,
      spread_msgs_per_s: Math.round(second.system.loop.msgsPerS),
      spread_ref_msgs_per_s: Math.round(second.refMsgsPerS),
      spread_ratio: round(second.ratio),
      spread_p50_ms: round(second.system.loop.p50),
      spread_p99_ms: round(second.system.loop.p99),
      spread_delivered: second.system.loop.delivered,
      spread_expected: second.system.loop.expected,
      spread_lost: lost(second),
    });
  }
  return { tables, figures };
}

/** How many publish calls were made again. */
export function retries(counts: Record<string, number>): number {
  return Object.values(counts).reduce((sum, n) => sum + n, 0);
}

/** Fanout reference servers (fanout-ref.ts), listening on loopback. */
async function startFanoutRefs(
  cleanup: Cleanup,
  count: number,
  inspect: boolean,
): Promise<{ servers: HarnessChild[]; urls: string[] }> {
  const servers: HarnessChild[] = [];
  for (let index = 0; index < count; index++) {
    const inspectPort = inspect ? await freePort() : undefined;
    servers.push(
      new HarnessChild(count === 1 ? 'reference' : `reference${index + 1}`, 'test/bench/fanout-ref.ts', {
        ...(inspectPort === undefined ? {} : { inspectPort }),
      }),
    );
  }
  for (const server of servers) cleanup.add(server.name, () => server.stop());
  await Promise.all(servers.map((server) => server.ready()));
  const urls = await Promise.all(
    servers.map(
      async (server) => `ws://127.0.0.1:${await server.call<number>('listen', { host: '127.0.0.1' })}/v1/ws`,
    ),
  );
  return { servers, urls };
}

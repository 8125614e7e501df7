// connections: ramp idle devices onto one gateway process and divide its memory growth by the devices,
// next to the same ramp onto a bare ws server (the reference) with the same device processes.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DeviceFleet, type FleetConnectResult, startReferences } from './fleet.js';
import { type Cleanup, log } from './lifecycle.js';
import {
  CpuMeter,
  collectGarbageAndMeasure,
  formatCpu,
  Inspector,
  type MemoryUsage,
  PhaseProfiler,
  rssBytes,
  sleep,
} from './measure.js';
import type { BenchOptions } from './options.js';
import { createBenchApp, registerDevices } from './register.js';
import { type BenchResult, formatCounts, mib, round } from './report.js';
import { settleAll, startBenchSystem } from './system.js';

interface TargetRun {
  ramp: FleetConnectResult;
  /** CPU of each process over the ramp, in cores. */
  cpu: Map<string, number>;
  before: MemoryUsage;
  after: MemoryUsage;
  /** Devices still connected when memory was read. */
  open: number;
  /** Growth of the device processes' heap over the ramp (after a collection): the SDK's per-client cost. */
  workerGrowth: number;
  /** VmRSS of the server process after the collections, before and after the ramp. */
  rssBefore: number;
  rssAfter: number;
  bytesPerConn: number;
  heapPerConn: number;
  heapTotalPerConn: number;
  externalPerConn: number;
}

export async function connectionsBench(cleanup: Cleanup, options: BenchOptions): Promise<BenchResult> {
  const devices = options.devices ?? (options.smoke ? 50 : 18_000);
  if (devices > 19_000) log(`warning: ${devices} connections on one process is over the 20,000 open files`);
  const holdMs = (options.durationS ?? (options.smoke ? 0.5 : 10)) * 1000;

  log('starting nats-server, redis-server, registry, dispatch and one gateway');
  const profiling = options.cpuProfDir !== undefined;
  // The reference always has an inspector: memory is read after a collection on both sides.
  const [system, fleet, references] = await settleAll([
    startBenchSystem(cleanup, {
      gateways: 1,
      inspect: profiling ? 'all' : 'gateways',
      ...(options.serviceEnv === undefined ? {} : { serviceEnv: options.serviceEnv }),
    }),
    DeviceFleet.start(cleanup, DeviceFleet.workersFor(devices, options.deviceWorkers), profiling),
    startReferences(cleanup, 1, true),
  ] as const);
  const gateway = system.gateways[0]!;
  const inflight = options.inflight ?? DeviceFleet.inflightFor(fleet.workers.length);
  const connect = { inflight, timeoutMs: 30_000, attempts: 3 };
  const reference = references.servers[0]!;
  const app = await createBenchApp(system.registry);
  log(`registering ${devices} devices`);
  const registered = await registerDevices(system.registry, app, devices);
  log(`registered in ${(registered.elapsedMs / 1000).toFixed(1)} s (${registered.perSecond.toFixed(0)}/s)`);

  const warmCount = Math.min(200, Math.ceil(devices / 10));
  const warm = { tokens: registered.tokens.slice(0, warmCount), credentials: registered.credentials };
  /** `pid`: the server process whose memory is read; `isReference`: it is the bare ws server. */
  const run = async (
    name: string,
    url: string,
    inspectPort: number,
    pid: number,
    isReference: boolean,
  ): Promise<TargetRun> => {
    const refPid = isReference ? pid : undefined;
    const cpu = new CpuMeter(() => {
      const pids = new Map([...system.pids(), ...fleet.pids()]);
      if (refPid !== undefined) pids.set('reference', refPid);
      return pids;
    });
    // Warm up (code loaded and compiled, first-connection allocations made), then read the baseline.
    await fleet.connect([url], app.accessId, warm, connect);
    await fleet.close();
    await sleep(options.smoke ? 200 : 1_000);
    const workersBefore = await fleet.stats(true);
    const before = await collectGarbageAndMeasure(inspectPort);
    // The OS's view (VmRSS of /proc/<pid>/status), right after the collection.
    const rssBefore = rssBytes(pid);
    log(
      `${name}: ramping ${devices} devices (${inflight} handshakes in flight per server per device process)`,
    );
    const profiler = new PhaseProfiler(options.cpuProfDir, () => {
      const ports = new Map([...system.inspectPorts(), ...fleet.inspectPorts()]);
      if (refPid !== undefined) ports.set('reference', inspectPort);
      return ports;
    });
    await profiler.start(`connections-${name}`);
    // Sampling heap profile: what the memory still live after the ramp was allocated by.
    let sampling: Inspector | undefined;
    if (options.heapProfileDir !== undefined) {
      sampling = await Inspector.connect(inspectPort);
      await sampling.command('HeapProfiler.startSampling', { samplingInterval: 4096 });
    }
    cpu.start();
    const ramp = await fleet.connect([url], app.accessId, registered, connect);
    const shares = cpu.stop();
    const profiles = await profiler.stop();
    if (profiles.length > 0) log(`${name}: profiles ${profiles.join(' ')}`);
    log(`${name}: cpu over the ramp (cores): ${formatCpu(shares)}`);
    log(
      `${name}: ${ramp.ok} connected in ${(ramp.elapsedMs / 1000).toFixed(1)} s, ${ramp.failed} failed` +
        ` (${formatCounts(ramp.errors)}); holding ${holdMs / 1000} s`,
    );
    await sleep(holdMs);
    let after: MemoryUsage;
    if (sampling === undefined) {
      after = await collectGarbageAndMeasure(inspectPort);
    } else {
      after = await sampling.collectGarbageAndMeasure();
      const { profile } = await sampling.command<{ profile: unknown }>('HeapProfiler.stopSampling');
      sampling.close();
      mkdirSync(options.heapProfileDir!, { recursive: true });
      const path = join(options.heapProfileDir!, `connections-${name}.heapprofile`);
      writeFileSync(path, JSON.stringify(profile));
      log(`${name}: live allocations by site in ${path}`);
    }
    const rssAfter = rssBytes(pid);
    const workersAfter = await fleet.stats(true);
    log(`${name}: rss ${mib(rssBefore)} -> ${mib(rssAfter)} with ${workersAfter.open} open`);
    await fleet.close();
    const open = workersAfter.open;
    return {
      ramp,
      cpu: shares,
      before,
      after,
      open,
      workerGrowth: workersAfter.heapUsed - workersBefore.heapUsed,
      rssBefore,
      rssAfter,
      bytesPerConn: (rssAfter - rssBefore) / open,
      heapPerConn: (after.heapUsed - before.heapUsed) / open,
      heapTotalPerConn: (after.heapTotal - before.heapTotal) / open,
      externalPerConn: (after.external - before.external) / open,
    };
  };

  const ref = await run('reference', references.urls[0]!, reference.inspectPort!, reference.pid, true);
  await references.stop();
  const sys = await run('gateway', gateway.url, gateway.inspectPort!, gateway.process.pid, false);
  const ratio = sys.bytesPerConn / ref.bytesPerConn;

  const row = (name: string, r: TargetRun) => [
    name,
    r.open,
    r.ramp.failed,
    r.ramp.elapsedMs / 1000,
    r.open / (r.ramp.elapsedMs / 1000),
    r.ramp.handshakeP99Ms,
    r.ramp.tcp.listenOverflows,
    mib(r.rssBefore),
    mib(r.rssAfter),
    Math.round(r.bytesPerConn),
    Math.round(r.heapPerConn),
    Math.round(r.heapTotalPerConn),
    Math.round(r.externalPerConn),
  ];
  return {
    tables: [
      {
        title: `connections: ${devices} idle devices on one process (memory after a full GC, via the inspector)`,
        headers: [
          'server',
          'open',
          'failed',
          'ramp s',
          'conn/s',
          'handshake p99 ms',
          'listen overflows',
          'rss before',
          'rss after',
          'rss B/conn',
          'heap used B/conn',
          'heap total B/conn',
          'external B/conn',
        ],
        rows: [row('gateway', sys), row('reference (bare ws)', ref)],
      },
      {
        title: 'harness',
        headers: ['what', 'value'],
        rows: [
          ['registration (RegisterDevice, 256 in flight)', `${registered.perSecond.toFixed(0)}/s`],
          ['device processes', fleet.workers.length],
          ['device process heap per connection (DeviceClient)', Math.round(sys.workerGrowth / sys.open)],
          ['bytes_per_conn / ref_bytes_per_conn', ratio.toFixed(2)],
          ['cpu over the gateway ramp (cores)', formatCpu(sys.cpu)],
          ['cpu over the reference ramp (cores)', formatCpu(ref.cpu)],
        ],
      },
    ],
    figures: {
      benchmark: 'connections',
      devices: sys.open,
      bytes_per_conn: Math.round(sys.bytesPerConn),
      ref_bytes_per_conn: Math.round(ref.bytesPerConn),
      ratio: round(ratio),
      heap_bytes_per_conn: Math.round(sys.heapPerConn),
      ref_heap_bytes_per_conn: Math.round(ref.heapPerConn),
      heap_ratio: round(sys.heapPerConn / ref.heapPerConn),
      ramp_s: round(sys.ramp.elapsedMs / 1000),
      ref_ramp_s: round(ref.ramp.elapsedMs / 1000),
      failed: sys.ramp.failed + ref.ramp.failed,
      device_heap_bytes_per_conn: Math.round(sys.workerGrowth / sys.open),
    },
  };
}

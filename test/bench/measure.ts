import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { round } from './report.js';

/** Percentiles (0..100) of one sample by nearest rank, sorting a copy once; NaN for an empty sample. */
export function percentiles(values: ArrayLike<number>, ps: number[]): number[] {
  const sorted = Float64Array.from(values).sort();
  if (sorted.length === 0) return ps.map(() => Number.NaN);
  return ps.map((p) => {
    const rank = Math.ceil((p / 100) * sorted.length);
    return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
  });
}

/** Resident set size of a process in bytes (VmRSS of /proc/<pid>/status); 0 when it is gone. */
export function rssBytes(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

const CLOCK_TICKS_PER_S = 100;

/** CPU time (user + system) a process has used, in seconds; 0 when it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces; fields after it are space-separated.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_S;
  } catch {
    return 0;
  }
}

/**
 * The pid of a running process whose command line (arguments joined by spaces, as a process that rewrote
 * its title shows it) contains every one of `parts`, if any.
 */
export function findPid(parts: string[]): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (parts.every((part) => cmdline.includes(part))) return Number(entry);
    } catch {}
  }
  return undefined;
}

/** Busy CPU time of the whole machine (all processes, all cores) from /proc/stat, in seconds. */
export function machineBusySeconds(): number {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    // cpu user nice system idle iowait irq softirq steal ...
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / 100;
  } catch {
    return 0;
  }
}

/**
 * CPU use of named processes over a span: `start()` then `stop()` gives each one's share of one core
 * (1.0 = one core busy all along), plus `others`: what the rest of the machine used meanwhile (another
 * job on a shared machine takes cores from what is measured).
 */
export class CpuMeter {
  private readonly startedAt = new Map<string, number>();
  private t0 = 0;
  private machine0 = 0;
  /** Length of the window the last stop() measured, in seconds (what its shares are averaged over). */
  seconds = 0;

  constructor(private readonly pids: () => Map<string, number>) {}

  start(): void {
    this.t0 = performance.now();
    this.machine0 = machineBusySeconds();
    this.startedAt.clear();
    for (const [name, pid] of this.pids()) this.startedAt.set(name, cpuSeconds(pid));
  }

  stop(): Map<string, number> {
    const elapsedS = (performance.now() - this.t0) / 1000;
    this.seconds = elapsedS;
    const shares = new Map<string, number>();
    if (elapsedS <= 0) return shares;
    let ours = 0;
    for (const [name, pid] of this.pids()) {
      const before = this.startedAt.get(name);
      if (before === undefined) continue;
      const share = (cpuSeconds(pid) - before) / elapsedS;
      shares.set(name, share);
      ours += share;
    }
    shares.set('others', Math.max(0, (machineBusySeconds() - this.machine0) / elapsedS - ours));
    return shares;
  }
}

/** Kernel TCP counters (TcpExt of /proc/net/netstat) that show a listen queue overflowing. */
export interface TcpCounters {
  /** Connections dropped because a listener's accept queue (its backlog) was full. */
  listenOverflows: number;
  /** SYNs retransmitted: a client waited 1 s, 3 s, 7 s... for a handshake the server dropped. */
  synRetrans: number;
}

export function tcpCounters(): TcpCounters {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
    const header = lines.find((line) => line.startsWith('TcpExt:'))?.split(/\s+/) ?? [];
    const values = lines.filter((line) => line.startsWith('TcpExt:'))[1]?.split(/\s+/) ?? [];
    const field = (name: string) => Number(values[header.indexOf(name)] ?? 0);
    return { listenOverflows: field('ListenOverflows'), synRetrans: field('TCPSynRetrans') };
  } catch {
    return { listenOverflows: 0, synRetrans: 0 };
  }
}

export function tcpIncrease(before: TcpCounters): TcpCounters {
  const after = tcpCounters();
  return {
    listenOverflows: after.listenOverflows - before.listenOverflows,
    synRetrans: after.synRetrans - before.synRetrans,
  };
}

/**
 * CPU per unit of work (a handshake, a push) in ms, split between the system's processes and the load
 * generators named in `harness` (device and pusher processes), from the cores each process used over
 * `seconds` (the CpuMeter window of `shares`: CpuMeter.seconds). `others` (processes outside the benchmark) counts on neither side. On a shared machine
 * these move less from run to run than rates do, and their sum bounds the rate the machine's cores allow.
 */
export function cpuPerItem(
  shares: Map<string, number>,
  seconds: number,
  items: number,
  harness: Set<string>,
): { servers: number; harness: number } {
  let servers = 0;
  let generators = 0;
  for (const [name, cores] of shares) {
    if (name === 'others') continue;
    if (harness.has(name)) generators += cores;
    else servers += cores;
  }
  const ms = (cores: number) => round((cores * seconds * 1000) / Math.max(1, items), 3);
  return { servers: ms(servers), harness: ms(generators) };
}

/** Formats CPU shares as "gateway 0.95, dispatch 0.80, ..." (largest first). */
export function formatCpu(shares: Map<string, number>, limit = 8): string {
  return [...shares.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, share]) => `${name} ${share.toFixed(2)}`)
    .join(', ');
}

export interface MemoryUsage {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

/** A Chrome DevTools Protocol session with a Node.js process started with `--inspect=127.0.0.1:<port>`. */
export class Inspector {
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve(result: unknown): void; reject(error: Error): void }
  >();

  private constructor(private readonly socket: WebSocket) {
    socket.on('message', (data: Buffer) => {
      const message = JSON.parse(data.toString()) as { id?: number; result?: unknown; error?: unknown };
      if (message.id === undefined) return;
      const waiter = this.waiting.get(message.id);
      this.waiting.delete(message.id);
      if (message.error !== undefined) waiter?.reject(new Error(JSON.stringify(message.error)));
      else waiter?.resolve(message.result);
    });
    socket.on('close', () => {
      for (const waiter of this.waiting.values()) waiter.reject(new Error('inspector connection closed'));
      this.waiting.clear();
    });
  }

  static async connect(port: number): Promise<Inspector> {
    const targets = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as {
      webSocketDebuggerUrl: string;
    }[];
    const url = targets[0]?.webSocketDebuggerUrl;
    if (url === undefined) throw new Error(`no inspector target on port ${port}`);
    const socket = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 30 });
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
    });
    socket.on('error', () => undefined);
    return new Inspector(socket);
  }

  command<T = unknown>(method: string, params: object = {}, timeoutMs = 120_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`inspector ${method} timed out`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (result) => {
          clearTimeout(timer);
          resolve(result as T);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.socket.send(JSON.stringify({ id, method, params }));
    });
  }

  /** Two full collections (the first can leave objects that finalizers free on the second), then memory. */
  async collectGarbageAndMeasure(): Promise<MemoryUsage> {
    await this.command('HeapProfiler.collectGarbage');
    await this.command('HeapProfiler.collectGarbage');
    await new Promise((resolve) => setTimeout(resolve, 200));
    const reply = await this.command<{ result: { value: string } }>('Runtime.evaluate', {
      expression: 'JSON.stringify(process.memoryUsage())',
      returnByValue: true,
    });
    return JSON.parse(reply.result.value) as MemoryUsage;
  }

  close(): void {
    this.socket.close();
  }
}

/**
 * Runs a full garbage collection in a process started with --inspect and reads process.memoryUsage(), so
 * that memory is compared without whatever garbage the last collection left (the same treatment for the
 * gateway and the reference server).
 */
export async function collectGarbageAndMeasure(inspectPort: number): Promise<MemoryUsage> {
  const inspector = await Inspector.connect(inspectPort);
  try {
    return await inspector.collectGarbageAndMeasure();
  } finally {
    inspector.close();
  }
}

/**
 * CPU profiles of one phase of a benchmark (not of process start-up): `start(phase)` starts the V8
 * profiler in every process that has an inspector port, `stop()` writes `<dir>/<phase>.<process>.cpuprofile`
 * (open in Chrome DevTools, or summarize with profile-top.ts). Does nothing without a directory.
 */
export class PhaseProfiler {
  private sessions: { name: string; inspector: Inspector }[] = [];
  private phase = '';

  constructor(
    private readonly dir: string | undefined,
    private readonly targets: () => Map<string, number>,
  ) {}

  async start(phase: string): Promise<void> {
    if (this.dir === undefined) return;
    this.phase = phase;
    this.sessions = await Promise.all(
      [...this.targets()].map(async ([name, port]) => ({ name, inspector: await Inspector.connect(port) })),
    );
    await Promise.all(
      this.sessions.map(async ({ inspector }) => {
        await inspector.command('Profiler.enable');
        await inspector.command('Profiler.setSamplingInterval', { interval: 500 });
        await inspector.command('Profiler.start');
      }),
    );
  }

  /** Writes the profiles; returns their paths. */
  async stop(): Promise<string[]> {
    const dir = this.dir;
    if (dir === undefined || this.sessions.length === 0) return [];
    mkdirSync(dir, { recursive: true });
    const paths = await Promise.all(
      this.sessions.map(async ({ name, inspector }) => {
        try {
          const { profile } = await inspector.command<{ profile: unknown }>('Profiler.stop');
          const path = join(dir, `${this.phase}.${name}.cpuprofile`);
          writeFileSync(path, JSON.stringify(profile));
          return path;
        } finally {
          inspector.close();
        }
      }),
    );
    this.sessions = [];
    return paths;
  }
}

/** Sums the samples of one metric (all label sets) in a Prometheus text exposition. */
export function metricSum(exposition: string, name: string): number {
  let sum = 0;
  for (const line of exposition.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) sum += value;
  }
  return sum;
}

/** Every sample of a service's /metrics, keyed by `name{labels}` as exposed. */
export async function readMetrics(opsPort: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    const value = Number(line.slice(space + 1));
    if (Number.isFinite(value)) samples.set(line.slice(0, space), value);
  }
  return samples;
}

/**
 * How much each sample of the metric `name` grew between two readings, as `label=value` (or `total` for an
 * unlabelled metric) -> increase; samples that did not move are left out.
 */
export function metricIncrease(
  before: Map<string, number>,
  after: Map<string, number>,
  name: string,
): Map<string, number> {
  const increase = new Map<string, number>();
  for (const [key, value] of after) {
    if (key !== name && !key.startsWith(`${name}{`)) continue;
    const delta = value - (before.get(key) ?? 0);
    if (delta === 0) continue;
    const labels = key === name ? 'total' : key.slice(name.length + 1, -1).replaceAll('"', '');
    increase.set(labels, (increase.get(labels) ?? 0) + delta);
  }
  return increase;
}

/** "a=1 b=2" of metricIncrease's result, or "0". */
export function formatIncrease(increase: Map<string, number>): string {
  if (increase.size === 0) return '0';
  return [...increase].map(([labels, n]) => (labels === 'total' ? String(n) : `${labels}:${n}`)).join(' ');
}

/** Reads one metric (summed over labels) from a service's /metrics on its ops port. */
export async function readMetric(opsPort: number, name: string): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${opsPort}/metrics`);
  return metricSum(await response.text(), name);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// The subscriber processes of the fanout and peers benchmarks (fanout-worker.ts), and the loop that
// repeats broadcasts through one publish path and measures what the subscribers received.
import { freePort } from '@pushd/testkit';
import { HarnessChild } from './children.js';
import { nowMs } from './fanout-message.js';
import type {
  Receipts,
  SubscribeArgs,
  SubscribeResult,
  SubscriberKind,
  SubscriberSpec,
  SubscriberStats,
  WaitResult,
} from './fanout-worker.js';
import { DeviceFleet } from './fleet.js';
import { type Cleanup, log } from './lifecycle.js';
import { type CpuMeter, percentiles, sleep } from './measure.js';

/** Loopback source addresses 127.0.0.2 ... 127.0.0.254. */
const SOURCE_ADDRESSES = 253;

export interface SubscribeOptions {
  kind: SubscriberKind;
  urls: string[];
  accessId?: number;
  topic?: string;
  /** pushd: the device sessions (index i is subscriber i). */
  tokens?: string[];
  credentials?: string[];
  count: number;
  /** Handshakes in flight per server in all (split over the processes used). */
  inflightPerServer: number;
  timeoutMs: number;
  attempts: number;
}

export interface FleetSubscribeResult extends SubscribeResult {
  workers: number;
}

/** Subscriber processes; each connect uses the first processes needed for its count (see `workersFor`). */
export class SubscriberFleet {
  /** Processes holding the current subscribers. */
  private active: HarnessChild[] = [];

  private constructor(readonly workers: HarnessChild[]) {}

  static async start(cleanup: Cleanup, workers: number, inspect = false): Promise<SubscriberFleet> {
    const children: HarnessChild[] = [];
    for (let index = 0; index < workers; index++) {
      const inspectPort = inspect ? await freePort() : undefined;
      children.push(
        new HarnessChild(`subscribers${index + 1}`, 'test/bench/fanout-worker.ts', {
          ...(inspectPort === undefined ? {} : { inspectPort }),
        }),
      );
    }
    for (const child of children) cleanup.add(child.name, () => child.stop());
    await Promise.all(children.map((child) => child.ready()));
    return new SubscriberFleet(children);
  }

  /** Processes for `count` subscribers: as DeviceFleet.workersFor (one per 12,500, two from 2,000 on). */
  static workersFor(count: number, requested?: number): number {
    return DeviceFleet.workersFor(count, requested);
  }

  /**
   * Connects `count` subscribers: subscriber i to server i mod urls.length from 127.0.0.(2 + i mod 253),
   * through the first workersFor(count) processes, contiguous shares.
   */
  async subscribe(options: SubscribeOptions, requestedWorkers?: number): Promise<FleetSubscribeResult> {
    if (this.active.length > 0) throw new Error('close the previous subscribers first');
    const used = this.workers.slice(
      0,
      Math.min(this.workers.length, SubscriberFleet.workersFor(options.count, requestedWorkers)),
    );
    this.active = used;
    const per = Math.ceil(options.count / used.length);
    const inflight = Math.max(1, Math.floor(options.inflightPerServer / used.length));
    const started = performance.now();
    const results = await Promise.all(
      used.map((worker, w) => {
        const subscribers: SubscriberSpec[] = [];
        for (let i = w * per; i < Math.min(options.count, (w + 1) * per); i++) {
          subscribers.push({
            server: i % options.urls.length,
            localAddress: `127.0.0.${2 + (i % SOURCE_ADDRESSES)}`,
            ...(options.tokens === undefined
              ? { clientId: `bench-${options.kind}-${i}` }
              : { token: options.tokens[i]!, credential: options.credentials?.[i] ?? '' }),
          });
        }
        const args: SubscribeArgs = {
          kind: options.kind,
          urls: options.urls,
          ...(options.accessId === undefined ? {} : { accessId: options.accessId }),
          ...(options.topic === undefined ? {} : { topic: options.topic }),
          subscribers,
          inflight,
          timeoutMs: options.timeoutMs,
          attempts: options.attempts,
        };
        return worker.call<SubscribeResult>('subscribe', args);
      }),
    );
    const errors: Record<string, number> = {};
    for (const result of results) {
      for (const [code, n] of Object.entries(result.errors)) errors[code] = (errors[code] ?? 0) + n;
    }
    return {
      ok: results.reduce((sum, r) => sum + r.ok, 0),
      failed: results.reduce((sum, r) => sum + r.failed, 0),
      errors,
      elapsedMs: performance.now() - started,
      workers: used.length,
    };
  }

  /** Waits until every subscriber received broadcast `seq` (or the timeout): received and expected in all. */
  async wait(
    seq: number,
    timeoutMs: number,
  ): Promise<{ received: number; expected: number; complete: boolean }> {
    const results = await Promise.all(
      this.active.map((worker) => worker.call<WaitResult>('wait', { seq, timeoutMs }, timeoutMs + 60_000)),
    );
    return {
      received: results.reduce((sum, r) => sum + r.received, 0),
      expected: results.reduce((sum, r) => sum + r.expected, 0),
      complete: results.every((r) => r.complete),
    };
  }

  async close(): Promise<void> {
    await Promise.all(this.active.map((worker) => worker.call('close')));
    this.active = [];
  }

  async stats(): Promise<{ open: number; received: number; unexpectedCloses: Record<string, number> }> {
    const all = await Promise.all(this.workers.map((worker) => worker.call<SubscriberStats>('stats')));
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
    };
  }

  /** Every receipt since the last collect, of every process. */
  async collect(): Promise<Receipts> {
    const all = await Promise.all(this.workers.map((worker) => worker.call<Receipts>('collect')));
    return { seqs: concat(all.map((r) => r.seqs)), latencyMs: concat(all.map((r) => r.latencyMs)) };
  }

  pids(): Map<string, number> {
    return new Map(this.active.map((worker) => [worker.name, worker.pid]));
  }

  inspectPorts(): Map<string, number> {
    const ports = new Map<string, number>();
    for (const worker of this.active) {
      if (worker.inspectPort !== undefined) ports.set(worker.name, worker.inspectPort);
    }
    return ports;
  }
}

export interface LoopOptions {
  /** Broadcast numbers firstSeq .. firstSeq + count - 1. */
  firstSeq: number;
  count: number;
  /** Broadcasts in flight: a new one is published when one of the previous `window` reached everybody. */
  window: number;
  /** How long one broadcast may take to reach every subscriber before it counts as incomplete. */
  timeoutMs: number;
  /** Least time between two publishes (the `all` audience's rate limit); default none. */
  minIntervalMs?: number;
}

export interface LoopResult {
  broadcasts: number;
  window: number;
  subscribers: number;
  /** Receipts of the loop's broadcasts, and how many there should have been. */
  delivered: number;
  expected: number;
  /** Broadcasts that had not reached every subscriber within the timeout. */
  incomplete: number;
  /** First publish to the last broadcast complete. */
  elapsedMs: number;
  msgsPerS: number;
  /** Publish to receipt, over every receipt. */
  p50: number;
  p99: number;
  max: number;
  /** Publish to the last subscriber's receipt, per broadcast: median and worst. */
  lastP50: number;
  lastMax: number;
  /** Duration of the publish call (API call, IPC, MQTT publish with its PUBACK). */
  publishP50: number;
  publishMax: number;
  /** Publish calls that failed and were made again (the error of each, by message). */
  publishRetries: Record<string, number>;
  cpu: Map<string, number>;
}

/** Attempts of one publish before the loop fails. */
const PUBLISH_ATTEMPTS = 3;

/**
 * Publishes `count` broadcasts through `publish(seq, t)` (t: the publish time written into the message),
 * at most `window` in flight, each one waited for until every subscriber has it; then reads every receipt
 * of those broadcasts from the subscriber processes.
 */
export async function runBroadcasts(
  fleet: SubscriberFleet,
  publish: (seq: number, t: number) => Promise<void>,
  cpu: CpuMeter,
  options: LoopOptions,
): Promise<LoopResult> {
  await fleet.collect();
  const end = options.firstSeq + options.count;
  let next = options.firstSeq;
  let expectedEach = 0;
  let incomplete = 0;
  let lastPublishAt = Number.NEGATIVE_INFINITY;
  const publishMs: number[] = [];
  const publishRetries: Record<string, number> = {};
  const started = performance.now();
  cpu.start();
  const lane = async () => {
    while (next < end) {
      const seq = next++;
      if (options.minIntervalMs !== undefined) {
        const due = lastPublishAt + options.minIntervalMs;
        lastPublishAt = Math.max(performance.now(), due);
        if (due > performance.now()) await sleep(due - performance.now());
      }
      for (let attempt = 1; ; attempt++) {
        const t0 = performance.now();
        try {
          await publish(seq, nowMs());
          publishMs.push(performance.now() - t0);
          break;
        } catch (error) {
          // A failed call published nothing that counts: it is made again with a new publish time, and
          // reported.
          if (attempt >= PUBLISH_ATTEMPTS) throw error;
          const key = error instanceof Error ? error.message.slice(0, 120) : String(error);
          publishRetries[key] = (publishRetries[key] ?? 0) + 1;
          log(`publish of broadcast ${seq} failed (${key}); again`);
          await sleep(200 * attempt);
        }
      }
      const waited = await fleet.wait(seq, options.timeoutMs);
      expectedEach = waited.expected;
      if (!waited.complete) incomplete++;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.window) }, lane));
  const elapsedMs = performance.now() - started;
  const shares = cpu.stop();
  // An incomplete broadcast may still be arriving: give it a second before counting what was lost.
  if (incomplete > 0) await sleep(1_000);
  const receipts = await fleet.collect();
  const latencies: number[] = [];
  const last = new Map<number, number>();
  for (let i = 0; i < receipts.seqs.length; i++) {
    const seq = receipts.seqs[i]!;
    if (seq < options.firstSeq || seq >= end) continue;
    const ms = receipts.latencyMs[i]!;
    latencies.push(ms);
    last.set(seq, Math.max(last.get(seq) ?? 0, ms));
  }
  const [p50 = Number.NaN, p99 = Number.NaN, max = Number.NaN] = percentiles(latencies, [50, 99, 100]);
  const [lastP50 = Number.NaN, lastMax = Number.NaN] = percentiles([...last.values()], [50, 100]);
  const [publishP50 = Number.NaN, publishMax = Number.NaN] = percentiles(publishMs, [50, 100]);
  return {
    broadcasts: options.count,
    window: options.window,
    subscribers: expectedEach,
    delivered: latencies.length,
    expected: expectedEach * options.count,
    incomplete,
    elapsedMs,
    msgsPerS: latencies.length / (elapsedMs / 1000),
    p50,
    p99,
    max,
    lastP50,
    lastMax,
    publishP50,
    publishMax,
    publishRetries,
    cpu: shares,
  };
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

import { type Clock, systemClock } from '@pushd/common';
import { dayOf } from './audience-index.js';
import {
  APP_DAYS_KEPT,
  type AppDay,
  DEFAULT_DEDUP_TTL_MS,
  dedupTtlOf,
  type FunnelAdd,
  type FunnelStage,
  latencyBucket,
  type PushCounts,
  type PushFunnel,
  type StageCounts,
  type StatsStore,
} from './stats-store.js';

export interface MemoryStatsStoreOptions {
  /** Time source for forgetting who was counted. Default: systemClock. */
  clock?: Clock;
  /** How long after its last event a message remembers which tokens it counted. Default: 96 hours. */
  dedupTtlMs?: number;
}

interface PushStats {
  counts: StageCounts;
  platforms: Map<number, StageCounts>;
  latency: Map<number, number>;
  /** Devices counted per `<stage>:<day>`: what the app's day figures take from this push. */
  days: Map<string, number>;
  /** Per message (msg_id): who was counted at each stage, until the dedup window after its last event. */
  messages: Map<number, { seen: Record<FunnelStage, Set<string>>; dedupExpiresAtMs: number }>;
}

interface AppDayStats extends StageCounts {
  pushes: number;
}

const zero = (): StageCounts => ({ sent: 0, arrived: 0, clicked: 0 });

/**
 * Delivery counts in process memory, with the Redis store's semantics: the dedup sets are forgotten after
 * the dedup window, the counts are kept; day figures older than APP_DAYS_KEPT are dropped.
 */
export class MemoryStatsStore implements StatsStore {
  private readonly clock: Clock;
  readonly dedupTtlMs: number;
  private readonly pushes = new Map<string, PushStats>();
  /** `<accessId>\n<day>` -> the app's figures of that day. */
  private readonly appDays = new Map<string, AppDayStats>();
  private addsSinceSweep = 0;

  constructor(options: MemoryStatsStoreOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.dedupTtlMs = options.dedupTtlMs ?? DEFAULT_DEDUP_TTL_MS;
  }

  async addSent(accessId: number, pushId: string, tokens: string[], msgId = 0): Promise<number> {
    return this.addNow('sent', accessId, pushId, tokens, msgId);
  }

  async addArrived(accessId: number, pushId: string, tokens: string[], msgId = 0): Promise<number> {
    return this.addNow('arrived', accessId, pushId, tokens, msgId);
  }

  async add(add: FunnelAdd): Promise<number> {
    return this.apply(add);
  }

  async get(accessId: number, pushId: string): Promise<PushCounts> {
    const stats = this.pushes.get(pushKey(accessId, pushId));
    return { sent: stats?.counts.sent ?? 0, arrived: stats?.counts.arrived ?? 0 };
  }

  async getFunnel(accessId: number, pushId: string): Promise<PushFunnel> {
    const stats = this.pushes.get(pushKey(accessId, pushId));
    if (stats === undefined) return { ...zero(), platforms: [], latency: new Map() };
    return {
      ...stats.counts,
      platforms: [...stats.platforms.entries()]
        .sort(([a], [b]) => a - b)
        .map(([platform, counts]) => ({ platform, ...counts })),
      latency: new Map(stats.latency),
    };
  }

  async getDays(accessId: number, fromDay: number, toDay: number): Promise<AppDay[]> {
    const oldestKept = dayOf(this.clock.now()) - APP_DAYS_KEPT + 1;
    const days: AppDay[] = [];
    for (let day = fromDay; day <= toDay; day++) {
      const stats = day >= oldestKept ? this.appDays.get(`${accessId}\n${day}`) : undefined;
      days.push({ day, pushes: 0, ...zero(), ...stats });
    }
    return days;
  }

  private addNow(
    stage: FunnelStage,
    accessId: number,
    pushId: string,
    tokens: string[],
    msgId: number,
  ): number {
    const day = dayOf(this.clock.now());
    return this.apply({
      stage,
      accessId,
      pushId,
      msgId,
      day,
      devices: tokens.map((token) => ({ token, platform: 0 })),
    });
  }

  private apply({ stage, accessId, pushId, msgId = 0, day, devices }: FunnelAdd): number {
    if (devices.length === 0) return 0;
    const now = this.clock.now();
    const key = pushKey(accessId, pushId);
    let stats = this.pushes.get(key);
    if (!stats) {
      stats = {
        counts: zero(),
        platforms: new Map(),
        latency: new Map(),
        days: new Map(),
        messages: new Map(),
      };
      this.pushes.set(key, stats);
    }
    let message = stats.messages.get(msgId);
    if (message === undefined || message.dedupExpiresAtMs <= now) {
      message = { seen: { sent: new Set(), arrived: new Set(), clicked: new Set() }, dedupExpiresAtMs: 0 };
      stats.messages.set(msgId, message);
    }
    const seen = message.seen[stage];
    let added = 0;
    for (const device of devices) {
      if (seen.has(device.token)) continue;
      seen.add(device.token);
      added++;
      let platform = stats.platforms.get(device.platform);
      if (platform === undefined) {
        platform = zero();
        stats.platforms.set(device.platform, platform);
      }
      platform[stage]++;
      if (stage === 'arrived' && device.latencyMs !== undefined) {
        const bucket = latencyBucket(device.latencyMs);
        stats.latency.set(bucket, (stats.latency.get(bucket) ?? 0) + 1);
      }
    }
    stats.counts[stage] += added;
    message.dedupExpiresAtMs = Math.max(message.dedupExpiresAtMs, now + dedupTtlOf(stage, this.dedupTtlMs));
    if (added > 0) {
      const dayKey = `${stage}:${day}`;
      const before = stats.days.get(dayKey) ?? 0;
      stats.days.set(dayKey, before + added);
      const appKey = `${accessId}\n${day}`;
      const appDay = this.appDays.get(appKey) ?? { pushes: 0, ...zero() };
      appDay[stage] += added;
      if (stage === 'sent' && before === 0) appDay.pushes++;
      this.appDays.set(appKey, appDay);
    }
    this.sweep(now);
    return added;
  }

  /** Drops expired dedup sets and day figures in a full pass once per `size` adds: amortized O(1). */
  private sweep(now: number): void {
    if (++this.addsSinceSweep < this.pushes.size) return;
    this.addsSinceSweep = 0;
    for (const stats of this.pushes.values()) {
      for (const [msgId, message] of stats.messages) {
        if (message.dedupExpiresAtMs <= now) stats.messages.delete(msgId);
      }
    }
    const oldestKept = dayOf(now) - APP_DAYS_KEPT + 1;
    for (const key of this.appDays.keys()) {
      if (Number(key.slice(key.indexOf('\n') + 1)) < oldestKept) this.appDays.delete(key);
    }
  }
}

function pushKey(accessId: number, pushId: string): string {
  return `${accessId}\n${pushId}`;
}

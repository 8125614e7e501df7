import { DAY_MS, dayOf } from './audience-index.js';
import type { RedisKeys } from './keys.js';
import { commandPerKey, redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';
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

/** Devices per Lua call: bounds how long one call holds Redis (it runs scripts one at a time). */
const DEVICES_PER_CALL = 1000;

/** The counts hash's field of each stage (also the prefix of its per-platform fields). */
const STAGE_FIELD: Record<FunnelStage, string> = { sent: 's', arrived: 'a', clicked: 'c' };
const FIELD_STAGE: Record<string, FunnelStage> = { s: 'sent', a: 'arrived', c: 'clicked' };

export interface RedisStatsStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
  /** How long after its last event a push remembers which tokens it counted. Default: 96 hours. */
  dedupTtlMs?: number;
}

/**
 * Delivery counts on Redis. Per push (its slot): a counts hash (`s`, `a`, `c` totals; `<stage><platform>`
 * per platform; `l<bucket>` arrival latency histogram; `d<day>:<stage>` per UTC day) and, per stage, a set
 * of the tokens already counted that expires `dedupTtlMs` after the last event. A Lua call adds to the set
 * and the counts together, so a replayed event can neither be counted twice nor lost between the two.
 * Per app and day (the app's slot): the day's figures, and the per-push values already carried into them
 * (stats-day.lua), kept until the day is older than APP_DAYS_KEPT.
 */
export class RedisStatsStore implements StatsStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;
  readonly dedupTtlMs: number;

  constructor(options: RedisStatsStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    this.dedupTtlMs = options.dedupTtlMs ?? DEFAULT_DEDUP_TTL_MS;
    defineScripts(this.redis);
  }

  async addSent(accessId: number, pushId: string, tokens: string[], msgId = 0): Promise<number> {
    return this.addNow('sent', accessId, pushId, tokens, msgId);
  }

  async addArrived(accessId: number, pushId: string, tokens: string[], msgId = 0): Promise<number> {
    return this.addNow('arrived', accessId, pushId, tokens, msgId);
  }

  async add({ stage, accessId, pushId, msgId = 0, day, devices }: FunnelAdd): Promise<number> {
    if (devices.length === 0) return 0;
    const dedupKey = this.dedupKey(stage, accessId, pushId, msgId);
    const countsKey = this.keys.pushCounts(accessId, pushId);
    const field = STAGE_FIELD[stage];
    const chunks: (string | number)[][] = [];
    for (let i = 0; i < devices.length; i += DEVICES_PER_CALL) {
      const args: (string | number)[] = [];
      for (const device of devices.slice(i, i + DEVICES_PER_CALL)) {
        const bucket =
          stage === 'arrived' && device.latencyMs !== undefined ? latencyBucket(device.latencyMs) : '';
        args.push(device.token, device.platform, bucket);
      }
      chunks.push(args);
    }
    // All chunks touch one slot: one node, one round trip.
    const replies = await commandPerKey(
      chunks.map(() => dedupKey),
      (key, i) =>
        runScript(
          this.redis,
          'statsFunnel',
          [key, countsKey, this.dedupKey(stage, accessId, pushId, 0)],
          [field, dedupTtlOf(stage, this.dedupTtlMs), day, ...chunks[i]!],
        ),
    );
    let added = 0;
    let dayCount = 0;
    for (const reply of replies) {
      const [n, total] = reply as [number, number];
      added += Number(n);
      dayCount = Math.max(dayCount, Number(total));
    }
    // Also when nothing was new: a replay after a crash between the two steps carries what the first
    // attempt counted.
    if (dayCount > 0) {
      await redisCall(
        runScript(
          this.redis,
          'statsDay',
          [this.keys.statsDay(accessId, day), this.keys.statsDayCarried(accessId, day)],
          [(day + APP_DAYS_KEPT + 1) * DAY_MS, (day + 1) * DAY_MS + this.dedupTtlMs, field, pushId, dayCount],
        ),
      );
    }
    return added;
  }

  async get(accessId: number, pushId: string): Promise<PushCounts> {
    const [sent, arrived] = await redisCall(
      this.redis.hmget(this.keys.pushCounts(accessId, pushId), 's', 'a'),
    );
    return { sent: Number(sent ?? 0), arrived: Number(arrived ?? 0) };
  }

  async getFunnel(accessId: number, pushId: string): Promise<PushFunnel> {
    const hash = await redisCall(this.redis.hgetall(this.keys.pushCounts(accessId, pushId)));
    const funnel: PushFunnel = { sent: 0, arrived: 0, clicked: 0, platforms: [], latency: new Map() };
    const platforms = new Map<number, StageCounts>();
    for (const [field, value] of Object.entries(hash)) {
      const count = Number(value);
      const kind = field[0] ?? '';
      const stage = FIELD_STAGE[kind];
      if (stage !== undefined && field.length === 1) {
        funnel[stage] = count;
      } else if (stage !== undefined && /^\d+$/.test(field.slice(1))) {
        const platform = Number(field.slice(1));
        const counts = platforms.get(platform) ?? { sent: 0, arrived: 0, clicked: 0 };
        counts[stage] = count;
        platforms.set(platform, counts);
      } else if (kind === 'l') {
        funnel.latency.set(Number(field.slice(1)), count);
      }
    }
    funnel.platforms = [...platforms.entries()]
      .sort(([a], [b]) => a - b)
      .map(([platform, counts]) => ({ platform, ...counts }));
    return funnel;
  }

  async getDays(accessId: number, fromDay: number, toDay: number): Promise<AppDay[]> {
    const days: number[] = [];
    for (let day = fromDay; day <= toDay; day++) days.push(day);
    const oldestKept = dayOf(Date.now()) - APP_DAYS_KEPT + 1;
    const kept = days.filter((day) => day >= oldestKept);
    const replies = await commandPerKey(
      kept.map((day) => this.keys.statsDay(accessId, day)),
      (key) => this.redis.hmget(key, 'p', 's', 'a', 'c'),
    );
    const byDay = new Map<number, (string | null)[]>();
    for (const [i, day] of kept.entries()) byDay.set(day, replies[i]!);
    return days.map((day) => {
      const [pushes, sent, arrived, clicked] = byDay.get(day) ?? [];
      return {
        day,
        pushes: Number(pushes ?? 0),
        sent: Number(sent ?? 0),
        arrived: Number(arrived ?? 0),
        clicked: Number(clicked ?? 0),
      };
    });
  }

  private addNow(
    stage: FunnelStage,
    accessId: number,
    pushId: string,
    tokens: string[],
    msgId: number,
  ): Promise<number> {
    const devices = tokens.map((token) => ({ token, platform: 0 }));
    return this.add({ stage, accessId, pushId, msgId, day: dayOf(Date.now()), devices });
  }

  private dedupKey(stage: FunnelStage, accessId: number, pushId: string, msgId: number): string {
    if (stage === 'sent') return this.keys.pushSent(accessId, pushId, msgId);
    if (stage === 'arrived') return this.keys.pushArrived(accessId, pushId, msgId);
    return this.keys.pushClicked(accessId, pushId, msgId);
  }
}

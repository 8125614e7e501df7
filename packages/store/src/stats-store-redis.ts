import type { RedisKeys } from './keys.js';
import { pipelinePerKey, redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, queueScript } from './redis-scripts.js';
import { DEFAULT_DEDUP_TTL_MS, type PushCounts, type StatsStore } from './stats-store.js';

/** Tokens per Lua call: bounds how long one call holds Redis (it runs scripts one at a time). */
const TOKENS_PER_CALL = 1000;

export interface RedisStatsStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
  /** How long after its last event a push remembers which tokens it counted. Default: 96 hours. */
  dedupTtlMs?: number;
}

/**
 * Delivery counts on Redis: per push a counts hash (`s`, `a`) and, per kind, a set of the tokens already
 * counted that expires `dedupTtlMs` after the last event. A Lua call adds to the set and the count
 * together, so a replayed event can neither be counted twice nor lost between the two.
 */
export class RedisStatsStore implements StatsStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;
  private readonly dedupTtlMs: number;

  constructor(options: RedisStatsStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    this.dedupTtlMs = options.dedupTtlMs ?? DEFAULT_DEDUP_TTL_MS;
    defineScripts(this.redis);
  }

  async addSent(accessId: number, pushId: string, tokens: string[]): Promise<number> {
    return this.add(
      this.keys.pushSent(accessId, pushId),
      this.keys.pushCounts(accessId, pushId),
      's',
      tokens,
    );
  }

  async addArrived(accessId: number, pushId: string, tokens: string[]): Promise<number> {
    return this.add(
      this.keys.pushArrived(accessId, pushId),
      this.keys.pushCounts(accessId, pushId),
      'a',
      tokens,
    );
  }

  async get(accessId: number, pushId: string): Promise<PushCounts> {
    const [sent, arrived] = await redisCall(
      this.redis.hmget(this.keys.pushCounts(accessId, pushId), 's', 'a'),
    );
    return { sent: Number(sent ?? 0), arrived: Number(arrived ?? 0) };
  }

  private async add(dedupKey: string, countsKey: string, field: string, tokens: string[]): Promise<number> {
    if (tokens.length === 0) return 0;
    const chunks: string[][] = [];
    for (let i = 0; i < tokens.length; i += TOKENS_PER_CALL)
      chunks.push(tokens.slice(i, i + TOKENS_PER_CALL));
    // All chunks touch one slot: one pipeline, one round trip.
    const added = await pipelinePerKey(
      this.redis,
      chunks.map(() => dedupKey),
      (pipeline, key, i) =>
        queueScript(pipeline, 'statsAdd', [key, countsKey], [field, this.dedupTtlMs, ...chunks[i]!]),
    );
    return added.reduce<number>((sum, n) => sum + Number(n), 0);
  }
}

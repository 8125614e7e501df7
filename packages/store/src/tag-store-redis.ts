import type { RedisKeys } from './keys.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';
import type { TagStore } from './tag-store.js';

export interface RedisTagStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/** Tags on Redis: one set per device; adding checks the limit and adds in one Lua call. */
export class RedisTagStore implements TagStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisTagStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async add(
    accessId: number,
    token: string,
    tags: string[],
    maxPerDevice: number,
  ): Promise<{ ok: true; count: number } | { ok: false; wouldHave: number }> {
    // Distinct here, so that the script counts each new tag once.
    const distinct = [...new Set(tags)];
    const [ok, count] = (await redisCall(
      runScript(this.redis, 'tagAdd', [this.keys.tags(accessId, token)], [maxPerDevice, ...distinct]),
    )) as [number, number];
    return ok === 1 ? { ok: true, count } : { ok: false, wouldHave: count };
  }

  async remove(accessId: number, token: string, tags: string[]): Promise<number> {
    return (await redisCall(
      runScript(this.redis, 'tagRemove', [this.keys.tags(accessId, token)], tags),
    )) as number;
  }

  async list(accessId: number, token: string): Promise<string[]> {
    return (await redisCall(this.redis.smembers(this.keys.tags(accessId, token)))).sort();
  }

  async clear(accessId: number, token: string): Promise<void> {
    await redisCall(this.redis.del(this.keys.tags(accessId, token)));
  }
}

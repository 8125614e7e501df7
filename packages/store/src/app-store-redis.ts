import { type AppRecord, type AppStore, FIRST_ACCESS_ID } from './app-store.js';
import type { RedisKeys } from './keys.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';

export interface RedisAppStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/**
 * Apps as hashes (`{a:<id>}:app`), ids from one global counter. Creating takes two steps in different
 * slots: the counter, then the record. A crash between them burns an id, which is harmless.
 */
export class RedisAppStore implements AppStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisAppStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
  }

  async create(app: Omit<AppRecord, 'accessId'>): Promise<AppRecord> {
    const sequence = await redisCall(this.redis.incr(this.keys.appSeq()));
    const record: AppRecord = { ...app, accessId: FIRST_ACCESS_ID - 1 + sequence };
    await redisCall(
      this.redis.hset(this.keys.app(record.accessId), {
        n: record.name,
        ak: record.accessKey,
        sk: record.secretKeyHash,
        tk: record.tokenKey,
        c: record.createdAtMs,
      }),
    );
    return record;
  }

  async get(accessId: number): Promise<AppRecord | undefined> {
    const [name, accessKey, secretKeyHash, tokenKey, createdAtMs] = await redisCall(
      this.redis.hmget(this.keys.app(accessId), 'n', 'ak', 'sk', 'tk', 'c'),
    );
    if (name == null || createdAtMs == null) return undefined;
    return {
      accessId,
      name,
      accessKey: accessKey ?? '',
      secretKeyHash: secretKeyHash ?? '',
      tokenKey: tokenKey ?? '',
      createdAtMs: Number(createdAtMs),
    };
  }
}

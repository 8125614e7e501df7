import { PushRecord, type PushStatus } from '@pushd/proto';
import type { RedisKeys } from './keys.js';
import type { PushStore } from './push-store.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';

export interface RedisPushStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/**
 * Pushes on Redis: per push a hash of the encoded PushRecord (`r`) with its status (`s`) and target
 * (`n`) beside it, so that setStatus is a small atomic update instead of a read-modify-write of the
 * record. Id counters are one hash per app.
 */
export class RedisPushStore implements PushStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisPushStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async nextIds(accessId: number): Promise<{ pushId: string; msgId: number }> {
    const [pushId, msgId] = (await redisCall(
      runScript(this.redis, 'nextIds', [this.keys.idSeq(accessId)], []),
    )) as [number, number];
    return { pushId: String(pushId), msgId };
  }

  async nextMsgId(accessId: number): Promise<number> {
    return redisCall(this.redis.hincrby(this.keys.idSeq(accessId), 'm', 1));
  }

  async save(push: PushRecord): Promise<void> {
    // One HSET of all fields replaces a previous version whole.
    await redisCall(
      this.redis.hset(this.keys.push(push.accessId, push.pushId), {
        r: Buffer.from(PushRecord.encode(push).finish()),
        s: push.status,
        n: push.target,
      }),
    );
  }

  async get(accessId: number, pushId: string): Promise<PushRecord | undefined> {
    const [record, status, target] = await redisCall(
      this.redis.hmgetBuffer(this.keys.push(accessId, pushId), 'r', 's', 'n'),
    );
    if (!record) return undefined;
    const push = PushRecord.decode(record);
    if (status) push.status = Number(status.toString()) as PushStatus;
    if (target) push.target = Number(target.toString());
    return push;
  }

  async setStatus(accessId: number, pushId: string, status: PushStatus, target: number): Promise<boolean> {
    const updated = await redisCall(
      runScript(this.redis, 'pushSetStatus', [this.keys.push(accessId, pushId)], [status, target]),
    );
    return updated === 1;
  }
}

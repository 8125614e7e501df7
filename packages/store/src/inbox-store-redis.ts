import { PushMessage } from '@pushd/proto';
import type { AppendResult, InboxStore, PendingResult } from './inbox-store.js';
import type { RedisKeys } from './keys.js';
import { execPipeline, redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';

export interface RedisInboxStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/** Bytes before the encoded message in a member: its expiry, so that Lua can prune without decoding. */
const EXPIRY_BYTES = 8;

/**
 * Offline windows on Redis: per device a sorted set (score msgId, member expiry + PushMessage bytes)
 * that expires with its newest message, and the device's lastMsgId beside it, which does not expire (it
 * orders the device's messages for as long as the device is registered). Append is one Lua call.
 */
export class RedisInboxStore implements InboxStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisInboxStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async append(
    accessId: number,
    token: string,
    message: PushMessage,
    capacity: number,
    nowMs: number,
  ): Promise<AppendResult> {
    const encoded = PushMessage.encode(message).finish();
    const member = Buffer.allocUnsafe(EXPIRY_BYTES + encoded.length);
    member.writeDoubleBE(message.expiresAtMs, 0);
    member.set(encoded, EXPIRY_BYTES);
    const [appended, msgId] = (await redisCall(
      runScript(
        this.redis,
        'inboxAppend',
        [this.keys.inbox(accessId, token), this.keys.inboxLast(accessId, token)],
        [message.msgId, message.expiresAtMs, member, capacity, nowMs],
      ),
    )) as [number, number];
    return appended === 1 ? { appended: true, previousMsgId: msgId } : { appended: false, lastMsgId: msgId };
  }

  async pending(accessId: number, token: string, afterMsgId: number, nowMs: number): Promise<PendingResult> {
    // Both keys share the device's slot: one pipeline, one round trip, also on a cluster.
    const [last, members] = (await execPipeline(
      this.redis
        .pipeline()
        .get(this.keys.inboxLast(accessId, token))
        .zrangebyscoreBuffer(this.keys.inbox(accessId, token), `(${afterMsgId}`, '+inf'),
    )) as [string | null, Buffer[]];
    const messages: PushMessage[] = [];
    for (const member of members) {
      if (member.readDoubleBE(0) <= nowMs) continue;
      messages.push(PushMessage.decode(member.subarray(EXPIRY_BYTES)));
    }
    return { messages, lastMsgId: Number(last ?? 0) };
  }

  async ack(accessId: number, token: string, msgIds: number[]): Promise<void> {
    if (msgIds.length === 0) return;
    await redisCall(runScript(this.redis, 'inboxAck', [this.keys.inbox(accessId, token)], msgIds));
  }

  async clear(accessId: number, token: string): Promise<void> {
    await redisCall(this.redis.del(this.keys.inbox(accessId, token), this.keys.inboxLast(accessId, token)));
  }
}

import { encodeMessage, PushMessage } from '@pushd/proto';
import type { AppendResult, InboxStore, PendingResult } from './inbox-store.js';
import type { RedisKeys } from './keys.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript, runScriptBuffer } from './redis-scripts.js';

export interface RedisInboxStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/** Bytes before the encoded message in a member: its expiry, so that Lua can prune without decoding. */
const EXPIRY_BYTES = 8;

/**
 * Offline windows on Redis: per device a sorted set (score msgId, member expiry + PushMessage bytes)
 * that expires with its newest message, the device's lastMsgId beside it, which does not expire (it
 * orders the device's messages for as long as the device is registered), and a small meta hash (each
 * entry's expiry and collapse id, and the dropped count) that does not expire either, so that messages
 * whose payloads vanished with the sorted set are still counted as dropped. Append and pending are one
 * Lua call each (inbox-append.lua, inbox-pending.lua).
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
    const encoded = encodeMessage(PushMessage, message);
    const member = Buffer.allocUnsafe(EXPIRY_BYTES + encoded.length);
    member.writeDoubleBE(message.expiresAtMs, 0);
    member.set(encoded, EXPIRY_BYTES);
    const [appended, msgId] = (await redisCall(
      runScript(this.redis, 'inboxAppend', this.windowKeys(accessId, token), [
        message.msgId,
        message.expiresAtMs,
        member,
        capacity,
        nowMs,
        message.message?.collapseId ?? '',
      ]),
    )) as [number, number];
    return appended === 1 ? { appended: true, previousMsgId: msgId } : { appended: false, lastMsgId: msgId };
  }

  async pending(
    accessId: number,
    token: string,
    afterMsgId: number,
    nowMs: number,
    deviceProcessed = false,
  ): Promise<PendingResult> {
    // A script, not reads: expired entries are counted and the dropped count is taken in one step.
    const [lastMsgId, dropped, taken, ...members] = (await redisCall(
      runScriptBuffer(this.redis, 'inboxPending', this.windowKeys(accessId, token), [
        afterMsgId,
        nowMs,
        deviceProcessed ? '1' : '0',
      ]),
    )) as [number, number, number, ...Buffer[]];
    const decoded = members.map((member) => PushMessage.decode(member.subarray(EXPIRY_BYTES)));
    return { messages: decoded.slice(taken), lastMsgId, dropped, processed: decoded.slice(0, taken) };
  }

  async ack(accessId: number, token: string, msgIds: number[]): Promise<void> {
    if (msgIds.length === 0) return;
    await redisCall(
      runScript(
        this.redis,
        'inboxAck',
        [this.keys.inbox(accessId, token), this.keys.inboxMeta(accessId, token)],
        msgIds,
      ),
    );
  }

  async clear(accessId: number, token: string): Promise<void> {
    await redisCall(this.redis.del(...this.windowKeys(accessId, token)));
  }

  /** The keys of inbox-append.lua and inbox-pending.lua, all in the device's slot. */
  private windowKeys(accessId: number, token: string): string[] {
    return [
      this.keys.inbox(accessId, token),
      this.keys.inboxLast(accessId, token),
      this.keys.inboxMeta(accessId, token),
    ];
  }
}

import {
  type BroadcastAppendResult,
  type BroadcastEntry,
  type BroadcastLog,
  type BroadcastSinceResult,
  type BroadcastSlotResult,
  checkEntry,
  checkMaxEntries,
  checkSince,
  DEFAULT_BROADCAST_LOG_MAX_ENTRIES,
  gateWindowMs,
} from './broadcast-log.js';
import type { RedisKeys } from './keys.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript, runScriptBuffer } from './redis-scripts.js';

export interface RedisBroadcastLogOptions {
  redis: RedisClient;
  keys: RedisKeys;
  /** Newest entries kept per app (see DEFAULT_BROADCAST_LOG_MAX_ENTRIES for why). Default: 10,000. */
  maxEntries?: number;
}

/** Bytes before an entry's data in a log member: its msg id, then its expiry (big-endian doubles). */
const HEADER_BYTES = 16;

/**
 * Broadcast logs on Redis, all keys in the app's slot: a sorted set of the entries (score msgId, member
 * msgId + expiry + data), an index of their expiries (so that expired entries are found without reading
 * the data), both expiring with the newest entry, and the head, which does not expire. Append and since
 * are one Lua call each; the rate gate is one key with a TTL.
 */
export class RedisBroadcastLog implements BroadcastLog {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;
  private readonly maxEntries: number;

  constructor(options: RedisBroadcastLogOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    this.maxEntries = checkMaxEntries(options.maxEntries ?? DEFAULT_BROADCAST_LOG_MAX_ENTRIES);
    defineScripts(this.redis);
  }

  async append(accessId: number, entry: BroadcastEntry, now: number): Promise<BroadcastAppendResult> {
    checkEntry(entry);
    const member = Buffer.allocUnsafe(HEADER_BYTES + entry.data.length);
    member.writeDoubleBE(entry.msgId, 0);
    member.writeDoubleBE(entry.expiresAtMs, 8);
    member.set(entry.data, HEADER_BYTES);
    const [appended, previousMsgId] = (await redisCall(
      runScript(this.redis, 'broadcastAppend', this.logKeys(accessId), [
        entry.msgId,
        entry.expiresAtMs,
        member,
        this.maxEntries,
        now,
      ]),
    )) as [number, number];
    return { appended: appended === 1, previousMsgId };
  }

  async since(
    accessId: number,
    afterMsgId: number,
    now: number,
    limit: number,
  ): Promise<BroadcastSinceResult> {
    const count = checkSince(afterMsgId, limit, this.maxEntries);
    const [head, ...members] = (await redisCall(
      runScriptBuffer(this.redis, 'broadcastSince', this.logKeys(accessId), [afterMsgId, now, count]),
    )) as [number, ...Buffer[]];
    return {
      entries: members.map((member) => ({
        msgId: member.readDoubleBE(0),
        expiresAtMs: member.readDoubleBE(8),
        // A plain Uint8Array of its own, as the memory store returns, not a view into the reply.
        data: new Uint8Array(member.subarray(HEADER_BYTES)),
      })),
      lastMsgId: head,
    };
  }

  async head(accessId: number): Promise<number> {
    return Number((await redisCall(this.redis.get(this.keys.broadcastHead(accessId)))) ?? 0);
  }

  async tryAcquireBroadcastSlot(
    accessId: number,
    windowMs: number,
    _now: number,
  ): Promise<BroadcastSlotResult> {
    const retryAfterMs = (await redisCall(
      runScript(this.redis, 'broadcastGate', [this.keys.broadcastGate(accessId)], [gateWindowMs(windowMs)]),
    )) as number;
    return retryAfterMs === 0 ? { acquired: true } : { acquired: false, retryAfterMs };
  }

  private logKeys(accessId: number): string[] {
    return [
      this.keys.broadcastLog(accessId),
      this.keys.broadcastExpiry(accessId),
      this.keys.broadcastHead(accessId),
    ];
  }
}

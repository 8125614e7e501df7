import type { RedisKeys } from './keys.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';
import {
  checkClaim,
  checkEntry,
  checkPartition,
  entryMember,
  entryOfMember,
  occurrencePrefix,
  prefixEnd,
  pushPrefix,
  type ScheduleEntry,
  type ScheduleStore,
} from './schedule-store.js';

export interface RedisScheduleStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/**
 * Schedules on Redis, two sorted sets per partition in the partition's own slot ({s:<partition>}): the
 * entries scored by when they are due (their fire time, or the end of the lease while claimed), and the
 * same members scored 0 so that the entries of one push are one lexicographic range (cancel). Members
 * carry the whole entry, '<access id>:<encoded push id>:<occurrence>:<fire at ms>'. Each call is one
 * command or script.
 */
export class RedisScheduleStore implements ScheduleStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisScheduleStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async add(partition: number, entry: ScheduleEntry): Promise<void> {
    checkPartition(partition);
    checkEntry(entry);
    const occurrence = occurrencePrefix(entry);
    await redisCall(
      runScript(this.redis, 'scheduleAdd', this.partitionKeys(partition), [
        entryMember(entry),
        entry.fireAtMs,
        `[${occurrence}`,
        `(${prefixEnd(occurrence)}`,
      ]),
    );
  }

  async claimDue(partition: number, now: number, leaseMs: number, limit: number): Promise<ScheduleEntry[]> {
    checkPartition(partition);
    checkClaim(now, leaseMs, limit);
    const members = (await redisCall(
      runScript(this.redis, 'scheduleClaim', [this.keys.scheduleDue(partition)], [now, now + leaseMs, limit]),
    )) as string[];
    return members.map(entryOfMember);
  }

  async complete(partition: number, entry: ScheduleEntry): Promise<void> {
    checkPartition(partition);
    const member = entryMember(entry);
    await redisCall(
      runScript(this.redis, 'scheduleRemove', this.partitionKeys(partition), [`[${member}`, `[${member}`]),
    );
  }

  async remove(partition: number, accessId: number, pushId: string): Promise<number> {
    checkPartition(partition);
    const prefix = pushPrefix(accessId, pushId);
    return (await redisCall(
      runScript(this.redis, 'scheduleRemove', this.partitionKeys(partition), [
        `[${prefix}`,
        `(${prefixEnd(prefix)}`,
      ]),
    )) as number;
  }

  async pending(partition: number): Promise<number> {
    checkPartition(partition);
    return redisCall(this.redis.zcard(this.keys.scheduleDue(partition)));
  }

  async oldestDueMs(partition: number, now: number): Promise<number | undefined> {
    checkPartition(partition);
    const [first] = await redisCall(
      this.redis.zrangebyscore(this.keys.scheduleDue(partition), '-inf', now, 'LIMIT', 0, 1),
    );
    return first === undefined ? undefined : entryOfMember(first).fireAtMs;
  }

  private partitionKeys(partition: number): string[] {
    return [this.keys.scheduleDue(partition), this.keys.scheduleByPush(partition)];
  }
}

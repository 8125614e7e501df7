import { invalidArgument } from '@pushd/common';
import { encodePart } from './keys.js';

/** One occurrence of a scheduled push, waiting to be fired. */
export interface ScheduleEntry {
  accessId: number;
  pushId: string;
  /** 1, 2, ... (a recurring push has one entry per occurrence, added when the previous one fires). */
  occurrence: number;
  /** When it is due, ms since the epoch (after accept windows moved it). */
  fireAtMs: number;
}

/** Most entries one claimDue call takes. */
export const MAX_CLAIM = 10_000;

/**
 * The pushes to fire, per push-log partition (each partition its own key on Redis, so that partitions
 * spread over a cluster). Owned by the dispatch scheduler; every dispatch instance polls every partition.
 *
 * Claiming is at least once: a claimed entry is hidden for a lease and must be completed; if its claimer
 * dies, it is due again when the lease ends and another instance takes it. The scheduler makes firing
 * exactly once on top (the push's status, the push log's dedup). Time comes from the callers' `now`.
 */
export interface ScheduleStore {
  /**
   * Adds an entry. Adding the same occurrence of a push again is a no-op when it has the same fireAtMs
   * (a claimed one stays claimed), and replaces it when it has another. Throws INVALID_ARGUMENT for an
   * access id, occurrence or time that is not a non-negative integer (occurrence: positive).
   */
  add(partition: number, entry: ScheduleEntry): Promise<void>;

  /**
   * Atomically takes up to `limit` entries due at `now` (fireAtMs <= now, or a lease that ended), earliest
   * first, and hides them until now + leaseMs. Each is returned as added, to be passed to complete().
   */
  claimDue(partition: number, now: number, leaseMs: number, limit: number): Promise<ScheduleEntry[]>;

  /** Removes a fired (or dropped) entry; a no-op when it is gone. */
  complete(partition: number, entry: ScheduleEntry): Promise<void>;

  /** Removes every occurrence of a push (claimed ones too): the cancel. Returns how many were removed. */
  remove(partition: number, accessId: number, pushId: string): Promise<number>;

  /** Entries of the partition, waiting or claimed. */
  pending(partition: number): Promise<number>;

  /**
   * The fireAtMs of the entry that has waited longest among those due at `now` and not claimed (an entry
   * whose claimer died counts from its fire time); undefined when none is due. For a lateness gauge: the
   * scheduler is behind, or not running, when this lies far in the past.
   */
  oldestDueMs(partition: number, now: number): Promise<number | undefined>;
}

// ---- helpers shared by the implementations -----------------------------------------------------------

export function checkPartition(partition: number): void {
  if (!Number.isSafeInteger(partition) || partition < 0) {
    throw invalidArgument('partition', `must be a non-negative integer (got ${partition})`);
  }
}

export function checkEntry(entry: ScheduleEntry): void {
  for (const [field, value, least] of [
    ['access_id', entry.accessId, 0],
    ['occurrence', entry.occurrence, 1],
    ['fire_at_ms', entry.fireAtMs, 0],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < least) {
      throw invalidArgument(field, `must be an integer of at least ${least} (got ${value})`);
    }
  }
}

export function checkClaim(now: number, leaseMs: number, limit: number): void {
  if (!Number.isFinite(now)) throw invalidArgument('now', `must be a finite number (got ${now})`);
  if (!Number.isFinite(leaseMs) || leaseMs <= 0) {
    throw invalidArgument('lease_ms', `must be a positive number (got ${leaseMs})`);
  }
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_CLAIM) {
    throw invalidArgument('limit', `must be 1 to ${MAX_CLAIM} (got ${limit})`);
  }
}

/**
 * The entries of one push share the prefix `<access id>:<encoded push id>:`, and of one occurrence
 * `<access id>:<encoded push id>:<occurrence>:` (an encoded push id holds no ':'), so that one lexicographic
 * range finds them.
 */
export function pushPrefix(accessId: number, pushId: string): string {
  return `${accessId}:${encodePart(pushId)}:`;
}

export function occurrencePrefix(entry: ScheduleEntry): string {
  return `${pushPrefix(entry.accessId, entry.pushId)}${entry.occurrence}:`;
}

export function entryMember(entry: ScheduleEntry): string {
  return `${occurrencePrefix(entry)}${entry.fireAtMs}`;
}

export function entryOfMember(member: string): ScheduleEntry {
  const [accessId, pushId, occurrence, fireAtMs] = member.split(':') as [string, string, string, string];
  return {
    accessId: Number(accessId),
    pushId: pushId.startsWith('~') ? Buffer.from(pushId.slice(1), 'base64url').toString('utf8') : pushId,
    occurrence: Number(occurrence),
    fireAtMs: Number(fireAtMs),
  };
}

/** The first string above every string that starts with `prefix` (which ends in ':'). */
export function prefixEnd(prefix: string): string {
  return `${prefix.slice(0, -1)};`;
}

import { type Clock, systemClock } from '@pushd/common';
import { type PushRecord, PushStatus } from '@pushd/proto';
import {
  commandRetainUntil,
  IDEMPOTENCY_TTL_MS,
  type IdempotencyClaim,
  indexMember,
  listPushes,
  type PushListPage,
  type PushListQuery,
  type PushPatch,
  type PushStore,
  type PushUpdateResult,
  pushIdOfMember,
  pushNotFound,
  recordRetainUntil,
  type ScheduledCommand,
} from './push-store.js';

export interface MemoryPushStoreOptions {
  /** Time source of retention (PUSH_RETENTION_MS) and of idempotency keys (IDEMPOTENCY_TTL_MS). Default: systemClock. */
  clock?: Clock;
}

interface StoredPush {
  record: PushRecord;
  firing: number;
  /** The log entry that claimed delivering the latest claimed occurrence (claimDelivery). */
  claimed?: { occurrence: number; msgId: number };
  command: ScheduledCommand | undefined;
  /** Entry in the app's index. */
  member: string;
  retainUntilMs: number;
}

interface IdempotencyEntry {
  pushId: string;
  response: Uint8Array | undefined;
  expiresAtMs: number;
}

interface AppIndex {
  /** Index entries, ascending (creation order). */
  members: string[];
  /** Retention deadlines, earliest first (a binary heap); stale ones are skipped when popped. */
  deadlines: { at: number; pushId: string }[];
}

/**
 * Pushes in process memory, behaving as the Redis store does. Records are copied in and out, so callers
 * cannot change stored state. Pushes past their retention are invisible at once and removed on the app's
 * next save.
 */
export class MemoryPushStore implements PushStore {
  private readonly clock: Clock;
  private readonly counters = new Map<number, number>();
  private readonly pushes = new Map<string, StoredPush>();
  private readonly indexes = new Map<number, AppIndex>();
  /**
   * Idempotency keys of all apps, oldest claim first (every claim lives IDEMPOTENCY_TTL_MS, so this is also
   * expiry order while the clock moves forward); expired ones are invisible and removed on the next claim.
   */
  private readonly idempotency = new Map<string, IdempotencyEntry>();

  constructor(options: MemoryPushStoreOptions = {}) {
    this.clock = options.clock ?? systemClock;
  }

  async nextPushId(accessId: number): Promise<string> {
    const next = (this.counters.get(accessId) ?? 0) + 1;
    this.counters.set(accessId, next);
    return String(next);
  }

  async save(push: PushRecord): Promise<void> {
    const { accessId, pushId } = push;
    const member = indexMember(push.createdAtMs, pushId);
    const key = pushKey(accessId, pushId);
    // `existing` may be past its retention and not yet trimmed: its index entry goes all the same.
    const existing = this.pushes.get(key);
    const previous = this.live(accessId, pushId);
    const index = this.index(accessId);
    if (existing && existing.member !== member) removeSorted(index.members, existing.member);
    const stored: StoredPush = {
      record: structuredClone(push),
      firing: previous?.firing ?? 0,
      command: previous?.command,
      member,
      retainUntilMs: Math.max(previous?.retainUntilMs ?? 0, recordRetainUntil(push)),
    };
    this.pushes.set(key, stored);
    insertSorted(index.members, member);
    if (stored.retainUntilMs !== previous?.retainUntilMs)
      heapPush(index.deadlines, { at: stored.retainUntilMs, pushId });
    this.trim(accessId, index);
  }

  async get(accessId: number, pushId: string): Promise<PushRecord | undefined> {
    const stored = this.live(accessId, pushId);
    return stored ? structuredClone(stored.record) : undefined;
  }

  async setStatus(accessId: number, pushId: string, status: PushStatus, target: number): Promise<boolean> {
    return (await this.update(accessId, pushId, { status, target })).updated;
  }

  async update(
    accessId: number,
    pushId: string,
    patch: PushPatch,
    expect?: PushStatus[],
    expectFiring?: number,
  ): Promise<PushUpdateResult> {
    const stored = this.live(accessId, pushId);
    if (!stored) return { updated: false, status: undefined, firing: 0 };
    const { record } = stored;
    const refused = { updated: false, status: record.status, firing: stored.firing };
    if (expect !== undefined && !expect.includes(record.status)) return refused;
    if (expectFiring !== undefined && expectFiring !== stored.firing) return refused;
    if (patch.firing !== undefined && patch.firing <= stored.firing) return refused;
    if (patch.firing !== undefined) stored.firing = patch.firing;
    if (patch.status !== undefined) record.status = patch.status;
    if (patch.msgId !== undefined) record.msgId = patch.msgId;
    if (patch.target !== undefined) record.target = patch.target;
    if (patch.occurrences !== undefined) record.occurrences = patch.occurrences;
    if (patch.failure !== undefined) record.failure = patch.failure;
    return { updated: true, status: record.status, firing: stored.firing };
  }

  async claimDelivery(accessId: number, pushId: string, occurrence: number, msgId: number): Promise<boolean> {
    const stored = this.live(accessId, pushId);
    if (!stored) return false;
    const { claimed } = stored;
    if (claimed?.occurrence === occurrence && claimed.msgId === msgId) return true;
    if (stored.record.status !== PushStatus.PUSH_STATUS_SENDING || stored.firing !== occurrence) return false;
    if (claimed !== undefined && claimed.occurrence >= occurrence) return false;
    stored.claimed = { occurrence, msgId };
    return true;
  }

  async saveCommand(accessId: number, pushId: string, command: ScheduledCommand): Promise<void> {
    const stored = this.live(accessId, pushId);
    if (!stored) throw pushNotFound(accessId, pushId);
    stored.command = structuredClone(command);
    const until = commandRetainUntil(command);
    if (until > stored.retainUntilMs) {
      stored.retainUntilMs = until;
      heapPush(this.index(accessId).deadlines, { at: until, pushId });
    }
  }

  async command(accessId: number, pushId: string): Promise<ScheduledCommand | undefined> {
    const command = this.live(accessId, pushId)?.command;
    return command ? structuredClone(command) : undefined;
  }

  async list(accessId: number, query: PushListQuery): Promise<PushListPage> {
    const members = this.indexes.get(accessId)?.members ?? [];
    const stored = (member: string) => {
      const push = this.live(accessId, pushIdOfMember(member));
      return push?.member === member ? push : undefined;
    };
    return listPushes(query, {
      range: async (below, atLeast, count) => {
        const found: string[] = [];
        // The first entry not below `below`, then walk down.
        let i = below === undefined ? members.length : lowerBound(members, below);
        while (--i >= 0 && found.length < count && members[i]! >= atLeast) found.push(members[i]!);
        return found;
      },
      statuses: async (list) => list.map((member) => stored(member)?.record.status),
      records: async (list) =>
        list.map((member) => {
          const push = stored(member);
          return push ? structuredClone(push.record) : undefined;
        }),
    });
  }

  async claimIdempotencyKey(accessId: number, key: string, pushId: string): Promise<IdempotencyClaim> {
    const now = this.clock.now();
    this.trimIdempotency(now);
    const id = idempotencyId(accessId, key);
    const held = this.idempotency.get(id);
    if (held && held.expiresAtMs > now) {
      return held.response === undefined
        ? { claimed: false, pushId: held.pushId }
        : { claimed: false, pushId: held.pushId, response: held.response.slice() };
    }
    // Deleted first so that the new claim goes to the end (expiry order).
    this.idempotency.delete(id);
    this.idempotency.set(id, { pushId, response: undefined, expiresAtMs: now + IDEMPOTENCY_TTL_MS });
    return { claimed: true };
  }

  async completeIdempotencyKey(
    accessId: number,
    key: string,
    pushId: string,
    response: Uint8Array,
  ): Promise<void> {
    const held = this.liveIdempotency(accessId, key);
    if (held?.pushId === pushId) held.response = response.slice();
  }

  async releaseIdempotencyKey(accessId: number, key: string, pushId: string): Promise<void> {
    const held = this.liveIdempotency(accessId, key);
    if (held?.pushId === pushId && held.response === undefined)
      this.idempotency.delete(idempotencyId(accessId, key));
  }

  private liveIdempotency(accessId: number, key: string): IdempotencyEntry | undefined {
    const held = this.idempotency.get(idempotencyId(accessId, key));
    return held && held.expiresAtMs > this.clock.now() ? held : undefined;
  }

  /** Removes expired idempotency keys from the oldest claim on, up to the first one still alive. */
  private trimIdempotency(now: number): void {
    for (const [id, entry] of this.idempotency) {
      if (entry.expiresAtMs > now) break;
      this.idempotency.delete(id);
    }
  }

  /** The stored push unless it is past its retention. */
  private live(accessId: number, pushId: string): StoredPush | undefined {
    const stored = this.pushes.get(pushKey(accessId, pushId));
    return stored && stored.retainUntilMs > this.clock.now() ? stored : undefined;
  }

  /** Removes the app's pushes past their retention, earliest deadline first. */
  private trim(accessId: number, index: AppIndex): void {
    const now = this.clock.now();
    while (index.deadlines.length > 0 && index.deadlines[0]!.at <= now) {
      const { at, pushId } = heapPop(index.deadlines);
      const key = pushKey(accessId, pushId);
      const stored = this.pushes.get(key);
      // A deadline that was extended later left this entry behind: the push stays.
      if (!stored || stored.retainUntilMs !== at) continue;
      this.pushes.delete(key);
      removeSorted(index.members, stored.member);
    }
  }

  private index(accessId: number): AppIndex {
    let index = this.indexes.get(accessId);
    if (!index) {
      index = { members: [], deadlines: [] };
      this.indexes.set(accessId, index);
    }
    return index;
  }
}

function pushKey(accessId: number, pushId: string): string {
  return `${accessId}\n${pushId}`;
}

function idempotencyId(accessId: number, key: string): string {
  return `${accessId}\n${key}`;
}

/** Index of the first element >= value. */
function lowerBound(sorted: string[], value: string): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (sorted[mid]! < value) low = mid + 1;
    else high = mid;
  }
  return low;
}

/** Most pushes are the newest of their app, so this usually appends. */
function insertSorted(sorted: string[], value: string): void {
  const at = lowerBound(sorted, value);
  if (sorted[at] !== value) sorted.splice(at, 0, value);
}

function removeSorted(sorted: string[], value: string): void {
  const at = lowerBound(sorted, value);
  if (sorted[at] === value) sorted.splice(at, 1);
}

type Deadline = { at: number; pushId: string };

function heapPush(heap: Deadline[], item: Deadline): void {
  heap.push(item);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (heap[parent]!.at <= item.at) break;
    heap[i] = heap[parent]!;
    i = parent;
  }
  heap[i] = item;
}

function heapPop(heap: Deadline[]): Deadline {
  const top = heap[0]!;
  const last = heap.pop()!;
  if (heap.length > 0) {
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child = right < heap.length && heap[right]!.at < heap[left]!.at ? right : left;
      if (heap[child]!.at >= last.at) break;
      heap[i] = heap[child]!;
      i = child;
    }
    heap[i] = last;
  }
  return top;
}

import {
  checkClaim,
  checkEntry,
  checkPartition,
  entryMember,
  entryOfMember,
  occurrencePrefix,
  pushPrefix,
  type ScheduleEntry,
  type ScheduleStore,
} from './schedule-store.js';

interface Slot {
  /** When the entry is due: its fire time, or the end of its lease while claimed. */
  score: number;
  member: string;
}

interface Partition {
  /** Ordered by (score, member), as a Redis sorted set orders them. */
  queue: Slot[];
  /** member -> its slot. */
  slots: Map<string, Slot>;
  /** push prefix -> members of that push. */
  byPush: Map<string, Set<string>>;
}

/** Schedules in process memory, behaving as the Redis store does. Time comes from the callers' `now`. */
export class MemoryScheduleStore implements ScheduleStore {
  private readonly partitions = new Map<number, Partition>();

  async add(partition: number, entry: ScheduleEntry): Promise<void> {
    checkPartition(partition);
    checkEntry(entry);
    const p = this.partition(partition);
    const member = entryMember(entry);
    if (p.slots.has(member)) return;
    const occurrence = occurrencePrefix(entry);
    for (const other of [...(p.byPush.get(pushPrefix(entry.accessId, entry.pushId)) ?? [])]) {
      if (other.startsWith(occurrence)) this.delete(p, other);
    }
    this.insert(p, { score: entry.fireAtMs, member });
    const prefix = pushPrefix(entry.accessId, entry.pushId);
    let members = p.byPush.get(prefix);
    if (!members) {
      members = new Set();
      p.byPush.set(prefix, members);
    }
    members.add(member);
  }

  async claimDue(partition: number, now: number, leaseMs: number, limit: number): Promise<ScheduleEntry[]> {
    checkPartition(partition);
    checkClaim(now, leaseMs, limit);
    const p = this.partitions.get(partition);
    if (!p) return [];
    const due: Slot[] = [];
    while (due.length < limit && p.queue.length > 0 && p.queue[0]!.score <= now) due.push(p.queue.shift()!);
    for (const slot of due) {
      slot.score = now + leaseMs;
      this.insert(p, slot);
    }
    return due.map((slot) => entryOfMember(slot.member));
  }

  async complete(partition: number, entry: ScheduleEntry): Promise<void> {
    checkPartition(partition);
    const p = this.partitions.get(partition);
    if (p) this.delete(p, entryMember(entry));
  }

  async remove(partition: number, accessId: number, pushId: string): Promise<number> {
    checkPartition(partition);
    const p = this.partitions.get(partition);
    const members = p?.byPush.get(pushPrefix(accessId, pushId));
    if (!p || !members) return 0;
    const count = members.size;
    for (const member of [...members]) this.delete(p, member);
    return count;
  }

  async pending(partition: number): Promise<number> {
    checkPartition(partition);
    return this.partitions.get(partition)?.slots.size ?? 0;
  }

  async oldestDueMs(partition: number, now: number): Promise<number | undefined> {
    checkPartition(partition);
    const first = this.partitions.get(partition)?.queue[0];
    return first && first.score <= now ? entryOfMember(first.member).fireAtMs : undefined;
  }

  private partition(partition: number): Partition {
    let p = this.partitions.get(partition);
    if (!p) {
      p = { queue: [], slots: new Map(), byPush: new Map() };
      this.partitions.set(partition, p);
    }
    return p;
  }

  private insert(p: Partition, slot: Slot): void {
    p.queue.splice(position(p.queue, slot), 0, slot);
    p.slots.set(slot.member, slot);
  }

  private delete(p: Partition, member: string): void {
    const slot = p.slots.get(member);
    if (!slot) return;
    p.slots.delete(member);
    const index = position(p.queue, slot);
    if (p.queue[index] === slot) p.queue.splice(index, 1);
    const entry = entryOfMember(member);
    const prefix = pushPrefix(entry.accessId, entry.pushId);
    const members = p.byPush.get(prefix);
    members?.delete(member);
    if (members?.size === 0) p.byPush.delete(prefix);
  }
}

/** Index of the first slot not before `slot` in the queue. */
function position(queue: Slot[], slot: Slot): number {
  let low = 0;
  let high = queue.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (before(queue[mid]!, slot)) low = mid + 1;
    else high = mid;
  }
  return low;
}

function before(a: Slot, b: Slot): boolean {
  return a.score < b.score || (a.score === b.score && a.member < b.member);
}

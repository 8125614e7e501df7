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

export interface MemoryBroadcastLogOptions {
  /** Newest entries kept per app (see DEFAULT_BROADCAST_LOG_MAX_ENTRIES for why). Default: 10,000. */
  maxEntries?: number;
}

interface AppLog {
  /** Highest msgId ever appended; outlives the entries. */
  head: number;
  /** Increasing msgId; the store's own copies of the data. */
  entries: BroadcastEntry[];
  /** No entry expires before this (a lower bound), so most appends skip the expiry pass. */
  earliestExpiresAtMs: number;
}

/**
 * Broadcast logs in process memory, behaving as the Redis store does. Time comes from the callers' `now`.
 * Each app keeps its head for good (a few bytes per app); its entries go when they expire or are trimmed.
 */
export class MemoryBroadcastLog implements BroadcastLog {
  private readonly maxEntries: number;
  private readonly logs = new Map<number, AppLog>();
  /** accessId -> time (by the callers' `now`) from which the gate can be acquired again. */
  private readonly gates = new Map<number, number>();

  constructor(options: MemoryBroadcastLogOptions = {}) {
    this.maxEntries = checkMaxEntries(options.maxEntries ?? DEFAULT_BROADCAST_LOG_MAX_ENTRIES);
  }

  async append(accessId: number, entry: BroadcastEntry, now: number): Promise<BroadcastAppendResult> {
    checkEntry(entry);
    let log = this.logs.get(accessId);
    if (log && entry.msgId <= log.head) return { appended: false, previousMsgId: log.head };
    if (!log) {
      log = { head: 0, entries: [], earliestExpiresAtMs: Number.POSITIVE_INFINITY };
      this.logs.set(accessId, log);
    }
    const previousMsgId = log.head;
    log.head = entry.msgId;
    dropExpired(log, now);
    if (entry.expiresAtMs > now) {
      // The highest msgId so far, so it goes last.
      log.entries.push({
        msgId: entry.msgId,
        expiresAtMs: entry.expiresAtMs,
        data: new Uint8Array(entry.data),
      });
      log.earliestExpiresAtMs = Math.min(log.earliestExpiresAtMs, entry.expiresAtMs);
    }
    if (log.entries.length > this.maxEntries) log.entries.splice(0, log.entries.length - this.maxEntries);
    return { appended: true, previousMsgId };
  }

  async since(
    accessId: number,
    afterMsgId: number,
    now: number,
    limit: number,
  ): Promise<BroadcastSinceResult> {
    const count = checkSince(afterMsgId, limit, this.maxEntries);
    const log = this.logs.get(accessId);
    if (!log) return { entries: [], lastMsgId: 0 };
    dropExpired(log, now);
    const { entries } = log;
    const start = Math.max(firstAbove(entries, afterMsgId), entries.length - count);
    return {
      entries: entries
        .slice(start)
        .map((e) => ({ msgId: e.msgId, expiresAtMs: e.expiresAtMs, data: e.data.slice() })),
      lastMsgId: log.head,
    };
  }

  async head(accessId: number): Promise<number> {
    return this.logs.get(accessId)?.head ?? 0;
  }

  async tryAcquireBroadcastSlot(
    accessId: number,
    windowMs: number,
    now: number,
  ): Promise<BroadcastSlotResult> {
    const window = gateWindowMs(windowMs);
    const until = this.gates.get(accessId);
    if (until !== undefined && now < until) return { acquired: false, retryAfterMs: Math.ceil(until - now) };
    this.gates.set(accessId, now + window);
    return { acquired: true };
  }
}

function dropExpired(log: AppLog, now: number): void {
  if (log.earliestExpiresAtMs > now) return;
  log.entries = log.entries.filter((e) => e.expiresAtMs > now);
  log.earliestExpiresAtMs = log.entries.reduce(
    (min, e) => Math.min(min, e.expiresAtMs),
    Number.POSITIVE_INFINITY,
  );
}

/** Index of the first entry with msgId > afterMsgId (entries.length if none); entries are sorted by msgId. */
function firstAbove(entries: BroadcastEntry[], afterMsgId: number): number {
  let low = 0;
  let high = entries.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (entries[middle]!.msgId > afterMsgId) high = middle;
    else low = middle + 1;
  }
  return low;
}

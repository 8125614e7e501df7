import { ConfigError, invalidArgument } from '@pushd/common';

/**
 * Default of `maxEntries`. The brief's 72-hour offline limit already bounds the age of what is kept (the
 * callers give entries at most that expiry); the cap bounds the memory of one app that sends many tag
 * pushes within those 72 hours (at ~1 KB an entry, 10,000 entries are ~10 MB per app at most). Cost of
 * the cap: a device offline for longer than the span of the app's newest 10,000 entries misses the older
 * ones; its offline window holds only 1 (iOS) or 2 (Android) messages anyway, and those are the newest,
 * so it loses nothing it would have been shown.
 */
export const DEFAULT_BROADCAST_LOG_MAX_ENTRIES = 10_000;

/** One broadcast or tag push as the log keeps it. */
export interface BroadcastEntry {
  /** Increasing per app; entries are appended in increasing msgId order (positive safe integer). */
  msgId: number;
  /** Wall-clock ms; the entry is gone once `now >= expiresAtMs`. */
  expiresAtMs: number;
  /** The encoded BroadcastDelivery, opaque to the store, kept and returned byte for byte. */
  data: Uint8Array;
}

export interface BroadcastAppendResult {
  /** False when msgId was not above the app's head: nothing changed (a redelivered command, say). */
  appended: boolean;
  /**
   * The app's head before this call (0 if the app never had an entry): when appended, the msgId of the
   * entry this one follows, even if that entry has since expired or been trimmed; when refused, the head
   * that the refused msgId did not exceed.
   */
  previousMsgId: number;
}

export interface BroadcastSinceResult {
  /** Oldest first. */
  entries: BroadcastEntry[];
  /** The app's head (0 if the app never had an entry). */
  lastMsgId: number;
}

export type BroadcastSlotResult = { acquired: true } | { acquired: false; retryAfterMs: number };

/**
 * The broadcast and tag pushes of an app, kept once per app (nothing per device, so the storage does not
 * grow with the audience) for devices that come back online and catch up. Owned by the dispatch service;
 * read by the gateways. Also the app's rate gate for broadcasts to all its devices.
 *
 * Besides the entries the log keeps the app's head: the highest msgId ever appended. It survives expiry
 * and trimming of the entries, so that the chain of previous msgIds (BroadcastDelivery's
 * previous_broadcast_id) never restarts at 0 while the app lives.
 *
 * Time comes from the callers' `now` (ms), which must be close to real time: the Redis store also lets
 * the log vanish at its newest expiry by the server's clock (the head stays).
 */
export interface BroadcastLog {
  /**
   * Appends the entry if its msgId is above the app's head, else changes nothing (appending the same entry
   * twice is a no-op). Atomic. On append, first drops the entries expired at `now` (expiresAtMs <= now),
   * then keeps only the newest `maxEntries` (store option). An entry already expired at `now` is not kept
   * but still becomes the head, as does one the cap trims at once. Throws INVALID_ARGUMENT when msgId is
   * not a positive safe integer or expiresAtMs not a finite number.
   */
  append(accessId: number, entry: BroadcastEntry, now: number): Promise<BroadcastAppendResult>;

  /**
   * The entries with msgId > afterMsgId unexpired at `now`, oldest first: the NEWEST `limit` of them when
   * there are more (a device's offline window holds only a message or two and the newest win, so older
   * ones are never worth sending), none when limit < 1. Also drops the entries expired at `now`: an entry
   * once seen expired does not come back when a later call passes an earlier `now`.
   */
  since(accessId: number, afterMsgId: number, now: number, limit: number): Promise<BroadcastSinceResult>;

  /** The app's head: the highest msgId ever appended (0 if none). */
  head(accessId: number): Promise<number>;

  /**
   * The app's gate for broadcasts to all its devices (the brief: at most one per 3 seconds per app).
   * Acquired when the app has not acquired it in the last `windowMs` (rounded up to whole ms, at least 1);
   * else refused with the ms until it can be acquired again (0 < retryAfterMs <= the windowMs of the
   * call that acquired it). A refusal does not extend the window. The memory store keeps time by `now`; the Redis store by the server's
   * clock (SET NX PX), so there `now` is ignored.
   */
  tryAcquireBroadcastSlot(accessId: number, windowMs: number, now: number): Promise<BroadcastSlotResult>;
}

/** Shared by both stores so that they refuse the same things. */
export function checkMaxEntries(maxEntries: number): number {
  if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
    throw new ConfigError(`broadcast log maxEntries must be a positive integer (got ${maxEntries})`);
  }
  return maxEntries;
}

export function checkEntry(entry: BroadcastEntry): void {
  if (!Number.isSafeInteger(entry.msgId) || entry.msgId < 1) {
    throw invalidArgument('msg_id', `must be a positive integer (got ${entry.msgId})`);
  }
  if (!Number.isFinite(entry.expiresAtMs)) {
    throw invalidArgument('expires_at_ms', `must be a finite number (got ${entry.expiresAtMs})`);
  }
}

/**
 * Checks since()'s arguments and returns how many entries to return at most: `limit` rounded down, 0 when
 * below 1, and never more than the log can hold (so that Infinity means "all").
 */
export function checkSince(afterMsgId: number, limit: number, maxEntries: number): number {
  if (!Number.isSafeInteger(afterMsgId) || afterMsgId < 0) {
    throw invalidArgument('after_msg_id', `must be a non-negative integer (got ${afterMsgId})`);
  }
  if (Number.isNaN(limit)) throw invalidArgument('limit', 'must be a number (got NaN)');
  return Math.max(0, Math.min(Math.floor(limit), maxEntries));
}

/** PX takes whole milliseconds, at least 1 (0 would be an error, not "no window"). */
export function gateWindowMs(windowMs: number): number {
  if (!Number.isFinite(windowMs)) throw invalidArgument('window_ms', `must be finite (got ${windowMs})`);
  return Math.max(1, Math.ceil(windowMs));
}

import type { PushMessage } from '@pushd/proto';

/**
 * A device's offline window: messages kept until the device acknowledges them or they expire. Owned by
 * the dispatch service.
 *
 * Ordering: the store also remembers the highest msgId ever appended for the device (`lastMsgId`, kept
 * even after the messages are acknowledged, trimmed or expired) and refuses to append a message whose
 * msgId is not above it. So a device's messages enter its window in increasing msgId order even when
 * several dispatch calls race; the refused caller takes a fresh (higher) id and appends again. Each append
 * returns the previous lastMsgId, which gateways use to detect a gap in what they received live.
 *
 * Collapsing: a message whose `message.collapseId` is set (non-empty) replaces the device's window entries
 * with the same collapse id, expired or not: the newer one supersedes them, so the device loses nothing and
 * they are not counted as dropped. Other devices' windows are untouched.
 *
 * Dropped count: every message appended for the device that leaves its window other than by ack, clear
 * or collapsing (evicted by the capacity, or expired, including one that arrives already expired) adds one
 * to the device's `dropped` counter. `pending` returns it and resets it, in one atomic step, so that each
 * drop is reported once: the gateway writes the count in the next Deliver frame and the app resyncs.
 */
export interface InboxStore {
  /**
   * Adds a message and keeps only the newest `capacity` messages (by msgId) that have not expired at
   * `nowMs`. The brief's limits: capacity 2 on Android, 1 on iOS. Refused (nothing changes) when
   * message.msgId <= lastMsgId. Atomic. First removes the entries it collapses (not counted), then the
   * expired ones, then adds the message and trims to the capacity (both counted as dropped). A message
   * with expiresAtMs <= nowMs (including an unset 0) is not kept (counted as dropped), but still becomes
   * lastMsgId, as does one trimmed at once by the capacity. `nowMs` must be close to real time: the Redis
   * store also lets a window's payloads vanish at its newest expiry by the server's clock (they are still
   * counted as dropped).
   */
  append(
    accessId: number,
    token: string,
    message: PushMessage,
    capacity: number,
    nowMs: number,
  ): Promise<AppendResult>;

  /**
   * Messages with msgId > afterMsgId that have not expired at nowMs, oldest first, the device's lastMsgId
   * (0 if nothing was ever appended) and its dropped count, which this call resets to 0. Atomic. Expired
   * messages it finds leave the window and are counted in the `dropped` it returns. With
   * `deviceProcessed` (afterMsgId is what the device said it processed), the messages at or below
   * afterMsgId leave the window too and come back in `processed`: they arrived, their acks were lost.
   */
  pending(
    accessId: number,
    token: string,
    afterMsgId: number,
    nowMs: number,
    deviceProcessed?: boolean,
  ): Promise<PendingResult>;

  /** Forgets acknowledged messages (never counted as dropped); unknown ids are ignored. lastMsgId is unchanged. */
  ack(accessId: number, token: string, msgIds: number[]): Promise<void>;

  /** Forgets every message of the device, its lastMsgId and its dropped count (it unregistered). */
  clear(accessId: number, token: string): Promise<void>;
}

export type AppendResult =
  | { appended: true /** lastMsgId before this append (0 if none). */; previousMsgId: number }
  | {
      appended: false /** The device's lastMsgId, which the refused msgId did not exceed. */;
      lastMsgId: number;
    };

export interface PendingResult {
  messages: PushMessage[];
  lastMsgId: number;
  /** Messages dropped from the window since the previous `pending` call (evicted or expired). */
  dropped: number;
  /** With `deviceProcessed`: the messages at or below afterMsgId, which this call took out of the window. */
  processed: PushMessage[];
}

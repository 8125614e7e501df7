import type { PushMessage } from '@pushd/proto';

/**
 * A device's offline window: messages kept until the device acknowledges them or they expire. Owned by
 * the dispatch service.
 */
export interface InboxStore {
  /**
   * Adds a message and keeps only the newest `capacity` messages (by msgId) that have not expired at
   * `nowMs`. The brief's limits: capacity 2 on Android, 1 on iOS.
   */
  append(accessId: number, token: string, message: PushMessage, capacity: number, nowMs: number): Promise<void>;

  /** Messages with msgId > afterMsgId that have not expired at nowMs, oldest first. */
  pending(accessId: number, token: string, afterMsgId: number, nowMs: number): Promise<PushMessage[]>;

  /** Forgets acknowledged messages; unknown ids are ignored. */
  ack(accessId: number, token: string, msgIds: number[]): Promise<void>;

  /** Forgets every message of the device (it unregistered). */
  clear(accessId: number, token: string): Promise<void>;
}

import type { PushRecord, PushStatus } from '@pushd/proto';

/** Pushes an app has sent. Owned by the dispatch service. */
export interface PushStore {
  /**
   * The next push id and message id of an app, from two counters, in one atomic call. Both increase:
   * message ids order a device's messages. Push ids are decimal strings.
   */
  nextIds(accessId: number): Promise<{ pushId: string; msgId: number }>;

  /** A further message id, above every id handed out before (to retry a refused inbox append). */
  nextMsgId(accessId: number): Promise<number>;

  save(push: PushRecord): Promise<void>;

  get(accessId: number, pushId: string): Promise<PushRecord | undefined>;

  /** Sets the status and target count; returns false when the push does not exist. */
  setStatus(accessId: number, pushId: string, status: PushStatus, target: number): Promise<boolean>;
}

import type { HasTag } from '@pushd/audience';
import type { FrameEncoding, Platform, PushMessage } from '@pushd/proto';
import type { WebSocket } from 'ws';

export type SessionState = 'registering' | 'syncing' | 'live' | 'closed';

/** A live message (targeted or broadcast), offered in order; buffered while the session catches up. */
export interface LiveMessage {
  message: PushMessage;
  /** Targeted: the msg_id appended to the device's window just before this one. Broadcast: 0. */
  previousMsgId: number;
  /** The app's broadcast before this message (both kinds chain onto the app's broadcasts). */
  previousBroadcastId: number;
  /** Broadcast only: whether the device is in its audience (evaluated when it arrived). */
  broadcastMatch?: boolean;
}

/**
 * One device connection. Kept small and free of closures and timers: a gateway holds tens of thousands,
 * and one sweep timer serves them all.
 */
export class Session {
  state: SessionState;
  token = '';
  platform = 0 as Platform;
  /** The device's index (audience index bit), from the registry; undefined for a device without one. */
  index: number | undefined;
  /** Highest msg_id written to this connection (or reported processed by the device at connect). */
  lastDeliveredMsgId: number;
  /**
   * Highest msg_id of the device's window this session knows about. A live message chains onto it when
   * its previousMsgId equals it; a larger previousMsgId means a message is missing (fetch the window).
   */
  chainMsgId = 0;
  /**
   * msg_id of the newest broadcast of the app this session has accounted for (delivered, not matching, or
   * covered by a catch-up). A message chaining onto a later broadcast means one was missed: catch up.
   */
  broadcastChainId = 0;
  /** What the device reported at registration: its built-in tags (pushd:app_version:..., ...). */
  appVersion = '';
  osVersion = '';
  locale = '';
  /** Device.registered_at_ms (a device without a cursor gets broadcasts since then). */
  registeredAtMs = 0;
  /**
   * The device's tag set (user tags and its reported location's `pushd:` tags), loaded when the session
   * starts, when the tag service says they changed, and after the device's own tag and location frames.
   */
  userTags: readonly string[] = [];
  /** Built from the above on the first tag push that needs it; cleared when they change. */
  tagTest: HasTag | undefined;
  /** True while catchUp runs, so that a gap found during it does not start a second one. */
  catchingUp = false;
  /** Live messages received while syncing; delivered in order once the window was fetched. */
  buffered: LiveMessage[] | undefined;
  /**
   * Messages delivered and not yet acknowledged, by msg_id: their push and send time go into arrival
   * events (and name the push of a click that does not). The message itself, not a copy of those two
   * fields: a live message is one object shared by every session it reaches, so this allocates nothing
   * per device.
   */
  unacked: Map<number, PushMessage> | undefined;
  /** The device sent Unregister and the registry call is in flight. */
  unregistering = false;
  /** Start of the current rate window of UpdateTags / ReportLocation frames, and how many came in it. */
  tagWindowStartMs = 0;
  tagWindowFrames = 0;
  /** The last UpdateTags / ReportLocation call queued: calls of one session run in the order sent. */
  tagCalls: Promise<void> | undefined;
  /** Cleared by each heartbeat ping, set by any pong or frame: still false at the next visit = dead. */
  alive = true;
  /** When the last heartbeat ping was sent (Date.now()). */
  pingedAtMs = 0;

  constructor(
    readonly socket: WebSocket,
    readonly id: string,
    readonly accessId: number,
    readonly encoding: FrameEncoding,
    readonly openedAtMs: number,
    lastMsgId: number,
    /** The app's access key, on a registration connection until it registers. */
    readonly accessKey: string | undefined,
  ) {
    this.state = accessKey === undefined ? 'syncing' : 'registering';
    this.lastDeliveredMsgId = lastMsgId;
  }

  /** Hub key: one session per device per gateway. */
  get key(): string {
    return `${this.accessId}:${this.token}`;
  }
}

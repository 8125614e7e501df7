import type { FrameEncoding, Platform, PushMessage } from '@pushd/proto';
import type { WebSocket } from 'ws';

export type SessionState = 'registering' | 'syncing' | 'live' | 'closed';

/** A live message waiting while the session catches up from the offline window. */
export interface BufferedMessage {
  message: PushMessage;
  previousMsgId: number;
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
  /** True while catchUp runs, so that a gap found during it does not start a second one. */
  catchingUp = false;
  /** Live messages received while syncing; delivered in order once the window was fetched. */
  buffered: BufferedMessage[] | undefined;
  /** msg_id -> push_id of messages delivered and not yet acknowledged (for arrival events). */
  unacked: Map<number, string> | undefined;
  /** The device sent Unregister and the registry call is in flight. */
  unregistering = false;
  /** Cleared by each heartbeat sweep, set by any pong or frame: still false at the next sweep = dead. */
  alive = true;

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

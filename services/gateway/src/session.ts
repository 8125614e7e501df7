import { randomBytes } from 'node:crypto';
import type { HasTag, Matcher } from '@pushd/audience';
import type { FrameEncoding, Platform, PushMessage } from '@pushd/proto';
import type { WebSocket } from 'ws';

export type SessionState = 'registering' | 'syncing' | 'live' | 'closed';

/** A broadcast's audience as a gateway evaluates it: a platform (unspecified: both) and tag expression. */
export interface BroadcastAudience {
  platform: Platform;
  /** Undefined: every device of the platform. */
  matcher: Matcher | undefined;
}

/** A live message (targeted or broadcast), offered in order; buffered while the session catches up. */
export interface LiveMessage {
  message: PushMessage;
  /** Targeted: the msg_id appended to the device's window just before this one. Broadcast: 0. */
  previousMsgId: number;
  /** The app's broadcast before this message (both kinds chain onto the app's broadcasts). */
  previousBroadcastId: number;
  /** Broadcast only: whether the device is in its audience (evaluated when it arrived). */
  broadcastMatch?: boolean;
  /**
   * Broadcast only: who it is for, to evaluate it again when a catch-up writes it from the buffer: it may
   * have arrived before the session's tags were read (matched then against none), or before they changed.
   */
  audience?: BroadcastAudience;
  /**
   * Online only (NodeDelivery / BroadcastDelivery.online_only): targeted, in no window, so no link of the
   * device chain; a broadcast, kept in no log entry, so not fetched by a log read that covers its id.
   */
  onlineOnly?: boolean;
}

/**
 * 72 random bits per gateway process: with the serial after it, an id no other process (another gateway,
 * or this node before a restart) gives, so that a route clear fenced by session id never removes a route
 * a newer session wrote.
 */
const SESSION_ID_PREFIX = `${randomBytes(9).toString('base64url')}.`;

/**
 * Strings many sessions share (app and OS versions, locales, tag names) are kept once: each session would
 * otherwise hold its own copy decoded from the registry's and the tag service's answers. Bounded, so that
 * devices reporting endless distinct values cannot grow it: past the bound, values are kept as they come.
 */
const SHARED_STRINGS_MAX = 8_192;
const sharedStrings = new Map<string, string>();

export function shared(value: string): string {
  const known = sharedStrings.get(value);
  if (known !== undefined) return known;
  if (sharedStrings.size < SHARED_STRINGS_MAX) sharedStrings.set(value, value);
  return value;
}

const NO_TAGS: readonly string[] = Object.freeze([]);

/** Live messages a session holds while it catches up (Gateway.offerLive). */
export const MAX_BUFFERED_LIVE = 256;

/**
 * Delivered messages a session keeps for their acks (Session.rememberUnacked): at least what one catch-up
 * writes in one Deliver (the buffered live messages and the window's, at most 2 by the offline limits),
 * which the device acks in one frame. An ack finding no message still counts, but without a push id, and
 * the stats count arrivals by push.
 */
export const MAX_UNACKED = MAX_BUFFERED_LIVE + 2;

/** A session's tag list made of shared strings (one empty list for every session without tags). */
export function sharedTags(tags: readonly string[]): readonly string[] {
  if (tags.length === 0) return NO_TAGS;
  return tags.map(shared);
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
   * Highest msg_id of the device's window this session has accounted for (the window's last id when it
   * was read, and windowed targeted messages since). A live message chains onto it when its previousMsgId
   * equals it; a larger previousMsgId means a message is missing (fetch the window). Broadcasts and
   * online-only messages are no links of this chain and never move it: a targeted message lost on the bus
   * before one of them must still show as a gap. -1 until the session's first fetch: not known yet.
   */
  chainMsgId = -1;
  /**
   * msg_id of the newest broadcast of the app this session has accounted for (delivered, not matching, or
   * covered by a catch-up). A message chaining onto a later broadcast means one was missed: catch up.
   * -1 until the session's first fetch.
   */
  broadcastChainId = -1;
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
  userTags: readonly string[] = NO_TAGS;
  /** Built from the above on the first tag push that needs it; cleared when they change. */
  tagTest: HasTag | undefined;
  /**
   * Messages owed to the device that it will never get, not yet written in a Deliver's `dropped`: what
   * dispatch reported (its window's drops) and what this session found it can no longer deliver in order.
   */
  unreportedDropped = 0;
  /** Live messages received while syncing; merged by msg_id with what the fetch found (catchUp). */
  buffered: LiveMessage[] | undefined;
  /**
   * Messages delivered and not yet acknowledged: their push and send time go into arrival events (and name
   * the push of a click that does not). The message itself, not a copy of those two fields: a live message
   * is one object shared by every session it reaches. The usual case, one message out at a time (a device
   * acks each Deliver), is one field; a Map is made only while several are out (see rememberUnacked).
   */
  private unackedOne: PushMessage | undefined;
  private unackedMany: Map<number, PushMessage> | undefined;
  /**
   * The device sent Unregister and the registry call is in flight: 'asked', then 'announced' once the
   * registry's UNREGISTERED event for it came (the registry announces before it removes the device: a call
   * that then fails may have been done but for its answer, or have failed to remove the device).
   */
  unregistering: 'asked' | 'announced' | undefined;
  /** Start of the current rate window of UpdateTags / ReportLocation frames, and how many came in it. */
  tagWindowStartMs = 0;
  tagWindowFrames = 0;
  /** The last UpdateTags / ReportLocation call queued: calls of one session run in the order sent. */
  tagCalls: Promise<void> | undefined;
  /**
   * Acks of msg ids this session has no record of delivering, and clicks, since its last heartbeat ping:
   * events no delivery here accounts for, limited per heartbeat interval (Gateway.withinUntrackedBudget).
   */
  untrackedEvents = 0;
  /** Cleared by each heartbeat ping, set by any pong or frame: still false at the next visit = dead. */
  alive = true;
  /** When the last heartbeat ping was sent (Date.now()). */
  pingedAtMs = 0;

  constructor(
    readonly socket: WebSocket,
    /** This gateway's number for the session; `id` is the string devices, routes and events carry. */
    readonly serial: number,
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

  /**
   * Keeps a delivered message until its ack, at most MAX_UNACKED (the oldest go): they only serve arrival
   * attribution, and a device that never acks must not grow this. A Map per delivery would be made for
   * every session a broadcast reaches and kept until the acks came back, long enough to be copied by the
   * collector (a scavenge copies what is still alive).
   */
  rememberUnacked(message: PushMessage): void {
    if (this.unackedMany === undefined) {
      if (this.unackedOne === undefined || this.unackedOne.msgId === message.msgId) {
        this.unackedOne = message;
        return;
      }
      this.unackedMany = new Map([[this.unackedOne.msgId, this.unackedOne]]);
      this.unackedOne = undefined;
    }
    this.unackedMany.set(message.msgId, message);
    while (this.unackedMany.size > MAX_UNACKED) {
      const oldest = this.unackedMany.keys().next().value as number;
      this.unackedMany.delete(oldest);
    }
  }

  /** The unacknowledged message of this msg_id, if delivered here and kept. */
  unackedMessage(msgId: number): PushMessage | undefined {
    if (this.unackedOne !== undefined) return this.unackedOne.msgId === msgId ? this.unackedOne : undefined;
    return this.unackedMany?.get(msgId);
  }

  /** Forgets (and returns) the unacknowledged message of this msg_id: its ack came. */
  takeUnacked(msgId: number): PushMessage | undefined {
    const one = this.unackedOne;
    if (one !== undefined) {
      if (one.msgId !== msgId) return undefined;
      this.unackedOne = undefined;
      return one;
    }
    const many = this.unackedMany;
    const message = many?.get(msgId);
    if (message === undefined || many === undefined) return undefined;
    many.delete(msgId);
    if (many.size === 0) this.unackedMany = undefined;
    return message;
  }

  /** How many delivered messages this session keeps for their acks. */
  get unackedCount(): number {
    return this.unackedOne !== undefined ? 1 : (this.unackedMany?.size ?? 0);
  }

  /**
   * The session id (Connected.session_id, the route's fence, presence events): unique across gateways
   * and restarts. Built when needed rather than kept: a gateway holds tens of thousands of sessions, and a
   * stored UUID string costs ~60 B of heap each.
   */
  get id(): string {
    return `${SESSION_ID_PREFIX}${this.serial.toString(36)}`;
  }
}

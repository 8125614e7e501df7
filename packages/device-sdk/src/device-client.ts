import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { invalidArgument, PushdError } from '@pushd/common';
import {
  type ClientFrame,
  type Connected,
  decodeServerFrame,
  encodeClientFrame,
  type FrameEncoding,
  MAX_ACK_IDS,
  MAX_CLICK_PUSH_ID_CHARS,
  Platform,
  type Pong,
  type PushMessage,
  type Register,
  type Registered,
  type ServerFrame,
  subprotocolOf,
  TagOperation,
} from '@pushd/proto';
import WebSocket, { type RawData } from 'ws';
import { reconnectDelayMs } from './backoff.js';
import { isValidDeviceId } from './device-id.js';
import { errorFromClose, errorFromFrame, errorFromRefusal } from './wire-errors.js';

/** Reported as Register.sdk_version unless the app says otherwise. Kept equal to package.json's version. */
export const SDK_VERSION = 'ts/0.1.0';

/** The path of the device endpoint, appended to a `url` that has none. */
const DEVICE_PATH = '/v1/ws';
/** protocol.md, Registered: a token is 40 lowercase hex characters, a credential 43 of base64url. */
const TOKEN_FORMAT = /^[0-9a-f]{40}$/;
const CREDENTIAL_FORMAT = /^[A-Za-z0-9_-]{43}$/;
/** The register request is always frame 1 of its connection (the gateway's spec); other requests follow. */
const REGISTER_FRAME_ID = 1;
const MAX_FRAME_ID = 0xffffffff;
/** A refusal body longer than this is cut: it is only read for its error code. */
const MAX_REFUSAL_BODY_BYTES = 16 * 1024;
/**
 * Upper bounds of the encoded size of one msg id in an Ack (a 10-byte varint; up to 20 digits, quotes and a
 * comma in JSON) and of the rest of the frame, to split acks under the gateway's max_frame_bytes.
 */
const ACK_BYTES_PER_ID = { proto: 11, json: 24 } as const;
const ACK_FRAME_OVERHEAD_BYTES = 64;
/** Messages whose push id reportClick() finds by msg id alone: the last ones emitted. */
const RECENT_MESSAGES = 64;
/** Clicks kept while disconnected, sent on the next connection; past this the oldest are dropped. */
const MAX_QUEUED_CLICKS = 100;

export type DevicePlatform = 'android' | 'ios' | Platform;

/** A first connection: the device registers with the app's access key and gets a token and a credential. */
export interface DeviceRegistration {
  /** The app's device-side access key (sent as x-pushd-access-key). */
  accessKey: string;
  /**
   * This device's private id, 16 to 128 characters of [A-Za-z0-9_-]: generateDeviceId() on first start,
   * then persisted, since the same device id is what returns the same token.
   */
  deviceId: string;
  platform: DevicePlatform;
  /** Default: '' (not reported). */
  appVersion?: string;
  /** Default: '' (not reported). */
  osVersion?: string;
  /** BCP 47 language tag, e.g. "zh-CN". Default: '' (not reported). */
  locale?: string;
  /** Default: SDK_VERSION. */
  sdkVersion?: string;
}

/** A returning device: the token and credential a registration returned. */
export interface DeviceSession {
  token: string;
  credential: string;
}

export interface ReconnectOptions {
  /** Delay step of the first attempt; each failed attempt doubles it. Default: 500. */
  initialDelayMs?: number;
  /** Largest delay step. Default: 30000. */
  maxDelayMs?: number;
  /**
   * A session open this long ends the backoff: the next drop waits the first step again. One closed
   * sooner (a gateway writing Connected, then closing at once) keeps doubling it, as a failed attempt
   * does, so that such a gateway is not reconnected to every half second. Default: 10000.
   */
  stableAfterMs?: number;
}

export interface DeviceClientOptions {
  /**
   * The gateway's device endpoint, e.g. `ws://localhost:8080/v1/ws` (http/https are taken as ws/wss).
   * A URL without a path gets /v1/ws.
   */
  url: string;
  /** The app's numeric access id (sent as x-pushd-access-id). */
  accessId: number;
  /** Frame encoding, chosen by WebSocket subprotocol. Default: 'proto' (binary frames). */
  encoding?: FrameEncoding;
  /** Register this device (exactly one of `registration` and `session`). */
  registration?: DeviceRegistration;
  /** Reconnect as an already registered device (exactly one of `registration` and `session`). */
  session?: DeviceSession;
  /**
   * The highest msg_id this device has already processed (persisted by the app across restarts). Sent as
   * x-pushd-last-msg-id so that the gateway does not redeliver older messages; messages with a lower or
   * equal id are dropped as duplicates. Default: 0 (none).
   */
  lastMsgId?: number;
  /**
   * Acknowledge each Deliver frame's messages once they have been emitted. When false, the app calls
   * ack(); duplicates are acknowledged by the client either way, since the app never sees them.
   * Default: true.
   */
  autoAck?: boolean;
  /**
   * Deadline of connect() (until Connected), ping(), unregister(), updateTags(), reportLocation() and
   * close(). Default: 10000.
   */
  requestTimeoutMs?: number;
  /**
   * Reconnect, with exponential backoff and jitter, after a connection that reached Connected ends with a
   * network failure or a catalogue error whose `reconnect` flag is set; a registration connection
   * reconnects as a session with the credential it got. connect() itself never retries: it reports its
   * one attempt. Default: false.
   */
  reconnect?: boolean | ReconnectOptions;
  /** Local address to connect from (load tests spread clients over source addresses). Default: any. */
  localAddress?: string;
  /**
   * Extra headers on the upgrade request (a proxy's, tracing). The protocol's x-pushd-* headers take
   * precedence. Default: none.
   */
  headers?: Record<string, string>;
}

export interface ConnectResult {
  connected: Connected;
  /** Present when this connection registered the device. */
  registered?: Registered;
}

export interface DeviceCloseEvent {
  /** WebSocket close code; 1006 when no WebSocket connection was established (network failure, refusal). */
  code: number;
  reason: string;
  /** Why the connection ended; absent after a normal close (1000). */
  error?: PushdError;
  /** True when the client will try again after a backoff delay. */
  reconnecting: boolean;
  /** When reconnecting: the backoff delay before the next attempt, in ms. */
  reconnectInMs?: number;
}

/**
 * Each failure is reported once, where the caller is waiting for it: connect() rejects for its attempt,
 * ping(), unregister(), updateTags() and reportLocation() reject for theirs, 'close' carries the error
 * that ended a connection. 'error' is left for what none of them covers (an error frame answering
 * nothing) and is only emitted when a listener is attached, so a load test with thousands of clients
 * never crashes on one.
 */
export interface DeviceClientEvents {
  /**
   * One message, in increasing msg_id order; duplicates are dropped before this. The message counts as
   * delivered once emitted: a listener that throws does not get it again (the error goes to 'error', and
   * the frame's other messages are still emitted and acknowledged). A message with
   * `message.collapseId` replaces any notification the app shows under the same collapse id.
   */
  message: [message: PushMessage];
  /**
   * Messages owed to this device that it will never get (pushed out of its offline window by newer ones,
   * or expired while it was away), as the first Deliver frame of a catch-up reports them, before that
   * frame's messages. The app should resync with its server. Reported once: not again on reconnect.
   */
  dropped: [count: number];
  /** A session was established (after connect() and after each reconnect). */
  connected: [connected: Connected];
  /** A connection ended, or a reconnect attempt failed. */
  close: [event: DeviceCloseEvent];
  error: [error: PushdError];
}

/**
 * idle: not connected yet. connecting: opening, registering, waiting for Connected. open: a session.
 * reconnecting: waiting for the next attempt. closing: close() or unregister() in progress. closed: ended.
 */
export type DeviceClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closing' | 'closed';

type PendingRequest = {
  deadline: number;
  reject: (error: PushdError) => void;
} & (
  | { expect: 'pong'; resolve: (pong: Pong) => void }
  | { expect: 'unregistered'; resolve: () => void }
  | { expect: 'tagsUpdated'; resolve: (count: number) => void }
  | { expect: 'locationReported'; resolve: () => void }
);

/** What updateTags() does: the TPNS SDKs' appendTags, delTags and clearAndAppendTags. */
export type TagUpdate = 'add' | 'remove' | 'replace';

const TAG_OPERATIONS: Readonly<Record<TagUpdate, TagOperation>> = {
  add: TagOperation.TAG_OPERATION_ADD,
  remove: TagOperation.TAG_OPERATION_REMOVE,
  replace: TagOperation.TAG_OPERATION_REPLACE,
};

interface ConnectWaiter {
  resolve: (result: ConnectResult) => void;
  reject: (error: PushdError) => void;
}

/**
 * The reference device client of the pushd device protocol (proto/pushd/v1/device.proto): one WebSocket
 * connection to a gateway, registration or session authentication in the upgrade request, in-order
 * delivery with duplicate dropping, acks, heartbeats and optional reconnection.
 *
 * Load tests run tens of thousands of clients in one process, so a client keeps little state: the highest
 * msg id instead of a set of seen ids (delivery is in increasing msg id order), one timer that serves every
 * deadline (connect, requests, heartbeat, backoff), and no allocation per message beyond the ack array.
 */
export class DeviceClient extends EventEmitter<DeviceClientEvents> {
  private readonly url: string;
  private readonly accessId: number;
  private readonly encoding: FrameEncoding;
  private readonly registration: { accessKey: string; register: Register } | undefined;
  private session: DeviceSession | undefined;
  private highestMsgId: number;
  private readonly autoAck: boolean;
  private readonly requestTimeoutMs: number;
  private readonly reconnectEnabled: boolean;
  private readonly reconnectInitialMs: number;
  private readonly reconnectMaxMs: number;
  private readonly localAddress: string | undefined;
  private readonly extraHeaders: Record<string, string> | undefined;

  private stateValue: DeviceClientState = 'idle';
  private socket: WebSocket | undefined;
  /** Whether the current connection registers the device (it authenticated with the access key). */
  private registering = false;
  /** The Registered of the current connection, until its Connected completes connect(). */
  private registeredNow: Registered | undefined;
  private connectWaiter: ConnectWaiter | undefined;
  /** Why the current connection is ending, when known before its close (first cause wins). */
  private failure: PushdError | undefined;
  /** Set by close() and Unregistered: the coming close must not reconnect. */
  private stopping = false;
  private attempt = 0;
  private readonly stableAfterMs: number;
  /** When the current connection got Connected (performance.now()); undefined while not open. */
  private connectedAt: number | undefined;
  private nextFrameId = REGISTER_FRAME_ID + 1;
  private readonly pending = new Map<number, PendingRequest>();
  private closeWaiters: Array<() => void> = [];
  private idsPerAck = Number.POSITIVE_INFINITY;
  /**
   * The msg ids and push ids of the last RECENT_MESSAGES messages emitted (a ring, `recentNext` the next
   * slot), for reportClick(msgId). Allocated on the first message: a load test's idle clients pay nothing.
   */
  private recentMsgIds: number[] | undefined;
  private recentPushIds: string[] | undefined;
  private recentNext = 0;
  /** Clicks reported while disconnected. */
  private queuedClicks: { msgId: number; pushId: string | undefined }[] = [];

  // The one timer. `deadline` is the state's own (connect, close, next reconnect attempt); the heartbeat
  // fields are read when it fires, so hearing from the gateway costs a clock read, not a timer reset.
  private timer: NodeJS.Timeout | undefined;
  private timerAt = 0;
  private deadline = Number.POSITIVE_INFINITY;
  private heartbeatMs = 0;
  private lastHeardAt = 0;
  /** When the heartbeat Ping went out; 0 when none is outstanding. */
  private probeAt = 0;

  constructor(options: DeviceClientOptions) {
    super();
    this.url = endpointUrl(options.url);
    if (!Number.isSafeInteger(options.accessId) || options.accessId <= 0) {
      throw invalidArgument('accessId', 'must be a positive integer');
    }
    this.accessId = options.accessId;
    this.encoding = options.encoding ?? 'proto';
    if (this.encoding !== 'proto' && this.encoding !== 'json') {
      throw invalidArgument('encoding', "must be 'proto' or 'json'");
    }
    if ((options.registration === undefined) === (options.session === undefined)) {
      throw invalidArgument('registration', 'give exactly one of registration and session');
    }
    if (options.registration !== undefined) {
      const { accessKey, deviceId, platform } = options.registration;
      if (!accessKey) throw invalidArgument('registration.accessKey', 'must not be empty');
      if (!isValidDeviceId(deviceId)) {
        throw invalidArgument('registration.deviceId', 'must be 16 to 128 characters of [A-Za-z0-9_-]');
      }
      this.registration = {
        accessKey,
        register: {
          deviceId,
          platform: platformOf(platform),
          appVersion: options.registration.appVersion ?? '',
          osVersion: options.registration.osVersion ?? '',
          locale: options.registration.locale ?? '',
          sdkVersion: options.registration.sdkVersion ?? SDK_VERSION,
        },
      };
    }
    if (options.session !== undefined) {
      if (!options.session.token || !options.session.credential) {
        throw invalidArgument('session', 'token and credential must not be empty');
      }
      this.session = { token: options.session.token, credential: options.session.credential };
    }
    this.highestMsgId = options.lastMsgId ?? 0;
    if (!Number.isSafeInteger(this.highestMsgId) || this.highestMsgId < 0) {
      throw invalidArgument('lastMsgId', 'must be a non-negative integer');
    }
    this.autoAck = options.autoAck ?? true;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    if (!(this.requestTimeoutMs > 0)) throw invalidArgument('requestTimeoutMs', 'must be positive');
    const reconnect = options.reconnect ?? false;
    this.reconnectEnabled = reconnect !== false;
    this.reconnectInitialMs = (typeof reconnect === 'object' ? reconnect.initialDelayMs : undefined) ?? 500;
    this.reconnectMaxMs = (typeof reconnect === 'object' ? reconnect.maxDelayMs : undefined) ?? 30_000;
    this.stableAfterMs = (typeof reconnect === 'object' ? reconnect.stableAfterMs : undefined) ?? 10_000;
    if (!(this.reconnectInitialMs > 0) || !(this.reconnectMaxMs >= this.reconnectInitialMs)) {
      throw invalidArgument('reconnect', 'need 0 < initialDelayMs <= maxDelayMs');
    }
    this.localAddress = options.localAddress;
    this.extraHeaders = options.headers;
  }

  get state(): DeviceClientState {
    return this.stateValue;
  }

  /** The device's token: from `session`, or once registered; undefined after unregister(). */
  get token(): string | undefined {
    return this.session?.token;
  }

  /** The credential of reconnects, to persist after a registration; undefined after unregister(). */
  get credential(): string | undefined {
    return this.session?.credential;
  }

  /** The highest msg_id emitted so far (or given as `lastMsgId`), to persist across restarts. */
  get lastMsgId(): number {
    return this.highestMsgId;
  }

  /**
   * Opens a connection and resolves when the gateway's Connected arrives (after Registered on a
   * registration connection). Rejects with the gateway's catalogue code on a refused upgrade, an error
   * frame or a close before Connected, and with DEADLINE_EXCEEDED after requestTimeoutMs. One attempt:
   * retrying is the caller's (reconnect only covers connections that reached Connected). A registration
   * whose Registered came but whose Connected did not still counts: the next connect() is a session.
   */
  connect(): Promise<ConnectResult> {
    if (this.stateValue !== 'idle' && this.stateValue !== 'closed') {
      return Promise.reject(
        new PushdError('PROTOCOL_VIOLATION', `connect() called while the client is ${this.stateValue}`),
      );
    }
    if (this.session === undefined && this.registration === undefined) {
      return Promise.reject(
        new PushdError('DEVICE_UNREGISTERED', 'the device unregistered; register it again with a new client'),
      );
    }
    this.stopping = false;
    this.attempt = 0;
    return new Promise<ConnectResult>((resolve, reject) => {
      this.connectWaiter = { resolve, reject };
      const error = this.openSocket();
      if (error !== undefined) {
        this.connectWaiter = undefined;
        this.finish();
        reject(error);
      }
    });
  }

  /**
   * Acknowledges messages (needed only with autoAck false). Returns false when there is no open connection:
   * the next one reports the highest processed msg_id (x-pushd-last-msg-id), and dispatch then counts the
   * messages of the window at or below it as arrived and removes them, as their acks would have.
   */
  ack(msgIds: readonly number[]): boolean {
    const socket = this.socket;
    if (socket === undefined || socket.readyState !== WebSocket.OPEN || msgIds.length === 0) return false;
    const perFrame = this.idsPerAck;
    for (let start = 0; start < msgIds.length; start += perFrame) {
      const chunk = msgIds.length <= perFrame ? msgIds : msgIds.slice(start, start + perFrame);
      this.send(socket, { id: 0, body: { $case: 'ack', value: { msgIds: chunk as number[] } } });
    }
    return true;
  }

  /**
   * Reports that the user opened the notification of a message (or the app handled it as opened): the
   * push's funnel counts this device as clicked, once however often it is reported. `pushId` defaults to
   * the push of that message when it is among the last 64 emitted; without it the gateway can attribute
   * the click only while the message is unacknowledged. Returns true when sent now; false when not
   * connected: the click is then sent on the next connection (up to 100 kept, oldest dropped first).
   */
  reportClick(msgId: number, pushId?: string): boolean {
    if (!Number.isSafeInteger(msgId) || msgId <= 0)
      throw invalidArgument('msgId', 'must be a positive integer');
    if (pushId !== undefined && pushId.length > MAX_CLICK_PUSH_ID_CHARS) {
      throw invalidArgument('pushId', `must have at most ${MAX_CLICK_PUSH_ID_CHARS} characters`);
    }
    const click = { msgId, pushId: pushId ?? this.recentPushId(msgId) };
    const socket = this.socket;
    if (this.stateValue !== 'open' || socket === undefined || socket.readyState !== WebSocket.OPEN) {
      this.queuedClicks.push(click);
      if (this.queuedClicks.length > MAX_QUEUED_CLICKS) this.queuedClicks.shift();
      return false;
    }
    this.sendClick(socket, click);
    return true;
  }

  /** Round trip to the gateway; rejects with UNAVAILABLE when not connected. */
  ping(): Promise<Pong> {
    return new Promise<Pong>((resolve, reject) => {
      const deadline = performance.now() + this.requestTimeoutMs;
      this.startRequest({ $case: 'ping', value: {} }, { expect: 'pong', resolve, reject, deadline });
    });
  }

  /**
   * Ends this device's registration: its token stops receiving. Resolves once the gateway confirmed and the
   * connection closed; the client then has no token or credential.
   */
  async unregister(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const deadline = performance.now() + this.requestTimeoutMs;
      this.startRequest(
        { $case: 'unregister', value: {} },
        { expect: 'unregistered', resolve, reject, deadline },
      );
    });
    await this.close();
  }

  /**
   * Changes this device's own user tags: 'add' them, 'remove' them, or 'replace' all its user tags by
   * them (none clears them). Resolves with the number of user tags the device has afterwards; rejects
   * with the gateway's error (TAG_LIMIT_EXCEEDED past 100 tags per device or 10,000 per app, refused
   * whole; INVALID_ARGUMENT for a tag that is not 1 to 50 characters without whitespace, or one under the
   * reserved `pushd:` prefix; RATE_LIMITED past the gateway's rate of tag and location requests, by
   * default 10 per 10 s), the connection staying open; with UNAVAILABLE when not connected.
   */
  updateTags(operation: TagUpdate, tags: readonly string[]): Promise<number> {
    const op = Object.hasOwn(TAG_OPERATIONS, operation) ? TAG_OPERATIONS[operation] : undefined;
    if (op === undefined) {
      return Promise.reject(invalidArgument('operation', "must be 'add', 'remove' or 'replace'"));
    }
    return new Promise<number>((resolve, reject) => {
      const deadline = performance.now() + this.requestTimeoutMs;
      this.startRequest(
        { $case: 'updateTags', value: { operation: op, tags: [...tags] } },
        { expect: 'tagsUpdated', resolve, reject, deadline },
      );
    });
  }

  /**
   * Reports where the device is, making it match the built-in tags `pushd:province:<province>` and
   * `pushd:city:<city>` in place of those of its previous report. An empty value means unknown (that tag
   * is removed); both empty clear the location. Each value is at most 50 characters without whitespace or
   * control characters (INVALID_ARGUMENT otherwise). Rejects like updateTags().
   */
  reportLocation(province: string, city: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const deadline = performance.now() + this.requestTimeoutMs;
      this.startRequest(
        { $case: 'reportLocation', value: { province, city } },
        { expect: 'locationReported', resolve, reject, deadline },
      );
    });
  }

  /**
   * Closes the connection with 1000 and stops reconnecting; resolves once closed (the socket is terminated
   * when the gateway does not complete the close within requestTimeoutMs). A pending connect() rejects.
   */
  close(): Promise<void> {
    this.stopping = true;
    const socket = this.socket;
    if (this.stateValue === 'idle' || this.stateValue === 'closed') return Promise.resolve();
    if (this.stateValue === 'reconnecting' || socket === undefined) {
      this.finish();
      return Promise.resolve();
    }
    if (this.stateValue !== 'closing') {
      this.stateValue = 'closing';
      if (this.connectWaiter !== undefined) {
        this.failure ??= new PushdError('UNAVAILABLE', 'the client closed the connection before Connected');
      }
      this.deadline = performance.now() + this.requestTimeoutMs;
      this.arm(this.deadline);
      socket.close(1000);
    }
    return new Promise<void>((resolve) => this.closeWaiters.push(resolve));
  }

  /** Opens the next connection; returns the error when the socket cannot even be created. */
  private openSocket(): PushdError | undefined {
    const headers: Record<string, string> = {
      ...this.extraHeaders,
      'x-pushd-access-id': String(this.accessId),
    };
    const session = this.session;
    if (session !== undefined) {
      headers['x-pushd-token'] = session.token;
      headers['x-pushd-credential'] = session.credential;
    } else if (this.registration !== undefined) {
      headers['x-pushd-access-key'] = this.registration.accessKey;
    }
    if (this.highestMsgId > 0) headers['x-pushd-last-msg-id'] = String(this.highestMsgId);
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.url, subprotocolOf(this.encoding), {
        headers,
        // Compression would cost each connection its own zlib contexts (hundreds of KB) for frames of a
        // few hundred bytes; the gateway does not negotiate it either.
        perMessageDeflate: false,
        ...(this.localAddress === undefined ? {} : { localAddress: this.localAddress }),
      });
    } catch (error) {
      const problem = error instanceof Error ? error.message : String(error);
      return new PushdError('INVALID_ARGUMENT', `cannot open a connection to ${this.url}: ${problem}`, {
        cause: error,
      });
    }
    this.socket = socket;
    this.stateValue = 'connecting';
    this.registering = session === undefined;
    this.registeredNow = undefined;
    this.failure = undefined;
    this.nextFrameId = REGISTER_FRAME_ID + 1;
    this.heartbeatMs = 0;
    this.probeAt = 0;
    this.deadline = performance.now() + this.requestTimeoutMs;
    this.arm(this.deadline);

    // Listeners are per connection, never per message; each ignores a socket that is no longer current.
    socket.on('open', () => {
      if (socket !== this.socket) return;
      this.heard();
      if (this.registering && this.registration !== undefined) {
        this.send(socket, {
          id: REGISTER_FRAME_ID,
          body: { $case: 'register', value: this.registration.register },
        });
      }
    });
    socket.on('message', (data: RawData, isBinary: boolean) => {
      if (socket === this.socket) this.onFrame(socket, data, isBinary);
    });
    socket.on('unexpected-response', (_request, response: IncomingMessage) => {
      if (socket === this.socket) this.onRefused(socket, response);
    });
    socket.on('error', (error: Error) => {
      // Always followed by 'close'. Without this listener ws would throw.
      if (socket === this.socket) {
        this.failure ??= new PushdError('UNAVAILABLE', `cannot reach the gateway: ${error.message}`, {
          cause: error,
        });
      }
    });
    socket.on('close', (code: number, reason: Buffer) => {
      if (socket === this.socket) this.onClose(code, reason.toString('utf8'));
    });
    // The gateway's WebSocket pings (answered by ws) show the connection is alive as much as frames do.
    socket.on('ping', this.heard);
    return undefined;
  }

  private onFrame(socket: WebSocket, data: RawData, isBinary: boolean): void {
    this.heard();
    let frame: ServerFrame;
    try {
      frame = decodeServerFrame(toBytes(data), isBinary, this.encoding);
    } catch (error) {
      this.abort(
        socket,
        error instanceof PushdError ? error : new PushdError('FRAME_MALFORMED', undefined, { cause: error }),
      );
      return;
    }
    const body = frame.body;
    switch (body?.$case) {
      case 'deliver':
        // Before the frame's messages: the lost ones came before them.
        if ((body.value.dropped ?? 0) > 0) this.emit('dropped', body.value.dropped as number);
        this.onDeliver(body.value.messages);
        return;
      case 'connected':
        this.onConnected(socket, body.value);
        return;
      case 'registered':
        if (this.registering && this.stateValue === 'connecting' && frame.id === REGISTER_FRAME_ID) {
          // A reply without a usable token and credential is a malformed reply (the brief: detected and
          // reported), not a registration: stored, it would make every later connection refused.
          if (!TOKEN_FORMAT.test(body.value.token) || !CREDENTIAL_FORMAT.test(body.value.credential)) {
            this.abort(
              socket,
              new PushdError(
                'FRAME_MALFORMED',
                'Registered carried no valid token (40 hex characters) and credential (43 base64url characters)',
              ),
            );
            return;
          }
          this.session = { token: body.value.token, credential: body.value.credential };
          // A new registration has an empty window (protocol.md, checklist 7).
          if (body.value.created) this.highestMsgId = 0;
          this.registeredNow = body.value;
          this.registering = false;
        }
        return;
      case 'pong': {
        // A reply to a heartbeat Ping has no pending request; hearing it was the point.
        const request = this.takeRequest(frame.id);
        if (request?.expect === 'pong') request.resolve(body.value);
        else
          request?.reject(new PushdError('PROTOCOL_VIOLATION', `frame ${frame.id} was answered with Pong`));
        return;
      }
      case 'unregistered': {
        // The device is unregistered whether or not the request is still waiting: stop, and forget the
        // credential, which no longer works.
        this.session = undefined;
        this.stopping = true;
        if (this.stateValue === 'open') {
          this.stateValue = 'closing';
          this.deadline = performance.now() + this.requestTimeoutMs;
          this.arm(this.deadline);
        }
        const request = this.takeRequest(frame.id);
        if (request?.expect === 'unregistered') request.resolve();
        else
          request?.reject(
            new PushdError('PROTOCOL_VIOLATION', `frame ${frame.id} was answered with Unregistered`),
          );
        return;
      }
      case 'tagsUpdated': {
        const request = this.takeRequest(frame.id);
        if (request?.expect === 'tagsUpdated') request.resolve(body.value.count);
        else
          request?.reject(
            new PushdError('PROTOCOL_VIOLATION', `frame ${frame.id} was answered with TagsUpdated`),
          );
        return;
      }
      case 'locationReported': {
        const request = this.takeRequest(frame.id);
        if (request?.expect === 'locationReported') request.resolve();
        else
          request?.reject(
            new PushdError('PROTOCOL_VIOLATION', `frame ${frame.id} was answered with LocationReported`),
          );
        return;
      }
      case 'error': {
        const error = errorFromFrame(body.value.code, body.value.message);
        const request = this.takeRequest(frame.id);
        if (request !== undefined) request.reject(error);
        // Id 0, or the register request: the gateway closes next, and the close reports this error.
        else if (frame.id === 0 || this.stateValue === 'connecting') this.failure ??= error;
        else this.emitError(error);
        return;
      }
      default:
        return;
    }
  }

  private onConnected(socket: WebSocket, connected: Connected): void {
    if (this.stateValue !== 'connecting') return;
    if (this.registering) {
      this.abort(socket, new PushdError('PROTOCOL_VIOLATION', 'Connected arrived before Registered'));
      return;
    }
    this.stateValue = 'open';
    // The backoff starts again only once this session proves stable (see onClose): a gateway that writes
    // Connected and then closes at once (a failing catch-up) must not be reconnected to every 0.5 s.
    this.connectedAt = performance.now();
    this.deadline = Number.POSITIVE_INFINITY;
    this.heartbeatMs = connected.heartbeatIntervalMs;
    this.idsPerAck =
      connected.maxFrameBytes > 0
        ? Math.max(
            1,
            Math.floor(
              (connected.maxFrameBytes - ACK_FRAME_OVERHEAD_BYTES) / ACK_BYTES_PER_ID[this.encoding],
            ),
          )
        : MAX_ACK_IDS;
    this.idsPerAck = Math.min(this.idsPerAck, MAX_ACK_IDS);
    if (this.heartbeatMs > 0) this.arm(this.lastHeardAt + this.heartbeatMs);
    const registered = this.registeredNow;
    this.registeredNow = undefined;
    const waiter = this.connectWaiter;
    this.connectWaiter = undefined;
    waiter?.resolve(registered === undefined ? { connected } : { connected, registered });
    for (const click of this.queuedClicks.splice(0)) this.sendClick(socket, click);
    this.emit('connected', connected);
  }

  private onDeliver(messages: readonly PushMessage[]): void {
    // Messages come in increasing msg_id order, so anything at or below the highest id seen is a
    // duplicate: a redelivery of a message whose ack was lost.
    const acks: number[] = [];
    for (let i = 0; i < messages.length; i++) {
      const message = messages[i]!;
      if (message.msgId > this.highestMsgId) {
        this.highestMsgId = message.msgId;
        this.rememberMessage(message);
        try {
          this.emit('message', message);
        } catch (error) {
          // The app's failure, not the connection's: the frame's other messages still reach the app and
          // every message is still acknowledged (it was handed over, and is not handed over again).
          this.emitError(
            new PushdError('INTERNAL', `a 'message' listener threw on msg ${message.msgId}`, {
              cause: error,
            }),
          );
        }
        if (this.autoAck) acks.push(message.msgId);
      } else {
        acks.push(message.msgId);
      }
    }
    // One Ack per Deliver frame, after the messages were handed to the app (an ack reports arrival).
    if (acks.length > 0) this.ack(acks);
  }

  private onRefused(socket: WebSocket, response: IncomingMessage): void {
    const status = response.statusCode ?? 0;
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      this.failure ??= errorFromRefusal(status, Buffer.concat(chunks).toString('utf8'));
      // With an 'unexpected-response' listener ws leaves the request to us; terminate() aborts it and
      // emits 'close' (1006), which reports the failure.
      socket.terminate();
    };
    response.on('data', (chunk: Buffer) => {
      if (size < MAX_REFUSAL_BODY_BYTES) {
        chunks.push(chunk);
        size += chunk.length;
      }
    });
    response.once('end', finish);
    response.once('error', finish);
  }

  private onClose(code: number, reason: string): void {
    this.socket = undefined;
    const error = this.failure ?? errorFromClose(code, reason);
    this.failure = undefined;
    this.registeredNow = undefined;
    this.heartbeatMs = 0;
    this.probeAt = 0;
    if (this.pending.size > 0) {
      const lost = error ?? new PushdError('UNAVAILABLE', `the connection closed (${code}) before the reply`);
      for (const request of this.pending.values()) request.reject(lost);
      this.pending.clear();
    }

    const waiter = this.connectWaiter;
    if (waiter !== undefined) {
      this.connectWaiter = undefined;
      this.finish();
      waiter.reject(
        error ??
          new PushdError(
            'UNAVAILABLE',
            `the gateway closed the connection (${code} ${reason}) before Connected`,
          ),
      );
      return;
    }

    const reconnecting =
      this.reconnectEnabled &&
      !this.stopping &&
      error?.spec.reconnect === true &&
      (this.session !== undefined || this.registration !== undefined);
    if (this.connectedAt !== undefined && performance.now() - this.connectedAt >= this.stableAfterMs) {
      this.attempt = 0;
    }
    this.connectedAt = undefined;
    let reconnectInMs: number | undefined;
    if (reconnecting) {
      this.stateValue = 'reconnecting';
      reconnectInMs = reconnectDelayMs(this.attempt++, this.reconnectInitialMs, this.reconnectMaxMs);
      this.deadline = performance.now() + reconnectInMs;
      this.arm(this.deadline);
    } else {
      this.finish();
    }
    this.emit('close', {
      code,
      reason,
      ...(error === undefined ? {} : { error }),
      reconnecting,
      ...(reconnectInMs === undefined ? {} : { reconnectInMs }),
    });
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const [id, request] of this.pending) {
      if (request.deadline <= now) {
        this.pending.delete(id);
        request.reject(new PushdError('DEADLINE_EXCEEDED', `no reply within ${this.requestTimeoutMs} ms`));
      } else if (request.deadline < next) {
        next = request.deadline;
      }
    }
    const socket = this.socket;
    switch (this.stateValue) {
      case 'connecting':
      case 'closing':
        if (now < this.deadline) {
          next = Math.min(next, this.deadline);
        } else if (socket !== undefined) {
          this.deadline = Number.POSITIVE_INFINITY;
          if (this.stateValue === 'connecting') {
            this.failure ??= new PushdError(
              'DEADLINE_EXCEEDED',
              `the gateway did not complete the connection within ${this.requestTimeoutMs} ms`,
            );
          }
          socket.terminate();
        }
        break;
      case 'reconnecting':
        if (now < this.deadline) {
          next = Math.min(next, this.deadline);
        } else {
          const error = this.openSocket();
          if (error !== undefined) {
            this.finish();
            this.emit('close', { code: 1006, reason: '', error, reconnecting: false });
          }
          return;
        }
        break;
      case 'open':
        if (socket !== undefined && this.heartbeatMs > 0) next = Math.min(next, this.heartbeat(socket, now));
        break;
      default:
        break;
    }
    this.arm(next);
  };

  /**
   * Sends a Ping after a heartbeat interval of silence and gives up on the connection after one more:
   * a connection can die without a close (a NAT dropping its mapping), and only silence tells. Returns
   * when to look again.
   */
  private heartbeat(socket: WebSocket, now: number): number {
    const interval = this.heartbeatMs;
    if (this.probeAt > 0) {
      if (now - this.probeAt < interval) return this.probeAt + interval;
      this.heartbeatMs = 0;
      this.failure ??= new PushdError('UNAVAILABLE', `no answer from the gateway within ${2 * interval} ms`);
      socket.terminate();
      return Number.POSITIVE_INFINITY;
    }
    if (now - this.lastHeardAt < interval) return this.lastHeardAt + interval;
    this.probeAt = now;
    this.send(socket, { id: this.takeFrameId(), body: { $case: 'ping', value: {} } });
    return now + interval;
  }

  /** Records that the gateway was heard from; the heartbeat reads it when its timer fires. */
  private readonly heard = (): void => {
    this.lastHeardAt = performance.now();
    this.probeAt = 0;
  };

  /** Schedules the timer for `at` unless it already fires earlier (it then re-arms for what is left). */
  private arm(at: number): void {
    if (at === Number.POSITIVE_INFINITY) return;
    if (this.timer !== undefined) {
      if (this.timerAt <= at) return;
      clearTimeout(this.timer);
    }
    this.timerAt = at;
    this.timer = setTimeout(this.onTimer, Math.max(1, Math.ceil(at - performance.now())));
  }

  private startRequest(body: ClientFrame['body'], request: PendingRequest): void {
    const socket = this.socket;
    if (this.stateValue !== 'open' || socket === undefined || socket.readyState !== WebSocket.OPEN) {
      request.reject(new PushdError('UNAVAILABLE', `not connected (the client is ${this.stateValue})`));
      return;
    }
    const id = this.takeFrameId();
    this.pending.set(id, request);
    this.send(socket, { id, body });
    this.arm(request.deadline);
  }

  private takeRequest(id: number): PendingRequest | undefined {
    const request = id === 0 ? undefined : this.pending.get(id);
    if (request !== undefined) this.pending.delete(id);
    return request;
  }

  private takeFrameId(): number {
    const id = this.nextFrameId;
    this.nextFrameId = id >= MAX_FRAME_ID ? REGISTER_FRAME_ID + 1 : id + 1;
    return id;
  }

  private send(socket: WebSocket, frame: ClientFrame): void {
    socket.send(encodeClientFrame(frame, this.encoding));
  }

  private sendClick(socket: WebSocket, click: { msgId: number; pushId: string | undefined }): void {
    this.send(socket, { id: 0, body: { $case: 'click', value: click } });
  }

  private rememberMessage(message: PushMessage): void {
    this.recentMsgIds ??= new Array<number>(RECENT_MESSAGES).fill(0);
    this.recentPushIds ??= new Array<string>(RECENT_MESSAGES).fill('');
    this.recentMsgIds[this.recentNext] = message.msgId;
    this.recentPushIds[this.recentNext] = message.pushId;
    this.recentNext = (this.recentNext + 1) % RECENT_MESSAGES;
  }

  private recentPushId(msgId: number): string | undefined {
    const index = this.recentMsgIds?.indexOf(msgId) ?? -1;
    const pushId = index < 0 ? undefined : this.recentPushIds?.[index];
    return pushId === '' ? undefined : pushId;
  }

  /** Ends the connection because of something the gateway sent; the close reports `error`. */
  private abort(socket: WebSocket, error: PushdError): void {
    this.failure ??= error;
    socket.close(error.spec.wsCloseCode, error.code);
  }

  /** The client is done: no timer, nothing to wait for. */
  private finish(): void {
    this.stateValue = 'closed';
    this.deadline = Number.POSITIVE_INFINITY;
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const waiters = this.closeWaiters;
    this.closeWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private emitError(error: PushdError): void {
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }
}

function endpointUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw invalidArgument('url', `not a URL: ${JSON.stringify(value)}`);
  }
  if (url.protocol === 'http:') url.protocol = 'ws:';
  else if (url.protocol === 'https:') url.protocol = 'wss:';
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    throw invalidArgument('url', `must be a ws:// or wss:// URL, got ${url.protocol}`);
  }
  if (url.pathname === '/' || url.pathname === '') url.pathname = DEVICE_PATH;
  return url.toString();
}

function platformOf(platform: DevicePlatform): Platform {
  if (platform === 'android' || platform === Platform.PLATFORM_ANDROID) return Platform.PLATFORM_ANDROID;
  if (platform === 'ios' || platform === Platform.PLATFORM_IOS) return Platform.PLATFORM_IOS;
  throw invalidArgument('registration.platform', "must be 'android' or 'ios'");
}

function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data);
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data;
}

import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  compileMatcher,
  deviceTagTest,
  fromProto,
  type HasTag,
  type Matcher,
  normalize,
} from '@pushd/audience';
import { type Bus, type BusSubscription, subjects } from '@pushd/bus';
import {
  type Clock,
  invalidArgument,
  type Logger,
  mapConcurrently,
  PushdError,
  systemClock,
  toPushdError,
} from '@pushd/common';
import {
  type AuthenticateDeviceRequest,
  type AuthenticateDeviceResponse,
  BroadcastDelivery,
  type Click,
  type ClientFrame,
  type Device,
  DeviceTagsChanged,
  type DispatchServiceService,
  decodeClientFrame,
  Event,
  EventBatch,
  EventType,
  encodeServerFrame,
  encodingOfSubprotocol,
  type FetchPendingRequest,
  type FetchPendingResponse,
  type FrameEncoding,
  forPlatform,
  MAX_ACK_IDS,
  MAX_CLICK_PUSH_ID_CHARS,
  NodeDelivery,
  Platform,
  type PushMessage,
  type RegistryServiceService,
  type ReportLocation,
  type ServerFrame,
  TagOperation,
  type TagServiceService,
  type UpdateTags,
} from '@pushd/proto';
import { CallBatcher, fromBatchResult, type PromiseClient } from '@pushd/rpc';
import type { RouteStore, TagStore } from '@pushd/store';
import { type RawData, WebSocket, WebSocketServer } from 'ws';
import { EventBatcher } from './event-batcher.js';
import { type Handshake, parseHandshake } from './handshake.js';
import type { GatewayMetrics } from './metrics.js';
import {
  type BroadcastAudience,
  type LiveMessage,
  MAX_BUFFERED_LIVE,
  Session,
  shared,
  sharedTags,
} from './session.js';

/**
 * Most devices in one merged SENT or ARRIVED event: 2,000 tokens (and arrival times) are ~100 KB, well
 * under NATS's default 1 MB payload limit even with other events in the same batch.
 */
const TOKENS_PER_MERGED_EVENT = 2_000;

export interface GatewayOptions {
  /** Identifies this gateway in routes and in its NATS subject; unique in the cluster. */
  nodeId: string;
  /** Interface to bind. Default: '0.0.0.0'. */
  host?: string;
  /** WebSocket port; 0 picks a free one (see `port` after start). */
  port: number;
  /** Path of the device endpoint. Default: '/v1/ws'. */
  path?: string;
  /** Registry client authorized with the cluster token. */
  registry: PromiseClient<typeof RegistryServiceService>;
  /** Dispatch client authorized with the cluster token. */
  dispatch: PromiseClient<typeof DispatchServiceService>;
  routes: RouteStore;
  /**
   * Read only: the tags of the devices held here (user tags and the location tags the store keeps beside
   * them), for tag pushes evaluated on this gateway.
   */
  tags: TagStore;
  /** Tag service client authorized with the cluster token: the devices' UpdateTags and ReportLocation. */
  tag: PromiseClient<typeof TagServiceService>;
  bus: Bus;
  metrics: GatewayMetrics;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
  /**
   * WebSocket ping interval; a connection that answered none of the pings of one interval is terminated.
   * Mobile networks drop idle NAT mappings after a few minutes, so this stays well under that. Default:
   * 25000 ms.
   */
  heartbeatIntervalMs?: number;
  /** Largest frame accepted from a device (ws maxPayload; larger closes with 1009). Default: 16384 bytes. */
  maxFrameBytes?: number;
  /**
   * Send-queue cap per connection: a device whose unsent bytes exceed it is disconnected (it gets its
   * messages from its offline window when it reconnects) instead of growing the gateway's memory.
   * Default: 1048576 bytes.
   */
  maxBufferedBytes?: number;
  /** Time a registration connection has to send its Register frame. Default: 10000 ms. */
  registerTimeoutMs?: number;
  /** Lifetime of a device's route; refreshed at a third of it while connected. Default: 1800000 ms. */
  routeTtlMs?: number;
  /**
   * UpdateTags and ReportLocation frames one session may send per `tagFrameWindowMs`; more are answered
   * RATE_LIMITED (the connection stays open), so that one device cannot keep the tag service busy.
   * Default: 10.
   */
  maxTagFramesPerWindow?: number;
  /** The window of `maxTagFramesPerWindow` (a fixed window, starting at the first frame). Default: 10000 ms. */
  tagFrameWindowMs?: number;
  /**
   * Batching of the two calls every session handshake makes (registry AuthenticateDevices, dispatch
   * FetchPendingBatch; see CallBatcher): at most `maxInFlight` calls of each at once, each carrying at most
   * `maxBatch` handshakes. One call in flight makes the largest batches: in the reconnect benchmark (24,000
   * devices, 2 gateways, CPU-bound) it gave 1,547–1,719 handshakes/s against 1,173–1,343 with 4.
   * Defaults: 1 and 256.
   */
  callBatching?: { maxInFlight?: number; maxBatch?: number };
}

/** The frames a device sends to change its own tags. */
type TagFrameBody =
  | { $case: 'updateTags'; value: UpdateTags }
  | { $case: 'reportLocation'; value: ReportLocation };

/**
 * The ServerFrame of one delivery, encoded at most once per encoding whatever the number of devices that
 * get it (see Gateway.liveFrame).
 */
class EncodedFrame {
  private proto: Uint8Array | undefined;
  private json: string | undefined;

  constructor(private readonly frame: ServerFrame) {}

  get(encoding: FrameEncoding): Uint8Array | string {
    if (encoding === 'proto') {
      this.proto ??= encodeServerFrame(this.frame, 'proto') as Uint8Array;
      return this.proto;
    }
    this.json ??= encodeServerFrame(this.frame, 'json') as string;
    return this.json;
  }
}

/** ws send options, one object each rather than one per frame. */
const SEND_BINARY = { binary: true } as const;
const SEND_TEXT = { binary: false } as const;
const byMsgId = (a: { msgId: number }, b: { msgId: number }) => a.msgId - b.msgId;
const byLiveMsgId = (a: LiveMessage, b: LiveMessage) => a.message.msgId - b.message.msgId;
/** A targeted message stored in the device's window: a link of the session's window chain. */
const isWindowed = (live: LiveMessage) => live.broadcastMatch === undefined && live.onlineOnly !== true;
/** FetchPending failures worth retrying in place (see fetchPending), and the backoff between tries. */
const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
  'RESOURCE_EXHAUSTED',
]);
/**
 * Acks of unknown msg ids and clicks one session may send per heartbeat interval (see
 * withinUntrackedBudget): a device acks what it was delivered, and a user opens notifications one at a
 * time; the SDK keeps at most 100 clicks while offline.
 */
const UNTRACKED_EVENTS_PER_INTERVAL = 128;
const CATCH_UP_FIRST_BACKOFF_MS = 250;
const CATCH_UP_MAX_BACKOFF_MS = 5_000;
/**
 * Tokens per registry GetDevices call when registrations are checked after a NATS interruption (the
 * registry takes at most 1,000), and such calls in flight at once: every session held is checked, and
 * the registry must not get them all at the same moment.
 */
const REGISTRATION_CHECK_BATCH = 500;
const REGISTRATION_CHECKS_IN_FLIGHT = 4;
/**
 * A session's upgrade response and Connected frame are held back (the socket corked) until its first
 * catch-up is written, for at most this long: the device then gets the 101, Connected and its offline
 * messages in one socket write and one read instead of three each, which were 13 % of a gateway's CPU in
 * a reconnect storm (docs/benchmarks.md, reconnect). Connected says nothing the device could act on
 * before its pending messages arrive; but a slow dispatch (a catch-up retried with backoff) must not keep
 * it waiting for Connected, whose absence a device reads as a failed connection.
 */
const CONNECTED_HOLD_MS = 250;
/**
 * Heartbeat ticks per interval: each tick visits the next fiftieth of the sessions, so that pinging 18,000
 * sockets (one socket write each, ~80 µs on loopback) is spread over the interval instead of stalling
 * deliveries behind one burst (docs/benchmarks.md, targeted).
 */
const HEARTBEAT_TICKS = 50;
/**
 * A round of pings takes this share of the heartbeat interval. Devices ping after one interval of silence
 * (Connected.heartbeat_interval_ms): a gateway ping arriving exactly one interval after the last one
 * loses that race half the time, and 18,000 devices then send a Ping frame (and get a Pong) every round.
 */
const HEARTBEAT_ROUND_SHARE = 0.9;

/**
 * A gateway node: holds device WebSocket connections, delivers the messages dispatch publishes to its
 * subject, and reports acknowledgements as arrival events. It keeps no durable state: killed at any
 * moment, its devices reconnect elsewhere and catch up from their offline windows.
 */
export class Gateway {
  private readonly server: Server;
  private readonly wss: WebSocketServer;
  /**
   * Live sessions by app, then by token (one per device per gateway): a broadcast visits only its app's
   * devices, and no per-session key string is kept (the session holds its token already).
   */
  private readonly hub = new Map<number, Map<string, Session>>();
  private hubSize = 0;
  private lastSessionSerial = 0;
  /** SENT and ARRIVED events being merged during this turn of the event loop (see mergeDeviceEvent). */
  private readonly mergedEvents = new Map<number, Event[]>();
  private mergedFlushScheduled = false;
  /**
   * Messages that came as live broadcasts: no device holds them in its offline window, so their ARRIVED
   * events tell dispatch so (windowless) and spare it one window update per device.
   */
  private readonly liveBroadcasts = new WeakSet<PushMessage>();
  private stopWatchingInterruptions: () => void = () => {};
  /** How many times the bus was interrupted (see resyncAfterInterruption). */
  private interruptions = 0;
  private readonly registering = new Set<Session>();
  private readonly clock: Clock;
  private readonly path: string;
  private readonly heartbeatIntervalMs: number;
  private readonly maxFrameBytes: number;
  private readonly maxBufferedBytes: number;
  private readonly registerTimeoutMs: number;
  private readonly routeTtlMs: number;
  private readonly maxTagFrames: number;
  private readonly tagFrameWindowMs: number;
  private readonly events: EventBatcher;
  /**
   * The handshake's two gRPC calls, batched per gateway: in a reconnect storm the per-call cost of gRPC
   * and HTTP/2 (on both sides) was the largest share of a handshake's CPU, so the handshakes of a turn of
   * the event loop share one call (docs/architecture.md, "Reconnects without loss").
   */
  private readonly authentications: CallBatcher<AuthenticateDeviceRequest, AuthenticateDeviceResponse>;
  private readonly pendingFetches: CallBatcher<FetchPendingRequest, FetchPendingResponse>;
  /** Connects and disconnects, on their own subject (the tag service keeps online counts from them). */
  private readonly presence: EventBatcher;
  private readonly timers: NodeJS.Timeout[] = [];
  /** The sessions of the current heartbeat round, and the next of its HEARTBEAT_TICKS ticks. */
  private heartbeatRound: Session[] = [];
  private heartbeatStep = 0;
  /**
   * The Deliver frames of live messages, by message and platform (index: Platform; PLATFORM_UNSPECIFIED
   * also serves every platform when the message has no style to drop). A broadcast or a node delivery
   * hands the same PushMessage object to all its sessions, so it is encoded once per platform and encoding
   * however many devices get it; the entry goes with the message once no session holds it any more.
   */
  private readonly liveFrames = new WeakMap<PushMessage, (EncodedFrame | undefined)[]>();
  private subscriptions: BusSubscription[] = [];
  private shuttingDown = false;
  private boundPort = 0;

  constructor(private readonly options: GatewayOptions) {
    this.clock = options.clock ?? systemClock;
    this.path = options.path ?? '/v1/ws';
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 25_000;
    this.maxFrameBytes = options.maxFrameBytes ?? 16_384;
    this.maxBufferedBytes = options.maxBufferedBytes ?? 1_048_576;
    this.registerTimeoutMs = options.registerTimeoutMs ?? 10_000;
    this.routeTtlMs = options.routeTtlMs ?? 1_800_000;
    this.maxTagFrames = options.maxTagFramesPerWindow ?? 10;
    this.tagFrameWindowMs = options.tagFrameWindowMs ?? 10_000;
    this.events = new EventBatcher({
      bus: options.bus,
      source: 'gateway',
      logger: options.logger,
      failures: options.metrics.eventPublishFailures,
      dropped: options.metrics.eventsDropped,
      // A fan-out's acks pour in faster than one batch per JetStream round trip; their order does not
      // matter (stats counts sets of devices, dispatch removes acknowledged ids).
      maxInFlight: 8,
    });
    // Each handshake keeps the 5 s deadline its single call had (CallBatcher's default, the clients').
    const batching = { maxInFlight: 1, ...options.callBatching };
    this.authentications = new CallBatcher({
      ...batching,
      send: async (requests, { deadlineMs }) =>
        (await options.registry.authenticateDevices({ requests }, { deadlineMs })).results.map(
          fromBatchResult,
        ),
      itemsPerCall: options.metrics.batchItems.labels({ call: 'authenticate_devices' }),
    });
    this.pendingFetches = new CallBatcher({
      ...batching,
      send: async (requests, { deadlineMs }) =>
        (await options.dispatch.fetchPendingBatch({ requests }, { deadlineMs })).results.map(fromBatchResult),
      itemsPerCall: options.metrics.batchItems.labels({ call: 'fetch_pending_batch' }),
    });
    this.presence = new EventBatcher({
      bus: options.bus,
      source: 'presence',
      logger: options.logger,
      failures: options.metrics.eventPublishFailures,
      dropped: options.metrics.eventsDropped,
      // In order: a session's DISCONNECTED must not overtake its CONNECTED.
      maxInFlight: 1,
    });
    this.wss = new WebSocketServer({
      noServer: true,
      // Compression costs memory per connection and CPU per frame; push payloads are small.
      perMessageDeflate: false,
      maxPayload: this.maxFrameBytes,
      clientTracking: false,
      WebSocket: deviceSocketClass(this),
      // The same choice as negotiateEncoding: the first offered subprotocol we speak.
      handleProtocols: (offered) => {
        for (const name of offered) if (encodingOfSubprotocol(name) !== undefined) return name;
        return false;
      },
    });
    this.server = createServer((request, response) => {
      const known = new URL(request.url ?? '/', 'http://gateway').pathname === this.path;
      const error = known
        ? new PushdError('INVALID_ARGUMENT', `${this.path} only accepts WebSocket upgrades`)
        : new PushdError('ENDPOINT_NOT_FOUND', `no endpoint here; devices connect to ${this.path}`);
      response.writeHead(known ? 426 : error.spec.httpStatus, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ code: error.code, message: error.message }));
    });
    this.server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      void this.handleUpgrade(request, socket, head);
    });
  }

  get port(): number {
    return this.boundPort;
  }

  /** Open sessions (devices registered and connected). */
  get sessionCount(): number {
    return this.hubSize;
  }

  async start(): Promise<void> {
    const { bus, nodeId } = this.options;
    this.subscriptions = [
      bus.subscribe(subjects.nodeDelivery(nodeId), (data) => this.onNodeDelivery(data)),
      bus.subscribe(subjects.allBroadcasts, (data) => this.onBroadcast(data)),
      bus.subscribe(subjects.nodeTags(nodeId), (data) => this.onTagsChanged(data)),
      // Unregistrations come on the durable event subject; any gateway may hold the device.
      bus.subscribe(subjects.events('registry'), (data) => this.onRegistryEvents(data)),
    ];
    this.stopWatchingInterruptions = bus.onInterruption(() => this.resyncAfterInterruption());
    await bus.flush();
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port, this.options.host ?? '0.0.0.0', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.boundPort = (this.server.address() as AddressInfo).port;
    this.timers.push(
      setInterval(
        () => this.heartbeatTick(),
        Math.max(1, (this.heartbeatIntervalMs * HEARTBEAT_ROUND_SHARE) / HEARTBEAT_TICKS),
      ),
      setInterval(() => this.sweepRegistrations(), Math.min(1_000, this.registerTimeoutMs)),
      setInterval(() => void this.refreshRoutes(), Math.max(1_000, Math.floor(this.routeTtlMs / 3))),
    );
    for (const timer of this.timers) timer.unref();
    this.options.logger.info({ nodeId, port: this.boundPort, path: this.path }, 'gateway listening');
  }

  /**
   * Stops accepting, tells every device to reconnect elsewhere (4503), removes their routes so dispatch
   * stops publishing here, and publishes the last arrival events.
   */
  async stop(): Promise<void> {
    this.shuttingDown = true;
    for (const timer of this.timers) clearInterval(timer);
    for (const subscription of this.subscriptions) subscription.unsubscribe();
    this.stopWatchingInterruptions();
    const closing = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const shutdown = new PushdError('SHUTTING_DOWN', 'gateway shutting down; reconnect');
    const live = this.liveSessions();
    const routes = live.map((session) =>
      this.options.routes.clear(session.accessId, session.token, session.id).catch(() => undefined),
    );
    const sockets = [...live, ...this.registering].map((session) => session.socket);
    for (const session of [...live, ...this.registering]) this.closeWith(session, shutdown);
    await Promise.all(routes);
    // Devices get a moment to answer the close handshake; the rest are cut.
    const deadline = Date.now() + 2_000;
    while (sockets.some((socket) => socket.readyState !== socket.CLOSED) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    for (const socket of sockets) if (socket.readyState !== socket.CLOSED) socket.terminate();
    this.server.closeAllConnections();
    await closing;
    // After the sessions were detached: their DISCONNECTED events are in the batch.
    this.flushMerged();
    await Promise.all([this.events.stop(), this.presence.stop()]);
  }

  // ---- handshake -------------------------------------------------------------------------------------

  private async handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const startedAtMs = performance.now();
    // A module-level listener: a closure here would keep this whole handshake (credential included) alive
    // for the life of the connection.
    socket.on('error', destroySocket);
    const { metrics, registry } = this.options;
    let handshake: Handshake;
    try {
      const url = new URL(request.url ?? '/', 'http://gateway');
      if (url.pathname !== this.path) {
        throw new PushdError('ENDPOINT_NOT_FOUND', `no endpoint here; devices connect to ${this.path}`);
      }
      if (this.shuttingDown)
        throw new PushdError('SHUTTING_DOWN', 'gateway shutting down; connect to another');
      // A blank header offers nothing (binary protobuf, as without it); ws would refuse it as malformed.
      if (request.headers['sec-websocket-protocol']?.trim() === '') {
        delete request.headers['sec-websocket-protocol'];
      }
      handshake = parseHandshake(request, url);
      if (handshake.auth.kind === 'session') {
        const { device } = await this.authentications.call({
          accessId: handshake.accessId,
          token: handshake.auth.token,
          credential: handshake.auth.credential,
        });
        if (device === undefined) throw new PushdError('INTERNAL', 'registry returned no device');
        if (socket.destroyed) return;
        // stop() began while the registry answered: it closed the sessions it found and cleared their
        // routes, so this one must not start (its route would outlive the gateway).
        if (this.shuttingDown)
          throw new PushdError('SHUTTING_DOWN', 'gateway shutting down; connect to another');
        // Held until the session's first frames are written after it (establish): one write instead of three.
        socket.cork();
        this.wss.handleUpgrade(request, socket, head, (ws) => {
          const session = this.newSession(ws, handshake, undefined);
          adoptDevice(session, device);
          metrics.connects.inc({ kind: 'session' });
          void this.establish(session, { corked: socket, startedAtMs });
        });
      } else {
        await registry.verifyApp({
          accessId: handshake.accessId,
          key: { $case: 'accessKey', value: handshake.auth.accessKey },
        });
        if (socket.destroyed) return;
        if (this.shuttingDown)
          throw new PushdError('SHUTTING_DOWN', 'gateway shutting down; connect to another');
        const accessKey = handshake.auth.accessKey;
        this.wss.handleUpgrade(request, socket, head, (ws) => {
          this.registering.add(this.newSession(ws, handshake, accessKey));
        });
      }
    } catch (error) {
      const refusal = toPushdError(error);
      metrics.upgradeFailures.inc({ code: refusal.code });
      if (refusal.code === 'INTERNAL') this.options.logger.error({ err: error }, 'upgrade failed');
      rejectUpgrade(socket, refusal);
    }
  }

  private newSession(ws: WebSocket, handshake: Handshake, accessKey: string | undefined): Session {
    const session = new Session(
      ws,
      ++this.lastSessionSerial,
      handshake.accessId,
      handshake.encoding,
      this.clock.now(),
      handshake.lastMsgId,
      accessKey,
    );
    // Its events come through DeviceSocket.emit: no listener per connection.
    (ws as DeviceSocket).session = session;
    return session;
  }

  /**
   * Makes a session live. The order matters for not losing a message: the route is written before the
   * offline window is read, and dispatch writes the window before it reads the route. So a push either sees
   * the route (and is published here, buffered while syncing) or was in the window when it was read.
   * `upgrade`, for a session upgrade: its socket, corked to hold the 101 back (see CONNECTED_HOLD_MS), and
   * when its request came (gateway_session_setup_seconds). A registration connection has its upgrade
   * answered already.
   */
  private async establish(
    session: Session,
    upgrade?: { corked: Duplex; startedAtMs: number },
  ): Promise<void> {
    const { routes, metrics, nodeId } = this.options;
    const corked = upgrade?.corked;
    let release: NodeJS.Timeout | undefined;
    const previous = this.sessionOf(session.accessId, session.token);
    if (previous !== undefined && previous !== session) {
      // Closing detaches it from the hub, so that this session takes its place.
      this.closeWith(previous, new PushdError('CONNECTION_REPLACED', 'the device opened a newer connection'));
    }
    let ofApp = this.hub.get(session.accessId);
    if (ofApp === undefined) {
      ofApp = new Map();
      this.hub.set(session.accessId, ofApp);
    }
    if (!ofApp.has(session.token)) this.hubSize++;
    ofApp.set(session.token, session);
    metrics.connections.inc({ platform: platformLabel(session.platform) });
    this.announcePresence(session, EventType.EVENT_TYPE_CONNECTED);
    try {
      // Tags before the catch-up: a tag push offered meanwhile is buffered until then.
      const [userTags] = await Promise.all([
        this.options.tags.list(session.accessId, session.token, session.index),
        routes.set(
          session.accessId,
          session.token,
          { nodeId, sessionId: session.id, openedAtMs: session.openedAtMs },
          this.routeTtlMs,
        ),
      ]);
      session.userTags = sharedTags(userTags);
      session.tagTest = undefined;
      if (session.state === 'closed') return;
      this.send(session, {
        id: 0,
        body: {
          $case: 'connected',
          value: {
            token: session.token,
            sessionId: session.id,
            heartbeatIntervalMs: this.heartbeatIntervalMs,
            maxFrameBytes: this.maxFrameBytes,
          },
        },
      });
      if (corked !== undefined) release = setTimeout(uncork, CONNECTED_HOLD_MS, corked);
      await this.catchUp(session);
      if (upgrade !== undefined && session.state === 'live') {
        metrics.sessionSetup.observe((performance.now() - upgrade.startedAtMs) / 1000);
      }
    } catch (error) {
      this.options.logger.warn({ err: error, accessId: session.accessId }, 'session setup failed');
      this.closeWith(
        session,
        new PushdError('UNAVAILABLE', 'the gateway could not set up the session; reconnect'),
      );
    } finally {
      clearTimeout(release);
      corked?.uncork();
    }
  }

  /**
   * Fetches the offline window past what was delivered and writes it with the live messages buffered
   * meanwhile; callers set state to 'syncing' first, and the session is live when it returns (unless it
   * closed). One round per fetch. Dispatch reads the broadcast log, then the window (two hash slots, not
   * one atomic read), so its answer can hold a message newer than one the other read missed; that one was
   * published to this gateway and waits in the buffer. So fetched and buffered messages are merged by
   * msg_id and written in one Deliver. A buffered message chaining onto one that is in neither (still in
   * flight, or lost on the bus) holds back everything from that missing id on, and the next round
   * fetches it: writing past it would lose it, since the device drops what is not above what it processed.
   */
  private async catchUp(session: Session): Promise<void> {
    let heldAt = -1;
    while (session.state === 'syncing') {
      const interruptionsBefore = this.interruptions;
      const pending = await this.fetchPending(session);
      if (pending === undefined || (session.state as string) === 'closed') return;
      const buffered = session.buffered ?? [];
      session.buffered = undefined;
      buffered.sort(byLiveMsgId);
      const holdAt = this.holdPoint(session, pending, buffered, heldAt);
      // What the window and the log held when read is accounted for, delivered or not.
      session.chainMsgId = Math.max(session.chainMsgId, pending.lastMsgId);
      session.broadcastChainId = Math.max(session.broadcastChainId, pending.lastBroadcastId);
      // Dispatch reset its count when it answered: carried until a Deliver carries it.
      session.unreportedDropped += pending.dropped;
      const messages: PushMessage[] = [];
      const live = new Set<PushMessage>();
      for (const message of pending.messages) {
        if (message.msgId > session.lastDeliveredMsgId && message.msgId < holdAt) messages.push(message);
      }
      const held: LiveMessage[] = [];
      for (const buffer of buffered) {
        if (held.length > 0 || buffer.message.msgId >= holdAt) {
          held.push(buffer);
          continue;
        }
        // A broadcast is matched on the tags the session has now, which the fetch also carried: it may
        // have come before they were read (a session being set up), or before they changed.
        const match = buffer.audience === undefined ? undefined : inAudience(session, buffer.audience);
        const offered =
          match === undefined || match === buffer.broadcastMatch
            ? buffer
            : { ...buffer, broadcastMatch: match };
        const verdict = this.account(session, offered);
        if (verdict === 'gap') held.push(offered);
        else if (verdict === 'duplicate') this.options.metrics.duplicatesDropped.inc();
        else if (verdict === 'deliver') {
          messages.push(offered.message);
          live.add(offered.message);
        }
      }
      messages.sort(byMsgId);
      // The same message twice (an online-only one applied twice, a broadcast both fetched and buffered):
      // one copy is written.
      for (let i = messages.length - 1; i > 0; i--) {
        if (messages[i]?.msgId === messages[i - 1]?.msgId) messages.splice(i, 1);
      }
      // Sent even without messages when something was dropped: this frame is the device's only chance to
      // learn of it (the app then knows to resync with its server).
      if ((messages.length > 0 || session.unreportedDropped > 0) && this.deliver(session, messages, live)) {
        // Targeted messages that came live were counted by dispatch; the rest are counted here.
        for (const message of messages) {
          if (!live.has(message) || this.liveBroadcasts.has(message)) this.countSent(session, message);
        }
      }
      if ((session.state as string) === 'closed') return;
      if (held.length > 0) {
        session.buffered = held;
        heldAt = holdAt;
        this.options.metrics.gapRefetches.inc();
        continue;
      }
      // NATS was interrupted while this round's fetch ran: what its read missed may be lost. Once more.
      if (this.interruptions !== interruptionsBefore) continue;
      session.state = 'live';
    }
  }

  /**
   * Where a catch-up round must stop writing: the lowest msg_id that a buffered message chains onto (its
   * window or broadcast predecessor) and that is neither accounted for, nor among the fetched or buffered
   * messages, nor in the window or log when read (Infinity: none). Called before the chains take in what
   * was read. A missing predecessor the device has passed already (a later message was written first), or
   * the one the previous round held at and that its fetch did not find either (the window was cleared,
   * the store lost it), will never be delivered in order: it is counted as dropped and its chain moves
   * past it.
   */
  private holdPoint(
    session: Session,
    pending: FetchPendingResponse,
    buffered: LiveMessage[],
    heldAt: number,
  ): number {
    const present = new Set<number>();
    for (const message of pending.messages) present.add(message.msgId);
    for (const offered of buffered) present.add(offered.message.msgId);
    const predecessors: { msgId: number; window: boolean }[] = [];
    for (const offered of buffered) {
      const { previousMsgId, previousBroadcastId } = offered;
      if (isWindowed(offered) && !present.has(previousMsgId))
        predecessors.push({ msgId: previousMsgId, window: true });
      if (!present.has(previousBroadcastId)) predecessors.push({ msgId: previousBroadcastId, window: false });
    }
    predecessors.sort(byMsgId);
    for (const { msgId, window } of predecessors) {
      // Before a session's first fetch its chains are unknown (-1): nothing can have been passed yet.
      const accounted = window ? session.chainMsgId : session.broadcastChainId;
      if (msgId <= accounted) continue;
      const passed = accounted >= 0 && msgId <= session.lastDeliveredMsgId;
      // In the window or the log when read: fetched, or gone (acked, or dropped and counted by dispatch).
      if (!passed && msgId <= (window ? pending.lastMsgId : pending.lastBroadcastId)) continue;
      if (!passed && msgId !== heldAt) return msgId;
      this.countLate(session);
      if (window) session.chainMsgId = msgId;
      else session.broadcastChainId = msgId;
    }
    return Number.POSITIVE_INFINITY;
  }

  /**
   * FetchPending for a session, with what the gateway knows of its device (so that dispatch needs no
   * registry call and no tag read to match it against missed broadcasts). A transient failure (dispatch
   * overloaded or restarting) is retried with jittered backoff for as long as the session lasts, instead
   * of closing it: closed sessions reconnect at once, and in a reconnect storm that turned one slow
   * dispatch into tens of thousands of closed sessions. Meanwhile live messages wait in the session's
   * buffer (bounded: what it drops is in the window or the broadcast log, and the gap is noticed).
   * Undefined: the session closed meanwhile.
   */
  private async fetchPending(session: Session): Promise<FetchPendingResponse | undefined> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.pendingFetches.call({
          accessId: session.accessId,
          token: session.token,
          afterMsgId: session.lastDeliveredMsgId,
          // Before the session's first fetch (its chains unknown), what it has is what the device said it
          // processed: dispatch takes the window's messages up to there as arrived (acks lost on the way).
          // Later fetches start after what this gateway wrote, which may not have reached the device.
          deviceProcessed: session.chainMsgId < 0,
          device: {
            platform: session.platform,
            appVersion: session.appVersion,
            osVersion: session.osVersion,
            locale: session.locale,
            registeredAtMs: session.registeredAtMs,
            userTags: [...session.userTags],
          },
        });
      } catch (error) {
        if (!TRANSIENT_CODES.has(toPushdError(error).code)) throw error;
        if (session.state === 'closed' || this.shuttingDown) return undefined;
        this.options.metrics.catchUpRetries.inc();
        const backoffMs = Math.min(CATCH_UP_MAX_BACKOFF_MS, CATCH_UP_FIRST_BACKOFF_MS * 2 ** attempt);
        await new Promise((resolve) => setTimeout(resolve, backoffMs * (0.5 + Math.random())));
        if ((session.state as string) === 'closed') return undefined;
      }
    }
  }

  // ---- frames from devices ---------------------------------------------------------------------------

  /** @internal called by the shared socket listener. */
  onFrame(session: Session, data: RawData, isBinary: boolean): void {
    session.alive = true;
    let frame: ClientFrame;
    try {
      frame = decodeClientFrame(toBytes(data), isBinary, session.encoding);
    } catch (error) {
      this.options.metrics.framesIn.inc('malformed');
      this.closeWith(session, toPushdError(error));
      return;
    }
    const body = frame.body;
    if (body === undefined) return;
    this.options.metrics.framesIn.inc(body.$case);
    switch (body.$case) {
      case 'ping':
        this.send(session, {
          id: frame.id,
          body: { $case: 'pong', value: { serverTimeMs: this.clock.now() } },
        });
        return;
      case 'ack':
        this.onAck(session, frame.id, body.value.msgIds);
        return;
      case 'register':
        void this.onRegister(session, frame);
        return;
      case 'unregister':
        void this.onUnregister(session, frame.id);
        return;
      case 'updateTags':
      case 'reportLocation':
        this.onTagFrame(session, frame.id, body);
        return;
      case 'click':
        this.onClick(session, frame.id, body.value);
        return;
    }
  }

  private async onRegister(session: Session, frame: ClientFrame): Promise<void> {
    if (
      session.state !== 'registering' ||
      session.accessKey === undefined ||
      frame.body?.$case !== 'register'
    ) {
      this.closeWith(
        session,
        new PushdError(
          'PROTOCOL_VIOLATION',
          'register is only allowed once, as the first frame of a registration connection',
        ),
        frame.id,
      );
      return;
    }
    const register = frame.body.value;
    this.registering.delete(session);
    session.state = 'syncing';
    try {
      const result = await this.options.registry.registerDevice({
        accessId: session.accessId,
        accessKey: session.accessKey,
        deviceId: register.deviceId,
        platform: register.platform,
        appVersion: register.appVersion,
        osVersion: register.osVersion,
        locale: register.locale,
        sdkVersion: register.sdkVersion,
      });
      if ((session.state as string) === 'closed') return;
      // Out of `registering` and not in the hub yet: returning here would leave the connection to no sweep.
      if (result.device === undefined) throw new PushdError('INTERNAL', 'the registry returned no device');
      // stop() began during the call and did not see this session: it must not start (nor write a route).
      if (this.shuttingDown) throw new PushdError('SHUTTING_DOWN', 'gateway shutting down; reconnect');
      adoptDevice(session, result.device);
      this.send(session, {
        id: frame.id,
        body: {
          $case: 'registered',
          value: { token: session.token, credential: result.credential, created: result.created },
        },
      });
      this.options.metrics.connects.inc({ kind: 'registration' });
      await this.establish(session);
    } catch (error) {
      this.closeWith(session, toPushdError(error), frame.id);
    }
  }

  private async onUnregister(session: Session, requestId: number): Promise<void> {
    if (session.state === 'registering') {
      this.closeWith(
        session,
        new PushdError('PROTOCOL_VIOLATION', 'register before unregistering'),
        requestId,
      );
      return;
    }
    // The registry's UNREGISTERED event may reach this gateway before the call returns; the device asked,
    // so it gets Unregistered and a normal close rather than the DEVICE_UNREGISTERED error.
    session.unregistering = 'asked';
    const unregister = async (): Promise<PushdError | undefined> => {
      try {
        await this.options.registry.unregisterDevice({ accessId: session.accessId, token: session.token });
        return undefined;
      } catch (error) {
        const failure = toPushdError(error);
        // No longer registered: an earlier call did it (its answer lost to a deadline, say).
        return failure.code === 'TOKEN_NOT_FOUND' ? undefined : failure;
      }
    };
    let failure = await unregister();
    // The registry announces before it removes: announced and failed, the removal may have failed, or only
    // the answer was lost. Once more, which finishes the first case and finds nothing in the second.
    if (failure !== undefined && unregisterAnnounced(session)) failure = await unregister();
    if (failure !== undefined) {
      // Still registered: the device gets the error, and the connection stays open for it to try again.
      session.unregistering = undefined;
      this.replyError(session, requestId, failure);
      return;
    }
    this.send(session, { id: requestId, body: { $case: 'unregistered', value: {} } });
    this.detach(session);
    session.socket.close(1000, 'unregistered');
    this.options.metrics.disconnects.inc({ reason: 'unregistered' });
  }

  /**
   * UpdateTags and ReportLocation: the device changes its own tags through the tag service. Only sending
   * one before registering is a protocol violation; a refused call (a tag limit, an invalid tag, the rate
   * limit, the tag service unavailable) is answered with an Error frame and the connection stays open.
   * The calls of one session run one after the other in the order sent, so that ADD then REMOVE of a tag
   * ends without it whatever the latencies.
   */
  private onTagFrame(session: Session, requestId: number, body: TagFrameBody): void {
    if (session.state === 'registering' || session.token === '') {
      this.closeWith(
        session,
        new PushdError('PROTOCOL_VIOLATION', `${body.$case} before registering`),
        requestId,
      );
      return;
    }
    const now = this.clock.now();
    if (now - session.tagWindowStartMs >= this.tagFrameWindowMs) {
      session.tagWindowStartMs = now;
      session.tagWindowFrames = 0;
    }
    if (session.tagWindowFrames >= this.maxTagFrames) {
      const retryAfterMs = session.tagWindowStartMs + this.tagFrameWindowMs - now;
      this.replyError(
        session,
        requestId,
        new PushdError(
          'RATE_LIMITED',
          `at most ${this.maxTagFrames} tag and location frames per ${this.tagFrameWindowMs} ms; retry in ${retryAfterMs} ms`,
          { metadata: { retry_after_ms: String(retryAfterMs) } },
        ),
      );
      return;
    }
    session.tagWindowFrames++;
    const call = (session.tagCalls ?? Promise.resolve()).then(() =>
      this.runTagFrame(session, requestId, body),
    );
    session.tagCalls = call;
    void call.then(() => {
      if (session.tagCalls === call) session.tagCalls = undefined;
    });
  }

  /** One tag frame's call and reply; never rejects (the next queued call must run). */
  private async runTagFrame(session: Session, requestId: number, body: TagFrameBody): Promise<void> {
    if (session.state === 'closed') return;
    let reply: ServerFrame['body'];
    try {
      if (body.$case === 'updateTags') {
        reply = { $case: 'tagsUpdated', value: { count: await this.updateTags(session, body.value) } };
      } else {
        const { province, city } = body.value;
        await this.options.tag.reportLocation({
          accessId: session.accessId,
          token: session.token,
          province,
          city,
        });
        reply = { $case: 'locationReported', value: {} };
      }
    } catch (error) {
      const failure = toPushdError(error);
      if (failure.code === 'INTERNAL') {
        this.options.logger.error({ err: failure.cause ?? failure }, `${body.$case} failed`);
      }
      this.replyError(session, requestId, failure);
      return;
    }
    // Before the reply: once the device has it, a tag push is evaluated on the new tags here, without
    // waiting for the tag service's announcement (which reloads them too).
    try {
      session.userTags = sharedTags(
        await this.options.tags.list(session.accessId, session.token, session.index),
      );
      session.tagTest = undefined;
    } catch (error) {
      this.options.logger.warn({ err: error }, 'reloading device tags after a tag frame failed');
    }
    this.send(session, { id: requestId, body: reply });
  }

  private async updateTags(session: Session, update: UpdateTags): Promise<number> {
    const { tag } = this.options;
    const request = { accessId: session.accessId, token: session.token, tags: update.tags };
    switch (update.operation) {
      case TagOperation.TAG_OPERATION_ADD:
        return (await tag.addTags(request)).count;
      case TagOperation.TAG_OPERATION_REMOVE:
        return (await tag.removeTags(request)).count;
      case TagOperation.TAG_OPERATION_REPLACE:
        return (await tag.setTags(request)).count;
      default:
        throw invalidArgument(
          'update_tags.operation',
          'must be TAG_OPERATION_ADD, TAG_OPERATION_REMOVE or TAG_OPERATION_REPLACE',
        );
    }
  }

  /** Answers a request with an Error frame; the connection stays open. */
  private replyError(session: Session, requestId: number, error: PushdError): void {
    this.send(session, {
      id: requestId,
      body: { $case: 'error', value: { code: error.code, message: error.message } },
    });
  }

  private onAck(session: Session, requestId: number, msgIds: number[]): void {
    // Until Registered, the session has no token to attribute acks to.
    if (session.state === 'registering' || session.token === '') {
      this.closeWith(session, new PushdError('PROTOCOL_VIOLATION', 'ack before registering'), requestId);
      return;
    }
    if (msgIds.length > MAX_ACK_IDS) {
      this.closeWith(
        session,
        new PushdError('FRAME_MALFORMED', `malformed frame: an ack may carry at most ${MAX_ACK_IDS} ids`),
        requestId,
      );
      return;
    }
    // JSON lets a device put anything where an id belongs; an event that cannot be encoded must never
    // reach the batcher.
    if (!msgIds.every((id) => Number.isSafeInteger(id) && id > 0)) {
      this.closeWith(
        session,
        new PushdError('FRAME_MALFORMED', 'malformed frame: ack msg_ids must be positive integers'),
        requestId,
      );
      return;
    }
    const now = this.clock.now();
    for (const msgId of msgIds) {
      const message = session.takeUnacked(msgId);
      if (message === undefined && !this.withinUntrackedBudget(session, 'ack')) continue;
      this.mergeDeviceEvent(EventType.EVENT_TYPE_ARRIVED, session, {
        msgId,
        pushId: message?.pushId ?? '',
        atMs: now,
        sentAtMs: message !== undefined && message.sentAtMs > 0 ? message.sentAtMs : undefined,
        windowless: message !== undefined && this.liveBroadcasts.has(message),
      });
    }
  }

  /**
   * Whether the session may cause one more event no delivery of this session accounts for (an ack of an id
   * it has no record of delivering, a click). Such events are legitimate in small numbers (a duplicate
   * ack, an ack of a message past the MAX_UNACKED record, clicks a device kept while offline), but a
   * device sending thousands of made-up ids per frame would fill the gateway's event buffer, whose
   * overflow drops the oldest events: other devices' arrivals and clicks. Past the budget they are
   * ignored and counted (gateway_device_events_ignored_total); acks of messages delivered here never are.
   */
  private withinUntrackedBudget(session: Session, type: 'ack' | 'click'): boolean {
    if (session.untrackedEvents < UNTRACKED_EVENTS_PER_INTERVAL) {
      session.untrackedEvents++;
      return true;
    }
    this.options.metrics.deviceEventsIgnored.inc({ type });
    return false;
  }

  /**
   * A click: batched as a CLICKED event like acks (no reply). Its push is the one the device names, or
   * that of the message if it was delivered here and not yet acknowledged; a click whose push is unknown
   * cannot be counted and is dropped. Stats counts a device once per push, and only for a push of its app.
   */
  private onClick(session: Session, requestId: number, click: Click): void {
    if (session.state === 'registering' || session.token === '') {
      this.closeWith(session, new PushdError('PROTOCOL_VIOLATION', 'click before registering'), requestId);
      return;
    }
    if (!Number.isSafeInteger(click.msgId) || click.msgId <= 0) {
      this.closeWith(
        session,
        new PushdError('FRAME_MALFORMED', 'malformed frame: click msg_id must be a positive integer'),
        requestId,
      );
      return;
    }
    if (click.pushId !== undefined && click.pushId.length > MAX_CLICK_PUSH_ID_CHARS) {
      this.closeWith(
        session,
        new PushdError(
          'FRAME_MALFORMED',
          `malformed frame: click push_id may have at most ${MAX_CLICK_PUSH_ID_CHARS} characters`,
        ),
        requestId,
      );
      return;
    }
    const pushId = click.pushId || session.unackedMessage(click.msgId)?.pushId || '';
    if (pushId === '') {
      this.options.metrics.clicksUnattributed.inc();
      return;
    }
    if (!this.withinUntrackedBudget(session, 'click')) return;
    this.events.add(
      Event.create({
        type: EventType.EVENT_TYPE_CLICKED,
        accessId: session.accessId,
        token: session.token,
        platform: session.platform,
        msgId: click.msgId,
        pushId,
        atMs: this.clock.now(),
      }),
    );
  }

  // ---- messages from dispatch ------------------------------------------------------------------------

  private onNodeDelivery(data: Uint8Array): void {
    let delivery: NodeDelivery;
    try {
      delivery = NodeDelivery.decode(data);
    } catch (error) {
      this.options.logger.error({ err: error }, 'undecodable node delivery dropped');
      return;
    }
    const message = delivery.message;
    if (message === undefined) return;
    delivery.tokens.forEach((token, index) => {
      const session = this.sessionOf(delivery.accessId, token);
      if (session === undefined) return;
      this.offerLive(session, {
        message,
        previousMsgId: delivery.previousMsgIds[index] ?? 0,
        previousBroadcastId: delivery.previousBroadcastId,
        onlineOnly: delivery.onlineOnly,
      });
    });
  }

  /**
   * A broadcast or tag push: evaluated against this app's sessions here (one publish reached every
   * gateway; nothing was stored per device). Live ones that match get it; every one accounts for it in its
   * broadcast chain, so a later message can tell whether one was missed.
   */
  private onBroadcast(data: Uint8Array): void {
    let delivery: BroadcastDelivery;
    let matcher: Matcher | undefined;
    try {
      delivery = BroadcastDelivery.decode(data);
      if (delivery.expression !== undefined)
        matcher = compileMatcher(normalize(fromProto(delivery.expression)));
    } catch (error) {
      this.options.logger.error({ err: error }, 'undecodable broadcast dropped');
      return;
    }
    const { message, platform, previousBroadcastId } = delivery;
    const sessions = this.hub.get(delivery.accessId);
    if (message === undefined || sessions === undefined) return;
    this.options.metrics.broadcastsReceived.inc();
    this.liveBroadcasts.add(message);
    // Two shared offers, not one object per session: what a session keeps of one (buffered while it
    // syncs) it only reads.
    const audience: BroadcastAudience = { platform, matcher };
    const matching: LiveMessage = {
      message,
      previousMsgId: 0,
      previousBroadcastId,
      broadcastMatch: true,
      onlineOnly: delivery.onlineOnly,
      audience,
    };
    const notMatching: LiveMessage = { ...matching, broadcastMatch: false };
    for (const session of sessions.values()) {
      this.offerLive(session, inAudience(session, audience) ? matching : notMatching);
    }
  }

  /** The tag service changed the user tags of devices held here: reload them. */
  private onTagsChanged(data: Uint8Array): void {
    let changed: DeviceTagsChanged;
    try {
      changed = DeviceTagsChanged.decode(data);
    } catch (error) {
      this.options.logger.error({ err: error }, 'undecodable tag change dropped');
      return;
    }
    for (const token of changed.tokens) {
      const session = this.sessionOf(changed.accessId, token);
      if (session !== undefined) void this.reloadTags(session);
    }
  }

  /**
   * Reads the device's tags again: the tag service changed them, or its announcement may be lost.
   * Resolves once done; a failure is logged, and the session keeps the tags it had.
   */
  private async reloadTags(session: Session): Promise<void> {
    try {
      const tags = await this.options.tags.list(session.accessId, session.token, session.index);
      session.userTags = sharedTags(tags);
      session.tagTest = undefined;
      this.options.metrics.tagReloads.inc();
    } catch (error) {
      this.options.logger.warn({ err: error }, 'reloading device tags failed');
    }
  }

  /**
   * Delivers a live message in order, buffers it while syncing, or starts a catch-up on a gap: a targeted
   * message whose window predecessor, or any message whose broadcast predecessor, this session has not
   * accounted for.
   */
  private offerLive(session: Session, live: LiveMessage): void {
    if (session.state === 'syncing') {
      session.buffered ??= [];
      // Bounded while a catch-up waits for dispatch: the oldest go. They are in the device's window or the
      // app's broadcast log (online-only messages excepted, which promise no more), and the next message
      // chains past them, so the gap is fetched.
      if (session.buffered.length >= MAX_BUFFERED_LIVE) session.buffered.shift();
      session.buffered.push(live);
      return;
    }
    if (session.state !== 'live') return;
    const verdict = this.account(session, live);
    if (verdict === 'gap') {
      this.options.metrics.gapRefetches.inc();
      this.startCatchUp(session, live);
    } else if (verdict === 'duplicate') {
      this.options.metrics.duplicatesDropped.inc();
    } else if (verdict === 'deliver') {
      const sent = this.deliver(session, [live.message]);
      // Broadcasts are counted where they reach a device; dispatch counted targeted messages.
      if (sent && live.broadcastMatch !== undefined) this.countSent(session, live.message);
    } else if (session.unreportedDropped > 0) {
      // One could no longer be delivered in order: the device learns it now, not at the next message.
      this.deliver(session, []);
    }
  }

  /**
   * Accounts for a message offered to a session whose chains are up to date: a duplicate (already
   * accounted for), a gap (a predecessor not accounted for: fetch first), to deliver, or nothing to write
   * (a broadcast the device does not match, or a message it can no longer get in order, counted as
   * dropped). Moves the chains past what it accepts.
   */
  private account(session: Session, live: LiveMessage): 'duplicate' | 'gap' | 'deliver' | 'none' {
    const msgId = live.message.msgId;
    if (live.broadcastMatch !== undefined) {
      if (msgId <= session.broadcastChainId) {
        // Accounted for by a log read, but not necessarily fetched: an online-only broadcast moves the
        // log's head in no entry, and dispatch matched the log on the tags the fetch carried, which may
        // have changed since (a tag change, or the reload after a NATS interruption). One the session
        // matches now is still to write if nothing later was; a fetched copy is written once (catchUp).
        return live.broadcastMatch && msgId > session.lastDeliveredMsgId ? 'deliver' : 'duplicate';
      }
      this.skipPassedPredecessors(session, live);
      // Chained onto itself (applied again) and passed: counted as dropped just now, not a second time.
      if (msgId <= session.broadcastChainId) return 'none';
      if (live.previousBroadcastId > session.broadcastChainId) return 'gap';
      session.broadcastChainId = msgId;
      return live.broadcastMatch && this.stillInOrder(session, msgId) ? 'deliver' : 'none';
    }
    if (live.onlineOnly === true) {
      // In no window: a copy at or below what was written is a duplicate or late, and promised no more.
      if (msgId <= session.lastDeliveredMsgId) return 'duplicate';
      this.skipPassedPredecessors(session, live);
      return live.previousBroadcastId > session.broadcastChainId ? 'gap' : 'deliver';
    }
    if (msgId <= session.chainMsgId) return 'duplicate';
    this.skipPassedPredecessors(session, live);
    if (msgId <= session.chainMsgId) return 'none';
    if (live.previousMsgId > session.chainMsgId || live.previousBroadcastId > session.broadcastChainId) {
      return 'gap';
    }
    session.chainMsgId = msgId;
    return this.stillInOrder(session, msgId) ? 'deliver' : 'none';
  }

  /**
   * A predecessor this session has not accounted for but that is at or below what it wrote can no longer
   * be delivered in order (the device drops it): counted as dropped rather than fetched. It was lost on the
   * bus before a message of the other chain was written (a targeted message before a broadcast, which
   * cannot name it), or published late by a dispatch failover.
   */
  private skipPassedPredecessors(session: Session, live: LiveMessage): void {
    const { previousMsgId, previousBroadcastId } = live;
    if (
      isWindowed(live) &&
      previousMsgId > session.chainMsgId &&
      previousMsgId <= session.lastDeliveredMsgId
    ) {
      this.countLate(session);
      session.chainMsgId = previousMsgId;
    }
    if (previousBroadcastId > session.broadcastChainId && previousBroadcastId <= session.lastDeliveredMsgId) {
      // It may be a broadcast the device does not match: reported anyway, a resync costs less than a loss.
      this.countLate(session);
      session.broadcastChainId = previousBroadcastId;
    }
  }

  /**
   * Whether a message the session accounts for can still be written: not if a later one was (the device
   * drops what is not above what it processed). That happens only when messages of one app were published
   * out of order (a dispatch failover); it is then counted as dropped, so that the app resyncs.
   */
  private stillInOrder(session: Session, msgId: number): boolean {
    if (msgId > session.lastDeliveredMsgId) return true;
    this.countLate(session);
    return false;
  }

  private countLate(session: Session): void {
    session.unreportedDropped++;
    this.options.metrics.lateMessagesDropped.inc();
  }

  /**
   * The bus was interrupted: what was published to this node meanwhile is lost, and a broadcast could be
   * written past a lost targeted message before the next targeted one showed the gap. So every live
   * session fetches what its device is owed, buffering live messages meanwhile, as after a gap. A session
   * already catching up fetches once more after its current round (catchUp compares `interruptions`).
   * Every session also reads its device's tags again, before its fetch (dispatch matches the missed
   * broadcasts on the tags the fetch carries): a tag change announced meanwhile is lost too, and tag
   * pushes would otherwise be matched on the old tags until the next change. So is an unregistration:
   * the registry is asked which devices are still registered (closeUnregistered).
   */
  private resyncAfterInterruption(): void {
    this.interruptions++;
    let resynced = 0;
    for (const sessions of this.hub.values()) {
      for (const session of sessions.values()) {
        if (session.state === 'syncing') void this.reloadTags(session);
        if (session.state !== 'live') continue;
        this.startCatchUp(session, undefined, this.reloadTags(session));
        resynced++;
      }
    }
    this.options.metrics.interruptionResyncs.inc(resynced);
    this.options.logger.warn({ sessions: resynced }, 'NATS was interrupted: sessions fetch what they missed');
    void this.closeUnregistered();
  }

  /**
   * Closes, as the registry's UNREGISTERED event would have, the sessions whose registration ended while
   * that event could not reach this gateway: the device is no longer registered, or registered again
   * under a new index. Such a session would otherwise stay open until the device's next connection,
   * matching broadcasts it should no longer get. The sessions checked are those held when it is called;
   * each authenticated before the reads are made, so a registration a read does not find has ended
   * (indexes are never given twice). The
   * registry removes a device right after announcing it: a read in between still finds it, and that
   * session stays open, as before this check. A failed read is logged and leaves its sessions open.
   */
  private async closeUnregistered(): Promise<void> {
    // The hub is by app already: its sessions now, in GetDevices-sized chunks per app.
    const lookups: { accessId: number; sessions: Session[] }[] = [];
    for (const [accessId, ofApp] of this.hub) {
      const sessions = [...ofApp.values()];
      for (let start = 0; start < sessions.length; start += REGISTRATION_CHECK_BATCH) {
        lookups.push({ accessId, sessions: sessions.slice(start, start + REGISTRATION_CHECK_BATCH) });
      }
    }
    let closed = 0;
    await mapConcurrently(lookups, REGISTRATION_CHECKS_IN_FLIGHT, async ({ accessId, sessions }) => {
      let registered: Device[];
      try {
        ({ devices: registered } = await this.options.registry.getDevices({
          accessId,
          tokens: sessions.map((session) => session.token),
        }));
      } catch (error) {
        this.options.logger.warn(
          { err: error, accessId, sessions: sessions.length },
          'checking registrations after a NATS interruption failed; those sessions stay open',
        );
        return;
      }
      const indexes = new Map(registered.map((device) => [device.token, device.index]));
      for (const session of sessions) {
        if (session.state === 'closed' || session.unregistering !== undefined) continue;
        const index = indexes.get(session.token);
        // A device stored before indexes existed has none until it registers again: the same registration.
        const ended =
          !indexes.has(session.token) ||
          (index !== undefined && session.index !== undefined && index !== session.index);
        if (!ended) continue;
        this.closeWith(session, new PushdError('DEVICE_UNREGISTERED', 'the device was unregistered'));
        closed++;
      }
    });
    if (closed > 0) {
      this.options.logger.warn(
        { sessions: closed },
        'closed the sessions of devices unregistered during a NATS interruption',
      );
    }
  }

  /**
   * A message this one follows has not reached us (lost on the bus, or published while this gateway was
   * reconnecting): fetch what the device is owed rather than deliver out of order. `live`: the message
   * that showed the gap (buffered); `first`: what to wait for before the fetch (the session buffers
   * meanwhile).
   */
  private startCatchUp(session: Session, live?: LiveMessage, first?: Promise<void>): void {
    session.state = 'syncing';
    session.buffered = live === undefined ? [] : [live];
    const catchUp = first === undefined ? this.catchUp(session) : first.then(() => this.catchUp(session));
    void catchUp.catch((error: unknown) => {
      this.options.logger.warn({ err: error }, 'catch-up after a gap failed');
      this.closeWith(
        session,
        new PushdError('UNAVAILABLE', 'the gateway could not fetch missed messages; reconnect'),
      );
    });
  }

  /**
   * Broadcasts are counted as sent where they reach a connection (dispatch does not know who gets them),
   * and so is every message a device gets when it comes back: a broadcast from the log is indistinguishable
   * there, and a targeted one dispatch counted already counts once anyway.
   */
  private countSent(session: Session, message: PushMessage): void {
    this.mergeDeviceEvent(EventType.EVENT_TYPE_SENT, session, {
      msgId: message.msgId,
      pushId: message.pushId,
      atMs: this.clock.now(),
    });
  }

  /**
   * Adds one device to a SENT or ARRIVED event. A broadcast reaches thousands of sessions in one turn of the
   * event loop, and their acks come back as thousands of frames read in a few turns: their events are merged
   * per message and platform into events carrying up to TOKENS_PER_MERGED_EVENT tokens (as dispatch does for
   * targeted pushes), handed to the batcher once the turn is over, instead of one event per device. An
   * ARRIVED event keeps each device's arrival time (tokens_at_ms), so stats still sees every latency.
   */
  private mergeDeviceEvent(
    type: EventType.EVENT_TYPE_SENT | EventType.EVENT_TYPE_ARRIVED,
    session: Session,
    fields: { msgId: number; pushId: string; atMs: number; sentAtMs?: number; windowless?: boolean },
  ): void {
    const windowless = fields.windowless === true;
    // Found by msg_id, then among its few events (SENT and ARRIVED, per platform) by the other fields: no
    // key string is built per device.
    let events = this.mergedEvents.get(fields.msgId);
    if (events === undefined) {
      events = [];
      this.mergedEvents.set(fields.msgId, events);
    }
    let index = 0;
    for (; index < events.length; index++) {
      const candidate = events[index] as Event;
      if (
        candidate.type === type &&
        candidate.accessId === session.accessId &&
        candidate.platform === session.platform &&
        candidate.pushId === fields.pushId &&
        candidate.sentAtMs === fields.sentAtMs &&
        candidate.windowless === windowless
      )
        break;
    }
    let event = events[index];
    if (event === undefined || event.tokens.length >= TOKENS_PER_MERGED_EVENT) {
      if (event !== undefined) this.events.add(event);
      event = Event.create({
        type,
        accessId: session.accessId,
        pushId: fields.pushId,
        msgId: fields.msgId,
        platform: session.platform,
        atMs: fields.atMs,
        sentAtMs: fields.sentAtMs,
        windowless,
      });
      events[index] = event;
    }
    event.tokens.push(session.token);
    if (type === EventType.EVENT_TYPE_ARRIVED) event.tokensAtMs.push(fields.atMs);
    if (!this.mergedFlushScheduled) {
      this.mergedFlushScheduled = true;
      setImmediate(() => this.flushMerged());
    }
  }

  private flushMerged(): void {
    this.mergedFlushScheduled = false;
    for (const events of this.mergedEvents.values()) for (const event of events) this.events.add(event);
    this.mergedEvents.clear();
  }

  /**
   * Writes one Deliver frame: each message as the session's platform receives it (forPlatform), and the
   * count of messages the device will never get, when there is one. `live`: which of them came live (the
   * rest were fetched), for the metrics; default all when there is one message, none otherwise.
   */
  private deliver(session: Session, messages: PushMessage[], live?: ReadonlySet<PushMessage>): boolean {
    const dropped = session.unreportedDropped;
    const data =
      live === undefined && messages.length === 1 && dropped === 0
        ? this.liveFrame(messages[0] as PushMessage, session.platform).get(session.encoding)
        : encodeServerFrame(
            {
              id: 0,
              body: {
                $case: 'deliver',
                value: {
                  messages: messages.map((message) => pushForPlatform(message, session.platform)),
                  dropped: dropped > 0 ? dropped : undefined,
                },
              },
            },
            session.encoding,
          );
    if (!this.write(session, data, 'deliver')) return false;
    session.unreportedDropped = 0;
    const now = this.clock.now();
    const { deliveryLatency, messagesDelivered } = this.options.metrics;
    for (const message of messages) {
      session.rememberUnacked(message);
      session.lastDeliveredMsgId = Math.max(session.lastDeliveredMsgId, message.msgId);
      const source = (live === undefined ? messages.length === 1 : live.has(message)) ? 'live' : 'pending';
      deliveryLatency.observe({ source }, Math.max(0, now - message.sentAtMs) / 1000);
      messagesDelivered.inc(source);
    }
    return true;
  }

  /** The shared frame of a live message for a platform (see liveFrames). */
  private liveFrame(message: PushMessage, platform: Platform): EncodedFrame {
    let frames = this.liveFrames.get(message);
    if (frames === undefined) {
      frames = [];
      this.liveFrames.set(message, frames);
    }
    // Nothing to drop for this platform: the frame every such platform shares. Decided without building
    // the platform's view, which only a cache miss needs (this runs once per session of a broadcast).
    const drops =
      (platform === Platform.PLATFORM_ANDROID && message.message?.ios !== undefined) ||
      (platform === Platform.PLATFORM_IOS && message.message?.android !== undefined);
    const slot = drops ? platform : Platform.PLATFORM_UNSPECIFIED;
    let frame = frames[slot];
    if (frame === undefined) {
      const view = pushForPlatform(message, platform);
      frame = new EncodedFrame({ id: 0, body: { $case: 'deliver', value: { messages: [view] } } });
      frames[slot] = frame;
    }
    return frame;
  }

  private onRegistryEvents(data: Uint8Array): void {
    let batch: EventBatch;
    try {
      batch = EventBatch.decode(data);
    } catch {
      return;
    }
    for (const event of batch.events) {
      if (event.type !== EventType.EVENT_TYPE_UNREGISTERED) continue;
      const session = this.sessionOf(event.accessId, event.token);
      if (session === undefined) continue;
      if (session.unregistering !== undefined) session.unregistering = 'announced';
      else this.closeWith(session, new PushdError('DEVICE_UNREGISTERED', 'the device was unregistered'));
    }
  }

  // ---- writing and closing ---------------------------------------------------------------------------

  private send(session: Session, frame: ServerFrame): void {
    this.write(session, encodeServerFrame(frame, session.encoding), frame.body?.$case ?? 'empty');
  }

  /** Writes a frame unless the connection is gone or over its send-queue cap (then drops the device). */
  private write(session: Session, data: Uint8Array | string, type: string): boolean {
    const socket = session.socket;
    if (session.state === 'closed' || socket.readyState !== socket.OPEN) return false;
    if (socket.bufferedAmount > this.maxBufferedBytes) {
      this.options.metrics.slowConsumers.inc();
      this.options.metrics.disconnects.inc({ reason: 'SLOW_CONSUMER' });
      this.detach(session);
      socket.terminate();
      return false;
    }
    socket.send(data, typeof data === 'string' ? SEND_TEXT : SEND_BINARY);
    this.options.metrics.framesOut.inc(type);
    this.options.metrics.bytesOut.inc(
      undefined,
      typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength,
    );
    return true;
  }

  /** Sends an error frame, then closes with the code's WebSocket close code. */
  private closeWith(session: Session, error: PushdError, requestId = 0): void {
    if (session.state === 'closed') return;
    if (error.code === 'INTERNAL')
      this.options.logger.error({ err: error.cause ?? error }, 'closing session on an internal error');
    this.send(session, {
      id: requestId,
      body: { $case: 'error', value: { code: error.code, message: error.message } },
    });
    this.options.metrics.disconnects.inc({ reason: error.code });
    this.detach(session);
    // The close reason is limited to 123 bytes by RFC 6455; the error frame carried the full message.
    session.socket.close(error.spec.wsCloseCode, error.code);
  }

  /** Forgets the session (idempotent): out of the hub, its route removed if it is still ours. */
  private detach(session: Session): void {
    if (session.state === 'closed') return;
    session.state = 'closed';
    session.buffered = undefined;
    this.registering.delete(session);
    const ofApp = this.hub.get(session.accessId);
    if (session.token !== '' && ofApp?.get(session.token) === session) {
      ofApp.delete(session.token);
      this.hubSize--;
      if (ofApp.size === 0) this.hub.delete(session.accessId);
      this.options.metrics.connections.dec({ platform: platformLabel(session.platform) });
      this.announcePresence(session, EventType.EVENT_TYPE_DISCONNECTED);
      this.options.routes.clear(session.accessId, session.token, session.id).catch((error: unknown) => {
        this.options.logger.warn({ err: error }, 'removing a route failed; it expires by itself');
      });
    }
  }

  /**
   * Connects and disconnects of live sessions (the ones in the hub), batched like arrivals. The tag service
   * follows the newest session of each device, so a disconnect of a session the device already replaced
   * elsewhere does not mark it offline.
   */
  private announcePresence(session: Session, type: EventType): void {
    this.presence.add(
      Event.create({
        type,
        accessId: session.accessId,
        token: session.token,
        platform: session.platform,
        atMs: this.clock.now(),
        deviceIndex: session.index,
        sessionId: session.id,
      }),
    );
  }

  /** @internal called by DeviceSocket.emit. */
  onClosed(session: Session): void {
    if (session.state !== 'closed') this.options.metrics.disconnects.inc({ reason: 'closed_by_device' });
    this.detach(session);
  }

  private sessionOf(accessId: number, token: string): Session | undefined {
    return this.hub.get(accessId)?.get(token);
  }

  /** Every live session (a copy: closing them changes the hub). */
  private liveSessions(): Session[] {
    const sessions: Session[] = [];
    for (const ofApp of this.hub.values()) for (const session of ofApp.values()) sessions.push(session);
    return sessions;
  }

  // ---- sweeps ----------------------------------------------------------------------------------------

  /**
   * One timer for all connections, spread over the heartbeat interval: each tick visits the next slice of
   * the sessions there were when the round began, terminating those silent since their last ping and
   * pinging the others. A session's place in the round moves as others come and go, so it is terminated
   * only if its ping is at least half an interval old (otherwise it is looked at again next round).
   */
  private heartbeatTick(): void {
    if (this.heartbeatStep === 0) this.heartbeatRound = this.liveSessions();
    const round = this.heartbeatRound;
    const start = Math.floor((round.length * this.heartbeatStep) / HEARTBEAT_TICKS);
    const end = Math.floor((round.length * (this.heartbeatStep + 1)) / HEARTBEAT_TICKS);
    this.heartbeatStep = (this.heartbeatStep + 1) % HEARTBEAT_TICKS;
    if (this.heartbeatStep === 0) this.heartbeatRound = [];
    const now = Date.now();
    for (let i = start; i < end; i++) {
      const session = round[i] as Session;
      if (session.state === 'closed') continue;
      if (session.alive) {
        session.alive = false;
        session.untrackedEvents = 0;
        session.pingedAtMs = now;
        session.socket.ping();
      } else if (now - session.pingedAtMs >= this.heartbeatIntervalMs / 2) {
        this.options.metrics.disconnects.inc({ reason: 'heartbeat_timeout' });
        this.detach(session);
        session.socket.terminate();
      }
    }
  }

  private sweepRegistrations(): void {
    const deadline = this.clock.now() - this.registerTimeoutMs;
    for (const session of this.registering) {
      if (session.openedAtMs <= deadline) {
        this.closeWith(
          session,
          new PushdError('REGISTRATION_TIMEOUT', `no Register frame within ${this.registerTimeoutMs} ms`),
        );
      }
    }
  }

  private async refreshRoutes(): Promise<void> {
    const { nodeId } = this.options;
    const entries = this.liveSessions().map((s) => ({
      accessId: s.accessId,
      token: s.token,
      route: { nodeId, sessionId: s.id, openedAtMs: s.openedAtMs },
    }));
    if (entries.length === 0) return;
    try {
      await this.options.routes.refresh(entries, this.routeTtlMs);
    } catch (error) {
      this.options.logger.warn(
        { err: error, routes: entries.length },
        'refreshing routes failed; will retry',
      );
    }
  }
}

/** A gateway's socket: ws builds them (WebSocketServer's `WebSocket` option), see deviceSocketClass. */
interface DeviceSocket extends WebSocket {
  session: Session | undefined;
}

/**
 * The socket class of one gateway. ws reports everything through `emit`; the gateway takes the four events
 * it needs there instead of adding four listeners to every socket, which cost ~250 B of heap per
 * connection (EventEmitter keeps a socket's listeners in a dictionary), a tenth of what ws itself costs
 * (docs/benchmarks.md, connections). One class per gateway, so that a socket needs no pointer to it.
 */
function deviceSocketClass(gateway: Gateway): typeof WebSocket {
  return class extends WebSocket implements DeviceSocket {
    session: Session | undefined = undefined;

    // ws's events carry at most two arguments (message: data and isBinary; close: code and reason).
    override emit(event: string | symbol, first?: unknown, second?: unknown): boolean {
      const session = this.session;
      if (session !== undefined) {
        if (event === 'message') gateway.onFrame(session, first as RawData, second as boolean);
        else if (event === 'pong') session.alive = true;
        else if (event === 'close') gateway.onClosed(session);
      }
      // ws follows every error (a frame over maxPayload, an invalid frame) with close, handled there; an
      // 'error' without a listener would throw.
      if (event === 'error' && this.listenerCount('error') === 0) return true;
      return super.emit(event, first, second);
    }
  };
}

/** Sends what a socket held back (a no-op once sent: Node ignores an uncork of an uncorked stream). */
function uncork(socket: Duplex): void {
  socket.uncork();
}

function destroySocket(this: Duplex): void {
  this.destroy();
}

function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data);
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data;
}

/** The push as a device of `platform` receives it: only its own platform's style (same object if unchanged). */
function pushForPlatform(push: PushMessage, platform: Platform): PushMessage {
  if (push.message === undefined) return push;
  const message = forPlatform(push.message, platform);
  return message === push.message ? push : { ...push, message };
}

function platformLabel(platform: Platform): string {
  return platform === Platform.PLATFORM_ANDROID
    ? 'android'
    : platform === Platform.PLATFORM_IOS
      ? 'ios'
      : 'unknown';
}

/** Answers a refused upgrade with the catalogue's HTTP status and a JSON body, then closes. */
function rejectUpgrade(socket: Duplex, error: PushdError): void {
  if (socket.destroyed) return;
  const body = JSON.stringify({ code: error.code, message: error.message });
  socket.end(
    `HTTP/1.1 ${error.spec.httpStatus} ${httpReason(error.spec.httpStatus)}\r\n` +
      'Connection: close\r\nContent-Type: application/json\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

function httpReason(status: number): string {
  const reasons: Record<number, string> = {
    400: 'Bad Request',
    401: 'Unauthorized',
    403: 'Forbidden',
    404: 'Not Found',
    408: 'Request Timeout',
    409: 'Conflict',
    413: 'Payload Too Large',
    429: 'Too Many Requests',
    500: 'Internal Server Error',
    501: 'Not Implemented',
    503: 'Service Unavailable',
    504: 'Gateway Timeout',
  };
  return reasons[status] ?? 'Error';
}

/** Whether a session's device is in a broadcast's audience, on its current tags. */
function inAudience(session: Session, audience: BroadcastAudience): boolean {
  return (
    (audience.platform === Platform.PLATFORM_UNSPECIFIED || audience.platform === session.platform) &&
    (audience.matcher === undefined || audience.matcher(tagTestOf(session)))
  );
}

/** Whether the registry announced a session's unregistration while its call was out (read after an await). */
function unregisterAnnounced(session: Session): boolean {
  return session.unregistering === 'announced';
}

/** Takes the registry's view of the device: identity, platform, and what makes its built-in tags. */
function adoptDevice(session: Session, device: Device): void {
  session.token = device.token;
  session.platform = device.platform;
  session.index = device.index;
  session.appVersion = shared(device.appVersion);
  session.registeredAtMs = device.registeredAtMs;
  session.osVersion = shared(device.osVersion);
  session.locale = shared(device.locale);
}

/** The session's tags as the evaluators want them, built once until its tags change. */
function tagTestOf(session: Session): HasTag {
  session.tagTest ??= deviceTagTest(
    {
      platform: session.platform,
      appVersion: session.appVersion,
      osVersion: session.osVersion,
      locale: session.locale,
    },
    session.userTags,
  );
  return session.tagTest;
}

import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { type Bus, MemoryBus, streams, subjects, withDurablePublish } from '@pushd/bus';
import { PushdError, silentLogger } from '@pushd/common';
import { DeviceClient, type DeviceCloseEvent, generateDeviceId } from '@pushd/device-sdk';
import { createDispatch, createDispatchMetrics, DispatchEventConsumer } from '@pushd/dispatch';
import {
  BroadcastDelivery,
  type ClientFrame,
  DeviceTagsChanged,
  DispatchServiceService,
  decodeServerFrame,
  type Event,
  EventBatch,
  EventType,
  encodeClientFrame,
  encodeServerFrame,
  type FetchPendingRequest,
  type FetchPendingResponse,
  MessageType,
  NodeDelivery,
  Platform,
  type PushMessage,
  type PushRequest,
  PushStatus,
  RegistryServiceService,
  type ServerFrame,
  TagOperation,
  TagServiceService,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import {
  basicAuthorization,
  bearerAuthorization,
  callContext,
  inProcessClient,
  type PromiseClient,
  toBatchResult,
} from '@pushd/rpc';
import { createMemoryStores, type TagLimits, type TagStore } from '@pushd/store';
import { TagService } from '@pushd/tag';
import { waitFor } from '@pushd/testkit';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { Gateway, type GatewayOptions } from './gateway.js';
import { createGatewayMetrics } from './metrics.js';
import { MAX_BUFFERED_LIVE } from './session.js';

// The real codec, watched: a test counts how often the gateway encodes a Deliver frame.
vi.mock('@pushd/proto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('@pushd/proto')>();
  return { ...actual, encodeServerFrame: vi.fn(actual.encodeServerFrame) };
});

const CLUSTER_TOKEN = 'gateway-unit-test-cluster-token';
const NODE_ID = 'gw-unit';
const HOUR_MS = 3_600_000;

const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));

type DispatchClient = PromiseClient<typeof DispatchServiceService>;
type RegistryClient = PromiseClient<typeof RegistryServiceService>;

/**
 * A dispatch client whose FetchPendingBatch answers each of its requests with `fetch` (what `fetch` throws
 * is that request's error): a test changes what one catch-up gets, whatever it was batched with.
 */
function fetchEach(
  real: DispatchClient,
  fetch: (request: FetchPendingRequest) => Promise<FetchPendingResponse>,
): DispatchClient {
  return {
    ...real,
    fetchPendingBatch: async ({ requests }) => ({
      results: (await Promise.allSettled(requests.map(fetch))).map(toBatchResult),
    }),
  };
}

// Everything a test opened, closed after it whatever happened.
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface StartOptions {
  gateway?: Partial<GatewayOptions>;
  /** Wraps the dispatch client the gateway gets (default: DispatchService's handlers). */
  dispatch?: (real: DispatchClient) => DispatchClient;
  /** Wraps the registry client the gateway gets (default: RegistryService's handlers). */
  registry?: (real: RegistryClient) => RegistryClient;
  /** Limits of the tag service the gateway calls. Default: the brief's (100 per device, 10,000 per app). */
  tagLimits?: Partial<TagLimits>;
  /** Wraps the bus the gateway gets (default: the MemoryBus every service of the test shares). */
  gatewayBus?: (real: MemoryBus) => Bus;
  /** Wraps the tag store the gateway reads sessions' tags from (default: the shared memory store). */
  gatewayTags?: (real: TagStore) => TagStore;
}

/**
 * A gateway on 127.0.0.1:0 with a MemoryBus and memory stores, whose registry, dispatch and tag clients
 * call a real RegistryService, DispatchService and TagService sharing those stores.
 */
async function startGateway(options: StartOptions = {}) {
  const stores = createMemoryStores();
  const bus = new MemoryBus({ streams: [streams.events, streams.pushes] });
  cleanups.push(() => bus.close());
  const bearer = bearerAuthorization(CLUSTER_TOKEN);
  const registry = new RegistryService({
    apps: stores.apps,
    devices: stores.devices,
    bus,
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
  }).handlers();
  const dispatchMetrics = createDispatchMetrics(new Registry());
  const dispatchParts = createDispatch({
    stores,
    bus,
    registry: inProcessClient(RegistryServiceService, registry, bearer),
    clusterToken: CLUSTER_TOKEN,
    metrics: dispatchMetrics,
    logger: silentLogger(),
  });
  const dispatch = dispatchParts.service.handlers();
  dispatchParts.applier.start();
  dispatchParts.scheduler.start();
  cleanups.push(
    () => dispatchParts.applier.stop(),
    () => dispatchParts.scheduler.stop(),
  );
  const realDispatch = inProcessClient(DispatchServiceService, dispatch, bearer);
  const tagService = new TagService({
    tags: stores.tags,
    audience: stores.audience,
    bus,
    routes: stores.routes,
    registry: inProcessClient(RegistryServiceService, registry, bearer),
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
    limits: options.tagLimits,
  });
  const metrics = new Registry();
  // Catch-ups answered, by token: the gateway has applied an answer by the time a poll can see it here.
  const catchUps = new Map<string, number>();
  const innerDispatch = options.dispatch?.(realDispatch) ?? realDispatch;
  const dispatchClient: DispatchClient = {
    ...innerDispatch,
    fetchPendingBatch: async (request, callOptions) => {
      const response = await innerDispatch.fetchPendingBatch(request, callOptions);
      request.requests.forEach(({ token }, i) => {
        if (response.results[i]?.outcome?.$case === 'response') {
          catchUps.set(token, (catchUps.get(token) ?? 0) + 1);
        }
      });
      return response;
    },
  };
  const realRegistry = inProcessClient(RegistryServiceService, registry, bearer);
  const gateway = new Gateway({
    nodeId: NODE_ID,
    host: '127.0.0.1',
    port: 0,
    registry: options.registry?.(realRegistry) ?? realRegistry,
    dispatch: dispatchClient,
    routes: stores.routes,
    tags: options.gatewayTags?.(stores.tags) ?? stores.tags,
    tag: inProcessClient(TagServiceService, tagService.handlers(), bearer),
    bus: options.gatewayBus?.(bus) ?? bus,
    metrics: createGatewayMetrics(metrics),
    logger: silentLogger(),
    ...options.gateway,
  });
  await gateway.start();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await gateway.stop();
  };
  cleanups.push(stop);

  const created = await registry.createApp({ name: 'demo' }, cluster());
  const app = {
    accessId: created.app?.accessId ?? 0,
    accessKey: created.accessKey,
    auth: () => callContext(basicAuthorization(created.app?.accessId ?? 0, created.secretKey)),
  };
  const origin = `ws://127.0.0.1:${gateway.port}`;
  const url = `${origin}/v1/ws`;

  /** Registers a device directly with the registry (as if it had registered earlier). */
  const registerDevice = async (platform = Platform.PLATFORM_ANDROID, deviceId = generateDeviceId()) => {
    const registered = await registry.registerDevice(
      {
        accessId: app.accessId,
        accessKey: app.accessKey,
        deviceId,
        platform,
        appVersion: '',
        osVersion: '',
        locale: '',
        sdkVersion: '',
      },
      cluster(),
    );
    return { token: registered.device?.token ?? '', credential: registered.credential };
  };
  const sessionHeaders = (device: { token: string; credential: string }, lastMsgId = 0) => ({
    'x-pushd-access-id': String(app.accessId),
    'x-pushd-token': device.token,
    'x-pushd-credential': device.credential,
    ...(lastMsgId > 0 ? { 'x-pushd-last-msg-id': String(lastMsgId) } : {}),
  });
  /** Pushes and waits until the push was applied (in the device's window, routed if it had a route). */
  const push = async (token: string, content: string) => {
    const result = await dispatch.push(
      {
        accessId: 0,
        audience: { target: { $case: 'token', value: token } },
        message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content, customContent: {} },
        platform: Platform.PLATFORM_UNSPECIFIED,
      },
      app.auth(),
    );
    await waitFor(
      async () =>
        (await stores.pushes.get(app.accessId, result.pushId))?.status === PushStatus.PUSH_STATUS_DONE,
      `push ${result.pushId} applied`,
    );
    return result;
  };
  const route = (token: string) => stores.routes.get(app.accessId, token);
  /**
   * Waits until the session of `token` has its catch-up answered, so that it is live: a session is told
   * Connected before its catch-up, which goes out with the next batch.
   */
  const caughtUp = (token: string) =>
    waitFor(() => (catchUps.get(token) ?? 0) > 0, `the catch-up of ${token.slice(0, 8)}`);
  const metric = async (name: string, labels: Record<string, string> = {}) => {
    const values = (await metrics.getSingleMetric(name)?.get())?.values ?? [];
    return values
      .filter((v) => Object.entries(labels).every(([key, value]) => v.labels[key] === value))
      .reduce((sum, v) => sum + v.value, 0);
  };
  /** Count and sum of a histogram's observations with these labels. */
  const histogram = async (name: string, labels: Record<string, string>) => {
    const values = (await metrics.getSingleMetric(name)?.get())?.values ?? [];
    const series = (suffix: string) =>
      values
        .filter(
          (v) =>
            (v as { metricName?: string }).metricName === `${name}_${suffix}` &&
            Object.entries(labels).every(([key, value]) => v.labels[key] === value),
        )
        .reduce((sum, v) => sum + v.value, 0);
    return { count: series('count'), sum: series('sum') };
  };
  /** A DeviceClient on this gateway, closed after the test. */
  const client = (fields: Partial<ConstructorParameters<typeof DeviceClient>[0]> = {}) => {
    const device = new DeviceClient({
      url,
      accessId: app.accessId,
      ...(fields.session === undefined
        ? {
            registration: {
              accessKey: app.accessKey,
              deviceId: generateDeviceId(),
              platform: 'android',
            },
          }
        : {}),
      ...fields,
    });
    const received: PushMessage[] = [];
    const closes: DeviceCloseEvent[] = [];
    device.on('message', (message) => received.push(message));
    device.on('close', (event) => closes.push(event));
    device.on('error', () => undefined);
    cleanups.push(() => device.close());
    return { device, received, closes };
  };

  return {
    gateway,
    stores,
    bus,
    registry,
    dispatch,
    dispatchMetrics,
    app,
    origin,
    url,
    registerDevice,
    sessionHeaders,
    push,
    route,
    caughtUp,
    metric,
    histogram,
    client,
    stop,
  };
}

/** A WebSocket without the SDK: records every frame exactly as the gateway sent it. */
interface RawDevice {
  socket: WebSocket;
  frames: ServerFrame[];
  /** Whether each frame came as a binary WebSocket message. */
  binary: boolean[];
  /** msg ids of every Deliver frame, in arrival order, duplicates included. */
  delivered: number[];
  closed: Promise<{ code: number; reason: string }>;
  send(frame: ClientFrame): void;
  /** Sends a Ping frame and waits for its Pong: every frame the gateway wrote before it has arrived. */
  roundTrip(): Promise<void>;
}

type RawOutcome =
  | { kind: 'open'; device: RawDevice }
  | { kind: 'refused'; status: number; body: { code?: string; message?: string } };

/** A Register frame (id 1) of an Android device with no details. */
function registerFrame(deviceId: string): ClientFrame {
  return {
    id: 1,
    body: {
      $case: 'register',
      value: {
        deviceId,
        platform: Platform.PLATFORM_ANDROID,
        appVersion: '',
        osVersion: '',
        locale: '',
        sdkVersion: '',
      },
    },
  };
}

let nextPingId = 100;

function rawConnect(
  url: string,
  headers: Record<string, string>,
  options: { protocols?: string[]; autoPong?: boolean } = {},
): Promise<RawOutcome> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, options.protocols ?? [], {
      headers,
      perMessageDeflate: false,
      autoPong: options.autoPong ?? true,
    });
    cleanups.push(() => socket.terminate());
    // Errors (a reset after the gateway terminated us) are followed by close, which the tests observe.
    socket.on('error', () => undefined);
    const frames: ServerFrame[] = [];
    const binary: boolean[] = [];
    const delivered: number[] = [];
    const closed = new Promise<{ code: number; reason: string }>((done) =>
      socket.once('close', (code, reason) => done({ code, reason: reason.toString() })),
    );
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      const encoding = socket.protocol === 'pushd.v1.json' ? 'json' : 'proto';
      const frame = decodeServerFrame(new Uint8Array(data), isBinary, encoding);
      frames.push(frame);
      binary.push(isBinary);
      if (frame.body?.$case === 'deliver') delivered.push(...frame.body.value.messages.map((m) => m.msgId));
    });
    const device: RawDevice = {
      socket,
      frames,
      binary,
      delivered,
      closed,
      send: (frame) =>
        socket.send(encodeClientFrame(frame, socket.protocol === 'pushd.v1.json' ? 'json' : 'proto')),
      roundTrip: async () => {
        const id = nextPingId++;
        device.send({ id, body: { $case: 'ping', value: {} } });
        await waitFor(
          () => frames.some((f) => f.id === id && f.body?.$case === 'pong'),
          `the pong of ping ${id}`,
        );
      },
    };
    socket.once('open', () => resolve({ kind: 'open', device }));
    socket.once('unexpected-response', (_request, response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      response.on('end', () => {
        let body: { code?: string; message?: string } = {};
        try {
          body = JSON.parse(text);
        } catch {}
        resolve({ kind: 'refused', status: response.statusCode ?? 0, body });
      });
    });
    socket.once('error', reject);
  });
}

async function openRaw(
  url: string,
  headers: Record<string, string>,
  options: { protocols?: string[]; autoPong?: boolean } = {},
): Promise<RawDevice> {
  const outcome = await rawConnect(url, headers, options);
  if (outcome.kind !== 'open') throw new Error(`refused: ${outcome.status} ${JSON.stringify(outcome.body)}`);
  return outcome.device;
}

/**
 * A WebSocket upgrade over a bare TCP socket, keeping each read as it came: what the gateway wrote in one
 * socket write arrives in one read on loopback. The frames are binary protobuf (no subprotocol offered).
 */
async function upgradeOverTcp(url: string, headers: Record<string, string>) {
  const { hostname, port, pathname } = new URL(url);
  const socket = connect(Number(port), hostname);
  cleanups.push(() => {
    socket.destroy();
  });
  await once(socket, 'connect');
  const lines = [
    `GET ${pathname} HTTP/1.1`,
    `Host: ${hostname}:${port}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
    'Sec-WebSocket-Version: 13',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
    ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
  ];
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  // Each read: the HTTP status if it starts with the response, and the kinds of the whole frames in it
  // (server frames are unmasked and, here, shorter than 64 KiB).
  const parsed = () => {
    const frames: ServerFrame[][] = [];
    const reads = chunks.map((chunk) => {
      let offset = 0;
      let status: number | undefined;
      if (chunk.subarray(0, 5).toString() === 'HTTP/') {
        status = Number(chunk.subarray(9, 12).toString());
        offset = chunk.indexOf('\r\n\r\n') + 4;
      }
      const inRead: ServerFrame[] = [];
      while (offset < chunk.length) {
        let length = chunk[offset + 1]! & 0x7f;
        let start = offset + 2;
        if (length === 126) {
          length = chunk.readUInt16BE(offset + 2);
          start = offset + 4;
        }
        inRead.push(decodeServerFrame(chunk.subarray(start, start + length), true, 'proto'));
        offset = start + length;
      }
      frames.push(inRead);
      return { ...(status === undefined ? {} : { status }), frames: inRead.map((f) => f.body?.$case) };
    });
    return { reads, frames: frames.flat() };
  };
  return {
    socket,
    chunks,
    reads: () => parsed().reads,
    delivered: () =>
      parsed().frames.flatMap((f) =>
        f.body?.$case === 'deliver' ? f.body.value.messages.map((m) => m.msgId) : [],
      ),
  };
}

/** Waits for the Connected frame of a session. */
async function connected(device: RawDevice) {
  await waitFor(() => device.frames.some((f) => f.body?.$case === 'connected'), 'Connected');
  const frame = device.frames.find((f) => f.body?.$case === 'connected');
  if (frame?.body?.$case !== 'connected') throw new Error('no Connected frame');
  return frame.body.value;
}

const pushMessage = (msgId: number, content = `m${msgId}`): PushMessage => ({
  msgId,
  pushId: `p${msgId}`,
  message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content, customContent: {} },
  sentAtMs: Date.now(),
  expiresAtMs: Date.now() + HOUR_MS,
});

type TestSystem = Awaited<ReturnType<typeof startGateway>>;

/** Publishes one message to one device of the test app on this gateway, as dispatch does. */
function publishTargeted(
  system: TestSystem,
  token: string,
  message: PushMessage,
  chain: { previousMsgId?: number; previousBroadcastId?: number; onlineOnly?: boolean } = {},
): void {
  system.bus.publish(
    subjects.nodeDelivery(NODE_ID),
    NodeDelivery.encode({
      accessId: system.app.accessId,
      tokens: [token],
      message,
      previousMsgIds: [chain.previousMsgId ?? 0],
      previousBroadcastId: chain.previousBroadcastId ?? 0,
      onlineOnly: chain.onlineOnly ?? false,
    }).finish(),
  );
}

interface BroadcastOptions {
  /** Expire_time_s 0: the log's head moves, no entry is kept. Default: false. */
  onlineOnly?: boolean;
  /** A tag push to devices with any of these tags. Default: every device of the app. */
  tags?: string[];
}

/**
 * Stores a broadcast to everyone of the test app as dispatch applies one: in the app's log for an hour
 * (an online-only one only moves the log's head), returning what dispatch publishes to every gateway.
 */
async function logBroadcast(
  system: TestSystem,
  msgId: number,
  previousBroadcastId: number,
  options: BroadcastOptions = {},
): Promise<Uint8Array> {
  const { accessId } = system.app;
  const { onlineOnly = false, tags } = options;
  const data = BroadcastDelivery.encode({
    accessId,
    message: pushMessage(msgId),
    expression: tags === undefined ? undefined : { form: { $case: 'tagList', value: { tags, op: 'OR' } } },
    platform: Platform.PLATFORM_UNSPECIFIED,
    previousBroadcastId,
    onlineOnly,
  }).finish();
  const now = Date.now();
  await system.stores.broadcasts.append(
    accessId,
    { msgId, expiresAtMs: onlineOnly ? now : now + HOUR_MS, data },
    now,
  );
  return data;
}

/** logBroadcast, then the publish to every gateway. */
async function publishBroadcast(
  system: TestSystem,
  msgId: number,
  previousBroadcastId: number,
  options: BroadcastOptions = {},
): Promise<void> {
  const data = await logBroadcast(system, msgId, previousBroadcastId, options);
  system.bus.publish(subjects.broadcast(system.app.accessId), data);
}

describe('Gateway handshake', () => {
  it('refuses upgrades with the catalogue HTTP status and code, before any session exists', async () => {
    const system = await startGateway();
    const device = await system.registerDevice();
    const id = String(system.app.accessId);
    const registration = { 'x-pushd-access-id': id, 'x-pushd-access-key': system.app.accessKey };
    const session = system.sessionHeaders(device);
    const cases: {
      what: string;
      status: number;
      code: string;
      path?: string;
      headers: Record<string, string>;
      protocols?: string[];
    }[] = [
      { what: 'wrong path', status: 404, code: 'ENDPOINT_NOT_FOUND', path: '/v2/ws', headers: registration },
      { what: 'no access id', status: 400, code: 'INVALID_ARGUMENT', headers: { 'x-pushd-access-key': 'k' } },
      {
        what: 'access id not a number',
        status: 400,
        code: 'INVALID_ARGUMENT',
        headers: { ...registration, 'x-pushd-access-id': 'app' },
      },
      {
        what: 'bad last_msg_id',
        status: 400,
        code: 'INVALID_ARGUMENT',
        headers: { ...session, 'x-pushd-last-msg-id': '-3' },
      },
      { what: 'no credentials', status: 401, code: 'UNAUTHENTICATED', headers: { 'x-pushd-access-id': id } },
      {
        what: 'token only',
        status: 401,
        code: 'UNAUTHENTICATED',
        headers: { 'x-pushd-access-id': id, 'x-pushd-token': device.token },
      },
      {
        what: 'wrong access key',
        status: 401,
        code: 'UNAUTHENTICATED',
        headers: { ...registration, 'x-pushd-access-key': 'AWRONG' },
      },
      {
        what: 'unknown app',
        status: 404,
        code: 'APP_NOT_FOUND',
        headers: { ...registration, 'x-pushd-access-id': '1999999999' },
      },
      {
        what: 'wrong credential',
        status: 401,
        code: 'INVALID_CREDENTIAL',
        headers: { ...session, 'x-pushd-credential': 'forged' },
      },
      {
        what: 'unknown token',
        status: 401,
        code: 'INVALID_CREDENTIAL',
        headers: { ...session, 'x-pushd-token': 'f'.repeat(40) },
      },
      {
        what: 'no known subprotocol',
        status: 400,
        code: 'UNSUPPORTED_PROTOCOL',
        headers: session,
        protocols: ['mqtt', 'pushd.v2'],
      },
      {
        what: 'a subprotocol offered twice',
        status: 400,
        code: 'UNSUPPORTED_PROTOCOL',
        headers: { ...session, 'sec-websocket-protocol': 'pushd.v1.proto, pushd.v1.proto' },
      },
    ];
    for (const { what, status, code, path = '/v1/ws', headers, protocols } of cases) {
      const outcome = await rawConnect(`${system.origin}${path}`, headers, { protocols });
      expect(outcome, what).toMatchObject({
        kind: 'refused',
        status,
        body: { code },
      });
    }
    expect(await system.metric('gateway_upgrade_failures_total', { code: 'INVALID_CREDENTIAL' })).toBe(2);
    expect(await system.metric('gateway_upgrade_failures_total')).toBe(cases.length);
    expect(system.gateway.sessionCount).toBe(0);
    expect(await system.route(device.token)).toBeUndefined();

    // Plain HTTP: 426 on the device path, 404 elsewhere, JSON bodies either way.
    const plain = await fetch(`http://127.0.0.1:${system.gateway.port}/v1/ws`);
    expect(plain.status).toBe(426);
    expect(await plain.json()).toMatchObject({ code: 'INVALID_ARGUMENT' });
    const elsewhere = await fetch(`http://127.0.0.1:${system.gateway.port}/metrics`);
    expect(elsewhere.status).toBe(404);
    expect(await elsewhere.json()).toMatchObject({ code: 'ENDPOINT_NOT_FOUND' });
  });

  it('speaks binary protobuf when no subprotocol is offered, or a blank header offers none', async () => {
    const system = await startGateway();
    const device = await system.registerDevice();
    for (const extra of [{}, { 'sec-websocket-protocol': ' ' }] as Record<string, string>[]) {
      const raw = await openRaw(system.url, { ...system.sessionHeaders(device), ...extra });
      expect(raw.socket.protocol).toBe('');
      const hello = await connected(raw);
      expect(hello.token).toBe(device.token);
      expect(raw.binary).toEqual([true]);
      raw.socket.close();
      await raw.closed;
    }
  });

  it('registers over the query string and JSON, choosing the first offered subprotocol it speaks', async () => {
    const system = await startGateway();
    const query = `?access_id=${system.app.accessId}&access_key=${encodeURIComponent(system.app.accessKey)}`;
    const raw = await openRaw(
      `${system.url}${query}`,
      {},
      { protocols: ['chat.v9', 'pushd.v1.json', 'pushd.v1.proto'] },
    );
    expect(raw.socket.protocol).toBe('pushd.v1.json');
    raw.send({
      id: 1,
      body: {
        $case: 'register',
        value: {
          deviceId: generateDeviceId(),
          platform: Platform.PLATFORM_IOS,
          appVersion: '1.0',
          osVersion: '17',
          locale: 'en',
          sdkVersion: 'raw',
        },
      },
    });
    const hello = await connected(raw);
    expect(raw.frames.map((f) => [f.id, f.body?.$case])).toEqual([
      [1, 'registered'],
      [0, 'connected'],
    ]);
    // Text frames: the JSON encoding.
    expect(raw.binary).toEqual([false, false]);
    const registered = raw.frames[0]?.body;
    if (registered?.$case !== 'registered') throw new Error('no Registered frame');
    expect(registered.value).toMatchObject({ token: hello.token, created: true });
    expect(registered.value.credential.length).toBeGreaterThan(20);
    expect(await system.route(hello.token)).toMatchObject({ nodeId: NODE_ID, sessionId: hello.sessionId });
    // The device is registered as what it said.
    await expect(
      system.registry.getDevice({ accessId: 0, token: hello.token }, system.app.auth()),
    ).resolves.toMatchObject({ device: { platform: Platform.PLATFORM_IOS, appVersion: '1.0' } });
  });

  it('closes a registration the registry answers without a device, instead of leaving it open', async () => {
    const system = await startGateway({
      registry: (real) => ({ ...real, registerDevice: async () => ({ credential: '', created: false }) }),
    });
    const raw = await openRaw(system.url, {
      'x-pushd-access-id': String(system.app.accessId),
      'x-pushd-access-key': system.app.accessKey,
    });
    raw.send(registerFrame(generateDeviceId()));
    expect(await raw.closed).toMatchObject({ code: 4500, reason: 'INTERNAL' });
    expect(raw.frames).toEqual([
      { id: 1, body: { $case: 'error', value: expect.objectContaining({ code: 'INTERNAL' }) } },
    ]);
  });

  it('answers a failed registration with an error to the Register frame and a close, registering nothing', async () => {
    const system = await startGateway();
    const headers = {
      'x-pushd-access-id': String(system.app.accessId),
      'x-pushd-access-key': system.app.accessKey,
    };
    const bad = await openRaw(system.url, headers);
    bad.send(registerFrame('short'));
    expect(await bad.closed).toMatchObject({ code: 4400 });
    expect(bad.frames).toEqual([
      { id: 1, body: { $case: 'error', value: expect.objectContaining({ code: 'INVALID_ARGUMENT' }) } },
    ]);
    await expect(system.registry.countDevices({ accessId: 0 }, system.app.auth())).resolves.toMatchObject({
      total: 0,
    });

    // Ack before Register is a protocol violation.
    const early = await openRaw(system.url, headers);
    early.send({ id: 5, body: { $case: 'ack', value: { msgIds: [1] } } });
    expect(await early.closed).toMatchObject({ code: 4400 });
    expect(early.frames).toEqual([
      { id: 5, body: { $case: 'error', value: expect.objectContaining({ code: 'PROTOCOL_VIOLATION' }) } },
    ]);
  });
});

/**
 * A session upgrade written by hand: `sent` resolves once the request was handed to the OS, `outcome`
 * with the gateway's answer (101, or the refusal's status and JSON body).
 */
function upgradeRequest(port: number, headers: Record<string, string>) {
  const request = httpRequest({
    host: '127.0.0.1',
    port,
    path: '/v1/ws',
    headers: {
      connection: 'Upgrade',
      upgrade: 'websocket',
      'sec-websocket-version': '13',
      'sec-websocket-key': randomBytes(16).toString('base64'),
      ...headers,
    },
  });
  const sent = new Promise<void>((resolve) => request.once('finish', () => resolve()));
  const outcome = new Promise<{ status: number; body?: { code?: string } }>((resolve, reject) => {
    request.once('upgrade', (_response, socket: Socket) => {
      socket.on('error', () => undefined);
      cleanups.push(() => {
        socket.destroy();
      });
      resolve({ status: 101 });
    });
    request.once('response', (response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
    });
    request.once('error', reject);
  });
  request.end();
  return { sent, outcome };
}

/** A call held until `release()`: `reached` resolves once the gateway has made it (`hold`). */
function heldCall() {
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => {
    release = resolve;
  });
  let arrive: () => void = () => {};
  const reached = new Promise<void>((resolve) => {
    arrive = resolve;
  });
  const hold = async () => {
    arrive();
    await held;
  };
  return { hold, reached, release };
}

describe('Gateway stopping', () => {
  it('refuses a handshake whose credential check was still out when it began to stop, writing no route', async () => {
    const call = heldCall();
    const system = await startGateway({
      registry: (real) => ({
        ...real,
        authenticateDevices: async (request, callOptions) => {
          await call.hold();
          return real.authenticateDevices(request, callOptions);
        },
      }),
    });
    const device = await system.registerDevice();
    const { outcome } = upgradeRequest(system.gateway.port, system.sessionHeaders(device));
    await call.reached;
    const stopping = system.gateway.stop();
    call.release();
    expect(await outcome).toMatchObject({ status: 503, body: { code: 'SHUTTING_DOWN' } });
    await stopping;
    expect(await system.route(device.token)).toBeUndefined();
  });

  it('closes a registration whose registry call was out when it began to stop, writing no route', async () => {
    const call = heldCall();
    let token = '';
    const system = await startGateway({
      registry: (real) => ({
        ...real,
        registerDevice: async (request, callOptions) => {
          await call.hold();
          const registered = await real.registerDevice(request, callOptions);
          token = registered.device?.token ?? '';
          return registered;
        },
      }),
    });
    const raw = await openRaw(system.url, {
      'x-pushd-access-id': String(system.app.accessId),
      'x-pushd-access-key': system.app.accessKey,
    });
    raw.send(registerFrame(generateDeviceId()));
    await call.reached;
    const stopping = system.gateway.stop();
    call.release();
    expect(await raw.closed).toMatchObject({ code: 4503, reason: 'SHUTTING_DOWN' });
    await stopping;
    expect(token).not.toBe('');
    expect(await system.route(token)).toBeUndefined();
  });
});

describe('Gateway handshake batching', () => {
  it('lets handshakes that arrive together share registry and dispatch calls, refusing a bad credential alone', async () => {
    const devices = 20;
    const forged = 7;
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const authenticateCalls: number[] = [];
    const fetchCalls: number[] = [];
    const system = await startGateway({
      // One call of each at a time: handshakes arriving while it is out wait for it.
      gateway: { callBatching: { maxInFlight: 1 } },
      registry: (real) => ({
        ...real,
        authenticateDevices: async (request, callOptions) => {
          authenticateCalls.push(request.requests.length);
          if (authenticateCalls.length === 1) await held;
          return real.authenticateDevices(request, callOptions);
        },
      }),
      dispatch: (real) => ({
        ...real,
        fetchPendingBatch: async (request, callOptions) => {
          fetchCalls.push(request.requests.length);
          return real.fetchPendingBatch(request, callOptions);
        },
      }),
    });
    const registered: { token: string; credential: string }[] = [];
    for (let n = 0; n < devices; n++) {
      const device = await system.registerDevice();
      // Each has one message waiting, as in the reconnect benchmark.
      await system.stores.inboxes.append(
        system.app.accessId,
        device.token,
        pushMessage(n + 1),
        2,
        Date.now(),
      );
      registered.push(device);
    }
    const headersOf = (n: number) =>
      system.sessionHeaders(n === forged ? { ...registered[n]!, credential: 'forged' } : registered[n]!);

    // The first handshake's call is held; the others arrive meanwhile.
    const first = upgradeRequest(system.gateway.port, headersOf(0));
    await waitFor(() => authenticateCalls.length === 1, 'the first AuthenticateDevices call');
    const others = registered.slice(1).map((_, i) => upgradeRequest(system.gateway.port, headersOf(i + 1)));
    await Promise.all(others.map((other) => other.sent));
    // A plain request sent after them: once it is answered, the gateway has read their upgrades too.
    expect((await fetch(`http://127.0.0.1:${system.gateway.port}/v1/ws`)).status).toBe(426);
    release();

    const outcomes = await Promise.all([first, ...others].map((upgrade) => upgrade.outcome));
    // The forged credential is refused as a single call would refuse it; every other device connects.
    expect(outcomes.map((outcome) => outcome.status)).toEqual(
      registered.map((_, n) => (n === forged ? 401 : 101)),
    );
    expect(outcomes[forged]?.body).toMatchObject({ code: 'INVALID_CREDENTIAL' });
    expect(await system.metric('gateway_upgrade_failures_total', { code: 'INVALID_CREDENTIAL' })).toBe(1);
    expect(authenticateCalls).toEqual([1, devices - 1]);

    // Every session caught up (its waiting message delivered), in fewer dispatch calls than sessions.
    const sessions = devices - 1;
    await waitFor(
      async () =>
        (await system.metric('gateway_messages_delivered_total', { source: 'pending' })) === sessions,
      'every waiting message',
    );
    expect(system.gateway.sessionCount).toBe(sessions);
    expect(fetchCalls.reduce((sum, items) => sum + items, 0)).toBe(sessions);
    expect(fetchCalls.length).toBeLessThan(sessions);

    // The histogram of requests per call says the same.
    expect(await system.histogram('gateway_batch_items', { call: 'authenticate_devices' })).toEqual({
      count: 2,
      sum: devices,
    });
    expect(await system.histogram('gateway_batch_items', { call: 'fetch_pending_batch' })).toEqual({
      count: fetchCalls.length,
      sum: sessions,
    });
  });
});

describe('Gateway sessions', () => {
  it('closes the older connection of a device with 4409 CONNECTION_REPLACED when a newer one opens', async () => {
    const system = await startGateway();
    const first = system.client();
    await first.device.connect();
    const token = first.device.token ?? '';
    const credential = first.device.credential ?? '';
    const second = system.client({ session: { token, credential } });
    const { connected: hello } = await second.device.connect();

    await waitFor(() => first.closes.length > 0, 'the first connection to close');
    expect(first.closes[0]).toMatchObject({ code: 4409, error: { code: 'CONNECTION_REPLACED' } });
    expect(second.device.state).toBe('open');
    expect(system.gateway.sessionCount).toBe(1);
    // The route is the newer session's: the older one closing did not remove it.
    expect(await system.route(token)).toMatchObject({ nodeId: NODE_ID, sessionId: hello.sessionId });

    const { msgId } = await system.push(token, 'to the newer connection');
    await waitFor(() => second.received.length > 0, 'the push on the newer connection');
    expect(second.received.map((m) => m.msgId)).toEqual([msgId]);
    expect(first.received).toEqual([]);
    expect(await system.metric('gateway_disconnects_total', { reason: 'CONNECTION_REPLACED' })).toBe(1);
  });

  it("writes back a live session's route that an older session's late write and close took away", async () => {
    const system = await startGateway({ gateway: { routeTtlMs: 3_000 } });
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    const hello = await connected(raw);
    await system.caughtUp(device.token);
    const { accessId } = system.app;
    // An older session of the device, on another gateway whose clock ran ahead, wrote its route after
    // this one's, then closed and removed it: the device has no route while it is connected here.
    await system.stores.routes.set(
      accessId,
      device.token,
      { nodeId: 'gw-other', sessionId: 'older', openedAtMs: Date.now() + 60_000 },
      3_000,
    );
    expect(await system.route(device.token)).toMatchObject({ sessionId: 'older' });
    await system.stores.routes.clear(accessId, device.token, 'older');
    expect(await system.route(device.token)).toBeUndefined();
    // The next refresh (every second here) writes it back, and pushes reach the device live again.
    await waitFor(
      async () => (await system.route(device.token))?.sessionId === hello.sessionId,
      'the route written back',
    );
    const { msgId } = await system.push(device.token, 'live again');
    await waitFor(() => raw.delivered.includes(msgId), 'the live push');
  });

  it('closes a registration connection that sends no Register in time with 4408', async () => {
    const system = await startGateway({ gateway: { registerTimeoutMs: 200 } });
    const silent = await openRaw(system.url, {
      'x-pushd-access-id': String(system.app.accessId),
      'x-pushd-access-key': system.app.accessKey,
    });
    expect(await silent.closed).toMatchObject({ code: 4408 });
    expect(silent.frames).toEqual([
      { id: 0, body: { $case: 'error', value: expect.objectContaining({ code: 'REGISTRATION_TIMEOUT' }) } },
    ]);
    // A device that registers at once is not affected by the timeout.
    const prompt = system.client();
    await prompt.device.connect();
    await waitFor(
      async () => (await system.metric('gateway_disconnects_total', { reason: 'REGISTRATION_TIMEOUT' })) >= 1,
      'the timeout metric',
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(prompt.device.state).toBe('open');
    expect(prompt.closes).toEqual([]);
  });

  it('terminates a peer that answers no pings at the heartbeat sweep, and keeps one that does', async () => {
    const system = await startGateway({ gateway: { heartbeatIntervalMs: 300 } });
    const silentDevice = await system.registerDevice();
    const liveDevice = await system.registerDevice();
    const silent = await openRaw(system.url, system.sessionHeaders(silentDevice), { autoPong: false });
    const live = await openRaw(system.url, system.sessionHeaders(liveDevice));
    await connected(silent);
    await connected(live);
    let pings = 0;
    live.socket.on('ping', () => pings++);

    // Terminated, not closed: no close frame, so the peer sees an abnormal closure.
    expect(await silent.closed).toMatchObject({ code: 1006 });
    expect(await system.metric('gateway_disconnects_total', { reason: 'heartbeat_timeout' })).toBe(1);
    expect(await system.route(silentDevice.token)).toBeUndefined();

    await waitFor(() => pings >= 3, 'three pings on the answering connection', 15_000);
    expect(live.socket.readyState).toBe(WebSocket.OPEN);
    expect(system.gateway.sessionCount).toBe(1);
    expect(await system.route(liveDevice.token)).toMatchObject({ nodeId: NODE_ID });
  });

  it('spreads heartbeat pings over the interval instead of pinging every connection at once', async () => {
    const system = await startGateway({ gateway: { heartbeatIntervalMs: 2_000 } });
    const devices = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const raw = await openRaw(system.url, system.sessionHeaders(await system.registerDevice()));
        await connected(raw);
        return raw;
      }),
    );
    const pinged = new Set<number>();
    for (const [i, device] of devices.entries()) device.socket.on('ping', () => pinged.add(i));
    await waitFor(() => pinged.size >= 1, 'the first ping');
    // A fiftieth of the connections per tick (40 ms here): far from all of them yet.
    expect(pinged.size).toBeLessThan(10);
    await waitFor(() => pinged.size === 20, 'every connection pinged within the interval', 10_000);
  });

  it('drops a connection whose send queue exceeds maxBufferedBytes and counts it', async () => {
    const system = await startGateway({ gateway: { maxBufferedBytes: 64 * 1024 } });
    const device = await system.registerDevice();
    const slow = await openRaw(system.url, system.sessionHeaders(device));
    await connected(slow);
    // The device stops reading: the gateway's writes pile up in its send queue.
    const transport = (slow.socket as unknown as { _socket: Socket })._socket;
    transport.pause();

    const big = 'x'.repeat(256 * 1024);
    let next = 1;
    await waitFor(
      async () => {
        for (let i = 0; i < 8; i++, next++) {
          publishTargeted(system, device.token, pushMessage(next, big), { previousMsgId: next - 1 });
        }
        await system.bus.flush();
        return (await system.metric('gateway_send_queue_drops_total')) > 0;
      },
      'the slow consumer to be dropped',
      30_000,
    );
    expect(await system.metric('gateway_send_queue_drops_total')).toBe(1);
    expect(await system.metric('gateway_disconnects_total', { reason: 'SLOW_CONSUMER' })).toBe(1);
    expect(system.gateway.sessionCount).toBe(0);
    expect(await system.route(device.token)).toBeUndefined();

    transport.resume();
    expect(await slow.closed).toMatchObject({ code: 1006 });
  });

  it('closes the connection of a device unregistered through the API with 4410', async () => {
    const system = await startGateway();
    const { device, closes } = system.client();
    await device.connect();
    const token = device.token ?? '';
    await system.registry.unregisterDevice({ accessId: 0, token }, system.app.auth());
    await waitFor(() => closes.length > 0, 'the close');
    expect(closes[0]).toMatchObject({ code: 4410, error: { code: 'DEVICE_UNREGISTERED' } });
    expect(system.gateway.sessionCount).toBe(0);
    expect(await system.route(token)).toBeUndefined();
  });

  it('unregisters a device that asks to, and closes normally', async () => {
    const system = await startGateway();
    const { device, closes } = system.client();
    await device.connect();
    const token = device.token ?? '';
    await device.unregister();
    expect(device.token).toBeUndefined();
    await waitFor(() => closes.length > 0, 'the close');
    expect(closes[0]).toMatchObject({ code: 1000 });
    expect(closes[0]?.error).toBeUndefined();
    await expect(system.registry.getDevice({ accessId: 0, token }, system.app.auth())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    expect(await system.route(token)).toBeUndefined();
  });

  it('ends an Unregister normally when it took effect although the registry call failed, and only then', async () => {
    const outcome = new Map<string, 'answer lost' | 'removal failed' | 'refused'>();
    let flushBus: () => Promise<void> = async () => {};
    let announce: (token: string) => void = () => {};
    const system = await startGateway({
      registry: (real) => ({
        ...real,
        unregisterDevice: async (request, callOptions) => {
          const failure = outcome.get(request.token);
          if (failure === 'refused')
            throw new PushdError('UNAVAILABLE', 'the registry is unreachable (test)');
          if (failure === 'removal failed') {
            // Announced, then the removal failed: the device is still registered. Its next call works.
            outcome.delete(request.token);
            announce(request.token);
            await flushBus();
            throw new PushdError('UNAVAILABLE', 'redis unreachable after the announcement (test)');
          }
          const answer = await real.unregisterDevice(request, callOptions);
          if (failure === undefined) return answer;
          // Done and announced, but the answer did not come back in time.
          await flushBus();
          throw new PushdError('DEADLINE_EXCEEDED', 'the registry did not answer in time (test)');
        },
      }),
    });
    flushBus = () => system.bus.flush();
    announce = (token) =>
      system.bus.publish(
        subjects.events('registry'),
        EventBatch.encode(
          EventBatch.fromPartial({
            events: [{ type: EventType.EVENT_TYPE_UNREGISTERED, accessId: system.app.accessId, token }],
          }),
        ).finish(),
      );
    const connect = async () => {
      const client = system.client({
        registration: { accessKey: system.app.accessKey, deviceId: generateDeviceId(), platform: 'android' },
      });
      await client.device.connect();
      return { ...client, token: client.device.token ?? '' };
    };
    const lost = await connect();
    const gone = await connect();
    const halfDone = await connect();
    const refused = await connect();
    outcome.set(lost.token, 'answer lost');
    outcome.set(halfDone.token, 'removal failed');
    outcome.set(refused.token, 'refused');
    // Removed meanwhile without an announcement reaching this gateway: the registry answers TOKEN_NOT_FOUND.
    await system.stores.devices.remove(system.app.accessId, gone.token);

    for (const done of [lost, gone, halfDone]) {
      await done.device.unregister();
      await waitFor(() => done.closes.length > 0, 'the close');
      expect(done.closes[0]).toMatchObject({ code: 1000 });
      expect(done.closes[0]?.error).toBeUndefined();
      expect(await system.route(done.token)).toBeUndefined();
      // Really unregistered: the gateway called again when the registry had announced but failed.
      expect(await system.stores.devices.get(system.app.accessId, done.token)).toBeUndefined();
    }
    // Not done: the device is told why, and its connection stays open for it to try again.
    await expect(refused.device.unregister()).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(refused.closes).toEqual([]);
    expect(system.gateway.sessionCount).toBe(1);
    expect(await system.route(refused.token)).toMatchObject({ nodeId: NODE_ID });
  });

  it('stop() closes every session with 4503 SHUTTING_DOWN and removes their routes', async () => {
    const system = await startGateway();
    const a = system.client();
    const b = system.client({
      registration: { accessKey: system.app.accessKey, deviceId: generateDeviceId(), platform: 'ios' },
    });
    await a.device.connect();
    await b.device.connect();
    const tokens = [a.device.token ?? '', b.device.token ?? ''];
    for (const token of tokens) expect(await system.route(token)).toMatchObject({ nodeId: NODE_ID });

    await system.stop();
    await waitFor(() => a.closes.length > 0 && b.closes.length > 0, 'both closes');
    for (const { closes } of [a, b]) {
      expect(closes[0]).toMatchObject({ code: 4503, error: { code: 'SHUTTING_DOWN' } });
    }
    for (const token of tokens) expect(await system.route(token)).toBeUndefined();
    expect(system.gateway.sessionCount).toBe(0);
  });
});

describe('Gateway delivery', () => {
  it('delivers live messages in msg id order when they arrive out of order, fetching the gap', async () => {
    const system = await startGateway();
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await connected(raw);
    await system.caughtUp(device.token);
    const { accessId } = system.app;
    const publish = (message: PushMessage, previousMsgId: number) =>
      publishTargeted(system, device.token, message, { previousMsgId });

    // Dispatch's order: append to the window, then publish. Message 1 arrives in order.
    await system.stores.inboxes.append(accessId, device.token, pushMessage(1), 2, Date.now());
    publish(pushMessage(1), 0);
    await waitFor(() => raw.delivered.length === 1, 'message 1');

    // Messages 2 and 3 are in the window, but 3 overtakes 2 on the bus.
    await system.stores.inboxes.append(accessId, device.token, pushMessage(2), 2, Date.now());
    await system.stores.inboxes.append(accessId, device.token, pushMessage(3), 2, Date.now());
    publish(pushMessage(3), 2);
    publish(pushMessage(2), 1);

    await waitFor(() => raw.delivered.length >= 3, 'messages 2 and 3');
    // The late copies are recognised as already delivered; then nothing more is on its way.
    await waitFor(
      async () => (await system.metric('gateway_duplicates_dropped_total')) >= 2,
      'the late live copies to be dropped',
    );
    await raw.roundTrip();
    expect(raw.delivered).toEqual([1, 2, 3]);
    expect(await system.metric('gateway_gap_refetches_total')).toBe(1);
    const contents = raw.frames.flatMap((f) =>
      f.body?.$case === 'deliver' ? f.body.value.messages.map((m) => m.message?.content) : [],
    );
    expect(contents).toEqual(['m1', 'm2', 'm3']);
  });

  it('delivers a message published twice only once', async () => {
    const system = await startGateway();
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await connected(raw);
    await system.caughtUp(device.token);
    const publish = (msgId: number, previousMsgId: number) =>
      publishTargeted(system, device.token, pushMessage(msgId), { previousMsgId });
    publish(1, 0);
    publish(1, 0);
    publish(2, 1);
    publish(1, 0);
    publish(2, 1);
    await waitFor(() => raw.delivered.length >= 2, 'two messages');
    await waitFor(
      async () => (await system.metric('gateway_duplicates_dropped_total')) >= 3,
      'the three copies to be dropped',
    );
    await raw.roundTrip();
    expect(raw.delivered).toEqual([1, 2]);
    expect(await system.metric('gateway_gap_refetches_total')).toBe(0);
  });

  it('delivers what was pushed while the device was offline first, in order, then live messages', async () => {
    // The gateway's fetch of the window is held until a live push has reached it, so the live message is
    // certainly buffered behind the fetch.
    let holdFetch: Promise<void> | undefined;
    let release: () => void = () => {};
    let fetched = false;
    const system = await startGateway({
      dispatch: (real) =>
        fetchEach(real, async (request) => {
          const response = await real.fetchPending(request);
          fetched = true;
          await holdFetch;
          return response;
        }),
    });
    const device = await system.registerDevice();
    const offline1 = await system.push(device.token, 'offline 1');
    const offline2 = await system.push(device.token, 'offline 2');
    expect(await system.route(device.token)).toBeUndefined();

    holdFetch = new Promise((resolve) => {
      release = resolve;
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await connected(raw);
    await waitFor(() => fetched, 'the window fetch');
    // The route is written before the window is read, so this push is published to the gateway live.
    const live = await system.push(device.token, 'live');
    await system.bus.flush();
    expect(raw.delivered).toEqual([]);
    release();

    await waitFor(() => raw.delivered.length >= 3, 'three messages');
    await raw.roundTrip();
    expect(raw.delivered).toEqual([offline1.msgId, offline2.msgId, live.msgId]);
    // The live message buffered behind the fetch joins the offline ones in the catch-up's one Deliver.
    const deliverFrames = raw.frames.filter((f) => f.body?.$case === 'deliver');
    expect(
      deliverFrames.map((f) => (f.body?.$case === 'deliver' ? f.body.value.messages.length : 0)),
    ).toEqual([3]);
    expect(await system.metric('gateway_messages_delivered_total', { source: 'pending' })).toBe(2);
    expect(await system.metric('gateway_messages_delivered_total', { source: 'live' })).toBe(1);
  });

  it('writes the upgrade response, Connected and the offline messages in one socket write, holding Connected at most 250 ms', async () => {
    let fetchDelayMs = 0;
    const system = await startGateway({
      dispatch: (real) =>
        fetchEach(real, async (request) => {
          const response = await real.fetchPending(request);
          await new Promise((resolve) => setTimeout(resolve, fetchDelayMs));
          return response;
        }),
    });
    const device = await system.registerDevice();
    const offline = await system.push(device.token, 'offline');

    // Dispatch answers within the hold: the device reads all of it at once (without the hold, the 101
    // would come at once and the Deliver 100 ms later).
    fetchDelayMs = 100;
    const quick = await upgradeOverTcp(system.url, system.sessionHeaders(device));
    await waitFor(() => quick.chunks.length > 0, 'the first bytes');
    expect(quick.reads()[0]).toEqual({ status: 101, frames: ['connected', 'deliver'] });
    quick.socket.destroy();
    await waitFor(async () => (await system.route(device.token)) === undefined, 'the first session gone');

    // Dispatch is slower: Connected goes after 250 ms, alone, and the offline message (not acknowledged
    // above, so still pending) when dispatch answers.
    fetchDelayMs = 600;
    const slow = await upgradeOverTcp(system.url, system.sessionHeaders(device));
    await waitFor(() => slow.chunks.length > 0, 'the first bytes');
    expect(slow.reads()[0]).toEqual({ status: 101, frames: ['connected'] });
    await waitFor(() => slow.reads().some((read) => read.frames.includes('deliver')), 'the Deliver');
    expect(slow.reads().flatMap((read) => read.frames)).toEqual(['connected', 'deliver']);
    expect(slow.delivered()).toEqual([offline.msgId]);
  });

  it('measures session setup from the upgrade request to the catch-up written, registration connections apart', async () => {
    const system = await startGateway({
      dispatch: (real) =>
        fetchEach(real, async (request) => {
          const response = await real.fetchPending(request);
          await new Promise((resolve) => setTimeout(resolve, 100));
          return response;
        }),
    });
    // A registration connection: its catch-up (100 ms) ends before the session's below, and is not counted.
    const registering = system.client();
    await registering.device.connect();

    const device = await system.registerDevice();
    const offline = await system.push(device.token, 'offline');
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await waitFor(() => raw.delivered.includes(offline.msgId), 'the offline message');
    const { count, sum } = await system.histogram('gateway_session_setup_seconds', {});
    expect(count).toBe(1);
    // At least the catch-up's 100 ms; far less than any timeout.
    expect(sum).toBeGreaterThanOrEqual(0.1);
    expect(sum).toBeLessThan(5);
  });

  it('skips window messages the device says it already processed', async () => {
    const system = await startGateway();
    const device = await system.registerDevice();
    const first = await system.push(device.token, 'seen');
    const second = await system.push(device.token, 'new');
    const raw = await openRaw(system.url, system.sessionHeaders(device, first.msgId));
    await connected(raw);
    await waitFor(() => raw.delivered.length >= 1, 'the unseen message');
    await raw.roundTrip();
    expect(raw.delivered).toEqual([second.msgId]);
  });

  it('tells the device in the first Deliver of a catch-up how many messages it lost, even with none to deliver', async () => {
    // Dispatch's count per token, handed out once as the store does.
    const lost = new Map<string, number>();
    const system = await startGateway({
      dispatch: (real) =>
        fetchEach(real, async (request) => {
          const response = await real.fetchPending(request);
          const dropped = lost.get(request.token) ?? 0;
          lost.delete(request.token);
          return { ...response, dropped };
        }),
    });
    const { accessId } = system.app;
    const withMessages = await system.registerDevice();
    await system.stores.inboxes.append(accessId, withMessages.token, pushMessage(1), 2, Date.now());
    await system.stores.inboxes.append(accessId, withMessages.token, pushMessage(2), 2, Date.now());
    lost.set(withMessages.token, 3);
    const raw = await openRaw(system.url, system.sessionHeaders(withMessages));
    await connected(raw);
    await waitFor(() => raw.delivered.length >= 2, 'the window');
    // A live message afterwards carries no count.
    await system.stores.inboxes.append(accessId, withMessages.token, pushMessage(3), 2, Date.now());
    publishTargeted(system, withMessages.token, pushMessage(3), { previousMsgId: 2 });
    await waitFor(() => raw.delivered.length >= 3, 'the live message');
    const delivers = raw.frames.flatMap((f) => (f.body?.$case === 'deliver' ? [f.body.value] : []));
    expect(delivers.map((d) => ({ ids: d.messages.map((m) => m.msgId), dropped: d.dropped }))).toEqual([
      { ids: [1, 2], dropped: 3 },
      { ids: [3], dropped: undefined },
    ]);

    // Nothing left to deliver, but messages were lost: a Deliver with the count alone, which the SDK reports.
    const emptyWindow = await system.registerDevice();
    lost.set(emptyWindow.token, 2);
    const { device, received } = system.client({ session: emptyWindow });
    const drops: number[] = [];
    device.on('dropped', (count) => drops.push(count));
    await device.connect();
    await waitFor(() => drops.length === 1, 'the dropped count');
    await device.ping();
    expect(drops).toEqual([2]);
    expect(received).toEqual([]);

    // With nothing lost and nothing pending, no Deliver at all.
    const quiet = await openRaw(system.url, system.sessionHeaders(await system.registerDevice()));
    await connected(quiet);
    await quiet.roundTrip();
    expect(quiet.frames.map((f) => f.body?.$case)).toEqual(['connected', 'pong']);
  });

  it('keeps a session whose catch-up finds dispatch unavailable, retrying until it answers, with live messages after', async () => {
    // The first call fails as a whole, the second for this request alone, the third answers.
    let calls = 0;
    const requests: FetchPendingRequest[] = [];
    const system = await startGateway({
      dispatch: (real) => {
        const perItem = fetchEach(real, async (request) => {
          if (calls === 2) throw new PushdError('UNAVAILABLE', 'the store timed out on this device (test)');
          return real.fetchPending(request);
        });
        return {
          ...perItem,
          fetchPendingBatch: async (batch, callOptions) => {
            calls++;
            requests.push(...batch.requests);
            if (calls === 1) throw new PushdError('UNAVAILABLE', 'dispatch overloaded (test)');
            return perItem.fetchPendingBatch(batch, callOptions);
          },
        };
      },
    });
    const device = await system.registerDevice(Platform.PLATFORM_IOS);
    await system.stores.tags.add(system.app.accessId, [{ token: device.token, index: 0 }], ['vip'], {
      perDevice: 100,
      perApp: 10_000,
    });
    const offline = await system.push(device.token, 'while offline');
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await connected(raw);
    await waitFor(
      () => raw.delivered.includes(offline.msgId),
      'the offline message after two failed fetches',
    );
    const live = await system.push(device.token, 'live');
    await waitFor(() => raw.delivered.includes(live.msgId), 'the live message');
    expect(raw.delivered).toEqual([offline.msgId, live.msgId]);
    expect(raw.socket.readyState).toBe(WebSocket.OPEN);
    expect(await system.metric('gateway_catch_up_retries_total')).toBe(2);
    // Each call tells dispatch what the gateway knows of the device: no registry call, no tag read there.
    expect(requests).toHaveLength(3);
    expect(requests[2]?.device).toMatchObject({ platform: Platform.PLATFORM_IOS, userTags: ['vip'] });
    expect(requests[2]?.device?.registeredAtMs).toBeGreaterThan(0);
  });

  it('closes a session whose catch-up fails for good (not a transient error) with UNAVAILABLE', async () => {
    const system = await startGateway({
      dispatch: (real) =>
        fetchEach(real, async () => {
          throw new PushdError('PERMISSION_DENIED', 'wrong cluster token (test)');
        }),
    });
    const raw = await openRaw(system.url, system.sessionHeaders(await system.registerDevice()));
    expect((await raw.closed).reason).toBe('UNAVAILABLE');
    expect(await system.metric('gateway_catch_up_retries_total')).toBe(0);
  });

  it('ignores a flood of acks of made-up ids and clicks past the per-session budget, never acks of its deliveries', async () => {
    const system = await startGateway();
    const events: Event[] = [];
    system.bus.subscribe(subjects.events('gateway'), (data) =>
      events.push(...EventBatch.decode(data).events),
    );
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.caughtUp(device.token);
    // 1,000 ids never delivered here (the most one Ack may carry): 128 are let through.
    raw.send({
      id: 0,
      body: { $case: 'ack', value: { msgIds: Array.from({ length: 1000 }, (_, i) => i + 1) } },
    });
    raw.send({ id: 0, body: { $case: 'click', value: { msgId: 5, pushId: '77' } } });
    await raw.roundTrip();
    expect(await system.metric('gateway_device_events_ignored_total', { type: 'ack' })).toBe(872);
    expect(await system.metric('gateway_device_events_ignored_total', { type: 'click' })).toBe(1);
    // A message delivered on this session is acknowledged whatever the budget.
    const pushed = await system.push(device.token, 'counted');
    await waitFor(() => raw.delivered.includes(pushed.msgId), 'the push');
    raw.send({ id: 0, body: { $case: 'ack', value: { msgIds: [pushed.msgId] } } });
    await raw.roundTrip();
    await system.bus.flush();
    await waitFor(
      () => events.some((e) => e.type === EventType.EVENT_TYPE_ARRIVED && e.pushId === pushed.pushId),
      'the arrival of the push',
    );
    const arrivals = events.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED);
    expect(arrivals.filter((e) => e.pushId === '')).toHaveLength(128);
    expect(events.some((e) => e.type === EventType.EVENT_TYPE_CLICKED)).toBe(false);
  });

  it('turns acks into ARRIVED events carrying the push id, and dispatch then empties the window', async () => {
    const system = await startGateway();
    const events: Event[] = [];
    system.bus.subscribe(subjects.events('gateway'), (data) =>
      events.push(...EventBatch.decode(data).events),
    );
    const consumer = new DispatchEventConsumer({
      bus: system.bus,
      inboxes: system.stores.inboxes,
      devices: system.stores.devices,
      metrics: system.dispatchMetrics,
      logger: silentLogger(),
    });
    consumer.start();
    cleanups.push(() => consumer.stop());

    const registered = await system.registerDevice(Platform.PLATFORM_IOS);
    const offline = await system.push(registered.token, 'while offline');
    const { device, received } = system.client({ session: registered });
    await device.connect();
    // iOS keeps one message: push the next only once the first was delivered from the window.
    await waitFor(() => received.length >= 1, 'the offline message');
    const live = await system.push(registered.token, 'while online');
    await waitFor(() => received.length >= 2, 'both messages');
    expect(received.map((m) => m.msgId)).toEqual([offline.msgId, live.msgId]);

    // SENT events (the offline message, counted where it was delivered) share the subject.
    const arrived = () => events.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED);
    await waitFor(() => arrived().length >= 2, 'two ARRIVED events');
    const byMsgId = new Map(arrived().map((e) => [e.msgId, e]));
    for (const result of [offline, live]) {
      expect(byMsgId.get(result.msgId)).toMatchObject({
        type: EventType.EVENT_TYPE_ARRIVED,
        accessId: system.app.accessId,
        tokens: [registered.token],
        platform: Platform.PLATFORM_IOS,
        msgId: result.msgId,
        pushId: result.pushId,
        // Targeted messages are in the window: dispatch must remove them.
        windowless: false,
      });
    }
    const pending = () =>
      system.dispatch.fetchPending(
        { accessId: system.app.accessId, token: registered.token, afterMsgId: 0 },
        cluster(),
      );
    await waitFor(
      async () => (await pending()).messages.length === 0,
      'the acked messages to leave the window',
    );
  });

  it("puts the message's send time in ARRIVED events, and turns clicks into CLICKED events for their push", async () => {
    const system = await startGateway();
    const events: Event[] = [];
    system.bus.subscribe(subjects.events('gateway'), (data) =>
      events.push(...EventBatch.decode(data).events),
    );
    const registered = await system.registerDevice(Platform.PLATFORM_IOS);
    const raw = await openRaw(system.url, system.sessionHeaders(registered));
    await connected(raw);
    const first = await system.push(registered.token, 'one');
    const second = await system.push(registered.token, 'two');
    await waitFor(() => raw.delivered.length === 2, 'both messages');
    const sentAtMs = raw.frames.flatMap((f) =>
      f.body?.$case === 'deliver' ? f.body.value.messages.map((m) => m.sentAtMs) : [],
    );
    // Clicked before its ack: the gateway knows its push. Then acked, then clicked naming its push.
    raw.send({ id: 0, body: { $case: 'click', value: { msgId: first.msgId } } });
    raw.send({ id: 0, body: { $case: 'ack', value: { msgIds: [first.msgId, second.msgId] } } });
    raw.send({ id: 0, body: { $case: 'click', value: { msgId: second.msgId, pushId: second.pushId } } });
    // Acked and no push id: nothing to count it under.
    raw.send({ id: 0, body: { $case: 'click', value: { msgId: first.msgId } } });
    await raw.roundTrip();
    await waitFor(() => events.length >= 4, 'two arrivals and two clicks');
    const device = {
      accessId: system.app.accessId,
      token: registered.token,
      platform: Platform.PLATFORM_IOS,
    };
    const arrival = { accessId: device.accessId, tokens: [device.token], platform: device.platform };
    const arrivals = events.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED);
    expect(arrivals).toMatchObject([
      { ...arrival, msgId: first.msgId, pushId: first.pushId, sentAtMs: sentAtMs[0] },
      { ...arrival, msgId: second.msgId, pushId: second.pushId, sentAtMs: sentAtMs[1] },
    ]);
    // Each device's arrival time rides with its token.
    for (const event of arrivals) expect(event.tokensAtMs).toEqual([event.atMs]);
    expect(events.filter((e) => e.type === EventType.EVENT_TYPE_CLICKED)).toMatchObject([
      { ...device, msgId: first.msgId, pushId: first.pushId },
      { ...device, msgId: second.msgId, pushId: second.pushId },
    ]);
    expect(events.every((e) => e.atMs > 0)).toBe(true);
    expect(await system.metric('gateway_clicks_unattributed_total')).toBe(1);
    expect(await system.metric('gateway_frames_in_total', { type: 'click' })).toBe(3);
  });

  it.each([
    ['a msg_id of 0', { msgId: 0 }, 'FRAME_MALFORMED'],
    ['a push_id over 64 characters', { msgId: 1, pushId: 'x'.repeat(65) }, 'FRAME_MALFORMED'],
  ])('closes a connection that sends a click with %s', async (_name, click, code) => {
    const system = await startGateway();
    const raw = await openRaw(system.url, system.sessionHeaders(await system.registerDevice()));
    await connected(raw);
    raw.send({ id: 3, body: { $case: 'click', value: click } });
    expect((await raw.closed).reason).toBe(code);
  });

  it('closes a registration connection that clicks before Register with PROTOCOL_VIOLATION', async () => {
    const system = await startGateway();
    const raw = await openRaw(system.url, {
      'x-pushd-access-id': String(system.app.accessId),
      'x-pushd-access-key': system.app.accessKey,
    });
    raw.send({ id: 0, body: { $case: 'click', value: { msgId: 1, pushId: '1' } } });
    expect((await raw.closed).reason).toBe('PROTOCOL_VIOLATION');
  });
});

/** Pushes to an audience and waits until it was applied. */
async function pushTo(system: Awaited<ReturnType<typeof startGateway>>, request: Partial<PushRequest>) {
  const result = await system.dispatch.push(
    {
      accessId: 0,
      audience: { target: { $case: 'all', value: {} } },
      message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content: 'x', customContent: {} },
      platform: Platform.PLATFORM_UNSPECIFIED,
      ...request,
    },
    system.app.auth(),
  );
  await waitFor(
    async () =>
      (await system.stores.pushes.get(system.app.accessId, result.pushId))?.status ===
      PushStatus.PUSH_STATUS_DONE,
    `push ${result.pushId} applied`,
  );
  return result.msgId;
}

const tagList = (tags: string[], op = 'OR'): Partial<PushRequest> => ({
  audience: { target: { $case: 'tags', value: { form: { $case: 'tagList', value: { tags, op } } } } },
});

describe('Gateway catch-up order', () => {
  type Answer = (request: FetchPendingRequest, real: DispatchClient) => Promise<FetchPendingResponse>;

  /**
   * A gateway whose catch-ups take their answers from `answers` in turn (the real FetchPending once it is
   * empty), so that a test can set what a read found and what was published while it ran; `interrupt()`
   * tells it that its bus was interrupted, as NatsBus does once reconnected.
   */
  async function scripted(options: Pick<StartOptions, 'registry' | 'gatewayTags'> = {}) {
    const answers: Answer[] = [];
    const interruptionListeners = new Set<() => void>();
    const system = await startGateway({
      ...options,
      dispatch: (real) =>
        fetchEach(real, (request) => {
          const answer = answers.shift();
          return answer === undefined ? real.fetchPending(request) : answer(request, real);
        }),
      gatewayBus: (real) => ({
        ...withDurablePublish(real, (publish, ...args) => publish(...args)),
        onInterruption: (listener) => {
          interruptionListeners.add(listener);
          return () => interruptionListeners.delete(listener);
        },
      }),
    });
    const interrupt = () => {
      for (const listener of interruptionListeners) listener();
    };
    const { accessId } = system.app;
    const append = (token: string, msgId: number) =>
      system.stores.inboxes.append(accessId, token, pushMessage(msgId), 2, Date.now());
    /** Gives the device a tag in the tag store, announcing nothing (as if the announcement were lost). */
    const tagSilently = async (token: string, tag: string) => {
      const index = (await system.stores.devices.get(accessId, token))?.index ?? -1;
      await system.stores.tags.add(accessId, [{ token, index }], [tag], { perDevice: 100, perApp: 10_000 });
    };
    const delivers = (raw: RawDevice) =>
      raw.frames.flatMap((f) =>
        f.body?.$case === 'deliver'
          ? [{ ids: f.body.value.messages.map((m) => m.msgId), dropped: f.body.value.dropped ?? 0 }]
          : [],
      );
    /** Waits for `count` messages on `raw`, then for a round trip: nothing more was on its way. */
    const received = async (raw: RawDevice, count: number, what: string) => {
      await waitFor(() => raw.delivered.length >= count, what);
      await raw.roundTrip();
    };
    return { ...system, answers, append, tagSilently, delivers, received, interrupt, interruptionListeners };
  }

  it("matches a tag push that came while the session's tags were being read on those tags, not on none", async () => {
    const read = heldCall();
    const system = await scripted({
      gatewayTags: (real) =>
        new Proxy(real, {
          get(target, property, receiver) {
            const value = Reflect.get(target, property, receiver);
            if (typeof value !== 'function') return value;
            if (property !== 'list') return value.bind(target);
            return async (...args: unknown[]) => {
              await read.hold();
              return value.apply(target, args);
            };
          },
        }),
    });
    const vip = await system.registerDevice();
    await system.tagSilently(vip.token, 'vip');
    // The device holds the tag. While its session reads its tags, an online-only push to 'vip' arrives (in
    // no log entry: only its live copy, buffered meanwhile, can reach the device).
    const opening = openRaw(system.url, system.sessionHeaders(vip));
    await read.reached;
    await publishBroadcast(system, 11, 0, { tags: ['vip'], onlineOnly: true });
    await system.bus.flush();
    read.release();
    const raw = await opening;
    await system.received(raw, 1, 'the online-only push to vip');
    expect(system.delivers(raw)).toEqual([{ ids: [11], dropped: 0 }]);
  });

  it('merges a targeted message the window read missed with a later broadcast the log read found, by id', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    // The window is read first; then 10 is appended and published, 11 logged and published, and only
    // then is the log read: the answer holds 11 but not 10, whose live copy waits in the buffer.
    system.answers.push(async (request, real) => {
      const read = await real.fetchPending(request);
      await system.append(device.token, 10);
      publishTargeted(system, device.token, pushMessage(10));
      await publishBroadcast(system, 11, 0);
      await system.bus.flush();
      return { ...read, messages: [...read.messages, pushMessage(11)], lastBroadcastId: 11 };
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.received(raw, 2, 'messages 10 and 11');
    expect(system.delivers(raw)).toEqual([{ ids: [10, 11], dropped: 0 }]);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(0);
  });

  it('delivers an online-only message buffered behind a fetch before the later window message it found', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    // 10 is online only (in no window); 11 was appended before the window was read.
    system.answers.push(async (request, real) => {
      publishTargeted(system, device.token, pushMessage(10), { onlineOnly: true });
      await system.append(device.token, 11);
      publishTargeted(system, device.token, pushMessage(11));
      await system.bus.flush();
      return real.fetchPending(request);
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.received(raw, 2, 'messages 10 and 11');
    expect(system.delivers(raw)).toEqual([{ ids: [10, 11], dropped: 0 }]);
    // Online only is no link of the window chain: 12 chaining onto 11 follows without a fetch.
    await system.append(device.token, 12);
    publishTargeted(system, device.token, pushMessage(12), { previousMsgId: 11 });
    await waitFor(() => raw.delivered.length >= 3, 'message 12');
    expect(raw.delivered).toEqual([10, 11, 12]);
    expect(await system.metric('gateway_gap_refetches_total')).toBe(0);
  });

  it('keeps the push id of every message of a full catch-up for its ack, so that each counts as arrived', async () => {
    const system = await scripted();
    const events: Event[] = [];
    system.bus.subscribe(subjects.events('gateway'), (data) =>
      events.push(...EventBatch.decode(data).events),
    );
    const device = await system.registerDevice();
    // As many live messages as a session buffers arrive while its fetch runs: one Deliver carries them all.
    const ids = Array.from({ length: MAX_BUFFERED_LIVE }, (_, i) => 10 + i);
    system.answers.push(async (request, real) => {
      for (const msgId of ids)
        publishTargeted(system, device.token, pushMessage(msgId), { onlineOnly: true });
      await system.bus.flush();
      return real.fetchPending(request);
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.received(raw, ids.length, 'the buffered messages');
    expect(system.delivers(raw)).toHaveLength(1);
    raw.send({ id: 0, body: { $case: 'ack', value: { msgIds: ids } } });
    const arrived = () => events.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED);
    await waitFor(() => arrived().length >= ids.length, 'an ARRIVED event per ack');
    expect(arrived().map((e) => [e.msgId, e.pushId])).toEqual(ids.map((msgId) => [msgId, `p${msgId}`]));
    expect(await system.metric('gateway_device_events_ignored_total')).toBe(0);
  });

  it('holds back what follows a message still missing after a fetch, and fetches it before writing on', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    // The window read found nothing; 11 and 12 were appended after it, but only 12 reached the gateway
    // (11 is on its way, or lost on the bus); the log read found broadcast 13. Writing 13 would pass 11.
    system.answers.push(async (request, real) => {
      const read = await real.fetchPending(request);
      await system.append(device.token, 11);
      await system.append(device.token, 12);
      publishTargeted(system, device.token, pushMessage(12), { previousMsgId: 11 });
      await publishBroadcast(system, 13, 0);
      await system.bus.flush();
      return { ...read, messages: [pushMessage(13)], lastBroadcastId: 13 };
    });
    // The second read finds 11 (dispatch's capacity, which would keep the newest 2 of the 3, is left out).
    system.answers.push(async (request) => {
      const window = await system.stores.inboxes.pending(
        system.app.accessId,
        device.token,
        request.afterMsgId,
        Date.now(),
      );
      return { ...window, messages: [...window.messages, pushMessage(13)], lastBroadcastId: 13 };
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.received(raw, 3, 'messages 11 to 13');
    expect(system.delivers(raw)).toEqual([{ ids: [11, 12, 13], dropped: 0 }]);
    expect(await system.metric('gateway_gap_refetches_total')).toBe(1);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(0);
  });

  it('reports a missing message that a second fetch does not find either as dropped, instead of fetching for ever', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    // 12 chains onto 11, which no read finds (the window was cleared, say): the window's last id is 10.
    const nothing = { messages: [], lastMsgId: 10, lastBroadcastId: 0, dropped: 0 };
    system.answers.push(async () => {
      publishTargeted(system, device.token, pushMessage(12), { previousMsgId: 11 });
      await system.bus.flush();
      return nothing;
    });
    system.answers.push(async () => nothing);
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.received(raw, 1, 'message 12');
    expect(system.delivers(raw)).toEqual([{ ids: [12], dropped: 1 }]);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(1);
    expect(await system.metric('gateway_gap_refetches_total')).toBe(1);
  });

  it('tells the device of a targeted message lost on the bus before a broadcast that was written past it', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.caughtUp(device.token);
    // 10 is lost on the bus; broadcast 11 cannot name it and is written; 12 names 10 as its predecessor.
    await system.append(device.token, 10);
    await publishBroadcast(system, 11, 0);
    await waitFor(() => raw.delivered.length >= 1, 'broadcast 11');
    await system.append(device.token, 12);
    publishTargeted(system, device.token, pushMessage(12), { previousMsgId: 10, previousBroadcastId: 11 });
    await system.received(raw, 2, 'message 12');
    // 10 can no longer come in order (the device drops what is not above 11): the app is told to resync.
    expect(system.delivers(raw)).toEqual([
      { ids: [11], dropped: 0 },
      { ids: [12], dropped: 1 },
    ]);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(1);
  });

  it('makes every live session fetch what it missed when the bus was interrupted, before a later broadcast', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.caughtUp(device.token);
    // 10 was published while the gateway was away from NATS: lost. Broadcast 11 comes after it is back.
    await system.stores.inboxes.append(system.app.accessId, device.token, pushMessage(10), 2, Date.now());
    system.interrupt();
    await waitFor(async () => (await system.metric('gateway_interruption_resyncs_total')) === 1, 'resync');
    await publishBroadcast(system, 11, 0);
    await system.received(raw, 2, 'messages 10 and 11');
    expect(raw.delivered).toEqual([10, 11]);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(0);
    // A stopped gateway listens no more.
    await system.stop();
    expect(system.interruptionListeners.size).toBe(0);
  });

  it("reads a device's tags again after the bus was interrupted: a tag change announced meanwhile is lost", async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.caughtUp(device.token);
    // The device got tag 'vip' while the gateway was away from NATS: its DeviceTagsChanged is lost.
    await system.tagSilently(device.token, 'vip');
    system.interrupt();
    await waitFor(
      async () => (await system.metric('gateway_tag_reloads_total')) === 1,
      'the tags read again',
    );
    await publishBroadcast(system, 11, 0, { tags: ['vip'] });
    await system.received(raw, 1, 'the tag push to vip');
    expect(raw.delivered).toEqual([11]);
  });

  it("takes the window's messages up to the device's last_msg_id as arrived on its first fetch only", async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    const { accessId } = system.app;
    const append = (msgId: number) =>
      system.stores.inboxes.append(accessId, device.token, pushMessage(msgId), 4, Date.now());
    const window = async () =>
      (await system.stores.inboxes.pending(accessId, device.token, 0, Date.now())).messages.map(
        (m) => m.msgId,
      );
    // 10 reached the device, whose ack was lost with its connection; 11 did not reach it.
    await append(10);
    await append(11);
    const raw = await openRaw(system.url, system.sessionHeaders(device, 10));
    await system.received(raw, 1, 'message 11');
    expect(await window()).toEqual([11]);
    // A later fetch (12 lost on the bus, 13 shows the gap) starts after what the gateway wrote, which
    // may not have reached the device yet (this one never acks): 11 stays in the window.
    await append(12);
    await append(13);
    publishTargeted(system, device.token, pushMessage(13), { previousMsgId: 12 });
    await system.received(raw, 3, 'messages 12 and 13');
    expect(raw.delivered).toEqual([11, 12, 13]);
    expect(await window()).toEqual([11, 12, 13]);
  });

  it('closes the sessions of devices unregistered while the bus was interrupted, and only those', async () => {
    const system = await scripted();
    const { accessId } = system.app;
    const againId = generateDeviceId();
    const [gone, again, kept] = await Promise.all([
      system.registerDevice(),
      system.registerDevice(Platform.PLATFORM_ANDROID, againId),
      system.registerDevice(),
    ]);
    const raws = await Promise.all(
      [gone, again, kept].map((device) => openRaw(system.url, system.sessionHeaders(device))),
    );
    for (const device of [gone, again, kept]) await system.caughtUp(device.token);
    // While the gateway was away from NATS, `gone` was unregistered and `again` unregistered and registered
    // again (a new index): both UNREGISTERED events are lost.
    await system.stores.devices.remove(accessId, gone.token);
    await system.stores.devices.remove(accessId, again.token);
    expect((await system.registerDevice(Platform.PLATFORM_ANDROID, againId)).token).toBe(again.token);
    system.interrupt();
    for (const raw of raws.slice(0, 2)) {
      expect(await raw.closed).toMatchObject({ code: 4410, reason: 'DEVICE_UNREGISTERED' });
    }
    expect(await system.metric('gateway_disconnects_total', { reason: 'DEVICE_UNREGISTERED' })).toBe(2);
    // The device still registered keeps its session and gets what follows.
    await publishBroadcast(system, 11, 0);
    await system.received(raws[2]!, 1, 'broadcast 11');
    expect(system.gateway.sessionCount).toBe(1);
  });

  it('keeps the sessions open when the registry cannot say which devices are still registered', async () => {
    const system = await scripted({
      registry: (real) => ({
        ...real,
        getDevices: async () => {
          throw new PushdError('UNAVAILABLE', 'the registry is restarting');
        },
      }),
    });
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.caughtUp(device.token);
    await system.stores.inboxes.append(system.app.accessId, device.token, pushMessage(10), 2, Date.now());
    system.interrupt();
    // The resync itself goes on: the message lost during the interruption is fetched.
    await system.received(raw, 1, 'message 10');
    expect(raw.delivered).toEqual([10]);
    expect(system.gateway.sessionCount).toBe(1);
    expect(await system.metric('gateway_disconnects_total', { reason: 'DEVICE_UNREGISTERED' })).toBe(0);
  });

  it('writes a buffered tag push the device matches on tags changed while its fetch ran', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    const { accessId } = system.app;
    // While the catch-up's fetch runs (carrying the device's tags: none), the device gets tag 'vip' (the
    // gateway is told and reads them again), and a tag push to 'vip' is logged and published. Dispatch
    // matched the log on the tags the fetch carried, so its answer covers 11 without holding it.
    system.answers.push(async (request, real) => {
      await system.tagSilently(device.token, 'vip');
      system.bus.publish(
        subjects.nodeTags(NODE_ID),
        DeviceTagsChanged.encode({ accessId, tokens: [device.token] }).finish(),
      );
      await waitFor(
        async () => (await system.metric('gateway_tag_reloads_total')) === 1,
        'the tags read again',
      );
      await publishBroadcast(system, 11, 0, { tags: ['vip'] });
      await system.bus.flush();
      const read = await real.fetchPending(request);
      expect(read).toMatchObject({ messages: [], lastBroadcastId: 11 });
      return read;
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.received(raw, 1, 'the tag push to vip');
    expect(system.delivers(raw)).toEqual([{ ids: [11], dropped: 0 }]);
  });

  it('fetches once more when the bus was interrupted while a catch-up read the window', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    // The window is read; then 10 is appended and published while the gateway is away from NATS (lost),
    // and NATS comes back before the answer does.
    system.answers.push(async (request, real) => {
      const read = await real.fetchPending(request);
      await system.append(device.token, 10);
      system.interrupt();
      return read;
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await waitFor(() => raw.delivered.length >= 1, 'message 10');
    await publishBroadcast(system, 11, 0);
    await waitFor(() => raw.delivered.length >= 2, 'broadcast 11');
    expect(raw.delivered).toEqual([10, 11]);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(0);
  });

  it("writes an online-only broadcast that a catch-up's log read covers but cannot hold, and an online-only message applied twice once", async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    // Online-only broadcast 10 moves the log's head (the read's lastBroadcastId is 10) in no entry; the
    // online-only targeted 11 was applied twice (a dispatch failover) and so came twice.
    system.answers.push(async (request, real) => {
      await publishBroadcast(system, 10, 0, { onlineOnly: true });
      publishTargeted(system, device.token, pushMessage(11), { previousBroadcastId: 10, onlineOnly: true });
      publishTargeted(system, device.token, pushMessage(11), { previousBroadcastId: 10, onlineOnly: true });
      await system.bus.flush();
      const read = await real.fetchPending(request);
      expect(read.lastBroadcastId).toBe(10);
      return read;
    });
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.received(raw, 2, 'messages 10 and 11');
    expect(system.delivers(raw)).toEqual([{ ids: [10, 11], dropped: 0 }]);
  });

  it('counts a passed message applied again (chained onto itself) as dropped once', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.caughtUp(device.token);
    await publishBroadcast(system, 11, 0);
    await waitFor(() => raw.delivered.length >= 1, 'broadcast 11');
    await system.append(device.token, 10);
    publishTargeted(system, device.token, pushMessage(10), { previousMsgId: 10 });
    await waitFor(() => system.delivers(raw).length >= 2, 'the count');
    await raw.roundTrip();
    expect(system.delivers(raw)).toEqual([
      { ids: [11], dropped: 0 },
      { ids: [], dropped: 1 },
    ]);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(1);
  });

  it('reports a targeted message published after a later one was written as dropped, at once', async () => {
    const system = await scripted();
    const device = await system.registerDevice();
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await system.caughtUp(device.token);
    await publishBroadcast(system, 11, 0);
    await waitFor(() => raw.delivered.length >= 1, 'broadcast 11');
    // A stalled dispatch instance publishes 10 after its partition moved on: too late to write.
    await system.append(device.token, 10);
    publishTargeted(system, device.token, pushMessage(10));
    await waitFor(() => system.delivers(raw).length >= 2, 'the count');
    expect(system.delivers(raw)).toEqual([
      { ids: [11], dropped: 0 },
      { ids: [], dropped: 1 },
    ]);
    // Its copy is a duplicate now, not a second loss.
    publishTargeted(system, device.token, pushMessage(10));
    await waitFor(
      async () => (await system.metric('gateway_duplicates_dropped_total')) >= 1,
      'the copy to be dropped',
    );
    await raw.roundTrip();
    expect(system.delivers(raw)).toHaveLength(2);
    expect(await system.metric('gateway_late_messages_dropped_total')).toBe(1);
  });
});

describe('Gateway broadcasts and tag pushes', () => {
  /** Registers a device with a version and user tags, connects it raw, and waits for its Connected frame. */
  async function online(
    system: Awaited<ReturnType<typeof startGateway>>,
    platform: Platform,
    tags: string[],
    appVersion = '1.0',
  ) {
    const registered = await system.registry.registerDevice(
      {
        accessId: system.app.accessId,
        accessKey: system.app.accessKey,
        deviceId: generateDeviceId(),
        platform,
        appVersion,
        osVersion: '',
        locale: '',
        sdkVersion: '',
      },
      cluster(),
    );
    const device = { token: registered.device?.token ?? '', credential: registered.credential };
    const index = registered.device?.index ?? 0;
    if (tags.length > 0) {
      await system.stores.tags.add(system.app.accessId, [{ token: device.token, index }], tags, {
        perDevice: 100,
        perApp: 10_000,
      });
    }
    const raw = await openRaw(system.url, system.sessionHeaders(device));
    await connected(raw);
    await system.caughtUp(device.token);
    return { ...device, index, raw };
  }

  it("merges a broadcast's acks per message and platform into windowless ARRIVED events, and its SENT likewise", async () => {
    const system = await startGateway();
    const events: Event[] = [];
    system.bus.subscribe(subjects.events('gateway'), (data) =>
      events.push(...EventBatch.decode(data).events),
    );
    const androids = [
      await online(system, Platform.PLATFORM_ANDROID, []),
      await online(system, Platform.PLATFORM_ANDROID, []),
      await online(system, Platform.PLATFORM_ANDROID, []),
    ];
    const ios = await online(system, Platform.PLATFORM_IOS, []);
    const msgId = await pushTo(system, {});
    for (const device of [...androids, ios]) {
      await waitFor(() => device.raw.delivered.includes(msgId), 'the broadcast');
    }
    // Acks arriving in the same turn of the event loop (here one write each, read together).
    for (const device of [...androids, ios]) {
      device.raw.send({ id: 0, body: { $case: 'ack', value: { msgIds: [msgId] } } });
    }
    const arrivedTokens = () =>
      events.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED).flatMap((e) => e.tokens);
    await waitFor(() => arrivedTokens().length === 4, 'four arrivals');
    const arrivals = events.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED);
    // Never one event per device and never a device twice; every event merged and windowless.
    expect(new Set(arrivedTokens())).toEqual(new Set([...androids, ios].map((d) => d.token)));
    for (const event of arrivals) {
      expect(event).toMatchObject({ msgId, token: '', windowless: true });
      expect(event.tokensAtMs).toHaveLength(event.tokens.length);
      expect(event.tokensAtMs.every((at) => at > 0)).toBe(true);
    }
    expect(arrivals.find((e) => e.platform === Platform.PLATFORM_IOS)?.tokens).toEqual([ios.token]);
    const sent = events.filter((e) => e.type === EventType.EVENT_TYPE_SENT && e.msgId === msgId);
    expect(sent.map((e) => [e.platform, [...e.tokens].sort()])).toEqual(
      expect.arrayContaining([
        [Platform.PLATFORM_ANDROID, androids.map((d) => d.token).sort()],
        [Platform.PLATFORM_IOS, [ios.token]],
      ]),
    );
    expect(sent).toHaveLength(2);
  });

  it('delivers a tag push to the online devices it matches, on the platform it names, and all to everyone', async () => {
    const system = await startGateway();
    const sportsAndroid = await online(system, Platform.PLATFORM_ANDROID, ['sports']);
    const sportsIos = await online(system, Platform.PLATFORM_IOS, ['sports']);
    const newVersion = await online(system, Platform.PLATFORM_ANDROID, [], '2.0');

    const sportsOnAndroid = await pushTo(system, {
      ...tagList(['sports']),
      platform: Platform.PLATFORM_ANDROID,
    });
    const onVersion2 = await pushTo(system, tagList(['pushd:app_version:2.0']));
    const notSports = await pushTo(system, {
      audience: {
        target: {
          $case: 'tags',
          value: {
            form: {
              $case: 'tagRules',
              value: {
                rules: [
                  {
                    tagItems: [
                      { tags: ['sports'], isNot: true, tagsOperator: 'OR', itemsOperator: 'OR', tagType: '' },
                    ],
                    operator: 'OR',
                    isNot: false,
                  },
                ],
              },
            },
          },
        },
      },
    });
    const everyone = await pushTo(system, {});

    for (const device of [sportsAndroid, sportsIos, newVersion]) {
      await waitFor(() => device.raw.delivered.includes(everyone), 'the push to all');
      await device.raw.roundTrip();
    }
    expect(sportsAndroid.raw.delivered).toEqual([sportsOnAndroid, everyone]);
    expect(sportsIos.raw.delivered).toEqual([everyone]);
    expect(newVersion.raw.delivered).toEqual([onVersion2, notSports, everyone]);
    expect(await system.metric('gateway_broadcasts_received_total')).toBe(4);
  });

  it('counts a broadcast as SENT where a device gets it: live, and from the log when it comes back', async () => {
    const system = await startGateway();
    const sent: Event[] = [];
    system.bus.subscribe(subjects.events('gateway'), (data) =>
      sent.push(...EventBatch.decode(data).events.filter((e) => e.type === EventType.EVENT_TYPE_SENT)),
    );
    const live = await online(system, Platform.PLATFORM_ANDROID, []);
    const away = await online(system, Platform.PLATFORM_IOS, []);
    away.raw.socket.close();
    await waitFor(async () => (await system.route(away.token)) === undefined, 'the device to be offline');
    const msgId = await pushTo(system, {});
    await waitFor(() => live.raw.delivered.includes(msgId), 'the live delivery');
    const back = await openRaw(system.url, system.sessionHeaders(away));
    await waitFor(() => back.delivered.includes(msgId), 'the delivery from the log');
    await waitFor(() => sent.length >= 2, 'two SENT events');
    expect(sent.map((e) => ({ msgId: e.msgId, tokens: e.tokens, platform: e.platform }))).toEqual([
      { msgId, tokens: [live.token], platform: Platform.PLATFORM_ANDROID },
      { msgId, tokens: [away.token], platform: Platform.PLATFORM_IOS },
    ]);
    expect(new Set(sent.map((e) => e.pushId)).size).toBe(1);
  });

  it('evaluates a tag push on the tags a device got while online, once the tag service announced them', async () => {
    const system = await startGateway();
    const device = await online(system, Platform.PLATFORM_ANDROID, []);
    const before = await pushTo(system, tagList(['late-tag']));
    await system.stores.tags.add(
      system.app.accessId,
      [{ token: device.token, index: device.index }],
      ['late-tag'],
      {
        perDevice: 100,
        perApp: 10_000,
      },
    );
    system.bus.publish(
      subjects.nodeTags(NODE_ID),
      DeviceTagsChanged.encode({ accessId: system.app.accessId, tokens: [device.token] }).finish(),
    );
    await waitFor(async () => (await system.metric('gateway_tag_reloads_total')) === 1, 'the tag reload');
    const after = await pushTo(system, tagList(['late-tag']));
    await waitFor(() => device.raw.delivered.length >= 1, 'the second tag push');
    await device.raw.roundTrip();
    expect(device.raw.delivered).toEqual([after]);
    expect(before).toBeLessThan(after);
  });

  it("gives each device only its platform's style of a broadcast, encoding it once per platform and encoding", async () => {
    const system = await startGateway();
    const open = async (platform: Platform, protocols?: string[]) => {
      const raw = await openRaw(system.url, system.sessionHeaders(await system.registerDevice(platform)), {
        protocols,
      });
      await connected(raw);
      return raw;
    };
    const androids = [
      await open(Platform.PLATFORM_ANDROID),
      await open(Platform.PLATFORM_ANDROID),
      await open(Platform.PLATFORM_ANDROID, ['pushd.v1.json']),
    ];
    const ios = await open(Platform.PLATFORM_IOS);
    const android = {
      channelId: 'promo',
      builderId: 0,
      ring: 1,
      ringRaw: '',
      vibrate: 0,
      lights: 0,
      clearable: 0,
      icon: 'ic_sale',
      smallIcon: '',
      badge: { change: { $case: 'add' as const, value: 1 } },
      action: { target: { $case: 'openUrl' as const, value: 'https://example.com/sale' } },
    };
    const iosStyle = {
      subtitle: 'Today only',
      badge: { change: { $case: 'set' as const, value: 5 } },
      sound: 'default',
      category: '',
      mutableContent: false,
      contentAvailable: false,
    };
    const encoded = vi.mocked(encodeServerFrame);
    encoded.mockClear();
    const msgId = await pushTo(system, {
      audience: { target: { $case: 'all', value: {} } },
      message: {
        type: MessageType.MESSAGE_TYPE_NOTIFY,
        title: 'Sale',
        content: 'Half price',
        customContent: {},
        collapseId: 'sale',
        android,
        ios: iosStyle,
      },
    });
    for (const raw of [...androids, ios]) {
      await waitFor(() => raw.delivered.includes(msgId), 'the broadcast');
      await raw.roundTrip();
    }
    const received = (raw: RawDevice) =>
      raw.frames.flatMap((f) => (f.body?.$case === 'deliver' ? f.body.value.messages : []));
    for (const raw of androids) {
      const [message] = received(raw);
      expect(message?.message).toEqual({
        type: MessageType.MESSAGE_TYPE_NOTIFY,
        title: 'Sale',
        content: 'Half price',
        customContent: {},
        collapseId: 'sale',
        android,
        ios: undefined,
      });
    }
    expect(received(ios)[0]?.message).toEqual({
      type: MessageType.MESSAGE_TYPE_NOTIFY,
      title: 'Sale',
      content: 'Half price',
      customContent: {},
      collapseId: 'sale',
      android: undefined,
      ios: iosStyle,
    });
    // Android over proto (shared by two sessions), Android over JSON, iOS over proto.
    const delivers = encoded.mock.calls.filter(([frame]) => frame.body?.$case === 'deliver');
    expect(delivers.map(([, encoding]) => encoding).sort()).toEqual(['json', 'proto', 'proto']);
  });

  it('fetches a broadcast it missed before delivering what follows it, targeted or broadcast, in id order', async () => {
    const system = await startGateway();
    const device = await online(system, Platform.PLATFORM_ANDROID, []);
    const { accessId } = system.app;
    const now = Date.now();

    // Broadcast 10 never reaches this gateway; targeted 11 names it as the app's last broadcast.
    await logBroadcast(system, 10, 0);
    await system.stores.inboxes.append(accessId, device.token, pushMessage(11), 2, now);
    publishTargeted(system, device.token, pushMessage(11), { previousBroadcastId: 10 });
    await waitFor(() => device.raw.delivered.length >= 2, 'messages 10 and 11');

    // Broadcast 12 is missed too; broadcast 13, chained to it, arrives.
    await logBroadcast(system, 12, 10);
    await publishBroadcast(system, 13, 12);
    await waitFor(() => device.raw.delivered.length >= 4, 'messages 12 and 13');
    await device.raw.roundTrip();
    expect(device.raw.delivered).toEqual([10, 11, 12, 13]);
    expect(await system.metric('gateway_gap_refetches_total')).toBe(2);
  });
});

describe('Gateway device tags', () => {
  /** A registered device connected with the SDK. */
  async function connectedDevice(system: Awaited<ReturnType<typeof startGateway>>) {
    const device = system.client();
    await device.device.connect();
    const token = device.device.token ?? '';
    const { device: record } = await system.registry.getDevice({ accessId: 0, token }, system.app.auth());
    return { ...device, token, index: record?.index ?? -1 };
  }
  const tagsOf = (system: Awaited<ReturnType<typeof startGateway>>, token: string) =>
    system.stores.tags.list(system.app.accessId, token);
  /** Waits until the device got `msgId`, then makes sure nothing else came before a round trip. */
  const settle = async (device: { device: DeviceClient; received: PushMessage[] }, msgId: number) => {
    await waitFor(() => device.received.some((m) => m.msgId === msgId), `message ${msgId}`);
    await device.device.ping();
  };

  it('adds, removes and replaces the tags a device sends, answering TagsUpdated, and pushes follow them at once', async () => {
    const system = await startGateway();
    const device = await connectedDevice(system);
    const other = await connectedDevice(system);

    await expect(device.device.updateTags('add', ['sports', 'vip'])).resolves.toBe(2);
    expect(await tagsOf(system, device.token)).toEqual(['sports', 'vip']);
    // Evaluated on the new tags as soon as the reply came.
    const sports = await pushTo(system, tagList(['sports']));
    await settle(device, sports);
    await expect(device.device.updateTags('remove', ['sports', 'never-had'])).resolves.toBe(1);
    const sportsAgain = await pushTo(system, tagList(['sports']));
    const vip = await pushTo(system, tagList(['vip']));
    await settle(device, vip);
    expect(device.received.map((m) => m.msgId)).toEqual([sports, vip]);
    expect(sportsAgain).toBeLessThan(vip);

    await expect(device.device.updateTags('replace', ['news', 'local'])).resolves.toBe(2);
    expect(await tagsOf(system, device.token)).toEqual(['local', 'news']);
    await expect(device.device.updateTags('replace', [])).resolves.toBe(0);
    expect(await tagsOf(system, device.token)).toEqual([]);
    // Only the device's own tags changed.
    expect(await tagsOf(system, other.token)).toEqual([]);
    expect(other.received).toEqual([]);
    expect(await system.metric('gateway_frames_in_total', { type: 'updateTags' })).toBe(4);
    expect(device.device.state).toBe('open');
  });

  it('makes a reported location the built-in province and city tags, replacing the previous report', async () => {
    const system = await startGateway();
    const shenzhen = await connectedDevice(system);
    const guangzhou = await connectedDevice(system);
    await expect(shenzhen.device.reportLocation('广东', '深圳')).resolves.toBeUndefined();
    await guangzhou.device.reportLocation('广东', '广州');
    // The location is not a user tag: the device's user tags still fit the limit and are listed alone.
    await expect(shenzhen.device.updateTags('replace', ['vip'])).resolves.toBe(1);
    expect(await tagsOf(system, shenzhen.token)).toEqual(['pushd:city:深圳', 'pushd:province:广东', 'vip']);

    const toShenzhen = await pushTo(system, tagList(['pushd:city:深圳']));
    const toProvince = await pushTo(system, tagList(['pushd:province:广东']));
    await settle(shenzhen, toProvince);
    await settle(guangzhou, toProvince);
    expect(shenzhen.received.map((m) => m.msgId)).toEqual([toShenzhen, toProvince]);
    expect(guangzhou.received.map((m) => m.msgId)).toEqual([toProvince]);

    // Moved: the new city replaces the old one.
    await shenzhen.device.reportLocation('广东', '广州');
    const toGuangzhou = await pushTo(system, tagList(['pushd:city:广州']));
    const toShenzhenAgain = await pushTo(system, tagList(['pushd:city:深圳']));
    await settle(shenzhen, toGuangzhou);
    await settle(guangzhou, toGuangzhou);
    expect(shenzhen.received.map((m) => m.msgId)).toEqual([toShenzhen, toProvince, toGuangzhou]);
    expect(toShenzhenAgain).toBeGreaterThan(toGuangzhou);
    expect(await tagsOf(system, shenzhen.token)).toEqual(['pushd:city:广州', 'pushd:province:广东', 'vip']);
    // An invalid value is refused, naming the field; nothing changes and the connection stays.
    const refused = await shenzhen.device
      .reportLocation('广东', 'two words')
      .catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('city:') });
    expect(shenzhen.device.state).toBe('open');
    expect(await tagsOf(system, shenzhen.token)).toEqual(['pushd:city:广州', 'pushd:province:广东', 'vip']);
  });

  it('answers a refused UpdateTags with an Error frame to its id, changes nothing and keeps the connection', async () => {
    const system = await startGateway({ tagLimits: { perDevice: 3 } });
    const device = await connectedDevice(system);
    await device.device.updateTags('add', ['a', 'b']);

    const overLimit = await device.device.updateTags('add', ['c', 'd']).catch((error: unknown) => error);
    expect(overLimit).toMatchObject({
      code: 'TAG_LIMIT_EXCEEDED',
      message: expect.stringContaining('at most 3 tags'),
    });
    const reserved = await device.device
      .updateTags('add', ['pushd:city:深圳'])
      .catch((error: unknown) => error);
    expect(reserved).toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringContaining('"pushd:"'),
    });
    expect(await tagsOf(system, device.token)).toEqual(['a', 'b']);
    expect(device.device.state).toBe('open');
    expect(device.closes).toEqual([]);
    // Still usable, and a push to the refused tag does not reach it.
    const toC = await pushTo(system, tagList(['c']));
    await expect(device.device.updateTags('add', ['c'])).resolves.toBe(3);
    const toCAgain = await pushTo(system, tagList(['c']));
    await settle(device, toCAgain);
    expect(device.received.map((m) => m.msgId)).toEqual([toCAgain]);
    expect(toC).toBeLessThan(toCAgain);

    // On the wire: the Error carries the request's id, and an unspecified operation is refused the same way.
    const raw = await openRaw(
      system.url,
      system.sessionHeaders({ token: device.token, credential: device.device.credential ?? '' }),
    );
    await connected(raw);
    raw.send({
      id: 21,
      body: { $case: 'updateTags', value: { operation: TagOperation.TAG_OPERATION_ADD, tags: ['d'] } },
    });
    raw.send({
      id: 22,
      body: {
        $case: 'updateTags',
        value: { operation: TagOperation.TAG_OPERATION_UNSPECIFIED, tags: ['d'] },
      },
    });
    await raw.roundTrip();
    await waitFor(() => raw.frames.some((f) => f.id === 22), 'the reply to frame 22');
    expect(raw.frames.filter((f) => f.id === 21 || f.id === 22)).toEqual([
      {
        id: 21,
        body: { $case: 'error', value: { code: 'TAG_LIMIT_EXCEEDED', message: expect.any(String) } },
      },
      {
        id: 22,
        body: {
          $case: 'error',
          value: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('update_tags.operation') },
        },
      },
    ]);
    expect(raw.socket.readyState).toBe(WebSocket.OPEN);
    expect(await tagsOf(system, device.token)).toEqual(['a', 'b', 'c']);
  });

  it('runs the tag frames of a session in the order sent', async () => {
    const system = await startGateway();
    const device = await connectedDevice(system);
    const replies = await Promise.all([
      device.device.updateTags('add', ['x', 'y']),
      device.device.updateTags('remove', ['x']),
      device.device.reportLocation('', '深圳'),
      device.device.updateTags('add', ['x']),
      device.device.updateTags('remove', ['y', 'x']),
    ]);
    expect(replies).toEqual([2, 1, undefined, 2, 0]);
    expect(await tagsOf(system, device.token)).toEqual(['pushd:city:深圳']);
  });

  it('limits the tag and location frames of a session with RATE_LIMITED, keeping the connection', async () => {
    const system = await startGateway({ gateway: { maxTagFramesPerWindow: 2, tagFrameWindowMs: 60_000 } });
    const device = await connectedDevice(system);
    const other = await connectedDevice(system);
    await device.device.updateTags('add', ['a']);
    await device.device.reportLocation('广东', '');
    const limited = await device.device.updateTags('add', ['b']).catch((error: unknown) => error);
    expect(limited).toMatchObject({ code: 'RATE_LIMITED', message: expect.stringContaining('at most 2') });
    expect(device.device.state).toBe('open');
    await device.device.ping();
    expect(await tagsOf(system, device.token)).toEqual(['a', 'pushd:province:广东']);
    // Per session: another device is not limited by this one.
    await expect(other.device.updateTags('add', ['b'])).resolves.toBe(1);
  });

  it('closes a registration connection that sends UpdateTags or ReportLocation before Register with PROTOCOL_VIOLATION', async () => {
    const system = await startGateway();
    const bodies: NonNullable<ClientFrame['body']>[] = [
      { $case: 'updateTags', value: { operation: TagOperation.TAG_OPERATION_ADD, tags: ['a'] } },
      { $case: 'reportLocation', value: { province: '广东', city: '深圳' } },
    ];
    for (const body of bodies) {
      const raw = await openRaw(system.url, {
        'x-pushd-access-id': String(system.app.accessId),
        'x-pushd-access-key': system.app.accessKey,
      });
      raw.send({ id: 5, body });
      expect(await raw.closed).toMatchObject({ code: 4400 });
      expect(raw.frames).toEqual([
        {
          id: 5,
          body: {
            $case: 'error',
            value: { code: 'PROTOCOL_VIOLATION', message: `${body.$case} before registering` },
          },
        },
      ]);
    }
    expect(await system.metric('gateway_disconnects_total', { reason: 'PROTOCOL_VIOLATION' })).toBe(2);
    expect((await system.stores.tags.appTags(system.app.accessId, { limit: 10 })).total).toBe(0);
  });
});

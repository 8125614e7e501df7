import { readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { PushdError } from '@pushd/common';
import {
  type ClientFrame,
  type Connected,
  decodeClientFrame,
  encodeServerFrame,
  encodingOfSubprotocol,
  type FrameEncoding,
  MessageType,
  Platform,
  type PushMessage,
  type ServerFrame,
  TagOperation,
} from '@pushd/proto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import WebSocket, { type RawData, WebSocketServer } from 'ws';
import {
  type ConnectResult,
  DeviceClient,
  type DeviceClientOptions,
  type DeviceCloseEvent,
  SDK_VERSION,
} from './device-client.js';
import { generateDeviceId } from './device-id.js';

/** What a gateway's Registered carries: 40 lowercase hex characters, 43 of base64url. */
const TOKEN = '0123456789abcdef0123456789abcdef01234567';
const CREDENTIAL = 'C'.repeat(43);

/** An unbounded queue whose consumer awaits the next item; the fake gateway hands out connections and frames. */
class Queue<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<(item: T) => void> = [];

  push(item: T): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }

  next(): Promise<T> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift() as T);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  get size(): number {
    return this.items.length;
  }
}

/** The gateway's side of one device connection, driven step by step by a test. */
class GatewayConnection {
  private readonly frames = new Queue<ClientFrame>();
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(
    readonly socket: WebSocket,
    readonly headers: IncomingHttpHeaders,
    readonly encoding: FrameEncoding,
  ) {
    socket.on('message', (data: RawData, isBinary: boolean) => {
      this.frames.push(decodeClientFrame(data as Buffer, isBinary, encoding));
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() }));
    });
  }

  nextFrame(): Promise<ClientFrame> {
    return this.frames.next();
  }

  send(frame: ServerFrame): void {
    this.socket.send(encodeServerFrame(frame, this.encoding));
  }

  sendConnected(fields: Partial<Connected> = {}): void {
    this.send({
      id: 0,
      body: {
        $case: 'connected',
        value: {
          token: TOKEN,
          sessionId: 'session-1',
          heartbeatIntervalMs: 0,
          maxFrameBytes: 65_536,
          ...fields,
        },
      },
    });
  }

  deliver(...msgIds: number[]): void {
    this.send({ id: 0, body: { $case: 'deliver', value: { messages: msgIds.map(pushMessage) } } });
  }

  /** Plays the registration reply: Registered (to frame 1) then Connected. */
  async acceptRegistration(): Promise<ClientFrame> {
    const frame = await this.nextFrame();
    this.send({
      id: frame.id,
      body: { $case: 'registered', value: { token: TOKEN, credential: CREDENTIAL, created: true } },
    });
    this.sendConnected();
    return frame;
  }
}

function pushMessage(msgId: number): PushMessage {
  return {
    msgId,
    pushId: `push-${msgId}`,
    message: {
      type: MessageType.MESSAGE_TYPE_NOTIFY,
      title: 'title',
      content: `content ${msgId}`,
      customContent: {},
    },
    sentAtMs: 1_700_000_000_000,
    expiresAtMs: 1_700_000_000_000 + 72 * 3_600_000,
  };
}

/** A local stand-in for the gateway's device endpoint: authentication in the upgrade, the rest scripted. */
class FakeGateway {
  private readonly connections = new Queue<GatewayConnection>();
  /** Answers the next upgrades with these refusals, first in first out. */
  readonly refusals: Array<{ status: number; body: string }> = [];
  connectionCount = 0;

  private constructor(
    private readonly server: Server,
    private readonly wss: WebSocketServer,
  ) {}

  static async start(): Promise<FakeGateway> {
    const server = createServer();
    const wss = new WebSocketServer({
      noServer: true,
      handleProtocols: (protocols) =>
        [...protocols].find((p) => encodingOfSubprotocol(p) !== undefined) ?? false,
    });
    const gateway = new FakeGateway(server, wss);
    server.on('upgrade', (request, socket: Duplex, head: Buffer) => {
      const refusal =
        gateway.refusals.shift() ??
        (request.url === '/v1/ws' ? undefined : { status: 404, body: '{"code":"UNIMPLEMENTED"}' });
      if (refusal) {
        socket.end(
          `HTTP/1.1 ${refusal.status} Refused\r\ncontent-type: application/json\r\n` +
            `content-length: ${Buffer.byteLength(refusal.body)}\r\nconnection: close\r\n\r\n${refusal.body}`,
        );
        return;
      }
      wss.handleUpgrade(request, socket, head, (ws) => {
        gateway.connectionCount++;
        const encoding = encodingOfSubprotocol(ws.protocol);
        if (encoding === undefined) throw new Error(`no subprotocol negotiated: ${ws.protocol}`);
        gateway.connections.push(new GatewayConnection(ws, request.headers, encoding));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return gateway;
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1/ws`;
  }

  nextConnection(): Promise<GatewayConnection> {
    return this.connections.next();
  }

  async stop(): Promise<void> {
    for (const client of this.wss.clients) client.terminate();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function nextClose(client: DeviceClient): Promise<DeviceCloseEvent> {
  return new Promise((resolve) => client.once('close', resolve));
}

function nextConnected(client: DeviceClient): Promise<Connected> {
  return new Promise((resolve) => client.once('connected', resolve));
}

async function rejection(promise: Promise<unknown>): Promise<PushdError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof PushdError) return error;
    throw error;
  }
  throw new Error('expected a rejection');
}

let gateway: FakeGateway;
const clients: DeviceClient[] = [];

beforeEach(async () => {
  gateway = await FakeGateway.start();
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await gateway.stop();
});

function client(options: Partial<DeviceClientOptions>): DeviceClient {
  const created = new DeviceClient({ url: gateway.url, accessId: 42, ...options } as DeviceClientOptions);
  clients.push(created);
  return created;
}

const registration = {
  accessKey: 'access-key',
  deviceId: 'device-0123456789abcdef',
  platform: 'android',
  appVersion: '1.2.3',
  locale: 'zh-CN',
} as const;

/** A session client that reached Connected. */
async function connectedSession(
  options: Partial<DeviceClientOptions> = {},
): Promise<{ device: DeviceClient; connection: GatewayConnection }> {
  const device = client({ session: { token: TOKEN, credential: CREDENTIAL }, ...options });
  const connecting = device.connect();
  const connection = await gateway.nextConnection();
  connection.sendConnected();
  await connecting;
  return { device, connection };
}

describe.each(['proto', 'json'] as const)('DeviceClient over %s', (encoding) => {
  it('registers, then reconnects as a session with the credential it got', async () => {
    const device = client({ encoding, registration });
    const connecting = device.connect();
    const connection = await gateway.nextConnection();
    expect(connection.encoding).toBe(encoding);
    expect(connection.headers['x-pushd-access-id']).toBe('42');
    expect(connection.headers['x-pushd-access-key']).toBe('access-key');
    expect(connection.headers['x-pushd-token']).toBeUndefined();
    expect(connection.headers['x-pushd-last-msg-id']).toBeUndefined();
    expect(connection.headers['sec-websocket-extensions']).toBeUndefined();

    const register = await connection.acceptRegistration();
    expect(register).toEqual({
      id: 1,
      body: {
        $case: 'register',
        value: {
          deviceId: 'device-0123456789abcdef',
          platform: Platform.PLATFORM_ANDROID,
          appVersion: '1.2.3',
          osVersion: '',
          locale: 'zh-CN',
          sdkVersion: SDK_VERSION,
        },
      },
    });
    const result: ConnectResult = await connecting;
    expect(result.registered).toEqual({ token: TOKEN, credential: CREDENTIAL, created: true });
    expect(result.connected.sessionId).toBe('session-1');
    expect(device.state).toBe('open');
    expect(device.token).toBe(TOKEN);
    expect(device.credential).toBe(CREDENTIAL);

    const received: PushMessage[] = [];
    device.on('message', (message) => received.push(message));
    connection.deliver(7);
    expect(await connection.nextFrame()).toEqual({ id: 0, body: { $case: 'ack', value: { msgIds: [7] } } });
    expect(received).toEqual([pushMessage(7)]);

    const closed = nextClose(device);
    await device.close();
    expect(device.state).toBe('closed');
    expect(await closed).toEqual({ code: 1000, reason: '', reconnecting: false });
    expect((await connection.closed).code).toBe(1000);

    // The same client connects again as a session: credential instead of access key, no Register.
    const reconnecting = device.connect();
    const session = await gateway.nextConnection();
    expect(session.headers['x-pushd-token']).toBe(TOKEN);
    expect(session.headers['x-pushd-credential']).toBe(CREDENTIAL);
    expect(session.headers['x-pushd-access-key']).toBeUndefined();
    expect(session.headers['x-pushd-last-msg-id']).toBe('7');
    session.sendConnected();
    const again = await reconnecting;
    expect(again.registered).toBeUndefined();
    expect(device.state).toBe('open');
  });

  it('starts a session from a stored token and credential', async () => {
    const device = client({ encoding, session: { token: TOKEN, credential: CREDENTIAL }, lastMsgId: 41 });
    const connecting = device.connect();
    const connection = await gateway.nextConnection();
    expect(connection.headers['x-pushd-access-id']).toBe('42');
    expect(connection.headers['x-pushd-token']).toBe(TOKEN);
    expect(connection.headers['x-pushd-credential']).toBe(CREDENTIAL);
    expect(connection.headers['x-pushd-last-msg-id']).toBe('41');
    const connected = nextConnected(device);
    connection.sendConnected();
    expect((await connecting).connected.token).toBe(TOKEN);
    expect((await connected).sessionId).toBe('session-1');
  });

  it('answers ping() with the Pong to its frame id', async () => {
    const { device, connection } = await connectedSession({ encoding });
    const pinging = device.ping();
    const ping = await connection.nextFrame();
    expect(ping.body?.$case).toBe('ping');
    expect(ping.id).toBeGreaterThan(1);
    connection.send({ id: ping.id, body: { $case: 'pong', value: { serverTimeMs: 1_700_000_000_123 } } });
    expect(await pinging).toEqual({ serverTimeMs: 1_700_000_000_123 });
  });

  it('sends updateTags() and reportLocation() and resolves each with the reply to its frame id', async () => {
    const { device, connection } = await connectedSession({ encoding });
    const adding = device.updateTags('add', ['vip', 'sports']);
    const locating = device.reportLocation('广东', '深圳');
    const replacing = device.updateTags('replace', []);
    const add = await connection.nextFrame();
    const locate = await connection.nextFrame();
    const replace = await connection.nextFrame();
    expect(add.body).toEqual({
      $case: 'updateTags',
      value: { operation: TagOperation.TAG_OPERATION_ADD, tags: ['vip', 'sports'] },
    });
    expect(locate.body).toEqual({ $case: 'reportLocation', value: { province: '广东', city: '深圳' } });
    expect(replace.body).toEqual({
      $case: 'updateTags',
      value: { operation: TagOperation.TAG_OPERATION_REPLACE, tags: [] },
    });
    expect(new Set([add.id, locate.id, replace.id]).size).toBe(3);
    // Replies matched by id, whatever their order.
    connection.send({ id: replace.id, body: { $case: 'tagsUpdated', value: { count: 0 } } });
    connection.send({ id: locate.id, body: { $case: 'locationReported', value: {} } });
    connection.send({ id: add.id, body: { $case: 'tagsUpdated', value: { count: 2 } } });
    expect(await adding).toBe(2);
    expect(await replacing).toBe(0);
    await expect(locating).resolves.toBeUndefined();
  });

  it('rejects updateTags() with the error frame answering it, and stays open', async () => {
    const { device, connection } = await connectedSession({ encoding });
    const adding = device.updateTags('add', ['one-too-many']);
    const add = await connection.nextFrame();
    connection.send({
      id: add.id,
      body: {
        $case: 'error',
        value: { code: 'TAG_LIMIT_EXCEEDED', message: 'a device may have at most 100 tags' },
      },
    });
    const error = await rejection(adding);
    expect(error.code).toBe('TAG_LIMIT_EXCEEDED');
    expect(error.message).toBe('a device may have at most 100 tags');
    expect(device.state).toBe('open');
    // A reply of the wrong kind is refused too.
    const locating = device.reportLocation('', '');
    const locate = await connection.nextFrame();
    connection.send({ id: locate.id, body: { $case: 'tagsUpdated', value: { count: 1 } } });
    expect((await rejection(locating)).code).toBe('PROTOCOL_VIOLATION');
  });
});

describe('DeviceClient failures', () => {
  it('surfaces the catalogue code of a refused upgrade', async () => {
    gateway.refusals.push({
      status: 401,
      body: JSON.stringify({ code: 'INVALID_CREDENTIAL', message: 'token and credential do not match' }),
    });
    const device = client({ session: { token: TOKEN, credential: 'wrong' } });
    const error = await rejection(device.connect());
    expect(error.code).toBe('INVALID_CREDENTIAL');
    expect(error.message).toBe('token and credential do not match');
    expect(error.metadata.httpStatus).toBe('401');
    expect(device.state).toBe('closed');
  });

  it('classifies a refusal without a catalogue body by its status', async () => {
    gateway.refusals.push({ status: 503, body: 'upstream busy' });
    const error = await rejection(client({ registration }).connect());
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.message).toContain('upstream busy');
  });

  it('appends /v1/ws to a URL without a path', async () => {
    const device = client({
      url: gateway.url.replace('ws://', 'http://').replace('/v1/ws', ''),
      registration,
    });
    const connecting = device.connect();
    await (await gateway.nextConnection()).acceptRegistration();
    expect((await connecting).registered?.token).toBe(TOKEN);
  });

  it('rejects connect() with the code of an error frame answering Register', async () => {
    const device = client({ registration });
    const connecting = device.connect();
    const connection = await gateway.nextConnection();
    const register = await connection.nextFrame();
    connection.send({
      id: register.id,
      body: { $case: 'error', value: { code: 'INVALID_ARGUMENT', message: 'device_id: too short' } },
    });
    connection.socket.close(4400, 'INVALID_ARGUMENT');
    const error = await rejection(connecting);
    expect(error.code).toBe('INVALID_ARGUMENT');
    expect(error.message).toBe('device_id: too short');
    expect(device.state).toBe('closed');
    expect(device.token).toBeUndefined();
  });

  it('rejects connect() when the gateway closes before Connected', async () => {
    const device = client({ session: { token: TOKEN, credential: CREDENTIAL } });
    const connecting = device.connect();
    (await gateway.nextConnection()).socket.close(4503);
    expect((await rejection(connecting)).code).toBe('SHUTTING_DOWN');
  });

  it('rejects connect() with DEADLINE_EXCEEDED when Connected never comes', async () => {
    const device = client({ session: { token: TOKEN, credential: CREDENTIAL }, requestTimeoutMs: 100 });
    const connecting = device.connect();
    const connection = await gateway.nextConnection();
    expect((await rejection(connecting)).code).toBe('DEADLINE_EXCEEDED');
    expect(device.state).toBe('closed');
    expect((await connection.closed).code).toBe(1006);
  });

  it('rejects connect() when closed before Connected', async () => {
    const device = client({ session: { token: TOKEN, credential: CREDENTIAL } });
    const connecting = device.connect();
    await gateway.nextConnection();
    await device.close();
    expect((await rejection(connecting)).code).toBe('UNAVAILABLE');
    expect(device.state).toBe('closed');
  });

  it('reports the error frame sent before a close rather than the shared close code', async () => {
    const { device, connection } = await connectedSession();
    const closed = nextClose(device);
    connection.send({
      id: 0,
      body: { $case: 'error', value: { code: 'CONNECTION_REPLACED', message: 'newer' } },
    });
    connection.socket.close(4409);
    const event = await closed;
    expect(event.code).toBe(4409);
    expect(event.error?.code).toBe('CONNECTION_REPLACED');
    expect(event.reconnecting).toBe(false);
  });

  it("emits an error frame that answers nothing as 'error', only when listened to, and stays open", async () => {
    const { device, connection } = await connectedSession();
    const stray = {
      id: 99,
      body: { $case: 'error', value: { code: 'RATE_LIMITED', message: 'late' } },
    } as const;
    // Frames arrive in order, so a ping round trip after a frame proves the client has handled it.
    const roundTrip = async (): Promise<void> => {
      const pinging = device.ping();
      const ping = await connection.nextFrame();
      connection.send({ id: ping.id, body: { $case: 'pong', value: { serverTimeMs: 2 } } });
      await pinging;
    };
    connection.send(stray); // no 'error' listener: must not throw
    await roundTrip();
    const errors: PushdError[] = [];
    device.on('error', (error) => errors.push(error));
    connection.send(stray);
    await roundTrip();
    expect(errors.map((error) => error.code)).toEqual(['RATE_LIMITED']);
    expect(device.state).toBe('open');
  });

  it('refuses a Registered without a valid token and credential: connect() rejects, nothing is kept', async () => {
    for (const value of [
      { token: '', credential: '', created: true },
      { token: TOKEN, credential: 'short', created: true },
      { token: TOKEN.toUpperCase(), credential: CREDENTIAL, created: true },
    ]) {
      const device = client({ registration });
      const connecting = device.connect();
      const connection = await gateway.nextConnection();
      const frame = await connection.nextFrame();
      connection.send({ id: frame.id, body: { $case: 'registered', value } });
      connection.sendConnected();
      expect((await rejection(connecting)).code, JSON.stringify(value)).toBe('FRAME_MALFORMED');
      expect((await connection.closed).code).toBe(4400);
      expect(device.token).toBeUndefined();
      expect(device.state).toBe('closed');
    }
  });

  it("emits and acks the rest of a Deliver when a 'message' listener throws, and reports the error", async () => {
    const { device, connection } = await connectedSession();
    const received: number[] = [];
    const errors: PushdError[] = [];
    device.on('error', (error) => errors.push(error));
    device.on('message', (message) => {
      received.push(message.msgId);
      if (message.msgId === 7) throw new Error('app bug');
    });
    connection.deliver(7, 8);
    expect(await connection.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'ack', value: { msgIds: [7, 8] } },
    });
    expect(received).toEqual([7, 8]);
    expect(errors.map((error) => [error.code, error.message])).toEqual([
      ['INTERNAL', "a 'message' listener threw on msg 7"],
    ]);
    expect(device.state).toBe('open');
  });

  it('closes with 4400 on a malformed frame', async () => {
    const { device, connection } = await connectedSession();
    const closed = nextClose(device);
    connection.socket.send('{"connected":{}}'); // a text frame on the binary protocol
    expect((await closed).error?.code).toBe('FRAME_MALFORMED');
    expect((await connection.closed).code).toBe(4400);
  });

  it('rejects ping() when not connected and when no Pong comes in time', async () => {
    const idle = client({ session: { token: TOKEN, credential: CREDENTIAL } });
    expect((await rejection(idle.ping())).code).toBe('UNAVAILABLE');
    expect((await rejection(idle.updateTags('add', ['a']))).code).toBe('UNAVAILABLE');
    expect((await rejection(idle.reportLocation('广东', ''))).code).toBe('UNAVAILABLE');
    expect((await rejection(idle.updateTags('append' as never, ['a']))).code).toBe('INVALID_ARGUMENT');

    const { device, connection } = await connectedSession({ requestTimeoutMs: 100 });
    const pinging = device.ping();
    expect((await connection.nextFrame()).body?.$case).toBe('ping');
    expect((await rejection(pinging)).code).toBe('DEADLINE_EXCEEDED');
    expect(device.state).toBe('open');
  });

  it('validates its options at construction', () => {
    const base = { url: gateway.url, accessId: 42 };
    const session = { token: 't', credential: 'c' };
    expect(() => new DeviceClient({ ...base })).toThrow(PushdError);
    expect(() => new DeviceClient({ ...base, registration, session })).toThrow(/exactly one/);
    expect(() => new DeviceClient({ ...base, registration: { ...registration, deviceId: 'short' } })).toThrow(
      /deviceId/,
    );
    expect(() => new DeviceClient({ ...base, accessId: 0, session })).toThrow(/accessId/);
    expect(() => new DeviceClient({ ...base, url: 'ftp://x', session })).toThrow(/url/);
    expect(() => new DeviceClient({ ...base, session, reconnect: { initialDelayMs: 0 } })).toThrow(
      /reconnect/,
    );
  });
});

describe('DeviceClient delivery', () => {
  it('drops duplicates and still acknowledges them, one Ack per Deliver frame', async () => {
    const { device, connection } = await connectedSession();
    const received: number[] = [];
    device.on('message', (message) => received.push(message.msgId));

    connection.deliver(1, 2);
    expect(await connection.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'ack', value: { msgIds: [1, 2] } },
    });
    connection.deliver(2, 3);
    expect(await connection.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'ack', value: { msgIds: [2, 3] } },
    });
    connection.deliver(1);
    expect(await connection.nextFrame()).toEqual({ id: 0, body: { $case: 'ack', value: { msgIds: [1] } } });
    expect(received).toEqual([1, 2, 3]);
    expect(device.lastMsgId).toBe(3);
  });

  it("reports a Deliver frame's dropped count before its messages, also when it has no messages", async () => {
    const { device, connection } = await connectedSession();
    const events: string[] = [];
    device.on('dropped', (count) => events.push(`dropped ${count}`));
    device.on('message', (message) => events.push(`message ${message.msgId}`));

    connection.send({
      id: 0,
      body: { $case: 'deliver', value: { messages: [pushMessage(4), pushMessage(5)], dropped: 3 } },
    });
    expect(await connection.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'ack', value: { msgIds: [4, 5] } },
    });
    // Only a count: nothing to acknowledge.
    connection.send({ id: 0, body: { $case: 'deliver', value: { messages: [], dropped: 2 } } });
    // A collapse id reaches the app as it was pushed (replacing a shown notification is the app's part).
    const collapsing = pushMessage(6);
    if (collapsing.message) collapsing.message.collapseId = 'score';
    connection.send({ id: 0, body: { $case: 'deliver', value: { messages: [collapsing] } } });
    const received: PushMessage[] = [];
    device.on('message', (message) => received.push(message));
    expect(await connection.nextFrame()).toEqual({ id: 0, body: { $case: 'ack', value: { msgIds: [6] } } });
    expect(events).toEqual(['dropped 3', 'message 4', 'message 5', 'dropped 2', 'message 6']);
    expect(received.map((m) => m.message?.collapseId)).toEqual(['score']);
  });

  it('leaves acks to the app with autoAck off, except for duplicates', async () => {
    const { device, connection } = await connectedSession({ autoAck: false, lastMsgId: 10 });
    const received: number[] = [];
    device.on('message', (message) => received.push(message.msgId));

    connection.deliver(9, 11, 12); // 9 is at or below lastMsgId: the app already has it
    expect(await connection.nextFrame()).toEqual({ id: 0, body: { $case: 'ack', value: { msgIds: [9] } } });
    expect(received).toEqual([11, 12]);
    expect(device.ack([11, 12])).toBe(true);
    expect(await connection.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'ack', value: { msgIds: [11, 12] } },
    });
  });

  it('reports clicks with the push of a recent message, or the push id given, and keeps them while offline', async () => {
    const { device, connection } = await connectedSession({ autoAck: false });
    connection.deliver(5, 6);
    await new Promise<void>((resolve) => device.once('message', () => resolve()));
    // Found among the messages emitted: its push id goes with it.
    expect(device.reportClick(6)).toBe(true);
    expect(await connection.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'click', value: { msgId: 6, pushId: 'push-6' } },
    });
    // Unknown here: the gateway may still know it (unacknowledged there); a given push id wins.
    device.reportClick(99);
    device.reportClick(5, 'other');
    expect(await connection.nextFrame()).toEqual({ id: 0, body: { $case: 'click', value: { msgId: 99 } } });
    expect(await connection.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'click', value: { msgId: 5, pushId: 'other' } },
    });
    expect(() => device.reportClick(0)).toThrow(/msgId/);
    expect(() => device.reportClick(1, 'x'.repeat(65))).toThrow(/pushId/);

    // Offline: kept and sent once the next session is established.
    await device.close();
    expect(device.reportClick(5)).toBe(false);
    const connecting = device.connect();
    const next = await gateway.nextConnection();
    next.sendConnected();
    await connecting;
    expect(await next.nextFrame()).toEqual({
      id: 0,
      body: { $case: 'click', value: { msgId: 5, pushId: 'push-5' } },
    });
  });

  it('splits a large ack under the gateway frame limit', async () => {
    const device = client({ session: { token: TOKEN, credential: CREDENTIAL } });
    const connecting = device.connect();
    const connection = await gateway.nextConnection();
    connection.sendConnected({ maxFrameBytes: 64 + 11 * 100 });
    await connecting;
    const ids = Array.from({ length: 250 }, (_, i) => i + 1);
    device.ack(ids);
    const sizes: number[] = [];
    for (let i = 0; i < 3; i++) {
      const frame = await connection.nextFrame();
      sizes.push(frame.body?.$case === 'ack' ? frame.body.value.msgIds.length : -1);
    }
    expect(sizes).toEqual([100, 100, 50]);
  });
});

describe('DeviceClient lifecycle', () => {
  it('unregisters: Unregistered, a 1000 close, and no token or credential left', async () => {
    const { device, connection } = await connectedSession();
    const closed = nextClose(device);
    const unregistering = device.unregister();
    const frame = await connection.nextFrame();
    expect(frame.body?.$case).toBe('unregister');
    connection.send({ id: frame.id, body: { $case: 'unregistered', value: {} } });
    connection.socket.close(1000);
    await unregistering;
    expect(device.state).toBe('closed');
    expect(device.token).toBeUndefined();
    expect(device.credential).toBeUndefined();
    expect(await closed).toEqual({ code: 1000, reason: '', reconnecting: false });
    expect((await rejection(device.connect())).code).toBe('DEVICE_UNREGISTERED');
  });

  it('keeps doubling its backoff while sessions close right after Connected, and starts again after a stable one', async () => {
    const device = client({
      registration,
      reconnect: { initialDelayMs: 40, maxDelayMs: 10_000, stableAfterMs: 300 },
    });
    const connecting = device.connect();
    const first = await gateway.nextConnection();
    await first.acceptRegistration();
    await connecting;
    // Each session is closed by the gateway right after its Connected (a catch-up failing, say).
    const delays: number[] = [];
    let connection = first;
    for (let round = 0; round < 3; round++) {
      const closed = nextClose(device);
      connection.socket.close(4503);
      delays.push((await closed).reconnectInMs ?? -1);
      connection = await gateway.nextConnection();
      const connected = nextConnected(device);
      connection.sendConnected();
      await connected;
    }
    // Equal jitter: attempt n waits between half and all of 40 ms x 2^n.
    delays.forEach((delay, n) => {
      expect(delay).toBeGreaterThanOrEqual(20 * 2 ** n);
      expect(delay).toBeLessThanOrEqual(40 * 2 ** n);
    });
    // This session stays up past stableAfterMs: its drop waits the first step again.
    await new Promise((resolve) => setTimeout(resolve, 350));
    const closed = nextClose(device);
    connection.socket.close(4503);
    const delay = (await closed).reconnectInMs ?? -1;
    expect(delay).toBeGreaterThanOrEqual(20);
    expect(delay).toBeLessThanOrEqual(40);
    await device.close();
  });

  it('reconnects after 4503, a lost network and a 503 refusal, but not after 4401', async () => {
    const device = client({ registration, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } });
    const connecting = device.connect();
    const first = await gateway.nextConnection();
    await first.acceptRegistration();
    await connecting;
    first.deliver(5);
    await first.nextFrame(); // the ack

    // A gateway shutting down: reconnect as a session, with the credential from the registration.
    let closed = nextClose(device);
    first.socket.close(4503);
    let event = await closed;
    expect(event).toMatchObject({ code: 4503, reconnecting: true });
    expect(event.error?.code).toBe('SHUTTING_DOWN');
    expect(device.state).toBe('reconnecting');
    const second = await gateway.nextConnection();
    expect(second.headers['x-pushd-token']).toBe(TOKEN);
    expect(second.headers['x-pushd-credential']).toBe(CREDENTIAL);
    expect(second.headers['x-pushd-access-key']).toBeUndefined();
    expect(second.headers['x-pushd-last-msg-id']).toBe('5');
    let connected = nextConnected(device);
    second.sendConnected({ sessionId: 'session-2' });
    expect((await connected).sessionId).toBe('session-2');
    expect(device.state).toBe('open');

    // A connection dropped without a close frame, then one attempt refused with 503.
    gateway.refusals.push({
      status: 503,
      body: JSON.stringify({ code: 'UNAVAILABLE', message: 'registry down' }),
    });
    closed = nextClose(device);
    second.socket.terminate();
    event = await closed;
    expect(event).toMatchObject({ code: 1006, reconnecting: true });
    expect(event.error?.code).toBe('UNAVAILABLE');
    event = await nextClose(device);
    expect(event).toMatchObject({ code: 1006, reconnecting: true });
    expect(event.error?.message).toBe('registry down');
    const third = await gateway.nextConnection();
    connected = nextConnected(device);
    third.sendConnected({ sessionId: 'session-3' });
    expect((await connected).sessionId).toBe('session-3');

    // A credential that stopped working: reconnecting cannot help.
    closed = nextClose(device);
    third.send({
      id: 0,
      body: { $case: 'error', value: { code: 'INVALID_CREDENTIAL', message: 're-registered' } },
    });
    third.socket.close(4401);
    event = await closed;
    expect(event).toMatchObject({ code: 4401, reconnecting: false });
    expect(event.error?.code).toBe('INVALID_CREDENTIAL');
    expect(device.state).toBe('closed');
    expect(gateway.connectionCount).toBe(3);
  });

  it('sends a heartbeat Ping after silence and drops a connection that stays silent', async () => {
    const device = client({ session: { token: TOKEN, credential: CREDENTIAL }, reconnect: true });
    const connecting = device.connect();
    const connection = await gateway.nextConnection();
    connection.sendConnected({ heartbeatIntervalMs: 30 });
    await connecting;
    const closed = nextClose(device);

    const probe = await connection.nextFrame();
    expect(probe.body?.$case).toBe('ping');
    connection.send({ id: probe.id, body: { $case: 'pong', value: { serverTimeMs: 1 } } });
    expect((await connection.nextFrame()).body?.$case).toBe('ping'); // silence again: another probe

    const event = await closed; // no answer this time
    expect(event.error?.code).toBe('UNAVAILABLE');
    expect(event.error?.message).toContain('no answer');
    expect(event.reconnecting).toBe(true);
    await device.close();
    expect(device.state).toBe('closed');
  });
});

describe('SDK_VERSION', () => {
  it('matches the package version', () => {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    expect(SDK_VERSION).toBe(`ts/${version}`);
  });

  it('generates valid device ids', () => {
    const id = generateDeviceId();
    expect(id).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(generateDeviceId()).not.toBe(id);
  });
});

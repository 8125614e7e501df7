import { DeviceClient, generateDeviceId } from '@pushd/device-sdk';
import { ClientFrame, decodeServerFrame, MessageType, Platform, type ServerFrame } from '@pushd/proto';
import { waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsFor, notifyToken, type TestApp, TestDevice } from '../support/clients.js';
import { rawConnect, untilClosed } from '../support/raw-socket.js';
import { type SystemUnderTest, startEmbeddedSystem, startProcessSystem } from '../support/system.js';

function decodeJsonFrames(frames: (Buffer | string)[]): ServerFrame[] {
  return frames.map((f) =>
    decodeServerFrame(Buffer.from(f), typeof f !== 'string', typeof f === 'string' ? 'json' : 'proto'),
  );
}

// Bad input gets a clear error (a stable code and a message naming the problem) and changes nothing.
describe.each([
  ['embedded mode', startEmbeddedSystem],
  ['separate processes on NATS and Redis', startProcessSystem],
] as const)('bad input: %s', (_mode, start) => {
  let system: SystemUnderTest;
  let clients: ReturnType<typeof clientsFor>;
  let app: TestApp;
  let other: TestApp;
  let device: TestDevice;

  beforeAll(async () => {
    system = await start();
    clients = clientsFor(system);
    app = await clients.createApp('bad-input');
    other = await clients.createApp('other-tenant');
    device = await TestDevice.register(system, app);
  }, 90_000);

  afterAll(async () => {
    await device?.client.close();
    clients?.close();
    await system?.stop();
  });

  /** The device still works: a push reaches it. Proves a refused request changed nothing for it. */
  async function deviceStillReceives(): Promise<void> {
    const before = device.received.length;
    await clients.forApp(app).dispatch.push(notifyToken(app.accessId, device.token, 'still', 'works'));
    await device.waitForMessages(before + 1);
  }

  it('an unknown app is refused at the upgrade with 404 APP_NOT_FOUND', async () => {
    const registration = await rawConnect(system.gatewayUrl, {
      'x-pushd-access-id': '999999',
      'x-pushd-access-key': 'Anything',
    });
    expect(registration).toMatchObject({ kind: 'refused', status: 404, body: { code: 'APP_NOT_FOUND' } });
    const session = await rawConnect(system.gatewayUrl, {
      'x-pushd-access-id': '999999',
      'x-pushd-token': device.token,
      'x-pushd-credential': 'x',
    });
    expect(session).toMatchObject({ kind: 'refused', status: 404, body: { code: 'APP_NOT_FOUND' } });
    const { dispatch } = clients.forApp({ ...app, accessId: 999999 });
    await expect(dispatch.push(notifyToken(999999, device.token, 'a', 'b'))).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
  });

  it('a wrong credential, a bare token or a wrong access key is refused with 401 and the device is unaffected', async () => {
    const wrong = await rawConnect(system.gatewayUrl, {
      'x-pushd-access-id': String(app.accessId),
      'x-pushd-token': device.token,
      'x-pushd-credential': 'not-the-credential',
    });
    expect(wrong).toMatchObject({ kind: 'refused', status: 401, body: { code: 'INVALID_CREDENTIAL' } });
    const bare = await rawConnect(system.gatewayUrl, {
      'x-pushd-access-id': String(app.accessId),
      'x-pushd-token': device.token,
    });
    expect(bare).toMatchObject({ kind: 'refused', status: 401, body: { code: 'UNAUTHENTICATED' } });
    const viaQuery = await rawConnect(
      `${system.gatewayUrl}?access_id=${app.accessId}&token=${device.token}&credential=nope`,
      {},
    );
    expect(viaQuery).toMatchObject({ kind: 'refused', status: 401, body: { code: 'INVALID_CREDENTIAL' } });
    const wrongKey = await rawConnect(system.gatewayUrl, {
      'x-pushd-access-id': String(app.accessId),
      'x-pushd-access-key': 'wrong',
    });
    expect(wrongKey).toMatchObject({ kind: 'refused', status: 401, body: { code: 'UNAUTHENTICATED' } });
    await deviceStillReceives();
  });

  it('an unsupported subprotocol is refused with 400 UNSUPPORTED_PROTOCOL; JSON is negotiated by name', async () => {
    const headers = { 'x-pushd-access-id': String(app.accessId), 'x-pushd-access-key': app.accessKey };
    expect(await rawConnect(system.gatewayUrl, headers, ['mqtt'])).toMatchObject({
      kind: 'refused',
      status: 400,
      body: { code: 'UNSUPPORTED_PROTOCOL' },
    });
    const json = await rawConnect(system.gatewayUrl, headers, ['mqtt', 'pushd.v1.json']);
    expect(json).toMatchObject({ kind: 'open', protocol: 'pushd.v1.json' });
    if (json.kind === 'open') json.socket.close();
  });

  it('a malformed frame gets FRAME_MALFORMED and close 4400; the device can come back', async () => {
    const session = device.client;
    const token = device.token;
    const credential = session.credential ?? '';
    await session.close();
    for (const [protocol, garbage] of [
      ['pushd.v1.json', '{"ack": {"msgIds": [1]}, "ping": {}}'],
      ['pushd.v1.json', 'not json'],
      ['pushd.v1.json', '{"ack": {"msgIds": ["x", -1, 1.5]}}'],
      ['pushd.v1.json', '{"register": {"deviceId": "abcdefghijklmnop", "platform": "PLATFORM_WINDOWS"}}'],
      ['pushd.v1.proto', Buffer.from([0xff, 0xff, 0xff, 0xff])],
    ] as const) {
      const opened = await rawConnect(
        system.gatewayUrl,
        {
          'x-pushd-access-id': String(app.accessId),
          'x-pushd-token': token,
          'x-pushd-credential': credential,
        },
        [protocol],
      );
      if (opened.kind !== 'open') throw new Error(`expected an open socket, got ${JSON.stringify(opened)}`);
      const closed = untilClosed(opened.socket);
      await waitFor(() => opened.socket.readyState === opened.socket.OPEN, 'open');
      opened.socket.send(garbage);
      const { code, frames } = await closed;
      expect(code).toBe(4400);
      const error = decodeJsonFrames(frames).find((f) => f.body?.$case === 'error');
      expect(error?.body).toMatchObject({ $case: 'error', value: { code: 'FRAME_MALFORMED' } });
      expect(error?.body?.$case === 'error' && error.body.value.message).toMatch(/malformed frame: /);
    }
    await device.reconnect(system, app);
    await deviceStillReceives();
  });

  it('an oversized frame closes the connection with 1009', async () => {
    const opened = await rawConnect(system.gatewayUrl, {
      'x-pushd-access-id': String(app.accessId),
      'x-pushd-access-key': app.accessKey,
    });
    if (opened.kind !== 'open') throw new Error('expected an open socket');
    const closed = untilClosed(opened.socket);
    opened.socket.send(Buffer.alloc(64 * 1024, 1));
    expect((await closed).code).toBe(1009);
  });

  it('an invalid registration is refused with INVALID_ARGUMENT and registers nothing', async () => {
    const { registry } = clients.forApp(app);
    const before = await registry.countDevices({ accessId: app.accessId });
    const opened = await rawConnect(system.gatewayUrl, {
      'x-pushd-access-id': String(app.accessId),
      'x-pushd-access-key': app.accessKey,
    });
    if (opened.kind !== 'open') throw new Error('expected an open socket');
    const closed = untilClosed(opened.socket);
    const frame = ClientFrame.encode({
      id: 7,
      body: {
        $case: 'register',
        value: {
          deviceId: 'short',
          platform: Platform.PLATFORM_ANDROID,
          appVersion: '',
          osVersion: '',
          locale: '',
          sdkVersion: '',
        },
      },
    }).finish();
    opened.socket.send(frame);
    const { code, frames } = await closed;
    expect(code).toBe(4400);
    expect(decodeJsonFrames(frames)[0]).toMatchObject({
      id: 7,
      body: { $case: 'error', value: { code: 'INVALID_ARGUMENT' } },
    });
    expect(await registry.countDevices({ accessId: app.accessId })).toEqual(before);
  });

  it('a message over 4096 bytes is refused with PAYLOAD_TOO_LARGE and nothing is stored or sent', async () => {
    const { dispatch } = clients.forApp(app);
    const first = await dispatch.push(notifyToken(app.accessId, device.token, 'small', 'ok'));
    await device.waitForMessages(device.received.length);
    const received = device.received.length;
    const huge = notifyToken(app.accessId, device.token, 'big', '汉'.repeat(1400)); // 4200 UTF-8 bytes
    await expect(dispatch.push(huge)).rejects.toMatchObject({
      code: 'PAYLOAD_TOO_LARGE',
      metadata: { limit: '4096' },
    });
    const next = await dispatch.push(notifyToken(app.accessId, device.token, 'small', 'again'));
    expect(Number(next.pushId)).toBe(Number(first.pushId) + 1);
    await device.waitForMessages(received + 1);
    expect(device.received.map((m) => m.message?.title)).not.toContain('big');
  });

  it('invalid push fields are refused with INVALID_ARGUMENT naming the field', async () => {
    const { dispatch } = clients.forApp(app);
    const base = notifyToken(app.accessId, device.token, 't', 'c');
    await expect(dispatch.push({ ...base, message: { ...base.message, content: '' } })).rejects.toMatchObject(
      {
        code: 'INVALID_ARGUMENT',
        metadata: { field: 'message.content' },
      },
    );
    await expect(
      dispatch.push({ ...base, message: { ...base.message, type: MessageType.MESSAGE_TYPE_UNSPECIFIED } }),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'message.type' },
    });
    await expect(dispatch.push({ ...base, expireTimeS: 72 * 3600 + 1 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'expire_time_s' },
    });
    await expect(dispatch.push({ ...base, audience: undefined })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
  });

  it("one app's keys can neither push to nor read another app's devices", async () => {
    const intruder = clients.forApp(other);
    await expect(
      intruder.dispatch.push(notifyToken(app.accessId, device.token, 'x', 'y')),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(intruder.dispatch.push(notifyToken(0, device.token, 'x', 'y'))).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(
      intruder.registry.getDevice({ accessId: app.accessId, token: device.token }),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(intruder.registry.createApp({ name: 'nope' })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    await deviceStillReceives();
  });

  it('an unregistered device is disconnected (4410), its token refused, its credential dead', async () => {
    const victim = await TestDevice.register(system, app);
    const { registry, dispatch } = clients.forApp(app);
    const before = await registry.countDevices({ accessId: app.accessId });
    const closed = new Promise<number>((resolve) =>
      victim.client.once('close', (event) => resolve(event.code)),
    );
    await registry.unregisterDevice({ accessId: app.accessId, token: victim.token });
    expect(await closed).toBe(4410);
    expect((await registry.countDevices({ accessId: app.accessId })).total).toBe(before.total - 1);
    await expect(dispatch.push(notifyToken(app.accessId, victim.token, 'x', 'y'))).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(
      registry.unregisterDevice({ accessId: app.accessId, token: victim.token }),
    ).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    const again = new DeviceClient({
      url: system.gatewayUrl,
      accessId: app.accessId,
      session: { token: victim.token, credential: 'whatever' },
    });
    await expect(again.connect()).rejects.toMatchObject({ code: 'INVALID_CREDENTIAL' });
  });

  it('a device can unregister itself over its connection', async () => {
    const self = await TestDevice.register(system, app, { deviceId: generateDeviceId() });
    const token = self.token;
    await self.client.unregister();
    await expect(
      clients.forApp(app).registry.getDevice({ accessId: app.accessId, token }),
    ).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
  });
});

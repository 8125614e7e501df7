import { PushdError } from '@pushd/common';
import { MessageType, Platform } from '@pushd/proto';
import { waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsFor, notifyToken, type TestApp, TestDevice } from '../support/clients.js';
import {
  ON_CLUSTERS,
  type SystemUnderTest,
  startEmbeddedSystem,
  startProcessSystem,
} from '../support/system.js';

// The walking skeleton's scenario, run twice: every service as its own process on real NATS and Redis,
// and the embedded single process on the in-memory bus and stores. Same code path, same expectations.
describe.each([
  ['separate processes on NATS and Redis', startProcessSystem],
  ON_CLUSTERS,
  ['embedded mode', startEmbeddedSystem],
] as const)('first push end to end: %s', (_mode, start) => {
  let system: SystemUnderTest;
  let clients: ReturnType<typeof clientsFor>;
  let app: TestApp;

  beforeAll(async () => {
    system = await start();
    clients = clientsFor(system);
    app = await clients.createApp('first-push');
  }, 90_000);

  afterAll(async () => {
    clients?.close();
    await system?.stop();
  });

  /** Requests a gRPC method answered, summed over every process's /metrics (e.g. registry_grpc_...). */
  const grpcRequests = async (service: string, method: string) => {
    let sum = 0;
    for (const port of system.opsPorts) {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      for (const line of text.split('\n')) {
        if (line.startsWith(`${service}_grpc_requests_total{`) && line.includes(`method="${method}"`)) {
          sum += Number(line.split(' ').pop());
        }
      }
    }
    return sum;
  };

  it('registers, reconnects with its credential, receives a push, acks it, and stats count it', async () => {
    const device = await TestDevice.register(system, app, { platform: Platform.PLATFORM_IOS });
    const token = device.token;
    expect(token).toMatch(/^[0-9a-f]{40}$/);
    await device.client.close();

    await device.reconnect(system, app);
    const { dispatch, stats } = clients.forApp(app);
    const pushed = await dispatch.push(notifyToken(app.accessId, token, 'Hello', 'first push'));
    expect(pushed.pushId).not.toBe('');

    const [message] = await device.waitForMessages(1);
    expect(message?.pushId).toBe(pushed.pushId);
    expect(message?.msgId).toBe(pushed.msgId);
    expect(message?.message).toMatchObject({
      type: MessageType.MESSAGE_TYPE_NOTIFY,
      title: 'Hello',
      content: 'first push',
    });

    await waitFor(
      async () => {
        const { stats: counts } = await stats.getPushStats({ accessId: app.accessId, pushId: pushed.pushId });
        return counts?.sent === 1 && counts.arrived === 1;
      },
      'stats to show sent=1 arrived=1',
      15_000,
    );
    const { push } = await dispatch.getPush({ accessId: app.accessId, pushId: pushed.pushId });
    expect(push?.target).toBe(1);
    await device.client.close();
  });

  it('keeps a push sent while the device is offline and delivers it on reconnect', async () => {
    const device = await TestDevice.register(system, app);
    const token = device.token;
    await device.client.close();
    const { dispatch } = clients.forApp(app);
    const pushed = await dispatch.push(notifyToken(app.accessId, token, 'While away', 'kept for you'));

    await device.reconnect(system, app);
    const [message] = await device.waitForMessages(1);
    expect(message?.msgId).toBe(pushed.msgId);
    expect(message?.message?.content).toBe('kept for you');
    await device.client.close();
    // The gateway's handshake calls are the batched ones, over gRPC, in either mode.
    expect(await grpcRequests('registry', 'AuthenticateDevices')).toBeGreaterThan(0);
    expect(await grpcRequests('dispatch', 'FetchPendingBatch')).toBeGreaterThan(0);
    expect(await grpcRequests('registry', 'AuthenticateDevice')).toBe(0);
    expect(await grpcRequests('dispatch', 'FetchPending')).toBe(0);
  });

  it('registering again with the same device id returns the same token and a new credential', async () => {
    const first = await TestDevice.register(system, app, { deviceId: 'stable-device-id-0001' });
    const firstCredential = first.client.credential;
    await first.client.close();
    const second = await TestDevice.register(system, app, { deviceId: 'stable-device-id-0001' });
    expect(second.token).toBe(first.token);
    expect(second.client.credential).not.toBe(firstCredential);
    await second.client.close();
    // The old credential no longer opens a session.
    const stale = new TestDevice({
      url: system.gatewayUrl,
      accessId: app.accessId,
      session: { token: first.token, credential: firstCredential ?? '' },
    });
    await expect(stale.client.connect()).rejects.toMatchObject({ code: 'INVALID_CREDENTIAL' });
  });

  it('an unknown token is refused and changes nothing', async () => {
    const { dispatch } = clients.forApp(app);
    const device = await TestDevice.register(system, app);
    const before = await dispatch.push(notifyToken(app.accessId, device.token, 'a', 'a'));
    const refused = dispatch.push(notifyToken(app.accessId, 'f'.repeat(40), 'a', 'a'));
    await expect(refused).rejects.toBeInstanceOf(PushdError);
    await expect(refused).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    // No push id or message id was consumed by the refused call.
    const after = await dispatch.push(notifyToken(app.accessId, device.token, 'b', 'b'));
    expect(Number(after.pushId)).toBe(Number(before.pushId) + 1);
    await device.client.close();
  });
});

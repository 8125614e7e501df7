import {
  DispatchServiceService,
  MessageType,
  Platform,
  type PushRequest,
  PushStatus,
  TagServiceService,
} from '@pushd/proto';
import { basicAuthorization, createRpcClient } from '@pushd/rpc';
import { waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsFor, type TestApp, TestDevice } from '../support/clients.js';
import { type SystemUnderTest, startProcessSystem } from '../support/system.js';

// Delivery order and loss under the failures the production shape has: two dispatch instances applying
// pushes, a gateway killed while delivering. Separate processes on real NATS and Redis.
describe('delivery order and failures: two dispatch and two gateway processes', () => {
  let system: SystemUnderTest;
  let clients: ReturnType<typeof clientsFor>;
  const devices: TestDevice[] = [];
  const closers: (() => void)[] = [];

  beforeAll(async () => {
    system = await startProcessSystem({ dispatchInstances: 2, gatewayInstances: 2 });
    clients = clientsFor(system);
  }, 120_000);

  afterAll(async () => {
    for (const device of devices) await device.client.close();
    for (const close of closers) close();
    clients?.close();
    await system?.stop();
  });

  /** One dispatch client per dispatch process, authorized as the app. */
  const dispatchClients = (app: TestApp) =>
    (system.dispatches ?? []).map((address) => {
      const client = createRpcClient(DispatchServiceService, {
        address,
        authorization: basicAuthorization(app.accessId, app.secretKey),
      });
      closers.push(() => client.close());
      return client;
    });

  /** Waits until the app's `count` pushes are all DONE (applied: in the windows, routed). */
  const allApplied = async (app: TestApp, count: number) => {
    const [dispatch] = dispatchClients(app);
    await waitFor(async () => {
      const listed = await dispatch?.listPushes({
        accessId: app.accessId,
        createdFromMs: 0,
        createdToMs: 0,
        statuses: [],
        pageSize: 100,
        pageToken: '',
      });
      const done = listed?.pushes.filter((push) => push.status === PushStatus.PUSH_STATUS_DONE);
      return done?.length === count;
    }, `all ${count} pushes applied`);
  };

  const request = (app: TestApp, target: object, content: string): PushRequest => ({
    accessId: app.accessId,
    audience: { target: target as never },
    message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content, customContent: {} },
    platform: Platform.PLATFORM_UNSPECIFIED,
  });

  it('Android keeps the newest 2 and iOS the newest 1 of 5 missed messages, and each is told how many it lost', async () => {
    const app = await clients.createApp('offline-window');
    const [dispatch] = dispatchClients(app);
    const android = await TestDevice.register(system, app);
    const ios = await TestDevice.register(system, app, { platform: Platform.PLATFORM_IOS });
    devices.push(android, ios);
    await android.client.close();
    await ios.client.close();
    const sent = { android: [] as number[], ios: [] as number[] };
    for (let n = 1; n <= 5; n++) {
      for (const [name, device] of [
        ['android', android],
        ['ios', ios],
      ] as const) {
        const result = await dispatch?.push(
          request(app, { $case: 'token', value: device.token }, `${name} ${n}`),
        );
        sent[name].push(result?.msgId ?? 0);
      }
    }
    // An accepted push is applied (appended to the windows) a moment later. A device reconnecting before
    // every push was applied gets the rest live, loses none and is told of no loss: a correct outcome, but
    // not this test's (it failed that way once, under load). Reconnect once all ten are DONE.
    await allApplied(app, 10);
    await android.reconnect(system, app);
    await ios.reconnect(system, app);
    await android.waitForMessages(2);
    await ios.waitForMessages(1);
    await waitFor(() => android.dropped.length > 0 && ios.dropped.length > 0, 'the dropped counts');
    expect(android.received.map((m) => m.msgId)).toEqual(sent.android.slice(3));
    expect(ios.received.map((m) => m.msgId)).toEqual(sent.ios.slice(4));
    expect(android.dropped).toEqual([3]);
    expect(ios.dropped).toEqual([4]);
  });

  it('a newer push with the same collapse_id replaces the older one still waiting for an offline device', async () => {
    const app = await clients.createApp('collapse');
    const [dispatch] = dispatchClients(app);
    const device = await TestDevice.register(system, app);
    devices.push(device);
    await device.client.close();
    const push = async (content: string, collapseId?: string) => {
      const base = request(app, { $case: 'token', value: device.token }, content);
      const message = { ...base.message!, ...(collapseId === undefined ? {} : { collapseId }) };
      return (await dispatch?.push({ ...base, message }))?.msgId ?? 0;
    };
    await push('score 1-0', 'match-42');
    const latest = await push('score 2-0', 'match-42');
    // Applied before the device comes back: one applied after would reach it live (it failed that way
    // once, under load), which is right but not what this test is about.
    await allApplied(app, 2);
    await device.reconnect(system, app);
    await device.waitForMessages(1);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(device.received.map((m) => [m.msgId, m.message?.content, m.message?.collapseId])).toEqual([
      [latest, 'score 2-0', 'match-42'],
    ]);
    // Replaced, not lost: nothing to resync.
    expect(device.dropped).toEqual([]);
  });

  it('concurrent pushes through both dispatch instances reach a device in increasing id order, every one (20 random rounds)', async () => {
    const app = await clients.createApp('two-dispatchers');
    const [first, second] = dispatchClients(app);
    const device = await TestDevice.register(system, app);
    devices.push(device);
    const tag = createRpcClient(TagServiceService, {
      address: system.tag,
      authorization: basicAuthorization(app.accessId, app.secretKey),
    });
    closers.push(() => tag.close());
    await tag.addTags({ accessId: app.accessId, token: device.token, tags: ['fans'] });
    // Tags reach the gateway asynchronously; a tag push before that would not match.
    await new Promise((resolve) => setTimeout(resolve, 300));

    const accepted: number[] = [];
    for (let round = 0; round < 20; round++) {
      const size = 2 + Math.floor(Math.random() * 8);
      const calls = Array.from({ length: size }, (_, n) => {
        const via = Math.random() < 0.5 ? first : second;
        const target =
          Math.random() < 0.7
            ? { $case: 'token', value: device.token }
            : { $case: 'tags', value: { form: { $case: 'tagList', value: { tags: ['fans'], op: 'OR' } } } };
        return via?.push(request(app, target, `r${round}-${n}`));
      });
      for (const result of await Promise.all(calls)) if (result) accepted.push(result.msgId);
    }
    await device.waitForMessages(accepted.length, 30_000);
    const received = device.received.map((m) => m.msgId);
    for (let i = 1; i < received.length; i++) {
      expect(received[i], `message ${i} after ${received[i - 1]}`).toBeGreaterThan(received[i - 1] as number);
    }
    expect([...received].sort((a, b) => a - b)).toEqual([...accepted].sort((a, b) => a - b));
  });

  it('a gateway killed while delivering: the device reconnects to the other one and misses nothing, in order', async () => {
    const app = await clients.createApp('gateway-crash');
    const [dispatch] = dispatchClients(app);
    const device = await TestDevice.register(system, app);
    devices.push(device);
    const push = async (content: string) =>
      (await dispatch?.push(request(app, { $case: 'token', value: device.token }, content)))?.msgId ?? 0;

    const before = [await push('one'), await push('two')];
    await device.waitForMessages(2);
    // The third is accepted as the gateway dies: delivered or not, it must come, once.
    const third = push('three');
    await system.kill?.('gateway', 0);
    const during = await third;
    const whileDown = await push('four');
    await device.client.close();

    await device.reconnect(system, app, { url: system.gatewayUrls?.[1] });
    await waitFor(
      () => device.received.some((m) => m.msgId === whileDown),
      'the push made while the device had no gateway',
      20_000,
    );
    const received = device.received.map((m) => m.msgId);
    expect(received).toEqual([...before, during, whileDown]);
  });

  it('scheduled pushes survive a restart of every dispatch instance and fire once each, cancelled ones never', async () => {
    const app = await clients.createApp('scheduled');
    const [first, second] = dispatchClients(app);
    // Gateway 0 was killed by the test before: this device uses gateway 1.
    const device = await TestDevice.register(system, app, { url: system.gatewayUrls?.[1] });
    devices.push(device);
    // Due after the setup below even on a loaded machine: an occurrence claimed by an instance that is then
    // killed waits for its lease (30 s) before another instance fires it (allowed for below).
    const at = Date.now() + 5_000;
    const schedule = (via: typeof first, offsetMs: number, content: string) =>
      via?.push({
        ...request(app, { $case: 'token', value: device.token }, content),
        sendTimeMs: at + offsetMs,
      });
    const one = await schedule(first, 0, 'one');
    const cancelled = await schedule(second, 500, 'cancelled');
    const two = await schedule(second, 1_000, 'two');
    expect([one?.msgId, cancelled?.msgId, two?.msgId]).toEqual([0, 0, 0]);
    await expect(
      second?.cancelPush({ accessId: app.accessId, pushId: cancelled?.pushId ?? '' }),
    ).resolves.toMatchObject({
      push: { status: PushStatus.PUSH_STATUS_CANCELLED },
    });
    // An idempotent retry through the other instance is the same push, not a second one.
    const retried = await first?.push({
      ...request(app, { $case: 'token', value: device.token }, 'retried'),
      idempotencyKey: 'e2e-key',
    });
    const again = await second?.push({
      ...request(app, { $case: 'token', value: device.token }, 'retried'),
      idempotencyKey: 'e2e-key',
    });
    expect(again).toEqual(retried);
    await device.waitForMessages(1);

    // Every dispatch instance dies before the pushes are due and comes back only after: they were pending
    // in the schedule alone.
    await Promise.all([system.kill?.('dispatch', 0), system.kill?.('dispatch', 1)]);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, at + 1_500 - Date.now())));
    expect(device.received.map((m) => m.message?.content)).toEqual(['retried']);
    await Promise.all([system.restart?.('dispatch', 0), system.restart?.('dispatch', 1)]);
    await device.waitForMessages(3, 45_000);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(device.received.map((m) => m.message?.content)).toEqual(['retried', 'one', 'two']);
    // Not before its time (the device's receipt is after the send time on the same clock).
    for (const message of device.received.slice(1)) expect(message.sentAtMs).toBeGreaterThanOrEqual(at);
    // grpc-js channels to the restarted instances may still be backing off from the outage: ask until one
    // answers.
    let listed: Awaited<ReturnType<NonNullable<typeof first>['listPushes']>> | undefined;
    await waitFor(
      async () => {
        listed = await first?.listPushes({
          accessId: app.accessId,
          createdFromMs: 0,
          createdToMs: 0,
          statuses: [],
          pageSize: 10,
          pageToken: '',
        });
        return true;
      },
      'a dispatch instance answering ListPushes',
      30_000,
    );
    expect(listed?.pushes.map((push) => [push.pushId, push.status])).toEqual([
      [retried?.pushId, PushStatus.PUSH_STATUS_DONE],
      [two?.pushId, PushStatus.PUSH_STATUS_DONE],
      [cancelled?.pushId, PushStatus.PUSH_STATUS_CANCELLED],
      [one?.pushId, PushStatus.PUSH_STATUS_DONE],
    ]);
  }, 120_000);
});

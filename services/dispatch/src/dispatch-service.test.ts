import { type Bus, MemoryBus, pushPartition, streams, subjects, withDurablePublish } from '@pushd/bus';
import { ManualClock, PushdError, silentLogger } from '@pushd/common';
import {
  BroadcastDelivery,
  Event,
  EventBatch,
  EventType,
  FetchPendingBatchResponse,
  type FetchPendingRequest,
  type FetchPendingResponse,
  LoopInterval,
  type Message,
  MessageType,
  NodeDelivery,
  type PendingDevice,
  Platform,
  PushCommand,
  PushRecord,
  type PushRequest,
  type PushResponse,
  PushStatus,
  RegistryServiceService,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import {
  basicAuthorization,
  bearerAuthorization,
  callContext,
  fromBatchResult,
  inProcessClient,
  MAX_BATCH_ITEMS,
  type PromiseClient,
} from '@pushd/rpc';
import {
  type BroadcastLog,
  createMemoryStores,
  type DeviceStore,
  type InboxStore,
  type PushStore,
  type Route,
  type RouteStore,
  type ScheduledCommand,
  type ScheduleStore,
  type Stores,
} from '@pushd/store';
import { waitFor } from '@pushd/testkit';
import { Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { createDispatch } from './dispatch.js';
import { MAX_EXPIRE_S, MAX_MESSAGE_BYTES, ONLINE_ONLY_TTL_MS, validateMessage } from './dispatch-service.js';
import { DispatchEventConsumer } from './event-consumer.js';
import { createDispatchMetrics, type DispatchMetrics } from './metrics.js';
import { PushApplier } from './push-applier.js';

const CLUSTER_TOKEN = 'dispatch-unit-test-cluster-token';
const PARTITIONS = 4;
const NODE_ID = 'gw-test';
const HOUR_MS = 3_600_000;

const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));

/**
 * A client of another service that calls its real handlers in process: only `methods` exist (calling any
 * other fails loudly), each request and response goes through the method's protobuf serializers as over
 * the wire, and every call carries `authorization`.
 */

type RegistryClient = PromiseClient<typeof RegistryServiceService>;

interface SetupOptions {
  /** Replaces the registry client dispatch gets (default: the real registry's handlers). */
  registry?: (real: RegistryClient) => RegistryClient;
  /** Wraps the stores dispatch gets. */
  devices?: (real: DeviceStore) => DeviceStore;
  pushes?: (real: PushStore) => PushStore;
  routes?: (real: RouteStore) => RouteStore;
  inboxes?: (real: InboxStore) => InboxStore;
  schedules?: (real: ScheduleStore) => ScheduleStore;
  broadcasts?: (real: BroadcastLog) => BroadcastLog;
  bus?: (real: MemoryBus) => Bus;
  /** Default: true. False leaves accepted pushes in the log (call applier.apply or start it later). */
  startApplier?: boolean;
  /** The applier's lookAheadEntries. Default: the applier's. */
  lookAheadEntries?: number;
  /**
   * The applier's lookAheadMinPending. Default: 1 (the tests build backlogs of a few entries; the
   * applier's own default is tested on its own).
   */
  lookAheadMinPending?: number;
}

async function setup(options: SetupOptions = {}) {
  const clock = new ManualClock();
  const stores: Stores = createMemoryStores({ clock });
  const memoryBus = new MemoryBus({ streams: [streams.events, streams.pushes], clock });
  const registryService = new RegistryService({
    apps: stores.apps,
    devices: stores.devices,
    bus: memoryBus,
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
    clock,
  });
  const registryHandlers = registryService.handlers();
  const realRegistry = inProcessClient(
    RegistryServiceService,
    registryHandlers,
    bearerAuthorization(CLUSTER_TOKEN),
  );
  const metricsRegistry = new Registry();
  const metrics = createDispatchMetrics(metricsRegistry);
  const pushes = options.pushes?.(stores.pushes) ?? stores.pushes;
  const bus = options.bus?.(memoryBus) ?? memoryBus;
  const { service, applier, scheduler } = createDispatch({
    stores: {
      ...stores,
      pushes,
      devices: options.devices?.(stores.devices) ?? stores.devices,
      routes: options.routes?.(stores.routes) ?? stores.routes,
      inboxes: options.inboxes?.(stores.inboxes) ?? stores.inboxes,
      schedules: options.schedules?.(stores.schedules) ?? stores.schedules,
      broadcasts: options.broadcasts?.(stores.broadcasts) ?? stores.broadcasts,
    },
    bus,
    registry: options.registry?.(realRegistry) ?? realRegistry,
    clusterToken: CLUSTER_TOKEN,
    partitions: PARTITIONS,
    ...(options.lookAheadEntries === undefined ? {} : { lookAheadEntries: options.lookAheadEntries }),
    lookAheadMinPending: options.lookAheadMinPending ?? 1,
    metrics,
    logger: silentLogger(),
    clock,
  });
  if (options.startApplier !== false) applier.start();
  const h = service.handlers();

  const created = await registryHandlers.createApp({ name: 'demo' }, cluster());
  const app = {
    accessId: created.app?.accessId ?? 0,
    accessKey: created.accessKey,
    auth: () => callContext(basicAuthorization(created.app?.accessId ?? 0, created.secretKey)),
  };
  let devices = 0;
  /** Registers a device and indexes it (as the tag service does from the REGISTERED event). */
  const registerIndexed = async (platform = Platform.PLATFORM_ANDROID, tags: string[] = []) => {
    const token = await registerDevice(platform);
    const { device } = await registryHandlers.getDevice({ accessId: app.accessId, token }, cluster());
    const index = device?.index ?? -1;
    await stores.audience.setRegistered(app.accessId, index, platform, true);
    if (tags.length > 0) {
      await stores.tags.add(app.accessId, [{ token, index }], tags, { perDevice: 100, perApp: 10_000 });
      await stores.audience.setTags(app.accessId, index, tags, []);
    }
    return token;
  };
  const registerDevice = async (
    platform = Platform.PLATFORM_ANDROID,
    deviceId = `device_${String(++devices).padStart(12, '0')}`,
  ) => {
    const registered = await registryHandlers.registerDevice(
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
    return registered.device?.token ?? '';
  };

  /** Resolves once the push was applied (its record left SENDING). */
  const applied = async (pushId: string) => {
    await waitFor(async () => {
      const record = await stores.pushes.get(app.accessId, pushId);
      return record !== undefined && record.status !== PushStatus.PUSH_STATUS_SENDING;
    }, `push ${pushId} applied`);
  };
  const pushRequest = async (request: PushRequest) => {
    const result = await h.push(request, app.auth());
    await applied(result.pushId);
    return result;
  };
  const push = (token: string, fields: Partial<PushRequest> = {}) => pushRequest(notify(token, fields));
  const pending = async (token: string, afterMsgId = 0) =>
    h.fetchPending({ accessId: app.accessId, token, afterMsgId }, cluster());
  const pendingIds = async (token: string, afterMsgId = 0) =>
    (await pending(token, afterMsgId)).messages.map((m) => m.msgId);

  /** Routes `token` to the test node and records the NodeDeliveries published there. */
  const routeToNode = async (token: string) => {
    await stores.routes.set(
      app.accessId,
      token,
      { nodeId: NODE_ID, sessionId: 'session-1', openedAtMs: 0 },
      HOUR_MS,
    );
  };
  const deliveries: NodeDelivery[] = [];
  memoryBus.subscribe(subjects.nodeDelivery(NODE_ID), (data) => deliveries.push(NodeDelivery.decode(data)));
  const sentEvents: Event[] = [];
  memoryBus.subscribe(subjects.events('dispatch'), (data) =>
    sentEvents.push(...EventBatch.decode(data).events),
  );

  return {
    clock,
    stores,
    bus: memoryBus,
    h,
    app,
    metrics,
    registryHandlers,
    registerDevice,
    registerIndexed,
    push,
    pushRequest,
    applied,
    applier,
    scheduler,
    pending,
    pendingIds,
    routeToNode,
    deliveries,
    sentEvents,
  };
}

function notify(token: string, fields: Partial<PushRequest> = {}): PushRequest {
  return {
    accessId: 0,
    audience: { target: { $case: 'token', value: token } },
    message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: 'Hello', content: 'World', customContent: {} },
    platform: Platform.PLATFORM_UNSPECIFIED,
    ...fields,
  };
}

/** A histogram's observation count and sum. */
async function histogramTotals(metric: DispatchMetrics[keyof DispatchMetrics]) {
  const { values } = await metric.get();
  const total = (suffix: string) =>
    values
      .filter((v) => (v as { metricName?: string }).metricName?.endsWith(suffix))
      .reduce((sum, v) => sum + v.value, 0);
  return { count: total('_count'), sum: total('_sum') };
}

async function counterValue(
  metric: DispatchMetrics[keyof DispatchMetrics],
  labels: Record<string, string> = {},
) {
  const { values } = await metric.get();
  return values
    .filter((v) => {
      const actual: Record<string, string | number | undefined> = v.labels;
      return Object.entries(labels).every(([key, value]) => actual[key] === value);
    })
    .reduce((sum, v) => sum + v.value, 0);
}

const message = (fields: Partial<Message>): Message => ({
  type: MessageType.MESSAGE_TYPE_NOTIFY,
  title: '',
  content: '',
  customContent: {},
  ...fields,
});

describe('validateMessage', () => {
  it('requires a message of a known type', () => {
    expect(() => validateMessage(undefined)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field: 'message' } }),
    );
    for (const type of [MessageType.MESSAGE_TYPE_UNSPECIFIED, 9 as MessageType]) {
      expect(() => validateMessage(message({ type, content: 'x' }))).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field: 'message.type' } }),
      );
    }
  });

  it('requires content for a notification', () => {
    expect(() =>
      validateMessage(message({ type: MessageType.MESSAGE_TYPE_NOTIFY, customContent: { k: 'v' } })),
    ).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field: 'message.content' } }));
    const ok = message({ type: MessageType.MESSAGE_TYPE_NOTIFY, content: 'hi' });
    expect(validateMessage(ok)).toEqual(ok);
  });

  it('accepts a pass-through message with only custom_content, and refuses one with neither', () => {
    const only = message({ type: MessageType.MESSAGE_TYPE_MESSAGE, customContent: { sync: 'inbox' } });
    expect(validateMessage(only)).toEqual(only);
    const contentOnly = message({ type: MessageType.MESSAGE_TYPE_MESSAGE, content: 'data' });
    expect(validateMessage(contentOnly)).toEqual(contentOnly);
    expect(() => validateMessage(message({ type: MessageType.MESSAGE_TYPE_MESSAGE, title: 'x' }))).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field: 'message' } }),
    );
  });

  it('limits the serialized message to 4096 UTF-8 bytes, not characters', () => {
    expect(MAX_MESSAGE_BYTES).toBe(4096);
    // 1366 CJK characters are far fewer than 4096 characters but 4098 bytes of UTF-8.
    const cjk = '推'.repeat(1366);
    expect(cjk.length).toBeLessThan(4096);
    let thrown: unknown;
    try {
      validateMessage(message({ content: cjk }));
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(PushdError);
    expect(thrown).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', metadata: { limit: '4096' } });
    expect(Number((thrown as PushdError).metadata.size)).toBeGreaterThan(4096);

    // Exactly at the limit: type (2 bytes) + content tag (1) + length (2) + 4091 ASCII bytes = 4096.
    expect(() => validateMessage(message({ content: 'a'.repeat(4091) }))).not.toThrow();
    expect(() => validateMessage(message({ content: 'a'.repeat(4092) }))).toThrow(
      expect.objectContaining({ code: 'PAYLOAD_TOO_LARGE', metadata: { limit: '4096', size: '4097' } }),
    );
  });

  it('counts title and custom_content in the size', () => {
    expect(() => validateMessage(message({ content: 'x', title: 't'.repeat(4100) }))).toThrow(
      expect.objectContaining({ code: 'PAYLOAD_TOO_LARGE' }),
    );
    expect(() =>
      validateMessage(
        message({ type: MessageType.MESSAGE_TYPE_MESSAGE, customContent: { blob: 'b'.repeat(4100) } }),
      ),
    ).toThrow(expect.objectContaining({ code: 'PAYLOAD_TOO_LARGE' }));
  });
});

describe('DispatchService.push validation', () => {
  it('refuses invalid input before anything is stored or sent', async () => {
    const { push, registerDevice, pending, sentEvents, deliveries, routeToNode, h, app, bus } = await setup();
    const token = await registerDevice();
    await routeToNode(token);
    const refusals: [Partial<PushRequest>, string, string | undefined][] = [
      [{ message: undefined }, 'INVALID_ARGUMENT', 'message'],
      [{ message: message({ content: '' }) }, 'INVALID_ARGUMENT', 'message.content'],
      [{ message: message({ content: '中'.repeat(1366) }) }, 'PAYLOAD_TOO_LARGE', undefined],
      [{ expireTimeS: MAX_EXPIRE_S + 1 }, 'INVALID_ARGUMENT', 'expire_time_s'],
      [{ audience: undefined }, 'INVALID_ARGUMENT', 'audience'],
      [{ audience: { target: { $case: 'token', value: '' } } }, 'INVALID_ARGUMENT', 'audience.token'],
    ];
    for (const [fields, code, field] of refusals) {
      const refused = push(token, fields);
      await expect(refused, JSON.stringify(fields).slice(0, 80)).rejects.toMatchObject(
        field === undefined ? { code } : { code, metadata: { field } },
      );
    }
    await expect(push('f'.repeat(40))).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });

    await bus.flush();
    expect(await pending(token)).toEqual({ messages: [], lastMsgId: 0, lastBroadcastId: 0, dropped: 0 });
    expect(deliveries).toEqual([]);
    expect(sentEvents).toEqual([]);
    await expect(h.getPush({ accessId: 0, pushId: '1' }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
  });

  it('refuses a push whose devices would make its command larger than the push log takes, now or scheduled', async () => {
    const { h, app, stores, clock } = await setup();
    // One account bound on 25,000 devices: 46 bytes of command per device, over MAX_COMMAND_BYTES.
    for (let i = 0; i < 25_000; i++) {
      const token = i.toString(16).padStart(40, '0');
      await stores.devices.upsert({
        accessId: app.accessId,
        token,
        platform: Platform.PLATFORM_ANDROID,
        appVersion: '',
        osVersion: '',
        locale: '',
        sdkVersion: '',
        credentialHash: '',
        registeredAtMs: 0,
      });
      await stores.devices.setAccount(app.accessId, token, 'crowd');
    }
    const toCrowd = (fields: Partial<PushRequest> = {}) =>
      h.push(
        notify('', { audience: { target: { $case: 'account', value: 'crowd' } }, ...fields }),
        app.auth(),
      );
    for (const fields of [{}, { sendTimeMs: clock.now() + HOUR_MS }]) {
      await expect(toCrowd(fields)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        metadata: { field: 'audience' },
        message: expect.stringMatching(/25000 devices.*split/),
      });
    }
    // Nothing was stored: no push record, nothing scheduled.
    const listed = await h.listPushes(
      { accessId: 0, statuses: [], createdFromMs: 0, createdToMs: 0, pageSize: 10, pageToken: '' },
      app.auth(),
    );
    expect(listed.pushes).toEqual([]);
    expect(await stores.schedules.pending(0)).toBe(0);
  });

  it('refuses a push whose named audience would make its command larger than the push log takes, however few devices it reaches', async () => {
    const { h, app, registerDevice, stores, clock } = await setup();
    const token = await registerDevice();
    // One registered device among 999 made-up tokens of 1,000 characters: ~1 MB of audience in the command.
    const tokens = [token, ...Array.from({ length: 999 }, (_, i) => String(i).padStart(1_000, 'x'))];
    for (const fields of [{}, { sendTimeMs: clock.now() + HOUR_MS }]) {
      await expect(
        h.push(
          notify('', { audience: { target: { $case: 'tokenList', value: { tokens } } }, ...fields }),
          app.auth(),
        ),
      ).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        metadata: { field: 'audience' },
        message: expect.stringMatching(/resolves to 1 devices, a push command of \d+ bytes over/),
      });
    }
    const listed = await h.listPushes(
      { accessId: 0, statuses: [], createdFromMs: 0, createdToMs: 0, pageSize: 10, pageToken: '' },
      app.auth(),
    );
    expect(listed.pushes).toEqual([]);
    expect(await stores.schedules.pending(0)).toBe(0);
  });

  it('keeps a message 72 hours by default and accepts expire_time_s up to 259200', async () => {
    const { push, registerDevice, pending, clock } = await setup();
    const token = await registerDevice();
    await push(token);
    await push(token, { expireTimeS: MAX_EXPIRE_S });
    const { messages } = await pending(token);
    expect(MAX_EXPIRE_S).toBe(259_200);
    expect(messages.map((m) => m.expiresAtMs - m.sentAtMs)).toEqual([72 * HOUR_MS, 72 * HOUR_MS]);
    expect(messages.every((m) => m.sentAtMs === clock.now())).toBe(true);
  });
});

describe('DispatchService.push', () => {
  it('persists the message before routing it: the window holds it when the route is read', async () => {
    const windowsWhenRouteRead: number[][] = [];
    let inboxes: InboxStore | undefined;
    const { push, registerDevice, pendingIds, app, stores, h, clock } = await setup({
      routes: (real) => ({
        set: (...args) => real.set(...args),
        get: (...args) => real.get(...args),
        clear: (...args) => real.clear(...args),
        refresh: (...args) => real.refresh(...args),
        getMany: async (accessId: number, tokens: string[]): Promise<(Route | undefined)[]> => {
          for (const token of tokens) {
            const window = await inboxes!.pending(accessId, token, 0, clock.now());
            windowsWhenRouteRead.push(window.messages.map((m) => m.msgId));
          }
          return real.getMany(accessId, tokens);
        },
      }),
    });
    inboxes = stores.inboxes;
    const token = await registerDevice();

    // No route: the device is offline, and its window keeps the message.
    const result = await push(token, {
      message: message({ title: 'Order shipped', content: 'On its way', customContent: { order: '1234' } }),
    });
    // The first entry of the push log (sequence 1), its first push: msg_id 1 * 1024 + 0.
    expect(result).toEqual({ pushId: '1', msgId: 1024, invalidTokens: [], unknownAccounts: [], target: 1 });
    expect(windowsWhenRouteRead).toEqual([[1024]]);
    const { messages, lastMsgId } = await h.fetchPending(
      { accessId: app.accessId, token, afterMsgId: 0 },
      cluster(),
    );
    expect(lastMsgId).toBe(1024);
    expect(messages).toEqual([
      {
        msgId: 1024,
        pushId: '1',
        message: message({ title: 'Order shipped', content: 'On its way', customContent: { order: '1234' } }),
        sentAtMs: clock.now(),
        expiresAtMs: clock.now() + 72 * HOUR_MS,
      },
    ]);
    expect(await pendingIds(token)).toEqual([1024]);

    // The push record is saved and done.
    await expect(h.getPush({ accessId: 0, pushId: '1' }, app.auth())).resolves.toEqual({
      push: {
        accessId: app.accessId,
        pushId: '1',
        msgId: 1024,
        status: PushStatus.PUSH_STATUS_DONE,
        audience: { target: { $case: 'token', value: token } },
        message: message({ title: 'Order shipped', content: 'On its way', customContent: { order: '1234' } }),
        createdAtMs: clock.now(),
        expiresAtMs: clock.now() + 72 * HOUR_MS,
        target: 1,
        sendTimeMs: clock.now(),
        occurrences: 0,
        failure: '',
      },
    });
  });

  it('publishes a NodeDelivery to the gateway holding the route, chained by previousMsgIds', async () => {
    const { push, registerDevice, routeToNode, deliveries, pendingIds, app, bus, metrics } = await setup();
    const token = await registerDevice();
    const offline = await push(token);
    expect(await counterValue(metrics.routed, { route: 'offline' })).toBe(1);
    await routeToNode(token);
    const first = await push(token, { message: message({ content: 'one' }) });
    const second = await push(token, { message: message({ content: 'two' }) });
    await waitFor(() => deliveries.length >= 2, 'two node deliveries');
    await bus.flush();

    expect(deliveries).toHaveLength(2);
    expect(deliveries[0]).toMatchObject({
      accessId: app.accessId,
      tokens: [token],
      message: { msgId: first.msgId, pushId: first.pushId, message: { content: 'one' } },
      previousMsgIds: [offline.msgId],
    });
    expect(deliveries[1]).toMatchObject({
      tokens: [token],
      message: { msgId: second.msgId, pushId: second.pushId, message: { content: 'two' } },
      previousMsgIds: [first.msgId],
    });
    // Routed or not, every message went through the window (Android keeps 2).
    expect(await pendingIds(token)).toEqual([first.msgId, second.msgId]);
    expect(await counterValue(metrics.routed, { route: 'online' })).toBe(2);
  });

  it('keeps the newest 2 messages of an offline Android device and the newest 1 of an iOS device, oldest first', async () => {
    const { push, registerDevice, pending, pendingIds } = await setup();
    const android = await registerDevice(Platform.PLATFORM_ANDROID);
    const ios = await registerDevice(Platform.PLATFORM_IOS);
    const toAndroid: number[] = [];
    const toIos: number[] = [];
    for (let n = 1; n <= 5; n++) {
      toAndroid.push((await push(android, { message: message({ content: `a${n}` }) })).msgId);
      toIos.push((await push(ios, { message: message({ content: `i${n}` }) })).msgId);
    }
    const androidWindow = await pending(android);
    expect(androidWindow.messages.map((m) => m.msgId)).toEqual(toAndroid.slice(3));
    expect(androidWindow.messages.map((m) => m.message?.content)).toEqual(['a4', 'a5']);
    expect(androidWindow.lastMsgId).toBe(toAndroid[4]);
    const iosWindow = await pending(ios);
    expect(iosWindow.messages.map((m) => m.message?.content)).toEqual(['i5']);
    expect(iosWindow.lastMsgId).toBe(toIos[4]);
    // After a msg id the device already has.
    expect(await pendingIds(android, toAndroid[3])).toEqual([toAndroid[4]]);
    expect(await pendingIds(android, toAndroid[4])).toEqual([]);
  });

  it('stops offering a message once its expire time has passed', async () => {
    const { push, registerDevice, pending, pendingIds, clock } = await setup();
    const token = await registerDevice();
    const short = await push(token, { expireTimeS: 60 });
    const long = await push(token);
    clock.advance(59_999);
    expect(await pendingIds(token)).toEqual([short.msgId, long.msgId]);
    clock.advance(2);
    expect(await pendingIds(token)).toEqual([long.msgId]);
    clock.advance(72 * HOUR_MS);
    const expired = await pending(token);
    expect(expired.messages).toEqual([]);
    // The window still knows the last id, which chains the next message.
    expect(expired.lastMsgId).toBe(long.msgId);
  });

  it('gives concurrent pushes to one device increasing msg ids, delivered in id order as one unbroken chain', async () => {
    // Accepts race each other (device lookups, the log append); the log's order decides the ids and the
    // applier publishes in that order.
    const count = 40;
    const { h, app, registerDevice, routeToNode, deliveries, pending, applied } = await setup();
    const token = await registerDevice();
    await routeToNode(token);

    const results = await Promise.all(
      Array.from({ length: count }, (_, n) =>
        h.push(notify(token, { message: message({ content: `m${n}` }) }), app.auth()),
      ),
    );
    for (const result of results) await applied(result.pushId);
    await waitFor(() => deliveries.length >= count, `${count} node deliveries`);

    expect(new Set(results.map((r) => r.msgId)).size).toBe(count);
    expect(new Set(results.map((r) => r.pushId)).size).toBe(count);
    // Published in id order, each naming the one before it: one chain, no fork, nothing to reorder.
    const ids = deliveries.map((d) => d.message?.msgId ?? 0);
    expect(ids).toEqual([...ids].sort((x, y) => x - y));
    expect(deliveries[0]?.previousMsgIds).toEqual([0]);
    for (let i = 1; i < deliveries.length; i++) {
      expect(deliveries[i]?.previousMsgIds, `delivery ${i}`).toEqual([deliveries[i - 1]?.message?.msgId]);
    }
    // What each call returned is what was delivered and recorded.
    for (const result of results) {
      const delivered = deliveries.find((d) => d.message?.pushId === result.pushId);
      expect(delivered?.message?.msgId).toBe(result.msgId);
      const { push: record } = await h.getPush({ accessId: 0, pushId: result.pushId }, app.auth());
      expect(record?.msgId).toBe(result.msgId);
    }
    const window = await pending(token);
    const highest = [...results.map((r) => r.msgId)].sort((a, b) => a - b).slice(-2);
    expect(window.messages.map((m) => m.msgId)).toEqual(highest);
    expect(window.lastMsgId).toBe(highest[1]);
  });

  it('publishes a SENT event to the durable stream', async () => {
    const { push, registerDevice, bus, app, clock } = await setup();
    const token = await registerDevice(Platform.PLATFORM_IOS);
    const result = await push(token);
    // A consumer that starts only now still finds the event: it was stored, not just published.
    const stored: Event[] = [];
    const consumer = bus.consume({
      stream: streams.events.name,
      consumer: 'test-sent',
      filterSubject: subjects.events('dispatch'),
      handler: async (data) => {
        stored.push(...EventBatch.decode(data).events);
      },
    });
    try {
      await waitFor(() => stored.length >= 1, 'the SENT event in the stream');
      expect(stored).toEqual([
        expect.objectContaining({
          type: EventType.EVENT_TYPE_SENT,
          accessId: app.accessId,
          pushId: result.pushId,
          msgId: result.msgId,
          platform: Platform.PLATFORM_IOS,
          tokens: [token],
          atMs: clock.now(),
        }),
      ]);
    } finally {
      await consumer.stop();
    }
  });

  it('still accepts the push when the SENT event cannot be published, and counts the failure', async () => {
    const { push, registerDevice, pendingIds, metrics, h, app } = await setup({
      bus: (bus) =>
        withDurablePublish(bus, async (real, subject, data, options) => {
          if (subject.startsWith('pushd.events.')) {
            throw new PushdError('UNAVAILABLE', 'stream unreachable (test)');
          }
          return real(subject, data, options);
        }),
    });
    const token = await registerDevice();
    const result = await push(token);
    expect(await pendingIds(token)).toEqual([result.msgId]);
    expect(await counterValue(metrics.eventPublishFailures)).toBe(1);
    await expect(h.getPush({ accessId: 0, pushId: result.pushId }, app.auth())).resolves.toMatchObject({
      push: { status: PushStatus.PUSH_STATUS_DONE },
    });
  });

  it('looks up the devices of concurrent single-token pushes together; an unknown token is refused alone', async () => {
    const calls = { get: 0, getMany: 0, registry: 0 };
    const { push, registerDevice, app, pendingIds } = await setup({
      devices: (real) =>
        Object.assign(Object.create(real) as DeviceStore, {
          get: async (accessId: number, token: string) => {
            calls.get++;
            return real.get(accessId, token);
          },
          getMany: async (accessId: number, tokens: string[]) => {
            calls.getMany++;
            return real.getMany(accessId, tokens);
          },
        }),
      // Device records are read from the store: the registry is not asked for them.
      registry: (real) => ({
        ...real,
        getDevice: async (...args) => {
          calls.registry++;
          return real.getDevice(...args);
        },
        getDevices: async (...args) => {
          calls.registry++;
          return real.getDevices(...args);
        },
      }),
    });
    const tokens: string[] = [];
    for (let i = 0; i < 12; i++) tokens.push(await registerDevice());
    const unknown = 'f'.repeat(40);
    const results = await Promise.allSettled([...tokens.map((token) => push(token)), push(unknown)]);
    for (const [i, token] of tokens.entries()) {
      const result = results[i];
      if (result?.status !== 'fulfilled') throw new Error(`push to ${token} refused: ${String(result)}`);
      expect(await pendingIds(token)).toEqual([result.value.msgId]);
    }
    // The same answer GetDevice gave before the lookups were batched.
    expect(results[12]).toMatchObject({
      status: 'rejected',
      reason: {
        code: 'TOKEN_NOT_FOUND',
        message: `no registered device has token "${unknown}" in app ${app.accessId}`,
        metadata: { token: unknown },
      },
    });
    expect(calls.get).toBe(0);
    expect(calls.registry).toBe(0);
    // 13 pushes accepted at once share reads (the first goes alone while the others arrive).
    expect(calls.getMany).toBeGreaterThan(0);
    expect(calls.getMany).toBeLessThan(13);
  });

  it('fails the push and stores nothing when the device store is unavailable', async () => {
    let storeDown = false;
    const { push, registerDevice, routeToNode, pending, deliveries, sentEvents, h, app, bus, metrics } =
      await setup({
        devices: (real) =>
          Object.assign(Object.create(real) as DeviceStore, {
            getMany: async (accessId: number, tokens: string[]) => {
              if (storeDown) throw new PushdError('UNAVAILABLE', 'redis unreachable (test)');
              return real.getMany(accessId, tokens);
            },
          }),
      });
    const token = await registerDevice();
    await routeToNode(token);
    storeDown = true;
    const refused = push(token);
    await expect(refused).rejects.toBeInstanceOf(PushdError);
    await expect(refused).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    await bus.flush();
    expect(await pending(token)).toEqual({ messages: [], lastMsgId: 0, lastBroadcastId: 0, dropped: 0 });
    expect(deliveries).toEqual([]);
    expect(sentEvents).toEqual([]);
    await expect(h.getPush({ accessId: 0, pushId: '1' }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    expect(await counterValue(metrics.pushes, { outcome: 'UNAVAILABLE' })).toBe(1);
    expect(await counterValue(metrics.pushes, { outcome: 'accepted' })).toBe(0);
  });

  it('keeps apps apart: another app cannot push to a token, read a push or name another access id', async () => {
    const { push, registerDevice, registryHandlers, h, pendingIds } = await setup();
    const token = await registerDevice();
    const result = await push(token);
    const other = await registryHandlers.createApp({ name: 'other' }, cluster());
    const asOther = () => callContext(basicAuthorization(other.app?.accessId ?? 0, other.secretKey));

    await expect(h.push(notify(token), asOther())).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    await expect(
      h.push(notify(token, { accessId: other.app!.accessId - 1 }), asOther()),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(h.getPush({ accessId: 0, pushId: result.pushId }, asOther())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    await expect(
      h.fetchPending({ accessId: other.app!.accessId, token, afterMsgId: 0 }, asOther()),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(h.push(notify(token), callContext())).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(h.push(notify(token), callContext(basicAuthorization(1, 'nope')))).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    expect(await pendingIds(token)).toEqual([result.msgId]);
  });

  it('lets the cluster token push to any app by access id', async () => {
    const { h, registerDevice, app, pendingIds, applied } = await setup();
    const token = await registerDevice();
    const result = await h.push(notify(token, { accessId: app.accessId }), cluster());
    await applied(result.pushId);
    expect(await pendingIds(token)).toEqual([result.msgId]);
    await expect(h.getPush({ accessId: app.accessId, pushId: '' }, cluster())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'push_id' },
    });
    await expect(
      h.fetchPending({ accessId: app.accessId, token: '', afterMsgId: 0 }, cluster()),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'token' } });
  });
});

describe('DispatchService.fetchPending after what the device processed', () => {
  it('counts window messages at or below the last id the device reported as arrived, and takes them out', async () => {
    const { push, registerDevice, h, app, sentEvents, metrics, pendingIds, bus } = await setup();
    const token = await registerDevice();
    const first = await push(token);
    const second = await push(token);
    const third = await push(token);
    const fetch = (afterMsgId: number, deviceProcessed?: boolean) =>
      h.fetchPending({ accessId: app.accessId, token, afterMsgId, deviceProcessed }, cluster());
    // A gateway's refetch after what it wrote: those may not have reached the device; nothing changes.
    expect((await fetch(second.msgId)).messages.map((m) => m.msgId)).toEqual([third.msgId]);
    expect(await pendingIds(token)).toEqual([second.msgId, third.msgId]);
    // The device connects saying it processed `second` (its ack was lost with its connection).
    const answer = await fetch(second.msgId, true);
    expect(answer.messages.map((m) => m.msgId)).toEqual([third.msgId]);
    await bus.flush();
    const arrived = sentEvents.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED);
    expect(arrived).toEqual([
      expect.objectContaining({ pushId: second.pushId, msgId: second.msgId, token, windowless: true }),
    ]);
    expect(arrived[0]?.sentAtMs).toBeUndefined();
    expect(await pendingIds(token)).toEqual([third.msgId]);
    expect(await counterValue(metrics.acksRecovered)).toBe(1);
    // `first` was evicted by the capacity before: it is not reported as arrived.
    expect(arrived.some((e) => e.msgId === first.msgId)).toBe(false);
  });

  it('leaves the window as it was when the broadcast-log read of the same fetch fails, for the retry', async () => {
    let logDown = false;
    const { push, registerDevice, h, app, sentEvents, bus } = await setup({
      broadcasts: (real) =>
        new Proxy(real, {
          get(target, property, receiver) {
            const value = Reflect.get(target, property, receiver);
            if (property !== 'since' || typeof value !== 'function') {
              return typeof value === 'function' ? value.bind(target) : value;
            }
            return async (...args: unknown[]) => {
              if (logDown) throw new PushdError('UNAVAILABLE', 'the broadcast log is unreachable (test)');
              return value.apply(target, args);
            };
          },
        }),
    });
    const token = await registerDevice();
    // Three on Android (offline capacity 2): the first is evicted, the window's dropped count is 1.
    await push(token);
    const processed = await push(token);
    const waiting = await push(token);
    const fetch = () =>
      h.fetchPending(
        { accessId: app.accessId, token, afterMsgId: processed.msgId, deviceProcessed: true },
        cluster(),
      );
    logDown = true;
    await expect(fetch()).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await bus.flush();
    // Nothing was reported; the retry finds what the failed fetch would have taken (the processed
    // message and the dropped count, which any read of the window resets).
    expect(sentEvents.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED)).toEqual([]);

    logDown = false;
    const answer = await fetch();
    expect(answer.messages.map((m) => m.msgId)).toEqual([waiting.msgId]);
    expect(answer.dropped).toBe(1);
    await bus.flush();
    expect(sentEvents.filter((e) => e.type === EventType.EVENT_TYPE_ARRIVED)).toEqual([
      expect.objectContaining({ pushId: processed.pushId, msgId: processed.msgId, token }),
    ]);
  });
});

describe('DispatchService.fetchPendingBatch', () => {
  /** What a caller sees of a settled FetchPending: the window's content, or the error. Tokens left out. */
  const seen = (settled: PromiseSettledResult<unknown>) => {
    if (settled.status === 'rejected') {
      const { code, message, metadata } = settled.reason as PushdError;
      return { code, message, metadata };
    }
    const response = settled.value as Awaited<ReturnType<Awaited<ReturnType<typeof setup>>['pending']>>;
    return { ...response, messages: response.messages.map((m) => [m.msgId, m.message?.content]) };
  };
  const settledOf = <T>(promise: Promise<T>): Promise<PromiseSettledResult<T>> =>
    promise.then(
      (value) => ({ status: 'fulfilled', value }),
      (reason: unknown) => ({ status: 'rejected', reason }),
    );

  /**
   * The same history in a fresh system: an Android device that lost one message to its window, an iOS
   * device with one, a device without messages, and a tag broadcast its gateway says it matches. Returns
   * the requests a gateway would send for them, with bad ones among them.
   */
  async function history() {
    const system = await setup();
    const { registerIndexed, push, pushRequest, app, clock } = system;
    const android = await registerIndexed(Platform.PLATFORM_ANDROID);
    const ios = await registerIndexed(Platform.PLATFORM_IOS);
    const quiet = await registerIndexed(Platform.PLATFORM_ANDROID);
    for (let n = 1; n <= 3; n++) await push(android, { message: message({ content: `a${n}` }) });
    await push(ios, { message: message({ content: 'i1' }) });
    clock.advance(3_000);
    await pushRequest(toTags(['vip'], 'OR'));
    const requests: FetchPendingRequest[] = [
      {
        accessId: app.accessId,
        token: android,
        afterMsgId: 0,
        device: pendingDevice(Platform.PLATFORM_ANDROID, []),
      },
      { accessId: app.accessId, token: '', afterMsgId: 0 },
      { accessId: app.accessId, token: ios, afterMsgId: 0, device: pendingDevice(Platform.PLATFORM_IOS, []) },
      {
        accessId: app.accessId,
        token: quiet,
        afterMsgId: 0,
        device: pendingDevice(Platform.PLATFORM_ANDROID, ['vip']),
      },
      { accessId: app.accessId, token: 'f'.repeat(40), afterMsgId: 0 },
    ];
    return { ...system, requests };
  }

  it('answers each request as FetchPending would, in order: a bad one fails alone', async () => {
    const batched = await history();
    const response = await batched.h.fetchPendingBatch({ requests: batched.requests }, cluster());
    // As the gateway gets it: through the wire format.
    const results = FetchPendingBatchResponse.decode(FetchPendingBatchResponse.encode(response).finish())
      .results.map(fromBatchResult)
      .map(seen);

    const single = await history();
    const singles: PromiseSettledResult<unknown>[] = [];
    for (const request of single.requests)
      singles.push(await settledOf(single.h.fetchPending(request, cluster())));
    expect(results).toEqual(singles.map(seen));

    expect(results[0]).toMatchObject({
      messages: [
        [expect.any(Number), 'a2'],
        [expect.any(Number), 'a3'],
      ],
      dropped: 1,
    });
    expect(results[1]).toEqual({
      code: 'INVALID_ARGUMENT',
      message: 'token: required',
      metadata: { field: 'token' },
    });
    expect(results[2]).toMatchObject({ dropped: 0 });
    expect((results[2] as { messages: unknown[][] }).messages.map(([, content]) => content)).toEqual(['i1']);
    expect((results[3] as { messages: unknown[] }).messages).toHaveLength(1);
    expect(results[4]).toMatchObject({ messages: [], lastMsgId: 0, dropped: 0 });
    // Each item reset its device's dropped count, as the single call does.
    expect((await batched.pending(batched.requests[0]!.token)).dropped).toBe(0);
  });

  it("reads each app's broadcast log once, from the lowest cursor, and gives each device what its own read gives", async () => {
    const { h, app, clock, stores, registerIndexed, pushRequest } = await setup();
    const devices = [
      await registerIndexed(Platform.PLATFORM_ANDROID),
      await registerIndexed(Platform.PLATFORM_ANDROID),
      await registerIndexed(Platform.PLATFORM_IOS),
      await registerIndexed(Platform.PLATFORM_ANDROID),
    ];
    for (let n = 1; n <= 3; n++) {
      clock.advance(3_000);
      await pushRequest(toTags(['vip'], 'OR', { message: message({ content: `b${n}` }) }));
    }
    const ids = (await stores.broadcasts.since(app.accessId, 0, clock.now(), 10)).entries.map((e) => e.msgId);
    expect(ids).toHaveLength(3);
    const cursors = [ids[0]!, 0, ids[1]!, ids[2]!];
    const requests: FetchPendingRequest[] = devices.map((token, i) => ({
      accessId: app.accessId,
      token,
      afterMsgId: cursors[i]!,
      device: pendingDevice(i === 2 ? Platform.PLATFORM_IOS : Platform.PLATFORM_ANDROID, ['vip']),
    }));
    const reads = vi.spyOn(stores.broadcasts, 'since');
    // A cursor the log refuses fails its own item only, as in the single call.
    const unsafe = { ...requests[0]!, afterMsgId: Number.MAX_SAFE_INTEGER + 2 };
    const { results: withBad } = await h.fetchPendingBatch({ requests: [unsafe, ...requests] }, cluster());
    const [bad, ...results] = withBad;
    expect(fromBatchResult(bad!)).toMatchObject({
      status: 'rejected',
      reason: { code: 'INVALID_ARGUMENT', metadata: { field: 'after_msg_id' } },
    });
    // One read for the app's good cursors, from the lowest; the refused cursor's own.
    expect(reads.mock.calls.map(([, afterMsgId]) => afterMsgId).sort()).toEqual([0, unsafe.afterMsgId]);

    const contents = (response: FetchPendingResponse) => response.messages.map((m) => m.message?.content);
    const batched = results.map(fromBatchResult).map((result) => {
      if (result.status === 'rejected') throw result.reason;
      return result.value as FetchPendingResponse;
    });
    expect(batched.map(contents)).toEqual([['b2', 'b3'], ['b2', 'b3'], ['b3'], []]);
    expect(batched.map((response) => response.dropped)).toEqual([0, 1, 0, 0]);
    expect(batched.every((response) => response.lastBroadcastId === ids[2])).toBe(true);
    for (const [i, request] of requests.entries()) {
      expect(batched[i]).toEqual(await h.fetchPending(request, cluster()));
    }
  });

  it('has the store calls of all its items in flight together', async () => {
    let inFlight = 0;
    let most = 0;
    const system = await setup({
      inboxes: (real) => ({
        ...real,
        append: real.append.bind(real),
        ack: real.ack.bind(real),
        clear: real.clear.bind(real),
        pending: async (...args) => {
          inFlight++;
          most = Math.max(most, inFlight);
          // A round trip: every call issued in this turn is in flight before any returns.
          await new Promise((resolve) => setImmediate(resolve));
          inFlight--;
          return real.pending(...args);
        },
      }),
    });
    const tokens = [
      await system.registerDevice(),
      await system.registerDevice(),
      await system.registerDevice(),
    ];
    const requests = tokens.map((token) => ({ accessId: system.app.accessId, token, afterMsgId: 0 }));
    const { results } = await system.h.fetchPendingBatch({ requests }, cluster());
    expect(results.map((result) => result.outcome?.$case)).toEqual(['response', 'response', 'response']);
    expect(most).toBe(3);
  });

  it('keeps a store failure of one device to that device, and fails as a whole only when nothing succeeded', async () => {
    let failing: (token: string) => boolean = () => false;
    const system = await setup({
      inboxes: (real) => ({
        ...real,
        append: real.append.bind(real),
        ack: real.ack.bind(real),
        clear: real.clear.bind(real),
        pending: async (accessId, token, ...rest) => {
          if (failing(token)) throw new PushdError('UNAVAILABLE', 'redis: command timed out (test)');
          return real.pending(accessId, token, ...rest);
        },
      }),
    });
    const { h, app, push, registerDevice, pending } = system;
    const lucky = await registerDevice();
    const unlucky = await registerDevice();
    for (let n = 1; n <= 3; n++) {
      await push(lucky);
      await push(unlucky);
    }
    const request = (token: string) => ({ accessId: app.accessId, token, afterMsgId: 0 });

    // One device's read fails: the other's answer (and its reset dropped count) is not thrown away.
    failing = (token) => token === unlucky;
    const { results } = await h.fetchPendingBatch(
      { requests: [request(unlucky), request(lucky)] },
      cluster(),
    );
    expect(fromBatchResult(results[0]!)).toMatchObject({
      status: 'rejected',
      reason: { code: 'UNAVAILABLE' },
    });
    expect(fromBatchResult(results[1]!)).toMatchObject({ status: 'fulfilled', value: { dropped: 1 } });

    // A bad request among failing reads: each keeps its own error.
    failing = () => true;
    const mixed = await h.fetchPendingBatch({ requests: [request(unlucky), request('')] }, cluster());
    expect(mixed.results.map((result) => fromBatchResult(result))).toMatchObject([
      { status: 'rejected', reason: { code: 'UNAVAILABLE' } },
      { status: 'rejected', reason: { code: 'INVALID_ARGUMENT' } },
    ]);

    // The store down for every item: the call fails, and nothing was reset.
    await expect(
      h.fetchPendingBatch({ requests: [request(unlucky), request(lucky)] }, cluster()),
    ).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    failing = () => false;
    expect((await pending(unlucky)).dropped).toBe(1);
  });

  it(`refuses an empty batch and one over ${MAX_BATCH_ITEMS} with INVALID_ARGUMENT, changing nothing`, async () => {
    const { h, app, push, registerDevice, pending } = await setup();
    const token = await registerDevice();
    for (let n = 1; n <= 3; n++) await push(token);
    const request = { accessId: app.accessId, token, afterMsgId: 0 };
    await expect(h.fetchPendingBatch({ requests: [] }, cluster())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'requests' },
    });
    await expect(
      h.fetchPendingBatch({ requests: Array(MAX_BATCH_ITEMS + 1).fill(request) }, cluster()),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: `requests: at most ${MAX_BATCH_ITEMS} per call (got ${MAX_BATCH_ITEMS + 1})`,
      metadata: { field: 'requests', limit: String(MAX_BATCH_ITEMS) },
    });
    // Cluster only, like FetchPending.
    await expect(h.fetchPendingBatch({ requests: [request] }, app.auth())).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    // The dropped count was not read (and reset) by any of them.
    expect((await pending(token)).dropped).toBe(1);
  });
});

describe('DispatchEventConsumer', () => {
  const startEventConsumer = (
    { bus, stores, metrics }: Awaited<ReturnType<typeof setup>>,
    devices: DeviceStore = stores.devices,
  ) => {
    const consumer = new DispatchEventConsumer({
      bus,
      inboxes: stores.inboxes,
      devices,
      metrics,
      logger: silentLogger(),
    });
    consumer.start();
    return consumer;
  };

  it('removes acknowledged messages from windows and clears the window of an unregistered device', async () => {
    const context = await setup();
    const { push, registerDevice, pending, pendingIds, bus, app, metrics, registryHandlers } = context;
    const consumer = startEventConsumer(context);
    try {
      const token = await registerDevice();
      const other = await registerDevice();
      const first = await push(token);
      const second = await push(token);
      const others = await push(other);

      // The gateway reports that the device received the first message.
      const arrived = (msgId: number, pushId: string, forToken = token): Event => ({
        type: EventType.EVENT_TYPE_ARRIVED,
        accessId: app.accessId,
        pushId,
        msgId,
        token: forToken,
        platform: Platform.PLATFORM_ANDROID,
        atMs: 0,
        tokens: [],
        tokensAtMs: [],
        windowless: false,
      });
      await bus.publishDurable(
        subjects.events('gateway'),
        EventBatch.encode({ events: [arrived(first.msgId, first.pushId)] }).finish(),
      );
      await waitFor(async () => (await pendingIds(token)).length === 1, 'the acked message to leave');
      expect(await pendingIds(token)).toEqual([second.msgId]);
      expect(await pendingIds(other)).toEqual([others.msgId]);

      // Applying the same ack again (a redelivery) is harmless; an ack of an unknown id is ignored.
      await bus.publishDurable(
        subjects.events('gateway'),
        EventBatch.encode({ events: [arrived(first.msgId, first.pushId), arrived(999, '')] }).finish(),
      );
      await waitFor(
        async () => (await counterValue(metrics.eventsConsumed, { type: 'arrived' })) >= 2,
        'the second ack batch to be applied',
      );
      expect(await pendingIds(token)).toEqual([second.msgId]);

      // Acks merged per message (a gateway's form): every device named leaves; a windowless one (a live
      // broadcast, in no window) is not looked for, even when its id matches a stored message.
      const third = await push(token);
      const fourth = await push(other);
      await bus.publishDurable(
        subjects.events('gateway'),
        EventBatch.encode({
          events: [
            { ...arrived(others.msgId, others.pushId, ''), tokens: [other], tokensAtMs: [1] },
            { ...arrived(third.msgId, third.pushId, ''), tokens: [token], windowless: true },
            { ...arrived(second.msgId, second.pushId, ''), tokens: [token, other] },
          ],
        }).finish(),
      );
      await waitFor(
        async () => (await pendingIds(other)).length === 1 && (await pendingIds(token)).length === 1,
        'the merged acks to be applied',
      );
      expect(await pendingIds(other)).toEqual([fourth.msgId]);
      expect(await pendingIds(token)).toEqual([third.msgId]);

      // The registry announces that the device unregistered: its whole window goes.
      await registryHandlers.unregisterDevice({ accessId: app.accessId, token }, cluster());
      await waitFor(async () => (await pending(token)).lastMsgId === 0, 'the window to be cleared');
      expect(await pending(token)).toEqual({ messages: [], lastMsgId: 0, lastBroadcastId: 0, dropped: 0 });
      expect(await pendingIds(other)).toEqual([fourth.msgId]);
      expect(await counterValue(metrics.eventsConsumed, { type: 'unregistered' })).toBe(1);
    } finally {
      await consumer.stop();
    }
  });

  it('clears the window of a device stored before device indexes existed (announced without one)', async () => {
    const context = await setup();
    const { push, registerDevice, pendingIds, bus, app, metrics, stores } = context;
    const token = await registerDevice();
    await push(token);
    // Such a record reads with index -1, and the registry announces its unregistration without an index.
    const legacy = Object.assign(Object.create(stores.devices) as DeviceStore, {
      get: async (accessId: number, forToken: string) => {
        const device = await stores.devices.get(accessId, forToken);
        return device && { ...device, index: -1 };
      },
    });
    const consumer = startEventConsumer(context, legacy);
    try {
      const unregistered = Event.create({
        type: EventType.EVENT_TYPE_UNREGISTERED,
        accessId: app.accessId,
        token,
        platform: Platform.PLATFORM_ANDROID,
      });
      await bus.publishDurable(
        subjects.events('registry'),
        EventBatch.encode({ events: [unregistered] }).finish(),
      );
      await waitFor(async () => (await pendingIds(token)).length === 0, 'the window to be cleared');
      expect(await counterValue(metrics.eventsConsumed, { type: 'unregistered' })).toBe(1);
    } finally {
      await consumer.stop();
    }
  });

  it('keeps the window of a device that registered again before its unregistration was applied', async () => {
    const context = await setup();
    const { push, pendingIds, app, metrics, registryHandlers, registerDevice } = context;
    const register = () => registerDevice(Platform.PLATFORM_ANDROID, 'device_registered_again');
    // Dispatch's event consumer is behind (an outage, or created again and replaying): the device
    // unregisters, registers again with the same device id (same token) and gets a push meanwhile.
    const token = await register();
    await registryHandlers.unregisterDevice({ accessId: app.accessId, token }, cluster());
    expect(await register()).toBe(token);
    const kept = await push(token);
    const consumer = startEventConsumer(context);
    try {
      await waitFor(
        async () => (await counterValue(metrics.eventsConsumed, { type: 'unregistered_superseded' })) === 1,
        'the late unregistration',
      );
      expect(await pendingIds(token)).toEqual([kept.msgId]);
      expect(await counterValue(metrics.eventsConsumed, { type: 'unregistered' })).toBe(0);

      // Its next unregistration is about the current registration: the window goes.
      await registryHandlers.unregisterDevice({ accessId: app.accessId, token }, cluster());
      await waitFor(async () => (await pendingIds(token)).length === 0, 'the window to be cleared');
      expect(await counterValue(metrics.eventsConsumed, { type: 'unregistered' })).toBe(1);
    } finally {
      await consumer.stop();
    }
  });
});

describe('DispatchService.push to several devices', () => {
  it('publishes once per gateway node for a token list, with each device chained, and lists unknown tokens', async () => {
    const { push, registerDevice, routeToNode, deliveries, sentEvents, pendingIds } = await setup();
    const online = [
      await registerDevice(),
      await registerDevice(Platform.PLATFORM_IOS),
      await registerDevice(),
    ];
    const offline = await registerDevice();
    for (const token of online) await routeToNode(token);
    const unknown = 'f'.repeat(40);
    const result = await push(online[0] ?? '', {
      audience: { target: { $case: 'tokenList', value: { tokens: [...online, offline, unknown, offline] } } },
    });
    expect(result).toMatchObject({ invalidTokens: [unknown], unknownAccounts: [], target: 4 });
    await waitFor(() => deliveries.length >= 1, 'the node delivery');
    await waitFor(() => sentEvents.length >= 2, 'SENT events per platform');
    expect(deliveries).toHaveLength(1);
    expect(deliveries[0]?.tokens.sort()).toEqual([...online].sort());
    expect(deliveries[0]?.previousMsgIds).toEqual([0, 0, 0]);
    expect(sentEvents.flatMap((e) => e.tokens).sort()).toEqual([...online, offline].sort());
    expect(await pendingIds(offline)).toEqual([result.msgId]);
  });

  it('restricts to a platform and refuses a list with no registered device, changing nothing', async () => {
    const { push, registerDevice, pendingIds } = await setup();
    const android = await registerDevice();
    const ios = await registerDevice(Platform.PLATFORM_IOS);
    const result = await push(android, {
      audience: { target: { $case: 'tokenList', value: { tokens: [android, ios] } } },
      platform: Platform.PLATFORM_IOS,
    });
    expect(result.target).toBe(1);
    expect(await pendingIds(android)).toEqual([]);
    expect(await pendingIds(ios)).toEqual([result.msgId]);
    await expect(
      push(android, { audience: { target: { $case: 'tokenList', value: { tokens: ['a'.repeat(40)] } } } }),
    ).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    await expect(
      push(android, {
        audience: {
          target: { $case: 'tokenList', value: { tokens: Array.from({ length: 1001 }, (_, i) => `t${i}`) } },
        },
      }),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'audience.token_list.tokens' } });
    await expect(push(android, { platform: 7 as Platform })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'platform' },
    });
    // The refused calls took no ids: the next push is the next push id.
    const next = await push(android);
    expect(Number(next.pushId)).toBe(Number(result.pushId) + 1);
  });
});

const toAll = (fields: Partial<PushRequest> = {}): PushRequest =>
  notify('', { audience: { target: { $case: 'all', value: {} } }, ...fields });
/** What a gateway tells dispatch of a device in FetchPending: its platform and tags, nothing else set. */
const pendingDevice = (platform: Platform, userTags: string[]): PendingDevice => ({
  platform,
  appVersion: '',
  osVersion: '',
  locale: '',
  registeredAtMs: 0,
  userTags,
});

const toTags = (tags: string[], op: string, fields: Partial<PushRequest> = {}): PushRequest =>
  notify('', {
    audience: { target: { $case: 'tags', value: { form: { $case: 'tagList', value: { tags, op } } } } },
    ...fields,
  });

describe('DispatchService.push to all devices and to tag expressions', () => {
  it('stores a broadcast once, publishes it to every gateway chained to the previous one, and counts its target', async () => {
    const { pushRequest, registerIndexed, bus, app, clock, stores, pending } = await setup();
    const broadcasts: BroadcastDelivery[] = [];
    bus.subscribe(subjects.allBroadcasts, (data) => broadcasts.push(BroadcastDelivery.decode(data)));
    const android = await registerIndexed(Platform.PLATFORM_ANDROID, ['vip']);
    await registerIndexed(Platform.PLATFORM_IOS, ['vip', 'beta']);
    await registerIndexed(Platform.PLATFORM_IOS);

    const all = await pushRequest(toAll());
    expect(all.target).toBe(3);
    clock.advance(3_000);
    const vipIos = await pushRequest(toTags(['vip'], 'OR', { platform: Platform.PLATFORM_IOS }));
    expect(vipIos.target).toBe(1);
    const beta = await pushRequest(toTags(['vip', 'beta'], 'AND'));
    expect(beta.target).toBe(1);
    await bus.flush();

    expect(broadcasts.map((b) => [b.message?.msgId, b.previousBroadcastId])).toEqual([
      [all.msgId, 0],
      [vipIos.msgId, all.msgId],
      [beta.msgId, vipIos.msgId],
    ]);
    expect(broadcasts[0]).toMatchObject({ accessId: app.accessId, expression: undefined });
    expect(broadcasts[1]).toMatchObject({ platform: Platform.PLATFORM_IOS });
    // Once per app, whatever the audience: nothing in any device's window.
    expect((await stores.inboxes.pending(app.accessId, android, 0, clock.now())).messages).toEqual([]);
    expect(await stores.broadcasts.head(app.accessId)).toBe(beta.msgId);
    // The android device matches only the broadcast to all; it comes back and finds it.
    expect((await pending(android)).messages.map((m) => m.msgId)).toEqual([all.msgId]);
  });

  it('matches a returning device against missed broadcasts with the facts its gateway passes, asking no one', async () => {
    let deviceLookups = 0;
    const { h, app, clock, registerIndexed, pushRequest } = await setup({
      devices: (real) =>
        Object.assign(Object.create(real) as DeviceStore, {
          get: async (accessId: number, token: string) => {
            deviceLookups++;
            return real.get(accessId, token);
          },
        }),
    });
    const token = await registerIndexed(Platform.PLATFORM_ANDROID, ['vip']);
    const vip = await pushRequest(toTags(['vip'], 'OR'));
    clock.advance(3_000);
    const beta = await pushRequest(toTags(['beta'], 'OR'));
    const fetch = (device?: PendingDevice) =>
      h.fetchPending({ accessId: app.accessId, token, afterMsgId: 0, device }, cluster());
    // Without facts, dispatch reads the device record and the stored tags: vip matches.
    expect((await fetch()).messages.map((m) => m.msgId)).toEqual([vip.msgId]);
    expect(deviceLookups).toBe(1);
    // With facts (the gateway's view: tags changed to beta), they decide, and no record is read.
    const facts = pendingDevice(Platform.PLATFORM_ANDROID, ['beta']);
    expect((await fetch(facts)).messages.map((m) => m.msgId)).toEqual([beta.msgId]);
    // Both tags: both pushes, in order; registered after them (and no cursor): neither.
    expect((await fetch({ ...facts, userTags: ['vip', 'beta'] })).messages.map((m) => m.msgId)).toEqual([
      vip.msgId,
      beta.msgId,
    ]);
    expect((await fetch({ ...facts, userTags: ['vip'], registeredAtMs: clock.now() + 1 })).messages).toEqual(
      [],
    );
    expect(deviceLookups).toBe(1);
  });

  it('refuses a second push to all within 3 seconds with RATE_LIMITED and a retry delay; other apps are unaffected', async () => {
    const { h, app, clock, registryHandlers, registerIndexed, pushRequest, metrics } = await setup();
    await registerIndexed();
    await pushRequest(toAll());
    clock.advance(1_000);
    const refused = h.push(toAll(), app.auth());
    await expect(refused).rejects.toMatchObject({
      code: 'RATE_LIMITED',
      metadata: { retry_after_ms: '2000' },
    });
    await expect(refused).rejects.toThrow(/once per 3 s; retry in 2000 ms/);
    expect(await counterValue(metrics.pushes, { audience: 'all', outcome: 'RATE_LIMITED' })).toBe(1);
    // Tag pushes are not limited by it.
    await expect(h.push(toTags(['vip'], 'OR'), app.auth())).resolves.toMatchObject({ target: 0 });
    const other = await registryHandlers.createApp({ name: 'other' }, cluster());
    const asOther = () => callContext(basicAuthorization(other.app?.accessId ?? 0, other.secretKey));
    await expect(h.push(toAll(), asOther())).resolves.toMatchObject({ target: 0 });
    clock.advance(2_000);
    await expect(h.push(toAll(), app.auth())).resolves.toMatchObject({ target: 1 });
  });

  it('refuses an invalid expression with INVALID_ARGUMENT, stores nothing and keeps the all slot free', async () => {
    const { h, app, stores } = await setup();
    await expect(h.push(toTags([], 'OR'), app.auth())).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(h.push(toTags(['has space'], 'OR'), app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(h.push(toTags(['pushd:platform:windows'], 'OR'), app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(h.push(toAll({ expireTimeS: MAX_EXPIRE_S + 1 }), app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(h.getPush({ accessId: 0, pushId: '1' }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    expect(await stores.broadcasts.head(app.accessId)).toBe(0);
    await expect(h.push(toAll(), app.auth())).resolves.toMatchObject({ pushId: '1' });
  });

  it('chains targeted deliveries onto the last broadcast, so a gateway can tell it missed one', async () => {
    const { push, pushRequest, registerIndexed, routeToNode, deliveries } = await setup();
    const token = await registerIndexed();
    await routeToNode(token);
    const before = await push(token);
    const all = await pushRequest(toAll());
    const after = await push(token);
    await waitFor(() => deliveries.length >= 2, 'two node deliveries');
    expect(deliveries.map((d) => [d.message?.msgId, d.previousMsgIds, d.previousBroadcastId])).toEqual([
      [before.msgId, [0], 0],
      [after.msgId, [before.msgId], all.msgId],
    ]);
  });

  it('gives a returning device the newest of its targeted and matching broadcast messages within its window', async () => {
    const { push, pushRequest, registerIndexed, pending, clock } = await setup();
    const android = await registerIndexed(Platform.PLATFORM_ANDROID, ['sports']);
    const ios = await registerIndexed(Platform.PLATFORM_IOS, ['sports']);
    const outsider = await registerIndexed(Platform.PLATFORM_ANDROID, ['news']);
    const ids: Record<string, number> = {};
    ids.t1 = (await push(android)).msgId;
    ids.all = (await pushRequest(toAll())).msgId;
    ids.sports = (await pushRequest(toTags(['sports'], 'OR'))).msgId;
    ids.t2 = (await push(ios)).msgId;
    ids.iosOnly = (await pushRequest(toTags(['sports'], 'OR', { platform: Platform.PLATFORM_IOS }))).msgId;
    ids.notSports = (await pushRequest(toTags(['news'], 'OR'))).msgId;

    // Android: t1, all, sports are its; the newest 2 win. iOS: t2, all, sports, iosOnly; the newest 1.
    const androidPending = await pending(android);
    expect(androidPending.messages.map((m) => m.msgId)).toEqual([ids.all, ids.sports]);
    // What the window lost and what the merge leaves out are counted for the device to resync.
    expect(androidPending.dropped).toBe(1);
    const iosPending = await pending(ios);
    expect(iosPending.messages.map((m) => m.msgId)).toEqual([ids.iosOnly]);
    expect(iosPending.dropped).toBe(3);
    expect(iosPending.lastBroadcastId).toBe(ids.notSports);
    expect(await pending(outsider)).toMatchObject({
      messages: [{ msgId: ids.all }, { msgId: ids.notSports }],
      dropped: 0,
    });
    // Past what the device reports having, and never after expiry.
    expect((await pending(android, ids.sports)).messages).toEqual([]);
    expect((await pending(android, ids.all)).messages.map((m) => m.msgId)).toEqual([ids.sports]);
    clock.advance(72 * HOUR_MS);
    expect((await pending(outsider)).messages).toEqual([]);
  });

  it('does not give a device that registered after a broadcast (and reports no cursor) that broadcast', async () => {
    const { pushRequest, registerIndexed, pending, clock } = await setup();
    const early = await registerIndexed();
    const all = await pushRequest(toAll());
    clock.advance(10);
    const late = await registerIndexed();
    expect((await pending(early)).messages.map((m) => m.msgId)).toEqual([all.msgId]);
    expect((await pending(late)).messages).toEqual([]);
  });

  it('applies a command twice without storing it twice, and republishes it chained onto itself', async () => {
    const { h, app, applier, stores, bus, clock, registerIndexed, routeToNode, deliveries } = await setup({
      startApplier: false,
    });
    const token = await registerIndexed();
    await routeToNode(token);
    const broadcasts: BroadcastDelivery[] = [];
    bus.subscribe(subjects.allBroadcasts, (data) => broadcasts.push(BroadcastDelivery.decode(data)));
    const accepted = await h.push(toAll(), app.auth());
    const command = {
      accessId: app.accessId,
      pushId: accepted.pushId,
      message: message({ content: 'to everyone' }),
      acceptedAtMs: clock.now(),
      expiresAtMs: clock.now() + HOUR_MS,
      platform: Platform.PLATFORM_UNSPECIFIED,
      audience: { target: { $case: 'all' as const, value: {} } },
      devices: [],
      countedTarget: 1,
      onlineOnly: false,
      occurrence: 0,
      moreOccurrences: false,
    };
    await applier.apply(command, accepted.msgId);
    await applier.apply(command, accepted.msgId);
    await bus.flush();
    expect(broadcasts.map((b) => [b.message?.msgId, b.previousBroadcastId])).toEqual([
      [accepted.msgId, 0],
      [accepted.msgId, accepted.msgId],
    ]);
    expect((await stores.broadcasts.since(app.accessId, 0, clock.now(), 10)).entries).toHaveLength(1);

    const targeted = {
      ...command,
      audience: undefined,
      devices: [{ token, platform: Platform.PLATFORM_ANDROID }],
    };
    await applier.apply(targeted, accepted.msgId + 1);
    await applier.apply(targeted, accepted.msgId + 1);
    await bus.flush();
    expect(deliveries.map((d) => [d.message?.msgId, d.previousMsgIds])).toEqual([
      [accepted.msgId + 1, [0]],
      [accepted.msgId + 1, [accepted.msgId + 1]],
    ]);
    expect((await stores.inboxes.pending(app.accessId, token, 0, clock.now())).messages).toHaveLength(1);
  });

  it('leaves alone a record that moved on when an entry is applied again (a consumer created again replays the log)', async () => {
    const { h, app, applier, stores, clock, registerIndexed } = await setup({ startApplier: false });
    const token = await registerIndexed();
    const accepted = await h.push(notify(token, { expireTimeS: 60 }), app.auth());
    const command = {
      accessId: app.accessId,
      pushId: accepted.pushId,
      message: message({ content: 'once' }),
      acceptedAtMs: clock.now(),
      expiresAtMs: clock.now() + 60_000,
      platform: Platform.PLATFORM_UNSPECIFIED,
      audience: undefined,
      devices: [{ token, platform: Platform.PLATFORM_ANDROID }],
      countedTarget: 1,
      onlineOnly: false,
      occurrence: 0,
      moreOccurrences: false,
    };
    const status = async (pushId: string) => (await stores.pushes.get(app.accessId, pushId))?.status;
    await applier.apply(command, accepted.msgId);
    expect(await status(accepted.pushId)).toBe(PushStatus.PUSH_STATUS_DONE);
    // Its entry, expired since, comes again: the push was sent, so it is not marked FAILED.
    clock.advance(60_000);
    await applier.apply(command, accepted.msgId);
    expect(await stores.pushes.get(app.accessId, accepted.pushId)).toMatchObject({
      status: PushStatus.PUSH_STATUS_DONE,
      failure: '',
    });

    // A recurring push's first occurrence comes again after the push was cancelled, and after its third
    // occurrence started: neither goes back to SCHEDULED nor loses its count.
    const recurring = { ...command, expiresAtMs: clock.now() + 60_000, moreOccurrences: true, occurrence: 1 };
    for (const [pushId, firing, before] of [
      ['cancelled', 1, PushStatus.PUSH_STATUS_CANCELLED],
      ['later', 3, PushStatus.PUSH_STATUS_SENDING],
    ] as const) {
      await stores.pushes.save(
        PushRecord.fromPartial({
          accessId: app.accessId,
          pushId,
          status: PushStatus.PUSH_STATUS_SCHEDULED,
          createdAtMs: clock.now(),
          occurrences: 2,
        }),
      );
      await stores.pushes.update(app.accessId, pushId, { status: PushStatus.PUSH_STATUS_SENDING, firing });
      await stores.pushes.update(app.accessId, pushId, { status: before });
      await applier.apply({ ...recurring, pushId }, accepted.msgId + firing);
      expect(await stores.pushes.get(app.accessId, pushId)).toMatchObject({ status: before, occurrences: 2 });
    }
  });

  it('delivers an occurrence appended twice to the push log once: the first entry claims it', async () => {
    const { app, applier, stores, clock, registerIndexed, routeToNode, deliveries, bus, metrics } =
      await setup({
        startApplier: false,
      });
    const token = await registerIndexed();
    await routeToNode(token);
    await stores.pushes.save(
      PushRecord.fromPartial({
        accessId: app.accessId,
        pushId: 'daily',
        status: PushStatus.PUSH_STATUS_SCHEDULED,
        createdAtMs: clock.now(),
      }),
    );
    // The scheduler started occurrence 1; it reached the log twice, past the deduplication window (an
    // instance stalled after starting it, another fired it again at the end of its lease).
    await stores.pushes.update(app.accessId, 'daily', { status: PushStatus.PUSH_STATUS_SENDING, firing: 1 });
    const occurrence = {
      accessId: app.accessId,
      pushId: 'daily',
      message: message({ content: 'good morning' }),
      acceptedAtMs: clock.now(),
      expiresAtMs: clock.now() + HOUR_MS,
      platform: Platform.PLATFORM_UNSPECIFIED,
      audience: undefined,
      devices: [{ token, platform: Platform.PLATFORM_ANDROID }],
      countedTarget: 1,
      onlineOnly: false,
      occurrence: 1,
      moreOccurrences: true,
    };
    // Both side by side: the second is kept out although the first has not updated the record yet. Then
    // the first comes again once its record moved on (its acknowledgement was lost): applied again, as
    // any entry is (its SENT counts published again, its message republished chained onto itself, which
    // gateways drop), and the second still not.
    await Promise.all([applier.apply(occurrence, 2048), applier.apply(occurrence, 3072)]);
    await applier.apply(occurrence, 2048);
    await applier.apply(occurrence, 3072);
    await bus.flush();
    expect(deliveries.map((d) => [d.message?.msgId, d.previousMsgIds])).toEqual([
      [2048, [0]],
      [2048, [2048]],
    ]);
    expect(
      (await stores.inboxes.pending(app.accessId, token, 0, clock.now())).messages.map((m) => m.msgId),
    ).toEqual([2048]);
    expect(await stores.pushes.get(app.accessId, 'daily')).toMatchObject({
      status: PushStatus.PUSH_STATUS_SCHEDULED,
      occurrences: 1,
      msgId: 2048,
    });
    expect(await counterValue(metrics.occurrencesNotClaimed)).toBe(2);

    // Occurrence 2: an expired copy (a re-fire past its TTL) reaches the log before the stalled first
    // attempt's live entry, and both are applied together (one look-ahead). The first entry decides: the
    // occurrence is marked expired, nothing delivered.
    await stores.pushes.update(app.accessId, 'daily', { status: PushStatus.PUSH_STATUS_SENDING, firing: 2 });
    await Promise.all([
      applier.apply({ ...occurrence, occurrence: 2, expiresAtMs: 1 }, 4096),
      applier.apply({ ...occurrence, occurrence: 2 }, 5120),
    ]);
    await bus.flush();
    expect(deliveries).toHaveLength(2);
    expect(await stores.pushes.get(app.accessId, 'daily')).toMatchObject({
      status: PushStatus.PUSH_STATUS_SCHEDULED,
      occurrences: 2,
      failure: 'expired in the push log before it could be sent',
    });
    expect(await counterValue(metrics.occurrencesNotClaimed)).toBe(3);
  });

  it('marks a push that waited in the log past its expiry as failed and delivers nothing', async () => {
    const { h, app, applier, stores, clock, registerIndexed, applied } = await setup({ startApplier: false });
    const token = await registerIndexed();
    const accepted = await h.push(notify(token, { expireTimeS: 60 }), app.auth());
    clock.advance(60_000);
    applier.start();
    await applied(accepted.pushId);
    expect((await stores.pushes.get(app.accessId, accepted.pushId))?.status).toBe(
      PushStatus.PUSH_STATUS_FAILED,
    );
    expect((await stores.inboxes.pending(app.accessId, token, 0, 0)).messages).toEqual([]);
  });
});

describe('DispatchService.push online only (expire_time_s 0)', () => {
  it('sends a targeted push to the devices connected now, stores it nowhere and counts only them as sent', async () => {
    const { push, registerDevice, routeToNode, deliveries, pending, sentEvents, bus, h, app } = await setup();
    const online = await registerDevice();
    const offline = await registerDevice();
    await routeToNode(online);
    const stored = await push(online);
    const result = await pushRequest(
      notify('', {
        audience: { target: { $case: 'tokenList', value: { tokens: [online, offline] } } },
        expireTimeS: 0,
      }),
    );
    await waitFor(() => deliveries.length >= 2, 'two node deliveries');
    await bus.flush();
    // No window predecessor claimed, and marked online only: it was never in a window, so a gateway must
    // not take it for a link of the device chain.
    expect(deliveries[1]).toMatchObject({
      tokens: [online],
      message: { msgId: result.msgId },
      previousMsgIds: [0],
      onlineOnly: true,
    });
    expect(deliveries[0]?.onlineOnly).toBe(false);
    expect((await pending(online)).messages.map((m) => m.msgId)).toEqual([stored.msgId]);
    expect((await pending(offline)).messages).toEqual([]);
    expect(
      sentEvents.filter((event) => event.pushId === result.pushId).flatMap((event) => event.tokens),
    ).toEqual([online]);
    expect(result.target).toBe(2);
    const { push: record } = await h.getPush({ accessId: 0, pushId: result.pushId }, app.auth());
    expect(record?.status).toBe(PushStatus.PUSH_STATUS_DONE);
    async function pushRequest(request: PushRequest) {
      const accepted = await h.push(request, app.auth());
      await waitFor(
        async () =>
          (await h.getPush({ accessId: 0, pushId: accepted.pushId }, app.auth())).push?.status !==
          PushStatus.PUSH_STATUS_SENDING,
        'applied',
      );
      return accepted;
    }
  });

  it('keeps an online-only broadcast out of the log but in the broadcast chain', async () => {
    const { pushRequest, registerIndexed, stores, app, clock, bus, pending } = await setup();
    const broadcasts: BroadcastDelivery[] = [];
    bus.subscribe(subjects.allBroadcasts, (data) => broadcasts.push(BroadcastDelivery.decode(data)));
    const device = await registerIndexed();
    const live = await pushRequest(toAll({ expireTimeS: 0 }));
    clock.advance(3_000);
    const kept = await pushRequest(toAll());
    await bus.flush();
    // Marked online only: a gateway whose log read covers its id must not take it as fetched.
    expect(broadcasts.map((b) => [b.message?.msgId, b.previousBroadcastId, b.onlineOnly])).toEqual([
      [live.msgId, 0, true],
      [kept.msgId, live.msgId, false],
    ]);
    expect(
      (await stores.broadcasts.since(app.accessId, 0, clock.now(), 10)).entries.map((e) => e.msgId),
    ).toEqual([kept.msgId]);
    expect((await pending(device)).messages.map((m) => m.msgId)).toEqual([kept.msgId]);
  });

  it('drops an online-only push that waited in the log longer than a minute', async () => {
    const { h, app, applier, stores, clock, registerIndexed, routeToNode, deliveries, applied, bus } =
      await setup({
        startApplier: false,
      });
    const token = await registerIndexed();
    await routeToNode(token);
    const accepted = await h.push(notify(token, { expireTimeS: 0 }), app.auth());
    clock.advance(ONLINE_ONLY_TTL_MS);
    applier.start();
    await applied(accepted.pushId);
    await bus.flush();
    expect(deliveries).toEqual([]);
    expect((await stores.pushes.get(app.accessId, accepted.pushId))?.status).toBe(
      PushStatus.PUSH_STATUS_FAILED,
    );
  });
});

describe('DispatchService scheduling, cancel, list and idempotency', () => {
  it('keeps a push with a future send_time SCHEDULED, then sends it once when it is due', async () => {
    const { h, app, clock, scheduler, registerDevice, routeToNode, deliveries, applied, bus } = await setup();
    const token = await registerDevice();
    await routeToNode(token);
    const accepted = await h.push(notify(token, { sendTimeMs: clock.now() + 60_000 }), app.auth());
    expect(accepted.msgId).toBe(0);
    const record = async () => (await h.getPush({ accessId: 0, pushId: accepted.pushId }, app.auth())).push;
    expect(await record()).toMatchObject({
      status: PushStatus.PUSH_STATUS_SCHEDULED,
      sendTimeMs: clock.now() + 60_000,
    });

    clock.advance(59_999);
    await scheduler.poll();
    await bus.flush();
    expect(deliveries).toEqual([]);
    clock.advance(1);
    await scheduler.poll();
    await scheduler.poll();
    await applied(accepted.pushId);
    await waitFor(() => deliveries.length === 1, 'the scheduled delivery');
    expect(await record()).toMatchObject({ status: PushStatus.PUSH_STATUS_DONE, occurrences: 1 });
    expect((await record())?.msgId).toBe(deliveries[0]?.message?.msgId);
  });

  it('cancels a scheduled push (nothing is sent), refuses an immediate one, a sent one and an unknown one', async () => {
    const { h, app, clock, scheduler, registerDevice, routeToNode, deliveries, bus } = await setup();
    const token = await registerDevice();
    await routeToNode(token);
    const later = await h.push(notify(token, { sendTimeMs: clock.now() + 60_000 }), app.auth());
    const cancelled = await h.cancelPush({ accessId: 0, pushId: later.pushId }, app.auth());
    expect(cancelled.push?.status).toBe(PushStatus.PUSH_STATUS_CANCELLED);
    // Cancelling twice answers the same.
    expect((await h.cancelPush({ accessId: 0, pushId: later.pushId }, app.auth())).push?.status).toBe(
      PushStatus.PUSH_STATUS_CANCELLED,
    );
    clock.advance(120_000);
    await scheduler.poll();
    await bus.flush();
    expect(deliveries).toEqual([]);

    const now = await h.push(notify(token), app.auth());
    await expect(h.cancelPush({ accessId: 0, pushId: now.pushId }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_CANCELLABLE',
    });
    const soon = await h.push(notify(token, { sendTimeMs: clock.now() + 1_000 }), app.auth());
    clock.advance(1_000);
    await scheduler.poll();
    await waitFor(
      async () =>
        (await h.getPush({ accessId: 0, pushId: soon.pushId }, app.auth())).push?.status ===
        PushStatus.PUSH_STATUS_DONE,
      'sent',
    );
    await expect(h.cancelPush({ accessId: 0, pushId: soon.pushId }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_ALREADY_SENT',
      metadata: { status: 'DONE' },
    });
    await expect(h.cancelPush({ accessId: 0, pushId: '999' }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    await expect(h.cancelPush({ accessId: 0, pushId: '' }, app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
  });

  it('a cancel racing the send is either cancelled with nothing delivered or already sent, never both (200 races)', async () => {
    // A random head start for either side, so that both orders (and the interleavings between) occur.
    const jitter = async () => {
      for (let n = Math.floor(Math.random() * 6); n > 0; n--)
        await new Promise((resolve) => setImmediate(resolve));
    };
    const { h, app, clock, scheduler, registerDevice, routeToNode, deliveries, bus, applied } = await setup();
    const token = await registerDevice();
    await routeToNode(token);
    let cancelledCount = 0;
    let sentCount = 0;
    const cancelledIds = new Set<string>();
    for (let race = 0; race < 200; race++) {
      const accepted = await h.push(notify(token, { sendTimeMs: clock.now() + 1 }), app.auth());
      clock.advance(1);
      const [cancel] = await Promise.allSettled([
        jitter().then(() => h.cancelPush({ accessId: 0, pushId: accepted.pushId }, app.auth())),
        jitter().then(() => scheduler.poll()),
      ]);
      await scheduler.poll();
      await bus.flush();
      if (cancel.status === 'fulfilled') {
        cancelledCount++;
        cancelledIds.add(accepted.pushId);
      } else {
        expect(cancel.reason).toMatchObject({ code: 'PUSH_ALREADY_SENT' });
        sentCount++;
        await applied(accepted.pushId);
        await waitFor(
          () => deliveries.some((d) => d.message?.pushId === accepted.pushId),
          `race ${race} sent`,
        );
      }
    }
    // Once everything settled, no cancelled push was delivered, and every sent one was.
    await new Promise((resolve) => setTimeout(resolve, 200));
    await bus.flush();
    expect(deliveries.filter((d) => cancelledIds.has(d.message?.pushId ?? ''))).toEqual([]);
    expect(deliveries).toHaveLength(sentCount);
    // Both outcomes happened: the race was real.
    expect(cancelledCount + sentCount).toBe(200);
    expect(cancelledCount).toBeGreaterThan(0);
    expect(sentCount).toBeGreaterThan(0);
  });

  it('waits for the accept window, and refuses a push whose next window opens after it expires', async () => {
    const { h, app, clock, registerDevice } = await setup();
    const token = await registerDevice();
    const midnight = Math.ceil(clock.now() / 86_400_000) * 86_400_000;
    clock.set(midnight + 2 * 3_600_000); // 02:00 UTC
    const window = { windows: [{ startMinute: 9 * 60, endMinute: 18 * 60 }], timeZone: 'UTC' };
    const waiting = await h.push(notify(token, { acceptTime: window }), app.auth());
    const { push } = await h.getPush({ accessId: 0, pushId: waiting.pushId }, app.auth());
    expect(push).toMatchObject({ status: PushStatus.PUSH_STATUS_SCHEDULED });
    await expect(
      h.push(notify(token, { acceptTime: window, expireTimeS: 3_600 }), app.auth()),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'accept_time' } });
  });

  it('answers a retried call with the same idempotency key with the first result and sends once', async () => {
    const { h, app, registerDevice, routeToNode, deliveries, applied, bus } = await setup();
    const token = await registerDevice();
    await routeToNode(token);
    const first = await h.push(notify(token, { idempotencyKey: 'order-1234' }), app.auth());
    const again = await h.push(notify(token, { idempotencyKey: 'order-1234' }), app.auth());
    expect(again).toEqual(first);
    await applied(first.pushId);
    await bus.flush();
    expect(deliveries.filter((d) => d.message?.pushId === first.pushId)).toHaveLength(1);
    expect(deliveries).toHaveLength(1);
    // Another key is another push; a refused call frees its key for the retry.
    const other = await h.push(notify(token, { idempotencyKey: 'order-5678' }), app.auth());
    expect(other.pushId).not.toBe(first.pushId);
    await expect(
      h.push(notify('0'.repeat(40), { idempotencyKey: 'order-9' }), app.auth()),
    ).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    await expect(h.push(notify(token, { idempotencyKey: 'order-9' }), app.auth())).resolves.toMatchObject({
      target: 1,
    });
    await expect(h.push(notify(token, { idempotencyKey: '' }), app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'idempotency_key' },
    });
  });

  it('lists pushes newest first, filtered by status and creation time, a page at a time', async () => {
    const { h, app, clock, registerDevice, applied } = await setup();
    const token = await registerDevice();
    const ids: string[] = [];
    for (let n = 0; n < 5; n++) {
      const accepted = await h.push(notify(token), app.auth());
      await applied(accepted.pushId);
      ids.push(accepted.pushId);
      clock.advance(1_000);
    }
    const scheduled = await h.push(notify(token, { sendTimeMs: clock.now() + 3_600_000 }), app.auth());
    const list = (fields: Partial<Parameters<typeof h.listPushes>[0]>) =>
      h.listPushes(
        {
          accessId: 0,
          createdFromMs: 0,
          createdToMs: 0,
          statuses: [],
          pageSize: 0,
          pageToken: '',
          ...fields,
        },
        app.auth(),
      );
    const all = await list({});
    expect(all.pushes.map((p) => p.pushId)).toEqual([scheduled.pushId, ...[...ids].reverse()]);
    expect(
      (await list({ statuses: [PushStatus.PUSH_STATUS_SCHEDULED] })).pushes.map((p) => p.pushId),
    ).toEqual([scheduled.pushId]);
    const firstPage = await list({ pageSize: 2, statuses: [PushStatus.PUSH_STATUS_DONE] });
    expect(firstPage.pushes.map((p) => p.pushId)).toEqual([ids[4], ids[3]]);
    const secondPage = await list({
      pageSize: 2,
      statuses: [PushStatus.PUSH_STATUS_DONE],
      pageToken: firstPage.nextPageToken,
    });
    expect(secondPage.pushes.map((p) => p.pushId)).toEqual([ids[2], ids[1]]);
    await expect(list({ pageSize: 1001 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(list({ createdFromMs: 10, createdToMs: 5 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    // Unknown statuses and negative bounds are refused, naming the field, rather than answered empty.
    for (const [fields, field] of [
      [{ statuses: [PushStatus.PUSH_STATUS_DONE, 9 as PushStatus] }, 'statuses[1]'],
      [{ statuses: [PushStatus.PUSH_STATUS_UNSPECIFIED] }, 'statuses[0]'],
      [{ createdFromMs: -1 }, 'created_from_ms'],
      [{ createdToMs: -5 }, 'created_to_ms'],
      [{ pageToken: 'not-a-token' }, 'page_token'],
    ] as [Partial<Parameters<typeof h.listPushes>[0]>, string][]) {
      await expect(list(fields), field).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        metadata: { field },
      });
    }
  });

  it('sends a daily recurring push once a day until its end, then marks it done', async () => {
    const { h, app, clock, scheduler, registerDevice, routeToNode, deliveries, bus } = await setup();
    const token = await registerDevice();
    await routeToNode(token);
    const day = 86_400_000;
    const start = clock.now() + 1_000;
    const accepted = await h.push(
      notify(token, {
        sendTimeMs: start,
        loop: { interval: LoopInterval.LOOP_INTERVAL_DAILY, endTimeMs: start + 2 * day + 1 },
      }),
      app.auth(),
    );
    for (let n = 1; n <= 3; n++) {
      clock.set(start + (n - 1) * day);
      await routeToNode(token); // routes expire (an hour) while the clock jumps days
      await scheduler.poll();
      await waitFor(() => deliveries.length === n, `occurrence ${n}`);
      await waitFor(async () => {
        const { push } = await h.getPush({ accessId: 0, pushId: accepted.pushId }, app.auth());
        return push?.occurrences === n && push.status !== PushStatus.PUSH_STATUS_SENDING;
      }, `occurrence ${n} applied`);
    }
    clock.set(start + 3 * day);
    await scheduler.poll();
    await bus.flush();
    expect(deliveries).toHaveLength(3);
    const ids = deliveries.map((d) => d.message?.msgId ?? 0);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    const { push } = await h.getPush({ accessId: 0, pushId: accepted.pushId }, app.auth());
    expect(push).toMatchObject({ status: PushStatus.PUSH_STATUS_DONE, occurrences: 3 });
  });

  it('marks a push FAILED, not SCHEDULED for ever, when it could not be scheduled', async () => {
    let failedPushId = '';
    const { h, app, clock, stores, registerDevice } = await setup({
      pushes: (real) =>
        Object.assign(Object.create(real) as PushStore, {
          saveCommand: async (accessId: number, pushId: string, command: ScheduledCommand) => {
            failedPushId = pushId;
            await real.saveCommand(accessId, pushId, command);
            throw new PushdError('UNAVAILABLE', 'redis unreachable (test): the answer was lost');
          },
        }),
    });
    const token = await registerDevice();
    await expect(
      h.push(notify(token, { sendTimeMs: clock.now() + 60_000 }), app.auth()),
    ).rejects.toMatchObject({
      code: 'UNAVAILABLE',
    });
    expect(await stores.pushes.get(app.accessId, failedPushId)).toMatchObject({
      status: PushStatus.PUSH_STATUS_FAILED,
      failure: 'it could not be scheduled',
    });
    // Never sent: cancelling it is refused as having nothing left to cancel, not as already sent.
    await expect(h.cancelPush({ accessId: 0, pushId: failedPushId }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_CANCELLABLE',
      message: expect.stringContaining('it could not be scheduled'),
      metadata: { status: 'FAILED' },
    });
    // One that failed after something was sent (a loop whose last occurrence expired) was sent.
    await stores.pushes.update(app.accessId, failedPushId, { msgId: 7 }, [PushStatus.PUSH_STATUS_FAILED]);
    await expect(h.cancelPush({ accessId: 0, pushId: failedPushId }, app.auth())).rejects.toMatchObject({
      code: 'PUSH_ALREADY_SENT',
      metadata: { status: 'FAILED' },
    });
  });

  it('answers a push as accepted when its schedule entry was stored, and fired, though the write failed', async () => {
    let fire: (() => Promise<void>) | undefined;
    const context = await setup({
      schedules: (real) =>
        Object.assign(Object.create(real) as ScheduleStore, {
          add: async (...args: Parameters<ScheduleStore['add']>) => {
            await real.add(...args);
            await fire?.(); // due and fired before the write's answer (lost) would have come back
            throw new PushdError('UNAVAILABLE', 'redis unreachable (test): the answer was lost');
          },
        }),
    });
    const { h, app, clock, scheduler, registerDevice, applied } = context;
    fire = async () => {
      clock.advance(1_000);
      await scheduler.poll();
    };
    const token = await registerDevice();
    const accepted = await h.push(notify(token, { sendTimeMs: clock.now() + 1_000 }), app.auth());
    await applied(accepted.pushId);
    expect((await h.getPush({ accessId: 0, pushId: accepted.pushId }, app.auth())).push).toMatchObject({
      status: PushStatus.PUSH_STATUS_DONE,
    });
  });

  it('gives up an occurrence that cannot be applied and still fires the next one', async () => {
    const { h, app, clock, scheduler, stores, bus, metrics, applier, registerDevice, pendingIds } =
      await setup({
        startApplier: false,
      });
    const token = await registerDevice();
    const day = 86_400_000;
    const start = clock.now() + 1_000;
    const accepted = await h.push(
      notify(token, {
        sendTimeMs: start,
        loop: { interval: LoopInterval.LOOP_INTERVAL_DAILY, endTimeMs: start + day + 1 },
      }),
      app.auth(),
    );
    const record = async () => (await h.getPush({ accessId: 0, pushId: accepted.pushId }, app.auth())).push;
    // Occurrence 1 meets a device store that keeps failing (Redis unreachable for longer than the retries).
    const failing = applierFailingFor(
      token,
      { stores, bus, metrics, clock },
      { retryDelaysMs: [1], maxDeliveries: 2 },
    );
    failing.start();
    clock.set(start);
    await scheduler.poll();
    await waitFor(async () => (await record())?.failure !== '', 'occurrence 1 given up');
    expect(await record()).toMatchObject({
      status: PushStatus.PUSH_STATUS_SCHEDULED,
      occurrences: 1,
      failure: expect.stringContaining('occurrence 1 could not be applied'),
    });
    await failing.stop();

    applier.start();
    clock.set(start + day);
    await scheduler.poll();
    await waitFor(
      async () => (await record())?.status === PushStatus.PUSH_STATUS_DONE,
      'occurrence 2 applied',
    );
    expect(await record()).toMatchObject({ occurrences: 2 });
    expect(await pendingIds(token)).toHaveLength(1);
  });
});

/**
 * A PushApplier on the test's stores whose window appends for `broken` fail (Redis unreachable), taking a
 * partition over after 20 ms, with the given retries and deliveries.
 */
function applierFailingFor(
  broken: string,
  env: { stores: Stores; bus: Bus; metrics: DispatchMetrics; clock: ManualClock },
  options: { retryDelaysMs: number[]; maxDeliveries: number; onFailure?: () => void },
): PushApplier {
  const { stores } = env;
  return new PushApplier({
    pushes: stores.pushes,
    inboxes: {
      ...stores.inboxes,
      pending: (...args) => stores.inboxes.pending(...args),
      ack: (...args) => stores.inboxes.ack(...args),
      clear: (...args) => stores.inboxes.clear(...args),
      append: async (accessId, token, ...rest) => {
        if (token === broken) {
          options.onFailure?.();
          throw new PushdError('UNAVAILABLE', 'redis unreachable (test)');
        }
        return stores.inboxes.append(accessId, token, ...rest);
      },
    },
    routes: stores.routes,
    broadcasts: stores.broadcasts,
    bus: env.bus,
    partitions: PARTITIONS,
    lookAheadMinPending: 1,
    takeOverAfterMs: 20,
    retryDelaysMs: options.retryDelaysMs,
    maxDeliveries: options.maxDeliveries,
    metrics: env.metrics,
    logger: silentLogger(),
    clock: env.clock,
  });
}

/** A bus whose push-log appends wait while `held` (pushes accepted meanwhile then share an entry). */
function holdingLog(memory: MemoryBus) {
  const gate = { held: false, waiting: [] as (() => void)[] };
  const bus = withDurablePublish(memory, async (real, subject, data, options) => {
    if (gate.held && subject.startsWith('pushd.pushes.')) {
      await new Promise<void>((resolve) => gate.waiting.push(resolve));
    }
    return real(subject, data, options);
  });
  const release = () => {
    gate.held = false;
    for (const resolve of gate.waiting.splice(0)) resolve();
  };
  return { bus, gate, release };
}

describe('PushApplier applying pushes accepted together (one log entry)', () => {
  it('applies them in msg_id order: windows, chains and broadcasts as if applied one by one', async () => {
    let log: ReturnType<typeof holdingLog> | undefined;
    const { h, app, bus, registerIndexed, routeToNode, deliveries, sentEvents, pendingIds, applied } =
      await setup({
        bus: (real) => {
          log = holdingLog(real);
          return log.bus;
        },
      });
    const broadcasts: BroadcastDelivery[] = [];
    bus.subscribe(subjects.allBroadcasts, (data) => broadcasts.push(BroadcastDelivery.decode(data)));
    const android = await registerIndexed(Platform.PLATFORM_ANDROID);
    await registerIndexed(Platform.PLATFORM_IOS);
    await routeToNode(android);

    // The first push's append is in flight; everything accepted meanwhile waits and goes in one entry.
    if (log === undefined) throw new Error('no bus');
    log.gate.held = true;
    const first = h.push(notify(android, { message: message({ content: 'first' }) }), app.auth());
    await waitFor(() => log?.gate.waiting.length === 1, 'the first append in flight');
    const together = await Promise.all([
      ...[
        notify(android, { message: message({ content: 'second' }) }),
        toAll(),
        notify(android, { message: message({ content: 'third' }) }),
      ].map((request) => h.push(request, app.auth())),
      (async () => {
        await waitFor(() => (log?.gate.waiting.length ?? 0) >= 1, 'the first append held');
        // Let the four calls reach the log's queue behind the held append, then release it.
        await new Promise((resolve) => setTimeout(resolve, 50));
        log?.release();
        return first;
      })(),
    ]);
    const [second, all, third, one] = together as PushResponse[];
    for (const result of together as PushResponse[]) await applied(result.pushId);
    const entryOf = (msgId: number) => Math.floor(msgId / 1024);
    // One entry for the three that waited, another (earlier) for the first.
    expect(new Set([second, all, third].map((r) => entryOf(r?.msgId ?? 0))).size).toBe(1);
    expect(entryOf(one?.msgId ?? 0)).toBeLessThan(entryOf(second?.msgId ?? 0));

    // The android device's messages, in msg_id order, each chained to the one before it.
    const targeted = [one, second, third].map((r) => r?.msgId ?? 0).sort((a, b) => a - b);
    expect(deliveries.map((d) => d.message?.msgId)).toEqual(targeted);
    expect(deliveries.map((d) => d.previousMsgIds)).toEqual([[0], [targeted[0]], [targeted[1]]]);
    // Each carries the broadcast before it in the log: 0 before the broadcast to all, its id after it.
    const allId = all?.msgId ?? 0;
    expect(deliveries.map((d) => d.previousBroadcastId)).toEqual(
      targeted.map((msgId) => (msgId > allId ? allId : 0)),
    );
    expect(await pendingIds(android)).toEqual(targeted.slice(1));
    // One broadcast: the push to all.
    await bus.flush();
    expect(broadcasts.map((b) => b.message?.msgId)).toEqual([allId]);
    expect(sentEvents.map((e) => e.msgId).sort((a, b) => a - b)).toEqual(targeted);
  });

  it('refuses a push to named devices none of which is on the platform it names, storing nothing', async () => {
    const { h, app, bus, stores, registerDevice, applier, deliveries } = await setup();
    const android = await registerDevice(Platform.PLATFORM_ANDROID);
    const refused = h.push(
      notify('', {
        audience: { target: { $case: 'tokenList', value: { tokens: [android] } } },
        platform: Platform.PLATFORM_IOS,
      }),
      app.auth(),
    );
    await expect(refused).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'platform' },
    });
    await expect(refused).rejects.toThrow(/none of the 1 targeted devices is on PLATFORM_IOS/);
    expect((await stores.pushes.list(app.accessId, { limit: 10 })).pushes).toEqual([]);

    // The applier never takes a push without devices for a broadcast (it would reach every iOS device).
    const broadcasts: BroadcastDelivery[] = [];
    bus.subscribe(subjects.allBroadcasts, (data) => broadcasts.push(BroadcastDelivery.decode(data)));
    await applier.apply(
      PushCommand.create({
        accessId: app.accessId,
        pushId: 'no-devices',
        message: message({ content: 'x' }),
        acceptedAtMs: Date.now(),
        expiresAtMs: Number.MAX_SAFE_INTEGER,
        platform: Platform.PLATFORM_IOS,
        audience: { target: { $case: 'token', value: android } },
        devices: [],
      }),
      1,
    );
    await bus.flush();
    expect(broadcasts).toEqual([]);
    expect(deliveries).toEqual([]);
  });

  it('gives up only the push that cannot be applied, not the pushes of its entry', async () => {
    let log: ReturnType<typeof holdingLog> | undefined;
    const { h, app, stores, bus, metrics, clock, registerDevice, routeToNode, deliveries, applied } =
      await setup({
        startApplier: false,
        bus: (real) => {
          log = holdingLog(real);
          return log.bus;
        },
      });
    const broken = await registerDevice();
    const healthy = await registerDevice();
    await routeToNode(healthy);
    const applier = applierFailingFor(
      broken,
      { stores, bus, metrics, clock },
      { retryDelaysMs: [1], maxDeliveries: 2 },
    );
    if (log === undefined) throw new Error('no bus');
    log.gate.held = true;
    const opener = h.push(notify(healthy), app.auth());
    await waitFor(() => log?.gate.waiting.length === 1, 'the first append in flight');
    const entry = [notify(healthy), notify(broken), notify(healthy)].map((request) =>
      h.push(request, app.auth()),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    log.release();
    const [before, stuck, after] = await Promise.all(entry);
    await opener;
    applier.start();
    try {
      for (const result of [before, after]) await applied(result?.pushId ?? '');
      expect(Math.floor((before?.msgId ?? 0) / 1024)).toBe(Math.floor((after?.msgId ?? 0) / 1024));
      await waitFor(
        async () =>
          (await stores.pushes.get(app.accessId, stuck?.pushId ?? ''))?.status ===
          PushStatus.PUSH_STATUS_FAILED,
        'the broken push given up',
      );
      for (const result of [before, after]) {
        expect(await stores.pushes.get(app.accessId, result?.pushId ?? '')).toMatchObject({
          status: PushStatus.PUSH_STATUS_DONE,
        });
      }
      // The healthy device got its three messages (the opener's and the two of the entry), in order.
      await waitFor(() => new Set(deliveries.map((d) => d.message?.msgId)).size === 3, 'three messages');
      const ids = [...new Set(deliveries.map((d) => d.message?.msgId ?? 0))];
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
    } finally {
      await applier.stop();
    }
  });
});

describe('PushApplier when a push cannot be applied', () => {
  it('tries again, then gives the push up as FAILED so that the pushes behind it in the partition go on', async () => {
    const { h, app, stores, bus, metrics, clock, registerDevice, routeToNode, deliveries, applied } =
      await setup({
        startApplier: false,
      });
    const broken = await registerDevice();
    const healthy = await registerDevice();
    await routeToNode(healthy);
    let failures = 0;
    const applier = applierFailingFor(
      broken,
      { stores, bus, metrics, clock },
      { retryDelaysMs: [1, 1], maxDeliveries: 3, onFailure: () => failures++ },
    );
    // Both in the log before the applier starts: the first delivery takes the push behind along.
    const stuck = await h.push(notify(broken), app.auth());
    const behind = await h.push(notify(healthy), app.auth());
    applier.start();
    try {
      await applied(behind.pushId);
      expect(await stores.pushes.get(app.accessId, stuck.pushId)).toMatchObject({
        status: PushStatus.PUSH_STATUS_FAILED,
        failure: 'could not be applied: redis unreachable (test)',
      });
      // Once together with the push behind it (look-ahead, on the first delivery only), then as without
      // look-ahead: three tries per delivery, three deliveries, then once more on its own before it is
      // given up.
      expect(failures).toBe(11);
      await waitFor(() => deliveries.length === 1, 'the push behind it');
      expect(deliveries[0]?.message?.pushId).toBe(behind.pushId);
    } finally {
      await applier.stop();
    }
  });
});

describe('PushApplier backlog gauge', () => {
  it('reports the accepted pushes not applied yet', async () => {
    const { h, app, applier, metrics, registerDevice, applied } = await setup({ startApplier: false });
    const token = await registerDevice();
    // The partitions' consumers exist (as after any earlier run), but no instance applies now.
    applier.start();
    await applier.stop();
    const accepted = [];
    for (let n = 0; n < 3; n++) accepted.push(await h.push(notify(token), app.auth()));
    await applier.refreshBacklog();
    expect(await counterValue(metrics.pushLogBacklog)).toBe(3);
    applier.start();
    for (const push of accepted) await applied(push.pushId);
    await waitFor(async () => {
      await applier.refreshBacklog();
      return (await counterValue(metrics.pushLogBacklog)) === 0;
    }, 'an empty backlog');
  });
});

describe('PushApplier look-ahead (entries waiting behind a delivery applied with it)', () => {
  /** Accepts each push alone (one entry each: nothing else is in flight), in this order. */
  const acceptOneByOne = async (
    h: Awaited<ReturnType<typeof setup>>['h'],
    auth: () => ReturnType<typeof cluster>,
    requests: PushRequest[],
  ) => {
    const accepted: PushResponse[] = [];
    for (const request of requests) accepted.push(await h.push(request, auth()));
    const entries = accepted.map((r) => Math.floor(r.msgId / 1024));
    expect(new Set(entries).size).toBe(requests.length);
    return accepted;
  };

  it('applies a backlog in one application, in log order, and acknowledges the later deliveries without applying them', async () => {
    const env = await setup({ startApplier: false });
    const { h, app, applier, bus, metrics, registerIndexed, routeToNode, deliveries, pendingIds, applied } =
      env;
    const broadcasts: BroadcastDelivery[] = [];
    bus.subscribe(subjects.allBroadcasts, (data) => broadcasts.push(BroadcastDelivery.decode(data)));
    const online = await registerIndexed();
    const offline = await registerIndexed();
    await routeToNode(online);
    const requests = [
      notify(online),
      notify(offline),
      notify(online),
      toAll(),
      notify(offline),
      notify(online),
      notify(offline),
    ];
    const accepted = await acceptOneByOne(h, app.auth, requests);
    applier.start();
    for (const result of accepted) await applied(result.pushId);
    await bus.flush();

    // One application for the seven entries; the six deliveries behind the first only acknowledged.
    await waitFor(
      async () => (await counterValue(metrics.entriesSkipped)) === 6,
      'the six later deliveries acknowledged',
    );
    expect(await histogramTotals(metrics.applyEntries)).toEqual({ count: 1, sum: 7 });
    expect(await counterValue(metrics.appliedAgain)).toBe(0);

    // Each device's messages in log order, each chained to the one before it, as if applied one by one.
    const ids = accepted.map((r) => r.msgId);
    const allId = ids[3] ?? 0;
    const onlineIds = [ids[0], ids[2], ids[5]] as number[];
    expect(deliveries.map((d) => d.message?.msgId)).toEqual(onlineIds);
    expect(deliveries.map((d) => d.previousMsgIds)).toEqual([[0], [onlineIds[0]], [onlineIds[1]]]);
    expect(deliveries.map((d) => d.previousBroadcastId)).toEqual([0, 0, allId]);
    expect(broadcasts.map((b) => b.message?.msgId)).toEqual([allId]);
    // Windows and the broadcast log: the newest two messages of each device (Android), the push to all
    // among them where it is newer.
    expect(await pendingIds(online)).toEqual([allId, onlineIds[2]]);
    expect(await pendingIds(offline)).toEqual([ids[4], ids[6]]);
  });

  it('with lookAheadEntries 0, applies each entry on its own delivery', async () => {
    const { h, app, applier, metrics, registerIndexed, pendingIds, applied } = await setup({
      startApplier: false,
      lookAheadEntries: 0,
    });
    const token = await registerIndexed();
    const accepted = await acceptOneByOne(h, app.auth, [notify(token), notify(token), notify(token)]);
    applier.start();
    for (const result of accepted) await applied(result.pushId);
    expect(await histogramTotals(metrics.applyEntries)).toEqual({ count: 3, sum: 3 });
    expect(await counterValue(metrics.entriesSkipped)).toBe(0);
    expect(await pendingIds(token)).toEqual(accepted.slice(1).map((r) => r.msgId));
  });

  it('looks ahead only with lookAheadMinPending entries waiting (by default 4): fewer are applied alone', async () => {
    const { h, app, applier, metrics, registerIndexed, pendingIds, applied } = await setup({
      startApplier: false,
      lookAheadMinPending: 4,
    });
    const token = await registerIndexed();
    // Three entries wait behind the first when it is delivered: under the threshold.
    const few = await acceptOneByOne(h, app.auth, [
      notify(token),
      notify(token),
      notify(token),
      notify(token),
    ]);
    applier.start();
    for (const result of few) await applied(result.pushId);
    expect(await histogramTotals(metrics.applyEntries)).toEqual({ count: 4, sum: 4 });
    await applier.stop();
    // Four wait behind the next first one: all five together.
    const more = await acceptOneByOne(
      h,
      app.auth,
      Array.from({ length: 5 }, () => notify(token)),
    );
    applier.start();
    for (const result of more) await applied(result.pushId);
    expect(await histogramTotals(metrics.applyEntries)).toEqual({ count: 5, sum: 9 });
    expect(await pendingIds(token)).toEqual(more.slice(-2).map((r) => r.msgId));
  });

  it("makes another instance skip what it applied ahead: the marker arrives before that instance's delivery", async () => {
    const { h, app, stores, bus, metrics, clock, registerIndexed, routeToNode, deliveries, applied } =
      await setup({ startApplier: false });
    const token = await registerIndexed();
    await routeToNode(token);
    const accepted = await acceptOneByOne(h, app.auth, [
      notify(token),
      notify(token),
      notify(token),
      notify(token),
    ]);
    // Two instances, each with its own connection to the bus, both consuming every partition: the
    // deliveries of a partition go to them in turns, so the second entry's goes to the other instance.
    const instance = () =>
      new PushApplier({
        ...stores,
        bus: new MemoryBus({ broker: bus.broker }),
        partitions: PARTITIONS,
        lookAheadMinPending: 1,
        metrics,
        logger: silentLogger(),
        clock,
      });
    const appliers = [instance(), instance()];
    for (const applier of appliers) applier.start();
    try {
      for (const result of accepted) await applied(result.pushId);
      await waitFor(
        async () => (await counterValue(metrics.entriesSkipped)) === 3,
        'the three later deliveries acknowledged',
      );
      expect(await histogramTotals(metrics.applyEntries)).toEqual({ count: 1, sum: 4 });
      expect(await counterValue(metrics.appliedAgain)).toBe(0);
      await bus.flush();
      expect(deliveries.map((d) => d.message?.msgId)).toEqual(accepted.map((r) => r.msgId));
    } finally {
      await Promise.all(appliers.map((applier) => applier.stop()));
    }
  });

  it('applies the delivered entry alone when a later one fails, and leaves the later one its own deliveries', async () => {
    const { h, app, stores, bus, metrics, clock, registerDevice, routeToNode, deliveries, applied } =
      await setup({ startApplier: false });
    const broken = await registerDevice();
    const healthy = await registerDevice();
    await routeToNode(healthy);
    let failures = 0;
    const applier = applierFailingFor(
      broken,
      { stores, bus, metrics, clock },
      { retryDelaysMs: [1], maxDeliveries: 2, onFailure: () => failures++ },
    );
    const [first, stuck, last] = await acceptOneByOne(h, app.auth, [
      notify(healthy),
      notify(broken),
      notify(healthy),
    ]);
    applier.start();
    try {
      await applied(last?.pushId ?? '');
      expect(await stores.pushes.get(app.accessId, first?.pushId ?? '')).toMatchObject({
        status: PushStatus.PUSH_STATUS_DONE,
      });
      expect(await stores.pushes.get(app.accessId, stuck?.pushId ?? '')).toMatchObject({
        status: PushStatus.PUSH_STATUS_FAILED,
      });
      expect(await stores.pushes.get(app.accessId, last?.pushId ?? '')).toMatchObject({
        status: PushStatus.PUSH_STATUS_DONE,
      });
      // The broken push failed: once with the first entry's look-ahead (the first entry then applied
      // alone, on its first delivery), once with its own look-ahead, then two tries on each of its two
      // deliveries and once more alone before it was given up. Given up early (with the first entry's
      // fate), it would have failed fewer times.
      expect(failures).toBe(7);
      // Nothing was given up but the broken push, and no look-ahead completed.
      expect(await counterValue(metrics.entriesSkipped)).toBe(0);
      await waitFor(() => new Set(deliveries.map((d) => d.message?.msgId)).size === 2, 'two messages');
      const ids = [...new Set(deliveries.map((d) => d.message?.msgId ?? 0))];
      expect(ids).toEqual([first?.msgId, last?.msgId]);
    } finally {
      await applier.stop();
    }
  });

  it('stops the look-ahead before an undecodable entry, which its own delivery drops loudly', async () => {
    const { h, app, applier, bus, metrics, registerIndexed, pendingIds, applied } = await setup({
      startApplier: false,
    });
    const token = await registerIndexed();
    const [before] = await acceptOneByOne(h, app.auth, [notify(token)]);
    // A truncated varint: no protobuf decoder reads it.
    await bus.publishDurable(
      subjects.pushes(pushPartition(app.accessId, PARTITIONS)),
      new Uint8Array([0xff]),
    );
    const [after] = await acceptOneByOne(h, app.auth, [notify(token)]);
    applier.start();
    await applied(after?.pushId ?? '');
    await applied(before?.pushId ?? '');
    // The first entry alone (nothing decodable right behind it), then the third, on its own delivery.
    expect(await histogramTotals(metrics.applyEntries)).toEqual({ count: 2, sum: 2 });
    expect(await counterValue(metrics.applyFailures)).toBe(1);
    expect(await counterValue(metrics.entriesSkipped)).toBe(0);
    expect(await pendingIds(token)).toEqual([before?.msgId, after?.msgId]);
  });
});

import { MemoryBus, streams, subjects } from '@pushd/bus';
import { ManualClock, PushdError, silentLogger } from '@pushd/common';
import {
  type DispatchServiceService,
  type Event,
  EventBatch,
  EventType,
  Platform,
  PushRecord,
  RegistryServiceService,
  StatsServiceService,
  type TagServiceService,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import {
  basicAuthorization,
  bearerAuthorization,
  callContext,
  inProcessClient,
  type PromiseClient,
} from '@pushd/rpc';
import {
  createMemoryStores,
  DAY_MS,
  DEFAULT_DEDUP_TTL_MS,
  dayOf,
  latencyBucket,
  latencyBucketUpperMs,
} from '@pushd/store';
import { waitFor } from '@pushd/testkit';
import { type MetricValue, Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { StatsService } from './stats-service.js';

const CLUSTER_TOKEN = 'stats-unit-test-cluster-token';
const NOW = Date.UTC(2026, 4, 20, 12);
const TODAY = '2026-05-20';
const HOUR_MS = 3_600_000;

const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));

const stopAfterTest: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const stop of stopAfterTest.splice(0)) await stop();
});

interface SetupOptions {
  /** Calls of dispatch GetPush fail with UNAVAILABLE while this returns true. */
  dispatchDown?: () => boolean;
  /**
   * The bus stores events at the test's clock, and the service consumes only once the test calls
   * `startConsuming` (a stats consumer created while the stream holds older events).
   */
  consumeLater?: boolean;
}

async function setup(options: SetupOptions = {}) {
  const clock = new ManualClock(NOW);
  const stores = createMemoryStores({ clock });
  const bus = new MemoryBus({ streams: [streams.events], clock: options.consumeLater ? clock : undefined });
  const bearer = bearerAuthorization(CLUSTER_TOKEN);
  const registry = new RegistryService({
    apps: stores.apps,
    devices: stores.devices,
    bus,
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
  }).handlers();
  const registryClient = inProcessClient(RegistryServiceService, registry, bearer);

  // Dispatch as the stats service sees it: push records to read. Pushes are made by `sendPush` below.
  const pushes = new Map<string, PushRecord>();
  let getPushCalls = 0;
  const dispatch = {
    getPush: async ({ accessId, pushId }: { accessId: number; pushId: string }) => {
      getPushCalls++;
      if (options.dispatchDown?.()) throw new PushdError('UNAVAILABLE', 'dispatch is down');
      const push = pushes.get(`${accessId}:${pushId}`);
      if (!push) throw new PushdError('PUSH_NOT_FOUND', `no push has id "${pushId}"`);
      return { push };
    },
  } as unknown as PromiseClient<typeof DispatchServiceService>;
  // The tag service's online counts: what the audience index would say.
  const online = new Map<number, { android: number; ios: number }>();
  const tag = {
    countAudience: async ({ accessId, platform }: { accessId: number; platform: Platform }) => {
      const { android, ios } = online.get(accessId) ?? { android: 0, ios: 0 };
      const count =
        platform === Platform.PLATFORM_ANDROID
          ? android
          : platform === Platform.PLATFORM_IOS
            ? ios
            : android + ios;
      return { matched: 0, online: count };
    },
  } as unknown as PromiseClient<typeof TagServiceService>;

  const metrics = new Registry();
  const service = new StatsService({
    stats: stores.stats,
    bus,
    registry: registryClient,
    dispatch,
    tag,
    clusterToken: CLUSTER_TOKEN,
    metrics,
    logger: silentLogger(),
    clock,
    watchIntervalMs: 200,
    watchPollMs: 1_000,
    redeliverAfterMs: 100,
  });
  if (!options.consumeLater) service.startConsuming();
  stopAfterTest.push(() => service.stop());
  const h = service.handlers();

  let apps = 0;
  const createApp = async (name = `app${++apps}`) => {
    const created = await registry.createApp({ name }, cluster());
    const accessId = created.app?.accessId ?? 0;
    const credentials = basicAuthorization(accessId, created.secretKey);
    const auth = () => callContext(credentials);
    const client = inProcessClient(StatsServiceService, h, credentials);
    let pushCount = 0;
    /** A push record as dispatch keeps it; returns its id. */
    const sendPush = (target: number) => {
      const pushId = String(++pushCount);
      pushes.set(`${accessId}:${pushId}`, PushRecord.fromPartial({ accessId, pushId, target }));
      return pushId;
    };
    let devices = 0;
    const register = async (platform = Platform.PLATFORM_ANDROID) => {
      const registered = await registry.registerDevice(
        {
          accessId,
          accessKey: created.accessKey,
          deviceId: `device_${accessId}_${String(++devices).padStart(8, '0')}`,
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
    const stats = async (pushId: string) => (await h.getPushStats({ accessId: 0, pushId }, auth())).stats;
    return { accessId, auth, client, sendPush, register, stats };
  };

  /** Events folded so far, by type (the service's own counter). */
  const applied = async (type: 'sent' | 'arrived' | 'clicked') =>
    metricValue(metrics, 'stats_events_applied_total', { type });

  const publish = (source: 'gateway' | 'dispatch', events: Partial<Event>[]) =>
    bus.publishDurable(
      subjects.events(source),
      EventBatch.encode({
        events: events.map((e) => ({
          type: EventType.EVENT_TYPE_UNSPECIFIED,
          accessId: 0,
          pushId: '',
          msgId: 0,
          token: '',
          platform: Platform.PLATFORM_ANDROID,
          atMs: clock.now(),
          tokens: [],
          tokensAtMs: [],
          windowless: false,
          ...e,
        })),
      }).finish(),
    );

  return {
    stores,
    clock,
    metrics,
    bus,
    h,
    createApp,
    applied,
    publish,
    online,
    getPushCalls: () => getPushCalls,
    startConsuming: () => service.startConsuming(),
  };
}

async function metricValue(metrics: Registry, name: string, labels: Record<string, string> = {}) {
  const values = (await metrics.getSingleMetric(name)?.get())?.values ?? [];
  return values
    .filter((v) => Object.entries(labels).every(([key, value]) => v.labels[key] === value))
    .reduce((sum, v) => sum + v.value, 0);
}

const { EVENT_TYPE_SENT: SENT, EVENT_TYPE_ARRIVED: ARRIVED, EVENT_TYPE_CLICKED: CLICKED } = EventType;
const { PLATFORM_ANDROID: ANDROID, PLATFORM_IOS: IOS } = Platform;

describe('StatsService', () => {
  it("gives a push's funnel: target, sent, arrived, clicked, conversion, per platform, arrival percentiles", async () => {
    const { createApp, applied, publish, clock, metrics } = await setup();
    const app = await createApp();
    const pushId = app.sendPush(6);
    const a = { accessId: app.accessId, pushId };
    const sentAtMs = clock.now() - 10_000;
    // Dispatch: one SENT per platform; a gateway: a broadcast delivery of another device, counted there.
    await publish('dispatch', [
      { ...a, type: SENT, platform: ANDROID, tokens: ['t1', 't2', 't3', 't4'] },
      { ...a, type: SENT, platform: IOS, tokens: ['t5'] },
    ]);
    await publish('gateway', [
      { ...a, type: SENT, platform: IOS, tokens: ['t6'] },
      // Acks 300 ms, 2 s and 8 s after the message was sent; t1 acks twice (a redelivery).
      { ...a, type: ARRIVED, token: 't1', sentAtMs, atMs: sentAtMs + 300 },
      { ...a, type: ARRIVED, token: 't2', sentAtMs, atMs: sentAtMs + 2_000 },
      { ...a, type: ARRIVED, token: 't5', platform: IOS, sentAtMs, atMs: sentAtMs + 8_000 },
      { ...a, type: ARRIVED, token: 't1', sentAtMs, atMs: sentAtMs + 9_000 },
      // Clicks: t1 twice, and t3, whose ack was lost (it counts: the device got it).
      { ...a, type: CLICKED, token: 't1' },
      { ...a, type: CLICKED, token: 't3' },
      { ...a, type: CLICKED, token: 't1' },
    ]);
    await waitFor(async () => (await applied('clicked')) === 3, 'the clicks');
    const stats = await app.stats(pushId);
    expect(stats).toEqual({
      pushId,
      target: 6,
      sent: 6,
      arrived: 3,
      clicked: 2,
      conversion: 2 / 3,
      platforms: [
        { platform: ANDROID, sent: 4, arrived: 2, clicked: 2 },
        { platform: IOS, sent: 2, arrived: 1, clicked: 0 },
      ],
      arrivalLatency: {
        count: 3,
        p50Ms: latencyBucketUpperMs(latencyBucket(2_000)),
        p90Ms: latencyBucketUpperMs(latencyBucket(8_000)),
        p99Ms: latencyBucketUpperMs(latencyBucket(8_000)),
      },
    });
    expect(await metricValue(metrics, 'stats_devices_counted_total')).toBe(6 + 3 + 2);
    expect(await metricValue(metrics, 'stats_events_applied_total')).toBe(3 + 4 + 3);
    // The lag of each event folded (now - at_ms): the acks' at_ms are up to 9.7 s ago.
    const lag = ((await metrics.getSingleMetric('stats_event_lag_seconds')?.get())?.values ??
      []) as (MetricValue<string> & { metricName?: string })[];
    const count = lag.filter((v) => v.metricName === 'stats_event_lag_seconds_count');
    expect(count.reduce((sum, v) => sum + v.value, 0)).toBe(10);
    const sum = lag.filter((v) => v.metricName === 'stats_event_lag_seconds_sum');
    expect(sum.find((v) => v.labels.type === 'arrived')?.value).toBeCloseTo(9.7 + 8 + 2 + 1, 5);
  });

  it('folds batches of many events, counting each device once per push however often it is reported', async () => {
    const { createApp, applied, publish, stores } = await setup();
    const app = await createApp();
    const pushId = app.sendPush(3);
    const other = app.sendPush(1);
    const a = { accessId: app.accessId };
    await publish('dispatch', [
      { ...a, pushId, type: SENT, tokens: ['t1', 't2', 't3'] },
      { ...a, pushId: other, type: SENT, tokens: ['t1'] },
      // Without a push id: not countable.
      { ...a, pushId: '', type: SENT, tokens: ['t4'] },
    ]);
    await publish('gateway', [
      { ...a, pushId, type: ARRIVED, token: 't1' },
      { ...a, pushId, type: ARRIVED, token: 't2' },
      { ...a, pushId, type: ARRIVED, token: 't1' },
      { ...a, pushId: other, type: ARRIVED, token: 't1' },
      { ...a, pushId: '', type: ARRIVED, token: 't3' },
      { ...a, type: EventType.EVENT_TYPE_UNREGISTERED, token: 't3' },
    ]);
    await waitFor(async () => (await applied('arrived')) === 5, 'the arrivals');
    expect(await app.stats(pushId)).toMatchObject({ sent: 3, arrived: 2, clicked: 0, conversion: 0 });
    expect(await app.stats(other)).toMatchObject({ sent: 1, arrived: 1 });
    expect(await stores.stats.getFunnel(app.accessId, '')).toMatchObject({ sent: 0, arrived: 0 });

    // A duplicate ARRIVED in a later batch (a device acking a redelivery, or the stream redelivering), and
    // a replayed SENT batch: nothing changes.
    await publish('gateway', [{ ...a, pushId, type: ARRIVED, token: 't2' }]);
    await publish('dispatch', [{ ...a, pushId, type: SENT, tokens: ['t1', 't2', 't3'] }]);
    await waitFor(async () => (await applied('sent')) === 4, 'the replays');
    expect(await app.stats(pushId)).toMatchObject({ sent: 3, arrived: 2 });
  });

  it('counts each occurrence of a recurring push (a message of its own) for its devices again', async () => {
    const { createApp, applied, publish } = await setup();
    const app = await createApp();
    const pushId = app.sendPush(2);
    const a = { accessId: app.accessId, pushId };
    // Occurrences 1 and 2 of a daily push (msg 1024, then 2048) to the same two devices, each acked.
    for (const msgId of [1024, 2048]) {
      await publish('dispatch', [{ ...a, msgId, type: SENT, tokens: ['t1', 't2'] }]);
      await publish('gateway', [
        { ...a, msgId, type: ARRIVED, token: 't1' },
        { ...a, msgId, type: ARRIVED, token: 't2' },
      ]);
    }
    await waitFor(async () => (await applied('arrived')) === 4, 'the arrivals');
    expect(await app.stats(pushId)).toMatchObject({ sent: 4, arrived: 4 });
    // Clicks count once per device and push: a click names its msg_id itself, so made-up ids (or each
    // occurrence's) do not count it again.
    await publish('gateway', [
      { ...a, msgId: 1024, type: CLICKED, token: 't1' },
      { ...a, msgId: 2048, type: CLICKED, token: 't1' },
      { ...a, msgId: 999_999, type: CLICKED, token: 't1' },
    ]);
    await waitFor(async () => (await applied('clicked')) === 3, 'the clicks');
    expect(await app.stats(pushId)).toMatchObject({ clicked: 1 });
  });

  it('drops an undecodable event batch, loudly, instead of having it delivered again for days', async () => {
    const { createApp, applied, publish, bus } = await setup();
    const app = await createApp();
    const pushId = app.sendPush(1);
    await bus.publishDurable(subjects.events('gateway'), Uint8Array.of(0x0a, 0xff, 0xff, 0xff));
    await publish('dispatch', [{ accessId: app.accessId, pushId, type: SENT, tokens: ['t1'] }]);
    await waitFor(async () => (await applied('sent')) === 1, 'the valid batch');
    // Both acknowledged: nothing waits to be delivered again.
    await waitFor(async () => (await bus.consumerBacklog(streams.events.name, 'stats')) === 0, 'no backlog');
  });

  it('reads back no further than its dedup window, less an hour, when its consumer is created', async () => {
    const { createApp, applied, publish, clock, startConsuming } = await setup({ consumeLater: true });
    const app = await createApp();
    const pushId = app.sendPush(2);
    await publish('dispatch', [{ accessId: app.accessId, pushId, type: SENT, tokens: ['counted-long-ago'] }]);
    clock.advance(2 * HOUR_MS);
    await publish('dispatch', [{ accessId: app.accessId, pushId, type: SENT, tokens: ['recent'] }]);
    // The first event is now 96 h old: beyond the 95 h read back, not read (had it been counted when new,
    // its push's dedup set could be gone and it would count twice). The second, 94 h old, is read.
    clock.advance(DEFAULT_DEDUP_TTL_MS - 2 * HOUR_MS);
    startConsuming();
    await waitFor(async () => (await applied('sent')) === 1, 'the recent event');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await applied('sent')).toBe(1);
    expect(await app.stats(pushId)).toMatchObject({ sent: 1 });
  });

  it('counts ARRIVED events merged per message device by device, each with its own latency', async () => {
    const { createApp, applied, publish, clock } = await setup();
    const app = await createApp();
    const pushId = app.sendPush(5);
    const a = { accessId: app.accessId, pushId };
    const sentAtMs = clock.now() - 10_000;
    await publish('gateway', [
      { ...a, type: SENT, tokens: ['t1', 't2', 't3', 't4', 't5'] },
      // A gateway merges the acks of one message: each device's arrival time rides along.
      {
        ...a,
        type: ARRIVED,
        sentAtMs,
        atMs: sentAtMs + 100,
        tokens: ['t1', 't2', 't3'],
        tokensAtMs: [sentAtMs + 100, sentAtMs + 100, sentAtMs + 8_000],
        windowless: true,
      },
      // Another gateway (or an older one) reports single devices; t3 again, and t4 without a send time.
      { ...a, type: ARRIVED, token: 't3', sentAtMs, atMs: sentAtMs + 9_000 },
      { ...a, type: ARRIVED, token: 't4' },
    ]);
    await waitFor(async () => (await applied('arrived')) === 3, 'the arrivals');
    expect(await app.stats(pushId)).toMatchObject({
      sent: 5,
      arrived: 4,
      platforms: [{ platform: ANDROID, sent: 5, arrived: 4 }],
      // t1, t2 at 100 ms and t3 at 8 s (its first report); t4 has no latency.
      arrivalLatency: {
        count: 3,
        p50Ms: latencyBucketUpperMs(latencyBucket(100)),
        p99Ms: latencyBucketUpperMs(latencyBucket(8_000)),
      },
    });
  });

  it('keeps the counts of apps apart even for the same push id', async () => {
    const { createApp, applied, publish } = await setup();
    const a = await createApp();
    const b = await createApp();
    const pa = a.sendPush(1);
    const pb = b.sendPush(1);
    // Push ids are per app: both apps' first push is '1'.
    expect(pa).toBe(pb);
    await publish('dispatch', [
      { accessId: a.accessId, pushId: pa, type: SENT, tokens: ['x'] },
      { accessId: b.accessId, pushId: pb, type: SENT, tokens: ['x'] },
    ]);
    await publish('gateway', [{ accessId: a.accessId, pushId: pa, type: ARRIVED, token: 'x' }]);
    await waitFor(async () => (await applied('arrived')) === 1, 'the arrival');
    expect(await a.stats(pa)).toMatchObject({ sent: 1, arrived: 1 });
    expect(await b.stats(pb)).toMatchObject({ sent: 1, arrived: 0 });
  });

  it('counts clicks only on pushes of the app, asking dispatch once per push, and retries while it is down', async () => {
    let down = false;
    const { createApp, applied, publish, stores, getPushCalls } = await setup({ dispatchDown: () => down });
    const app = await createApp();
    const other = await createApp();
    const pushId = app.sendPush(2);
    const a = { accessId: app.accessId, pushId };
    // Clicks before any SENT of the push was folded: dispatch is asked whether the push exists.
    await publish('gateway', [
      { ...a, type: CLICKED, token: 't1' },
      { ...a, type: CLICKED, token: 't2', platform: IOS },
      // A device naming a push its app never sent, and another app's push id: not counted.
      { ...a, pushId: '999', type: CLICKED, token: 't1' },
      { accessId: other.accessId, pushId: '2', type: CLICKED, token: 't1' },
    ]);
    await waitFor(async () => (await applied('clicked')) === 4, 'the clicks');
    expect(getPushCalls()).toBe(3);
    expect(await app.stats(pushId)).toMatchObject({
      clicked: 2,
      platforms: [
        { platform: ANDROID, sent: 0, arrived: 0, clicked: 1 },
        { platform: IOS, sent: 0, arrived: 0, clicked: 1 },
      ],
    });
    expect(await stores.stats.getFunnel(app.accessId, '999')).toMatchObject({ clicked: 0 });
    expect(await stores.stats.getFunnel(other.accessId, '2')).toMatchObject({ clicked: 0 });
    const asked = getPushCalls();

    // Known now: more clicks on it need no lookup.
    await publish('gateway', [{ ...a, type: CLICKED, token: 't3' }]);
    await waitFor(async () => (await applied('clicked')) === 5, 'the next click');
    expect(getPushCalls()).toBe(asked);

    // A push dispatch cannot be asked about: the batch fails and comes again until it can.
    const later = app.sendPush(1);
    down = true;
    await publish('gateway', [{ accessId: app.accessId, pushId: later, type: CLICKED, token: 't1' }]);
    await waitFor(() => getPushCalls() >= asked + 3, 'a few attempts');
    expect(await stores.stats.getFunnel(app.accessId, later)).toMatchObject({ clicked: 0 });
    down = false;
    await waitFor(async () => (await stores.stats.getFunnel(app.accessId, later)).clicked === 1, 'the retry');
  });

  it('answers PUSH_NOT_FOUND for a push the app never sent, even when events name it', async () => {
    const { h, createApp, applied, publish } = await setup();
    const a = await createApp();
    const b = await createApp();
    const sent = a.sendPush(1);

    await publish('gateway', [{ accessId: a.accessId, pushId: '999', type: ARRIVED, token: 'x' }]);
    await waitFor(async () => (await applied('arrived')) === 1, 'the stray arrival');
    await expect(h.getPushStats({ accessId: 0, pushId: '999' }, a.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    // Another app's push: not found from b, refused when b names a's access id.
    await expect(h.getPushStats({ accessId: 0, pushId: sent }, b.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    await expect(h.getPushStats({ accessId: a.accessId, pushId: sent }, b.auth())).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    await expect(h.getPushStats({ accessId: 0, pushId: '' }, a.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'push_id' },
    });
    await expect(h.getPushStats({ accessId: 0, pushId: sent }, callContext())).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    // The cluster token reads any app's push by access id.
    await expect(h.getPushStats({ accessId: a.accessId, pushId: sent }, cluster())).resolves.toMatchObject({
      stats: { pushId: sent },
    });
  });
});

describe('StatsService.WatchPushStats', () => {
  it('sends the figures, then each change no sooner than 200 ms after the last, until the client cancels', async () => {
    const { createApp, publish, metrics } = await setup();
    const app = await createApp();
    const pushId = app.sendPush(50);
    const received: { atMs: number; sent: number; arrived: number }[] = [];
    const controller = new AbortController();
    const watching = (async () => {
      for await (const { stats } of app.client.watchPushStats({ accessId: 0, pushId }, controller)) {
        received.push({ atMs: performance.now(), sent: stats?.sent ?? 0, arrived: stats?.arrived ?? 0 });
      }
    })();
    await waitFor(() => received.length === 1, 'the first figures');
    expect(received[0]).toMatchObject({ sent: 0, arrived: 0 });
    expect(await metricValue(metrics, 'stats_watch_streams')).toBe(1);

    // 25 batches of 2 devices every 20 ms: at most one response per 200 ms, each growing, ending at 50.
    for (let i = 0; i < 25; i++) {
      const tokens = [`t${2 * i}`, `t${2 * i + 1}`];
      await publish('dispatch', [{ accessId: app.accessId, pushId, type: SENT, tokens }]);
      await publish('gateway', [{ accessId: app.accessId, pushId, type: ARRIVED, token: tokens[0] }]);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await waitFor(() => received.at(-1)?.sent === 50 && received.at(-1)?.arrived === 25, 'the last figures');
    const count = received.length;
    expect(count).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < count; i++) {
      const [before, after] = [received[i - 1]!, received[i]!];
      expect(after.sent).toBeGreaterThanOrEqual(before.sent);
      expect(after.arrived).toBeGreaterThanOrEqual(before.arrived);
      expect(after.sent + after.arrived).toBeGreaterThan(before.sent + before.arrived);
      // Timers may fire a millisecond early.
      expect(after.atMs - before.atMs).toBeGreaterThanOrEqual(195);
    }
    // Nothing changes: nothing is sent.
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    expect(received.length).toBe(count);

    controller.abort();
    await watching;
    await waitFor(async () => (await metricValue(metrics, 'stats_watch_streams')) === 0, 'the stream to end');
  });

  it('picks up folds of another stats instance by polling', async () => {
    const { createApp, stores, clock } = await setup();
    const app = await createApp();
    const pushId = app.sendPush(1);
    const received: number[] = [];
    for await (const { stats } of app.client.watchPushStats({ accessId: 0, pushId })) {
      received.push(stats?.sent ?? 0);
      // Counted straight into the store, as another instance would: no fold here wakes the watch.
      if (received.length === 1)
        await stores.stats.add({
          stage: 'sent',
          accessId: app.accessId,
          pushId,
          day: dayOf(clock.now()),
          devices: [{ token: 't', platform: 1 }],
        });
      else break;
    }
    expect(received).toEqual([0, 1]);
  });

  it('refuses an unknown push, another app and a missing push id when it starts', async () => {
    const { createApp } = await setup();
    const a = await createApp();
    const b = await createApp();
    const pushId = a.sendPush(1);
    const first = async (stream: AsyncIterable<unknown>) => {
      for await (const response of stream) return response;
    };
    await expect(first(a.client.watchPushStats({ accessId: 0, pushId: '404' }))).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    await expect(first(b.client.watchPushStats({ accessId: 0, pushId }))).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    await expect(first(b.client.watchPushStats({ accessId: a.accessId, pushId }))).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    await expect(first(a.client.watchPushStats({ accessId: 0, pushId: '' }))).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
  });
});

describe('StatsService.GetAppStats', () => {
  it("gives an app's covered and online devices, and its figures per day", async () => {
    const { h, createApp, publish, applied, online, clock } = await setup();
    const app = await createApp();
    await app.register();
    await app.register();
    await app.register(IOS);
    online.set(app.accessId, { android: 1, ios: 1 });
    const yesterday = clock.now() - DAY_MS;
    const first = app.sendPush(2);
    const second = app.sendPush(2);
    const a = { accessId: app.accessId };
    await publish('dispatch', [
      { ...a, pushId: first, type: SENT, tokens: ['t1', 't2'], atMs: yesterday },
      { ...a, pushId: second, type: SENT, tokens: ['t1'] },
    ]);
    // Folded before the next batch: t2's send is counted yesterday, whatever the consumer's concurrency.
    await waitFor(async () => (await applied('sent')) === 2, 'the sends');
    await publish('gateway', [
      { ...a, pushId: first, type: ARRIVED, token: 't1', atMs: yesterday },
      // t2 comes back today and gets the first push: sent and arrived count today.
      { ...a, pushId: first, type: SENT, tokens: ['t2'] },
      { ...a, pushId: first, type: ARRIVED, token: 't2' },
      { ...a, pushId: first, type: CLICKED, token: 't2' },
      { ...a, pushId: second, type: ARRIVED, token: 't1' },
    ]);
    await waitFor(async () => (await applied('clicked')) === 1, 'the events');
    const response = await h.getAppStats({ accessId: 0, fromDate: '2026-05-18', toDate: TODAY }, app.auth());
    expect(response).toEqual({
      coveredDevices: 3,
      onlineDevices: 2,
      platforms: [
        { platform: ANDROID, covered: 2, online: 1 },
        { platform: IOS, covered: 1, online: 1 },
      ],
      days: [
        { date: '2026-05-18', pushes: 0, sent: 0, arrived: 0, clicked: 0 },
        { date: '2026-05-19', pushes: 1, sent: 2, arrived: 1, clicked: 0 },
        // t2 was counted as sent yesterday: its send today is the same device of the same push.
        { date: TODAY, pushes: 1, sent: 1, arrived: 2, clicked: 1 },
      ],
    });
    // Without dates: the last 7 days.
    const week = await h.getAppStats({ accessId: 0, fromDate: '', toDate: '' }, app.auth());
    expect(week.days.map((d) => d.date)).toEqual([
      '2026-05-14',
      '2026-05-15',
      '2026-05-16',
      '2026-05-17',
      '2026-05-18',
      '2026-05-19',
      TODAY,
    ]);
  });

  it.each([
    ['2026-05-21', '2026-05-21', 'to_date'],
    ['2026-05-20', '2026-05-19', 'from_date'],
    ['2026-04-20', TODAY, 'from_date'],
    ['2026-02-30', TODAY, 'from_date'],
    ['20260519', TODAY, 'from_date'],
    ['', TODAY, 'from_date'],
  ])('refuses the range %s to %s (%s)', async (fromDate, toDate, field) => {
    const { h, createApp } = await setup();
    const app = await createApp();
    await expect(h.getAppStats({ accessId: 0, fromDate, toDate }, app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field },
    });
  });

  it('accepts the 30 days up to today', async () => {
    const { h, createApp } = await setup();
    const app = await createApp();
    const response = await h.getAppStats({ accessId: 0, fromDate: '2026-04-21', toDate: TODAY }, app.auth());
    expect(response.days).toHaveLength(30);
  });
});

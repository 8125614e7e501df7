import { MemoryBus, streams, subjects } from '@pushd/bus';
import { silentLogger } from '@pushd/common';
import { createDispatchMetrics, DispatchService, PushApplier } from '@pushd/dispatch';
import {
  DispatchServiceService,
  type Event,
  EventBatch,
  EventType,
  MessageType,
  Platform,
  RegistryServiceService,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import { basicAuthorization, bearerAuthorization, callContext, inProcessClient } from '@pushd/rpc';
import { createMemoryStores } from '@pushd/store';
import { waitFor } from '@pushd/testkit';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { StatsService } from './stats-service.js';

const CLUSTER_TOKEN = 'stats-unit-test-cluster-token';

const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));

const stopAfterTest: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const stop of stopAfterTest.splice(0)) await stop();
});

async function setup() {
  const stores = createMemoryStores();
  const bus = new MemoryBus({ streams: [streams.events, streams.pushes] });
  const bearer = bearerAuthorization(CLUSTER_TOKEN);
  const registry = new RegistryService({
    apps: stores.apps,
    devices: stores.devices,
    bus,
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
  }).handlers();
  const registryClient = inProcessClient(RegistryServiceService, registry, bearer);
  const dispatchMetrics = createDispatchMetrics(new Registry());
  const dispatch = new DispatchService({
    pushes: stores.pushes,
    inboxes: stores.inboxes,
    broadcasts: stores.broadcasts,
    audience: stores.audience,
    tags: stores.tags,
    bus,
    registry: registryClient,
    clusterToken: CLUSTER_TOKEN,
    metrics: dispatchMetrics,
    logger: silentLogger(),
  }).handlers();
  const applier = new PushApplier({
    pushes: stores.pushes,
    inboxes: stores.inboxes,
    routes: stores.routes,
    broadcasts: stores.broadcasts,
    bus,
    metrics: dispatchMetrics,
    logger: silentLogger(),
  });
  applier.start();
  stopAfterTest.push(() => applier.stop());
  const metrics = new Registry();
  const service = new StatsService({
    stats: stores.stats,
    bus,
    registry: inProcessClient(RegistryServiceService, registry, bearer),
    dispatch: inProcessClient(DispatchServiceService, dispatch, bearer),
    clusterToken: CLUSTER_TOKEN,
    metrics,
    logger: silentLogger(),
  });
  stopAfterTest.push(() => service.stop());
  const h = service.handlers();

  const createApp = async (name = 'demo') => {
    const created = await registry.createApp({ name }, cluster());
    const accessId = created.app?.accessId ?? 0;
    const auth = () => callContext(basicAuthorization(accessId, created.secretKey));
    let devices = 0;
    const register = async () => {
      const registered = await registry.registerDevice(
        {
          accessId,
          accessKey: created.accessKey,
          deviceId: `device_${accessId}_${String(++devices).padStart(8, '0')}`,
          platform: Platform.PLATFORM_ANDROID,
          appVersion: '',
          osVersion: '',
          locale: '',
          sdkVersion: '',
        },
        cluster(),
      );
      return registered.device?.token ?? '';
    };
    const push = (token: string) =>
      dispatch.push(
        {
          accessId: 0,
          audience: { target: { $case: 'token', value: token } },
          message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content: 'hi', customContent: {} },
          platform: Platform.PLATFORM_UNSPECIFIED,
        },
        auth(),
      );
    const stats = async (pushId: string) => (await h.getPushStats({ accessId: 0, pushId }, auth())).stats;
    return { accessId, auth, register, push, stats };
  };

  /** Events folded so far, by type (the service's own counter). */
  const applied = async (type: 'sent' | 'arrived') => {
    const metric = metrics.getSingleMetric('stats_events_applied_total');
    const values = (await metric?.get())?.values ?? [];
    return values.find((v) => v.labels.type === type)?.value ?? 0;
  };

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
          atMs: 0,
          tokens: [],
          ...e,
        })),
      }).finish(),
    );

  return { stores, bus, service, h, createApp, applied, publish };
}

describe('StatsService', () => {
  it('counts a push as sent from the SENT event dispatch publishes, and arrivals from ARRIVED events', async () => {
    const { service, createApp, applied, publish } = await setup();
    service.startConsuming();
    const app = await createApp();
    const token = await app.register();
    const { pushId, msgId } = await app.push(token);
    await waitFor(async () => (await app.stats(pushId))?.sent === 1, 'sent to be counted');
    expect(await app.stats(pushId)).toEqual({ pushId, sent: 1, arrived: 0 });

    await publish('gateway', [
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: app.accessId, pushId, msgId, token },
    ]);
    await waitFor(async () => (await app.stats(pushId))?.arrived === 1, 'arrival to be counted');
    expect(await app.stats(pushId)).toEqual({ pushId, sent: 1, arrived: 1 });
    expect(await applied('sent')).toBe(1);
  });

  it('folds batches of many events, counting each device once per push however often it is reported', async () => {
    const { service, createApp, applied, publish, stores } = await setup();
    service.startConsuming();
    const app = await createApp();
    const first = await app.register();
    const { pushId } = await app.push(first);
    const other = await app.push(first);
    await waitFor(async () => (await applied('sent')) === 2, 'the two SENT events');

    // A SENT event for more devices (the first is already counted), then arrivals in one batch with a
    // duplicate, an event of another push and events without a push id (not countable).
    await publish('dispatch', [
      { type: EventType.EVENT_TYPE_SENT, accessId: app.accessId, pushId, tokens: [first, 't2', 't3'] },
      { type: EventType.EVENT_TYPE_SENT, accessId: app.accessId, pushId: '', tokens: ['t4'] },
    ]);
    await publish('gateway', [
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: app.accessId, pushId, token: first },
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: app.accessId, pushId, token: 't2' },
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: app.accessId, pushId, token: first },
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: app.accessId, pushId: other.pushId, token: first },
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: app.accessId, pushId: '', token: 't3' },
      { type: EventType.EVENT_TYPE_UNREGISTERED, accessId: app.accessId, token: 't3' },
    ]);
    await waitFor(async () => (await applied('arrived')) === 4, 'the four countable arrivals');
    expect(await app.stats(pushId)).toEqual({ pushId, sent: 3, arrived: 2 });
    expect(await app.stats(other.pushId)).toEqual({ pushId: other.pushId, sent: 1, arrived: 1 });
    // Events without a push id count nowhere.
    expect(await stores.stats.get(app.accessId, '')).toEqual({ sent: 0, arrived: 0 });

    // A duplicate ARRIVED in a later batch (a device acking a redelivery, or the stream redelivering).
    await publish('gateway', [
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: app.accessId, pushId, token: 't2' },
    ]);
    await waitFor(async () => (await applied('arrived')) === 5, 'the duplicate arrival to be applied');
    expect(await app.stats(pushId)).toEqual({ pushId, sent: 3, arrived: 2 });

    // A replayed SENT batch does not count the devices again either.
    await publish('dispatch', [
      { type: EventType.EVENT_TYPE_SENT, accessId: app.accessId, pushId, tokens: [first, 't2', 't3'] },
    ]);
    await waitFor(async () => (await applied('sent')) === 4, 'the replayed SENT event');
    expect(await app.stats(pushId)).toEqual({ pushId, sent: 3, arrived: 2 });
  });

  it('keeps the counts of apps apart even for the same push id', async () => {
    const { service, createApp, applied, publish } = await setup();
    service.startConsuming();
    const a = await createApp('a');
    const b = await createApp('b');
    const pa = await a.push(await a.register());
    const pb = await b.push(await b.register());
    // Push ids are per app: both apps' first push is '1'.
    expect(pa.pushId).toBe(pb.pushId);
    await waitFor(async () => (await applied('sent')) === 2, 'both SENT events');
    await publish('gateway', [
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: a.accessId, pushId: pa.pushId, token: 'x' },
    ]);
    await waitFor(async () => (await applied('arrived')) === 1, 'the arrival');
    expect(await a.stats(pa.pushId)).toEqual({ pushId: pa.pushId, sent: 1, arrived: 1 });
    expect(await b.stats(pb.pushId)).toEqual({ pushId: pb.pushId, sent: 1, arrived: 0 });
  });

  it('answers PUSH_NOT_FOUND for a push the app never sent, even when events name it', async () => {
    const { service, h, createApp, applied, publish } = await setup();
    service.startConsuming();
    const a = await createApp('a');
    const b = await createApp('b');
    const sent = await a.push(await a.register());

    await publish('gateway', [
      { type: EventType.EVENT_TYPE_ARRIVED, accessId: a.accessId, pushId: '999', token: 'x' },
    ]);
    await waitFor(async () => (await applied('arrived')) === 1, 'the stray arrival');
    const missing = h.getPushStats({ accessId: 0, pushId: '999' }, a.auth());
    await expect(missing).rejects.toMatchObject({ code: 'PUSH_NOT_FOUND' });

    // Another app's push: not found from b, refused when b names a's access id.
    await expect(h.getPushStats({ accessId: 0, pushId: sent.pushId }, b.auth())).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
    });
    await expect(
      h.getPushStats({ accessId: a.accessId, pushId: sent.pushId }, b.auth()),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(h.getPushStats({ accessId: 0, pushId: '' }, a.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'push_id' },
    });
    await expect(h.getPushStats({ accessId: 0, pushId: sent.pushId }, callContext())).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    // The cluster token reads any app's push by access id.
    await expect(
      h.getPushStats({ accessId: a.accessId, pushId: sent.pushId }, cluster()),
    ).resolves.toMatchObject({ stats: { pushId: sent.pushId } });
  });
});

import { MemoryBus, streams, subjects } from '@pushd/bus';
import { ManualClock, silentLogger } from '@pushd/common';
import {
  DeviceTagsChanged,
  Event,
  EventBatch,
  EventType,
  Platform,
  RegistryServiceService,
  type TagExpression,
  type TagRule,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import { basicAuthorization, bearerAuthorization, callContext, inProcessClient } from '@pushd/rpc';
import { createMemoryStores } from '@pushd/store';
import { waitFor } from '@pushd/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { builtinTagsOf } from './audience-events.js';
import { TagService } from './tag-service.js';

// The tag API beyond add/remove/list (tag-service.test.ts covers those) and the audience index the service
// keeps from registry and gateway events, on the memory stores and bus.

const CLUSTER_TOKEN = 'tag-api-test-cluster-token';

const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));

const stopAfterTest: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const stop of stopAfterTest.splice(0)) await stop();
});

const list = (tags: string[], op = 'AND'): TagExpression => ({
  form: { $case: 'tagList', value: { tags, op } },
});
const rules = (...tagRules: TagRule[]): TagExpression => ({
  form: { $case: 'tagRules', value: { rules: tagRules } },
});
const rule = (
  tags: string[],
  options: { operator?: string; isNot?: boolean; tagsOperator?: string } = {},
) => ({
  tagItems: [
    { tags, isNot: false, tagsOperator: options.tagsOperator ?? 'OR', itemsOperator: '', tagType: '' },
  ],
  operator: options.operator ?? '',
  isNot: options.isNot ?? false,
});

interface DeviceDetails {
  platform?: Platform;
  appVersion?: string;
  osVersion?: string;
  locale?: string;
}

async function setup(options: { limits?: { perDevice?: number; perApp?: number } } = {}) {
  const clock = new ManualClock(Date.UTC(2026, 5, 1, 12));
  const stores = createMemoryStores({ clock });
  const bus = new MemoryBus({ streams: [streams.events], clock });
  stopAfterTest.push(() => bus.close());
  const registry = new RegistryService({
    apps: stores.apps,
    devices: stores.devices,
    bus,
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
    clock,
  }).handlers();
  const service = new TagService({
    tags: stores.tags,
    routes: stores.routes,
    audience: stores.audience,
    bus,
    registry: inProcessClient(RegistryServiceService, registry, bearerAuthorization(CLUSTER_TOKEN)),
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
    clock,
    limits: options.limits,
  });
  service.startConsuming();
  stopAfterTest.push(() => service.stop());
  const h = service.handlers();

  const created = await registry.createApp({ name: 'demo' }, cluster());
  const accessId = created.app?.accessId ?? 0;
  const auth = () => callContext(basicAuthorization(accessId, created.secretKey));
  let devices = 0;
  const register = async (
    details: DeviceDetails = {},
    deviceId = `device_${String(++devices).padStart(12, '0')}`,
  ) => {
    const registered = await registry.registerDevice(
      {
        accessId,
        accessKey: created.accessKey,
        deviceId,
        platform: details.platform ?? Platform.PLATFORM_ANDROID,
        appVersion: details.appVersion ?? '1.0',
        osVersion: details.osVersion ?? '14',
        locale: details.locale ?? 'zh-CN',
        sdkVersion: '',
      },
      cluster(),
    );
    return { token: registered.device?.token ?? '', index: registered.device?.index ?? -1, deviceId };
  };
  const count = (expression?: TagExpression, platform = Platform.PLATFORM_UNSPECIFIED) =>
    h.countAudience({ accessId: 0, expression, platform }, auth());
  /** What a gateway publishes when a session of the device opens or closes. */
  const presence = async (
    device: { token: string; index: number },
    sessionId: string,
    connected: boolean,
  ) => {
    const event = Event.create({
      type: connected ? EventType.EVENT_TYPE_CONNECTED : EventType.EVENT_TYPE_DISCONNECTED,
      accessId,
      token: device.token,
      atMs: clock.now(),
      deviceIndex: device.index,
      sessionId,
    });
    await bus.publishDurable(subjects.events('presence'), EventBatch.encode({ events: [event] }).finish());
  };
  /** Waits until the consumer has caught up with everything published so far. */
  const settled = async (expected: { matched: number; online?: number }, expression?: TagExpression) =>
    waitFor(
      async () => {
        const counted = await count(expression);
        return counted.matched === expected.matched && (expected.online ?? counted.online) === counted.online;
      },
      `the count of ${JSON.stringify(expression ?? 'all')} to be ${JSON.stringify(expected)}`,
    );
  return { h, bus, registry, stores, clock, accessId, auth, register, count, presence, settled, created };
}

describe('TagService SetTags and ClearTags', () => {
  it('replaces all user tags, clears them, and keeps the index in step', async () => {
    const { h, auth, register, count, settled } = await setup();
    const device = await register();
    await settled({ matched: 1 });
    await h.addTags({ accessId: 0, token: device.token, tags: ['a', 'b'] }, auth());
    await expect(
      h.setTags({ accessId: 0, token: device.token, tags: ['b', 'c', 'c'] }, auth()),
    ).resolves.toEqual({
      count: 2,
    });
    await expect(h.listTags({ accessId: 0, token: device.token }, auth())).resolves.toEqual({
      tags: ['b', 'c'],
    });
    await expect(count(list(['a']))).resolves.toEqual({ matched: 0, online: 0 });
    await expect(count(list(['b', 'c']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(h.clearTags({ accessId: 0, token: device.token }, auth())).resolves.toEqual({ removed: 2 });
    await expect(count(list(['b', 'c'], 'OR'))).resolves.toEqual({ matched: 0, online: 0 });
    await h.setTags({ accessId: 0, token: device.token, tags: ['x'] }, auth());
    await expect(h.setTags({ accessId: 0, token: device.token, tags: [] }, auth())).resolves.toEqual({
      count: 0,
    });
    await expect(h.listAppTags({ accessId: 0, pageSize: 0, pageToken: '' }, auth())).resolves.toEqual({
      tags: [],
      nextPageToken: '',
      total: 0,
    });
  });

  it('refuses built-in tags in Add, Set and Remove, naming the reserved prefix', async () => {
    const { h, auth, register } = await setup();
    const { token } = await register();
    for (const attempt of [
      h.addTags({ accessId: 0, token, tags: ['pushd:platform:ios'] }, auth()),
      h.setTags({ accessId: 0, token, tags: ['ok', 'pushd:active:1d'] }, auth()),
      h.removeTags({ accessId: 0, token, tags: ['pushd:locale:zh-CN'] }, auth()),
      h.batchAddTags({ accessId: 0, tokens: [token], tags: ['pushd:app_version:9'] }, auth()),
    ]) {
      await expect(attempt).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        metadata: { field: 'tags' },
        message: expect.stringContaining('"pushd:"'),
      });
    }
    await expect(h.listTags({ accessId: 0, token }, auth())).resolves.toEqual({ tags: [] });
  });
});

describe('TagService batch calls', () => {
  it('tags many devices at once and lists the tokens that are not registered', async () => {
    const { h, auth, register, count, settled } = await setup();
    const a = await register();
    const b = await register();
    const unknown = 'e'.repeat(40);
    await settled({ matched: 2 });
    await expect(
      h.batchAddTags(
        { accessId: 0, tokens: [a.token, unknown, b.token, a.token], tags: ['vip', 'gd'] },
        auth(),
      ),
    ).resolves.toEqual({ unknownTokens: [unknown], changed: 2 });
    await expect(count(list(['vip', 'gd']))).resolves.toEqual({ matched: 2, online: 0 });
    await expect(
      h.batchAddTags({ accessId: 0, tokens: [a.token, b.token], tags: ['vip'] }, auth()),
    ).resolves.toEqual({ unknownTokens: [], changed: 0 });
    await expect(
      h.batchRemoveTags({ accessId: 0, tokens: [unknown, b.token], tags: ['vip', 'never'] }, auth()),
    ).resolves.toEqual({ unknownTokens: [unknown], changed: 1 });
    await expect(count(list(['vip']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(h.listTags({ accessId: 0, token: b.token }, auth())).resolves.toEqual({ tags: ['gd'] });
  });

  it('refuses a batch whole when one device would exceed 100 tags, naming the limit and the device', async () => {
    const { h, auth, register, count } = await setup();
    const full = await register();
    const others = [await register(), await register()];
    const hundred = Array.from({ length: 100 }, (_, i) => `t${i}`);
    await h.setTags({ accessId: 0, token: full.token, tags: hundred.slice(0, 99) }, auth());
    const refused = h.batchAddTags(
      { accessId: 0, tokens: [others[0]!.token, full.token, others[1]!.token], tags: ['new1', 'new2'] },
      auth(),
    );
    await expect(refused).rejects.toMatchObject({
      code: 'TAG_LIMIT_EXCEEDED',
      metadata: { limit: 'per_device', max: '100', would_have: '101', token: full.token },
    });
    for (const other of others) {
      await expect(h.listTags({ accessId: 0, token: other.token }, auth())).resolves.toEqual({ tags: [] });
    }
    await expect(count(list(['new1'], 'OR'))).resolves.toEqual({ matched: 0, online: 0 });
    const { total } = await h.listAppTags({ accessId: 0, pageSize: 0, pageToken: '' }, auth());
    expect(total).toBe(99);
  });

  it('refuses a call that would exceed the distinct tags of the app, whole, in every form', async () => {
    const { h, auth, register, count } = await setup({ limits: { perApp: 4 } });
    const a = await register();
    const b = await register();
    await h.batchAddTags({ accessId: 0, tokens: [a.token, b.token], tags: ['t1', 't2', 't3'] }, auth());
    const perApp = { code: 'TAG_LIMIT_EXCEEDED', metadata: { limit: 'per_app', max: '4', would_have: '5' } };
    await expect(
      h.batchAddTags({ accessId: 0, tokens: [a.token, b.token], tags: ['t1', 'n1', 'n2'] }, auth()),
    ).rejects.toMatchObject({ ...perApp, metadata: { ...perApp.metadata, would_have: '5' } });
    await expect(
      h.addTags({ accessId: 0, token: a.token, tags: ['n1', 'n2'] }, auth()),
    ).rejects.toMatchObject(perApp);
    await expect(
      h.setTags({ accessId: 0, token: b.token, tags: ['n1', 'n2'] }, auth()),
    ).rejects.toMatchObject(perApp);
    await expect(h.listTags({ accessId: 0, token: b.token }, auth())).resolves.toEqual({
      tags: ['t1', 't2', 't3'],
    });
    await expect(count(list(['n1'], 'OR'))).resolves.toEqual({ matched: 0, online: 0 });
    // One more distinct tag fits; a tag nobody holds any more frees its place.
    await h.addTags({ accessId: 0, token: a.token, tags: ['n1'] }, auth());
    await h.batchRemoveTags({ accessId: 0, tokens: [a.token, b.token], tags: ['t3'] }, auth());
    await expect(h.addTags({ accessId: 0, token: b.token, tags: ['n2'] }, auth())).resolves.toEqual({
      count: 3,
    });
  });

  it('validates tokens and tags of batch calls', async () => {
    const { h, auth, register } = await setup();
    const { token } = await register();
    const tooMany = Array.from({ length: 1001 }, (_, i) => i.toString(16).padStart(40, '0'));
    await expect(h.batchAddTags({ accessId: 0, tokens: tooMany, tags: ['a'] }, auth())).rejects.toMatchObject(
      {
        code: 'INVALID_ARGUMENT',
        metadata: { field: 'tokens' },
      },
    );
    await expect(h.batchRemoveTags({ accessId: 0, tokens: [], tags: ['a'] }, auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'tokens' },
    });
    await expect(
      h.batchAddTags(
        { accessId: 0, tokens: [token], tags: Array.from({ length: 101 }, (_, i) => `t${i}`) },
        auth(),
      ),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'tags' } });
    await expect(
      h.batchAddTags({ accessId: 0, tokens: [token, ''], tags: ['a'] }, auth()),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'tokens' },
    });
    // 1,000 tokens, all unknown: accepted, nothing to do.
    const thousand = tooMany.slice(0, 1000);
    await expect(h.batchAddTags({ accessId: 0, tokens: thousand, tags: ['a'] }, auth())).resolves.toEqual({
      unknownTokens: thousand,
      changed: 0,
    });
  });
});

describe('TagService ListAppTags', () => {
  it('pages through the distinct user tags with their device counts', async () => {
    const { h, auth, register } = await setup();
    const a = await register();
    const b = await register();
    await h.batchAddTags({ accessId: 0, tokens: [a.token, b.token], tags: ['b', 'd'] }, auth());
    await h.addTags({ accessId: 0, token: a.token, tags: ['a', 'c', '省'] }, auth());
    const first = await h.listAppTags({ accessId: 0, pageSize: 2, pageToken: '' }, auth());
    expect(first).toMatchObject({
      tags: [
        { tag: 'a', devices: 1 },
        { tag: 'b', devices: 2 },
      ],
      total: 5,
    });
    const second = await h.listAppTags({ accessId: 0, pageSize: 2, pageToken: first.nextPageToken }, auth());
    expect(second.tags).toEqual([
      { tag: 'c', devices: 1 },
      { tag: 'd', devices: 2 },
    ]);
    const last = await h.listAppTags({ accessId: 0, pageSize: 2, pageToken: second.nextPageToken }, auth());
    expect(last).toEqual({ tags: [{ tag: '省', devices: 1 }], nextPageToken: '', total: 5 });
    await expect(h.listAppTags({ accessId: 0, pageSize: 1001, pageToken: '' }, auth())).rejects.toMatchObject(
      {
        code: 'INVALID_ARGUMENT',
        metadata: { field: 'page_size' },
      },
    );
    await expect(h.listAppTags({ accessId: 0, pageSize: 2, pageToken: '%%' }, auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'page_token' },
    });
  });
});

describe('TagService CountAudience and the index kept from events', () => {
  it('gives every registered device built-in tags, and moves them when its details change', async () => {
    const { register, count, settled } = await setup();
    const a = await register({ appVersion: '2.1.0', osVersion: '14', locale: 'zh-CN' });
    await register({
      platform: Platform.PLATFORM_IOS,
      appVersion: '2.0.0',
      osVersion: '17.4',
      locale: 'en-US',
    });
    await settled({ matched: 2 });
    await expect(count(list(['pushd:app_version:2.1.0']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(count(list(['pushd:os_version:17.4', 'pushd:locale:en-US']))).resolves.toEqual({
      matched: 1,
      online: 0,
    });
    await expect(count(list(['pushd:platform:android', 'pushd:platform:ios'], 'OR'))).resolves.toEqual({
      matched: 2,
      online: 0,
    });
    // The device registers again after an update: its old version no longer matches.
    await register({ appVersion: '2.2.0', osVersion: '14', locale: 'zh-CN' }, a.deviceId);
    await settled({ matched: 1 }, list(['pushd:app_version:2.2.0']));
    await expect(count(list(['pushd:app_version:2.1.0']))).resolves.toEqual({ matched: 0, online: 0 });
    await expect(count()).resolves.toEqual({ matched: 2, online: 0 });
  });

  it('counts expressions mixing user and built-in tags, per platform, without sending anything', async () => {
    const { h, auth, register, count, settled } = await setup();
    const android = [await register(), await register(), await register()];
    const ios = [
      await register({ platform: Platform.PLATFORM_IOS }),
      await register({ platform: Platform.PLATFORM_IOS }),
    ];
    await settled({ matched: 5 });
    await h.batchAddTags({ accessId: 0, tokens: [android[0]!.token, ios[0]!.token], tags: ['vip'] }, auth());
    await h.batchAddTags(
      { accessId: 0, tokens: [android[1]!.token, ios[0]!.token], tags: ['gamer'] },
      auth(),
    );
    // vip OR gamer: 3 devices; and not on iOS: 2.
    const vipOrGamer = rules(rule(['vip', 'gamer']));
    await expect(count(vipOrGamer)).resolves.toEqual({ matched: 3, online: 0 });
    await expect(count(vipOrGamer, Platform.PLATFORM_ANDROID)).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(vipOrGamer, Platform.PLATFORM_IOS)).resolves.toEqual({ matched: 1, online: 0 });
    // (vip OR gamer) AND NOT pushd:platform:ios AND locale zh-CN.
    const mixed = rules(
      rule(['vip', 'gamer']),
      rule(['pushd:platform:ios'], { operator: 'AND', isNot: true }),
      rule(['pushd:locale:zh-CN'], { operator: 'AND' }),
    );
    await expect(count(mixed)).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(undefined, Platform.PLATFORM_IOS)).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(rules(rule(['vip'], { isNot: true })))).resolves.toEqual({ matched: 3, online: 0 });
    await expect(count(list(['pushd:nonsense:1']))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(h.countAudience({ accessId: 0, platform: 7 as Platform }, auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'platform' },
    });
  });

  it('counts online devices from connects and disconnects, and activity from the days they were seen', async () => {
    const { register, count, settled, presence, clock } = await setup();
    const a = await register();
    const b = await register({ platform: Platform.PLATFORM_IOS });
    await settled({ matched: 2, online: 0 });
    await presence(a, 'sa1', true);
    await presence(b, 'sb1', true);
    await settled({ matched: 2, online: 2 });
    await expect(count(undefined, Platform.PLATFORM_IOS)).resolves.toEqual({ matched: 1, online: 1 });
    // b moves to another gateway; the first reports its old session closed after the new one opened.
    await presence(b, 'sb2', true);
    await presence(b, 'sb1', false);
    await presence(a, 'sa1', false);
    await settled({ matched: 2, online: 1 });
    await expect(count(list(['pushd:active:1d']))).resolves.toEqual({ matched: 2, online: 1 });
    // Two days later: b is still connected (active), a was last seen two days ago.
    clock.advance(2 * 86_400_000);
    await expect(count(list(['pushd:active:1d']))).resolves.toEqual({ matched: 1, online: 1 });
    await expect(count(list(['pushd:active:7d']))).resolves.toEqual({ matched: 2, online: 1 });
    clock.advance(30 * 86_400_000);
    await expect(count(list(['pushd:active:30d']))).resolves.toEqual({ matched: 1, online: 1 });
  });

  it('removes an unregistered device from every count, and ignores late events about it', async () => {
    const { h, auth, registry, register, count, settled, presence } = await setup();
    const gone = await register({ appVersion: '3.0' });
    const kept = await register({ appVersion: '3.0' });
    await settled({ matched: 2 });
    await h.batchAddTags({ accessId: 0, tokens: [gone.token, kept.token], tags: ['vip'] }, auth());
    await presence(gone, 's1', true);
    await settled({ matched: 2, online: 1 });
    await registry.unregisterDevice({ accessId: 0, token: gone.token }, auth());
    await settled({ matched: 1, online: 0 });
    for (const expression of [
      list(['vip']),
      list(['pushd:app_version:3.0']),
      list(['pushd:platform:android']),
      list(['pushd:active:1d']),
      rules(rule(['nobody'], { isNot: true })),
    ]) {
      await expect(count(expression)).resolves.toEqual({ matched: 1, online: 0 });
    }
    // The gateway's disconnect comes after the unregistration: nothing changes.
    await presence(gone, 's1', false);
    await presence(gone, 's2', true);
    const { tags } = await h.listAppTags({ accessId: 0, pageSize: 0, pageToken: '' }, auth());
    expect(tags).toEqual([{ tag: 'vip', devices: 1 }]);
    // The same device registers again: a new index, no tags, counted once.
    const back = await register({ appVersion: '3.1' }, gone.deviceId);
    expect(back.token).toBe(gone.token);
    expect(back.index).not.toBe(gone.index);
    await settled({ matched: 2, online: 0 });
    await expect(count(list(['vip']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(h.listTags({ accessId: 0, token: back.token }, auth())).resolves.toEqual({ tags: [] });
  });

  it('counts a device that changes tags while online', async () => {
    const { h, auth, register, count, settled, presence } = await setup();
    const device = await register();
    await presence(device, 's1', true);
    await settled({ matched: 1, online: 1 });
    await h.addTags({ accessId: 0, token: device.token, tags: ['vip'] }, auth());
    await expect(count(list(['vip']))).resolves.toEqual({ matched: 1, online: 1 });
    await h.setTags({ accessId: 0, token: device.token, tags: ['gamer'] }, auth());
    await expect(count(list(['vip']))).resolves.toEqual({ matched: 0, online: 0 });
    await expect(count(list(['gamer']))).resolves.toEqual({ matched: 1, online: 1 });
  });

  it('keeps apps apart', async () => {
    const one = await setup();
    const { token } = await one.register();
    await one.settled({ matched: 1 });
    const otherApp = await one.registry.createApp({ name: 'other' }, cluster());
    const otherAuth = callContext(basicAuthorization(otherApp.app?.accessId ?? 0, otherApp.secretKey));
    await expect(one.h.countAudience({ accessId: 0, platform: 0 }, otherAuth)).resolves.toEqual({
      matched: 0,
      online: 0,
    });
    await expect(
      one.h.countAudience({ accessId: one.accessId, platform: 0 }, otherAuth),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(
      one.h.batchAddTags({ accessId: 0, tokens: [token], tags: ['x'] }, otherAuth),
    ).resolves.toEqual({ unknownTokens: [token], changed: 0 });
  });
});

describe('TagService ReportLocation', () => {
  const report =
    (h: Awaited<ReturnType<typeof setup>>['h'], auth: () => ReturnType<typeof callContext>) =>
    (token: string, province: string, city: string) =>
      h.reportLocation({ accessId: 0, token, province, city }, auth());

  it('makes the location built-in tags, counted in audiences, and replaces them on the next report', async () => {
    const { h, auth, stores, accessId, register, count, settled } = await setup();
    const shenzhen = await register();
    const guangzhou = await register();
    await settled({ matched: 2 });
    const locate = report(h, auth);
    await expect(locate(shenzhen.token, '广东', '深圳')).resolves.toEqual({});
    await locate(guangzhou.token, '广东', '广州');
    await expect(count(list(['pushd:city:深圳']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(count(list(['pushd:province:广东']))).resolves.toEqual({ matched: 2, online: 0 });
    expect(await stores.tags.list(accessId, shenzhen.token, shenzhen.index)).toEqual([
      'pushd:city:深圳',
      'pushd:province:广东',
    ]);

    // The device moved: the new city replaces the old one, it does not accumulate.
    await locate(shenzhen.token, '广东', '广州');
    await expect(count(list(['pushd:city:深圳']))).resolves.toEqual({ matched: 0, online: 0 });
    await expect(count(list(['pushd:city:广州']))).resolves.toEqual({ matched: 2, online: 0 });
    expect(await stores.tags.list(accessId, shenzhen.token)).toEqual([
      'pushd:city:广州',
      'pushd:province:广东',
    ]);
    // An empty value is unknown: its tag goes; both empty clear the location.
    await locate(shenzhen.token, '广东', '');
    expect(await stores.tags.list(accessId, shenzhen.token)).toEqual(['pushd:province:广东']);
    await expect(count(list(['pushd:city:广州']))).resolves.toEqual({ matched: 1, online: 0 });
    await locate(shenzhen.token, '', '');
    expect(await stores.tags.list(accessId, shenzhen.token)).toEqual([]);
    await expect(count(list(['pushd:province:广东']))).resolves.toEqual({ matched: 1, online: 0 });
  });

  it('refuses an invalid province or city naming the field, and changes nothing', async () => {
    const { h, auth, stores, accessId, register, count, settled } = await setup();
    const device = await register();
    await settled({ matched: 1 });
    const locate = report(h, auth);
    await locate(device.token, '广东', '深圳');
    for (const [province, city, field] of [
      ['广 东', '广州', 'province'],
      ['广东', 'x'.repeat(51), 'city'],
      ['广东', 'new\nline', 'city'],
      ['广东', 'tab\tcity', 'city'],
    ] as const) {
      await expect(locate(device.token, province, city)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        metadata: { field },
        message: expect.stringContaining(`${field}:`),
      });
    }
    await expect(locate('', '广东', '广州')).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'token' },
    });
    expect(await stores.tags.list(accessId, device.token)).toEqual([
      'pushd:city:深圳',
      'pushd:province:广东',
    ]);
    await expect(count(list(['pushd:city:深圳']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(count(list(['pushd:city:广州']))).resolves.toEqual({ matched: 0, online: 0 });
  });

  it('survives SetTags and ClearTags, stays out of ListTags and outside the user tag limits', async () => {
    const { h, auth, stores, accessId, register, count, settled } = await setup({
      limits: { perDevice: 2, perApp: 2 },
    });
    const device = await register();
    await settled({ matched: 1 });
    await report(h, auth)(device.token, '广东', '深圳');
    // Two user tags fit beside the two location tags, on both limits.
    await expect(h.addTags({ accessId: 0, token: device.token, tags: ['a', 'b'] }, auth())).resolves.toEqual({
      count: 2,
    });
    await expect(h.listTags({ accessId: 0, token: device.token }, auth())).resolves.toEqual({
      tags: ['a', 'b'],
    });
    await expect(h.listAppTags({ accessId: 0, pageSize: 0, pageToken: '' }, auth())).resolves.toMatchObject({
      total: 2,
    });
    await expect(h.setTags({ accessId: 0, token: device.token, tags: ['a'] }, auth())).resolves.toEqual({
      count: 1,
    });
    await expect(count(list(['pushd:city:深圳', 'a']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(h.clearTags({ accessId: 0, token: device.token }, auth())).resolves.toEqual({ removed: 1 });
    await expect(count(list(['pushd:city:深圳']))).resolves.toEqual({ matched: 1, online: 0 });
    await expect(count(list(['a']))).resolves.toEqual({ matched: 0, online: 0 });
    await h.setTags({ accessId: 0, token: device.token, tags: [] }, auth());
    expect(await stores.tags.list(accessId, device.token)).toEqual([
      'pushd:city:深圳',
      'pushd:province:广东',
    ]);
    // Still not settable or removable by hand.
    await expect(
      h.removeTags({ accessId: 0, token: device.token, tags: ['pushd:city:深圳'] }, auth()),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'tags' } });
  });

  it('tells the gateway holding the device, and forgets the location when the device unregisters', async () => {
    const { h, auth, bus, stores, accessId, registry, register, count, settled } = await setup();
    const device = await register();
    await settled({ matched: 1 });
    await stores.routes.set(
      accessId,
      device.token,
      { nodeId: 'gw-1', sessionId: 's1', openedAtMs: 0 },
      60_000,
    );
    const announced: string[][] = [];
    const subscription = bus.subscribe(subjects.nodeTags('gw-1'), (data) =>
      announced.push(DeviceTagsChanged.decode(data).tokens),
    );
    await report(h, auth)(device.token, '广东', '深圳');
    await waitFor(() => announced.length === 1, 'the tag change announcement');
    expect(announced).toEqual([[device.token]]);
    subscription.unsubscribe();

    await registry.unregisterDevice({ accessId: 0, token: device.token }, auth());
    await settled({ matched: 0 });
    await expect(count(list(['pushd:city:深圳']))).resolves.toEqual({ matched: 0, online: 0 });
    expect(await stores.tags.list(accessId, device.token)).toEqual([]);
  });
});

describe('builtinTagsOf', () => {
  it('makes the built-in value tags of the details a device gave', () => {
    expect(builtinTagsOf({ appVersion: '2.1.0', osVersion: '14', locale: 'zh-CN' })).toEqual([
      'pushd:app_version:2.1.0',
      'pushd:os_version:14',
      'pushd:locale:zh-CN',
    ]);
    expect(builtinTagsOf({ appVersion: '', locale: 'en' })).toEqual(['pushd:locale:en']);
  });
});

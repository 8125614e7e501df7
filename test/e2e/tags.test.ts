import { generateDeviceId } from '@pushd/device-sdk';
import { Platform, type TagExpression, type TagRule } from '@pushd/proto';
import { waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsFor, type TestApp, TestDevice } from '../support/clients.js';
import {
  ON_CLUSTERS,
  type SystemUnderTest,
  startEmbeddedSystem,
  startProcessSystem,
} from '../support/system.js';

// Tags and audience dry runs end to end, on both modes: the tag API's limits and batches, and the
// audience index the tag service keeps from registry and gateway events (registrations, connects,
// disconnects, unregistrations) with no call from the app.

const list = (tags: string[], op = 'AND'): TagExpression => ({
  form: { $case: 'tagList', value: { tags, op } },
});
const rule = (tags: string[], options: { operator?: string; isNot?: boolean } = {}): TagRule => ({
  tagItems: [{ tags, isNot: false, tagsOperator: 'OR', itemsOperator: '', tagType: '' }],
  operator: options.operator ?? '',
  isNot: options.isNot ?? false,
});
const rules = (...tagRules: TagRule[]): TagExpression => ({
  form: { $case: 'tagRules', value: { rules: tagRules } },
});

describe.each([
  ['separate processes on NATS and Redis', startProcessSystem],
  ON_CLUSTERS,
  ['embedded mode', startEmbeddedSystem],
] as const)('tags and audience counts end to end: %s', (_mode, start) => {
  let system: SystemUnderTest;
  let clients: ReturnType<typeof clientsFor>;

  beforeAll(async () => {
    system = await start();
    clients = clientsFor(system);
  }, 90_000);

  afterAll(async () => {
    clients?.close();
    await system?.stop();
  });

  /** Registers through the registry directly (as a gateway would), without opening a connection. */
  const registerOffline = async (
    app: TestApp,
    details: { platform?: Platform; appVersion?: string; osVersion?: string; locale?: string } = {},
  ) => {
    const registered = await clients.admin.registerDevice({
      accessId: app.accessId,
      accessKey: app.accessKey,
      deviceId: generateDeviceId(),
      platform: details.platform ?? Platform.PLATFORM_ANDROID,
      appVersion: details.appVersion ?? '1.0.0',
      osVersion: details.osVersion ?? '14',
      locale: details.locale ?? 'zh-CN',
      sdkVersion: '',
    });
    return registered.device?.token ?? '';
  };

  const counter = (app: TestApp) => {
    const { tag } = clients.forApp(app);
    const count = (expression?: TagExpression, platform = Platform.PLATFORM_UNSPECIFIED) =>
      tag.countAudience({ accessId: app.accessId, expression, platform });
    /** Counts follow events: wait until the index has caught up. */
    const until = (expected: { matched: number; online?: number }, expression?: TagExpression) =>
      waitFor(
        async () => {
          const counted = await count(expression);
          return (
            counted.matched === expected.matched && (expected.online ?? counted.online) === counted.online
          );
        },
        `the audience ${JSON.stringify(expression ?? 'all')} to count ${JSON.stringify(expected)}`,
        15_000,
      );
    return { count, until };
  };

  it('gives registered devices built-in tags and follows their connections and tag changes', async () => {
    const app = await clients.createApp('tags-online');
    const { tag } = clients.forApp(app);
    const { count, until } = counter(app);
    const android = await TestDevice.register(system, app, {
      registration: {
        accessKey: app.accessKey,
        deviceId: generateDeviceId(),
        platform: Platform.PLATFORM_ANDROID,
        appVersion: '2.1.0',
        osVersion: '14',
        locale: 'zh-CN',
      },
    });
    const ios = await TestDevice.register(system, app, {
      registration: {
        accessKey: app.accessKey,
        deviceId: generateDeviceId(),
        platform: Platform.PLATFORM_IOS,
        appVersion: '2.0.0',
        osVersion: '17.4',
        locale: 'en-US',
      },
    });
    await until({ matched: 2, online: 2 });
    await expect(count(list(['pushd:app_version:2.1.0']))).resolves.toEqual({ matched: 1, online: 1 });
    await expect(count(list(['pushd:os_version:17.4', 'pushd:locale:en-US']))).resolves.toEqual({
      matched: 1,
      online: 1,
    });
    await expect(count(list(['pushd:active:1d']))).resolves.toEqual({ matched: 2, online: 2 });
    await expect(count(undefined, Platform.PLATFORM_IOS)).resolves.toEqual({ matched: 1, online: 1 });

    // Built-in tags cannot be set by hand.
    await expect(
      tag.addTags({ accessId: app.accessId, token: android.token, tags: ['pushd:platform:ios'] }),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'tags' } });

    // The iOS device goes away: still covered, no longer online.
    await ios.client.close();
    await until({ matched: 2, online: 1 });
    await expect(count(undefined, Platform.PLATFORM_IOS)).resolves.toEqual({ matched: 1, online: 0 });

    // The Android device changes tags while connected: counted under the new ones at once.
    await tag.addTags({ accessId: app.accessId, token: android.token, tags: ['vip'] });
    await expect(count(list(['vip']))).resolves.toEqual({ matched: 1, online: 1 });
    await tag.setTags({ accessId: app.accessId, token: android.token, tags: ['gamer'] });
    await expect(count(list(['vip']))).resolves.toEqual({ matched: 0, online: 0 });
    await expect(count(list(['gamer']))).resolves.toEqual({ matched: 1, online: 1 });

    await ios.reconnect(system, app);
    await until({ matched: 2, online: 2 });
    await android.client.close();
    await ios.client.close();
    await until({ matched: 2, online: 0 });
  });

  it('refuses calls over the limits whole, changing nothing, and skips unknown tokens in batches', async () => {
    const app = await clients.createApp('tags-limits');
    const { tag } = clients.forApp(app);
    const { count, until } = counter(app);
    const [a, b, full] = [await registerOffline(app), await registerOffline(app), await registerOffline(app)];
    const unknown = 'f'.repeat(40);
    await until({ matched: 3 });

    await expect(
      tag.batchAddTags({ accessId: app.accessId, tokens: [a, unknown, b], tags: ['vip', 'gd'] }),
    ).resolves.toEqual({ unknownTokens: [unknown], changed: 2 });
    await expect(count(list(['vip', 'gd']))).resolves.toEqual({ matched: 2, online: 0 });

    // 100 tags per device: a batch that would give one device a 101st is refused for all of them.
    const ninetyNine = Array.from({ length: 99 }, (_, i) => `full-${i}`);
    await tag.setTags({ accessId: app.accessId, token: full, tags: ninetyNine });
    await expect(
      tag.batchAddTags({ accessId: app.accessId, tokens: [a, full, b], tags: ['new-1', 'new-2'] }),
    ).rejects.toMatchObject({
      code: 'TAG_LIMIT_EXCEEDED',
      metadata: { limit: 'per_device', max: '100', would_have: '101', token: full },
    });
    await expect(tag.listTags({ accessId: app.accessId, token: a })).resolves.toEqual({
      tags: ['gd', 'vip'],
    });
    await expect(count(list(['new-1']))).resolves.toEqual({ matched: 0, online: 0 });
    const before = await tag.listAppTags({ accessId: app.accessId, pageSize: 0, pageToken: '' });
    expect(before.total).toBe(101);

    // 10,000 distinct tags per app: fill it up, 100 devices of 100 tags (101 are in use already).
    // full: 99 + 1 new, a: vip, gd + 98 new, b and 97 more devices: 100 new each.
    const devices = [b];
    for (let n = 0; n < 97; n++) devices.push(await registerOffline(app));
    let next = 0;
    const fresh = (n: number) => Array.from({ length: n }, () => `app-${next++}`);
    await tag.setTags({ accessId: app.accessId, token: full, tags: [...ninetyNine, ...fresh(1)] });
    await tag.setTags({ accessId: app.accessId, token: a, tags: ['vip', 'gd', ...fresh(98)] });
    for (const token of devices) await tag.setTags({ accessId: app.accessId, token, tags: fresh(100) });
    const filled = await tag.listAppTags({ accessId: app.accessId, pageSize: 1, pageToken: '' });
    expect(filled.total).toBe(10_000);

    const spare = await registerOffline(app);
    await expect(
      tag.addTags({ accessId: app.accessId, token: spare, tags: ['one-too-many'] }),
    ).rejects.toMatchObject({
      code: 'TAG_LIMIT_EXCEEDED',
      metadata: { limit: 'per_app', max: '10000', would_have: '10001' },
    });
    await expect(
      tag.batchAddTags({ accessId: app.accessId, tokens: [spare, unknown], tags: ['vip', 'one-too-many'] }),
    ).rejects.toMatchObject({ code: 'TAG_LIMIT_EXCEEDED', metadata: { limit: 'per_app' } });
    await expect(tag.listTags({ accessId: app.accessId, token: spare })).resolves.toEqual({ tags: [] });
    expect((await tag.listAppTags({ accessId: app.accessId, pageSize: 1, pageToken: '' })).total).toBe(
      10_000,
    );
    // Tags already in use still go on more devices; a tag given up frees its place.
    await expect(
      tag.addTags({ accessId: app.accessId, token: spare, tags: ['vip', 'app-0'] }),
    ).resolves.toEqual({
      count: 2,
    });
    await tag.removeTags({ accessId: app.accessId, token: full, tags: ['full-0'] });
    await expect(tag.addTags({ accessId: app.accessId, token: spare, tags: ['one-more'] })).resolves.toEqual({
      count: 3,
    });
  }, 120_000);

  it('counts expressions mixing user and built-in tags, per platform, and forgets unregistered devices', async () => {
    const app = await clients.createApp('tags-count');
    const { tag, registry } = clients.forApp(app);
    const { count, until } = counter(app);
    const android = [
      await registerOffline(app, { appVersion: '3.0.0' }),
      await registerOffline(app, { appVersion: '3.1.0' }),
      await registerOffline(app, { appVersion: '3.1.0', locale: 'en-US' }),
    ];
    const ios = [
      await registerOffline(app, { platform: Platform.PLATFORM_IOS, appVersion: '3.1.0' }),
      await registerOffline(app, { platform: Platform.PLATFORM_IOS, appVersion: '3.0.0' }),
    ];
    await until({ matched: 5, online: 0 });
    await tag.batchAddTags({
      accessId: app.accessId,
      tokens: [android[0]!, android[1]!, ios[0]!],
      tags: ['vip'],
    });

    // vip AND app 3.1.0 AND NOT en-US: android[1] and ios[0].
    const expression = rules(
      rule(['vip']),
      rule(['pushd:app_version:3.1.0'], { operator: 'AND' }),
      rule(['pushd:locale:en-US'], { operator: 'AND', isNot: true }),
    );
    await expect(count(expression)).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(expression, Platform.PLATFORM_ANDROID)).resolves.toEqual({ matched: 1, online: 0 });
    await expect(count(expression, Platform.PLATFORM_IOS)).resolves.toEqual({ matched: 1, online: 0 });
    await expect(count(list(['vip', 'pushd:app_version:3.0.0'], 'OR'))).resolves.toEqual({
      matched: 4,
      online: 0,
    });
    await expect(count(rules(rule(['vip'], { isNot: true })))).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(undefined, Platform.PLATFORM_ANDROID)).resolves.toEqual({ matched: 3, online: 0 });
    const covered = await registry.countDevices({ accessId: app.accessId });
    expect(covered).toEqual({ total: 5, android: 3, ios: 2 });

    // android[1] unregisters: it leaves every count it was in.
    await registry.unregisterDevice({ accessId: app.accessId, token: android[1]! });
    await until({ matched: 4 });
    await expect(count(expression)).resolves.toEqual({ matched: 1, online: 0 });
    await expect(count(list(['vip']))).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(list(['pushd:app_version:3.1.0']))).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(undefined, Platform.PLATFORM_ANDROID)).resolves.toEqual({ matched: 2, online: 0 });
    await expect(count(rules(rule(['vip'], { isNot: true })))).resolves.toEqual({ matched: 2, online: 0 });
    const { tags } = await tag.listAppTags({ accessId: app.accessId, pageSize: 0, pageToken: '' });
    expect(tags).toEqual([{ tag: 'vip', devices: 2 }]);
    await expect(count(rules(rule(['pushd:platform:windows'])))).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
  });
});

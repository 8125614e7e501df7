import { Platform, type PushRequest } from '@pushd/proto';
import { waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsFor, notifyRequest, type TestApp, TestDevice, tagListTarget } from '../support/clients.js';
import { BOTH_MODES, type SystemUnderTest } from '../support/system.js';

// Broadcasts (`all`) and tag-expression pushes end to end: stored once per app, evaluated by the gateway
// against the devices it holds, caught up by devices coming back, ordered with targeted messages.
describe.each(BOTH_MODES)('broadcasts and tag pushes: %s', (_mode, start) => {
  let system: SystemUnderTest;
  let clients: ReturnType<typeof clientsFor>;
  const devices: TestDevice[] = [];

  beforeAll(async () => {
    system = await start();
    clients = clientsFor(system);
  }, 90_000);

  afterAll(async () => {
    for (const device of devices) await device.client.close();
    clients?.close();
    await system?.stop();
  });

  const register = async (app: TestApp, platform = Platform.PLATFORM_ANDROID) => {
    const device = await TestDevice.register(system, app, { platform });
    devices.push(device);
    return device;
  };

  const push = (app: TestApp, audience: object, content: string, fields: Partial<PushRequest> = {}) =>
    clients.forApp(app).dispatch.push(notifyRequest(app, audience, content, fields));
  const all = { $case: 'all', value: {} };
  const tagged = tagListTarget;
  const contents = (device: TestDevice) => device.received.map((m) => m.message?.content);

  /** Sum of a metric over every process's /metrics. */
  const metric = async (name: string) => {
    let sum = 0;
    for (const port of system.opsPorts) {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      for (const line of text.split('\n')) {
        if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.split(' ').pop());
      }
    }
    return sum;
  };

  /** Adds tags through the API and waits until the gateway holding the device reloaded them. */
  const addTagsOnline = async (app: TestApp, device: TestDevice, tags: string[]) => {
    const before = await metric('gateway_tag_reloads_total');
    await clients.forApp(app).tag.addTags({ accessId: app.accessId, token: device.token, tags });
    await waitFor(async () => (await metric('gateway_tag_reloads_total')) > before, 'the gateway tag reload');
  };

  it('a push to all reaches every online device once; another within 3 s is refused with a retry delay, other apps unaffected', async () => {
    const app = await clients.createApp('all-audience');
    const other = await clients.createApp('all-audience-other');
    const online = [await register(app), await register(app, Platform.PLATFORM_IOS), await register(app)];
    const outsider = await register(other);

    const first = await push(app, all, 'hello everyone');
    expect(first.target).toBe(3);
    for (const device of online) await device.waitForMessages(1);
    expect(online.map(contents)).toEqual([['hello everyone'], ['hello everyone'], ['hello everyone']]);

    const refusal = await push(app, all, 'too soon').then(
      () => undefined,
      (error: unknown) => error as { code?: string; metadata?: Record<string, string> },
    );
    expect(refusal?.code).toBe('RATE_LIMITED');
    const retryAfterMs = Number(refusal?.metadata?.retry_after_ms);
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(3000);

    // The other app is not limited by this one.
    await push(other, all, 'other app');
    await outsider.waitForMessages(1);
    expect(contents(outsider)).toEqual(['other app']);

    await new Promise((resolve) => setTimeout(resolve, retryAfterMs + 50));
    await push(app, all, 'after the window');
    for (const device of online) await device.waitForMessages(2);
    expect(contents(online[0] as TestDevice)).toEqual(['hello everyone', 'after the window']);
  });

  it('a tag expression reaches the matching online devices only, restricted to a platform, as the dry-run counted', async () => {
    const app = await clients.createApp('tag-push');
    const { tag } = clients.forApp(app);
    const sportsAndroid = await register(app);
    const sportsIos = await register(app, Platform.PLATFORM_IOS);
    const news = await register(app);
    await addTagsOnline(app, sportsAndroid, ['sports', 'vip']);
    await addTagsOnline(app, sportsIos, ['sports']);
    await addTagsOnline(app, news, ['news']);

    const sportsVip = tagged(['sports', 'vip'], 'AND');
    const dryRun = await tag.countAudience({
      accessId: app.accessId,
      expression: sportsVip.value as never,
      platform: Platform.PLATFORM_UNSPECIFIED,
    });
    expect(dryRun).toEqual({ matched: 1, online: 1 });
    expect((await push(app, sportsVip, 'vip sports')).target).toBe(1);
    expect(
      (await push(app, tagged(['sports']), 'sports on ios', { platform: Platform.PLATFORM_IOS })).target,
    ).toBe(1);
    expect((await push(app, tagged(['sports', 'news']), 'sports or news')).target).toBe(3);
    for (const device of [sportsAndroid, sportsIos, news]) await device.waitForMessages(1);
    await sportsAndroid.waitForMessages(2);
    await sportsIos.waitForMessages(2);
    expect(contents(sportsAndroid)).toEqual(['vip sports', 'sports or news']);
    expect(contents(sportsIos)).toEqual(['sports on ios', 'sports or news']);
    expect(contents(news)).toEqual(['sports or news']);

    // A tag the device gets while online counts for the next push; one it loses no longer does.
    await addTagsOnline(app, news, ['vip']);
    await clients
      .forApp(app)
      .tag.removeTags({ accessId: app.accessId, token: sportsAndroid.token, tags: ['vip'] });
    await addTagsOnline(app, sportsIos, ['vip']);
    await push(app, tagged(['vip']), 'vip now');
    await news.waitForMessages(2);
    await sportsIos.waitForMessages(3);
    expect(contents(news)).toEqual(['sports or news', 'vip now']);
    expect(contents(sportsAndroid)).toEqual(['vip sports', 'sports or news']);
  });

  it('a device coming back gets the newest of its missed targeted and matching broadcast messages, in id order', async () => {
    const app = await clients.createApp('catch-up');
    const android = await register(app);
    const ios = await register(app, Platform.PLATFORM_IOS);
    await addTagsOnline(app, android, ['sports']);
    await addTagsOnline(app, ios, ['sports']);
    await android.client.close();
    await ios.client.close();

    const toAndroid = await push(app, { $case: 'token', value: android.token }, 'targeted');
    const sports = await push(app, tagged(['sports']), 'sports');
    const toAll = await push(app, all, 'everyone');
    await push(app, tagged(['news']), 'news');

    await android.reconnect(system, app);
    await ios.reconnect(system, app);
    await android.waitForMessages(2);
    await ios.waitForMessages(1);
    // Android keeps the newest 2 of targeted, sports and everyone; iOS the newest 1.
    expect(android.received.map((m) => m.msgId)).toEqual([sports.msgId, toAll.msgId]);
    expect(ios.received.map((m) => m.msgId)).toEqual([toAll.msgId]);
    expect(toAndroid.msgId).toBeLessThan(sports.msgId);

    // Live again: what follows is delivered live, in order, nothing twice.
    const live = await push(app, tagged(['sports']), 'live');
    await android.waitForMessages(3);
    expect(android.received.map((m) => m.msgId)).toEqual([sports.msgId, toAll.msgId, live.msgId]);
  });

  it('concurrent targeted and tag pushes reach a device in increasing id order, every one of them', async () => {
    const app = await clients.createApp('ordering');
    const device = await register(app);
    await addTagsOnline(app, device, ['fans']);
    const count = 30;
    const results = await Promise.all(
      Array.from({ length: count }, (_, n) =>
        n % 2 === 0
          ? push(app, { $case: 'token', value: device.token }, `targeted ${n}`)
          : push(app, tagged(['fans']), `tag ${n}`),
      ),
    );
    await device.waitForMessages(count);
    const received = device.received.map((m) => m.msgId);
    expect(received).toEqual([...received].sort((a, b) => a - b));
    expect(new Set(received)).toEqual(new Set(results.map((r) => r.msgId)));
  });
});

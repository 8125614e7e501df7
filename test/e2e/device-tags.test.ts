import { Platform, type PushRequest } from '@pushd/proto';
import { waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsFor, notifyRequest, type TestApp, TestDevice, tagListTarget } from '../support/clients.js';
import { BOTH_MODES, type SystemUnderTest } from '../support/system.js';

// Devices that set their own tags (UpdateTags) and report their location (ReportLocation) over the
// WebSocket, end to end: the gateway calls the tag service, tag pushes follow the new tags at once, and the
// location becomes the built-in tags pushd:province:<p> / pushd:city:<c> of audiences and counts.
describe.each(BOTH_MODES)('device tags and location over WebSocket: %s', (_mode, start) => {
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
  const tagged = tagListTarget;
  const contents = (device: TestDevice) => device.received.map((m) => m.message?.content);
  const listTags = (app: TestApp, device: TestDevice) =>
    clients.forApp(app).tag.listTags({ accessId: app.accessId, token: device.token });

  it('a device adds and removes its own tags; tag pushes reach it by them at once, not by the removed one', async () => {
    const app = await clients.createApp('device-tags');
    const device = await register(app);
    const bystander = await register(app);

    await expect(device.client.updateTags('add', ['sports', 'news', 'vip'])).resolves.toBe(3);
    await expect(device.client.updateTags('remove', ['news'])).resolves.toBe(2);
    await expect(listTags(app, device)).resolves.toEqual({ tags: ['sports', 'vip'] });

    // No wait for any announcement: the reply means the gateway evaluates on the new tags.
    await push(app, tagged(['news']), 'news');
    await push(app, tagged(['sports']), 'sports');
    await device.waitForMessages(1);
    await device.client.ping();
    // The app's pushes are delivered in order: had the news push matched, it would have come first.
    expect(contents(device)).toEqual(['sports']);

    await expect(device.client.updateTags('replace', ['news'])).resolves.toBe(1);
    await push(app, tagged(['sports', 'news'], 'AND'), 'sports and news');
    await push(app, tagged(['news']), 'news again');
    await device.waitForMessages(2);
    await device.client.ping();
    expect(contents(device)).toEqual(['sports', 'news again']);
    expect(bystander.received).toEqual([]);
    await expect(listTags(app, bystander)).resolves.toEqual({ tags: [] });
  });

  it('a reported city reaches the devices there and not those of another city, and is counted', async () => {
    const app = await clients.createApp('device-location');
    const { tag } = clients.forApp(app);
    const shenzhen = await register(app);
    const guangzhou = await register(app, Platform.PLATFORM_IOS);
    await expect(shenzhen.client.reportLocation('广东', '深圳')).resolves.toBeUndefined();
    await guangzhou.client.reportLocation('广东', '广州');

    const count = (tags: string[]) =>
      tag.countAudience({
        accessId: app.accessId,
        expression: tagged(tags).value as never,
        platform: Platform.PLATFORM_UNSPECIFIED,
      });
    // Registered and online bits come from events the tag service consumes: wait for them.
    await waitFor(
      async () =>
        (await count(['pushd:city:深圳'])).online === 1 &&
        (await count(['pushd:province:广东'])).online === 2,
      'both devices counted online',
    );
    await expect(count(['pushd:city:深圳'])).resolves.toEqual({ matched: 1, online: 1 });
    await expect(count(['pushd:province:广东'])).resolves.toEqual({ matched: 2, online: 2 });

    expect((await push(app, tagged(['pushd:city:深圳']), 'to shenzhen')).target).toBe(1);
    expect((await push(app, tagged(['pushd:province:广东']), 'to guangdong')).target).toBe(2);
    await shenzhen.waitForMessages(2);
    await guangzhou.waitForMessages(1);
    await guangzhou.client.ping();
    expect(contents(shenzhen)).toEqual(['to shenzhen', 'to guangdong']);
    expect(contents(guangzhou)).toEqual(['to guangdong']);

    // The location is not a user tag: clearing the user tags through the API keeps it, ListTags omits it.
    await shenzhen.client.updateTags('add', ['vip']);
    await tag.setTags({ accessId: app.accessId, token: shenzhen.token, tags: [] });
    await expect(listTags(app, shenzhen)).resolves.toEqual({ tags: [] });
    await expect(count(['pushd:city:深圳'])).resolves.toEqual({ matched: 1, online: 1 });

    // Moving replaces the city: the old one no longer reaches the device.
    await shenzhen.client.reportLocation('广东', '广州');
    await expect(count(['pushd:city:深圳'])).resolves.toEqual({ matched: 0, online: 0 });
    await expect(count(['pushd:city:广州'])).resolves.toEqual({ matched: 2, online: 2 });
    await push(app, tagged(['pushd:city:深圳']), 'to shenzhen again');
    await push(app, tagged(['pushd:city:广州']), 'to guangzhou');
    await shenzhen.waitForMessages(3);
    await guangzhou.waitForMessages(2);
    await shenzhen.client.ping();
    expect(contents(shenzhen)).toEqual(['to shenzhen', 'to guangdong', 'to guangzhou']);
    expect(contents(guangzhou)).toEqual(['to guangdong', 'to guangzhou']);
  });

  it('an UpdateTags over the per-device limit gets TAG_LIMIT_EXCEEDED, changes nothing and keeps the connection', async () => {
    const app = await clients.createApp('device-tag-limit');
    const device = await register(app);
    await device.client.reportLocation('广东', '深圳');
    const hundred = Array.from({ length: 100 }, (_, n) => `tag-${String(n).padStart(3, '0')}`);
    // The two location tags do not count: 100 user tags fit beside them.
    await expect(device.client.updateTags('replace', hundred)).resolves.toBe(100);

    const refusal = await device.client.updateTags('add', ['one-more']).then(
      () => undefined,
      (error: unknown) => error as { code?: string; message?: string },
    );
    expect(refusal?.code).toBe('TAG_LIMIT_EXCEEDED');
    expect(refusal?.message).toContain('at most 100 tags');
    expect(device.client.state).toBe('open');
    await device.client.ping();
    const { tags } = await listTags(app, device);
    expect(tags).toEqual(hundred);

    // A push to the refused tag does not reach the device; one to a tag it kept does.
    await push(app, tagged(['one-more']), 'refused tag');
    await push(app, tagged(['tag-099']), 'kept tag');
    await device.waitForMessages(1);
    await device.client.ping();
    expect(contents(device)).toEqual(['kept tag']);
  });
});

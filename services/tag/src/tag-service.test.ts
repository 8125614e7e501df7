import { MemoryBus, streams, subjects } from '@pushd/bus';
import { PushdError, silentLogger } from '@pushd/common';
import { Event, EventBatch, EventType, Platform, RegistryServiceService } from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import { basicAuthorization, bearerAuthorization, callContext, inProcessClient } from '@pushd/rpc';
import { createMemoryStores } from '@pushd/store';
import { waitFor } from '@pushd/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_TAGS_PER_DEVICE, RESERVED_TAG_PREFIX, TagService, validateTags } from './tag-service.js';

const CLUSTER_TOKEN = 'tag-unit-test-cluster-token';

const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));

const stopAfterTest: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const stop of stopAfterTest.splice(0)) await stop();
});

async function setup() {
  const stores = createMemoryStores();
  const bus = new MemoryBus({ streams: [streams.events] });
  const registryService = new RegistryService({
    apps: stores.apps,
    devices: stores.devices,
    bus,
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
  });
  const registry = registryService.handlers();
  const service = new TagService({
    tags: stores.tags,
    routes: stores.routes,
    bus,
    registry: inProcessClient(RegistryServiceService, registry, bearerAuthorization(CLUSTER_TOKEN)),
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
  });
  stopAfterTest.push(() => service.stop());
  const h = service.handlers();

  const createApp = async (name = 'demo') => {
    const created = await registry.createApp({ name }, cluster());
    const accessId = created.app?.accessId ?? 0;
    let devices = 0;
    const register = async (id = `device_${accessId}_${String(++devices).padStart(8, '0')}`) => {
      const registered = await registry.registerDevice(
        {
          accessId,
          accessKey: created.accessKey,
          deviceId: id,
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
    return { accessId, auth: () => callContext(basicAuthorization(accessId, created.secretKey)), register };
  };
  return { stores, bus, registry, service, h, createApp };
}

const names = (count: number, prefix = 'tag') => Array.from({ length: count }, (_, n) => `${prefix}-${n}`);

describe('validateTags', () => {
  it('returns the tags with duplicates collapsed, in first-seen order', () => {
    expect(validateTags(['vip', 'beijing', 'vip', 'gamer', 'beijing'])).toEqual(['vip', 'beijing', 'gamer']);
    expect(validateTags(['省份:广东', 'v1.2.3', 'a_b-c'])).toEqual(['省份:广东', 'v1.2.3', 'a_b-c']);
  });

  it.each([
    ['the reserved prefix', `${RESERVED_TAG_PREFIX}platform:android`],
    ['a space', 'two words'],
    ['a tab', 'tab\there'],
    ['a newline', 'new\nline'],
    ['a leading space', ' lead'],
    ['a non-breaking space', 'no\u00a0break'],
    ['an ideographic space', '全角\u3000空格'],
    ['a control character', 'bell\u0007'],
    ['no characters', ''],
    ['51 characters', 'x'.repeat(51)],
  ])('refuses a tag with %s (INVALID_ARGUMENT, field tags)', (_what, tag) => {
    let thrown: unknown;
    try {
      validateTags(['fine', tag]);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(PushdError);
    expect(thrown).toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'tags' } });
  });

  it('accepts 50 characters, a prefix that only looks reserved, and 100 tags in one call', () => {
    expect(validateTags(['x'.repeat(50)])).toEqual(['x'.repeat(50)]);
    expect(validateTags(['pushd', 'pushd-x', 'my:pushd:tag'])).toEqual(['pushd', 'pushd-x', 'my:pushd:tag']);
    expect(validateTags(names(100))).toHaveLength(100);
  });

  it('refuses an empty list and more than 100 tags in one call', () => {
    expect(() => validateTags([])).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field: 'tags' } }),
    );
    expect(() => validateTags(names(101))).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field: 'tags' } }),
    );
  });
});

describe('TagService', () => {
  it('adds, lists and removes tags of a device', async () => {
    const { h, createApp } = await setup();
    const app = await createApp();
    const token = await app.register();
    await expect(
      h.addTags({ accessId: 0, token, tags: ['vip', 'beijing', 'vip'] }, app.auth()),
    ).resolves.toEqual({ count: 2 });
    await expect(h.addTags({ accessId: 0, token, tags: ['gamer', 'vip'] }, app.auth())).resolves.toEqual({
      count: 3,
    });
    await expect(h.listTags({ accessId: 0, token }, app.auth())).resolves.toEqual({
      tags: ['beijing', 'gamer', 'vip'],
    });
    await expect(
      h.removeTags({ accessId: 0, token, tags: ['vip', 'not-there'] }, app.auth()),
    ).resolves.toEqual({ count: 2 });
    await expect(h.listTags({ accessId: app.accessId, token }, cluster())).resolves.toEqual({
      tags: ['beijing', 'gamer'],
    });
  });

  it('allows 100 tags per device and refuses a call that would exceed it as a whole, leaving tags unchanged', async () => {
    const { h, createApp } = await setup();
    const app = await createApp();
    const token = await app.register();
    expect(MAX_TAGS_PER_DEVICE).toBe(100);
    await expect(h.addTags({ accessId: 0, token, tags: names(95) }, app.auth())).resolves.toEqual({
      count: 95,
    });

    // 3 already held + 7 new = 102: the whole call is refused, the 7 new ones are not added either.
    const over = [...names(3), ...names(7, 'new')];
    const refused = h.addTags({ accessId: 0, token, tags: over }, app.auth());
    await expect(refused).rejects.toBeInstanceOf(PushdError);
    await expect(refused).rejects.toMatchObject({
      code: 'TAG_LIMIT_EXCEEDED',
      metadata: expect.objectContaining({ would_have: '102' }),
    });
    const { tags } = await h.listTags({ accessId: 0, token }, app.auth());
    expect(tags).toHaveLength(95);
    expect(tags).toEqual([...names(95)].sort());

    // Up to exactly 100 is fine; then tags already held can still be "added", a new one cannot.
    await expect(h.addTags({ accessId: 0, token, tags: names(5, 'new') }, app.auth())).resolves.toEqual({
      count: 100,
    });
    await expect(h.addTags({ accessId: 0, token, tags: names(10) }, app.auth())).resolves.toEqual({
      count: 100,
    });
    await expect(h.addTags({ accessId: 0, token, tags: ['one-more'] }, app.auth())).rejects.toMatchObject({
      code: 'TAG_LIMIT_EXCEEDED',
      metadata: expect.objectContaining({ would_have: '101' }),
    });
    // The limit is per device: another device starts from zero.
    const other = await app.register();
    await expect(h.addTags({ accessId: 0, token: other, tags: names(100) }, app.auth())).resolves.toEqual({
      count: 100,
    });
  });

  it('refuses invalid tags before touching the store', async () => {
    const { h, createApp } = await setup();
    const app = await createApp();
    const token = await app.register();
    await expect(
      h.addTags({ accessId: 0, token, tags: ['ok', 'pushd:platform:ios'] }, app.auth()),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'tags' } });
    await expect(h.removeTags({ accessId: 0, token, tags: ['bad tag'] }, app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'tags' },
    });
    await expect(h.listTags({ accessId: 0, token }, app.auth())).resolves.toEqual({ tags: [] });
  });

  it('answers TOKEN_NOT_FOUND for a token that is not registered, and INVALID_ARGUMENT for none', async () => {
    const { h, createApp, stores } = await setup();
    const app = await createApp();
    const unknown = 'e'.repeat(40);
    await expect(h.addTags({ accessId: 0, token: unknown, tags: ['vip'] }, app.auth())).rejects.toMatchObject(
      {
        code: 'TOKEN_NOT_FOUND',
      },
    );
    await expect(
      h.removeTags({ accessId: 0, token: unknown, tags: ['vip'] }, app.auth()),
    ).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    await expect(h.listTags({ accessId: 0, token: unknown }, app.auth())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(h.listTags({ accessId: 0, token: '' }, app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'token' },
    });
    expect(await stores.tags.list(app.accessId, unknown)).toEqual([]);
  });

  it('keeps apps apart', async () => {
    const { h, createApp } = await setup();
    const a = await createApp('a');
    const b = await createApp('b');
    const token = await a.register();
    await h.addTags({ accessId: 0, token, tags: ['secret'] }, a.auth());
    await expect(h.listTags({ accessId: a.accessId, token }, b.auth())).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    await expect(h.addTags({ accessId: a.accessId, token, tags: ['x'] }, b.auth())).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    await expect(h.listTags({ accessId: 0, token }, b.auth())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(h.listTags({ accessId: 0, token }, callContext())).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    await expect(h.listTags({ accessId: 0, token }, a.auth())).resolves.toEqual({ tags: ['secret'] });
  });

  it('forgets the tags of a device that unregistered, so that registering again starts with none', async () => {
    const { h, createApp, service, registry, stores, bus } = await setup();
    service.startConsuming();
    const app = await createApp();
    const deviceId = 'device_returning_0001';
    const token = await app.register(deviceId);
    const keep = await app.register();
    await h.addTags({ accessId: 0, token, tags: ['vip', 'beijing'] }, app.auth());
    await h.addTags({ accessId: 0, token: keep, tags: ['vip'] }, app.auth());

    const announced: number[] = [];
    bus.subscribe(subjects.events('registry'), (data) =>
      announced.push(...EventBatch.decode(data).events.map((e) => e.type)),
    );
    await registry.unregisterDevice({ accessId: 0, token }, app.auth());
    await waitFor(async () => (await stores.tags.list(app.accessId, token)).length === 0, 'the tags to go');
    expect(announced).toEqual([EventType.EVENT_TYPE_UNREGISTERED]);
    // Only that device's tags.
    expect(await stores.tags.list(app.accessId, keep)).toEqual(['vip']);

    expect(await app.register(deviceId)).toBe(token);
    await expect(h.listTags({ accessId: 0, token }, app.auth())).resolves.toEqual({ tags: [] });
  });

  it('ignores an unregistration without a device index (a registration from before indexes existed)', async () => {
    const { h, createApp, service, stores, bus } = await setup();
    service.startConsuming();
    const app = await createApp();
    const token = await app.register();
    await h.addTags({ accessId: 0, token, tags: ['vip'] }, app.auth());
    await waitFor(
      async () => (await stores.tags.state(app.accessId, token)) !== undefined,
      'the registration',
    );
    // Applied late (a redelivery, a replay), after the device registered again and got an index.
    await bus.publishDurable(
      subjects.events('registry'),
      EventBatch.encode({
        events: [
          Event.create({
            type: EventType.EVENT_TYPE_UNREGISTERED,
            accessId: app.accessId,
            token,
            platform: Platform.PLATFORM_ANDROID,
            atMs: Date.now(),
          }),
        ],
      }).finish(),
    );
    await waitFor(async () => (await bus.consumerBacklog(streams.events.name, 'tag')) === 0, 'the event');
    expect(await stores.tags.list(app.accessId, token)).toEqual(['vip']);
    expect(await stores.tags.state(app.accessId, token)).toMatchObject({ unregistered: false });
  });
});

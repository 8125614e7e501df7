import { createMetricsRegistry, PushdError, silentLogger } from '@pushd/common';
import { MessageType, Platform, PushMessage, PushRecord, PushStatus } from '@pushd/proto';
import {
  createRedisClient,
  createRedisStores,
  IDEMPOTENCY_TTL_MS,
  RedisBroadcastLog,
  type RedisClient,
  RedisKeys,
  type Stores,
} from '@pushd/store';
import { startRedisServer, type TestServer, waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { describeRedisStoreContracts } from '../support/redis-contracts.js';

// One redis-server for the file, emptied before every test.
let server: TestServer;
let redis: RedisClient;
const keys = new RedisKeys();

beforeAll(async () => {
  server = await startRedisServer();
  redis = createRedisClient({ url: server.url, logger: silentLogger() });
});

afterAll(async () => {
  await redis?.quit();
  await server?.stop();
});

beforeEach(async () => {
  await redis.flushall();
});

const stores = (): Stores => createRedisStores({ redis, keys });

describeRedisStoreContracts('redis', () => redis, keys);

const APP = 1_500_000_001;
const TOKEN = '0123456789abcdef0123456789abcdef01234567';
const OTHER = 'fedcba9876543210fedcba9876543210fedcba98';
const NOW = Date.now();

function device(token: string) {
  return {
    accessId: APP,
    token,
    platform: Platform.PLATFORM_ANDROID,
    appVersion: '1',
    osVersion: '14',
    locale: 'zh-CN',
    sdkVersion: '0.1.0',
    credentialHash: 'h',
    registeredAtMs: NOW,
  };
}

describe('Redis stores: layout and recovery', () => {
  it('reads, refreshes, clears and replaces routes written before they carried their opened_at', async () => {
    const { routes } = stores();
    // What a gateway of the previous release wrote: '<session id length>:<session id><node id>'.
    await redis.set(keys.route(APP, TOKEN), '2:s1gw-1', 'PX', 60_000);
    expect(await routes.get(APP, TOKEN)).toEqual({ nodeId: 'gw-1', sessionId: 's1', openedAtMs: 0 });
    const mine = { nodeId: 'gw-1', sessionId: 's1', openedAtMs: 0 };
    await routes.refresh([{ accessId: APP, token: TOKEN, route: mine }], 600_000);
    expect(await redis.pttl(keys.route(APP, TOKEN))).toBeGreaterThan(60_000);
    await routes.clear(APP, TOKEN, 's1');
    expect(await redis.exists(keys.route(APP, TOKEN))).toBe(0);
    await redis.set(keys.route(APP, TOKEN), '2:s1gw-1', 'PX', 60_000);
    await routes.set(APP, TOKEN, { nodeId: 'gw-2', sessionId: 's2', openedAtMs: NOW }, 60_000);
    expect(await redis.get(keys.route(APP, TOKEN))).toBe(`${NOW};2:s2gw-2`);
  });

  it('keeps a push in its slot and its index in the app slot, expiring 30 days on or after its loop', async () => {
    const { pushes, schedules } = stores();
    const day = 24 * 3_600_000;
    const now = Date.now();
    const push = PushRecord.fromPartial({
      accessId: APP,
      pushId: '7',
      status: PushStatus.PUSH_STATUS_SCHEDULED,
      createdAtMs: now,
      sendTimeMs: now + day,
    });
    await pushes.save(push);
    expect((await redis.keys('*')).sort()).toEqual(
      [keys.push(APP, '7'), keys.pushIndex(APP), keys.pushRetention(APP)].sort(),
    );
    for (const key of [keys.push(APP, '7'), keys.pushIndex(APP), keys.pushRetention(APP)]) {
      expect(await redis.pexpiretime(key)).toBe(now + 31 * day);
    }
    await pushes.saveCommand(APP, '7', {
      command: new Uint8Array([1]),
      firstNominalMs: now + day,
      loop: { interval: 1, endTimeMs: now + 200 * day },
    });
    await pushes.save({ ...push, status: PushStatus.PUSH_STATUS_SENDING });
    for (const key of [keys.push(APP, '7'), keys.pushIndex(APP), keys.pushRetention(APP)]) {
      expect(await redis.pexpiretime(key)).toBe(now + 230 * day);
    }
    // Mutable fields beside the record, readable without decoding it.
    await pushes.update(APP, '7', { status: PushStatus.PUSH_STATUS_SENDING, firing: 1, failure: 'x' });
    expect(await redis.hmget(keys.push(APP, '7'), 's', 'x', 'f', 't')).toEqual(['2', '1', 'x', String(now)]);
    // An index entry whose push is gone (a save that failed half-way) is skipped.
    await redis.del(keys.push(APP, '7'));
    expect(await pushes.list(APP, { limit: 10 })).toEqual({ pushes: [] });

    await schedules.add(3, { accessId: APP, pushId: '7', occurrence: 1, fireAtMs: now });
    expect(await redis.zrange(keys.scheduleDue(3), 0, -1)).toEqual([`${APP}:7:1:${now}`]);
    expect(await redis.zrange(keys.scheduleByPush(3), 0, -1)).toEqual([`${APP}:7:1:${now}`]);
  });

  it('keeps an idempotency key in the app slot for 24 hours, binary-safe, completing keeps its expiry', async () => {
    const { pushes } = stores();
    const key = '{x}:用户';
    expect(await pushes.claimIdempotencyKey(APP, key, '7')).toEqual({ claimed: true });
    expect(await redis.keys('*')).toEqual([keys.idempotency(APP, key)]);
    expect(keys.idempotency(APP, key)).toMatch(/^pushd:\{a:1500000001\}:idem:~/);
    const ttl = await redis.pttl(keys.idempotency(APP, key));
    expect(ttl).toBeGreaterThan(IDEMPOTENCY_TTL_MS - 60_000);
    expect(ttl).toBeLessThanOrEqual(IDEMPOTENCY_TTL_MS);
    expect(IDEMPOTENCY_TTL_MS).toBe(24 * 3_600_000);
    // Completing a minute later keeps the claim's expiry.
    await redis.pexpire(keys.idempotency(APP, key), IDEMPOTENCY_TTL_MS - 60_000);
    const response = new Uint8Array([0, 0xff, 0xfe, 0, 13, 10]);
    await pushes.completeIdempotencyKey(APP, key, '7', response);
    expect(await redis.pttl(keys.idempotency(APP, key))).toBeLessThanOrEqual(IDEMPOTENCY_TTL_MS - 60_000);
    expect(await redis.hgetBuffer(keys.idempotency(APP, key), 'r')).toEqual(Buffer.from(response));
    expect(await redis.hget(keys.idempotency(APP, key), 'p')).toBe('7');
    // Once it expires, the key can be claimed again.
    await redis.pexpire(keys.idempotency(APP, key), 1);
    await waitFor(
      async () => (await redis.exists(keys.idempotency(APP, key))) === 0,
      'the idempotency key to expire',
    );
    expect(await pushes.claimIdempotencyKey(APP, key, '8')).toEqual({ claimed: true });
  });

  it('keeps the broadcast log in the app slot, expiring with its newest entry, and the head for good', async () => {
    const { broadcasts } = stores();
    const now = Date.now();
    await broadcasts.append(APP, { msgId: 1, expiresAtMs: now + 60_000, data: new Uint8Array([1]) }, now);
    await broadcasts.append(APP, { msgId: 2, expiresAtMs: now + 3_600_000, data: new Uint8Array([2]) }, now);
    await broadcasts.append(APP, { msgId: 3, expiresAtMs: now + 120_000, data: new Uint8Array([3]) }, now);
    await broadcasts.tryAcquireBroadcastSlot(APP, 3000, now);
    expect((await redis.keys('*')).sort()).toEqual(
      [
        keys.broadcastLog(APP),
        keys.broadcastExpiry(APP),
        keys.broadcastHead(APP),
        keys.broadcastGate(APP),
      ].sort(),
    );
    expect(await redis.pexpiretime(keys.broadcastLog(APP))).toBe(now + 3_600_000);
    expect(await redis.pexpiretime(keys.broadcastExpiry(APP))).toBe(now + 3_600_000);
    expect(await redis.pttl(keys.broadcastHead(APP))).toBe(-1);
    expect(await redis.pttl(keys.broadcastGate(APP))).toBeGreaterThan(2_900);
    // Entries the cap trims leave the expiry index too (a small store: maxEntries 2).
    const small = new RedisBroadcastLog({ redis, keys, maxEntries: 2 });
    await small.append(APP, { msgId: 4, expiresAtMs: now + 60_000, data: new Uint8Array([4]) }, now);
    expect(await redis.zcard(keys.broadcastLog(APP))).toBe(2);
    expect(await redis.zcard(keys.broadcastExpiry(APP))).toBe(2);
    // A gate key left without a TTL (written by hand) gets one instead of shutting the gate for good.
    await redis.set(keys.broadcastGate(APP + 1), '1');
    expect(await broadcasts.tryAcquireBroadcastSlot(APP + 1, 3000, now)).toEqual({
      acquired: false,
      retryAfterMs: 3000,
    });
    expect(await redis.pttl(keys.broadcastGate(APP + 1))).toBeGreaterThan(0);
  });

  it('lists only tokens whose record still names the account, and repairs the index', async () => {
    const { devices } = stores();
    await devices.upsert(device(TOKEN));
    await devices.upsert(device(OTHER));
    await devices.setAccount(APP, TOKEN, 'alice');
    await devices.setAccount(APP, OTHER, 'bob');
    // What a crash between steps leaves behind: alice's index naming a token bound to bob, and a removed one.
    const index = keys.accountTokens(APP, 'alice');
    await redis.hset(index, OTHER, '1', 'f'.repeat(40), '1');
    expect(await devices.accountTokens(APP, 'alice')).toEqual([TOKEN]);
    expect(await redis.hkeys(index)).toEqual([TOKEN]);
    expect(await devices.accountTokens(APP, 'bob')).toEqual([OTHER]);
  });

  it('does not repair an index entry whose bind is still in flight', async () => {
    const { devices } = stores();
    await devices.upsert(device(TOKEN));
    await devices.setAccount(APP, TOKEN, 'bob');
    // A bind to alice with a version above the record's has written the index but not yet the record.
    const index = keys.accountTokens(APP, 'alice');
    await redis.hset(index, TOKEN, '1000');
    expect(await devices.accountTokens(APP, 'alice')).toEqual([]);
    expect(await redis.hkeys(index)).toEqual([TOKEN]);
  });

  it('keeps inbox payloads only until the newest message expires, and lastMsgId for good', async () => {
    const { inboxes } = stores();
    const expiresAtMs = NOW + 3_600_000;
    await inboxes.append(
      APP,
      TOKEN,
      PushMessage.fromPartial({ msgId: 1, expiresAtMs: NOW + 60_000 }),
      2,
      NOW,
    );
    await inboxes.append(
      APP,
      TOKEN,
      PushMessage.fromPartial({ msgId: 2, expiresAtMs, message: { type: MessageType.MESSAGE_TYPE_NOTIFY } }),
      2,
      NOW,
    );
    expect(await redis.pexpiretime(keys.inbox(APP, TOKEN))).toBe(expiresAtMs);
    expect(await redis.pttl(keys.inboxLast(APP, TOKEN))).toBe(-1);
    // An already expired window vanishes on its own; lastMsgId stays.
    await inboxes.clear(APP, OTHER);
    await inboxes.append(
      APP,
      OTHER,
      PushMessage.fromPartial({ msgId: 3, expiresAtMs: Date.now() + 30 }),
      2,
      NOW,
    );
    await waitFor(async () => (await redis.exists(keys.inbox(APP, OTHER))) === 0, 'the inbox key to expire');
    expect((await inboxes.pending(APP, OTHER, 0, NOW)).lastMsgId).toBe(3);
    // Its meta entry stays (no TTL), so the expired message is still counted as dropped, once.
    expect(await redis.pttl(keys.inboxMeta(APP, OTHER))).toBe(-1);
    expect(await inboxes.pending(APP, OTHER, 0, Date.now())).toEqual({
      messages: [],
      lastMsgId: 3,
      dropped: 1,
      processed: [],
    });
    expect(await redis.exists(keys.inboxMeta(APP, OTHER))).toBe(0);
  });

  it('serves inbox members stored before the meta hash existed, without counting them', async () => {
    const { inboxes } = stores();
    const now = Date.now();
    const legacy = (msgId: number, expiresAtMs: number) => {
      const encoded = PushMessage.encode(PushMessage.fromPartial({ msgId, expiresAtMs })).finish();
      const member = Buffer.alloc(8 + encoded.length);
      member.writeDoubleBE(expiresAtMs, 0);
      member.set(encoded, 8);
      return redis.zadd(keys.inbox(APP, TOKEN), msgId, member);
    };
    await legacy(1, now + 10);
    await legacy(2, now + 3_600_000);
    await redis.set(keys.inboxLast(APP, TOKEN), '2');
    expect(await inboxes.pending(APP, TOKEN, 0, now)).toMatchObject({ lastMsgId: 2, dropped: 0 });
    expect((await inboxes.pending(APP, TOKEN, 0, now)).messages.map((m) => m.msgId)).toEqual([1, 2]);
    // Evicted by the capacity they count; expired they leave uncounted (nothing recorded their expiry).
    await inboxes.append(
      APP,
      TOKEN,
      PushMessage.fromPartial({ msgId: 3, expiresAtMs: now + 3_600_000 }),
      2,
      now + 20,
    );
    expect(await inboxes.pending(APP, TOKEN, 0, now + 20)).toMatchObject({ lastMsgId: 3, dropped: 0 });
    await inboxes.append(
      APP,
      TOKEN,
      PushMessage.fromPartial({ msgId: 4, expiresAtMs: now + 3_600_000 }),
      2,
      now + 20,
    );
    const after = await inboxes.pending(APP, TOKEN, 0, now + 20);
    expect({ ids: after.messages.map((m) => m.msgId), dropped: after.dropped }).toEqual({
      ids: [3, 4],
      dropped: 1,
    });
  });

  it('forgets who was counted after the dedup window but keeps the counts', async () => {
    const { stats } = createRedisStores({ redis, keys });
    await stats.addSent(APP, '1', [TOKEN], 1024);
    expect(await redis.pttl(keys.pushSent(APP, '1', 1024))).toBeGreaterThan(90 * 3_600_000);
    expect(await redis.pttl(keys.pushCounts(APP, '1'))).toBe(-1);
  });

  it('counts nothing again that the whole-push set of the version before counted (an upgrade)', async () => {
    const { stats } = createRedisStores({ redis, keys });
    const day = Math.floor(NOW / 86_400_000);
    // Counted per push before the upgrade: TOKEN is in the whole-push set, and in the counts.
    await redis.sadd(keys.pushSent(APP, '1', 0), TOKEN);
    await redis.hset(keys.pushCounts(APP, '1'), 's', 1);
    const devices = [
      { token: TOKEN, platform: Platform.PLATFORM_ANDROID },
      { token: OTHER, platform: Platform.PLATFORM_IOS },
    ];
    expect(await stats.add({ stage: 'sent', accessId: APP, pushId: '1', msgId: 1024, day, devices })).toBe(1);
    expect(await stats.get(APP, '1')).toEqual({ sent: 2, arrived: 0 });
  });

  it("carries a fold's counts into the app's day when the fold is repeated after failing between its steps", async () => {
    const { stats } = createRedisStores({ redis, keys });
    const day = Math.floor(NOW / 86_400_000);
    const devices = [
      { token: TOKEN, platform: Platform.PLATFORM_ANDROID },
      { token: OTHER, platform: Platform.PLATFORM_IOS },
    ];
    expect(await stats.add({ stage: 'sent', accessId: APP, pushId: '1', day, devices })).toBe(2);
    // As if the first attempt had died after counting the push, before the day figures.
    await redis.del(keys.statsDay(APP, day), keys.statsDayCarried(APP, day));
    expect(await stats.add({ stage: 'sent', accessId: APP, pushId: '1', day, devices })).toBe(0);
    expect(await stats.getDays(APP, day, day)).toEqual([{ day, pushes: 1, sent: 2, arrived: 0, clicked: 0 }]);
    // Kept 30 days (plus the current one), what was carried while events may still be replayed.
    expect(await redis.pttl(keys.statsDay(APP, day))).toBeGreaterThan(30 * 86_400_000);
    expect(await redis.pttl(keys.statsDayCarried(APP, day))).toBeGreaterThan(96 * 3_600_000);
  });

  it('keeps deployments with different prefixes apart on one Redis', async () => {
    const a = createRedisStores({ redis, keys: new RedisKeys({ prefix: 'a' }) });
    const b = createRedisStores({ redis, keys: new RedisKeys({ prefix: 'b' }) });
    await a.tags.add(APP, [{ token: TOKEN, index: 0 }], ['x'], { perDevice: 10, perApp: 10 });
    expect(await b.tags.list(APP, TOKEN)).toEqual([]);
    expect(
      (await a.apps.create({ name: 'n', accessKey: 'k', secretKeyHash: 's', tokenKey: 't', createdAtMs: 1 }))
        .accessId,
    ).toBe(APP);
    expect(
      (await b.apps.create({ name: 'n', accessKey: 'k', secretKeyHash: 's', tokenKey: 't', createdAtMs: 1 }))
        .accessId,
    ).toBe(APP);
  });
});

describe('Redis audience index and tags: layout and recovery', () => {
  const NOW_MS = Date.now();
  const DAY = 86_400_000;

  it('keeps every audience key and the tag counts in the app slot', async () => {
    const { audience, tags } = stores();
    await audience.setRegistered(APP, 3, Platform.PLATFORM_IOS, true);
    await audience.setTags(APP, 3, ['vip', '地区:广东'], []);
    await audience.setOnline(APP, 3, true);
    await audience.markSeen(APP, 3, NOW_MS);
    await tags.add(APP, [{ token: TOKEN, index: 3 }], ['vip'], { perDevice: 10, perApp: 10 });
    const appKeys = (await redis.keys('pushd:{a:*')).sort();
    expect(appKeys).toEqual(
      [
        keys.audienceRegistered(APP),
        keys.audiencePlatform(APP, Platform.PLATFORM_IOS),
        keys.audienceTag(APP, 'vip'),
        keys.audienceTag(APP, '地区:广东'),
        keys.audienceOnline(APP),
        keys.audienceDay(APP, Math.floor(NOW_MS / DAY)),
        keys.tagCounts(APP),
      ].sort(),
    );
    expect(new Set(appKeys.map((key) => key.slice(key.indexOf('{'), key.indexOf('}') + 1)))).toEqual(
      new Set([`{a:${APP}}`]),
    );
    expect(await redis.getbit(keys.audienceTag(APP, 'vip'), 3)).toBe(1);
  });

  it('expires day buckets after 31 days, deletes count temporaries and empty tag bitmaps', async () => {
    const { audience } = stores();
    const day = Math.floor(NOW_MS / DAY);
    await audience.markSeen(APP, 1, NOW_MS);
    expect(await redis.pexpiretime(keys.audienceDay(APP, day))).toBe((day + 31) * DAY);
    await audience.setRegistered(APP, 1, Platform.PLATFORM_ANDROID, true);
    await audience.setTags(APP, 1, ['vip'], []);
    const count = await audience.count(
      APP,
      {
        kind: 'and',
        terms: [
          { kind: 'tag', tag: 'pushd:active:7d' },
          {
            kind: 'not',
            term: {
              kind: 'or',
              terms: [
                { kind: 'tag', tag: 'x' },
                { kind: 'tag', tag: 'y' },
              ],
            },
          },
          { kind: 'tag', tag: 'vip' },
        ],
      },
      NOW_MS,
    );
    expect(count).toEqual({ matched: 1, online: 0 });
    expect(await redis.keys('*aud:tmp*')).toEqual([]);
    await audience.setTags(APP, 1, [], ['vip']);
    expect(await redis.exists(keys.audienceTag(APP, 'vip'))).toBe(0);
    // Clearing a bit of a bitmap that does not exist creates nothing.
    await audience.setOnline(APP, 1_000_000, false);
    expect(await redis.exists(keys.audienceOnline(APP))).toBe(0);
  });

  it('never writes a device without an index; a lost counter step only leaves a gap', async () => {
    const { devices } = stores();
    expect((await devices.upsert(device(TOKEN))).device.index).toBe(0);
    // A registry that crashed after taking number 1 from the counter, before writing the record.
    await redis.hincrby(keys.deviceCounts(APP), 'x', 1);
    expect((await devices.upsert(device(OTHER))).device.index).toBe(2);
    // A record without an index (written before indexes existed) gets one at its next registration.
    await redis.hdel(keys.device(APP, TOKEN), 'x');
    expect((await devices.get(APP, TOKEN))?.index).toBe(-1);
    const again = await devices.upsert(device(TOKEN));
    expect(again).toMatchObject({ created: false, device: { index: 3 } });
    expect(await devices.count(APP)).toEqual({ total: 2, android: 2, ios: 0 });
  });

  it('errs on the side of refusing when a crash left a reservation behind', async () => {
    const { tags } = stores();
    const limits = { perDevice: 10, perApp: 2 };
    await tags.add(APP, [{ token: TOKEN, index: 0 }], ['a'], limits);
    // A call that crashed after reserving 'b' and before its device step: 'b' counts, nobody holds it.
    await redis.hincrby(keys.tagCounts(APP), 'b', 1);
    expect(await tags.add(APP, [{ token: OTHER, index: 1 }], ['c'], limits)).toEqual({
      ok: false,
      limit: 'per_app',
      wouldHave: 3,
    });
    expect(await tags.list(APP, OTHER)).toEqual([]);
    expect((await tags.appTags(APP, { limit: 10 })).total).toBe(2);
  });

  it('keeps the marker of an unregistered device as long as events about it can arrive', async () => {
    const { tags } = stores();
    await tags.add(APP, [{ token: TOKEN, index: 4 }], ['a'], { perDevice: 10, perApp: 10 });
    await tags.unregister(APP, TOKEN, 4);
    expect(await redis.exists(keys.tags(APP, TOKEN))).toBe(0);
    expect(await redis.pttl(keys.tagMeta(APP, TOKEN))).toBeGreaterThan(6 * DAY);
    expect(await redis.hlen(keys.tagCounts(APP))).toBe(0);
  });
});

describe('Redis stores when Redis is unavailable', () => {
  it('fail with UNAVAILABLE instead of hanging, and report it in the metrics', async () => {
    const doomed = await startRedisServer();
    const registry = createMetricsRegistry({ service: 'test', processMetrics: false });
    const client = createRedisClient({
      url: doomed.url,
      logger: silentLogger(),
      registry,
      metricPrefix: 'test',
      maxReconnectDelayMs: 100,
    });
    try {
      const gauge = async () =>
        (await registry.getSingleMetric('test_redis_connected')!.get()).values[0]?.value;
      const counter = async (name: string) =>
        (await registry.getSingleMetric(name)!.get()).values.reduce((sum, v) => sum + v.value, 0);
      const { tags } = createRedisStores({ redis: client, keys });
      await tags.add(APP, [{ token: TOKEN, index: 0 }], ['x'], { perDevice: 10, perApp: 10 });
      await waitFor(async () => (await gauge()) === 1, 'the connected gauge');

      await doomed.stop();
      const error = await tags.list(APP, TOKEN).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(PushdError);
      expect((error as PushdError).code).toBe('UNAVAILABLE');
      expect((error as PushdError).cause).toBeInstanceOf(Error);
      await waitFor(async () => (await gauge()) === 0, 'the connected gauge to drop');
      await waitFor(async () => (await counter('test_redis_reconnects_total')) > 0, 'reconnect attempts');
      await waitFor(async () => (await counter('test_redis_errors_total')) > 0, 'connection errors');
    } finally {
      client.disconnect();
      await doomed.stop();
    }
  });

  it("gives back only the counts its undo took when another call removed the refused call's tag meanwhile", async () => {
    const limits = { perDevice: 2, perApp: 100 };
    const [d1, d2, d3] = [1, 2, 3].map((n) => ({ token: String(n).repeat(40), index: n }));
    const { tags } = stores();
    await tags.add(APP, [d3!], ['t'], limits);
    await tags.add(APP, [d2!], ['x', 'y'], limits); // d2 is full: a call adding 't' to it is refused
    // The refused call's undo of d1 waits until another call has removed 't' from d1 (and given its
    // count back): the undo then finds nothing to take.
    let concurrent: Promise<unknown> | undefined;
    const racing = new Proxy(redis, {
      get(target, property, receiver) {
        const value = Reflect.get(target, property, receiver);
        if (property !== 'pushd_tagDevice' || typeof value !== 'function') {
          return typeof value === 'function' ? value.bind(target) : value;
        }
        return async (...args: unknown[]) => {
          if (args.includes('remove') && concurrent === undefined) {
            concurrent = tags.remove(APP, [d1!], ['t']);
            await concurrent;
          }
          return value.apply(target, args);
        };
      },
    });
    const refused = await createRedisStores({ redis: racing, keys }).tags.add(APP, [d1!, d2!], ['t'], limits);
    expect(refused).toMatchObject({ ok: false, limit: 'per_device', token: d2!.token });
    expect(concurrent).toBeDefined();
    // d3 still holds 't': its count is 1, not 0 (which would also drop 't' from the app's tags).
    expect(await tags.list(APP, d1!.token)).toEqual([]);
    expect((await tags.appTags(APP, { limit: 10 })).tags).toContainEqual({ tag: 't', devices: 1 });
  });

  it('refuses a malformed URL at creation', () => {
    expect(() => createRedisClient({ url: 'http://localhost:6379', logger: silentLogger() })).toThrow(
      /redis:\/\//,
    );
    expect(() => createRedisClient({ url: 'redis://a:1/2,redis://b:2/3', logger: silentLogger() })).toThrow(
      /databases/,
    );
  });
});

// The Redis stores on a real Redis Cluster (three masters started by the test): every store's contract
// suite, as test/integration/redis-stores.test.ts runs it on a single Redis. A multi-key command or script
// whose keys left one hash slot fails here with CROSSSLOT, and a pipeline sent to the wrong node with
// MOVED: the cluster is where the key layout (packages/store/src/keys.ts) is proven, not assumed.
import { silentLogger } from '@pushd/common';
import { Platform } from '@pushd/proto';
import { createRedisClient, createRedisStores, type RedisClient, RedisKeys, type Stores } from '@pushd/store';
import { startRedisCluster, type TestServer, waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { describeRedisStoreContracts } from '../support/redis-contracts.js';

let cluster: TestServer;
let redis: Extract<RedisClient, { nodes: unknown }>;
const keys = new RedisKeys();

beforeAll(async () => {
  cluster = await startRedisCluster(3);
  const client = createRedisClient({ url: cluster.url, logger: silentLogger() });
  if (!('nodes' in client)) throw new Error('several seed URLs must make a cluster client');
  redis = client;
  // The cluster client has no offline queue: commands fail until it has read the slot map.
  await waitFor(() => redis.status === 'ready', 'the cluster client to be ready');
}, 60_000);

afterAll(async () => {
  await redis?.quit();
  await cluster?.stop();
});

beforeEach(async () => {
  await Promise.all(redis.nodes('master').map((node) => node.flushall()));
});

const stores = (): Stores => createRedisStores({ redis, keys });

/** The registration of device number `n` of app `accessId` (token: n, zero-padded to 40 digits). */
function androidDevice(accessId: number, n: number) {
  return {
    accessId,
    token: `${n}`.padStart(40, '0'),
    platform: Platform.PLATFORM_ANDROID,
    appVersion: '1',
    osVersion: '14',
    locale: 'en',
    sdkVersion: '0.1.0',
    credentialHash: 'h',
    registeredAtMs: Date.now(),
  };
}

describe('the test cluster', () => {
  it('spreads the keys of different devices over several masters', async () => {
    const masters = redis.nodes('master');
    expect(masters).toHaveLength(3);
    const devices = stores().devices;
    for (let i = 0; i < 30; i++) await devices.upsert(androidDevice(1_500_000_001, i));
    const sizes = await Promise.all(masters.map((node) => node.dbsize()));
    expect(sizes.filter((size) => size > 0).length).toBeGreaterThan(1);
  });
});

describe('scripts with a variable number of keys on a cluster', () => {
  // audience-count.lua and audience-bits.lua take their key count as the first argument. Auto-pipelining
  // picks a command's node by its first argument, so these went to the node serving the slot of the count
  // (say "3") rather than the app's: alone in a pipeline they came back MOVED and were redirected, but in
  // a pipeline with a write that succeeded on that node the MOVED was not retried and failed the call.
  it("reach the app's node while other writes share the tick", async () => {
    const masters = redis.nodes('master');
    const nodeOf = async (key: string) => {
      const slot = Number(await masters[0]!.cluster('KEYSLOT', key));
      return redis.slots[slot]!.join(',');
    };
    // One app per master: whichever node the key count's slot is on, the others' apps are elsewhere.
    const apps = new Map<string, number>();
    for (let app = 1_500_000_001; apps.size < masters.length; app++) {
      const node = await nodeOf(keys.audienceRegistered(app));
      if (!apps.has(node)) apps.set(node, app);
    }
    const audience = stores().audience;
    const devices = stores().devices;
    const writesOnEveryNode = () =>
      Array.from({ length: 30 }, (_, i) => devices.upsert(androidDevice(1_600_000_001 + i, i)));
    for (const app of apps.values()) {
      await Promise.all([
        audience.setRegistered(app, 1, Platform.PLATFORM_ANDROID, true),
        ...writesOnEveryNode(),
      ]);
      const [counted] = await Promise.all([
        audience.count(app, { kind: 'all' }, Date.now()),
        ...writesOnEveryNode(),
      ]);
      expect(counted).toEqual({ matched: 1, online: 0 });
    }
  });
});

describeRedisStoreContracts('redis cluster', () => redis, keys);

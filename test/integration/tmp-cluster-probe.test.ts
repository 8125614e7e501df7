import { silentLogger } from '@pushd/common';
import { createRedisClient, createRedisStores, RedisKeys, type Stores } from '@pushd/store';
import {
  describeAppStoreContract, describeDeviceStoreContract, describeInboxStoreContract, describePushStoreContract,
  describeRouteStoreContract, describeStatsStoreContract, describeTagStoreContract,
} from '@pushd/store/contract';
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, beforeEach } from 'vitest';

const redis = createRedisClient({ url: 'redis://127.0.0.1:17001,redis://127.0.0.1:17002', logger: silentLogger() }) as Cluster;
beforeAll(async () => { await new Promise<void>((r) => redis.once('ready', () => r())); });
afterAll(async () => { await redis.quit(); });
beforeEach(async () => { await Promise.all(redis.nodes('master').map((n) => n.flushall())); });
const stores = (): Stores => createRedisStores({ redis, keys: new RedisKeys() });
describeAppStoreContract('cluster', () => stores().apps);
describeDeviceStoreContract('cluster', () => stores().devices);
describeInboxStoreContract('cluster', () => stores().inboxes);
describePushStoreContract('cluster', () => stores().pushes);
describeRouteStoreContract('cluster', () => stores().routes);
describeStatsStoreContract('cluster', () => stores().stats);
describeTagStoreContract('cluster', () => stores().tags);

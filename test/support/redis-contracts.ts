import {
  createRedisStores,
  RedisBroadcastLog,
  type RedisClient,
  type RedisKeys,
  RedisStatsStore,
} from '@pushd/store';
import {
  describeAppStoreContract,
  describeAudienceIndexContract,
  describeBroadcastLogContract,
  describeDeviceStoreContract,
  describeInboxStoreContract,
  describePushStoreContract,
  describeRouteStoreContract,
  describeScheduleStoreContract,
  describeStatsStoreContract,
  describeTagStoreContract,
} from '@pushd/store/contract';

/**
 * Every store's contract suite on the Redis stores, for a single Redis and a Redis Cluster alike. `redis`
 * is read when a test runs (the client is made in the file's beforeAll); the file empties it before each
 * test.
 */
export function describeRedisStoreContracts(name: string, redis: () => RedisClient, keys: RedisKeys): void {
  const stores = () => createRedisStores({ redis: redis(), keys });
  describeAppStoreContract(name, () => stores().apps);
  describeBroadcastLogContract(
    name,
    (options) => new RedisBroadcastLog({ redis: redis(), keys, ...options }),
  );
  describeAudienceIndexContract(name, () => stores().audience);
  describeDeviceStoreContract(name, () => stores().devices);
  describeInboxStoreContract(name, () => stores().inboxes);
  describePushStoreContract(name, () => stores().pushes);
  describeRouteStoreContract(name, () => stores().routes);
  describeScheduleStoreContract(name, () => stores().schedules);
  describeStatsStoreContract(name, (options) => new RedisStatsStore({ redis: redis(), keys, ...options }));
  describeTagStoreContract(name, () => stores().tags);
}

import type { Clock } from '@pushd/common';
import type { AppStore } from './app-store.js';
import { MemoryAppStore } from './app-store-memory.js';
import { RedisAppStore } from './app-store-redis.js';
import type { AudienceIndex } from './audience-index.js';
import { MemoryAudienceIndex } from './audience-index-memory.js';
import { RedisAudienceIndex } from './audience-index-redis.js';
import type { BroadcastLog } from './broadcast-log.js';
import { MemoryBroadcastLog } from './broadcast-log-memory.js';
import { RedisBroadcastLog } from './broadcast-log-redis.js';
import type { DeviceStore } from './device-store.js';
import { MemoryDeviceStore } from './device-store-memory.js';
import { RedisDeviceStore } from './device-store-redis.js';
import type { InboxStore } from './inbox-store.js';
import { MemoryInboxStore } from './inbox-store-memory.js';
import { RedisInboxStore } from './inbox-store-redis.js';
import { RedisKeys } from './keys.js';
import type { PushStore } from './push-store.js';
import { MemoryPushStore } from './push-store-memory.js';
import { RedisPushStore } from './push-store-redis.js';
import type { RedisClient } from './redis-client.js';
import type { RouteStore } from './route-store.js';
import { MemoryRouteStore } from './route-store-memory.js';
import { RedisRouteStore } from './route-store-redis.js';
import type { ScheduleStore } from './schedule-store.js';
import { MemoryScheduleStore } from './schedule-store-memory.js';
import { RedisScheduleStore } from './schedule-store-redis.js';
import type { StatsStore } from './stats-store.js';
import { MemoryStatsStore } from './stats-store-memory.js';
import { RedisStatsStore } from './stats-store-redis.js';
import type { TagStore } from './tag-store.js';
import { MemoryTagStore } from './tag-store-memory.js';
import { RedisTagStore } from './tag-store-redis.js';

/** Every store, as the services see them. */
export interface Stores {
  apps: AppStore;
  audience: AudienceIndex;
  broadcasts: BroadcastLog;
  devices: DeviceStore;
  inboxes: InboxStore;
  pushes: PushStore;
  routes: RouteStore;
  schedules: ScheduleStore;
  stats: StatsStore;
  tags: TagStore;
}

export interface CreateMemoryStoresOptions {
  /** Time source of route and stats expiry and of push retention. Default: systemClock. */
  clock?: Clock;
}

/**
 * In-process stores for the embedded mode: create ONE set and hand the same instances to every service.
 * Each method completes in one synchronous step and copies records in and out, so sharing is safe.
 */
export function createMemoryStores(options: CreateMemoryStoresOptions = {}): Stores {
  const clock = options.clock === undefined ? {} : { clock: options.clock };
  return {
    apps: new MemoryAppStore(),
    audience: new MemoryAudienceIndex(),
    broadcasts: new MemoryBroadcastLog(),
    devices: new MemoryDeviceStore(),
    inboxes: new MemoryInboxStore(),
    pushes: new MemoryPushStore(clock),
    routes: new MemoryRouteStore(clock),
    schedules: new MemoryScheduleStore(),
    stats: new MemoryStatsStore(clock),
    tags: new MemoryTagStore(),
  };
}

export interface CreateRedisStoresOptions {
  /** From createRedisClient; shared by all stores (its scripts are defined once). */
  redis: RedisClient;
  /** Key layout. Default: new RedisKeys() (prefix 'pushd'). */
  keys?: RedisKeys;
}

export function createRedisStores(options: CreateRedisStoresOptions): Stores {
  const context = { redis: options.redis, keys: options.keys ?? new RedisKeys() };
  return {
    apps: new RedisAppStore(context),
    audience: new RedisAudienceIndex(context),
    broadcasts: new RedisBroadcastLog(context),
    devices: new RedisDeviceStore(context),
    inboxes: new RedisInboxStore(context),
    pushes: new RedisPushStore(context),
    routes: new RedisRouteStore(context),
    schedules: new RedisScheduleStore(context),
    stats: new RedisStatsStore(context),
    tags: new RedisTagStore(context),
  };
}

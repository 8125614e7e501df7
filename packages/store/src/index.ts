// Public names of @pushd/store, listed one by one. The contract suites are in '@pushd/store/contract'
// (they import vitest, which production code must not load).
export { type AppRecord, type AppStore, FIRST_ACCESS_ID } from './app-store.js';
export { MemoryAppStore } from './app-store-memory.js';
export { RedisAppStore, type RedisAppStoreOptions } from './app-store-redis.js';
export {
  type AudienceCount,
  type AudienceIndex,
  activeDays,
  DAY_MS,
  dayOf,
  type IndexedSet,
  indexedSet,
  MAX_ACTIVE_DAYS,
  platformTag,
  SEEN_DAYS_KEPT,
} from './audience-index.js';
export { MemoryAudienceIndex } from './audience-index-memory.js';
export {
  type CountProgram,
  compileCount,
  RedisAudienceIndex,
  type RedisAudienceIndexOptions,
} from './audience-index-redis.js';
export {
  type BroadcastAppendResult,
  type BroadcastEntry,
  type BroadcastLog,
  type BroadcastSinceResult,
  type BroadcastSlotResult,
  DEFAULT_BROADCAST_LOG_MAX_ENTRIES,
} from './broadcast-log.js';
export { MemoryBroadcastLog, type MemoryBroadcastLogOptions } from './broadcast-log-memory.js';
export { RedisBroadcastLog, type RedisBroadcastLogOptions } from './broadcast-log-redis.js';
export type { DeviceCounts, DeviceRecord, DeviceStore } from './device-store.js';
export { MemoryDeviceStore } from './device-store-memory.js';
export { RedisDeviceStore, type RedisDeviceStoreOptions } from './device-store-redis.js';
export type { AppendResult, InboxStore, PendingResult } from './inbox-store.js';
export { MemoryInboxStore } from './inbox-store-memory.js';
export { RedisInboxStore, type RedisInboxStoreOptions } from './inbox-store-redis.js';
export { encodePart, RedisKeys, type RedisKeysOptions } from './keys.js';
export {
  IDEMPOTENCY_TTL_MS,
  type IdempotencyClaim,
  isPushListCursor,
  LIST_SCAN_FACTOR,
  MAX_LIST_LIMIT,
  PUSH_RETENTION_MS,
  type PushListPage,
  type PushListQuery,
  type PushPatch,
  type PushStore,
  type PushUpdateResult,
  type ScheduledCommand,
} from './push-store.js';
export { MemoryPushStore, type MemoryPushStoreOptions } from './push-store-memory.js';
export { RedisPushStore, type RedisPushStoreOptions } from './push-store-redis.js';
export { type CreateRedisClientOptions, createRedisClient, type RedisClient } from './redis-client.js';
export type { Route, RouteKey, RouteStore } from './route-store.js';
export { MemoryRouteStore, type MemoryRouteStoreOptions } from './route-store-memory.js';
export { RedisRouteStore, type RedisRouteStoreOptions } from './route-store-redis.js';
export { MAX_CLAIM, type ScheduleEntry, type ScheduleStore } from './schedule-store.js';
export { MemoryScheduleStore } from './schedule-store-memory.js';
export { RedisScheduleStore, type RedisScheduleStoreOptions } from './schedule-store-redis.js';
export {
  APP_DAYS_KEPT,
  type AppDay,
  CLICK_DEDUP_TTL_MS,
  DEFAULT_DEDUP_TTL_MS,
  FUNNEL_STAGES,
  type FunnelAdd,
  type FunnelDevice,
  type FunnelStage,
  latencyBucket,
  latencyBucketUpperMs,
  latencyPercentile,
  MAX_LATENCY_BUCKET,
  type PushCounts,
  type PushFunnel,
  type StageCounts,
  type StatsStore,
} from './stats-store.js';
export { MemoryStatsStore, type MemoryStatsStoreOptions } from './stats-store-memory.js';
export { RedisStatsStore, type RedisStatsStoreOptions } from './stats-store-redis.js';
export {
  type CreateMemoryStoresOptions,
  type CreateRedisStoresOptions,
  createMemoryStores,
  createRedisStores,
  type Stores,
} from './stores.js';
export type {
  AppTag,
  DeviceTagState,
  RegistrationAttributes,
  TagChange,
  TagDevice,
  TagLimits,
  TagStore,
  TagWrite,
} from './tag-store.js';
export { isAttributeTag } from './tag-store.js';
export { MemoryTagStore } from './tag-store-memory.js';
export { RedisTagStore, type RedisTagStoreOptions } from './tag-store-redis.js';

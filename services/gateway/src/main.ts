// A gateway process: device WebSocket connections on NATS. Production wiring (routes in Redis).
import { DispatchServiceService, RegistryServiceService, TagServiceService } from '@pushd/proto';
import { bootstrap, clientsComponent, clusterClient, connectNats, connectRedis, run } from '@pushd/runtime';
import { gatewayEnv } from './env.js';
import { Gateway } from './gateway.js';
import { createGatewayMetrics } from './metrics.js';

const { env, logger, metrics } = bootstrap('gateway', gatewayEnv);
const redis = connectRedis('gateway', env, logger, metrics);
const nats = await connectNats('gateway', env, logger, metrics);
const registry = clusterClient(RegistryServiceService, env.REGISTRY_ADDR, env.CLUSTER_TOKEN);
const dispatch = clusterClient(DispatchServiceService, env.DISPATCH_ADDR, env.CLUSTER_TOKEN);
const tag = clusterClient(TagServiceService, env.TAG_ADDR, env.CLUSTER_TOKEN);
const gateway = new Gateway({
  nodeId: env.NODE_ID,
  host: env.HOST,
  port: env.WS_PORT,
  registry,
  dispatch,
  routes: redis.stores.routes,
  tags: redis.stores.tags,
  tag,
  bus: nats.bus,
  metrics: createGatewayMetrics(metrics),
  logger,
  heartbeatIntervalMs: env.HEARTBEAT_INTERVAL_MS,
  maxFrameBytes: env.MAX_FRAME_BYTES,
  maxBufferedBytes: env.MAX_BUFFERED_BYTES,
  registerTimeoutMs: env.REGISTER_TIMEOUT_MS,
  routeTtlMs: env.ROUTE_TTL_MS,
  callBatching: { maxInFlight: env.CALL_BATCH_IN_FLIGHT },
});
await run({
  name: 'gateway',
  logger,
  metrics,
  env,
  checks: [redis.check, nats.check],
  connections: [redis.component, nats.component, clientsComponent(registry, dispatch, tag)],
  components: [{ name: 'gateway', start: () => gateway.start(), stop: () => gateway.stop() }],
});

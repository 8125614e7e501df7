// The dispatch process: accepts pushes, persists them, routes them to gateways. Production wiring.
import { DispatchServiceService, RegistryServiceService } from '@pushd/proto';
import { bindService, GrpcServer } from '@pushd/rpc';
import { bootstrap, clusterClient, connectNats, connectRedis, run } from '@pushd/runtime';
import { DispatchService } from './dispatch-service.js';
import { dispatchEnv } from './env.js';
import { DispatchEventConsumer } from './event-consumer.js';
import { createDispatchMetrics } from './metrics.js';

const { env, logger, metrics } = bootstrap('dispatch', dispatchEnv);
const redis = connectRedis('dispatch', env, logger, metrics);
const nats = await connectNats('dispatch', env, logger, metrics);
const registry = clusterClient(RegistryServiceService, env.REGISTRY_ADDR, env.CLUSTER_TOKEN);
const dispatchMetrics = createDispatchMetrics(metrics);
const service = new DispatchService({
  pushes: redis.stores.pushes,
  inboxes: redis.stores.inboxes,
  routes: redis.stores.routes,
  bus: nats.bus,
  registry,
  clusterToken: env.CLUSTER_TOKEN,
  metrics: dispatchMetrics,
  logger,
});
const events = new DispatchEventConsumer({
  bus: nats.bus,
  inboxes: redis.stores.inboxes,
  metrics: dispatchMetrics,
  logger,
});
const grpc = new GrpcServer({
  host: env.HOST,
  port: env.GRPC_PORT,
  services: [bindService('pushd.v1.DispatchService', DispatchServiceService, service.handlers())],
  logger,
  registry: metrics,
  metricPrefix: 'dispatch',
});
await run({
  logger,
  metrics,
  host: env.HOST,
  opsPort: env.OPS_PORT,
  checks: [redis.check, nats.check],
  connections: [
    redis.component,
    nats.component,
    { name: 'registry-client', stop: async () => registry.close() },
  ],
  components: [
    { name: 'grpc', start: () => grpc.start(), stop: () => grpc.stop() },
    { name: 'events', start: async () => events.start(), stop: () => events.stop() },
  ],
});

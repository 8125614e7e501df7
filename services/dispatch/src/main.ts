// The dispatch process: accepts pushes, persists them, routes them to gateways. Production wiring.
import { DispatchServiceService, RegistryServiceService } from '@pushd/proto';
import { bindService } from '@pushd/rpc';
import { bootstrap, clientsComponent, clusterClient, connectNats, connectRedis, run } from '@pushd/runtime';
import { DispatchService } from './dispatch-service.js';
import { dispatchEnv } from './env.js';
import { DispatchEventConsumer } from './event-consumer.js';
import { createDispatchMetrics } from './metrics.js';
import { PushApplier } from './push-applier.js';

const { env, logger, metrics } = bootstrap('dispatch', dispatchEnv);
const redis = connectRedis('dispatch', env, logger, metrics);
const nats = await connectNats('dispatch', env, logger, metrics);
const registry = clusterClient(RegistryServiceService, env.REGISTRY_ADDR, env.CLUSTER_TOKEN);
const dispatchMetrics = createDispatchMetrics(metrics);
const { pushes, inboxes, routes, broadcasts, audience, tags } = redis.stores;
const service = new DispatchService({
  pushes,
  inboxes,
  broadcasts,
  audience,
  tags,
  bus: nats.bus,
  registry,
  clusterToken: env.CLUSTER_TOKEN,
  partitions: env.PUSH_PARTITIONS,
  metrics: dispatchMetrics,
  logger,
});
const applier = new PushApplier({
  bus: nats.bus,
  pushes,
  inboxes,
  routes,
  broadcasts,
  partitions: env.PUSH_PARTITIONS,
  metrics: dispatchMetrics,
  logger,
});
const events = new DispatchEventConsumer({ bus: nats.bus, inboxes, metrics: dispatchMetrics, logger });
await run({
  name: 'dispatch',
  logger,
  metrics,
  env,
  grpc: bindService('pushd.v1.DispatchService', DispatchServiceService, service.handlers()),
  checks: [redis.check, nats.check],
  connections: [redis.component, nats.component, clientsComponent(registry)],
  components: [
    { name: 'apply', start: async () => applier.start(), stop: () => applier.stop() },
    { name: 'events', start: async () => events.start(), stop: () => events.stop() },
  ],
});

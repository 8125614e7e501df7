// The dispatch process: accepts pushes into the push log, applies it in order, fires scheduled pushes.
// Production wiring.
import { DispatchServiceService, RegistryServiceService } from '@pushd/proto';
import { bindService } from '@pushd/rpc';
import { bootstrap, clientsComponent, clusterClient, connectNats, connectRedis, run } from '@pushd/runtime';
import { createDispatch } from './dispatch.js';
import { dispatchEnv } from './env.js';
import { createDispatchMetrics } from './metrics.js';

const { env, logger, metrics } = bootstrap('dispatch', dispatchEnv);
const redis = connectRedis('dispatch', env, logger, metrics);
const nats = await connectNats('dispatch', env, logger, metrics);
const registry = clusterClient(RegistryServiceService, env.REGISTRY_ADDR, env.CLUSTER_TOKEN);
const { service, applier, scheduler, events } = createDispatch({
  stores: redis.stores,
  bus: nats.bus,
  registry,
  clusterToken: env.CLUSTER_TOKEN,
  partitions: env.PUSH_PARTITIONS,
  metrics: createDispatchMetrics(metrics),
  logger,
});
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
    { name: 'schedule', start: async () => scheduler.start(), stop: () => scheduler.stop() },
    { name: 'events', start: async () => events.start(), stop: () => events.stop() },
  ],
});

// The stats process: per-push funnels and app day figures from the durable event stream. Production wiring.
import {
  DispatchServiceService,
  RegistryServiceService,
  StatsServiceService,
  TagServiceService,
} from '@pushd/proto';
import { bindService } from '@pushd/rpc';
import { bootstrap, clientsComponent, clusterClient, connectNats, connectRedis, run } from '@pushd/runtime';
import { statsEnv } from './env.js';
import { StatsService } from './stats-service.js';

const { env, logger, metrics } = bootstrap('stats', statsEnv);
const redis = connectRedis('stats', env, logger, metrics);
const nats = await connectNats('stats', env, logger, metrics);
const registry = clusterClient(RegistryServiceService, env.REGISTRY_ADDR, env.CLUSTER_TOKEN);
const dispatch = clusterClient(DispatchServiceService, env.DISPATCH_ADDR, env.CLUSTER_TOKEN);
const tag = clusterClient(TagServiceService, env.TAG_ADDR, env.CLUSTER_TOKEN);
const service = new StatsService({
  stats: redis.stores.stats,
  bus: nats.bus,
  registry,
  dispatch,
  tag,
  clusterToken: env.CLUSTER_TOKEN,
  metrics,
  logger,
});
await run({
  name: 'stats',
  logger,
  metrics,
  env,
  grpc: bindService('pushd.v1.StatsService', StatsServiceService, service.handlers()),
  checks: [redis.check, nats.check],
  connections: [redis.component, nats.component, clientsComponent(registry, dispatch, tag)],
  components: [{ name: 'events', start: async () => service.startConsuming(), stop: () => service.stop() }],
});

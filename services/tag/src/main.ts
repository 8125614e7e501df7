// The tag process: tags of devices and the audience index. Production wiring on Redis and NATS.
import { RegistryServiceService, TagServiceService } from '@pushd/proto';
import { bindService } from '@pushd/rpc';
import { bootstrap, clientsComponent, clusterClient, connectNats, connectRedis, run } from '@pushd/runtime';
import { tagEnv } from './env.js';
import { TagService } from './tag-service.js';

const { env, logger, metrics } = bootstrap('tag', tagEnv);
const redis = connectRedis('tag', env, logger, metrics);
const nats = await connectNats('tag', env, logger, metrics);
const registry = clusterClient(RegistryServiceService, env.REGISTRY_ADDR, env.CLUSTER_TOKEN);
const service = new TagService({
  tags: redis.stores.tags,
  audience: redis.stores.audience,
  bus: nats.bus,
  routes: redis.stores.routes,
  registry,
  clusterToken: env.CLUSTER_TOKEN,
  logger,
});
await run({
  name: 'tag',
  logger,
  metrics,
  env,
  grpc: bindService('pushd.v1.TagService', TagServiceService, service.handlers()),
  checks: [redis.check, nats.check],
  connections: [redis.component, nats.component, clientsComponent(registry)],
  components: [{ name: 'events', start: async () => service.startConsuming(), stop: () => service.stop() }],
});

// The tag process: tags of devices. Production wiring on Redis and NATS.
import { RegistryServiceService, TagServiceService } from '@pushd/proto';
import { bindService, GrpcServer } from '@pushd/rpc';
import { bootstrap, clusterClient, connectNats, connectRedis, run } from '@pushd/runtime';
import { tagEnv } from './env.js';
import { TagService } from './tag-service.js';

const { env, logger, metrics } = bootstrap('tag', tagEnv);
const redis = connectRedis('tag', env, logger, metrics);
const nats = await connectNats('tag', env, logger, metrics);
const registry = clusterClient(RegistryServiceService, env.REGISTRY_ADDR, env.CLUSTER_TOKEN);
const service = new TagService({
  tags: redis.stores.tags,
  bus: nats.bus,
  registry,
  clusterToken: env.CLUSTER_TOKEN,
  logger,
});
const grpc = new GrpcServer({
  host: env.HOST,
  port: env.GRPC_PORT,
  services: [bindService('pushd.v1.TagService', TagServiceService, service.handlers())],
  logger,
  registry: metrics,
  metricPrefix: 'tag',
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
    { name: 'events', start: async () => service.startConsuming(), stop: () => service.stop() },
  ],
});

// The registry process: apps, device registration, account binding. Production wiring on Redis and NATS.
import { RegistryServiceService } from '@pushd/proto';
import { bindService } from '@pushd/rpc';
import { bootstrap, connectNats, connectRedis, run } from '@pushd/runtime';
import { registryEnv } from './env.js';
import { RegistryService } from './registry-service.js';

const { env, logger, metrics } = bootstrap('registry', registryEnv);
const redis = connectRedis('registry', env, logger, metrics);
const nats = await connectNats('registry', env, logger, metrics);
const service = new RegistryService({
  apps: redis.stores.apps,
  devices: redis.stores.devices,
  bus: nats.bus,
  clusterToken: env.CLUSTER_TOKEN,
  logger,
});
await run({
  name: 'registry',
  logger,
  metrics,
  env,
  grpc: bindService('pushd.v1.RegistryService', RegistryServiceService, service.handlers()),
  checks: [redis.check, nats.check],
  connections: [redis.component, nats.component],
});

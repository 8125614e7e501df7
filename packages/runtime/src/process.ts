import { NatsBus, streams } from '@pushd/bus';
import {
  type Component,
  ConfigError,
  createLogger,
  createMetricsRegistry,
  exitOnSignalsUntilStarted,
  type Logger,
  OpsServer,
  parseEnv,
  type ReadinessCheck,
  stopAll,
  stopOnSignals,
} from '@pushd/common';
import {
  bearerAuthorization,
  createRpcClient,
  GrpcServer,
  type GrpcServiceBinding,
  type PromiseClient,
  type ServiceDefinitionShape,
} from '@pushd/rpc';
import { createRedisClient, createRedisStores, RedisKeys, type Stores } from '@pushd/store';
import type { Registry } from 'prom-client';
import type { z } from 'zod';

/** What every service process starts with: its parsed environment, a logger and its metrics registry. */
export interface ServiceProcess<Env> {
  env: Env;
  logger: Logger;
  metrics: Registry;
}

/**
 * Parses the environment against the service's schema (exiting with a readable list of every bad variable)
 * and creates the logger and the metrics registry. The first thing each main.ts does.
 */
export function bootstrap<Schema extends z.ZodType<{ LOG_LEVEL: string }>>(
  service: string,
  schema: Schema,
): ServiceProcess<z.infer<Schema>> {
  let env: z.infer<Schema>;
  try {
    env = parseEnv(schema);
  } catch (error) {
    exitOnConfigError(service, error);
  }
  exitOnSignalsUntilStarted();
  const logger = createLogger({ service, level: env.LOG_LEVEL });
  process.on('unhandledRejection', (reason) => logger.error({ err: reason }, 'unhandled rejection'));
  return { env, logger, metrics: createMetricsRegistry({ service }) };
}

/**
 * A configuration error ends the process with status 78 (EX_CONFIG) and the message, as a bad variable
 * does at bootstrap, rather than with a stack trace; any other error is thrown on.
 */
function exitOnConfigError(service: string, error: unknown, variable?: string): never {
  if (!(error instanceof ConfigError)) throw error;
  const message =
    variable === undefined ? error.message : `Invalid configuration:\n  ${variable}: ${error.message}`;
  process.stderr.write(`${service}: ${message}\n`);
  process.exit(78); // EX_CONFIG
}

/** Redis and the Redis stores, with client metrics under `<service>_redis_*`. */
export function connectRedis(
  service: string,
  env: { REDIS_URL: string; REDIS_KEY_PREFIX: string },
  logger: Logger,
  metrics: Registry,
): { stores: Stores; check: ReadinessCheck; component: Component } {
  let redis: ReturnType<typeof createRedisClient>;
  try {
    redis = createRedisClient({ url: env.REDIS_URL, logger, registry: metrics, metricPrefix: service });
  } catch (error) {
    // A URL the schema let through that the client cannot use (a /db on a cluster seed, say).
    exitOnConfigError(service, error, 'REDIS_URL');
  }
  return {
    stores: createRedisStores({ redis, keys: new RedisKeys({ prefix: env.REDIS_KEY_PREFIX }) }),
    check: { name: 'redis', check: async () => void (await redis.ping()) },
    component: { name: 'redis', stop: async () => void (await redis.quit()) },
  };
}

/** NATS with the durable streams the system uses, with client metrics under `<service>_nats_*`. */
export async function connectNats(
  service: string,
  env: { NATS_URL: string; NATS_STREAM_REPLICAS: number },
  logger: Logger,
  metrics: Registry,
): Promise<{ bus: NatsBus; check: ReadinessCheck; component: Component }> {
  const bus = await NatsBus.connect({
    servers: env.NATS_URL,
    name: service,
    streams: [streams.events, streams.pushes].map((stream) => ({
      ...stream,
      replicas: env.NATS_STREAM_REPLICAS,
    })),
    logger,
    registry: metrics,
    metricPrefix: service,
  });
  return {
    bus,
    check: { name: 'nats', check: () => bus.ready() },
    component: { name: 'nats', stop: () => bus.close() },
  };
}

/** A client of another service, calling with the cluster token. */
export function clusterClient<Definition extends ServiceDefinitionShape>(
  definition: Definition,
  address: string,
  clusterToken: string,
): PromiseClient<Definition> {
  return createRpcClient(definition, { address, authorization: bearerAuthorization(clusterToken) });
}

/** Closes gRPC clients on shutdown (after the servers that use them stopped). */
export function clientsComponent(...clients: { close(): void }[]): Component {
  return {
    name: 'grpc-clients',
    stop: async () => {
      for (const client of clients) client.close();
    },
  };
}

/** Something main.ts starts; started in order, stopped in reverse. */
export interface StartableComponent extends Component {
  start(): Promise<void>;
}

/**
 * Starts the components in order (a failure stops those already started and exits 1), serves /metrics,
 * /healthz and /readyz, and stops everything in reverse order on SIGTERM/SIGINT.
 */
export async function run(options: {
  /** Service name: the `<name>_` prefix of its gRPC metrics. */
  name: string;
  logger: Logger;
  metrics: Registry;
  env: { HOST: string; OPS_PORT: number; GRPC_PORT?: number };
  /** The gRPC service this process serves on GRPC_PORT (with health and reflection), if any. */
  grpc?: GrpcServiceBinding;
  checks: ReadinessCheck[];
  /** Connections made before (Redis, NATS, gRPC clients): stopped last. */
  connections: Component[];
  /** Started after the gRPC server, stopped before it. Default: none. */
  components?: StartableComponent[];
}): Promise<void> {
  const { logger, env } = options;
  const components: StartableComponent[] = [];
  if (options.grpc !== undefined) {
    if (env.GRPC_PORT === undefined) throw new Error(`${options.name}: a gRPC service needs GRPC_PORT`);
    const grpc = new GrpcServer({
      host: env.HOST,
      port: env.GRPC_PORT,
      services: [options.grpc],
      logger,
      registry: options.metrics,
      metricPrefix: options.name,
    });
    components.push({ name: 'grpc', start: () => grpc.start(), stop: () => grpc.stop() });
  }
  components.push(...(options.components ?? []));
  const ops = new OpsServer({
    host: env.HOST,
    port: env.OPS_PORT,
    registry: options.metrics,
    checks: options.checks,
    logger,
  });
  const started: Component[] = [...options.connections];
  try {
    for (const component of components) {
      await component.start();
      started.push(component);
    }
    await ops.start();
    started.push({ name: 'ops', stop: () => ops.stop() });
  } catch (error) {
    logger.fatal({ err: error }, 'start failed');
    await stopAll(started, logger);
    process.exit(1);
  }
  logger.info({ opsPort: ops.port }, 'started');
  stopOnSignals(started, logger);
}

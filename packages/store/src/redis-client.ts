import { ConfigError, type Logger } from '@pushd/common';
import { Cluster, type ClusterNode, Redis, type RedisOptions } from 'ioredis';
import { Counter, Gauge, type Registry } from 'prom-client';
import { SCRIPTS_WITH_KEY_COUNT_ARGUMENT } from './redis-scripts.js';

/** A connection to one Redis, or to a Redis Cluster. The stores accept either. */
export type RedisClient = Redis | Cluster;

export interface CreateRedisClientOptions {
  /**
   * `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS). Several comma-separated URLs are
   * the seed nodes of a Redis Cluster (no `/db` there). Required.
   */
  url: string;
  logger: Logger;
  /** Registry for the connection metrics. Default: none (no metrics). */
  registry?: Registry;
  /** Prefix of the metric names, `<prefix>_redis_errors_total` and so on. Default: 'pushd'. */
  metricPrefix?: string;
  /** Connection name (CLIENT LIST) and the `client` label of the metrics. Default: 'pushd'. */
  name?: string;
  /** Longest wait between reconnect attempts; attempts never stop. Default: 2000. */
  maxReconnectDelayMs?: number;
  /** A command without a reply after this long fails (a hung server must not hang callers). Default: 5000. */
  commandTimeoutMs?: number;
}

/**
 * Creates a client that reconnects forever with capped, jittered exponential backoff while commands fail
 * fast, so that callers (gRPC handlers) answer UNAVAILABLE instead of hanging:
 * - A command issued while disconnected waits in the offline queue for at most two reconnect attempts
 *   (`maxRetriesPerRequest: 1`), then fails. On a cluster the offline queue is off: commands fail at once
 *   while no node is ready (use a readiness check to keep traffic away until it is).
 * - A command already sent when the connection dropped fails instead of being sent again: its effect is
 *   unknown and not every store call is idempotent (counters), so the caller decides whether to retry.
 * - Commands issued in the same tick share one write (auto-pipelining), per node on a cluster; there,
 *   scripts taking their key count as an argument go on their own (see SCRIPTS_WITH_KEY_COUNT_ARGUMENT).
 */
export function createRedisClient(options: CreateRedisClientOptions): RedisClient {
  const name = options.name ?? 'pushd';
  const maxDelay = options.maxReconnectDelayMs ?? 2000;
  const backoff = (attempt: number): number => {
    const ceiling = Math.min(maxDelay, 50 * 2 ** Math.min(attempt, 16));
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  };
  const common: RedisOptions = {
    connectionName: name,
    maxRetriesPerRequest: 1,
    autoResendUnfulfilledCommands: false,
    commandTimeout: options.commandTimeoutMs ?? 5000,
    enableAutoPipelining: true,
  };
  const seeds = options.url
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '');
  if (seeds.length === 0) throw new ConfigError('Redis URL is empty');
  const urls = seeds.map(parseRedisUrl);

  let client: RedisClient;
  if (urls.length === 1) {
    client = new Redis(seeds[0]!, { ...common, retryStrategy: backoff });
  } else {
    const nodes: ClusterNode[] = urls.map((url) => {
      if (url.pathname !== '' && url.pathname !== '/' && url.pathname !== '/0') {
        throw new ConfigError(`Redis Cluster has no databases: drop ${url.pathname} from ${url.host}`);
      }
      return { host: url.hostname, port: Number(url.port || 6379) };
    });
    const first = urls[0]!;
    client = new Cluster(nodes, {
      clusterRetryStrategy: backoff,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      autoPipeliningIgnoredCommands: SCRIPTS_WITH_KEY_COUNT_ARGUMENT,
      redisOptions: {
        ...common,
        ...(first.username ? { username: decodeURIComponent(first.username) } : {}),
        ...(first.password ? { password: decodeURIComponent(first.password) } : {}),
        ...(first.protocol === 'rediss:' ? { tls: {} } : {}),
      },
    });
  }
  observe(client, name, options);
  return client;
}

function parseRedisUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(`Redis URL is not a URL: ${JSON.stringify(text)}`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new ConfigError(`Redis URL must start with redis:// or rediss:// (got ${JSON.stringify(text)})`);
  }
  return url;
}

/** Logs and counts connection events; without an 'error' listener ioredis errors would crash the process. */
function observe(client: RedisClient, name: string, options: CreateRedisClientOptions): void {
  const logger = options.logger.child({ component: 'redis', client: name });
  const metrics = options.registry
    ? connectionMetrics(options.registry, options.metricPrefix ?? 'pushd')
    : undefined;
  const labels = { client: name };
  metrics?.connected.set(labels, 0);

  client.on('ready', () => {
    metrics?.connected.set(labels, 1);
    logger.info('redis ready');
  });
  client.on('close', () => metrics?.connected.set(labels, 0));
  client.on('end', () => metrics?.connected.set(labels, 0));
  client.on('reconnecting', () => metrics?.reconnects.inc(labels));
  client.on('error', (error: Error) => {
    metrics?.errors.inc(labels);
    logger.warn({ err: error }, 'redis connection error');
  });
  if (client instanceof Cluster) {
    client.on('node error', (error: Error, node: string) => {
      metrics?.errors.inc(labels);
      logger.warn({ err: error, node }, 'redis cluster node error');
    });
  }
}

interface ConnectionMetrics {
  errors: Counter<'client'>;
  reconnects: Counter<'client'>;
  connected: Gauge<'client'>;
}

/** Reuses metrics already registered, so that several clients (one per store owner) share a registry. */
function connectionMetrics(registry: Registry, prefix: string): ConnectionMetrics {
  const counter = (suffix: string, help: string): Counter<'client'> =>
    (registry.getSingleMetric(`${prefix}_${suffix}`) as Counter<'client'> | undefined) ??
    new Counter({ name: `${prefix}_${suffix}`, help, labelNames: ['client'], registers: [registry] });
  const connectedName = `${prefix}_redis_connected`;
  return {
    errors: counter('redis_errors_total', 'Redis connection errors.'),
    reconnects: counter('redis_reconnects_total', 'Redis reconnect attempts.'),
    connected:
      (registry.getSingleMetric(connectedName) as Gauge<'client'> | undefined) ??
      new Gauge({
        name: connectedName,
        help: '1 while the Redis connection is ready, else 0.',
        labelNames: ['client'],
        registers: [registry],
      }),
  };
}

import { z } from 'zod';

/**
 * Parses a service's environment once, at start, against its schema. On failure it throws one error whose
 * message lists every bad variable, so an operator fixes them all in one go.
 */
export function parseEnv<Schema extends z.ZodType>(
  schema: Schema,
  env: Record<string, string | undefined> = process.env,
): z.infer<Schema> {
  const result = schema.safeParse(env);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    const name = issue.path.join('.') || '(environment)';
    return `  ${name}: ${issue.message}${name in env ? ` (got ${JSON.stringify(env[name])})` : ''}`;
  });
  throw new ConfigError(`Invalid configuration:\n${lines.join('\n')}`);
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** The longest delay Node's setTimeout and setInterval honour. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Field builders shared by the services' schemas. */
export const envField = {
  /**
   * Decimal digits only, 0 to 65535 (0: any free port, for tests). Unset or blank (`OPS_PORT=` from a
   * template) takes the default; '0x1F90' or '8080abc' are refused rather than read as a number.
   */
  port: (defaultPort: number) =>
    z
      .preprocess(
        (value) =>
          typeof value === 'number'
            ? String(value)
            : typeof value === 'string' && value.trim() === ''
              ? undefined
              : value,
        z
          .string()
          .regex(/^\d{1,5}$/, 'must be a port number, 0 to 65535')
          .transform(Number)
          .pipe(z.number().int().max(65535, 'must be a port number, 0 to 65535'))
          .optional(),
      )
      .transform((value) => value ?? defaultPort),
  host: (defaultHost = '0.0.0.0') => z.string().min(1).default(defaultHost),
  /**
   * Milliseconds, `minMs` (default 1) to 2^31 - 1 (24.8 days): Node's timers take no more (a larger delay
   * fires after 1 ms, so an interval of ten years would run every millisecond).
   */
  ms: (defaultMs: number, minMs = 1) =>
    z.coerce
      .number()
      .int()
      .min(minMs, `must be at least ${minMs}`)
      .max(MAX_TIMER_MS, `must be at most ${MAX_TIMER_MS} (24.8 days)`)
      .default(defaultMs),
  count: (defaultCount: number) => z.coerce.number().int().positive().default(defaultCount),
  url: (protocols: string[]) =>
    z
      .string()
      .min(1)
      .refine(
        (value) => value.split(',').every((part) => protocols.some((p) => part.trim().startsWith(`${p}://`))),
        `must be a URL starting with ${protocols.map((p) => `${p}://`).join(' or ')} (comma-separated for several)`,
      ),
  logLevel: () => z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** The shared secret of internal callers (gateways, services, operators): at least 16 characters. */
  clusterToken: () => z.string().min(16, 'must be at least 16 characters'),
};

/**
 * Variables every service reads. Each service's env.ts spreads these into its own schema and adds its
 * own; docs/architecture.md ("Configuration") lists them all.
 */
export function commonEnvShape(defaults: { opsPort: number }) {
  return {
    /** pino level. */
    LOG_LEVEL: envField.logLevel(),
    /** Shared secret of internal callers: required, no default in production. */
    CLUSTER_TOKEN: envField.clusterToken(),
    /** NATS servers, comma-separated for a cluster. */
    NATS_URL: envField.url(['nats', 'tls']).default('nats://127.0.0.1:4222'),
    /** Replicas of the durable JetStream streams: 1 on one server, 3 on a NATS cluster. */
    NATS_STREAM_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
    /** Redis URL; several comma-separated redis:// seeds mean Redis Cluster. */
    REDIS_URL: envField.url(['redis', 'rediss']).default('redis://127.0.0.1:6379'),
    /** Prefix of every Redis key, so that several deployments can share one Redis. */
    REDIS_KEY_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,32}$/, 'letters, digits, "_" or "-", at most 32')
      .default('pushd'),
    /** Interface the service binds. */
    HOST: envField.host(),
    /** /metrics, /healthz, /readyz. */
    OPS_PORT: envField.port(defaults.opsPort),
  };
}

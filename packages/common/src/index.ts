export { type Clock, ManualClock, systemClock } from './clock.js';
export { ConfigError, commonEnvShape, envField, parseEnv } from './config.js';
export {
  ERROR_CATALOGUE,
  type ErrorCode,
  type ErrorSpec,
  invalidArgument,
  isErrorCode,
  PushdError,
  tokenNotFound,
  toPushdError,
} from './errors.js';
export { type Component, exitOnSignalsUntilStarted, stopAll, stopOnSignals } from './lifecycle.js';
export { type CreateLoggerOptions, createLogger, type Logger, silentLogger } from './logger.js';
export { mapConcurrently } from './map-concurrently.js';
export { type CreateMetricsRegistryOptions, createMetricsRegistry, HotCounter } from './metrics.js';
export { OpsServer, type OpsServerOptions, type ReadinessCheck } from './ops-server.js';
export { hashSecret, randomSecret, safeEqual, secretMatchesHash } from './secrets.js';
export { tokensByApp } from './tokens-by-app.js';

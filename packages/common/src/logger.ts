import { type Logger, type LoggerOptions, pino } from 'pino';

export type { Logger };

export interface CreateLoggerOptions {
  /** Name of the service, added to every line as `service`. */
  service: string;
  /** pino level. Default: 'info'. */
  level?: string;
}

/** JSON lines on stdout, one logger per process, children per component (`logger.child({component})`). */
export function createLogger(options: CreateLoggerOptions): Logger {
  const config: LoggerOptions = {
    level: options.level ?? 'info',
    base: { service: options.service },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return pino(config);
}

/** A logger that writes nothing, for tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

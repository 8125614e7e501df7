import type { Logger } from './logger.js';

/** Something a service starts and must stop on shutdown. */
export interface Component {
  name: string;
  stop(): Promise<void>;
}

/**
 * Runs `stop()` of the components in reverse order of start on SIGTERM/SIGINT (Kubernetes sends SIGTERM,
 * then SIGKILL after the grace period), then exits. A second signal exits at once.
 */
export function stopOnSignals(components: Component[], logger: Logger, graceMs = 25_000): void {
  process.off('SIGTERM', exitBeforeStarted);
  process.off('SIGINT', exitBeforeStarted);
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'stopping');
    const timer = setTimeout(() => {
      logger.error({ graceMs }, 'shutdown took too long: exiting');
      process.exit(1);
    }, graceMs);
    timer.unref();
    void stopAll(components, logger).then(() => process.exit(0));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** Stops components in reverse order; a failing stop is logged and does not prevent the others. */
export async function stopAll(components: Component[], logger: Logger): Promise<void> {
  for (const component of [...components].reverse()) {
    try {
      await component.stop();
    } catch (error) {
      logger.error({ err: error, component: component.name }, 'stop failed');
    }
  }
}

/**
 * Until stopOnSignals takes over: a signal during start-up ends the process at once (status 143), as it
 * would without any handler. In a container the process is PID 1, whose signals without a handler are
 * ignored: a pod stopped while it connects to NATS or Redis would wait for its grace period and a SIGKILL.
 */
export function exitOnSignalsUntilStarted(): void {
  process.once('SIGTERM', exitBeforeStarted);
  process.once('SIGINT', exitBeforeStarted);
}

function exitBeforeStarted(signal: NodeJS.Signals): void {
  process.stderr.write(`${signal} during start-up: exiting\n`);
  process.exit(143);
}

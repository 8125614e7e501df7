import { collectDefaultMetrics, Registry } from 'prom-client';

export interface CreateMetricsRegistryOptions {
  /** Service name, added as the `service` label of every series. */
  service: string;
  /**
   * Also collect the process defaults (CPU, memory, event loop lag, GC) with the `<service>_` prefix.
   * Default: true. The embedded process collects them once, in a registry of its own.
   */
  processMetrics?: boolean;
}

/** One registry per service, so that metrics of services sharing a process (embedded mode) stay apart. */
export function createMetricsRegistry(options: CreateMetricsRegistryOptions): Registry {
  const registry = new Registry();
  if (options.processMetrics ?? true)
    collectDefaultMetrics({ register: registry, prefix: `${options.service}_` });
  return registry;
}

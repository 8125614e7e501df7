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

/**
 * prom-client's defaults that are gauges named `_total`, which Prometheus reserves for counters
 * (`promtool check metrics` rejects them). Each is the sum of the by-type gauge of the same name without
 * the suffix (`<service>_nodejs_active_handles` and so on), so nothing is lost by dropping them.
 */
const GAUGES_NAMED_TOTAL = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
];

/** One registry per service, so that metrics of services sharing a process (embedded mode) stay apart. */
export function createMetricsRegistry(options: CreateMetricsRegistryOptions): Registry {
  const registry = new Registry();
  if (options.processMetrics ?? true) {
    const prefix = `${options.service}_`;
    collectDefaultMetrics({ register: registry, prefix });
    for (const name of GAUGES_NAMED_TOTAL) registry.removeSingleMetric(`${prefix}${name}`);
  }
  return registry;
}

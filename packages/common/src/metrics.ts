import { Counter, type CounterConfiguration, collectDefaultMetrics, Registry } from 'prom-client';

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

/**
 * A prom-client Counter counted on a hot path (once per frame or delivered message): increments go into
 * plain numbers, one per label value, and reach the Counter when its registry collects it (a scrape, or
 * `counter.get()`), so every scrape sees every increment made before it. A labelled prom-client `inc`
 * hashes its labels into a new string on each call: ~80 ns and garbage per frame, where this is a Map
 * update. At most one label name.
 */
export class HotCounter<L extends string = never> {
  /** The Counter the registry exposes. */
  readonly counter: Counter<L>;
  private readonly name: string;
  private readonly labelName: L | undefined;
  /** Increments not yet added to the counter, by label value ('' without a label). */
  private readonly pending = new Map<string, number>();

  constructor(configuration: Omit<CounterConfiguration<L>, 'collect'>) {
    const labelNames = configuration.labelNames ?? [];
    if (labelNames.length > 1) throw new Error(`HotCounter ${configuration.name}: at most one label name`);
    this.name = configuration.name;
    this.labelName = labelNames[0];
    this.counter = new Counter<L>({ ...configuration, collect: () => this.flush() });
  }

  /**
   * Adds `by` (default 1) to the series of `labelValue` (leave it out for a counter without a label). A
   * negative or non-finite `by` throws here, as prom-client's `inc` would, and counts nothing: kept, it
   * would make every later scrape of the registry fail instead.
   */
  inc(labelValue = '', by = 1): void {
    if (!(by >= 0 && by < Number.POSITIVE_INFINITY)) {
      throw new RangeError(
        `HotCounter ${this.name}: cannot add ${by}; a counter only grows by a finite amount`,
      );
    }
    this.pending.set(labelValue, (this.pending.get(labelValue) ?? 0) + by);
  }

  private flush(): void {
    for (const [labelValue, by] of this.pending) {
      if (this.labelName === undefined) this.counter.inc(by);
      else this.counter.inc({ [this.labelName]: labelValue } as Partial<Record<L, string>>, by);
    }
    this.pending.clear();
  }
}

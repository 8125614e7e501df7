import { parseArgs } from 'node:util';

export const BENCHMARKS = ['connections', 'targeted', 'reconnect', 'tags', 'fanout', 'peers'] as const;
export type BenchName = (typeof BENCHMARKS)[number];

/** Options of `pnpm bench <name>`; each benchmark fills what is unset from its own defaults. */
export interface BenchOptions {
  name: BenchName;
  /** Tiny N and short phases: what CI runs so that the suite cannot rot. */
  smoke: boolean;
  devices?: number;
  gateways?: number;
  /** connections: how long the devices stay connected before memory is read; targeted: each step. */
  durationS?: number;
  /** Device processes (default: one per 12,500 devices, at least one per 15,000). */
  deviceWorkers?: number;
  /** Handshakes in flight per server per device process; tags: registrations in flight. */
  inflight?: number;
  /** targeted: pushes/s of each step, in order. */
  rates?: number[];
  /** targeted, reconnect: pusher processes. */
  pushers?: number;
  /** targeted: how long to wait for accepted pushes to arrive after a step. */
  drainS?: number;
  /** fanout, peers: measured broadcasts of each target. */
  broadcasts?: number;
  /** fanout, peers: broadcasts in flight (a new one is published when an earlier one reached everybody). */
  window?: number;
  /** Write a CPU profile of every service process into this directory. */
  cpuProfDir?: string;
  /** connections: write a sampling heap profile (live allocations by site) of each server here. */
  heapProfileDir?: string;
  /**
   * Diagnostics only: extra environment of the service processes, by service (e.g. the gateways'
   * HEARTBEAT_INTERVAL_MS=600000 to see what the heartbeat sweep costs, or NODE_OPTIONS for a profiler).
   * A service process gets only its own environment, not the benchmark's (startServiceProcess): this is
   * the way to change one. A run with any is marked in its JSON line (`gateway_env`, `dispatch_env`...).
   */
  serviceEnv?: ServiceEnv;
  /** Also write the final JSON object to this file. */
  out?: string;
  /** Stop everything and fail after this long. */
  timeoutS?: number;
}

/** The service processes whose environment --service-env can extend. */
export const ENV_SERVICES = ['gateway', 'dispatch', 'registry'] as const;
export type EnvService = (typeof ENV_SERVICES)[number];
export type ServiceEnv = Partial<Record<EnvService, Record<string, string>>>;

export const USAGE = `usage: pnpm bench <${BENCHMARKS.join('|')}> [options]

  --smoke              tiny N and short phases (CI)
  --devices N          devices (connections, targeted, peers: 18000; reconnect: 50000;
                       tags: 1000000, or TAGS_BENCH_DEVICES; fanout: 18000 on one gateway, then
                       50000 over 3, unless --devices or --gateways names one configuration)
  --gateways N         gateway processes (reconnect: 3, smoke 2; fanout: see --devices; others: 1)
  --duration-s N       connections: idle hold before reading memory (10); targeted: each rate step (30)
  --device-workers N   device processes (default: one per 12,500 devices)
  --inflight N         handshakes in flight per server per device process (default: 400 per server in all);
                       tags: registrations in flight (256)
  --rates A,B,C        targeted: pushes/s of the steps
  --pushers N          pusher processes (2; smoke: 1)
  --drain-s N          targeted: wait for deliveries after each step (5)
  --broadcasts N       fanout, peers: measured broadcasts per target (30; 20 from 20,000 devices on)
  --window N           fanout, peers: broadcasts in flight (1: each waits for the previous to reach
                       every device)
  --cpu-prof DIR       write a .cpuprofile of each process per measured phase into DIR
  --heap-profile DIR   connections: write what the live memory was allocated by (.heapprofile) into DIR
  --service-env S:K=V  diagnostics: extra environment of service S (gateway, dispatch or registry; the
                       services do not inherit the benchmark's); repeatable, marked in the JSON line
  --gateway-env K=V    the same as --service-env gateway:K=V
  --out FILE           also write the final JSON line to FILE
  --timeout-s N        stop everything and fail after N seconds
`;

function positive(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!Number.isFinite(number) || number <= 0) throw new Error(`--${name} must be a positive number`);
  return number;
}

export function parseOptions(argv: string[]): BenchOptions {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      smoke: { type: 'boolean', default: false },
      devices: { type: 'string' },
      gateways: { type: 'string' },
      'duration-s': { type: 'string' },
      'device-workers': { type: 'string' },
      inflight: { type: 'string' },
      rates: { type: 'string' },
      pushers: { type: 'string' },
      'drain-s': { type: 'string' },
      broadcasts: { type: 'string' },
      window: { type: 'string' },
      'cpu-prof': { type: 'string' },
      'heap-profile': { type: 'string' },
      out: { type: 'string' },
      'gateway-env': { type: 'string', multiple: true },
      'service-env': { type: 'string', multiple: true },
      'timeout-s': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  // pnpm passes a literal "--" through when it separates script arguments.
  const names = positionals.filter((p) => p !== '--');
  const name = names[0];
  if (values.help || name === undefined || !(BENCHMARKS as readonly string[]).includes(name)) {
    throw new Error(USAGE);
  }
  const options: BenchOptions = { name: name as BenchName, smoke: values.smoke ?? false };
  const assign = <K extends keyof BenchOptions>(key: K, value: BenchOptions[K] | undefined) => {
    if (value !== undefined) options[key] = value;
  };
  assign('devices', positive('devices', values.devices));
  assign('gateways', positive('gateways', values.gateways));
  assign('durationS', positive('duration-s', values['duration-s']));
  assign('deviceWorkers', positive('device-workers', values['device-workers']));
  assign('inflight', positive('inflight', values.inflight));
  assign('pushers', positive('pushers', values.pushers));
  assign('drainS', positive('drain-s', values['drain-s']));
  assign('broadcasts', positive('broadcasts', values.broadcasts));
  assign('window', positive('window', values.window));
  assign('timeoutS', positive('timeout-s', values['timeout-s']));
  assign('cpuProfDir', values['cpu-prof']);
  assign('heapProfileDir', values['heap-profile']);
  assign('out', values.out);
  const addEnv = (service: string, pair: string, refused: string) => {
    const equals = pair.indexOf('=');
    if (!(ENV_SERVICES as readonly string[]).includes(service) || equals <= 0) throw new Error(refused);
    const serviceEnv: ServiceEnv = options.serviceEnv ?? {};
    serviceEnv[service as EnvService] = {
      ...serviceEnv[service as EnvService],
      [pair.slice(0, equals)]: pair.slice(equals + 1),
    };
    options.serviceEnv = serviceEnv;
  };
  for (const pair of values['gateway-env'] ?? []) {
    addEnv('gateway', pair, `--gateway-env ${pair}: expected KEY=VALUE`);
  }
  for (const entry of values['service-env'] ?? []) {
    const colon = entry.indexOf(':');
    addEnv(
      colon < 0 ? '' : entry.slice(0, colon),
      entry.slice(colon + 1),
      `--service-env ${entry}: expected SERVICE:KEY=VALUE, SERVICE one of ${ENV_SERVICES.join(', ')}`,
    );
  }
  if (values.rates !== undefined) {
    options.rates = values.rates.split(',').map((rate) => {
      const value = positive('rates', rate.trim());
      if (value === undefined) throw new Error('--rates: empty step');
      return value;
    });
  }
  return options;
}

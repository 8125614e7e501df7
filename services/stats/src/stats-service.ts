import { type Bus, type DurableConsumer, streams } from '@pushd/bus';
import { type Clock, invalidArgument, type Logger, PushdError, systemClock } from '@pushd/common';
import {
  type DispatchServiceService,
  decodeEvents,
  type Event,
  type EventBatch,
  EventType,
  type GetAppStatsResponse,
  Platform,
  type PushStats,
  type RegistryServiceService,
  type StatsServiceService,
  type TagServiceService,
} from '@pushd/proto';
import {
  CallAuthorizer,
  type CallContext,
  type PromiseClient,
  type ServiceHandlers,
  verifyAppSecretWithRegistry,
} from '@pushd/rpc';
import {
  APP_DAYS_KEPT,
  DAY_MS,
  dayOf,
  type FunnelAdd,
  type FunnelStage,
  latencyPercentile,
  type StatsStore,
} from '@pushd/store';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface StatsServiceOptions {
  stats: StatsStore;
  bus: Bus;
  /** Registry client authorized with the cluster token (app secret checks, covered devices). */
  registry: PromiseClient<typeof RegistryServiceService>;
  /** Dispatch client authorized with the cluster token (a push must exist to have statistics). */
  dispatch: PromiseClient<typeof DispatchServiceService>;
  /** Tag service client authorized with the cluster token (online devices, from the audience index). */
  tag: PromiseClient<typeof TagServiceService>;
  clusterToken: string;
  metrics: Registry;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
  /** Shortest time between two responses of one WatchPushStats stream. Default: 200 ms. */
  watchIntervalMs?: number;
  /**
   * How often a watch reads the figures when this instance folded nothing for its push (another stats
   * instance may have), and reads the push record again (its target is set when it is sent). Default:
   * 1000 ms.
   */
  watchPollMs?: number;
  /** Pushes remembered as existing, so that clicks on them need no dispatch lookup. Default: 10000. */
  knownPushes?: number;
  /**
   * When a batch whose fold failed (Redis or dispatch unreachable) is delivered again. Default: the bus's
   * (5000 ms).
   */
  redeliverAfterMs?: number;
}

/** Event types folded into funnels, and the stage each counts at. */
const STAGE_OF: Partial<Record<EventType, FunnelStage>> = {
  [EventType.EVENT_TYPE_SENT]: 'sent',
  [EventType.EVENT_TYPE_ARRIVED]: 'arrived',
  [EventType.EVENT_TYPE_CLICKED]: 'clicked',
};

/**
 * How far back a stats consumer that has to be created (first start, or after it was deleted or lost with
 * a NATS node) reads the event stream, which keeps 7 days. Counting is idempotent only while a push's dedup
 * set lives (`dedupTtlMs` after its last event, 96 h by default), so a replay reaching further back would
 * count old events twice. It stops short of the window by an hour (a quarter of short test windows), so
 * that an event replayed while the replay is under way is still within its dedup set. Older events were
 * counted when they were new, unless stats lagged that far behind.
 */
function replayWindowOf(dedupTtlMs: number): number {
  return dedupTtlMs - Math.min(3_600_000, dedupTtlMs / 4);
}

const DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
/** GetAppStats without dates: the last 7 days up to today. */
const DEFAULT_DAYS = 7;

/**
 * Per-push funnels (sent, arrived, clicked, per platform, arrival latency) and per-app day figures
 * (proto/pushd/v1/stats.proto), built from the durable event stream: gateways and dispatch publish events
 * in batches and this service folds them into the store. Counting is idempotent per device, so the
 * stream's redeliveries (after a crash or restart) do not inflate the figures.
 */
export class StatsService {
  private readonly authorizer: CallAuthorizer;
  private readonly clock: Clock;
  private readonly watchIntervalMs: number;
  private readonly watchPollMs: number;
  private readonly knownPushLimit: number;
  private consumer: DurableConsumer | undefined;
  private readonly eventsApplied: Counter<'type'>;
  private readonly devicesCounted: Counter<'stage'>;
  private readonly eventLag: Histogram<'type'>;
  /**
   * `<access id>:<push id>` of pushes known to exist (insertion order = age): a click names its push
   * itself, so a device could name any; only clicks on pushes of its app count.
   */
  private readonly knownPushes = new Set<string>();
  /** Watches waiting for a fold of their push on this instance, by `<access id>:<push id>`. */
  private readonly watchers = new Map<string, Set<() => void>>();

  constructor(private readonly options: StatsServiceOptions) {
    this.authorizer = new CallAuthorizer({
      clusterToken: options.clusterToken,
      verifyAppSecret: verifyAppSecretWithRegistry(options.registry),
    });
    this.clock = options.clock ?? systemClock;
    this.watchIntervalMs = options.watchIntervalMs ?? 200;
    this.watchPollMs = options.watchPollMs ?? 1_000;
    this.knownPushLimit = options.knownPushes ?? 10_000;
    this.eventsApplied = new Counter({
      name: 'stats_events_applied_total',
      help: 'Delivery events folded into the counts, by type (sent, arrived, clicked).',
      labelNames: ['type'],
      registers: [options.metrics],
    });
    this.devicesCounted = new Counter({
      name: 'stats_devices_counted_total',
      help: "Devices newly counted at a stage of a push's funnel (sent, arrived, clicked); duplicates are not.",
      labelNames: ['stage'],
      registers: [options.metrics],
    });
    this.eventLag = new Histogram({
      name: 'stats_event_lag_seconds',
      help: 'Time from an event (its at_ms) to its fold into the counts, by type.',
      labelNames: ['type'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
      registers: [options.metrics],
    });
    const watchers = this.watchers;
    new Gauge({
      name: 'stats_watch_streams',
      help: 'WatchPushStats streams open on this instance.',
      registers: [options.metrics],
      collect() {
        let open = 0;
        for (const set of watchers.values()) open += set.size;
        this.set(open);
      },
    });
  }

  handlers(): ServiceHandlers<typeof StatsServiceService> {
    return {
      getPushStats: async (request, { metadata }) => {
        const { accessId, pushId } = await this.pushOf(metadata, request);
        const { push } = await this.options.dispatch.getPush({ accessId, pushId });
        return { stats: await this.pushStats(accessId, pushId, push?.target ?? 0) };
      },
      watchPushStats: (request, { metadata, signal }) => this.watch(metadata, request, signal),
      getAppStats: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        return this.appStats(accessId, request.fromDate, request.toDate);
      },
    };
  }

  startConsuming(): void {
    this.consumer = this.options.bus.consume({
      stream: streams.events.name,
      consumer: 'stats',
      handler: (data) => {
        const batch = decodeEvents(data, this.options.logger);
        return batch === undefined ? Promise.resolve() : this.apply(batch);
      },
      concurrency: 4,
      redeliverAfterMs: this.options.redeliverAfterMs,
      startWithinMs: replayWindowOf(this.options.stats.dedupTtlMs),
    });
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }

  // ---- queries ---------------------------------------------------------------------------------------

  private async pushOf(
    metadata: CallContext['metadata'],
    request: { accessId: number; pushId: string },
  ): Promise<{ accessId: number; pushId: string }> {
    const accessId = await this.authorizer.requireApp(metadata, request.accessId);
    if (request.pushId === '') throw invalidArgument('push_id', 'required');
    return { accessId, pushId: request.pushId };
  }

  private async pushStats(accessId: number, pushId: string, target: number): Promise<PushStats> {
    const funnel = await this.options.stats.getFunnel(accessId, pushId);
    return {
      pushId,
      sent: funnel.sent,
      arrived: funnel.arrived,
      clicked: funnel.clicked,
      target,
      conversion: funnel.arrived > 0 ? funnel.clicked / funnel.arrived : 0,
      platforms: funnel.platforms.map(({ platform, sent, arrived, clicked }) => ({
        platform: platform as Platform,
        sent,
        arrived,
        clicked,
      })),
      arrivalLatency: {
        count: [...funnel.latency.values()].reduce((sum, n) => sum + n, 0),
        p50Ms: latencyPercentile(funnel.latency, 0.5),
        p90Ms: latencyPercentile(funnel.latency, 0.9),
        p99Ms: latencyPercentile(funnel.latency, 0.99),
      },
    };
  }

  /**
   * The push's figures now, then whenever they change: woken by this instance's folds of the push, and
   * polling every watchPollMs for folds elsewhere; never two responses within watchIntervalMs. Ends when
   * the client cancels (the signal), or with the push's error when it no longer exists.
   */
  private async *watch(
    metadata: CallContext['metadata'],
    request: { accessId: number; pushId: string },
    signal: AbortSignal,
  ): AsyncGenerator<{ stats: PushStats }> {
    const { accessId, pushId } = await this.pushOf(metadata, request);
    const key = `${accessId}:${pushId}`;
    let target = 0;
    let recordReadAt = Number.NEGATIVE_INFINITY;
    let last: string | undefined;
    // Set by a fold of the push on this instance; `wake` ends the current wait early.
    let dirty = false;
    let wake: () => void = () => undefined;
    const onFold = () => {
      dirty = true;
      wake();
    };
    let watchers = this.watchers.get(key);
    if (watchers === undefined) {
      watchers = new Set();
      this.watchers.set(key, watchers);
    }
    watchers.add(onFold);
    try {
      while (!signal.aborted) {
        dirty = false;
        // Real time, not the clock: these are waits, not timestamps.
        const startedAt = performance.now();
        // Also the first time: the push must exist (PUSH_NOT_FOUND otherwise, or when it is gone).
        if (startedAt - recordReadAt >= this.watchPollMs) {
          target = (await this.options.dispatch.getPush({ accessId, pushId })).push?.target ?? 0;
          recordReadAt = startedAt;
        }
        const stats = await this.pushStats(accessId, pushId, target);
        const seen = JSON.stringify(stats);
        if (seen !== last) {
          last = seen;
          yield { stats };
          await sleep(this.watchIntervalMs - (performance.now() - startedAt), signal);
        }
        if (dirty) continue;
        await new Promise<void>((resolve) => {
          const finish = () => {
            clearTimeout(timer);
            signal.removeEventListener('abort', finish);
            wake = () => undefined;
            resolve();
          };
          const timer = setTimeout(finish, this.watchPollMs);
          wake = finish;
          signal.addEventListener('abort', finish, { once: true });
        });
      }
    } finally {
      watchers.delete(onFold);
      if (watchers.size === 0) this.watchers.delete(key);
    }
  }

  private async appStats(accessId: number, fromDate: string, toDate: string): Promise<GetAppStatsResponse> {
    const today = dayOf(this.clock.now());
    let fromDay = today - DEFAULT_DAYS + 1;
    let toDay = today;
    if (fromDate !== '' || toDate !== '') {
      fromDay = parseDate('from_date', fromDate);
      toDay = parseDate('to_date', toDate);
    }
    const oldest = today - APP_DAYS_KEPT + 1;
    if (fromDay > toDay) throw invalidArgument('from_date', 'must not be after to_date');
    if (toDay > today) throw invalidArgument('to_date', `must not be after today (${formatDay(today)})`);
    if (fromDay < oldest) {
      throw invalidArgument(
        'from_date',
        `day figures are kept ${APP_DAYS_KEPT} days: must not be before ${formatDay(oldest)}`,
      );
    }
    const { registry, tag, stats } = this.options;
    const online = (platform: Platform) => tag.countAudience({ accessId, platform });
    const [covered, all, android, ios, days] = await Promise.all([
      registry.countDevices({ accessId }),
      online(Platform.PLATFORM_UNSPECIFIED),
      online(Platform.PLATFORM_ANDROID),
      online(Platform.PLATFORM_IOS),
      stats.getDays(accessId, fromDay, toDay),
    ]);
    return {
      coveredDevices: covered.total,
      onlineDevices: all.online,
      platforms: [
        { platform: Platform.PLATFORM_ANDROID, covered: covered.android, online: android.online },
        { platform: Platform.PLATFORM_IOS, covered: covered.ios, online: ios.online },
      ],
      days: days.map(({ day, pushes, sent, arrived, clicked }) => ({
        date: formatDay(day),
        pushes,
        sent,
        arrived,
        clicked,
      })),
    };
  }

  // ---- folding ---------------------------------------------------------------------------------------

  /**
   * One batch: events grouped per push, stage and day into one store call each (a broadcast's batch of
   * 500 arrivals is one call). Failing anywhere fails the batch, which the stream delivers again; the
   * store counts each device once, so folding a batch twice changes nothing.
   */
  private async apply(batch: EventBatch): Promise<void> {
    const now = this.clock.now();
    const groups = new Map<string, FunnelAdd>();
    const clickedPushes = new Set<string>();
    for (const event of batch.events) {
      const stage = STAGE_OF[event.type];
      if (stage === undefined) continue;
      if (event.atMs > 0) this.eventLag.observe({ type: stage }, Math.max(0, now - event.atMs) / 1000);
      this.eventsApplied.inc({ type: stage });
      // Not countable: gateways attribute an ack to its push only when they delivered the message.
      if (event.pushId === '') continue;
      const day = dayOf(event.atMs > 0 ? event.atMs : now);
      // A device counts once per message sent and arrived, so each occurrence of a recurring push counts;
      // clicks once per push: a click names its msg_id itself, and made-up ids must not count again.
      const msgId = stage === 'clicked' ? 0 : event.msgId;
      const key = `${stage}\n${event.accessId}\n${event.pushId}\n${msgId}\n${day}`;
      let group = groups.get(key);
      if (group === undefined) {
        group = {
          stage,
          accessId: event.accessId,
          pushId: event.pushId,
          msgId,
          day,
          devices: [],
        };
        groups.set(key, group);
      }
      addDevices(group, event);
      if (stage === 'clicked') clickedPushes.add(`${event.accessId}:${event.pushId}`);
      // A SENT event comes from dispatch or a gateway delivering the push: it exists.
      else if (stage === 'sent') this.rememberPush(`${event.accessId}:${event.pushId}`);
    }
    const unknown = await this.unknownPushes(clickedPushes);
    const touched = new Set<string>();
    await Promise.all(
      [...groups.values()].map(async (group) => {
        const push = `${group.accessId}:${group.pushId}`;
        if (group.stage === 'clicked' && unknown.has(push)) return;
        const added = await this.options.stats.add(group);
        if (added > 0) {
          this.devicesCounted.inc({ stage: group.stage }, added);
          touched.add(push);
        }
      }),
    );
    for (const push of touched) for (const wake of this.watchers.get(push) ?? []) wake();
  }

  /** Of these pushes, the ones that do not exist (asking dispatch about those not remembered). */
  private async unknownPushes(pushes: Set<string>): Promise<Set<string>> {
    const unknown = new Set<string>();
    await Promise.all(
      [...pushes].map(async (push) => {
        if (this.knownPushes.has(push)) return;
        const separator = push.indexOf(':');
        const accessId = Number(push.slice(0, separator));
        const pushId = push.slice(separator + 1);
        try {
          await this.options.dispatch.getPush({ accessId, pushId });
          this.rememberPush(push);
        } catch (error) {
          // Anything else (dispatch unavailable) fails the batch: it comes again.
          if (!(error instanceof PushdError) || error.code !== 'PUSH_NOT_FOUND') throw error;
          unknown.add(push);
        }
      }),
    );
    return unknown;
  }

  private rememberPush(push: string): void {
    if (this.knownPushes.has(push)) return;
    this.knownPushes.add(push);
    if (this.knownPushes.size > this.knownPushLimit) {
      const oldest = this.knownPushes.values().next().value;
      if (oldest !== undefined) this.knownPushes.delete(oldest);
    }
  }
}

/**
 * The devices of an event: its tokens (SENT, and ARRIVED merged per message, each with its own arrival time
 * in tokens_at_ms) or its one token. An arrival's latency is known when the gateway knew the send time.
 */
function addDevices(group: FunnelAdd, event: Event): void {
  const measured = group.stage === 'arrived' && event.sentAtMs !== undefined && event.sentAtMs > 0;
  const sentAtMs = event.sentAtMs ?? 0;
  const add = (token: string, atMs: number | undefined) => {
    if (measured && atMs !== undefined && atMs > 0) {
      group.devices.push({ token, platform: event.platform, latencyMs: atMs - sentAtMs });
    } else {
      group.devices.push({ token, platform: event.platform });
    }
  };
  if (event.tokens.length > 0) {
    for (const [i, token] of event.tokens.entries()) add(token, event.tokensAtMs[i]);
  } else if (event.token !== '') {
    add(event.token, event.atMs);
  }
}

/** Resolves after `ms` (at once when not positive) or when the signal aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

function parseDate(field: string, value: string): number {
  const match = DATE.exec(value);
  const ms = match ? Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])) : Number.NaN;
  // Date.UTC rolls 2026-02-30 over into March: a date that does not format back was not a date.
  if (!Number.isFinite(ms) || formatDay(ms / DAY_MS) !== value) {
    throw invalidArgument(field, `must be a UTC date as YYYY-MM-DD (got ${JSON.stringify(value)})`);
  }
  return ms / DAY_MS;
}

function formatDay(day: number): string {
  return new Date(day * DAY_MS).toISOString().slice(0, 10);
}

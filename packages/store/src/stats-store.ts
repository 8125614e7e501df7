import { PUSH_RETENTION_MS } from './push-store.js';

/**
 * Events about a push come while its messages live (at most 72 hours) plus the bus's redelivery delay;
 * after that no replay can arrive, so the stores may forget which tokens they counted (never the counts).
 */
export const DEFAULT_DEDUP_TTL_MS = 96 * 3_600_000;

/**
 * Clicks count once per push, not per message, and a recurring push (a loop of up to a year) is clicked
 * as long as it sends: who clicked is remembered for the push record's retention after the last click
 * (at least), so that a weekly loop does not count each returning device again every week.
 */
export const CLICK_DEDUP_TTL_MS = PUSH_RETENTION_MS;

/** How long a store remembers who it counted at a stage after the last event: see the two above. */
export function dedupTtlOf(stage: FunnelStage, dedupTtlMs: number): number {
  return stage === 'clicked' ? Math.max(dedupTtlMs, CLICK_DEDUP_TTL_MS) : dedupTtlMs;
}

/** An app's day figures are kept this many days (today included); older days read as zeros. */
export const APP_DAYS_KEPT = 30;

/** The stages of a push's funnel: sent to a device, acknowledged by it, clicked on it. */
export type FunnelStage = 'sent' | 'arrived' | 'clicked';

export const FUNNEL_STAGES: readonly FunnelStage[] = ['sent', 'arrived', 'clicked'];

/** Per-push delivery counts. Owned by the stats service. */
export interface PushCounts {
  sent: number;
  arrived: number;
}

export interface StageCounts {
  sent: number;
  arrived: number;
  clicked: number;
}

/** One device's event at a stage of a push. */
export interface FunnelDevice {
  token: string;
  /** The device's platform (Platform enum number); its count goes under it too. */
  platform: number;
  /** Arrivals: milliseconds from the message's send time to the ack. Absent: not measured. */
  latencyMs?: number;
}

export interface FunnelAdd {
  stage: FunnelStage;
  accessId: number;
  pushId: string;
  /**
   * The message the events are about (its msg_id): a device counts once per message, so each occurrence
   * of a recurring push (a message of its own) counts its devices again, and a one-off push (one message)
   * counts each device once. Default: 0.
   */
  msgId?: number;
  /** UTC day of the events (days since the Unix epoch): the app's figures of that day count them. */
  day: number;
  devices: FunnelDevice[];
}

/** What a push's funnel holds. */
export interface PushFunnel extends StageCounts {
  /** Per platform with any count, in increasing platform number. */
  platforms: (StageCounts & { platform: number })[];
  /** Arrival latency histogram: bucket index (see latencyBucket) -> arrivals measured in it. */
  latency: Map<number, number>;
}

/** An app's figures of one UTC day. */
export interface AppDay extends StageCounts {
  /** Days since the Unix epoch. */
  day: number;
  /** Pushes sent to at least one device that day. */
  pushes: number;
}

export interface StatsStore {
  /**
   * How long after a push's last event the store remembers which devices it counted: a replayed event
   * older than that may count again (see StatsService for how its consumer replays no further back).
   */
  readonly dedupTtlMs: number;

  /**
   * Counts `tokens` as sent for the push's message `msgId` (default 0); a token already counted for it is
   * not counted again, so replayed events do not inflate the figure (within the store's dedup window,
   * DEFAULT_DEDUP_TTL_MS unless configured, after the message's last event). Returns how many were new.
   * Same as add() at stage `sent` with platform 0 and the current day.
   */
  addSent(accessId: number, pushId: string, tokens: string[], msgId?: number): Promise<number>;

  /** Counts arrivals, each token once per message (`msgId`, default 0). Returns how many were new. */
  addArrived(accessId: number, pushId: string, tokens: string[], msgId?: number): Promise<number>;

  /**
   * Counts devices at a stage of a push, each device once per message and stage (a repeated token, within
   * the call or across calls, counts once), under its platform, its latency bucket (arrivals with a
   * latency) and the app's figures of `day`. Exact under replays and concurrent calls: a call that failed
   * half-way and is repeated ends with the figures of one successful call. Returns how many devices were
   * new. Who was counted is remembered per message, for the dedup window after that message's last event.
   */
  add(add: FunnelAdd): Promise<number>;

  get(accessId: number, pushId: string): Promise<PushCounts>;

  /** The full funnel of a push (zeros for an unknown push). */
  getFunnel(accessId: number, pushId: string): Promise<PushFunnel>;

  /**
   * The app's figures of days `fromDay` to `toDay` (both included, days since the epoch), one entry per
   * day in order, zeros for days without events or older than APP_DAYS_KEPT.
   */
  getDays(accessId: number, fromDay: number, toDay: number): Promise<AppDay[]>;
}

// ---- arrival latency histogram ---------------------------------------------------------------------------

/** Buckets per doubling: each bucket's upper bound is 2^(1/4) = 1.19 times the previous one's. */
const BUCKETS_PER_DOUBLING = 4;
/** The last bucket, 2^30 ms (12.4 days), takes everything longer. */
export const MAX_LATENCY_BUCKET = 30 * BUCKETS_PER_DOUBLING;

/**
 * The histogram bucket of a latency: bucket b holds latencies in (2^((b-1)/4), 2^(b/4)] ms; bucket 0
 * holds everything up to 1 ms (negative latencies too: clocks of different hosts disagree a little).
 */
export function latencyBucket(latencyMs: number): number {
  if (!(latencyMs > 1)) return 0;
  const bucket = Math.ceil(BUCKETS_PER_DOUBLING * Math.log2(latencyMs) - 1e-9);
  return Math.min(bucket, MAX_LATENCY_BUCKET);
}

/** The upper bound of a bucket in whole milliseconds. */
export function latencyBucketUpperMs(bucket: number): number {
  return Math.ceil(2 ** (bucket / BUCKETS_PER_DOUBLING) - 1e-9);
}

/**
 * The q-quantile (0 < q <= 1) of a histogram: the upper bound of the bucket holding the ceil(q * n)-th
 * smallest latency, so at most 19 % above the true value. 0 for an empty histogram.
 */
export function latencyPercentile(histogram: Map<number, number>, q: number): number {
  let total = 0;
  for (const count of histogram.values()) total += count;
  if (total === 0) return 0;
  const rank = Math.max(1, Math.ceil(q * total - 1e-9));
  let seen = 0;
  for (const bucket of [...histogram.keys()].sort((a, b) => a - b)) {
    seen += histogram.get(bucket) ?? 0;
    if (seen >= rank) return latencyBucketUpperMs(bucket);
  }
  return latencyBucketUpperMs(MAX_LATENCY_BUCKET);
}

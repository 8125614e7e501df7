import { type Clock, systemClock } from '@pushd/common';
import { DEFAULT_DEDUP_TTL_MS, type PushCounts, type StatsStore } from './stats-store.js';

export interface MemoryStatsStoreOptions {
  /** Time source for forgetting who was counted. Default: systemClock. */
  clock?: Clock;
  /** How long after its last event a push remembers which tokens it counted. Default: 96 hours. */
  dedupTtlMs?: number;
}

interface PushStats {
  counts: PushCounts;
  sent: Set<string>;
  arrived: Set<string>;
  dedupExpiresAtMs: number;
}

/** Delivery counts in process memory; the dedup sets are forgotten as on Redis, the counts are kept. */
export class MemoryStatsStore implements StatsStore {
  private readonly clock: Clock;
  private readonly dedupTtlMs: number;
  private readonly pushes = new Map<string, PushStats>();
  private addsSinceSweep = 0;

  constructor(options: MemoryStatsStoreOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.dedupTtlMs = options.dedupTtlMs ?? DEFAULT_DEDUP_TTL_MS;
  }

  async addSent(accessId: number, pushId: string, tokens: string[]): Promise<number> {
    return this.add(accessId, pushId, tokens, 'sent');
  }

  async addArrived(accessId: number, pushId: string, tokens: string[]): Promise<number> {
    return this.add(accessId, pushId, tokens, 'arrived');
  }

  async get(accessId: number, pushId: string): Promise<PushCounts> {
    const stats = this.pushes.get(pushKey(accessId, pushId));
    return stats ? { ...stats.counts } : { sent: 0, arrived: 0 };
  }

  private add(accessId: number, pushId: string, tokens: string[], kind: 'sent' | 'arrived'): number {
    if (tokens.length === 0) return 0;
    const now = this.clock.now();
    const key = pushKey(accessId, pushId);
    let stats = this.pushes.get(key);
    if (!stats) {
      stats = { counts: { sent: 0, arrived: 0 }, sent: new Set(), arrived: new Set(), dedupExpiresAtMs: 0 };
      this.pushes.set(key, stats);
    } else if (stats.dedupExpiresAtMs <= now) {
      forget(stats);
    }
    const seen = stats[kind];
    let added = 0;
    for (const token of tokens) {
      if (seen.has(token)) continue;
      seen.add(token);
      added++;
    }
    stats.counts[kind] += added;
    stats.dedupExpiresAtMs = now + this.dedupTtlMs;
    this.sweep(now);
    return added;
  }

  /** Drops expired dedup sets in a full pass once per `size` adds: amortized O(1). */
  private sweep(now: number): void {
    if (++this.addsSinceSweep < this.pushes.size) return;
    this.addsSinceSweep = 0;
    for (const stats of this.pushes.values()) {
      if (stats.dedupExpiresAtMs <= now) forget(stats);
    }
  }
}

function forget(stats: PushStats): void {
  stats.sent.clear();
  stats.arrived.clear();
}

function pushKey(accessId: number, pushId: string): string {
  return `${accessId}\n${pushId}`;
}

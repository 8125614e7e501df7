/**
 * Events about a push come while its messages live (at most 72 hours) plus the bus's redelivery delay;
 * after that no replay can arrive, so the stores may forget which tokens they counted (never the counts).
 */
export const DEFAULT_DEDUP_TTL_MS = 96 * 3_600_000;

/** Per-push delivery counts. Owned by the stats service. */
export interface PushCounts {
  sent: number;
  arrived: number;
}

export interface StatsStore {
  /**
   * Counts `tokens` as sent for the push; a token already counted is not counted again, so replayed
   * events do not inflate the figure (within the store's dedup window, DEFAULT_DEDUP_TTL_MS unless
   * configured, after the push's last event). Returns how many were new.
   */
  addSent(accessId: number, pushId: string, tokens: string[]): Promise<number>;

  /** Counts arrivals, each token once per push. Returns how many were new. */
  addArrived(accessId: number, pushId: string, tokens: string[]): Promise<number>;

  get(accessId: number, pushId: string): Promise<PushCounts>;
}

/** Per-push delivery counts. Owned by the stats service. */
export interface PushCounts {
  sent: number;
  arrived: number;
}

export interface StatsStore {
  /**
   * Counts `tokens` as sent for the push; a token already counted is not counted again, so replayed
   * events do not inflate the figure. Returns how many were new.
   */
  addSent(accessId: number, pushId: string, tokens: string[]): Promise<number>;

  /** Counts arrivals, each token once per push. Returns how many were new. */
  addArrived(accessId: number, pushId: string, tokens: string[]): Promise<number>;

  get(accessId: number, pushId: string): Promise<PushCounts>;
}

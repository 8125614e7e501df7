/**
 * Where each online device is connected: written by the gateway that holds the connection, read by
 * dispatch to publish to that gateway's subject. A route can be stale (a gateway died): that is safe,
 * because every message is stored before it is published and the device catches up when it reconnects.
 */
export interface Route {
  nodeId: string;
  /** Identifies the connection, so that a closing old connection cannot remove a newer one's route. */
  sessionId: string;
  /**
   * When the session opened (ms, by its gateway's clock). A route is only replaced by one of a session
   * opened at or after it, so that the delayed write of a device's older session cannot take its newer
   * session's place (dispatch would publish to a gateway that no longer holds the device). Routes
   * written before this field existed read 0.
   */
  openedAtMs: number;
}

export interface RouteKey {
  accessId: number;
  token: string;
}

export interface RouteStore {
  /**
   * Records the route, unless the stored one is of a session opened later (then nothing changes); it
   * expires after ttlMs unless refreshed.
   */
  set(accessId: number, token: string, route: Route, ttlMs: number): Promise<void>;

  get(accessId: number, token: string): Promise<Route | undefined>;

  /** Routes of many devices of one app, in the order of `tokens` (undefined where offline). */
  getMany(accessId: number, tokens: string[]): Promise<(Route | undefined)[]>;

  /** Removes the route only if it still belongs to `sessionId`. */
  clear(accessId: number, token: string, sessionId: string): Promise<void>;

  /**
   * Extends the expiry of routes still held by their sessions, and writes back a session's route that is
   * gone (expired, or removed by the close of an older session of the device whose route write had come
   * late, or whose gateway's clock was ahead): a live session that lost its route gets it back within one
   * refresh. A route held by another session is left alone. One round trip for the whole batch.
   */
  refresh(entries: (RouteKey & { route: Route })[], ttlMs: number): Promise<void>;
}

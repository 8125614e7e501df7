import { type Clock, systemClock } from '@pushd/common';
import type { Route, RouteKey, RouteStore } from './route-store.js';

export interface MemoryRouteStoreOptions {
  /** Time source for expiry. Default: systemClock. */
  clock?: Clock;
}

interface Entry {
  route: Route;
  expiresAtMs: number;
}

/**
 * Routes in process memory. An expired route is invisible at once and deleted when next touched, or by a
 * full pass once per `size` writes (amortized O(1)), so routes of gateways that died do not pile up.
 */
export class MemoryRouteStore implements RouteStore {
  private readonly clock: Clock;
  private readonly routes = new Map<string, Entry>();
  private writesSinceSweep = 0;

  constructor(options: MemoryRouteStoreOptions = {}) {
    this.clock = options.clock ?? systemClock;
  }

  async set(accessId: number, token: string, route: Route, ttlMs: number): Promise<void> {
    const key = routeKey(accessId, token);
    // A newer session's route stays (see Route.openedAtMs).
    const current = this.live(key);
    if (current !== undefined && current.openedAtMs > route.openedAtMs) return;
    this.routes.set(key, {
      route: { ...route },
      expiresAtMs: this.clock.now() + ttlMs,
    });
    this.sweep();
  }

  async get(accessId: number, token: string): Promise<Route | undefined> {
    return this.live(routeKey(accessId, token));
  }

  async getMany(accessId: number, tokens: string[]): Promise<(Route | undefined)[]> {
    return tokens.map((token) => this.live(routeKey(accessId, token)));
  }

  async clear(accessId: number, token: string, sessionId: string): Promise<void> {
    const key = routeKey(accessId, token);
    if (this.live(key)?.sessionId === sessionId) this.routes.delete(key);
  }

  async refresh(entries: (RouteKey & { route: Route })[], ttlMs: number): Promise<void> {
    const expiresAtMs = this.clock.now() + ttlMs;
    for (const { accessId, token, route } of entries) {
      const key = routeKey(accessId, token);
      const current = this.live(key);
      const entry = this.routes.get(key);
      if (current === undefined) this.routes.set(key, { route: { ...route }, expiresAtMs });
      else if (entry && current.sessionId === route.sessionId) entry.expiresAtMs = expiresAtMs;
    }
  }

  private live(key: string): Route | undefined {
    const entry = this.routes.get(key);
    if (!entry) return undefined;
    if (entry.expiresAtMs <= this.clock.now()) {
      this.routes.delete(key);
      return undefined;
    }
    return { ...entry.route };
  }

  private sweep(): void {
    if (++this.writesSinceSweep < this.routes.size) return;
    this.writesSinceSweep = 0;
    const now = this.clock.now();
    for (const [key, entry] of this.routes) {
      if (entry.expiresAtMs <= now) this.routes.delete(key);
    }
  }
}

function routeKey(accessId: number, token: string): string {
  return `${accessId}\n${token}`;
}

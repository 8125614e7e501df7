import type { RedisKeys } from './keys.js';
import { commandPerKey, redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';
import type { Route, RouteKey, RouteStore } from './route-store.js';

export interface RedisRouteStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/**
 * Routes on Redis: one string per online device with a TTL, valued `<opened_at ms>;<session id byte
 * length>:<session id><node id>`. The length prefix lets Lua compare the session exactly with a prefix
 * test, whatever characters ids contain, and keeps the value one short string (there is one per online
 * device). Values without the `<opened_at ms>;` part (written before it existed) are read as opened at 0.
 */
export class RedisRouteStore implements RouteStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisRouteStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async set(accessId: number, token: string, route: Route, ttlMs: number): Promise<void> {
    await redisCall(
      runScript(
        this.redis,
        'routeSet',
        [this.keys.route(accessId, token)],
        [encodeRoute(route), openedAtOf(route), wholeMs(ttlMs)],
      ),
    );
  }

  async get(accessId: number, token: string): Promise<Route | undefined> {
    return decodeRoute(await redisCall(this.redis.getBuffer(this.keys.route(accessId, token))));
  }

  async getMany(accessId: number, tokens: string[]): Promise<(Route | undefined)[]> {
    const replies = await commandPerKey(
      tokens.map((token) => this.keys.route(accessId, token)),
      (key) => this.redis.getBuffer(key),
    );
    return replies.map(decodeRoute);
  }

  async clear(accessId: number, token: string, sessionId: string): Promise<void> {
    await redisCall(
      runScript(this.redis, 'routeClear', [this.keys.route(accessId, token)], [sessionPrefix(sessionId)]),
    );
  }

  async refresh(entries: (RouteKey & { route: Route })[], ttlMs: number): Promise<void> {
    const ttl = wholeMs(ttlMs);
    await commandPerKey(
      entries.map(({ accessId, token }) => this.keys.route(accessId, token)),
      (key, i) => {
        const { route } = entries[i]!;
        return runScript(
          this.redis,
          'routeRefresh',
          [key],
          [sessionPrefix(route.sessionId), ttl, encodeRoute(route)],
        );
      },
    );
  }
}

function sessionPrefix(sessionId: string): string {
  return `${Buffer.byteLength(sessionId, 'utf8')}:${sessionId}`;
}

function encodeRoute(route: Route): string {
  return `${openedAtOf(route)};${sessionPrefix(route.sessionId)}${route.nodeId}`;
}

function decodeRoute(value: Buffer | null): Route | undefined {
  if (!value) return undefined;
  const colon = value.indexOf(0x3a);
  if (colon < 1) return undefined;
  // '<opened_at>;' comes before the session's length, both digits; a route without it opened at 0.
  const head = value.subarray(0, colon).toString('latin1');
  const semicolon = head.indexOf(';');
  const openedAtMs = semicolon < 0 ? 0 : Number(head.slice(0, semicolon));
  const length = Number(head.slice(semicolon + 1));
  if (!Number.isSafeInteger(length) || !Number.isSafeInteger(openedAtMs)) return undefined;
  const start = colon + 1;
  return {
    sessionId: value.subarray(start, start + length).toString('utf8'),
    nodeId: value.subarray(start + length).toString('utf8'),
    openedAtMs,
  };
}

/** The route's opened_at as the script compares it: whole milliseconds, not below 0. */
function openedAtOf(route: Route): number {
  return Number.isFinite(route.openedAtMs) ? Math.max(0, Math.floor(route.openedAtMs)) : 0;
}

/** PX takes whole milliseconds, at least 1 (0 would be an error, not "expire now"). */
function wholeMs(ttlMs: number): number {
  return Math.max(1, Math.ceil(ttlMs));
}

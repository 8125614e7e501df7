import type { AudienceExpr } from '@pushd/audience';
import type { Platform } from '@pushd/proto';
import {
  type AudienceCount,
  type AudienceIndex,
  activeDays,
  dayOf,
  indexedSet,
  SEEN_DAYS_KEPT,
} from './audience-index.js';
import { Bitset } from './bitset.js';

interface AppIndex {
  registered: Bitset;
  platforms: Map<Platform, Bitset>;
  tags: Map<string, Bitset>;
  online: Bitset;
  /** UTC day number -> devices seen that day. */
  days: Map<number, Bitset>;
}

const EMPTY = new Bitset();

/** The audience index in process memory, as word-packed bitsets. Each method is one synchronous step. */
export class MemoryAudienceIndex implements AudienceIndex {
  private readonly apps = new Map<number, AppIndex>();

  async setRegistered(
    accessId: number,
    index: number,
    platform: Platform,
    registered: boolean,
  ): Promise<void> {
    const app = this.app(accessId);
    app.registered.set(index, registered);
    for (const [other, bits] of app.platforms) if (other !== platform || !registered) bits.set(index, false);
    if (registered) bitsOf(app.platforms, platform).set(index, true);
  }

  async setTags(
    accessId: number,
    index: number | readonly number[],
    add: readonly string[],
    remove: readonly string[],
  ): Promise<void> {
    const indexes = typeof index === 'number' ? [index] : index;
    if (indexes.length === 0) return;
    const app = this.app(accessId);
    for (const tag of add) {
      const bits = bitsOf(app.tags, tag);
      for (const i of indexes) bits.set(i, true);
    }
    for (const tag of remove) {
      const bits = app.tags.get(tag);
      if (!bits) continue;
      for (const i of indexes) bits.set(i, false);
      if (bits.isEmpty()) app.tags.delete(tag);
    }
  }

  async setOnline(accessId: number, index: number, online: boolean): Promise<void> {
    this.app(accessId).online.set(index, online);
  }

  async markSeen(accessId: number, index: number, nowMs: number): Promise<void> {
    const app = this.app(accessId);
    const today = dayOf(nowMs);
    bitsOf(app.days, today).set(index, true);
    // What Redis does with a TTL: a day older than the longest window is forgotten.
    for (const day of app.days.keys()) if (day <= today - SEEN_DAYS_KEPT) app.days.delete(day);
  }

  async count(accessId: number, expr: AudienceExpr, nowMs: number): Promise<AudienceCount> {
    const app = this.apps.get(accessId);
    if (!app) return { matched: 0, online: 0 };
    const result = Bitset.and([app.registered, evaluate(app, expr, nowMs)]);
    return { matched: result.count(), online: Bitset.and([result, app.online]).count() };
  }

  private app(accessId: number): AppIndex {
    let app = this.apps.get(accessId);
    if (!app) {
      app = {
        registered: new Bitset(),
        platforms: new Map(),
        tags: new Map(),
        online: new Bitset(),
        days: new Map(),
      };
      this.apps.set(accessId, app);
    }
    return app;
  }
}

function bitsOf<K>(map: Map<K, Bitset>, key: K): Bitset {
  let bits = map.get(key);
  if (!bits) {
    bits = new Bitset();
    map.set(key, bits);
  }
  return bits;
}

function evaluate(app: AppIndex, expr: AudienceExpr, nowMs: number): Bitset {
  switch (expr.kind) {
    case 'all':
      return app.registered;
    case 'tag': {
      const set = indexedSet(expr.tag);
      if (set.kind === 'platform') return app.platforms.get(set.platform) ?? EMPTY;
      if (set.kind === 'active') {
        const days = activeDays(set.days, nowMs).map((day) => app.days.get(day) ?? EMPTY);
        return Bitset.or([app.online, ...days]);
      }
      return app.tags.get(set.tag) ?? EMPTY;
    }
    case 'and':
      return Bitset.and(expr.terms.map((term) => evaluate(app, term, nowMs)));
    case 'or':
      return Bitset.or(expr.terms.map((term) => evaluate(app, term, nowMs)));
    case 'not':
      return Bitset.andNot(app.registered, evaluate(app, expr.term, nowMs));
  }
}

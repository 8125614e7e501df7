import { randomBytes } from 'node:crypto';
import type { AudienceExpr } from '@pushd/audience';
import { Platform } from '@pushd/proto';
import {
  type AudienceCount,
  type AudienceIndex,
  activeDays,
  DAY_MS,
  dayOf,
  indexedSet,
  SEEN_DAYS_KEPT,
} from './audience-index.js';
import type { RedisKeys } from './keys.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';

export interface RedisAudienceIndexOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

const PLATFORMS = [Platform.PLATFORM_ANDROID, Platform.PLATFORM_IOS] as const;

/**
 * The audience index on Redis: one string per bitmap (SETBIT / BITOP / BITCOUNT), every bitmap of an app
 * under the app's hash tag, so that a count is one script in one slot whatever the expression. A count
 * compiles the expression to a postfix program (compileCount) that audience-count.lua runs with BITOP
 * into temporary keys of the same slot, deleted before it returns. With a million devices a bitmap is
 * 125 KB and each BITOP over a few of them takes well under a millisecond.
 */
export class RedisAudienceIndex implements AudienceIndex {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisAudienceIndexOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async setRegistered(
    accessId: number,
    index: number,
    platform: Platform,
    registered: boolean,
  ): Promise<void> {
    const k = this.keys;
    const own = registered && (PLATFORMS as readonly Platform[]).includes(platform);
    const set = registered ? [k.audienceRegistered(accessId)] : [];
    if (own) set.push(k.audiencePlatform(accessId, platform));
    const clear = [
      ...(registered ? [] : [k.audienceRegistered(accessId)]),
      ...PLATFORMS.filter((p) => !own || p !== platform).map((p) => k.audiencePlatform(accessId, p)),
    ];
    await this.bits(set, clear, [index], '', false);
  }

  async setTags(
    accessId: number,
    index: number | readonly number[],
    add: readonly string[],
    remove: readonly string[],
  ): Promise<void> {
    const indexes = typeof index === 'number' ? [index] : [...index];
    if (indexes.length === 0 || add.length + remove.length === 0) return;
    await this.bits(
      add.map((tag) => this.keys.audienceTag(accessId, tag)),
      remove.map((tag) => this.keys.audienceTag(accessId, tag)),
      indexes,
      '',
      true,
    );
  }

  async setOnline(accessId: number, index: number, online: boolean): Promise<void> {
    const key = this.keys.audienceOnline(accessId);
    await this.bits(online ? [key] : [], online ? [] : [key], [index], '', false);
  }

  async markSeen(accessId: number, index: number, nowMs: number): Promise<void> {
    const day = dayOf(nowMs);
    await this.bits(
      [this.keys.audienceDay(accessId, day)],
      [],
      [index],
      (day + SEEN_DAYS_KEPT) * DAY_MS,
      false,
    );
  }

  async count(accessId: number, expr: AudienceExpr, nowMs: number): Promise<AudienceCount> {
    const program = compileCount(this.keys, accessId, expr, nowMs);
    const nonce = randomBytes(6).toString('hex');
    const temps = Array.from({ length: program.temps }, (_, n) => this.keys.audienceTemp(accessId, nonce, n));
    const [matched, online] = (await redisCall(
      runScript(
        this.redis,
        'audienceCount',
        [
          this.keys.audienceRegistered(accessId),
          this.keys.audienceOnline(accessId),
          ...program.reads,
          ...temps,
        ],
        [program.reads.length, ...program.code],
      ),
    )) as [number, number];
    return { matched, online };
  }

  private async bits(
    set: string[],
    clear: string[],
    indexes: number[],
    expireAtMs: number | '',
    dropEmpty: boolean,
  ): Promise<void> {
    if (set.length + clear.length === 0) return;
    await redisCall(
      runScript(
        this.redis,
        'audienceBits',
        [...set, ...clear],
        [set.length, expireAtMs, dropEmpty ? '1' : '0', ...indexes],
      ),
    );
  }
}

/** A count as audience-count.lua runs it: the bitmaps it reads (KEYS[3..]) and its postfix code. */
export interface CountProgram {
  reads: string[];
  code: string[];
  /** Temporary keys it needs: one per combining instruction, plus two for the final results. */
  temps: number;
}

/** Compiles an expression to the postfix program of audience-count.lua (see the top of that script). */
export function compileCount(
  keys: RedisKeys,
  accessId: number,
  expr: AudienceExpr,
  nowMs: number,
): CountProgram {
  const reads: string[] = [];
  const positions = new Map<string, number>();
  const code: string[] = [];
  let temps = 2;
  // KEYS[1] and KEYS[2] are registered and online; what the program reads follows from KEYS[3].
  const push = (key: string) => {
    let position = positions.get(key);
    if (position === undefined) {
      reads.push(key);
      position = reads.length + 2;
      positions.set(key, position);
    }
    code.push(`k${position}`);
  };
  const combine = (op: '&' | '|', n: number) => {
    if (n < 2) return;
    code.push(`${op}${n}`);
    temps++;
  };
  const emit = (node: AudienceExpr): void => {
    switch (node.kind) {
      case 'all':
        code.push('k1');
        return;
      case 'tag': {
        const set = indexedSet(node.tag);
        if (set.kind === 'platform') push(keys.audiencePlatform(accessId, set.platform));
        else if (set.kind === 'tag') push(keys.audienceTag(accessId, set.tag));
        else {
          // Connected now, or on one of the window's days.
          code.push('k2');
          const days = activeDays(set.days, nowMs);
          for (const day of days) push(keys.audienceDay(accessId, day));
          combine('|', days.length + 1);
        }
        return;
      }
      case 'and':
      case 'or':
        for (const term of node.terms) emit(term);
        combine(node.kind === 'and' ? '&' : '|', node.terms.length);
        return;
      case 'not':
        emit(node.term);
        code.push('!');
        temps++;
        return;
    }
  };
  emit(expr);
  return { reads, code, temps };
}

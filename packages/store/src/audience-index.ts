import { type AudienceExpr, platformTag } from '@pushd/audience';
import { Platform } from '@pushd/proto';

/** How many registered devices an expression matches, and how many of those are connected now. */
export interface AudienceCount {
  matched: number;
  online: number;
}

/**
 * The audience index: per app, one bitmap per set of devices, bit n standing for the device whose index
 * (DeviceRecord.index) is n. Sets: registered, per platform, per tag (user tags and built-in value tags
 * such as `pushd:app_version:2.1.0`), connected now, and connected on each UTC day (kept 31 days). Owned by
 * the tag service, which keeps it current from registry and gateway events and from the tag API.
 *
 * Counting an expression combines bitmaps (and/or/not) and never visits devices, so its cost grows with
 * the number of devices / 8 bytes per term, not with devices. Every result is intersected with
 * `registered`: bits left behind at the index of a device that unregistered never count.
 *
 * Built-in tags an expression may name, answered from the bitmaps (never set through setTags):
 * - `pushd:platform:android|ios`: the platform bitmaps;
 * - `pushd:active:<N>d` (N = 1..30; the API offers 1d, 7d, 30d): connected now, or on one of the last N
 *   UTC days, today included.
 * Any other tag reads the bitmap of that name (empty if no device ever had it).
 */
export interface AudienceIndex {
  /**
   * Marks the device registered on `platform` (its bit in that platform's bitmap set, in the others
   * cleared), or no longer registered (cleared in `registered` and every platform).
   */
  setRegistered(accessId: number, index: number, platform: Platform, registered: boolean): Promise<void>;

  /** Sets the bits of `add` and clears those of `remove`, for one device or several. */
  setTags(
    accessId: number,
    index: number | readonly number[],
    add: readonly string[],
    remove: readonly string[],
  ): Promise<void>;

  setOnline(accessId: number, index: number, online: boolean): Promise<void>;

  /** Records that the device was connected on the UTC day of `nowMs`. */
  markSeen(accessId: number, index: number, nowMs: number): Promise<void>;

  /** Registered devices matching `expr` (a valid expression, see @pushd/audience), `nowMs` dating `active`. */
  count(accessId: number, expr: AudienceExpr, nowMs: number): Promise<AudienceCount>;
}

export const DAY_MS = 86_400_000;

/** How long a day's seen-bitmap is kept: the longest activity window (30 days) plus the current day. */
export const SEEN_DAYS_KEPT = 31;

/** The longest `pushd:active:<N>d` window the index answers. */
export const MAX_ACTIVE_DAYS = SEEN_DAYS_KEPT - 1;

/** Days since the Unix epoch, in UTC. */
export function dayOf(ms: number): number {
  return Math.floor(ms / DAY_MS);
}

/** What a tag of an expression reads in the index. */
export type IndexedSet =
  | { kind: 'platform'; platform: Platform }
  | { kind: 'active'; days: number }
  | { kind: 'tag'; tag: string };

const PLATFORM_TAGS: ReadonlyMap<string, Platform> = new Map(
  [Platform.PLATFORM_ANDROID, Platform.PLATFORM_IOS].map((platform) => [
    platformTag(platform) as string,
    platform,
  ]),
);

const ACTIVE_TAG = /^pushd:active:([1-9][0-9]?)d$/;

/** Resolves a tag of an expression to the bitmap(s) that answer it. */
export function indexedSet(tag: string): IndexedSet {
  const platform = PLATFORM_TAGS.get(tag);
  if (platform !== undefined) return { kind: 'platform', platform };
  const active = ACTIVE_TAG.exec(tag);
  if (active) {
    const days = Number(active[1]);
    if (days <= MAX_ACTIVE_DAYS) return { kind: 'active', days };
  }
  return { kind: 'tag', tag };
}

/** The UTC days a `pushd:active:<days>d` window covers at `nowMs`, newest first. */
export function activeDays(days: number, nowMs: number): number[] {
  const today = dayOf(nowMs);
  return Array.from({ length: days }, (_, i) => today - i);
}

/** Built-in tags that name a platform (defined in @pushd/audience, re-exported for the store's callers). */
export { platformTag };

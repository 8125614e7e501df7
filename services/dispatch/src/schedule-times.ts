import { invalidArgument } from '@pushd/common';
import type { PushRequest } from '@pushd/proto';

/** PushRequest.loop. */
export type Loop = NonNullable<PushRequest['loop']>;
/** PushRequest.accept_time: daily windows in a time zone. */
export type AcceptTimes = NonNullable<PushRequest['acceptTime']>;
/** LoopInterval of the proto (DAILY = 1, WEEKLY = 2). */
export type LoopInterval = Loop['interval'];

const MINUTE_MS = 60_000;
const DAY_MS = 24 * 60 * MINUTE_MS;

/** The proto's limit: a push is sent at most 30 days after it is accepted. */
export const MAX_SEND_AHEAD_MS = 30 * DAY_MS;
/** The proto's limit: a loop ends at most 1 year after it is accepted. */
export const MAX_LOOP_AHEAD_MS = 365 * DAY_MS;
/** The proto's limit on accept windows. */
export const MAX_ACCEPT_WINDOWS = 10;

/** Time between two occurrences of a loop; undefined for an interval that is not DAILY or WEEKLY. */
export function intervalMs(interval: LoopInterval): number | undefined {
  // By value: the LoopInterval enum itself is not among @pushd/proto's exports.
  if (interval === 1) return DAY_MS;
  if (interval === 2) return 7 * DAY_MS;
  return undefined;
}

/**
 * When a push is first fired: its send time, or `now` when it has none or it has passed, moved to the
 * start of the next accept window when it falls outside every window.
 */
export function firstFireTime(options: {
  sendTimeMs?: number;
  now: number;
  acceptTime?: AcceptTimes;
}): number {
  const { sendTimeMs, now } = options;
  return intoAcceptWindow(
    sendTimeMs !== undefined && sendTimeMs > now ? sendTimeMs : now,
    options.acceptTime,
  );
}

/**
 * The occurrence after the one nominally due at `previousFireAtMs` (its time before window adjustment):
 * exactly 24 hours or 7 days later (so an occurrence keeps its UTC time across a DST change), then moved
 * into the accept windows. Undefined when that comes after `endTimeMs` (no occurrence after the loop's
 * end, not even one a window would move past it) or the interval is unspecified.
 *
 * An occurrence fires after the previous one did (`previousFiredAtMs`, its time in the windows): on the
 * day a clock goes back the local day has 25 hours, and a window can move an occurrence by more than 24
 * to the very time it moves the next one; that next one is then skipped (`steps` 2: one send per window).
 */
export function nextOccurrence(options: {
  previousFireAtMs: number;
  interval: LoopInterval;
  endTimeMs: number;
  acceptTime?: AcceptTimes;
  /** When the previous occurrence fired, in the windows. Default: `previousFireAtMs`. */
  previousFiredAtMs?: number;
}): { nominalMs: number; fireAtMs: number; steps: number } | undefined {
  const step = intervalMs(options.interval);
  if (step === undefined) return undefined;
  const firedAtMs = options.previousFiredAtMs ?? options.previousFireAtMs;
  for (let steps = 1; ; steps++) {
    const nominalMs = options.previousFireAtMs + steps * step;
    if (nominalMs > options.endTimeMs) return undefined;
    const fireAtMs = intoAcceptWindow(nominalMs, options.acceptTime);
    if (fireAtMs > options.endTimeMs) return undefined;
    if (fireAtMs > firedAtMs) return { nominalMs, fireAtMs, steps };
  }
}

/**
 * `atMs` itself when it lies in one of the windows (or there are none), else the start of the next
 * window. Windows are [start_minute, end_minute) of the local day in the time zone (start > end spans
 * midnight), read from the zone's wall clock, so a window keeps its local hours across DST changes. A
 * window start that does not exist on a spring-forward day moves later by the length of the gap (as
 * Temporal's 'compatible' disambiguation) and counts only if that is still in a window; on a fall-back day
 * the first of the repeated times is taken.
 */
export function intoAcceptWindow(atMs: number, acceptTime: AcceptTimes | undefined): number {
  if (acceptTime === undefined || acceptTime.windows.length === 0) return atMs;
  const zone = zoneOf(acceptTime);
  if (inWindow(atMs, acceptTime.windows, zone)) return atMs;
  const localMidnight = Math.floor(wallMs(atMs, zone) / DAY_MS) * DAY_MS;
  let next = Number.POSITIVE_INFINITY;
  // Every window opens within the next day; a third day covers DST shifts and windows starting at 1440.
  for (let day = 0; day <= 2; day++) {
    for (const window of acceptTime.windows) {
      const candidate = wallToUtc(localMidnight + day * DAY_MS + window.startMinute * MINUTE_MS, zone);
      if (candidate > atMs && candidate < next && inWindow(candidate, acceptTime.windows, zone)) {
        next = candidate;
      }
    }
  }
  // Unreachable with validated windows (each opens every day); the time itself rather than never.
  return Number.isFinite(next) ? next : atMs;
}

/** Whether `atMs` lies in one of the windows of `acceptTime`. */
export function inAcceptWindow(atMs: number, acceptTime: AcceptTimes): boolean {
  return acceptTime.windows.length === 0 || inWindow(atMs, acceptTime.windows, zoneOf(acceptTime));
}

function inWindow(atMs: number, windows: AcceptTimes['windows'], zone: string): boolean {
  const wall = wallMs(atMs, zone);
  const minute = Math.floor((wall - Math.floor(wall / DAY_MS) * DAY_MS) / MINUTE_MS);
  return windows.some(({ startMinute: start, endMinute: end }) =>
    start < end ? minute >= start && minute < end : start > end && (minute >= start || minute < end),
  );
}

function zoneOf(acceptTime: AcceptTimes): string {
  return acceptTime.timeZone === '' ? 'UTC' : acceptTime.timeZone;
}

// ---- wall clock of a time zone, from Intl ---------------------------------------------------------------

const formatters = new Map<string, Intl.DateTimeFormat>();

/** Throws RangeError for a zone Intl does not know. */
function formatter(zone: string): Intl.DateTimeFormat {
  let found = formatters.get(zone);
  if (found === undefined) {
    found = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      hourCycle: 'h23',
      era: 'short',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    // Zone names are the callers' (Intl accepts any letter case): a bound on what they can make us keep.
    if (formatters.size >= 1000) formatters.clear();
    formatters.set(zone, found);
  }
  return found;
}

/** The wall-clock time at `atMs` in `zone`, as the ms since the epoch that time would be in UTC. */
function wallMs(atMs: number, zone: string): number {
  const fields: Record<string, number> = {};
  let bc = false;
  for (const part of formatter(zone).formatToParts(atMs)) {
    if (part.type === 'era') bc = part.value === 'BC';
    else if (part.type !== 'literal') fields[part.type] = Number(part.value);
  }
  const second = Math.floor(atMs / 1000) * 1000;
  const date = new Date(0);
  date.setUTCFullYear(bc ? 1 - fields.year! : fields.year!, fields.month! - 1, fields.day!);
  date.setUTCHours(fields.hour!, fields.minute!, fields.second!, atMs - second);
  return date.getTime();
}

/**
 * The instant at which `zone`'s wall clock shows `wall` (wall time as UTC ms). Of two such instants (a
 * fall-back day), the earlier; of none (a spring-forward gap), the instant the wall time would be with
 * the offset before the change, which the clock shows as that time plus the gap.
 */
function wallToUtc(wall: number, zone: string): number {
  // Offsets a day either side: no zone changes its offset twice within two days.
  const before = wall - (wallMs(wall - DAY_MS, zone) - (wall - DAY_MS));
  const after = wall - (wallMs(wall + DAY_MS, zone) - (wall + DAY_MS));
  const beforeFits = wallMs(before, zone) === wall;
  const afterFits = wallMs(after, zone) === wall;
  if (beforeFits && afterFits) return Math.min(before, after);
  if (afterFits) return after;
  return before;
}

// ---- validation -------------------------------------------------------------------------------------------

/** Throws INVALID_ARGUMENT when the send time is more than 30 days ahead (a past one means now). */
export function validateSendTime(sendTimeMs: number | undefined, now: number): void {
  if (sendTimeMs !== undefined && sendTimeMs > now + MAX_SEND_AHEAD_MS) {
    throw invalidArgument(
      'send_time_ms',
      `must be at most 30 days ahead (got ${new Date(sendTimeMs).toISOString()})`,
    );
  }
}

/**
 * Throws INVALID_ARGUMENT for a loop without an interval or an end, ending more than a year from now or
 * before its first occurrence (`firstNominalMs`).
 */
export function validateLoop(loop: Loop, firstNominalMs: number, now: number): void {
  if (intervalMs(loop.interval) === undefined) {
    throw invalidArgument('loop.interval', 'must be LOOP_INTERVAL_DAILY or LOOP_INTERVAL_WEEKLY');
  }
  if (loop.endTimeMs === 0) throw invalidArgument('loop.end_time_ms', 'required for a loop');
  if (loop.endTimeMs > now + MAX_LOOP_AHEAD_MS) {
    throw invalidArgument(
      'loop.end_time_ms',
      `must be at most 1 year ahead (got ${new Date(loop.endTimeMs).toISOString()})`,
    );
  }
  if (loop.endTimeMs < firstNominalMs) {
    throw invalidArgument('loop.end_time_ms', 'must not be before the first send time');
  }
}

/**
 * Throws INVALID_ARGUMENT for no window or more than 10, a minute above 1440, an empty window (start ==
 * end) or a time zone Intl does not know.
 */
export function validateAcceptTime(acceptTime: AcceptTimes): void {
  const { windows } = acceptTime;
  if (windows.length === 0) throw invalidArgument('accept_time.windows', 'at least one window is required');
  if (windows.length > MAX_ACCEPT_WINDOWS) {
    throw invalidArgument(
      'accept_time.windows',
      `at most ${MAX_ACCEPT_WINDOWS} windows (got ${windows.length})`,
    );
  }
  windows.forEach((window, i) => {
    for (const [field, value] of [
      ['start_minute', window.startMinute],
      ['end_minute', window.endMinute],
    ] as const) {
      if (value > 1440) {
        throw invalidArgument(`accept_time.windows[${i}].${field}`, `must be 0 to 1440 (got ${value})`);
      }
    }
    if (window.startMinute === window.endMinute) {
      throw invalidArgument(`accept_time.windows[${i}]`, 'start_minute and end_minute must differ');
    }
    // From the end of the day to its start: no minute is in it (a window over midnight starts before 1440).
    if (window.startMinute === 1440 && window.endMinute === 0) {
      throw invalidArgument(`accept_time.windows[${i}]`, 'a window from 1440 to 0 never opens');
    }
  });
  try {
    formatter(zoneOf(acceptTime));
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    throw invalidArgument(
      'accept_time.time_zone',
      `unknown IANA time zone ${JSON.stringify(acceptTime.timeZone)}`,
    );
  }
}

/** When a push is due, as validateSchedule works it out. */
export interface SchedulePlan {
  /** Occurrence 1's time before accept windows: the send time, or now. */
  nominalMs: number;
  /** Occurrence 1's time in the accept windows. */
  fireAtMs: number;
  /**
   * Whether the push goes through the scheduler: it has a loop, or its first fire time is in the future
   * (a send time ahead, or now outside the accept windows). Otherwise it is sent at once.
   */
  scheduled: boolean;
}

/**
 * Validates the scheduling fields of a request (send_time_ms, loop, accept_time: INVALID_ARGUMENT naming
 * the field) and works out when it is first due.
 */
export function validateSchedule(
  request: { sendTimeMs?: number; loop?: Loop; acceptTime?: AcceptTimes },
  now: number,
): SchedulePlan {
  validateSendTime(request.sendTimeMs, now);
  if (request.acceptTime !== undefined) validateAcceptTime(request.acceptTime);
  const nominalMs = request.sendTimeMs !== undefined && request.sendTimeMs > now ? request.sendTimeMs : now;
  if (request.loop !== undefined) validateLoop(request.loop, nominalMs, now);
  const fireAtMs = firstFireTime({ sendTimeMs: request.sendTimeMs, now, acceptTime: request.acceptTime });
  // "No occurrence after this time": the windows can move the first occurrence past the end, and then
  // every later one too, so the loop would never send anything it may.
  if (request.loop !== undefined && fireAtMs > request.loop.endTimeMs) {
    throw invalidArgument(
      'loop.end_time_ms',
      `the accept windows put the first occurrence at ${new Date(fireAtMs).toISOString()}, after the ` +
        `loop's end (${new Date(request.loop.endTimeMs).toISOString()})`,
    );
  }
  return { nominalMs, fireAtMs, scheduled: request.loop !== undefined || fireAtMs > now };
}

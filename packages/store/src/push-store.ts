import { invalidArgument, PushdError } from '@pushd/common';
import type { PushRecord, PushRequest, PushStatus } from '@pushd/proto';

const DAY_MS = 24 * 3600 * 1000;

/**
 * How long a push is kept: its record, its command and its entry in the app's index live 30 days after it
 * was created, or after its send time or the end of its loop when those are later (a recurring push keeps
 * firing for up to a year, and stays visible and cancellable meanwhile).
 */
export const PUSH_RETENTION_MS = 30 * DAY_MS;

/** How long an idempotency key is remembered: 24 hours. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

/** Most pushes one list call returns. */
export const MAX_LIST_LIMIT = 1000;

/**
 * A list call examines at most this many index entries per push it may return (10 x limit): a status
 * filter that matches few pushes would otherwise read the app's whole history in one call. It then
 * returns fewer than `limit` pushes, even none, with a cursor to continue.
 */
export const LIST_SCAN_FACTOR = 10;

/** What claimIdempotencyKey found. */
export type IdempotencyClaim =
  | { claimed: true }
  /** Another call holds the key: its push id, and its encoded response once it completed (may be empty). */
  | { claimed: false; pushId: string; response?: Uint8Array };

/** The mutable fields of a push; absent fields are left as they are. */
export interface PushPatch {
  status?: PushStatus;
  msgId?: number;
  target?: number;
  occurrences?: number;
  failure?: string;
  /**
   * The occurrence the scheduler is firing (1, 2, ...). Kept beside the record (not part of PushRecord) and
   * only ever raised: a patch whose `firing` is not above the stored one is refused as a whole. That is
   * the fence of the scheduler's compare-and-set: occurrence n starts once, and an instance that re-fires
   * it after another one died can tell from the refusal (status SENDING, firing n) that it may go on.
   */
  firing?: number;
}

export interface PushUpdateResult {
  /** Whether the patch was applied. */
  updated: boolean;
  /** The status after the call (the current one when refused); undefined when there is no such push. */
  status: PushStatus | undefined;
  /** The occurrence last started by the scheduler (PushPatch.firing), 0 if none. */
  firing: number;
}

type Loop = NonNullable<PushRequest['loop']>;
type AcceptTimes = NonNullable<PushRequest['acceptTime']>;

/** What the scheduler needs to fire the occurrences of a scheduled or recurring push. */
export interface ScheduledCommand {
  /**
   * The encoded PushCommand, opaque to the store; the scheduler sets the occurrence, its times and
   * more_occurrences on each occurrence.
   */
  command: Uint8Array;
  /** When occurrence 1 is due before accept windows move it; occurrence n is due n - 1 intervals later. */
  firstNominalMs: number;
  /** A recurring push: its interval and end. Absent: one occurrence. */
  loop?: Loop;
  /** Quiet hours: the daily windows occurrences are moved into. Absent: none. */
  acceptTime?: AcceptTimes;
}

export interface PushListQuery {
  /** Only pushes created at or after this time (ms). Default: no lower bound. */
  fromMs?: number;
  /** Only pushes created before this time (ms). Default: no upper bound. */
  toMs?: number;
  /** Only pushes in one of these statuses. Default (absent or empty): all. */
  statuses?: PushStatus[];
  /** Most pushes returned, 1 to MAX_LIST_LIMIT. */
  limit: number;
  /** From a previous page's nextCursor, with the same query. Default: the newest push. */
  cursor?: string;
}

export interface PushListPage {
  /** Newest first by created_at_ms (then by push id). */
  pushes: PushRecord[];
  /** Where the next page starts; absent when the index holds nothing further. */
  nextCursor?: string;
}

/** Pushes an app has sent. Owned by the dispatch service. */
export interface PushStore {
  /**
   * The app's next push id: increasing decimal strings. (Message ids are not the store's: they are the
   * push log's sequence.)
   */
  nextPushId(accessId: number): Promise<string>;

  /**
   * Stores the record with its mutable fields (status, msg id, target, occurrences, failure), replacing a
   * previous version, and indexes it in the app's list by created_at_ms. Keeps the push's command and its
   * `firing` fence. Kept PUSH_RETENTION_MS after max(created_at_ms, send_time_ms): a record older than that
   * is not kept at all. Throws INVALID_ARGUMENT when created_at_ms is not a non-negative integer below
   * 10^15.
   */
  save(push: PushRecord): Promise<void>;

  /** The record with its current mutable fields; undefined when unknown or past its retention. */
  get(accessId: number, pushId: string): Promise<PushRecord | undefined>;

  /** Sets the status and target count; returns false when the push does not exist. */
  setStatus(accessId: number, pushId: string, status: PushStatus, target: number): Promise<boolean>;

  /**
   * Applies `patch` atomically. With `expect`, only if the current status is one of them; with
   * `expectFiring`, only if the occurrence the scheduler last started is that one (0: a push it never
   * fired); a patch with `firing` only if it is above the stored one (see PushPatch.firing). Never creates
   * a push.
   */
  update(
    accessId: number,
    pushId: string,
    patch: PushPatch,
    expect?: PushStatus[],
    expectFiring?: number,
  ): Promise<PushUpdateResult>;

  /**
   * The push applier's fence for an occurrence of a scheduled push: the first push-log entry of the
   * occurrence to ask (its `msgId`) may apply it, and only while the push is SENDING at that occurrence.
   * The scheduler can append an occurrence twice past the log's deduplication window (an instance stalled
   * after starting it, or Redis away for minutes between its append and its bookkeeping): the other entry
   * gets false and must apply nothing. The entry that claimed it gets true again, whatever the push's
   * status since (applied again after a crash or a lost acknowledgement: its SENT counts are published
   * again). Atomic; false for a push that is gone.
   */
  claimDelivery(accessId: number, pushId: string, occurrence: number, msgId: number): Promise<boolean>;

  /**
   * Keeps the command of a scheduled push with the push (replacing a previous one), and extends the push's
   * retention to PUSH_RETENTION_MS after its last occurrence is due (the loop's end). Throws PUSH_NOT_FOUND
   * when the push was not saved first.
   */
  saveCommand(accessId: number, pushId: string, command: ScheduledCommand): Promise<void>;

  /** The command saved with the push; undefined when none (or the push is gone). */
  command(accessId: number, pushId: string): Promise<ScheduledCommand | undefined>;

  /**
   * The app's pushes newest first by created_at_ms, filtered by creation time and status, a page at a
   * time. Examines at most LIST_SCAN_FACTOR x limit index entries per call, so a page can hold fewer than
   * `limit` pushes while `nextCursor` is set. A push created (or moved by a later save) after a cursor
   * was handed out may be missed by the pages that follow. Throws INVALID_ARGUMENT for a limit out of
   * range, bad bounds or a cursor this store did not hand out.
   */
  list(accessId: number, query: PushListQuery): Promise<PushListPage>;

  /**
   * Claims `key` for `pushId` (SET NX, kept IDEMPOTENCY_TTL_MS). When another call holds it: its push id, and
   * its encoded response once that call completed. Keys are per app; any string works (the caller checks
   * PushRequest.idempotency_key's 1 to 64 characters).
   */
  claimIdempotencyKey(accessId: number, key: string, pushId: string): Promise<IdempotencyClaim>;

  /**
   * Records the response of the call holding the key (only if `pushId` still holds it), keeping its expiry.
   * Bytes are kept as they are (an empty response is a response).
   */
  completeIdempotencyKey(accessId: number, key: string, pushId: string, response: Uint8Array): Promise<void>;

  /**
   * Frees the key after the holding call failed (only if `pushId` holds it and it has no response), so a
   * retry can proceed.
   */
  releaseIdempotencyKey(accessId: number, key: string, pushId: string): Promise<void>;
}

// ---- helpers shared by the implementations -----------------------------------------------------------

/** How long the record of `push` is kept (ms since the epoch). */
export function recordRetainUntil(push: PushRecord): number {
  return Math.max(push.createdAtMs, push.sendTimeMs) + PUSH_RETENTION_MS;
}

/** How long a push with this command is kept: after its last occurrence can be due. */
export function commandRetainUntil(command: ScheduledCommand): number {
  return Math.max(command.firstNominalMs, command.loop?.endTimeMs ?? 0) + PUSH_RETENTION_MS;
}

const CREATED_DIGITS = 15;
const LENGTH_DIGITS = 3;
const MEMBER = /^(\d{15}):(\d{3}):/;

export function checkCreatedAt(createdAtMs: number): void {
  if (!Number.isSafeInteger(createdAtMs) || createdAtMs < 0 || createdAtMs >= 10 ** CREATED_DIGITS) {
    throw invalidArgument('created_at_ms', `must be a non-negative integer below 10^15 (got ${createdAtMs})`);
  }
}

/**
 * A push's entry in its app's index: the creation time, then the push id's length, then the id, so that
 * the byte order of entries is creation order, and within one millisecond the order of decimal push ids.
 */
export function indexMember(createdAtMs: number, pushId: string): string {
  checkCreatedAt(createdAtMs);
  if (pushId.length >= 10 ** LENGTH_DIGITS) throw invalidArgument('push_id', 'must be shorter than 1000');
  return `${String(createdAtMs).padStart(CREATED_DIGITS, '0')}:${String(pushId.length).padStart(LENGTH_DIGITS, '0')}:${pushId}`;
}

export function pushIdOfMember(member: string): string {
  return member.slice(CREATED_DIGITS + LENGTH_DIGITS + 2);
}

export function createdAtOfMember(member: string): number {
  return Number(member.slice(0, CREATED_DIGITS));
}

/** Index entries below this string were created before `ms`. */
function timeBound(ms: number): string {
  return String(ms).padStart(CREATED_DIGITS, '0');
}

function encodeCursor(member: string): string {
  return Buffer.from(member, 'utf8').toString('base64url');
}

/** The list member a cursor names, or undefined when it is not a cursor of a push list. */
function memberOfCursor(cursor: string): string | undefined {
  const member = /^[A-Za-z0-9_-]+$/.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const match = MEMBER.exec(member);
  return match && member.length - match[0].length === Number(match[2]) ? member : undefined;
}

/** Whether `cursor` is one a push list page returned (for callers that name it differently, page_token). */
export function isPushListCursor(cursor: string): boolean {
  return memberOfCursor(cursor) !== undefined;
}

function decodeCursor(cursor: string): string {
  const member = memberOfCursor(cursor);
  if (member === undefined) {
    throw invalidArgument('cursor', 'is not a cursor of this list (pass nextCursor of the previous page)');
  }
  return member;
}

function checkBound(field: string, value: number | undefined): void {
  if (value === undefined) return;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalidArgument(field, `must be a non-negative integer (got ${value})`);
  }
}

/** How an implementation reads its index and records for listPushes. */
export interface PushIndexSource {
  /**
   * Index entries of the app below `below` (exclusive; undefined: no upper bound) and at or above
   * `atLeast` (inclusive; '' no lower bound), greatest first, at most `count`.
   */
  range(below: string | undefined, atLeast: string, count: number): Promise<string[]>;
  /** The current status of each entry's push (undefined when gone). */
  statuses(members: string[]): Promise<(PushStatus | undefined)[]>;
  /** Each entry's record (undefined when gone). */
  records(members: string[]): Promise<(PushRecord | undefined)[]>;
}

/**
 * The list algorithm both stores share: walk the index newest first in batches, filter by status (a
 * cheap read of the status field) before reading whole records, stop at `limit` pushes or after
 * LIST_SCAN_FACTOR x limit entries. The cursor is the last entry examined.
 */
export async function listPushes(query: PushListQuery, source: PushIndexSource): Promise<PushListPage> {
  const { limit } = query;
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
    throw invalidArgument('limit', `must be 1 to ${MAX_LIST_LIMIT} (got ${limit})`);
  }
  checkBound('from_ms', query.fromMs);
  checkBound('to_ms', query.toMs);
  let below = query.toMs === undefined ? undefined : timeBound(query.toMs);
  if (query.cursor !== undefined && query.cursor !== '') {
    const after = decodeCursor(query.cursor);
    if (below === undefined || after < below) below = after;
  }
  const atLeast = query.fromMs === undefined ? '' : timeBound(query.fromMs);
  const filter =
    query.statuses !== undefined && query.statuses.length > 0 ? new Set(query.statuses) : undefined;
  const budget = limit * LIST_SCAN_FACTOR;
  const pushes: PushRecord[] = [];
  let scanned = 0;
  let exhausted = false;
  while (pushes.length < limit && scanned < budget) {
    // Without a filter nearly every entry becomes a result; with one, statuses are cheap to read ahead.
    const batch = Math.min(
      budget - scanned,
      filter ? Math.max(limit - pushes.length, 100) : limit - pushes.length,
    );
    // One more than the batch tells whether the index ends here.
    const members = await source.range(below, atLeast, batch + 1);
    const statuses = filter ? await source.statuses(members.slice(0, batch)) : undefined;
    const chosen: string[] = [];
    let taken = 0;
    while (taken < Math.min(batch, members.length) && pushes.length + chosen.length < limit) {
      const member = members[taken]!;
      taken += 1;
      if (filter && !filter.has(statuses![taken - 1] as PushStatus)) continue;
      chosen.push(member);
    }
    scanned += taken;
    if (taken > 0) below = members[taken - 1]!;
    for (const record of await source.records(chosen)) {
      // The status may have changed since it was read; the filter holds for what is returned.
      if (record !== undefined && (!filter || filter.has(record.status))) pushes.push(record);
    }
    if (members.length <= batch && taken === members.length) {
      exhausted = true;
      break;
    }
  }
  return exhausted || below === undefined ? { pushes } : { pushes, nextCursor: encodeCursor(below) };
}

export function pushNotFound(accessId: number, pushId: string): PushdError {
  return new PushdError('PUSH_NOT_FOUND', `no push has id ${JSON.stringify(pushId)} in app ${accessId}`);
}

import { encodeMessage, PushRecord, PushRequest, PushStatus } from '@pushd/proto';
import type { RedisKeys } from './keys.js';
import {
  commandRetainUntil,
  createdAtOfMember,
  IDEMPOTENCY_TTL_MS,
  type IdempotencyClaim,
  indexMember,
  listPushes,
  type PushListPage,
  type PushListQuery,
  type PushPatch,
  type PushStore,
  type PushUpdateResult,
  pushIdOfMember,
  pushNotFound,
  recordRetainUntil,
  type ScheduledCommand,
} from './push-store.js';
import { redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript, runScriptBuffer } from './redis-scripts.js';

export interface RedisPushStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/** The record and its mutable fields, in the order get() reads them. */
const RECORD_FIELDS = ['r', 's', 'n', 'm', 'o', 'f'] as const;

/**
 * Pushes on Redis. Per push a hash (the push's slot): the encoded PushRecord (`r`) as saved, and beside it
 * the fields that change after that, so that updates are small atomic scripts that never decode protobuf
 * in Lua: `s` status, `n` target, `m` msg id, `o` occurrences, `f` failure, `x` the occurrence the
 * scheduler is firing, `k` the log entry that claimed delivering it (claimDelivery); `t` the creation
 * time (the index entry), `c` and `q` a scheduled push's command and plan (a PushRequest holding
 * send_time_ms = the first nominal time, loop and accept_time). Per app (the
 * app's slot) an index of the pushes by creation time and a set of their retention deadlines. Id counters
 * are one hash per app. Everything expires PUSH_RETENTION_MS after creation, or after a loop's end.
 * Idempotency keys of push calls are one small hash each in the app's slot (`p` holding push id, `r` the
 * encoded response), expiring IDEMPOTENCY_TTL_MS after the claim; one script checks and sets them.
 */
export class RedisPushStore implements PushStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisPushStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async nextPushId(accessId: number): Promise<string> {
    return String(await redisCall(this.redis.hincrby(this.keys.idSeq(accessId), 'p', 1)));
  }

  async save(push: PushRecord): Promise<void> {
    const { accessId, pushId } = push;
    const member = indexMember(push.createdAtMs, pushId);
    const retainUntil = recordRetainUntil(push);
    // The index entry and the record in parallel (one round trip). Should one fail, the call rejects and
    // a retry repairs it; meanwhile an entry without its record is skipped by list().
    const [, previous] = await Promise.all([
      this.index(accessId, member, retainUntil, ''),
      redisCall(
        runScript(
          this.redis,
          'pushSave',
          [this.keys.push(accessId, pushId)],
          [
            Buffer.from(encodeMessage(PushRecord, push)),
            push.status,
            push.target,
            push.msgId,
            push.occurrences,
            push.failure,
            push.createdAtMs,
            retainUntil,
          ],
        ),
      ) as Promise<number>,
    ]);
    // Saved again with another creation time: the entry moves.
    if (previous >= 0 && previous !== push.createdAtMs) {
      await this.index(accessId, member, retainUntil, indexMember(previous, pushId));
    }
  }

  async get(accessId: number, pushId: string): Promise<PushRecord | undefined> {
    const fields = await redisCall(
      this.redis.hmgetBuffer(this.keys.push(accessId, pushId), ...RECORD_FIELDS),
    );
    return decodeRecord(fields);
  }

  async setStatus(accessId: number, pushId: string, status: PushStatus, target: number): Promise<boolean> {
    return (await this.update(accessId, pushId, { status, target })).updated;
  }

  async update(
    accessId: number,
    pushId: string,
    patch: PushPatch,
    expect?: PushStatus[],
    expectFiring?: number,
  ): Promise<PushUpdateResult> {
    const fields: (string | number)[] = [];
    if (patch.status !== undefined) fields.push('s', patch.status);
    if (patch.target !== undefined) fields.push('n', patch.target);
    if (patch.msgId !== undefined) fields.push('m', patch.msgId);
    if (patch.occurrences !== undefined) fields.push('o', patch.occurrences);
    if (patch.failure !== undefined) fields.push('f', patch.failure);
    const [updated, status, firing] = (await redisCall(
      runScript(
        this.redis,
        'pushUpdate',
        [this.keys.push(accessId, pushId)],
        [expect === undefined ? '*' : expect.join(','), expectFiring ?? '', patch.firing ?? '', ...fields],
      ),
    )) as [number, number, number];
    return {
      updated: updated === 1,
      status: status < 0 ? undefined : (status as PushStatus),
      firing,
    };
  }

  async claimDelivery(accessId: number, pushId: string, occurrence: number, msgId: number): Promise<boolean> {
    const claimed = await redisCall(
      runScript(
        this.redis,
        'pushClaim',
        [this.keys.push(accessId, pushId)],
        [PushStatus.PUSH_STATUS_SENDING, occurrence, msgId],
      ),
    );
    return claimed === 1;
  }

  async saveCommand(accessId: number, pushId: string, command: ScheduledCommand): Promise<void> {
    const retainUntil = commandRetainUntil(command);
    const plan = PushRequest.encode(
      PushRequest.fromPartial({
        sendTimeMs: command.firstNominalMs,
        loop: command.loop,
        acceptTime: command.acceptTime,
      }),
    ).finish();
    const createdAt = (await redisCall(
      runScript(
        this.redis,
        'pushSaveCommand',
        [this.keys.push(accessId, pushId)],
        [Buffer.from(command.command), Buffer.from(plan), retainUntil],
      ),
    )) as number;
    if (createdAt < 0) throw pushNotFound(accessId, pushId);
    // The index entry lives as long as the record.
    await this.index(accessId, indexMember(createdAt, pushId), retainUntil, '');
  }

  async command(accessId: number, pushId: string): Promise<ScheduledCommand | undefined> {
    const [record, command, plan] = await redisCall(
      this.redis.hmgetBuffer(this.keys.push(accessId, pushId), 'r', 'c', 'q'),
    );
    if (!record || !command || !plan) return undefined;
    const { sendTimeMs, loop, acceptTime } = PushRequest.decode(plan);
    return {
      command: new Uint8Array(command),
      firstNominalMs: sendTimeMs ?? 0,
      ...(loop === undefined ? {} : { loop }),
      ...(acceptTime === undefined ? {} : { acceptTime }),
    };
  }

  async list(accessId: number, query: PushListQuery): Promise<PushListPage> {
    const index = this.keys.pushIndex(accessId);
    const read = async (members: string[], fields: readonly string[]) =>
      redisCall(
        Promise.all(
          members.map((member) =>
            this.redis.hmgetBuffer(this.keys.push(accessId, pushIdOfMember(member)), ...fields),
          ),
        ),
      );
    // A record is the entry's only if it has the entry's creation time (it may have been saved again).
    const belongs = (member: string, createdAt: Buffer | null) =>
      createdAt !== null && Number(createdAt.toString()) === createdAtOfMember(member);
    return listPushes(query, {
      range: async (below, atLeast, count) =>
        redisCall(
          this.redis.call(
            'ZRANGE',
            index,
            below === undefined ? '+' : `(${below}`,
            atLeast === '' ? '-' : `[${atLeast}`,
            'BYLEX',
            'REV',
            'LIMIT',
            0,
            count,
          ) as Promise<string[]>,
        ),
      statuses: async (members) =>
        (await read(members, ['s', 't'])).map(([status, createdAt], i) =>
          status && belongs(members[i]!, createdAt ?? null)
            ? (Number(status.toString()) as PushStatus)
            : undefined,
        ),
      records: async (members) =>
        (await read(members, [...RECORD_FIELDS, 't'])).map((fields, i) =>
          belongs(members[i]!, fields[6] ?? null) ? decodeRecord(fields) : undefined,
        ),
    });
  }

  async claimIdempotencyKey(accessId: number, key: string, pushId: string): Promise<IdempotencyClaim> {
    // Bulk replies as Buffers: the response is binary.
    const [claimed, holder, response] = (await redisCall(
      runScriptBuffer(
        this.redis,
        'idempotency',
        [this.keys.idempotency(accessId, key)],
        ['claim', pushId, IDEMPOTENCY_TTL_MS],
      ),
    )) as [number, Buffer?, (Buffer | null)?];
    if (claimed === 1) return { claimed: true };
    const held = holder!.toString('utf8');
    return response == null
      ? { claimed: false, pushId: held }
      : { claimed: false, pushId: held, response: new Uint8Array(response) };
  }

  async completeIdempotencyKey(
    accessId: number,
    key: string,
    pushId: string,
    response: Uint8Array,
  ): Promise<void> {
    await redisCall(
      runScript(
        this.redis,
        'idempotency',
        [this.keys.idempotency(accessId, key)],
        ['complete', pushId, Buffer.from(response)],
      ),
    );
  }

  async releaseIdempotencyKey(accessId: number, key: string, pushId: string): Promise<void> {
    await redisCall(
      runScript(this.redis, 'idempotency', [this.keys.idempotency(accessId, key)], ['release', pushId]),
    );
  }

  private async index(accessId: number, member: string, retainUntil: number, remove: string): Promise<void> {
    await redisCall(
      runScript(
        this.redis,
        'pushIndex',
        [this.keys.pushIndex(accessId), this.keys.pushRetention(accessId)],
        [member, retainUntil, remove],
      ),
    );
  }
}

/** A record from its hash fields (RECORD_FIELDS order); fields written by older versions may be absent. */
function decodeRecord(fields: (Buffer | null)[]): PushRecord | undefined {
  const [record, status, target, msgId, occurrences, failure] = fields;
  if (!record) return undefined;
  const push = PushRecord.decode(record);
  if (status) push.status = Number(status.toString()) as PushStatus;
  if (target) push.target = Number(target.toString());
  if (msgId) push.msgId = Number(msgId.toString());
  if (occurrences) push.occurrences = Number(occurrences.toString());
  if (failure) push.failure = failure.toString('utf8');
  return push;
}

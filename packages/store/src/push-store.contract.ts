import { PushdError } from '@pushd/common';
import { MessageType, PushRecord, PushStatus } from '@pushd/proto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { PushStore, ScheduledCommand } from './push-store.js';

const APP = 1_500_000_001;
const DAY = 24 * 3_600_000;
const { PUSH_STATUS_SCHEDULED: SCHEDULED, PUSH_STATUS_SENDING: SENDING, PUSH_STATUS_DONE: DONE } = PushStatus;
const { PUSH_STATUS_CANCELLED: CANCELLED, PUSH_STATUS_FAILED: FAILED } = PushStatus;
/**
 * Set to the real time before each test: the Redis store expires pushes by the server's clock, so
 * creation times must be close to it.
 */
let NOW = Date.now();

function record(pushId: string, msgId: number, createdAtMs = NOW): PushRecord {
  return PushRecord.fromPartial({
    accessId: APP,
    pushId,
    msgId,
    status: SCHEDULED,
    audience: { target: { $case: 'token', value: 'c'.repeat(40) } },
    message: {
      type: MessageType.MESSAGE_TYPE_MESSAGE,
      title: 'hello',
      content: '世界 \u0000 {x}',
      customContent: { a: '1' },
    },
    createdAtMs,
    expiresAtMs: createdAtMs + 72 * 3_600_000,
    target: 0,
    sendTimeMs: createdAtMs,
  });
}

function command(bytes: number[], extra: Partial<ScheduledCommand> = {}): ScheduledCommand {
  return { command: new Uint8Array(bytes), firstNominalMs: NOW + 60_000, ...extra };
}

async function code(call: Promise<unknown>): Promise<string> {
  try {
    await call;
  } catch (error) {
    expect(error).toBeInstanceOf(PushdError);
    return (error as PushdError).code;
  }
  return 'resolved';
}

/** The PushStore contract; `makeStore` must return an empty store for every test. */
export function describePushStoreContract(
  name: string,
  makeStore: () => PushStore | Promise<PushStore>,
): void {
  describe(`PushStore contract: ${name}`, () => {
    let store: PushStore;
    beforeEach(async () => {
      store = await makeStore();
      NOW = Date.now();
    });

    const ids = (pushes: PushRecord[]) => pushes.map((push) => push.pushId);

    it('hands out increasing push ids (decimal strings) per app', async () => {
      const first = await store.nextPushId(APP);
      const second = await store.nextPushId(APP);
      expect(first).toMatch(/^[0-9]+$/);
      expect(Number(second)).toBeGreaterThan(Number(first));
      expect(await store.nextPushId(APP + 1)).toMatch(/^[1-9][0-9]*$/);
    });

    it('hands out distinct push ids under concurrency', async () => {
      const ids = await Promise.all(Array.from({ length: 20 }, () => store.nextPushId(APP)));
      expect(new Set(ids).size).toBe(20);
    });

    it('saves and gets a push record', async () => {
      const push = record('1', 1);
      await store.save(push);
      expect(await store.get(APP, '1')).toEqual(push);
      expect(await store.get(APP, '2')).toBeUndefined();
      expect(await store.get(APP + 1, '1')).toBeUndefined();
      await store.save({ ...push, target: 3, status: DONE });
      expect(await store.get(APP, '1')).toEqual({ ...push, target: 3, status: DONE });
    });

    it('sets status and target of an existing push only', async () => {
      await store.save(record('1', 1));
      expect(await store.setStatus(APP, '1', DONE, 42)).toBe(true);
      expect(await store.get(APP, '1')).toEqual({ ...record('1', 1), status: DONE, target: 42 });
      expect(await store.setStatus(APP, '2', DONE, 1)).toBe(false);
      expect(await store.get(APP, '2')).toBeUndefined();
    });

    it('returns copies that callers cannot use to change the store', async () => {
      const push = record('1', 1);
      await store.save(push);
      push.status = CANCELLED;
      const got = await store.get(APP, '1');
      if (got) got.target = 99;
      expect(await store.get(APP, '1')).toEqual(record('1', 1));
      const saved = command([1, 2, 3]);
      await store.saveCommand(APP, '1', saved);
      saved.command[0] = 9;
      const read = await store.command(APP, '1');
      if (read) read.command[1] = 9;
      expect(await store.command(APP, '1')).toEqual(command([1, 2, 3]));
    });

    describe('update', () => {
      it('changes the given mutable fields and leaves the others', async () => {
        await store.save(record('1', 1));
        expect(await store.update(APP, '1', { status: DONE, msgId: 77, occurrences: 3 })).toEqual({
          updated: true,
          status: DONE,
          firing: 0,
        });
        expect(await store.update(APP, '1', { target: 5, failure: 'broke: ✗ \u0000' })).toEqual({
          updated: true,
          status: DONE,
          firing: 0,
        });
        expect(await store.get(APP, '1')).toEqual({
          ...record('1', 1),
          status: DONE,
          msgId: 77,
          occurrences: 3,
          target: 5,
          failure: 'broke: ✗ \u0000',
        });
        // An empty failure clears it.
        await store.update(APP, '1', { failure: '' });
        expect((await store.get(APP, '1'))?.failure).toBe('');
      });

      it('applies only in an expected status, and reports the current one when refused', async () => {
        await store.save(record('1', 1));
        expect(await store.update(APP, '1', { status: CANCELLED }, [SENDING, DONE])).toEqual({
          updated: false,
          status: SCHEDULED,
          firing: 0,
        });
        expect(await store.update(APP, '1', { status: CANCELLED }, [SCHEDULED])).toEqual({
          updated: true,
          status: CANCELLED,
          firing: 0,
        });
        expect(await store.update(APP, '1', { status: SENDING }, [SCHEDULED])).toEqual({
          updated: false,
          status: CANCELLED,
          firing: 0,
        });
        expect(await store.update(APP, '1', { status: SENDING }, [])).toMatchObject({ updated: false });
        expect((await store.get(APP, '1'))?.status).toBe(CANCELLED);
      });

      it('never creates a push', async () => {
        expect(await store.update(APP, '9', { status: DONE })).toEqual({
          updated: false,
          status: undefined,
          firing: 0,
        });
        expect(await store.update(APP, '9', { status: DONE }, [SCHEDULED])).toMatchObject({
          status: undefined,
        });
        expect(await store.get(APP, '9')).toBeUndefined();
        expect(ids((await store.list(APP, { limit: 10 })).pushes)).toEqual([]);
      });

      it('lets exactly one of racing compare-and-sets win', async () => {
        await store.save(record('1', 1));
        const results = await Promise.all(
          Array.from({ length: 10 }, (_, i) =>
            store.update(APP, '1', i % 2 === 0 ? { status: CANCELLED } : { status: SENDING, firing: 1 }, [
              SCHEDULED,
            ]),
          ),
        );
        expect(results.filter((r) => r.updated)).toHaveLength(1);
        const final = (await store.get(APP, '1'))?.status;
        for (const result of results) expect(result.status).toBe(final);
      });

      it('fences the firing occurrence: it only rises, so a re-fire can tell it started that occurrence', async () => {
        await store.save(record('1', 1));
        expect(await store.update(APP, '1', { status: SENDING, firing: 1 }, [SCHEDULED])).toEqual({
          updated: true,
          status: SENDING,
          firing: 1,
        });
        // Another instance firing occurrence 1 again: refused, and it sees that 1 is being sent.
        expect(await store.update(APP, '1', { status: SENDING, firing: 1 }, [SCHEDULED])).toEqual({
          updated: false,
          status: SENDING,
          firing: 1,
        });
        // Occurrence 1 applied: back to SCHEDULED. Firing 1 again is refused by the fence alone.
        await store.update(APP, '1', { status: SCHEDULED, occurrences: 1 }, [SENDING]);
        expect(await store.update(APP, '1', { status: SENDING, firing: 1 }, [SCHEDULED])).toEqual({
          updated: false,
          status: SCHEDULED,
          firing: 1,
        });
        expect(await store.update(APP, '1', { status: SENDING, firing: 2 }, [SCHEDULED])).toEqual({
          updated: true,
          status: SENDING,
          firing: 2,
        });
        // save() keeps the fence.
        await store.save({ ...record('1', 1), status: SCHEDULED });
        expect(await store.update(APP, '1', { firing: 2 })).toMatchObject({ updated: false, firing: 2 });
      });

      it('updates with expectFiring only while that occurrence is the one last started (0: never fired)', async () => {
        await store.save({ ...record('1', 1), status: SENDING });
        // An immediate push: never fired by the scheduler.
        expect(await store.update(APP, '1', { status: DONE }, [SENDING], 1)).toEqual({
          updated: false,
          status: SENDING,
          firing: 0,
        });
        expect(await store.update(APP, '1', { status: DONE }, [SENDING], 0)).toEqual({
          updated: true,
          status: DONE,
          firing: 0,
        });
        await store.save({ ...record('2', 1), status: SCHEDULED });
        await store.update(APP, '2', { status: SENDING, firing: 3 }, [SCHEDULED]);
        // Occurrence 2's entry applied again while occurrence 3 is being sent: refused, nothing changed.
        expect(await store.update(APP, '2', { status: SCHEDULED, occurrences: 2 }, [SENDING], 2)).toEqual({
          updated: false,
          status: SENDING,
          firing: 3,
        });
        expect((await store.get(APP, '2'))?.occurrences).toBe(0);
        expect(await store.update(APP, '2', { status: SCHEDULED, occurrences: 3 }, [SENDING], 3)).toEqual({
          updated: true,
          status: SCHEDULED,
          firing: 3,
        });
        expect(await store.update(APP, '9', { status: DONE }, undefined, 0)).toMatchObject({
          updated: false,
        });
      });

      it('lets the first log entry of an occurrence claim its delivery, and that entry again', async () => {
        await store.save({ ...record('1', 1), status: SCHEDULED });
        // Not fired yet: no entry may deliver.
        expect(await store.claimDelivery(APP, '1', 1, 1024)).toBe(false);
        await store.update(APP, '1', { status: SENDING, firing: 1 }, [SCHEDULED]);
        // Two entries of occurrence 1 (appended twice past the log's deduplication window): the first wins,
        // and may ask again (applied again after a crash); the other may not, nor may another occurrence.
        const claims = await Promise.all([
          store.claimDelivery(APP, '1', 1, 1024),
          store.claimDelivery(APP, '1', 1, 2048),
        ]);
        expect(claims).toEqual([true, false]);
        expect(await store.claimDelivery(APP, '1', 1, 1024)).toBe(true);
        expect(await store.claimDelivery(APP, '1', 1, 2048)).toBe(false);
        expect(await store.claimDelivery(APP, '1', 2, 3072)).toBe(false);
        // Applied: no longer SENDING. The entry that claimed it may apply it again (a crash or a lost
        // acknowledgement after the record was updated); no other entry may.
        await store.update(APP, '1', { status: SCHEDULED, occurrences: 1 }, [SENDING], 1);
        expect(await store.claimDelivery(APP, '1', 1, 1024)).toBe(true);
        expect(await store.claimDelivery(APP, '1', 1, 2048)).toBe(false);
        // The next occurrence is claimed afresh.
        await store.update(APP, '1', { status: SENDING, firing: 2 }, [SCHEDULED]);
        expect(await store.claimDelivery(APP, '1', 2, 4096)).toBe(true);
        expect(await store.claimDelivery(APP, '1', 2, 5120)).toBe(false);
        expect(await store.claimDelivery(APP, '9', 1, 1024)).toBe(false);
      });

      it('setStatus changes status and target whatever the status', async () => {
        await store.save({ ...record('1', 1), status: CANCELLED });
        expect(await store.setStatus(APP, '1', FAILED, 0)).toBe(true);
        expect((await store.get(APP, '1'))?.status).toBe(FAILED);
      });
    });

    describe('commands', () => {
      it('keeps the command of a scheduled push with its plan, and replaces it', async () => {
        await store.save(record('1', 1));
        expect(await store.command(APP, '1')).toBeUndefined();
        const plan = command([0, 255, 10, 0], {
          loop: { interval: 1, endTimeMs: NOW + 30 * DAY },
          acceptTime: { windows: [{ startMinute: 1380, endMinute: 60 }], timeZone: 'Asia/Shanghai' },
        });
        await store.saveCommand(APP, '1', plan);
        expect(await store.command(APP, '1')).toEqual(plan);
        await store.saveCommand(APP, '1', command([7]));
        expect(await store.command(APP, '1')).toEqual(command([7]));
        // Saving the record again keeps the command.
        await store.save({ ...record('1', 1), status: DONE });
        expect(await store.command(APP, '1')).toEqual(command([7]));
        expect((await store.get(APP, '1'))?.status).toBe(DONE);
      });

      it('refuses a command for a push that was not saved', async () => {
        expect(await code(store.saveCommand(APP, '2', command([1])))).toBe('PUSH_NOT_FOUND');
        expect(await store.command(APP, '2')).toBeUndefined();
        expect(await store.get(APP, '2')).toBeUndefined();
      });
    });

    describe('list', () => {
      /** Pushes 1..n created a minute apart, the newest (n) a minute ago. */
      async function saveMany(n: number, status = (_i: number) => SCHEDULED): Promise<void> {
        for (let i = 1; i <= n; i++) {
          await store.save({ ...record(String(i), i, NOW - (n - i + 1) * 60_000), status: status(i) });
        }
      }

      it('returns the newest first, a page at a time, each push once', async () => {
        await saveMany(7);
        const first = await store.list(APP, { limit: 3 });
        expect(ids(first.pushes)).toEqual(['7', '6', '5']);
        expect(first.pushes[0]).toEqual(record('7', 7, NOW - 60_000));
        expect(first.nextCursor).toEqual(expect.any(String));
        const second = await store.list(APP, { limit: 3, cursor: first.nextCursor });
        expect(ids(second.pushes)).toEqual(['4', '3', '2']);
        const third = await store.list(APP, { limit: 3, cursor: second.nextCursor });
        expect(third).toEqual({ pushes: [record('1', 1, NOW - 7 * 60_000)] });
        expect((await store.list(APP, { limit: 10 })).nextCursor).toBeUndefined();
        expect(ids((await store.list(APP + 1, { limit: 10 })).pushes)).toEqual([]);
      });

      it('orders pushes of one millisecond by push id', async () => {
        for (const id of ['9', '10', '8', '100']) await store.save(record(id, 1, NOW));
        expect(ids((await store.list(APP, { limit: 10 })).pushes)).toEqual(['100', '10', '9', '8']);
        const page = await store.list(APP, { limit: 2 });
        expect(ids((await store.list(APP, { limit: 2, cursor: page.nextCursor })).pushes)).toEqual([
          '9',
          '8',
        ]);
      });

      it('filters by creation time, [fromMs, toMs)', async () => {
        await saveMany(5);
        const at = (i: number) => NOW - (5 - i + 1) * 60_000;
        expect(ids((await store.list(APP, { limit: 10, fromMs: at(2), toMs: at(4) })).pushes)).toEqual([
          '3',
          '2',
        ]);
        expect(ids((await store.list(APP, { limit: 10, fromMs: at(4) })).pushes)).toEqual(['5', '4']);
        expect(ids((await store.list(APP, { limit: 10, toMs: at(2) })).pushes)).toEqual(['1']);
        const page = await store.list(APP, { limit: 1, toMs: at(4) });
        expect(ids(page.pushes)).toEqual(['3']);
        expect(
          ids((await store.list(APP, { limit: 5, toMs: at(4), cursor: page.nextCursor })).pushes),
        ).toEqual(['2', '1']);
      });

      it('filters by status with the current status', async () => {
        await saveMany(6, (i) => (i % 2 === 0 ? DONE : SCHEDULED));
        await store.update(APP, '3', { status: CANCELLED });
        expect(ids((await store.list(APP, { limit: 10, statuses: [DONE] })).pushes)).toEqual(['6', '4', '2']);
        expect(ids((await store.list(APP, { limit: 10, statuses: [CANCELLED, SCHEDULED] })).pushes)).toEqual([
          '5',
          '3',
          '1',
        ]);
        const page = await store.list(APP, { limit: 10, statuses: [CANCELLED] });
        expect(page.pushes).toEqual([{ ...record('3', 3, NOW - 4 * 60_000), status: CANCELLED }]);
        expect(ids((await store.list(APP, { limit: 10, statuses: [] })).pushes)).toHaveLength(6);
      });

      it('examines at most 10 x limit entries per call, and continues from its cursor', async () => {
        // Only the oldest of 25 matches: a page of 1 examines 10 entries, so it takes three calls.
        await saveMany(25, (i) => (i === 1 ? FAILED : DONE));
        const pages: string[][] = [];
        let cursor: string | undefined;
        do {
          const page = await store.list(APP, { limit: 1, statuses: [FAILED], cursor });
          pages.push(ids(page.pushes));
          cursor = page.nextCursor;
        } while (cursor !== undefined && pages.length < 10);
        expect(pages).toEqual([[], [], ['1']]);
      });

      it('moves a push saved again with another creation time', async () => {
        await saveMany(3);
        await store.save(record('1', 1, NOW));
        expect(ids((await store.list(APP, { limit: 10 })).pushes)).toEqual(['1', '3', '2']);
      });

      it('refuses a bad limit, bound or cursor', async () => {
        expect(await code(store.list(APP, { limit: 0 }))).toBe('INVALID_ARGUMENT');
        expect(await code(store.list(APP, { limit: 1001 }))).toBe('INVALID_ARGUMENT');
        expect(await code(store.list(APP, { limit: 1, fromMs: -1 }))).toBe('INVALID_ARGUMENT');
        expect(await code(store.list(APP, { limit: 1, cursor: 'nope' }))).toBe('INVALID_ARGUMENT');
        expect(await code(store.list(APP, { limit: 1, cursor: '!!' }))).toBe('INVALID_ARGUMENT');
        expect(await store.list(APP, { limit: 1, cursor: '' })).toEqual({ pushes: [] });
      });
    });

    describe('idempotency keys', () => {
      const RESPONSE = new Uint8Array([0x00, 0xff, 0x0a, 0x00, 0x80, 0x7f, 0xff, 0x00]);

      it('lets the first claim win; others see its push id, then its response bytes once completed', async () => {
        expect(await store.claimIdempotencyKey(APP, 'req-1', '10')).toEqual({ claimed: true });
        expect(await store.claimIdempotencyKey(APP, 'req-1', '11')).toEqual({ claimed: false, pushId: '10' });
        // The holder claiming again (a retry that reached another instance) is no winner either.
        expect(await store.claimIdempotencyKey(APP, 'req-1', '10')).toEqual({ claimed: false, pushId: '10' });
        await store.completeIdempotencyKey(APP, 'req-1', '10', RESPONSE);
        const seen = await store.claimIdempotencyKey(APP, 'req-1', '12');
        expect(seen).toEqual({ claimed: false, pushId: '10', response: RESPONSE });
        if (seen.claimed) throw new Error('claimed');
        expect(seen.response).toBeInstanceOf(Uint8Array);
        expect([...(seen.response ?? [])]).toEqual([...RESPONSE]);
        // A copy: changing it changes nothing stored.
        seen.response![0] = 9;
        expect(await store.claimIdempotencyKey(APP, 'req-1', '12')).toEqual({
          claimed: false,
          pushId: '10',
          response: RESPONSE,
        });
      });

      it('keeps an empty response as a response', async () => {
        await store.claimIdempotencyKey(APP, 'k', '1');
        await store.completeIdempotencyKey(APP, 'k', '1', new Uint8Array());
        expect(await store.claimIdempotencyKey(APP, 'k', '2')).toEqual({
          claimed: false,
          pushId: '1',
          response: new Uint8Array(),
        });
        await store.releaseIdempotencyKey(APP, 'k', '1');
        expect(await store.claimIdempotencyKey(APP, 'k', '2')).toMatchObject({ claimed: false, pushId: '1' });
      });

      it('ignores a complete by a call that does not hold the key, or of a key never claimed', async () => {
        await store.claimIdempotencyKey(APP, 'k', '1');
        await store.completeIdempotencyKey(APP, 'k', '2', RESPONSE);
        expect(await store.claimIdempotencyKey(APP, 'k', '3')).toEqual({ claimed: false, pushId: '1' });
        await store.completeIdempotencyKey(APP, 'free', '2', RESPONSE);
        expect(await store.claimIdempotencyKey(APP, 'free', '3')).toEqual({ claimed: true });
        // The holder's response stays when a non-holder completes later.
        await store.completeIdempotencyKey(APP, 'k', '1', RESPONSE);
        await store.completeIdempotencyKey(APP, 'k', '2', new Uint8Array([1]));
        expect(await store.claimIdempotencyKey(APP, 'k', '3')).toEqual({
          claimed: false,
          pushId: '1',
          response: RESPONSE,
        });
      });

      it('frees the key on release by its holder, so that a retry proceeds; not after it completed', async () => {
        await store.claimIdempotencyKey(APP, 'k', '1');
        // Not the holder: nothing happens.
        await store.releaseIdempotencyKey(APP, 'k', '2');
        expect(await store.claimIdempotencyKey(APP, 'k', '2')).toEqual({ claimed: false, pushId: '1' });
        await store.releaseIdempotencyKey(APP, 'k', '1');
        expect(await store.claimIdempotencyKey(APP, 'k', '2')).toEqual({ claimed: true });
        // The former holder can neither complete nor release it any more.
        await store.completeIdempotencyKey(APP, 'k', '1', RESPONSE);
        await store.releaseIdempotencyKey(APP, 'k', '1');
        expect(await store.claimIdempotencyKey(APP, 'k', '3')).toEqual({ claimed: false, pushId: '2' });
        await store.completeIdempotencyKey(APP, 'k', '2', RESPONSE);
        await store.releaseIdempotencyKey(APP, 'k', '2');
        expect(await store.claimIdempotencyKey(APP, 'k', '3')).toEqual({
          claimed: false,
          pushId: '2',
          response: RESPONSE,
        });
        // Releasing a key nobody holds is harmless.
        await store.releaseIdempotencyKey(APP, 'none', '1');
        expect(await store.claimIdempotencyKey(APP, 'none', '1')).toEqual({ claimed: true });
      });

      it('keeps keys per app', async () => {
        expect(await store.claimIdempotencyKey(APP, 'k', '1')).toEqual({ claimed: true });
        expect(await store.claimIdempotencyKey(APP + 1, 'k', '1')).toEqual({ claimed: true });
        await store.completeIdempotencyKey(APP + 1, 'k', '1', RESPONSE);
        expect(await store.claimIdempotencyKey(APP, 'k', '2')).toEqual({ claimed: false, pushId: '1' });
        await store.releaseIdempotencyKey(APP, 'k', '1');
        expect(await store.claimIdempotencyKey(APP + 1, 'k', '2')).toEqual({
          claimed: false,
          pushId: '1',
          response: RESPONSE,
        });
        expect(await store.claimIdempotencyKey(APP, 'k', '2')).toEqual({ claimed: true });
      });

      it('takes keys with any characters, each its own', async () => {
        const odd = [
          '{a}',
          'a:b',
          'a_b',
          '~',
          '~fg',
          '用户-🎉',
          'x'.repeat(64),
          '🎉'.repeat(64),
          ' ',
          'A',
          'a',
        ];
        for (const [i, key] of odd.entries()) {
          expect(await store.claimIdempotencyKey(APP, key, String(i))).toEqual({ claimed: true });
        }
        for (const [i, key] of odd.entries()) {
          expect(await store.claimIdempotencyKey(APP, key, 'other')).toEqual({
            claimed: false,
            pushId: String(i),
          });
          await store.completeIdempotencyKey(APP, key, String(i), new Uint8Array([i, 0xff]));
        }
        for (const [i, key] of odd.entries()) {
          expect(await store.claimIdempotencyKey(APP, key, 'other')).toEqual({
            claimed: false,
            pushId: String(i),
            response: new Uint8Array([i, 0xff]),
          });
        }
      });

      it('lets exactly one of racing claims win', async () => {
        const results = await Promise.all(
          Array.from({ length: 20 }, (_, i) => store.claimIdempotencyKey(APP, 'race', String(i + 1))),
        );
        const winners = results.flatMap((r, i) => (r.claimed ? [String(i + 1)] : []));
        expect(winners).toHaveLength(1);
        for (const result of results) {
          if (!result.claimed) expect(result).toEqual({ claimed: false, pushId: winners[0] });
        }
      });
    });

    describe('retention', () => {
      it('keeps a push 30 days after its creation or send time, whichever is later', async () => {
        await store.save(record('1', 1, NOW - 31 * DAY));
        await store.save({ ...record('2', 2, NOW - 31 * DAY), sendTimeMs: NOW - DAY });
        await store.save(record('3', 3, NOW - 29 * DAY));
        expect(await store.get(APP, '1')).toBeUndefined();
        expect(await store.get(APP, '2')).toBeDefined();
        expect(ids((await store.list(APP, { limit: 10 })).pushes)).toEqual(['3', '2']);
        expect(await code(store.saveCommand(APP, '1', command([1])))).toBe('PUSH_NOT_FOUND');
        expect(await store.update(APP, '1', { status: DONE })).toMatchObject({ status: undefined });
      });
    });
  });
}

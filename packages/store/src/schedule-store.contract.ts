import { PushdError } from '@pushd/common';
import { beforeEach, describe, expect, it } from 'vitest';
import type { ScheduleEntry, ScheduleStore } from './schedule-store.js';

const APP = 1_500_000_001;
const T = 1_767_225_600_000;
const LEASE = 30_000;

function entry(pushId: string, fireAtMs: number, occurrence = 1, accessId = APP): ScheduleEntry {
  return { accessId, pushId, occurrence, fireAtMs };
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

/** The ScheduleStore contract; `makeStore` must return an empty store for every test. */
export function describeScheduleStoreContract(
  name: string,
  makeStore: () => ScheduleStore | Promise<ScheduleStore>,
): void {
  describe(`ScheduleStore contract: ${name}`, () => {
    let store: ScheduleStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    it('hands out entries once due, earliest first, as they were added', async () => {
      await store.add(0, entry('2', T + 2000));
      await store.add(0, entry('1', T + 1000, 3));
      await store.add(0, entry('3', T + 3000));
      expect(await store.claimDue(0, T + 999, LEASE, 10)).toEqual([]);
      expect(await store.claimDue(0, T + 1000, LEASE, 10)).toEqual([entry('1', T + 1000, 3)]);
      expect(await store.claimDue(0, T + 5000, LEASE, 10)).toEqual([
        entry('2', T + 2000),
        entry('3', T + 3000),
      ]);
      expect(await store.claimDue(0, T + 5000, LEASE, 10)).toEqual([]);
    });

    it('takes at most `limit` per call', async () => {
      for (let i = 1; i <= 5; i++) await store.add(0, entry(String(i), T + i));
      expect((await store.claimDue(0, T + 10, LEASE, 2)).map((e) => e.pushId)).toEqual(['1', '2']);
      expect((await store.claimDue(0, T + 10, LEASE, 2)).map((e) => e.pushId)).toEqual(['3', '4']);
      expect((await store.claimDue(0, T + 10, LEASE, 2)).map((e) => e.pushId)).toEqual(['5']);
    });

    it('hides a claimed entry for the lease, then hands it out again unless completed', async () => {
      await store.add(0, entry('1', T));
      await store.add(0, entry('2', T));
      const claimed = await store.claimDue(0, T, LEASE, 10);
      expect(claimed).toHaveLength(2);
      await store.complete(0, claimed[0]!);
      expect(await store.claimDue(0, T + LEASE - 1, LEASE, 10)).toEqual([]);
      expect(await store.pending(0)).toBe(1);
      // The claimer of '2' died: it is due again when the lease ends.
      expect(await store.claimDue(0, T + LEASE, LEASE, 10)).toEqual([entry('2', T)]);
      await store.complete(0, entry('2', T));
      await store.complete(0, entry('2', T));
      expect(await store.pending(0)).toBe(0);
      expect(await store.claimDue(0, T + 10 * LEASE, LEASE, 10)).toEqual([]);
    });

    it('gives each due entry to one of racing claimers', async () => {
      for (let i = 1; i <= 20; i++) await store.add(0, entry(String(i), T + i));
      const claims = await Promise.all(Array.from({ length: 8 }, () => store.claimDue(0, T + 100, LEASE, 3)));
      const all = claims.flat().map((e) => e.pushId);
      expect(all).toHaveLength(20);
      expect(new Set(all).size).toBe(20);
    });

    it('adds an occurrence once: again with the same time is a no-op, with another it replaces', async () => {
      await store.add(0, entry('1', T, 1));
      await store.add(0, entry('1', T, 1));
      expect(await store.pending(0)).toBe(1);
      await store.claimDue(0, T, LEASE, 10);
      // Added again while claimed (a scheduler re-firing the previous occurrence): the claim stays.
      await store.add(0, entry('1', T, 1));
      expect(await store.claimDue(0, T + 1, LEASE, 10)).toEqual([]);
      await store.add(0, entry('1', T + 500, 2));
      await store.add(0, entry('1', T + 700, 2));
      expect(await store.pending(0)).toBe(2);
      expect(await store.claimDue(0, T + 1000, LEASE, 10)).toEqual([entry('1', T + 700, 2)]);
    });

    it('removes every occurrence of a push, claimed or not, and nothing else', async () => {
      await store.add(0, entry('1', T, 1));
      await store.add(0, entry('1', T + 100, 2));
      await store.add(0, entry('12', T));
      await store.add(0, entry('1', T, 1, APP + 1));
      await store.add(1, entry('1', T));
      await store.claimDue(0, T, LEASE, 1);
      expect(await store.remove(0, APP, '1')).toBe(2);
      expect(await store.remove(0, APP, '1')).toBe(0);
      expect(await store.pending(0)).toBe(2);
      expect(await store.claimDue(0, T + 10 * LEASE, LEASE, 10)).toEqual(
        expect.arrayContaining([entry('12', T), entry('1', T, 1, APP + 1)]),
      );
      expect(await store.pending(1)).toBe(1);
    });

    it('keeps partitions apart', async () => {
      await store.add(3, entry('1', T));
      expect(await store.claimDue(2, T, LEASE, 10)).toEqual([]);
      expect(await store.pending(2)).toBe(0);
      expect(await store.claimDue(3, T, LEASE, 10)).toEqual([entry('1', T)]);
    });

    it('round-trips push ids of any characters', async () => {
      const odd = ['a:b', '{p}', '~x', '用户', '', 'a;b'];
      for (const [i, pushId] of odd.entries()) await store.add(0, entry(pushId, T + i));
      expect(await store.claimDue(0, T + 100, LEASE, 10)).toEqual(
        odd.map((pushId, i) => entry(pushId, T + i)),
      );
      expect(await store.remove(0, APP, 'a:b')).toBe(1);
      expect(await store.remove(0, APP, 'a')).toBe(0);
      expect(await store.pending(0)).toBe(odd.length - 1);
    });

    it('tells the fire time of the oldest due entry not claimed', async () => {
      expect(await store.oldestDueMs(0, T)).toBeUndefined();
      await store.add(0, entry('1', T + 10));
      await store.add(0, entry('2', T + 20));
      expect(await store.oldestDueMs(0, T + 9)).toBeUndefined();
      expect(await store.oldestDueMs(0, T + 30)).toBe(T + 10);
      await store.claimDue(0, T + 30, LEASE, 1);
      expect(await store.oldestDueMs(0, T + 30)).toBe(T + 20);
      await store.claimDue(0, T + 30, LEASE, 1);
      expect(await store.oldestDueMs(0, T + 30)).toBeUndefined();
      // A claim that was never completed counts from its fire time.
      expect(await store.oldestDueMs(0, T + 30 + LEASE)).toBe(T + 10);
    });

    it('refuses bad entries and claims', async () => {
      expect(await code(store.add(0, entry('1', T, 0)))).toBe('INVALID_ARGUMENT');
      expect(await code(store.add(0, entry('1', 1.5)))).toBe('INVALID_ARGUMENT');
      expect(await code(store.add(0, entry('1', T, 1, -1)))).toBe('INVALID_ARGUMENT');
      expect(await code(store.add(-1, entry('1', T)))).toBe('INVALID_ARGUMENT');
      expect(await code(store.claimDue(0, T, 0, 1))).toBe('INVALID_ARGUMENT');
      expect(await code(store.claimDue(0, T, LEASE, 0))).toBe('INVALID_ARGUMENT');
      expect(await store.pending(0)).toBe(0);
    });
  });
}

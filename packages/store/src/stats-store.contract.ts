import { beforeEach, describe, expect, it } from 'vitest';
import type { StatsStore } from './stats-store.js';

const APP = 1_500_000_001;

function tokens(from: number, to: number): string[] {
  return Array.from({ length: to - from }, (_, i) => (from + i).toString(16).padStart(40, '0'));
}

/** The StatsStore contract; `makeStore` must return an empty store for every test. */
export function describeStatsStoreContract(
  name: string,
  makeStore: () => StatsStore | Promise<StatsStore>,
): void {
  describe(`StatsStore contract: ${name}`, () => {
    let store: StatsStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    it('returns zeros for an unknown push', async () => {
      expect(await store.get(APP, '404')).toEqual({ sent: 0, arrived: 0 });
    });

    it('counts each token once per push and kind', async () => {
      expect(await store.addSent(APP, '1', tokens(0, 3))).toBe(3);
      expect(await store.addSent(APP, '1', tokens(2, 5))).toBe(2);
      expect(await store.addSent(APP, '1', tokens(0, 5))).toBe(0);
      expect(await store.addArrived(APP, '1', tokens(0, 2))).toBe(2);
      expect(await store.addArrived(APP, '1', tokens(1, 2))).toBe(0);
      expect(await store.get(APP, '1')).toEqual({ sent: 5, arrived: 2 });
    });

    it('counts a token repeated within one call once', async () => {
      const [a, b] = tokens(0, 2) as [string, string];
      expect(await store.addArrived(APP, '1', [a, a, b, a])).toBe(2);
      expect(await store.addSent(APP, '1', [])).toBe(0);
      expect(await store.get(APP, '1')).toEqual({ sent: 0, arrived: 2 });
    });

    it('keeps pushes and apps apart', async () => {
      await store.addSent(APP, '1', tokens(0, 2));
      expect(await store.addSent(APP, '2', tokens(0, 1))).toBe(1);
      expect(await store.addSent(APP + 1, '1', tokens(0, 3))).toBe(3);
      expect(await store.get(APP, '1')).toEqual({ sent: 2, arrived: 0 });
      expect(await store.get(APP, '2')).toEqual({ sent: 1, arrived: 0 });
      expect(await store.get(APP + 1, '1')).toEqual({ sent: 3, arrived: 0 });
    });

    it('counts large batches exactly, also when replayed concurrently', async () => {
      const batch = tokens(0, 2500);
      const results = await Promise.all([store.addSent(APP, '1', batch), store.addSent(APP, '1', batch)]);
      expect(results[0]! + results[1]!).toBe(2500);
      expect(await store.get(APP, '1')).toEqual({ sent: 2500, arrived: 0 });
    });
  });
}

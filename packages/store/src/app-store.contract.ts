import { beforeEach, describe, expect, it } from 'vitest';
import { type AppRecord, type AppStore, FIRST_ACCESS_ID } from './app-store.js';

/** The AppStore contract; `makeStore` must return an empty store for every test. */
export function describeAppStoreContract(name: string, makeStore: () => AppStore | Promise<AppStore>): void {
  describe(`AppStore contract: ${name}`, () => {
    let store: AppStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    const app = (n: number): Omit<AppRecord, 'accessId'> => ({
      name: `app ${n}: {weird} ✓`,
      accessKey: `ak-${n}`,
      secretKeyHash: `sk-hash-${n}`,
      tokenKey: `tk-${n}`,
      createdAtMs: 1_767_225_600_000 + n,
    });

    it('assigns increasing access ids from 1500000001', async () => {
      const first = await store.create(app(1));
      const second = await store.create(app(2));
      expect(first.accessId).toBe(FIRST_ACCESS_ID);
      expect(FIRST_ACCESS_ID).toBe(1_500_000_001);
      expect(second.accessId).toBe(FIRST_ACCESS_ID + 1);
      expect(first).toEqual({ ...app(1), accessId: FIRST_ACCESS_ID });
    });

    it('gets what was created, and undefined for an unknown id', async () => {
      const created = await store.create(app(3));
      expect(await store.get(created.accessId)).toEqual(created);
      expect(await store.get(created.accessId + 1)).toBeUndefined();
      expect(await store.get(42)).toBeUndefined();
    });

    it('gives distinct ids to concurrent creations', async () => {
      const created = await Promise.all([1, 2, 3, 4, 5].map((n) => store.create(app(n))));
      expect(new Set(created.map((a) => a.accessId)).size).toBe(5);
    });
  });
}

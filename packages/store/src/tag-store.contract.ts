import { beforeEach, describe, expect, it } from 'vitest';
import type { TagStore } from './tag-store.js';

const APP = 1_500_000_001;
const TOKEN = 'd'.repeat(40);

/** The TagStore contract; `makeStore` must return an empty store for every test. */
export function describeTagStoreContract(name: string, makeStore: () => TagStore | Promise<TagStore>): void {
  describe(`TagStore contract: ${name}`, () => {
    let store: TagStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    it('adds tags and lists them sorted', async () => {
      expect(await store.add(APP, TOKEN, ['province_gd', 'gamer', 'b'], 100)).toEqual({ ok: true, count: 3 });
      expect(await store.list(APP, TOKEN)).toEqual(['b', 'gamer', 'province_gd']);
      expect(await store.list(APP, 'e'.repeat(40))).toEqual([]);
    });

    it('counts tags already held and repeated ones once', async () => {
      await store.add(APP, TOKEN, ['a', 'b'], 100);
      expect(await store.add(APP, TOKEN, ['b', 'c', 'c'], 100)).toEqual({ ok: true, count: 3 });
      expect(await store.add(APP, TOKEN, [], 100)).toEqual({ ok: true, count: 3 });
    });

    it('changes nothing when the limit would be exceeded', async () => {
      await store.add(APP, TOKEN, ['a', 'b'], 3);
      expect(await store.add(APP, TOKEN, ['b', 'c', 'd'], 3)).toEqual({ ok: false, wouldHave: 4 });
      expect(await store.list(APP, TOKEN)).toEqual(['a', 'b']);
      expect(await store.add(APP, TOKEN, ['b', 'c'], 3)).toEqual({ ok: true, count: 3 });
    });

    it('holds the limit under concurrent adds', async () => {
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => store.add(APP, TOKEN, [`t${i}a`, `t${i}b`], 5)),
      );
      expect(results.filter((r) => r.ok)).toHaveLength(2);
      expect(await store.list(APP, TOKEN)).toHaveLength(4);
    });

    it('removes tags and returns how many are left', async () => {
      await store.add(APP, TOKEN, ['a', 'b', 'c'], 100);
      expect(await store.remove(APP, TOKEN, ['a', 'x'])).toBe(2);
      expect(await store.list(APP, TOKEN)).toEqual(['b', 'c']);
      expect(await store.remove(APP, TOKEN, ['b', 'c'])).toBe(0);
      expect(await store.remove(APP, 'e'.repeat(40), ['a'])).toBe(0);
      expect(await store.remove(APP, TOKEN, [])).toBe(0);
    });

    it('clears every tag of a device, and only of that device', async () => {
      await store.add(APP, TOKEN, ['a', 'b'], 100);
      await store.add(APP + 1, TOKEN, ['a'], 100);
      await store.clear(APP, TOKEN);
      expect(await store.list(APP, TOKEN)).toEqual([]);
      expect(await store.list(APP + 1, TOKEN)).toEqual(['a']);
      expect(await store.add(APP, TOKEN, ['z'], 1)).toEqual({ ok: true, count: 1 });
    });

    it('stores tags with any characters', async () => {
      const tags = ['a:b', '{x}', '地区:广东', ' spaced '];
      await store.add(APP, TOKEN, tags, 100);
      expect(await store.list(APP, TOKEN)).toEqual([...tags].sort());
    });
  });
}

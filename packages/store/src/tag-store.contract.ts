import { Platform } from '@pushd/proto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { TagDevice, TagLimits, TagStore } from './tag-store.js';

const APP = 1_500_000_001;
const LIMITS: TagLimits = { perDevice: 100, perApp: 10_000 };

function device(n: number, index = n): TagDevice {
  return { token: n.toString(16).padStart(40, 'd'), index };
}

const D1 = device(1);
const D2 = device(2);
const D3 = device(3);

/** The TagStore contract; `makeStore` must return an empty store for every test. */
export function describeTagStoreContract(name: string, makeStore: () => TagStore | Promise<TagStore>): void {
  describe(`TagStore contract: ${name}`, () => {
    let store: TagStore;
    const counts = async (accessId = APP) =>
      Object.fromEntries(
        (await store.appTags(accessId, { limit: 1000 })).tags.map((t) => [t.tag, t.devices]),
      );
    beforeEach(async () => {
      store = await makeStore();
    });

    it('adds tags and lists them sorted', async () => {
      expect(await store.add(APP, [D1], ['province_gd', 'gamer', 'b'], LIMITS)).toEqual({
        ok: true,
        changes: [{ token: D1.token, count: 3, added: ['province_gd', 'gamer', 'b'], removed: [] }],
        stale: [],
      });
      expect(await store.list(APP, D1.token)).toEqual(['b', 'gamer', 'province_gd']);
      expect(await store.list(APP, D1.token, D1.index)).toEqual(['b', 'gamer', 'province_gd']);
      expect(await store.list(APP, D2.token)).toEqual([]);
    });

    it('counts tags already held once and reports only what was added', async () => {
      await store.add(APP, [D1], ['a', 'b'], LIMITS);
      expect(await store.add(APP, [D1], ['b', 'c'], LIMITS)).toMatchObject({
        ok: true,
        changes: [{ count: 3, added: ['c'] }],
      });
      expect(await counts()).toEqual({ a: 1, b: 1, c: 1 });
    });

    it('refuses a call over the per-device limit whole, on every device of it', async () => {
      const limits = { perDevice: 3, perApp: 100 };
      await store.add(APP, [D1], ['a', 'b'], limits);
      await store.add(APP, [D2], ['x', 'y', 'z'], limits);
      expect(await store.add(APP, [D1], ['b', 'c', 'd'], limits)).toEqual({
        ok: false,
        limit: 'per_device',
        token: D1.token,
        wouldHave: 4,
      });
      expect(await store.list(APP, D1.token)).toEqual(['a', 'b']);
      // D3 and D1 could take 'c', D2 could not: nobody gets it.
      expect(await store.add(APP, [D3, D1, D2], ['c'], limits)).toEqual({
        ok: false,
        limit: 'per_device',
        token: D2.token,
        wouldHave: 4,
      });
      expect(await store.list(APP, D3.token)).toEqual([]);
      expect(await store.list(APP, D1.token)).toEqual(['a', 'b']);
      expect(await counts()).toEqual({ a: 1, b: 1, x: 1, y: 1, z: 1 });
      expect(await store.add(APP, [D1], ['b', 'c'], limits)).toMatchObject({
        ok: true,
        changes: [{ count: 3 }],
      });
    });

    it('holds the per-device limit under concurrent adds', async () => {
      const limits = { perDevice: 5, perApp: 100 };
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => store.add(APP, [D1], [`t${i}a`, `t${i}b`], limits)),
      );
      expect(results.filter((r) => r.ok)).toHaveLength(2);
      expect(await store.list(APP, D1.token)).toHaveLength(4);
      expect(Object.keys(await counts())).toHaveLength(4);
    });

    it('refuses a call that would exceed the distinct tags of the app, whole', async () => {
      const limits = { perDevice: 100, perApp: 3 };
      await store.add(APP, [D1], ['a', 'b'], limits);
      await store.add(APP, [D2], ['c'], limits);
      expect(await store.add(APP, [D3], ['a', 'd'], limits)).toEqual({
        ok: false,
        limit: 'per_app',
        wouldHave: 4,
      });
      expect(await store.list(APP, D3.token)).toEqual([]);
      // Tags in use can go on more devices.
      expect(await store.add(APP, [D2, D3], ['a', 'b'], limits)).toMatchObject({ ok: true });
      expect(await counts()).toEqual({ a: 3, b: 3, c: 1 });
      // A tag nobody holds any more stops counting.
      await store.remove(APP, [D2], ['c']);
      expect(await counts()).toEqual({ a: 3, b: 3 });
      expect(await store.add(APP, [D1], ['d'], limits)).toMatchObject({ ok: true });
      expect(await store.replace(APP, D2, ['e'], limits)).toEqual({
        ok: false,
        limit: 'per_app',
        wouldHave: 4,
      });
      expect(await store.list(APP, D2.token)).toEqual(['a', 'b']);
      expect((await store.appTags(APP, { limit: 10 })).total).toBe(3);
    });

    it('never lets concurrent calls take the same last free place', async () => {
      const limits = { perDevice: 100, perApp: 5 };
      const results = await Promise.all(
        Array.from({ length: 12 }, (_, i) => store.add(APP, [device(10 + i)], [`tag${i}`], limits)),
      );
      expect(results.filter((r) => r.ok)).toHaveLength(5);
      expect((await store.appTags(APP, { limit: 100 })).total).toBe(5);
    });

    it('keeps the limits per app', async () => {
      const limits = { perDevice: 100, perApp: 1 };
      await store.add(APP, [D1], ['a'], limits);
      expect(await store.add(APP + 1, [D1], ['b'], limits)).toMatchObject({ ok: true });
      expect(await store.list(APP + 1, D1.token)).toEqual(['b']);
      expect(await counts(APP + 1)).toEqual({ b: 1 });
    });

    it('removes tags and says which, with how many are left', async () => {
      await store.add(APP, [D1, D2], ['a', 'b', 'c'], LIMITS);
      expect(await store.remove(APP, [D1, D2, D3], ['a', 'x'])).toEqual({
        changes: [
          { token: D1.token, count: 2, added: [], removed: ['a'] },
          { token: D2.token, count: 2, added: [], removed: ['a'] },
          { token: D3.token, count: 0, added: [], removed: [] },
        ],
        stale: [],
      });
      expect(await store.list(APP, D1.token)).toEqual(['b', 'c']);
      expect(await counts()).toEqual({ b: 2, c: 2 });
    });

    it('replaces and clears the tags of a device', async () => {
      await store.add(APP, [D1], ['a', 'b'], LIMITS);
      await store.add(APP, [D2], ['b'], LIMITS);
      expect(await store.replace(APP, D1, ['b', 'c'], LIMITS)).toEqual({
        ok: true,
        changes: [{ token: D1.token, count: 2, added: ['c'], removed: ['a'] }],
        stale: [],
      });
      expect(await counts()).toEqual({ b: 2, c: 1 });
      expect(await store.replace(APP, D1, ['1', '2', '3', '4'], { perDevice: 3, perApp: 100 })).toEqual({
        ok: false,
        limit: 'per_device',
        token: D1.token,
        wouldHave: 4,
      });
      expect(await store.clear(APP, D1)).toEqual({
        changes: [{ token: D1.token, count: 0, added: [], removed: ['b', 'c'] }],
        stale: [],
      });
      expect(await store.replace(APP, D2, [], LIMITS)).toMatchObject({
        ok: true,
        changes: [{ removed: ['b'] }],
      });
      expect(await counts()).toEqual({});
    });

    it('pages through the tags of an app in order', async () => {
      await store.add(APP, [D1], ['d', 'a', 'c'], LIMITS);
      await store.add(APP, [D2], ['b', 'a'], LIMITS);
      expect(await store.appTags(APP, { limit: 2 })).toEqual({
        tags: [
          { tag: 'a', devices: 2 },
          { tag: 'b', devices: 1 },
        ],
        total: 4,
      });
      expect(await store.appTags(APP, { after: 'b', limit: 2 })).toEqual({
        tags: [
          { tag: 'c', devices: 1 },
          { tag: 'd', devices: 1 },
        ],
        total: 4,
      });
      expect(await store.appTags(APP, { after: 'd', limit: 2 })).toEqual({ tags: [], total: 4 });
    });

    it('belongs to one registration: a newer index starts afresh, an older one is skipped', async () => {
      await store.add(APP, [device(1, 5)], ['old', 'shared'], LIMITS);
      await store.add(APP, [D2], ['shared'], LIMITS);
      // The token registered again (index 9) before the tag service heard it had unregistered.
      expect(await store.add(APP, [device(1, 9)], ['new'], LIMITS)).toMatchObject({
        ok: true,
        changes: [{ count: 1, added: ['new'] }],
      });
      expect(await store.list(APP, D1.token)).toEqual(['new']);
      expect(await store.list(APP, D1.token, 5)).toEqual([]);
      expect(await counts()).toEqual({ new: 1, shared: 1 });
      // A call that looked the device up before it registered again writes nothing.
      expect(await store.add(APP, [device(1, 5), D2], ['late'], LIMITS)).toMatchObject({
        ok: true,
        changes: [{ token: D2.token }],
        stale: [D1.token],
      });
      expect(await store.remove(APP, [device(1, 5)], ['new'])).toEqual({ changes: [], stale: [D1.token] });
      expect(await store.list(APP, D1.token)).toEqual(['new']);
      expect(await counts()).toEqual({ late: 1, new: 1, shared: 1 });
      expect(await store.unregister(APP, D1.token, 5)).toBeUndefined();
    });

    it('forgets a device that unregistered and ignores later events about that registration', async () => {
      await store.add(APP, [D1], ['a', 'b'], LIMITS);
      const attributes = {
        index: 1,
        platform: Platform.PLATFORM_IOS,
        builtin: ['pushd:locale:en'],
        atMs: 10,
      };
      expect(await store.commitRegistration(APP, D1.token, attributes, [])).toBe('applied');
      expect(await store.unregister(APP, D1.token, 1)).toEqual({
        tags: ['a', 'b'],
        builtin: ['pushd:locale:en'],
        platform: Platform.PLATFORM_IOS,
      });
      expect(await counts()).toEqual({});
      expect(await store.list(APP, D1.token)).toEqual([]);
      expect(await store.state(APP, D1.token)).toMatchObject({ index: 1, unregistered: true });
      // Redelivered or late events of registration 1 change nothing.
      expect(await store.unregister(APP, D1.token, 1)).toBeUndefined();
      expect(await store.commitRegistration(APP, D1.token, { ...attributes, atMs: 11 }, [])).toBe('obsolete');
      expect(
        await store.presence(APP, D1.token, 1, { sessionId: 's', atMs: 12, connected: true }),
      ).toBeUndefined();
      expect(await store.add(APP, [D1], ['c'], LIMITS)).toMatchObject({ ok: true, stale: [D1.token] });
      // Registration 2 of the token starts clean.
      expect(await store.add(APP, [device(1, 2)], ['c'], LIMITS)).toMatchObject({ ok: true, stale: [] });
      expect(await store.list(APP, D1.token)).toEqual(['c']);
      // An unregistration the tag service hears of before anything else still marks the registration.
      expect(await store.unregister(APP, D3.token, 3)).toEqual({ tags: [], builtin: [], platform: 0 });
      expect(await store.commitRegistration(APP, D3.token, { ...attributes, index: 3 }, [])).toBe('obsolete');
    });

    it('stores built-in attributes only over what the caller read, and never an older event over a newer', async () => {
      expect(await store.state(APP, D1.token)).toBeUndefined();
      const v1 = {
        index: 1,
        platform: Platform.PLATFORM_ANDROID,
        builtin: ['pushd:app_version:1'],
        atMs: 100,
      };
      expect(await store.commitRegistration(APP, D1.token, v1, ['stale-read'])).toBe('changed');
      expect(await store.commitRegistration(APP, D1.token, v1, [])).toBe('applied');
      expect(await store.state(APP, D1.token)).toEqual({
        index: 1,
        unregistered: false,
        platform: Platform.PLATFORM_ANDROID,
        builtin: ['pushd:app_version:1'],
        registeredAtMs: 100,
        online: false,
      });
      const v2 = { ...v1, builtin: ['pushd:app_version:2', 'pushd:locale:zh CN'], atMs: 200 };
      expect(await store.commitRegistration(APP, D1.token, v2, [])).toBe('changed');
      expect(await store.commitRegistration(APP, D1.token, v2, ['pushd:app_version:1'])).toBe('applied');
      expect(await store.commitRegistration(APP, D1.token, v1, v2.builtin)).toBe('obsolete');
      expect((await store.state(APP, D1.token))?.builtin).toEqual(v2.builtin);
    });

    /** A presence event of D1's registration 1. */
    const presence = (sessionId: string, atMs: number, connected: boolean) =>
      store.presence(APP, D1.token, 1, { sessionId, atMs, connected });

    it('follows the newest session of a device', async () => {
      expect(await presence('s1', 10, true)).toEqual({ online: true });
      expect((await store.state(APP, D1.token))?.online).toBe(true);
      expect(await presence('s1', 20, false)).toEqual({ online: false });
      expect((await store.state(APP, D1.token))?.online).toBe(false);
      expect(await presence('s2', 30, true)).toEqual({ online: true });
      // The device moved to another gateway; the first one reports its old session closed afterwards.
      expect(await presence('s3', 40, true)).toEqual({ online: true });
      expect(await presence('s2', 45, false)).toEqual({ online: true });
      // Events out of order: an older connect does not replace the newer session.
      expect(await presence('s0', 5, true)).toEqual({ online: true });
      expect(await presence('s3', 50, false)).toEqual({ online: false });
      expect(await presence('s0', 6, false)).toEqual({ online: false });
    });

    it('keeps a device offline when a connect is applied again or comes after its disconnect', async () => {
      expect(await presence('s1', 10, true)).toEqual({ online: true });
      expect(await presence('s1', 20, false)).toEqual({ online: false });
      // The connect's batch delivered again (its handler failed on another event), or the stream replayed.
      expect(await presence('s1', 10, true)).toEqual({ online: false });
      // Out of order: s2's disconnect before its connect, and between them the late disconnect of an
      // older session never recorded here (it must not take the place of s2's).
      expect(await presence('s2', 40, false)).toEqual({ online: false });
      expect(await presence('s0', 5, false)).toEqual({ online: false });
      expect(await presence('s2', 30, true)).toEqual({ online: false });
      // The next session is online as usual, and a connect applied twice keeps it so.
      expect(await presence('s3', 50, true)).toEqual({ online: true });
      expect(await presence('s3', 50, true)).toEqual({ online: true });
    });

    it('replaces attribute tags under their prefixes, beside the user tags and outside their limits', async () => {
      const location = ['pushd:province:', 'pushd:city:'];
      const limits = { perDevice: 2, perApp: 2 };
      await store.add(APP, [D1], ['a', 'b'], limits);
      expect(
        await store.setAttributes(APP, D1, location, ['pushd:province:广东', 'pushd:city:深圳']),
      ).toEqual({
        changes: [
          { token: D1.token, count: 2, added: ['pushd:province:广东', 'pushd:city:深圳'], removed: [] },
        ],
        stale: [],
      });
      expect(await store.list(APP, D1.token, D1.index)).toEqual([
        'a',
        'b',
        'pushd:city:深圳',
        'pushd:province:广东',
      ]);
      // Not user tags: no app-wide count, and neither limit sees them.
      expect(await counts()).toEqual({ a: 1, b: 1 });
      expect((await store.appTags(APP, { limit: 10 })).total).toBe(2);
      expect(await store.remove(APP, [D1], ['b'])).toMatchObject({ changes: [{ count: 1, removed: ['b'] }] });
      expect(await store.add(APP, [D1], ['b'], limits)).toMatchObject({ ok: true, changes: [{ count: 2 }] });
      // A new report replaces the old one under the prefixes; other attribute tags stay.
      await store.setAttributes(APP, D1, ['pushd:other:'], ['pushd:other:x']);
      expect(await store.setAttributes(APP, D1, location, ['pushd:city:广州'])).toEqual({
        changes: [
          {
            token: D1.token,
            count: 2,
            added: ['pushd:city:广州'],
            removed: ['pushd:city:深圳', 'pushd:province:广东'],
          },
        ],
        stale: [],
      });
      // Replacing and clearing user tags leave attribute tags in place.
      expect(await store.replace(APP, D1, ['c'], LIMITS)).toEqual({
        ok: true,
        changes: [{ token: D1.token, count: 1, added: ['c'], removed: ['a', 'b'] }],
        stale: [],
      });
      expect(await store.clear(APP, D1)).toEqual({
        changes: [{ token: D1.token, count: 0, added: [], removed: ['c'] }],
        stale: [],
      });
      expect(await store.list(APP, D1.token)).toEqual(['pushd:city:广州', 'pushd:other:x']);
      expect(await counts()).toEqual({});
      expect(await store.setAttributes(APP, D1, location, [])).toMatchObject({
        changes: [{ count: 0, added: [], removed: ['pushd:city:广州'] }],
      });
      expect(await store.list(APP, D1.token)).toEqual(['pushd:other:x']);
    });

    it('forgets attribute tags with their registration', async () => {
      const location = ['pushd:city:'];
      await store.add(APP, [device(1, 5)], ['a'], LIMITS);
      await store.setAttributes(APP, device(1, 5), location, ['pushd:city:x']);
      // A call that looked the device up before it registered again writes nothing.
      await store.add(APP, [device(1, 9)], ['b'], LIMITS);
      expect(await store.setAttributes(APP, device(1, 5), location, ['pushd:city:y'])).toEqual({
        changes: [],
        stale: [D1.token],
      });
      expect(await store.list(APP, D1.token)).toEqual(['b']);
      await store.setAttributes(APP, device(1, 9), location, ['pushd:city:z']);
      expect(await store.unregister(APP, D1.token, 9)).toMatchObject({ tags: ['b', 'pushd:city:z'] });
      expect(await store.list(APP, D1.token)).toEqual([]);
      expect(await counts()).toEqual({});
    });

    it('stores tags with any characters', async () => {
      const tags = ['a:b', '{x}', '地区:广东', ' spaced ', '1'];
      await store.add(APP, [D1], tags, LIMITS);
      expect(await store.list(APP, D1.token)).toEqual([...tags].sort());
      expect(Object.keys(await counts()).sort()).toEqual([...tags].sort());
    });
  });
}

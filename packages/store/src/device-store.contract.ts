import { Platform } from '@pushd/proto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { DeviceRecord, DeviceStore } from './device-store.js';

const APP = 1_500_000_001;
const OTHER_APP = 1_500_000_002;

function token(n: number): string {
  return n.toString(16).padStart(40, '0');
}

function device(
  n: number,
  overrides: Partial<Omit<DeviceRecord, 'account' | 'index'>> = {},
): Omit<DeviceRecord, 'account' | 'index'> {
  return {
    accessId: APP,
    token: token(n),
    platform: Platform.PLATFORM_ANDROID,
    appVersion: '1.0.0',
    osVersion: '14',
    locale: 'zh-CN',
    sdkVersion: '0.1.0',
    credentialHash: `hash-${n}`,
    registeredAtMs: 1_767_225_600_000,
    ...overrides,
  };
}

/** The DeviceStore contract; `makeStore` must return an empty store for every test. */
export function describeDeviceStoreContract(
  name: string,
  makeStore: () => DeviceStore | Promise<DeviceStore>,
): void {
  describe(`DeviceStore contract: ${name}`, () => {
    let store: DeviceStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    it('creates a token once and counts it as covered', async () => {
      const first = await store.upsert(device(1));
      expect(first).toEqual({ created: true, device: { ...device(1), account: '', index: 0 } });
      expect(await store.get(APP, token(1))).toEqual({ ...device(1), account: '', index: 0 });
      expect(await store.count(APP)).toEqual({ total: 1, android: 1, ios: 0 });
      const again = await store.upsert(device(1));
      expect(again.created).toBe(false);
      expect(await store.count(APP)).toEqual({ total: 1, android: 1, ios: 0 });
    });

    it('keeps registeredAtMs and account on re-registration and replaces credential and details', async () => {
      await store.upsert(device(1));
      await store.setAccount(APP, token(1), 'alice');
      const again = await store.upsert(
        device(1, { credentialHash: 'new-hash', appVersion: '2.0.0', locale: 'en-US', registeredAtMs: 9 }),
      );
      const expected = {
        ...device(1, { credentialHash: 'new-hash', appVersion: '2.0.0', locale: 'en-US' }),
        account: 'alice',
        index: 0,
      };
      expect(again).toEqual({ created: false, device: expected });
      expect(await store.get(APP, token(1))).toEqual(expected);
    });

    it('moves the platform count when a token re-registers on another platform', async () => {
      await store.upsert(device(1));
      await store.upsert(device(2, { platform: Platform.PLATFORM_IOS }));
      expect(await store.count(APP)).toEqual({ total: 2, android: 1, ios: 1 });
      await store.upsert(device(1, { platform: Platform.PLATFORM_IOS }));
      expect(await store.count(APP)).toEqual({ total: 2, android: 0, ios: 2 });
    });

    it('counts per app and returns zeros for an app without devices', async () => {
      await store.upsert(device(1));
      await store.upsert(device(1, { accessId: OTHER_APP }));
      expect(await store.count(APP)).toEqual({ total: 1, android: 1, ios: 0 });
      expect(await store.count(OTHER_APP)).toEqual({ total: 1, android: 1, ios: 0 });
      expect(await store.count(7)).toEqual({ total: 0, android: 0, ios: 0 });
    });

    it('removes a device: returns it, uncounts it and drops its account binding', async () => {
      await store.upsert(device(1));
      await store.upsert(device(2, { platform: Platform.PLATFORM_IOS }));
      await store.setAccount(APP, token(1), 'alice');
      const removed = await store.remove(APP, token(1));
      expect(removed).toEqual({ ...device(1), account: 'alice', index: 0 });
      expect(await store.get(APP, token(1))).toBeUndefined();
      expect(await store.accountTokens(APP, 'alice')).toEqual([]);
      expect(await store.count(APP)).toEqual({ total: 1, android: 0, ios: 1 });
      expect(await store.remove(APP, token(1))).toBeUndefined();
      expect(await store.count(APP)).toEqual({ total: 1, android: 0, ios: 1 });
    });

    it('removes only the registration of the index it is given: never a newer one of the token', async () => {
      await store.upsert(device(1));
      expect(await store.remove(APP, token(1), 0)).toMatchObject({ index: 0 });
      await store.upsert(device(1, { registeredAtMs: 5 }));
      // A late removal of registration 0 (a retried unregister, say) finds registration 1.
      expect(await store.remove(APP, token(1), 0)).toBeUndefined();
      expect(await store.get(APP, token(1))).toMatchObject({ index: 1 });
      expect(await store.count(APP)).toEqual({ total: 1, android: 1, ios: 0 });
      expect(await store.remove(APP, token(1), 1)).toMatchObject({ index: 1 });
      expect(await store.count(APP)).toEqual({ total: 0, android: 0, ios: 0 });
    });

    it('creates a removed token anew, unbound', async () => {
      await store.upsert(device(1));
      await store.setAccount(APP, token(1), 'alice');
      await store.remove(APP, token(1));
      const again = await store.upsert(device(1, { registeredAtMs: 5 }));
      // A new registration: a new index, so that late events about the old one cannot touch it.
      expect(again).toEqual({
        created: true,
        device: { ...device(1, { registeredAtMs: 5 }), account: '', index: 1 },
      });
      expect(await store.accountTokens(APP, 'alice')).toEqual([]);
      expect(await store.count(APP)).toEqual({ total: 1, android: 1, ios: 0 });
    });

    it('binds accounts: last bind wins, empty unbinds, unknown tokens are refused', async () => {
      await store.upsert(device(1));
      expect(await store.setAccount(APP, token(9), 'alice')).toBeUndefined();
      expect(await store.accountTokens(APP, 'alice')).toEqual([]);

      expect(await store.setAccount(APP, token(1), 'alice')).toEqual({ previous: '' });
      expect(await store.accountTokens(APP, 'alice')).toEqual([token(1)]);
      expect((await store.get(APP, token(1)))?.account).toBe('alice');

      expect(await store.setAccount(APP, token(1), 'bob')).toEqual({ previous: 'alice' });
      expect(await store.accountTokens(APP, 'alice')).toEqual([]);
      expect(await store.accountTokens(APP, 'bob')).toEqual([token(1)]);

      expect(await store.setAccount(APP, token(1), 'bob')).toEqual({ previous: 'bob' });
      expect(await store.accountTokens(APP, 'bob')).toEqual([token(1)]);

      expect(await store.setAccount(APP, token(1), '')).toEqual({ previous: 'bob' });
      expect(await store.accountTokens(APP, 'bob')).toEqual([]);
      expect((await store.get(APP, token(1)))?.account).toBe('');
      expect(await store.accountTokens(APP, '')).toEqual([]);
    });

    it('lists every device of an account, per app', async () => {
      for (const n of [1, 2, 3]) await store.upsert(device(n));
      await store.upsert(device(1, { accessId: OTHER_APP }));
      await store.setAccount(APP, token(1), 'alice');
      await store.setAccount(APP, token(2), 'alice');
      await store.setAccount(APP, token(3), 'bob');
      await store.setAccount(OTHER_APP, token(1), 'alice');
      expect((await store.accountTokens(APP, 'alice')).sort()).toEqual([token(1), token(2)]);
      expect(await store.accountTokens(OTHER_APP, 'alice')).toEqual([token(1)]);
      expect(await store.accountTokens(APP, 'nobody')).toEqual([]);
    });

    it('keeps accounts with key-like characters apart', async () => {
      const accounts = ['a:b', 'a', '{a}', 'a}:{b', 'user@example.com', '用户', ''];
      for (const [i] of accounts.entries()) await store.upsert(device(i + 1));
      for (const [i, account] of accounts.entries()) await store.setAccount(APP, token(i + 1), account);
      for (const [i, account] of accounts.entries()) {
        if (account === '') continue;
        expect(await store.accountTokens(APP, account)).toEqual([token(i + 1)]);
      }
    });

    it('leaves a token in exactly one account after concurrent binds', async () => {
      await store.upsert(device(1));
      const accounts = ['a1', 'a2', 'a3', 'a4', 'a5', 'a6'];
      await Promise.all(accounts.map((account) => store.setAccount(APP, token(1), account)));
      const bound = (await store.get(APP, token(1)))?.account;
      expect(accounts).toContain(bound);
      for (const account of accounts) {
        expect(await store.accountTokens(APP, account)).toEqual(account === bound ? [token(1)] : []);
      }
    });

    it('creates a token once under concurrent registrations', async () => {
      const results = await Promise.all(
        [1, 2, 3, 4].map((n) => store.upsert(device(1, { credentialHash: `h${n}` }))),
      );
      expect(results.filter((r) => r.created)).toHaveLength(1);
      expect(await store.count(APP)).toEqual({ total: 1, android: 1, ios: 0 });
    });

    it('returns copies that callers cannot use to change the store', async () => {
      const { device: created } = await store.upsert(device(1));
      created.account = 'mallory';
      const got = await store.get(APP, token(1));
      if (got) got.credentialHash = 'changed';
      expect(await store.get(APP, token(1))).toEqual({ ...device(1), account: '', index: 0 });
    });

    it('numbers the devices of each app densely from 0 and keeps the number on re-registration', async () => {
      for (const n of [1, 2, 3]) expect((await store.upsert(device(n))).device.index).toBe(n - 1);
      expect((await store.upsert(device(1, { accessId: OTHER_APP }))).device.index).toBe(0);
      expect((await store.upsert(device(2, { platform: Platform.PLATFORM_IOS }))).device.index).toBe(1);
      expect((await store.get(APP, token(3)))?.index).toBe(2);
      await store.remove(APP, token(1));
      expect((await store.upsert(device(4))).device.index).toBe(3);
    });

    it('gives concurrent new devices distinct indexes and one device one index', async () => {
      const results = await Promise.all([1, 2, 3, 4, 5, 6].map((n) => store.upsert(device(n))));
      expect(new Set(results.map((r) => r.device.index)).size).toBe(6);
      const same = await Promise.all([1, 2, 3].map(() => store.upsert(device(7))));
      expect(new Set(same.map((r) => r.device.index)).size).toBe(1);
      expect((await store.get(APP, token(7)))?.index).toBe(same[0]?.device.index);
    });

    it('reads several devices at once, undefined for unknown tokens', async () => {
      await store.upsert(device(1));
      await store.upsert(device(2));
      await store.upsert(device(3, { accessId: OTHER_APP }));
      const found = await store.getMany(APP, [token(2), token(3), token(1), token(2)]);
      expect(found.map((d) => d?.token)).toEqual([token(2), undefined, token(1), token(2)]);
      expect(found[0]).toEqual({ ...device(2), account: '', index: 1 });
      expect(await store.getMany(APP, [])).toEqual([]);
    });
  });
}

import { setTimeout as sleep } from 'node:timers/promises';
import { PushdError } from '@pushd/common';
import { beforeEach, describe, expect, it } from 'vitest';
import type { BroadcastEntry, BroadcastLog } from './broadcast-log.js';

const APP = 1_500_000_001;
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/**
 * Set to the real time before each test: the Redis store also lets a log vanish at its newest expiry by
 * the server's clock, so the `now` the tests pass must be close to it. Expiries the tests cross by `now`
 * lie minutes ahead, so that the server's clock never reaches them during a test.
 */
let NOW = Date.now();

/** Data that differs per msgId and holds the bytes a text encoding would mangle. */
function data(msgId: number): Uint8Array {
  return new Uint8Array([0x00, 0xff, msgId & 0xff, 0x0a, 0x00, 0x7b, 0x7d, 0x3a, 0xfe, 0x80, 0x00]);
}

function entry(msgId: number, expiresAtMs = NOW + 72 * HOUR): BroadcastEntry {
  return { msgId, expiresAtMs, data: data(msgId) };
}

/**
 * The BroadcastLog contract. `makeStore` is called at the start of every test, when the store must be
 * empty, and again within some tests for a store with other options (those may share data with the
 * first: the tests then use other apps).
 */
export function describeBroadcastLogContract(
  name: string,
  makeStore: (options: { maxEntries?: number }) => BroadcastLog | Promise<BroadcastLog>,
): void {
  describe(`BroadcastLog contract: ${name}`, () => {
    let log: BroadcastLog;
    beforeEach(async () => {
      log = await makeStore({});
      NOW = Date.now();
    });

    const ids = async (after = 0, now = NOW, limit = 100, app = APP) =>
      (await log.since(app, after, now, limit)).entries.map((e) => e.msgId);

    it('returns what was appended, whole and oldest first, and chains previousMsgId', async () => {
      expect(await log.head(APP)).toBe(0);
      expect(await log.append(APP, entry(3), NOW)).toEqual({ appended: true, previousMsgId: 0 });
      expect(await log.append(APP, entry(7), NOW)).toEqual({ appended: true, previousMsgId: 3 });
      expect(await log.append(APP, entry(8), NOW)).toEqual({ appended: true, previousMsgId: 7 });
      expect(await log.since(APP, 0, NOW, 10)).toEqual({
        entries: [entry(3), entry(7), entry(8)],
        lastMsgId: 8,
      });
      expect(await log.head(APP)).toBe(8);
    });

    it('returns nothing and head 0 for an app that never had an entry', async () => {
      expect(await log.since(APP, 0, NOW, 10)).toEqual({ entries: [], lastMsgId: 0 });
      expect(await log.head(APP)).toBe(0);
    });

    it('refuses a msgId that is not above the head, and changes nothing', async () => {
      await log.append(APP, entry(4), NOW);
      await log.append(APP, entry(5), NOW);
      const before = await log.since(APP, 0, NOW, 10);
      // The same entry again (a redelivered command), and an older one with other data.
      expect(await log.append(APP, entry(5), NOW)).toEqual({ appended: false, previousMsgId: 5 });
      expect(await log.append(APP, { ...entry(3), data: new Uint8Array([1]) }, NOW)).toEqual({
        appended: false,
        previousMsgId: 5,
      });
      // A refused append does not drop expired entries either.
      expect(await log.append(APP, entry(2), NOW + 100 * HOUR)).toEqual({
        appended: false,
        previousMsgId: 5,
      });
      expect(await log.since(APP, 0, NOW, 10)).toEqual(before);
      expect(await log.head(APP)).toBe(5);
      expect(await log.append(APP, entry(6), NOW)).toEqual({ appended: true, previousMsgId: 5 });
    });

    it('admits racing appends in increasing msgId order only', async () => {
      const order = [3, 1, 4, 2, 5];
      const results = await Promise.all(order.map((id) => log.append(APP, entry(id), NOW)));
      const appended = order.filter((_, i) => results[i]?.appended);
      const kept = await ids();
      expect(kept).toEqual([...kept].sort((a, b) => a - b));
      expect([...kept].sort()).toEqual([...appended].sort());
      expect(await log.head(APP)).toBe(Math.max(...appended));
    });

    it('returns only entries after afterMsgId', async () => {
      for (const id of [1, 2, 3, 5]) await log.append(APP, entry(id), NOW);
      expect(await ids(1)).toEqual([2, 3, 5]);
      expect(await ids(4)).toEqual([5]);
      expect(await ids(5)).toEqual([]);
      expect(await ids(99)).toEqual([]);
      expect((await log.since(APP, 5, NOW, 10)).lastMsgId).toBe(5);
    });

    it('returns the newest `limit` entries, oldest first', async () => {
      for (const id of [1, 2, 3, 4, 5]) await log.append(APP, entry(id), NOW);
      expect(await ids(0, NOW, 2)).toEqual([4, 5]);
      expect(await ids(3, NOW, 1)).toEqual([5]);
      expect(await ids(3, NOW, 5)).toEqual([4, 5]);
      expect(await ids(0, NOW, 2.9)).toEqual([4, 5]);
      expect(await ids(0, NOW, Number.POSITIVE_INFINITY)).toEqual([1, 2, 3, 4, 5]);
      expect(await log.since(APP, 0, NOW, 0)).toEqual({ entries: [], lastMsgId: 5 });
      expect(await log.since(APP, 0, NOW, -1)).toEqual({ entries: [], lastMsgId: 5 });
    });

    it('never returns an expired entry, and the newest `limit` are the newest unexpired', async () => {
      await log.append(APP, entry(1, NOW + 10 * MINUTE), NOW);
      await log.append(APP, entry(2, NOW + HOUR), NOW);
      await log.append(APP, entry(3, NOW + 10 * MINUTE), NOW);
      await log.append(APP, entry(4, NOW + 5 * MINUTE), NOW);
      expect(await ids(0, NOW + 5 * MINUTE - 1)).toEqual([1, 2, 3, 4]);
      // An entry expires at its expiresAtMs, not after it.
      expect(await ids(0, NOW + 5 * MINUTE)).toEqual([1, 2, 3]);
      expect(await ids(0, NOW + 10 * MINUTE, 2)).toEqual([2]);
      expect(await log.since(APP, 0, NOW + 2 * HOUR, 2)).toEqual({ entries: [], lastMsgId: 4 });
    });

    it('drops expired entries for good, even when asked about an earlier time', async () => {
      await log.append(APP, entry(1, NOW + MINUTE), NOW);
      await log.append(APP, entry(2, NOW + HOUR), NOW);
      expect(await ids(0, NOW + MINUTE)).toEqual([2]);
      expect(await ids(0, NOW)).toEqual([2]);
      await log.append(APP, entry(3, NOW + MINUTE), NOW);
      // Dropped by the append's own `now`.
      await log.append(APP, entry(4, NOW + HOUR), NOW + 2 * MINUTE);
      expect(await ids(0, NOW)).toEqual([2, 4]);
    });

    it('does not keep an entry already expired, but makes it the head', async () => {
      expect(await log.append(APP, entry(1, NOW), NOW)).toEqual({ appended: true, previousMsgId: 0 });
      expect(await log.since(APP, 0, NOW - 1, 10)).toEqual({ entries: [], lastMsgId: 1 });
      expect(await log.append(APP, entry(2, NOW - HOUR), NOW)).toEqual({ appended: true, previousMsgId: 1 });
      expect(await log.head(APP)).toBe(2);
      expect(await log.append(APP, entry(3), NOW)).toEqual({ appended: true, previousMsgId: 2 });
      expect(await ids(0, NOW - 1)).toEqual([3]);
    });

    it('keeps the head and the chain after every entry expired and was trimmed', async () => {
      await log.append(APP, entry(7, NOW + MINUTE), NOW);
      await log.append(APP, entry(9, NOW + MINUTE), NOW);
      expect(await log.since(APP, 0, NOW + MINUTE, 10)).toEqual({ entries: [], lastMsgId: 9 });
      expect(await log.head(APP)).toBe(9);
      expect(await log.append(APP, entry(10), NOW + MINUTE)).toEqual({ appended: true, previousMsgId: 9 });
      expect(await log.append(APP, entry(9), NOW + MINUTE)).toEqual({ appended: false, previousMsgId: 10 });
      expect(await ids(0, NOW + MINUTE)).toEqual([10]);
    });

    it('keeps at most maxEntries, the newest, and the head beyond them', async () => {
      const small = await makeStore({ maxEntries: 3 });
      for (const id of [1, 2, 3, 4, 5]) await small.append(APP, entry(id), NOW);
      expect((await small.since(APP, 0, NOW, 10)).entries.map((e) => e.msgId)).toEqual([3, 4, 5]);
      expect(await small.append(APP, entry(6), NOW)).toEqual({ appended: true, previousMsgId: 5 });
      expect(await small.since(APP, 0, NOW, 10)).toEqual({
        entries: [entry(4), entry(5), entry(6)],
        lastMsgId: 6,
      });
      expect(await small.head(APP)).toBe(6);
      // Stores made in one test may share their data (one Redis): another app starts empty.
      const one = await makeStore({ maxEntries: 1 });
      await one.append(APP + 1, entry(1), NOW);
      await one.append(APP + 1, entry(2), NOW);
      expect((await one.since(APP + 1, 0, NOW, 10)).entries.map((e) => e.msgId)).toEqual([2]);
    });

    it('forgets what the cap trimmed, also once newer entries expire', async () => {
      // since() never returns more than maxEntries anyway; what shows the cap is that 1 is gone for good.
      const small = await makeStore({ maxEntries: 2 });
      await small.append(APP, entry(1, NOW + HOUR), NOW);
      await small.append(APP, entry(2, NOW + HOUR), NOW);
      await small.append(APP, entry(3, NOW + MINUTE), NOW);
      expect(await small.since(APP, 0, NOW + MINUTE, 10)).toEqual({
        entries: [entry(2, NOW + HOUR)],
        lastMsgId: 3,
      });
    });

    it('drops expired entries before applying the cap', async () => {
      const small = await makeStore({ maxEntries: 2 });
      await small.append(APP, entry(1, NOW + HOUR), NOW);
      await small.append(APP, entry(2, NOW + MINUTE), NOW);
      await small.append(APP, entry(3, NOW + HOUR), NOW + MINUTE);
      // 2 expired and went first, so 1 still has a place.
      expect(await small.since(APP, 0, NOW + MINUTE, 10)).toEqual({
        entries: [entry(1, NOW + HOUR), entry(3, NOW + HOUR)],
        lastMsgId: 3,
      });
    });

    it('refuses a maxEntries that is not a positive integer', async () => {
      for (const maxEntries of [0, -1, 1.5, Number.NaN]) {
        await expect(Promise.resolve().then(() => makeStore({ maxEntries }))).rejects.toThrow(/maxEntries/);
      }
    });

    it('refuses malformed arguments with INVALID_ARGUMENT, changing nothing', async () => {
      await log.append(APP, entry(1), NOW);
      for (const bad of [
        { ...entry(0) },
        { ...entry(2), msgId: 2.5 },
        { ...entry(2), msgId: -3 },
        { ...entry(2), expiresAtMs: Number.NaN },
      ]) {
        const error = await log.append(APP, bad, NOW).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(PushdError);
        expect((error as PushdError).code).toBe('INVALID_ARGUMENT');
      }
      for (const [after, limit] of [
        [-1, 1],
        [1.5, 1],
        [0, Number.NaN],
      ] as const) {
        const error = await log.since(APP, after, NOW, limit).catch((e: unknown) => e);
        expect((error as PushdError).code).toBe('INVALID_ARGUMENT');
      }
      expect(await log.since(APP, 0, NOW, 10)).toEqual({ entries: [entry(1)], lastMsgId: 1 });
    });

    it('keeps apps apart', async () => {
      await log.append(APP, entry(5), NOW);
      expect(await log.append(APP + 1, entry(2), NOW)).toEqual({ appended: true, previousMsgId: 0 });
      expect(await log.append(APP + 1, entry(3), NOW)).toEqual({ appended: true, previousMsgId: 2 });
      expect(await ids(0, NOW, 10, APP)).toEqual([5]);
      expect(await ids(0, NOW, 10, APP + 1)).toEqual([2, 3]);
      expect(await log.head(APP)).toBe(5);
      expect(await log.head(APP + 1)).toBe(3);
      expect(await log.head(APP + 2)).toBe(0);
    });

    it('returns data byte for byte, of any length, as a Uint8Array', async () => {
      const all = new Uint8Array(256).map((_, i) => i);
      const large = new Uint8Array(100_000).map((_, i) => (i * 7919) % 256);
      const sources = [
        new Uint8Array([0x00]),
        new Uint8Array([0xff, 0x00, 0xff]),
        all,
        new Uint8Array(0),
        large,
      ];
      let msgId = 0;
      for (const source of sources) {
        await log.append(APP, { msgId: ++msgId, expiresAtMs: NOW + HOUR, data: source }, NOW);
      }
      // A Buffer (what the proto encoders and ioredis hand out) is taken as well.
      const buffer = Buffer.from([0xc3, 0x28, 0x00, 0xa0]);
      await log.append(APP, { msgId: ++msgId, expiresAtMs: NOW + HOUR, data: buffer }, NOW);
      const { entries } = await log.since(APP, 0, NOW, 100);
      expect(entries.map((e) => e.msgId)).toEqual([1, 2, 3, 4, 5, 6]);
      for (const [i, expected] of [...sources, buffer].entries()) {
        const got = entries[i]!.data;
        expect(got).toBeInstanceOf(Uint8Array);
        expect(got.length).toBe(expected.length);
        expect(Buffer.from(got).equals(Buffer.from(expected))).toBe(true);
      }
    });

    it('keeps msgIds exact up to Number.MAX_SAFE_INTEGER', async () => {
      const big = Number.MAX_SAFE_INTEGER - 4;
      await log.append(APP, entry(big, NOW + MINUTE), NOW);
      await log.append(APP, entry(big + 2), NOW);
      expect(await log.append(APP, entry(big + 4), NOW + MINUTE)).toEqual({
        appended: true,
        previousMsgId: big + 2,
      });
      // big expired at the last append and must be gone, the others not.
      expect(await ids(0, NOW)).toEqual([big + 2, big + 4]);
      // The same when since() is the first to see an entry expired.
      await log.append(APP + 1, entry(big, NOW + MINUTE), NOW);
      await log.append(APP + 1, entry(big + 1), NOW);
      expect(await ids(0, NOW + MINUTE, 10, APP + 1)).toEqual([big + 1]);
      expect(await ids(0, NOW, 10, APP + 1)).toEqual([big + 1]);
      expect(await ids(big + 2, NOW)).toEqual([big + 4]);
      expect(await log.head(APP)).toBe(big + 4);
      expect(await log.append(APP, entry(big + 3), NOW)).toEqual({ appended: false, previousMsgId: big + 4 });
    });

    it('keeps expiries that are not whole milliseconds', async () => {
      await log.append(APP, entry(1, NOW + MINUTE + 0.5), NOW);
      expect((await log.since(APP, 0, NOW, 10)).entries).toEqual([entry(1, NOW + MINUTE + 0.5)]);
      expect(await ids(0, NOW + MINUTE)).toEqual([1]);
      expect(await ids(0, NOW + MINUTE + 0.5)).toEqual([]);
    });

    it('returns copies that callers cannot use to change the store', async () => {
      const original = entry(1);
      await log.append(APP, original, NOW);
      original.data[0] = 0x42;
      const [first] = (await log.since(APP, 0, NOW, 10)).entries;
      first!.data[1] = 0x42;
      expect((await log.since(APP, 0, NOW, 10)).entries).toEqual([entry(1)]);
    });

    describe('broadcast rate gate', () => {
      // Real time: the Redis store keeps the gate by the server's clock. 200 ms is long enough for two
      // calls in a row to land inside the window even on a slow CI machine.
      const WINDOW = 200;

      it('admits one caller per window, tells the others how long to wait, and reopens', async () => {
        expect(await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now())).toEqual({ acquired: true });
        const refused = await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now());
        expect(refused.acquired).toBe(false);
        const { retryAfterMs } = refused as { retryAfterMs: number };
        expect(retryAfterMs).toBeGreaterThan(0);
        expect(retryAfterMs).toBeLessThanOrEqual(WINDOW);
        // Another app is not held back.
        expect(await log.tryAcquireBroadcastSlot(APP + 1, WINDOW, Date.now())).toEqual({ acquired: true });
        await sleep(retryAfterMs + 30);
        expect(await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now())).toEqual({ acquired: true });
        expect((await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now())).acquired).toBe(false);
      });

      it('is not held open longer by refused callers', async () => {
        const start = Date.now();
        expect(await log.tryAcquireBroadcastSlot(APP, WINDOW, start)).toEqual({ acquired: true });
        await sleep(WINDOW / 2);
        const refused = await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now());
        expect(refused.acquired).toBe(false);
        expect((refused as { retryAfterMs: number }).retryAfterMs).toBeLessThan(WINDOW);
        await sleep(WINDOW / 2 + 30);
        expect(await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now())).toEqual({ acquired: true });
      });

      it('is separate from the log', async () => {
        expect(await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now())).toEqual({ acquired: true });
        await log.append(APP, entry(1), NOW);
        expect(await log.head(APP)).toBe(1);
        expect((await log.tryAcquireBroadcastSlot(APP, WINDOW, Date.now())).acquired).toBe(false);
      });
    });
  });
}

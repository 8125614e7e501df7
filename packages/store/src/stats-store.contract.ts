import { beforeEach, describe, expect, it } from 'vitest';
import { dayOf } from './audience-index.js';
import { APP_DAYS_KEPT, type FunnelDevice, latencyBucket, type StatsStore } from './stats-store.js';

const APP = 1_500_000_001;

function tokens(from: number, to: number): string[] {
  return Array.from({ length: to - from }, (_, i) => (from + i).toString(16).padStart(40, '0'));
}

const ANDROID = 1;
const IOS = 2;
const TODAY = dayOf(Date.now());

function devices(from: number, to: number, platform = ANDROID, latencyMs?: number): FunnelDevice[] {
  return tokens(from, to).map((token) =>
    latencyMs === undefined ? { token, platform } : { token, platform, latencyMs },
  );
}

/** The StatsStore contract; `makeStore` must return an empty store for every test. */
export function describeStatsStoreContract(
  name: string,
  makeStore: (options?: { dedupTtlMs?: number }) => StatsStore | Promise<StatsStore>,
): void {
  describe(`StatsStore contract: ${name}`, () => {
    let store: StatsStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    it('forgets who was sent and arrived after the dedup window, but who clicked only after the push retention', async () => {
      const shortLived = await makeStore({ dedupTtlMs: 50 });
      const once = (stage: 'sent' | 'clicked', msgId: number) =>
        shortLived.add({ stage, accessId: APP, pushId: 'loop', msgId, day: TODAY, devices: devices(0, 1) });
      expect(await once('sent', 7)).toBe(1);
      expect(await once('clicked', 0)).toBe(1);
      await new Promise((resolve) => setTimeout(resolve, 150));
      // A replay of the message past the window counts again (the window is what bounds replays)...
      expect(await once('sent', 7)).toBe(1);
      // ...but a click is once per push, and a loop's devices click again week after week.
      expect(await once('clicked', 0)).toBe(0);
      expect(await shortLived.getFunnel(APP, 'loop')).toMatchObject({ sent: 2, clicked: 1 });
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

    it('counts each stage per platform, arrival latencies in buckets, each device once', async () => {
      const add = (stage: 'sent' | 'arrived' | 'clicked', list: FunnelDevice[]) =>
        store.add({ stage, accessId: APP, pushId: '7', day: TODAY, devices: list });
      expect(await add('sent', [...devices(0, 6), ...devices(6, 10, IOS)])).toBe(10);
      expect(await add('arrived', [...devices(0, 4, ANDROID, 900), ...devices(6, 7, IOS, 5_000)])).toBe(5);
      // A duplicate ack (with another latency) and a repeated token within the call count once.
      expect(
        await add('arrived', [...devices(3, 5, ANDROID, 20_000), ...devices(4, 5, ANDROID, 20_000)]),
      ).toBe(1);
      // A click counts whether or not an arrival was: device 9 never acked.
      expect(await add('clicked', [...devices(0, 2), ...devices(9, 10, IOS), ...devices(0, 1)])).toBe(3);
      expect(await add('clicked', devices(1, 2))).toBe(0);
      const funnel = await store.getFunnel(APP, '7');
      expect(funnel).toMatchObject({ sent: 10, arrived: 6, clicked: 3 });
      expect(funnel.platforms).toEqual([
        { platform: ANDROID, sent: 6, arrived: 5, clicked: 2 },
        { platform: IOS, sent: 4, arrived: 1, clicked: 1 },
      ]);
      expect(Object.fromEntries([...funnel.latency.entries()].sort(([a], [b]) => a - b))).toEqual({
        [latencyBucket(900)]: 4,
        [latencyBucket(5_000)]: 1,
        [latencyBucket(20_000)]: 1,
      });
      expect(await store.get(APP, '7')).toEqual({ sent: 10, arrived: 6 });
    });

    it('counts arrivals without a latency in the counts only', async () => {
      await store.add({ stage: 'arrived', accessId: APP, pushId: '1', day: TODAY, devices: devices(0, 3) });
      const funnel = await store.getFunnel(APP, '1');
      expect(funnel).toMatchObject({ sent: 0, arrived: 3, clicked: 0 });
      expect(funnel.latency.size).toBe(0);
    });

    it('returns an empty funnel for an unknown push', async () => {
      expect(await store.getFunnel(APP, '404')).toEqual({
        sent: 0,
        arrived: 0,
        clicked: 0,
        platforms: [],
        latency: new Map(),
      });
    });

    it("sums an app's pushes per day, each push once per day it was sent, replays carrying nothing", async () => {
      const add = (
        stage: 'sent' | 'arrived' | 'clicked',
        pushId: string,
        day: number,
        list: FunnelDevice[],
      ) => store.add({ stage, accessId: APP, pushId, day, devices: list });
      await add('sent', '1', TODAY - 1, devices(0, 5));
      await add('sent', '1', TODAY, devices(3, 8));
      await add('sent', '2', TODAY, devices(0, 2, IOS));
      await add('arrived', '1', TODAY - 1, devices(0, 4));
      await add('arrived', '1', TODAY, devices(4, 7));
      await add('clicked', '2', TODAY, devices(0, 1, IOS));
      // Replays of all of it.
      await add('sent', '1', TODAY, devices(0, 8));
      await add('arrived', '1', TODAY, devices(0, 7));
      await add('clicked', '2', TODAY, devices(0, 1, IOS));
      // Another app on the same day.
      await store.add({ stage: 'sent', accessId: APP + 1, pushId: '1', day: TODAY, devices: devices(0, 9) });
      expect(await store.getDays(APP, TODAY - 2, TODAY)).toEqual([
        { day: TODAY - 2, pushes: 0, sent: 0, arrived: 0, clicked: 0 },
        { day: TODAY - 1, pushes: 1, sent: 5, arrived: 4, clicked: 0 },
        // Push 1 sent to 3 more devices today (5..7), push 2 to 2.
        { day: TODAY, pushes: 2, sent: 5, arrived: 3, clicked: 1 },
      ]);
      expect(await store.getDays(APP + 1, TODAY, TODAY)).toEqual([
        { day: TODAY, pushes: 1, sent: 9, arrived: 0, clicked: 0 },
      ]);
    });

    it('counts a device once per message: each occurrence of a recurring push counts it again', async () => {
      // A daily push to the same two devices: occurrence 1 (msg 1024) today, occurrence 2 (msg 2048)
      // tomorrow, each replayed once.
      const add = (stage: 'sent' | 'arrived', msgId: number, day: number) =>
        store.add({ stage, accessId: APP, pushId: '5', msgId, day, devices: devices(0, 2) });
      expect(await add('sent', 1024, TODAY - 1)).toBe(2);
      expect(await add('arrived', 1024, TODAY - 1)).toBe(2);
      expect(await add('sent', 1024, TODAY - 1)).toBe(0);
      expect(await add('sent', 2048, TODAY)).toBe(2);
      expect(await add('arrived', 2048, TODAY)).toBe(2);
      expect(await add('arrived', 2048, TODAY)).toBe(0);
      expect(await store.get(APP, '5')).toEqual({ sent: 4, arrived: 4 });
      // Each day has the push, with that day's occurrence's devices.
      expect(await store.getDays(APP, TODAY - 1, TODAY)).toEqual([
        { day: TODAY - 1, pushes: 1, sent: 2, arrived: 2, clicked: 0 },
        { day: TODAY, pushes: 1, sent: 2, arrived: 2, clicked: 0 },
      ]);
    });

    it(`reads days older than ${APP_DAYS_KEPT} days as zeros`, async () => {
      const old = TODAY - APP_DAYS_KEPT;
      await store.add({ stage: 'sent', accessId: APP, pushId: '1', day: old, devices: devices(0, 2) });
      await store.add({ stage: 'sent', accessId: APP, pushId: '1', day: old + 1, devices: devices(2, 3) });
      expect(await store.getDays(APP, old, old + 1)).toEqual([
        { day: old, pushes: 0, sent: 0, arrived: 0, clicked: 0 },
        { day: old + 1, pushes: 1, sent: 1, arrived: 0, clicked: 0 },
      ]);
    });

    it('stays exact when overlapping adds of one push run concurrently', async () => {
      const calls = Array.from({ length: 20 }, (_, i) =>
        store.add({
          stage: i % 2 === 0 ? 'sent' : 'arrived',
          accessId: APP,
          pushId: '3',
          day: TODAY,
          devices: devices(i * 50, i * 50 + 300, i % 4 < 2 ? ANDROID : IOS, 100),
        }),
      );
      const added = await Promise.all(calls);
      const funnel = await store.getFunnel(APP, '3');
      expect(added.filter((_, i) => i % 2 === 0).reduce((a, b) => a + b, 0)).toBe(funnel.sent);
      expect(funnel.sent).toBe(1200);
      expect(funnel.arrived).toBe(1200);
      expect(funnel.platforms.reduce((sum, p) => sum + p.sent, 0)).toBe(funnel.sent);
      expect(funnel.latency.get(latencyBucket(100))).toBe(funnel.arrived);
      const [day] = await store.getDays(APP, TODAY, TODAY);
      expect(day).toEqual({ day: TODAY, pushes: 1, sent: funnel.sent, arrived: funnel.arrived, clicked: 0 });
    });

    it('counts large batches exactly, also when replayed concurrently', async () => {
      const batch = tokens(0, 2500);
      const results = await Promise.all([store.addSent(APP, '1', batch), store.addSent(APP, '1', batch)]);
      expect(results[0]! + results[1]!).toBe(2500);
      expect(await store.get(APP, '1')).toEqual({ sent: 2500, arrived: 0 });
    });
  });
}

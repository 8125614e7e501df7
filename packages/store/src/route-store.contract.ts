import { waitFor } from '@pushd/testkit';
import { beforeEach, describe, expect, it } from 'vitest';
import type { RouteStore } from './route-store.js';

const APP = 1_500_000_001;
const LONG = 60_000;

function token(n: number): string {
  return n.toString(16).padStart(40, '0');
}

/** A route of a session opened at `openedAtMs` (default: one fixed time for every route of a test). */
function route(nodeId: string, sessionId: string, openedAtMs = 1_700_000_000_000) {
  return { nodeId, sessionId, openedAtMs };
}

/**
 * The RouteStore contract; `makeStore` must return an empty store for every test. Expiry is checked
 * against real time (short TTLs and polling), so memory stores here must use the system clock.
 */
export function describeRouteStoreContract(
  name: string,
  makeStore: () => RouteStore | Promise<RouteStore>,
): void {
  describe(`RouteStore contract: ${name}`, () => {
    let store: RouteStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    it('sets and gets a route; a later set replaces it', async () => {
      expect(await store.get(APP, token(1))).toBeUndefined();
      await store.set(APP, token(1), route('gw-1', 's1'), LONG);
      expect(await store.get(APP, token(1))).toEqual(route('gw-1', 's1'));
      await store.set(APP, token(1), route('gw-2', 's2'), LONG);
      expect(await store.get(APP, token(1))).toEqual(route('gw-2', 's2'));
      expect(await store.get(APP + 1, token(1))).toBeUndefined();
    });

    it('round-trips ids with any characters', async () => {
      const odd = route('gw:{1}\n✓;2', '3:s:{x}é;');
      await store.set(APP, token(1), odd, LONG);
      expect(await store.get(APP, token(1))).toEqual(odd);
      await store.clear(APP, token(1), '3:s:{x}');
      expect(await store.get(APP, token(1))).toEqual(odd);
      await store.clear(APP, token(1), odd.sessionId);
      expect(await store.get(APP, token(1))).toBeUndefined();
    });

    it('gets many routes in the order asked, undefined where offline', async () => {
      await store.set(APP, token(1), route('gw-1', 's1'), LONG);
      await store.set(APP, token(3), route('gw-3', 's3'), LONG);
      expect(await store.getMany(APP, [token(3), token(2), token(1), token(3)])).toEqual([
        route('gw-3', 's3'),
        undefined,
        route('gw-1', 's1'),
        route('gw-3', 's3'),
      ]);
      expect(await store.getMany(APP, [])).toEqual([]);
    });

    it('keeps the route of a session opened later than the one whose write comes late', async () => {
      // The device's newer session (opened at 2,000) wrote its route; its older session's write (opened
      // at 1,000) arrives after it.
      await store.set(APP, token(1), route('gw-2', 'new', 2_000), LONG);
      await store.set(APP, token(1), route('gw-1', 'old', 1_000), LONG);
      expect(await store.get(APP, token(1))).toEqual(route('gw-2', 'new', 2_000));
      // The older session closing removes nothing, and the newer one keeps refreshing its route.
      await store.clear(APP, token(1), 'old');
      await store.refresh([{ accessId: APP, token: token(1), route: route('gw-2', 'new', 2_000) }], LONG);
      expect(await store.get(APP, token(1))).toEqual(route('gw-2', 'new', 2_000));
      // A session opened at the same time or later replaces it.
      await store.set(APP, token(1), route('gw-3', 'same-time', 2_000), LONG);
      expect(await store.get(APP, token(1))).toEqual(route('gw-3', 'same-time', 2_000));
      await store.set(APP, token(1), route('gw-4', 'newest', 3_000), LONG);
      expect(await store.get(APP, token(1))).toEqual(route('gw-4', 'newest', 3_000));
      // Once it is gone (cleared or expired), any session's route is written.
      await store.clear(APP, token(1), 'newest');
      await store.set(APP, token(1), route('gw-1', 'old', 1_000), LONG);
      expect(await store.get(APP, token(1))).toEqual(route('gw-1', 'old', 1_000));
    });

    it('clears a route only for the session that holds it', async () => {
      await store.set(APP, token(1), route('gw-1', 'new'), LONG);
      await store.clear(APP, token(1), 'old');
      expect(await store.get(APP, token(1))).toEqual(route('gw-1', 'new'));
      await store.clear(APP, token(1), 'new');
      expect(await store.get(APP, token(1))).toBeUndefined();
      await store.clear(APP, token(2), 'none');
    });

    it('expires a route after its TTL', async () => {
      await store.set(APP, token(1), route('gw-1', 's1'), 50);
      await waitFor(async () => (await store.get(APP, token(1))) === undefined, 'the route to expire');
    });

    it('refreshes routes still held by their sessions, writes back the ones gone, leaves others alone', async () => {
      // Same short TTL for all, set in this order: without a refresh, 1 and 2 expire no later than 3.
      await store.set(APP, token(1), route('gw-1', 's1'), 300);
      await store.set(APP, token(2), route('gw-1', 's2'), 300);
      await store.set(APP, token(3), route('gw-1', 's3'), 300);
      await store.refresh(
        [
          { accessId: APP, token: token(1), route: route('gw-1', 's1') },
          { accessId: APP, token: token(2), route: route('gw-2', 'someone-else') },
          { accessId: APP, token: token(4), route: route('gw-2', 's4') },
        ],
        LONG,
      );
      await waitFor(
        async () => (await store.get(APP, token(3))) === undefined,
        'the unrefreshed route to expire',
      );
      expect(await store.get(APP, token(2))).toBeUndefined();
      expect(await store.get(APP, token(1))).toEqual(route('gw-1', 's1'));
      // A live session whose route is gone (an older session's close removed it) gets it back.
      expect(await store.get(APP, token(4))).toEqual(route('gw-2', 's4'));
      await store.refresh([], LONG);
    });
  });
}

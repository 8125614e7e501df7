import { waitFor } from '@pushd/testkit';
import { beforeEach, describe, expect, it } from 'vitest';
import type { RouteStore } from './route-store.js';

const APP = 1_500_000_001;
const LONG = 60_000;

function token(n: number): string {
  return n.toString(16).padStart(40, '0');
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
      await store.set(APP, token(1), { nodeId: 'gw-1', sessionId: 's1' }, LONG);
      expect(await store.get(APP, token(1))).toEqual({ nodeId: 'gw-1', sessionId: 's1' });
      await store.set(APP, token(1), { nodeId: 'gw-2', sessionId: 's2' }, LONG);
      expect(await store.get(APP, token(1))).toEqual({ nodeId: 'gw-2', sessionId: 's2' });
      expect(await store.get(APP + 1, token(1))).toBeUndefined();
    });

    it('round-trips ids with any characters', async () => {
      const route = { nodeId: 'gw:{1}\n✓', sessionId: '3:s:{x}é' };
      await store.set(APP, token(1), route, LONG);
      expect(await store.get(APP, token(1))).toEqual(route);
      await store.clear(APP, token(1), '3:s:{x}');
      expect(await store.get(APP, token(1))).toEqual(route);
      await store.clear(APP, token(1), route.sessionId);
      expect(await store.get(APP, token(1))).toBeUndefined();
    });

    it('gets many routes in the order asked, undefined where offline', async () => {
      await store.set(APP, token(1), { nodeId: 'gw-1', sessionId: 's1' }, LONG);
      await store.set(APP, token(3), { nodeId: 'gw-3', sessionId: 's3' }, LONG);
      expect(await store.getMany(APP, [token(3), token(2), token(1), token(3)])).toEqual([
        { nodeId: 'gw-3', sessionId: 's3' },
        undefined,
        { nodeId: 'gw-1', sessionId: 's1' },
        { nodeId: 'gw-3', sessionId: 's3' },
      ]);
      expect(await store.getMany(APP, [])).toEqual([]);
    });

    it('clears a route only for the session that holds it', async () => {
      await store.set(APP, token(1), { nodeId: 'gw-1', sessionId: 'new' }, LONG);
      await store.clear(APP, token(1), 'old');
      expect(await store.get(APP, token(1))).toEqual({ nodeId: 'gw-1', sessionId: 'new' });
      await store.clear(APP, token(1), 'new');
      expect(await store.get(APP, token(1))).toBeUndefined();
      await store.clear(APP, token(2), 'none');
    });

    it('expires a route after its TTL', async () => {
      await store.set(APP, token(1), { nodeId: 'gw-1', sessionId: 's1' }, 50);
      await waitFor(async () => (await store.get(APP, token(1))) === undefined, 'the route to expire');
    });

    it('refreshes only routes still held by the given session', async () => {
      // Same short TTL for all, set in this order: without a refresh, 1 and 2 expire no later than 3.
      await store.set(APP, token(1), { nodeId: 'gw-1', sessionId: 's1' }, 300);
      await store.set(APP, token(2), { nodeId: 'gw-1', sessionId: 's2' }, 300);
      await store.set(APP, token(3), { nodeId: 'gw-1', sessionId: 's3' }, 300);
      await store.refresh(
        [
          { accessId: APP, token: token(1), sessionId: 's1' },
          { accessId: APP, token: token(2), sessionId: 'someone-else' },
          { accessId: APP, token: token(4), sessionId: 's4' },
        ],
        LONG,
      );
      await waitFor(
        async () => (await store.get(APP, token(3))) === undefined,
        'the unrefreshed route to expire',
      );
      expect(await store.get(APP, token(2))).toBeUndefined();
      expect(await store.get(APP, token(1))).toEqual({ nodeId: 'gw-1', sessionId: 's1' });
      // Refresh never creates a route.
      expect(await store.get(APP, token(4))).toBeUndefined();
      await store.refresh([], LONG);
    });
  });
}

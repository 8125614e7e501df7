import { ManualClock } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import { IDEMPOTENCY_TTL_MS } from './push-store.js';
import { MemoryPushStore } from './push-store-memory.js';

const APP = 1_500_000_001;

describe('memory push store idempotency keys, by its clock', () => {
  it('remembers a key 24 hours after its claim, whatever happened to it since', async () => {
    expect(IDEMPOTENCY_TTL_MS).toBe(24 * 3_600_000);
    const clock = new ManualClock();
    const pushes = new MemoryPushStore({ clock });
    expect(await pushes.claimIdempotencyKey(APP, 'k', '1')).toEqual({ claimed: true });
    clock.advance(IDEMPOTENCY_TTL_MS - 1000);
    // Completing keeps the expiry of the claim.
    await pushes.completeIdempotencyKey(APP, 'k', '1', new Uint8Array([0, 255]));
    clock.advance(999);
    expect(await pushes.claimIdempotencyKey(APP, 'k', '2')).toEqual({
      claimed: false,
      pushId: '1',
      response: new Uint8Array([0, 255]),
    });
    clock.advance(1);
    expect(await pushes.claimIdempotencyKey(APP, 'k', '2')).toEqual({ claimed: true });
    // The new claim lives 24 hours from now; the old holder can no longer complete or release it.
    await pushes.completeIdempotencyKey(APP, 'k', '1', new Uint8Array([1]));
    await pushes.releaseIdempotencyKey(APP, 'k', '1');
    clock.advance(IDEMPOTENCY_TTL_MS - 1);
    expect(await pushes.claimIdempotencyKey(APP, 'k', '3')).toEqual({ claimed: false, pushId: '2' });
    clock.advance(1);
    expect(await pushes.claimIdempotencyKey(APP, 'k', '3')).toEqual({ claimed: true });
  });

  it('ignores complete and release of an expired claim', async () => {
    const clock = new ManualClock();
    const pushes = new MemoryPushStore({ clock });
    await pushes.claimIdempotencyKey(APP, 'a', '1');
    await pushes.claimIdempotencyKey(APP, 'b', '1');
    clock.advance(IDEMPOTENCY_TTL_MS);
    await pushes.completeIdempotencyKey(APP, 'a', '1', new Uint8Array([1]));
    await pushes.releaseIdempotencyKey(APP, 'b', '1');
    expect(await pushes.claimIdempotencyKey(APP, 'a', '2')).toEqual({ claimed: true });
    expect(await pushes.claimIdempotencyKey(APP, 'b', '2')).toEqual({ claimed: true });
  });
});

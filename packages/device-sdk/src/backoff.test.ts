import { describe, expect, it } from 'vitest';
import { reconnectDelayMs } from './backoff.js';

describe('reconnectDelayMs', () => {
  it('doubles from the initial delay up to the maximum, jittered within the upper half of each step', () => {
    expect([0, 1, 2, 3].map((attempt) => reconnectDelayMs(attempt, 500, 30_000, () => 1))).toEqual([
      500, 1_000, 2_000, 4_000,
    ]);
    expect(reconnectDelayMs(0, 500, 30_000, () => 0)).toBe(250);
    expect(reconnectDelayMs(10, 500, 30_000, () => 1)).toBe(30_000);
    expect(reconnectDelayMs(10_000, 500, 30_000, () => 0)).toBe(15_000);
  });
});

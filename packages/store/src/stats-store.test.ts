import { describe, expect, it } from 'vitest';
import { latencyBucket, latencyBucketUpperMs, latencyPercentile, MAX_LATENCY_BUCKET } from './stats-store.js';

/** A histogram of these latencies, as the stores keep it. */
function histogram(latencies: number[]): Map<number, number> {
  const buckets = new Map<number, number>();
  for (const ms of latencies) buckets.set(latencyBucket(ms), (buckets.get(latencyBucket(ms)) ?? 0) + 1);
  return buckets;
}

describe('arrival latency buckets', () => {
  it('puts a latency in the bucket whose upper bound is the first at or above it, at most 19 % above', () => {
    for (const ms of [2, 3, 17, 100, 999, 1000, 1024, 1025, 60_000, 3_600_000, 72 * 3_600_000]) {
      const bucket = latencyBucket(ms);
      expect(latencyBucketUpperMs(bucket)).toBeGreaterThanOrEqual(ms);
      // The previous bucket's exact bound (the reported one is rounded up to whole ms).
      expect(2 ** ((bucket - 1) / 4)).toBeLessThan(ms);
      expect(latencyBucketUpperMs(bucket) / ms).toBeLessThanOrEqual(1.19 + 1 / ms);
    }
    expect(latencyBucketUpperMs(latencyBucket(1024))).toBe(1024);
    expect(latencyBucketUpperMs(latencyBucket(1000))).toBe(1024);
  });

  it('takes clock skew below 1 ms into bucket 0 and caps at the last bucket', () => {
    expect(latencyBucket(-40)).toBe(0);
    expect(latencyBucket(0)).toBe(0);
    expect(latencyBucket(1)).toBe(0);
    expect(latencyBucket(Number.NaN)).toBe(0);
    expect(latencyBucket(365 * 86_400_000)).toBe(MAX_LATENCY_BUCKET);
  });
});

describe('latencyPercentile', () => {
  it('is 0 for no arrivals', () => {
    expect(latencyPercentile(new Map(), 0.5)).toBe(0);
  });

  it('gives p50, p90 and p99 as the upper bounds of the buckets holding those ranks', () => {
    // 100 arrivals: 1..100 ms (one each).
    const h = histogram(Array.from({ length: 100 }, (_, i) => i + 1));
    // The 50th smallest is 50 ms: its bucket's upper bound is 54 (2^(23/4) = 53.8).
    expect(latencyPercentile(h, 0.5)).toBe(54);
    expect(latencyPercentile(h, 0.9)).toBe(91); // 90 ms -> 2^(26/4) = 90.5
    expect(latencyPercentile(h, 0.99)).toBe(108); // 99 ms -> 2^(27/4) = 107.6
    expect(latencyPercentile(h, 1)).toBe(108);
  });

  it('follows a skewed distribution: most fast, a tail of devices that came back later', () => {
    const h = histogram([...Array(95).fill(120), ...Array(4).fill(30_000), 7_200_000]);
    expect(latencyPercentile(h, 0.5)).toBe(latencyBucketUpperMs(latencyBucket(120)));
    expect(latencyPercentile(h, 0.9)).toBe(latencyBucketUpperMs(latencyBucket(120)));
    expect(latencyPercentile(h, 0.99)).toBe(latencyBucketUpperMs(latencyBucket(30_000)));
    expect(latencyPercentile(h, 1)).toBe(latencyBucketUpperMs(latencyBucket(7_200_000)));
  });

  it('is at most 19 % above the exact percentile of a sample', () => {
    const sample = Array.from({ length: 1000 }, (_, i) => Math.round(10 * 1.01 ** i));
    const h = histogram(sample);
    for (const q of [0.5, 0.9, 0.99]) {
      const exact = sample[Math.ceil(q * sample.length) - 1] as number;
      const estimate = latencyPercentile(h, q);
      expect(estimate).toBeGreaterThanOrEqual(exact);
      expect(estimate / exact).toBeLessThanOrEqual(1.19);
    }
  });
});

/**
 * Delay before reconnect attempt `attempt` (0 for the first): exponential from `initialDelayMs`, doubling up
 * to `maxDelayMs`, with "equal jitter": a random point in the upper half of the step. The jitter spreads a
 * gateway's devices out when it restarts (tens of thousands reconnect at once); keeping the lower half
 * empty keeps the delay growing, so a device that keeps failing backs off for real.
 */
export function reconnectDelayMs(
  attempt: number,
  initialDelayMs: number,
  maxDelayMs: number,
  random: () => number = Math.random,
): number {
  // 2 ** 30 already exceeds any sane maximum; capping the exponent keeps the arithmetic finite.
  const step = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(attempt, 30));
  return step / 2 + (random() * step) / 2;
}

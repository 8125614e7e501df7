import { PushdError } from '@pushd/common';
import type { ReadDurableOptions } from './bus.js';
import { isValidSubscribeSubject } from './subject-match.js';

/** JetStream's default duplicate window; MemoryBus uses the same so that both dedupe alike. */
export const DEFAULT_DUPLICATE_WINDOW_MS = 120_000;

/**
 * Both buses refuse the same dedupKeys, those NATS would not keep as given: a header value cannot hold line
 * breaks and loses surrounding whitespace (two keys would then collide), and an empty Nats-Msg-Id is not
 * sent at all (no deduplication, silently).
 */
export function checkDedupKey(key: string): void {
  if (key === '' || /[\r\n]/.test(key) || key.trim() !== key) {
    throw new PushdError(
      'INVALID_ARGUMENT',
      `dedupKey must be non-empty, without line breaks or surrounding whitespace, got ${JSON.stringify(key)}`,
    );
  }
}

/** The duplicate window of a stream: NATS refuses one longer than the stream keeps its messages. */
export function duplicateWindowOf(windowMs: number | undefined, maxAgeMs: number): number {
  const window = windowMs ?? DEFAULT_DUPLICATE_WINDOW_MS;
  if (!(window > 0)) throw new Error(`duplicateWindowMs must be positive, got ${window}`);
  return Math.min(window, maxAgeMs);
}

/** Throws INVALID_ARGUMENT unless `maxAckPending` is absent or a positive integer. */
export function checkMaxAckPending(maxAckPending: number | undefined): void {
  if (maxAckPending === undefined) return;
  if (!Number.isInteger(maxAckPending) || maxAckPending < 1) {
    throw new PushdError(
      'INVALID_ARGUMENT',
      `maxAckPending must be a positive integer, got ${maxAckPending}`,
    );
  }
}

/** Throws INVALID_ARGUMENT unless `startWithinMs` is absent or a positive, finite number of ms. */
export function checkStartWithinMs(startWithinMs: number | undefined): void {
  if (startWithinMs === undefined) return;
  if (!(startWithinMs > 0) || !Number.isFinite(startWithinMs)) {
    throw new PushdError(
      'INVALID_ARGUMENT',
      `startWithinMs must be a positive number of ms, got ${startWithinMs}`,
    );
  }
}

/**
 * Throws INVALID_ARGUMENT for options of readDurable that neither bus could read with: both refuse them
 * alike, before asking anything (a NATS server would refuse a bad filter only as a failed request).
 */
export function checkReadDurable(options: ReadDurableOptions): void {
  const { afterSeq, maxMessages, filterSubject } = options;
  if (!Number.isSafeInteger(afterSeq) || afterSeq < 0) {
    throw new PushdError('INVALID_ARGUMENT', `afterSeq must be a non-negative integer, got ${afterSeq}`);
  }
  if (!Number.isSafeInteger(maxMessages) || maxMessages < 1) {
    throw new PushdError('INVALID_ARGUMENT', `maxMessages must be a positive integer, got ${maxMessages}`);
  }
  if (filterSubject !== undefined && !isValidSubscribeSubject(filterSubject)) {
    throw new PushdError('INVALID_ARGUMENT', `invalid filter subject ${JSON.stringify(filterSubject)}`);
  }
}

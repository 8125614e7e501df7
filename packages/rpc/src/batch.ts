import { PushdError } from '@pushd/common';
import type { Status } from '@pushd/proto';
import { fromStatus, toStatus } from './errors.js';

/**
 * Most items one batch call may carry (AuthenticateDevices, FetchPendingBatch). Bounds what one call holds
 * a server for and the size of its reply (a FetchPending answer carries up to two messages of 4 KB); a
 * caller with more sends several calls.
 */
export const MAX_BATCH_ITEMS = 500;

/**
 * One item's result in a batch reply: AuthenticateDeviceResult and its kin, whose `outcome` oneof is the
 * item's response or its error.
 */
export interface BatchResult<Response> {
  outcome?: { $case: 'response'; value: Response } | { $case: 'error'; value: Status } | undefined;
}

/**
 * Refuses an empty batch and one over MAX_BATCH_ITEMS with INVALID_ARGUMENT (metadata: field, limit),
 * before any of its items is looked at: such a call does nothing.
 */
export function checkBatchSize(field: string, count: number): void {
  const metadata = { field, limit: String(MAX_BATCH_ITEMS) };
  if (count === 0) {
    throw new PushdError('INVALID_ARGUMENT', `${field}: at least one is required`, { metadata });
  }
  if (count > MAX_BATCH_ITEMS) {
    throw new PushdError('INVALID_ARGUMENT', `${field}: at most ${MAX_BATCH_ITEMS} per call (got ${count})`, {
      metadata,
    });
  }
}

/** An item's settled result as its result in the reply: the response, or its error as google.rpc.Status. */
export function toBatchResult<Response>(settled: PromiseSettledResult<Response>): BatchResult<Response> {
  return {
    outcome:
      settled.status === 'fulfilled'
        ? { $case: 'response', value: settled.value }
        : { $case: 'error', value: toStatus(settled.reason) },
  };
}

/**
 * A result of a batch reply as the settled result of the single call: its response, or the PushdError the
 * single call would have thrown (same code, message and metadata).
 */
export function fromBatchResult<Response>(result: BatchResult<Response>): PromiseSettledResult<Response> {
  const outcome = result.outcome;
  if (outcome === undefined) {
    return { status: 'rejected', reason: new PushdError('INTERNAL', 'a batch reply item has no outcome') };
  }
  return outcome.$case === 'response'
    ? { status: 'fulfilled', value: outcome.value }
    : { status: 'rejected', reason: fromStatus(outcome.value) };
}

/** What `work` returns, or what it throws, as a settled result (Promise.allSettled for synchronous work). */
export function settle<T>(work: () => T): PromiseSettledResult<T> {
  try {
    return { status: 'fulfilled', value: work() };
  } catch (error) {
    return { status: 'rejected', reason: error };
  }
}

/** The value of a settled result, or its reason thrown: a batch path's item answering a single call. */
export function unwrapSettled<T>(settled: PromiseSettledResult<T>): T {
  if (settled.status === 'rejected') throw settled.reason;
  return settled.value;
}

import { PushdError } from '@pushd/common';

/**
 * Server replies that mean "not now" rather than "never": memory full, a replica or a loading node, a
 * cluster reconfiguring, a busy script. Every other reply error is a bug or corrupt data (INTERNAL).
 */
const TRANSIENT_REPLY = /^(OOM|READONLY|LOADING|CLUSTERDOWN|TRYAGAIN|MASTERDOWN|BUSY|NOREPLICAS|MOVED|ASK)\b/;

/**
 * The one translation of Redis failures for all Redis stores: connection loss, timeouts and transient
 * server states become UNAVAILABLE (callers retry), other server errors INTERNAL; the ioredis error is
 * kept as `cause`.
 */
export function storeError(error: unknown): PushdError {
  if (error instanceof PushdError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const isReply = error instanceof Error && error.name === 'ReplyError';
  const code = isReply && !TRANSIENT_REPLY.test(message) ? 'INTERNAL' : 'UNAVAILABLE';
  return new PushdError(code, `redis: ${message}`, { cause: error });
}

/** Awaits a Redis call, translating its failure. Wrap only the Redis promise, not decoding of replies. */
export async function redisCall<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (error) {
    throw storeError(error);
  }
}

/**
 * One command per key, replies in the order of `keys`; the first failed command fails the whole call.
 * The commands go through the client's auto-pipelining: issued in one tick, they leave in one write per
 * Redis node together with every other command of that tick (the pushes, lookups and acknowledgements
 * being handled at the same time), instead of a pipeline of their own with its own write. On a cluster
 * ioredis groups them by the node serving the slot of each command's first argument, which must be its
 * key (every key of a script passed here shares that key's hash tag).
 */
export async function commandPerKey<T>(
  keys: string[],
  command: (key: string, index: number) => Promise<T>,
): Promise<T[]> {
  if (keys.length === 0) return [];
  return redisCall(Promise.all(keys.map(command)));
}

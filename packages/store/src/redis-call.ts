import { PushdError } from '@pushd/common';
import calculateSlot from 'cluster-key-slot';
import { type ChainableCommander, Cluster } from 'ioredis';
import type { RedisClient } from './redis-client.js';

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

/** Executes a pipeline and returns its replies in order; the first failed command fails the whole call. */
export async function execPipeline(pipeline: ChainableCommander): Promise<unknown[]> {
  const results = await redisCall(pipeline.exec());
  if (!results) throw new PushdError('UNAVAILABLE', 'redis: pipeline was discarded');
  return results.map(([error, value]) => {
    if (error) throw storeError(error);
    return value;
  });
}

/**
 * One command per key, in one round trip per Redis node; replies in the order of `keys`. On a single
 * Redis that is one pipeline. On a cluster a pipeline must stay within one node's slots, so keys are
 * grouped by the node serving their slot and the groups' pipelines run concurrently.
 */
export async function pipelinePerKey(
  client: RedisClient,
  keys: string[],
  queue: (pipeline: ChainableCommander, key: string, index: number) => void,
): Promise<unknown[]> {
  if (keys.length === 0) return [];
  if (!(client instanceof Cluster)) {
    const pipeline = client.pipeline();
    for (const [index, key] of keys.entries()) queue(pipeline, key, index);
    return execPipeline(pipeline);
  }
  const groups = new Map<string, number[]>();
  keys.forEach((key, index) => {
    const slot = calculateSlot(key);
    // Before the slot map is known, group per slot: always valid, merely more pipelines.
    const nodes = client.slots[slot];
    const group = nodes && nodes.length > 0 ? nodes.join(';') : `slot:${slot}`;
    const members = groups.get(group);
    if (members) members.push(index);
    else groups.set(group, [index]);
  });
  const replies: unknown[] = new Array(keys.length);
  await Promise.all(
    [...groups.values()].map(async (indexes) => {
      const pipeline = client.pipeline();
      for (const index of indexes) queue(pipeline, keys[index]!, index);
      const results = await execPipeline(pipeline);
      indexes.forEach((index, position) => {
        replies[index] = results[position];
      });
    }),
  );
  return replies;
}

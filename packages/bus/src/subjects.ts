import type { DurableStreamConfig } from './bus.js';

/**
 * Every NATS subject the system uses is built here and nowhere else. Layout (docs/architecture.md):
 *
 *   pushd.node.<node_id>.deliver   dispatch -> one gateway node: messages for devices it holds
 *   pushd.node.<node_id>.tags      tag service -> one gateway node: tags of devices it holds changed
 *   pushd.broadcast.<access_id>    dispatch -> every gateway: a broadcast or tag push of one app
 *   pushd.pushes.<partition>       durable (stream PUSHD_PUSHES): accepted pushes, one ordered log per
 *                                  partition of apps, applied in order by dispatch
 *   pushd.pushlog.applied.<partition>  dispatch -> every dispatch: entries of the partition up to a seq
 *                                  were applied ahead of their deliveries (look-ahead), not to apply again
 *   pushd.events.<source>          durable (stream PUSHD_EVENTS): events from gateways (arrivals; presence:
 *                                  connects and disconnects), dispatch and registry
 */

const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/** A subject token must not contain '.', '*', '>' or whitespace, which would change the subject's meaning. */
function token(kind: string, value: string): string {
  if (!TOKEN.test(value)) throw new Error(`invalid ${kind} for a NATS subject: ${JSON.stringify(value)}`);
  return value;
}

/**
 * Who publishes on `pushd.events.<source>`: gateways publish arrivals on 'gateway' and connects and
 * disconnects on 'presence' (apart, so that consumers of either can filter out the other's volume).
 */
export type EventSource = 'gateway' | 'presence' | 'dispatch' | 'registry';

export const subjects = {
  nodeDelivery: (nodeId: string): string => `pushd.node.${token('node id', nodeId)}.deliver`,
  nodeTags: (nodeId: string): string => `pushd.node.${token('node id', nodeId)}.tags`,
  broadcast: (accessId: number): string => `pushd.broadcast.${accessId}`,
  allBroadcasts: 'pushd.broadcast.*',
  pushes: (partition: number): string => `pushd.pushes.${partition}`,
  pushLogApplied: (partition: number): string => `pushd.pushlog.applied.${partition}`,
  allPushLogApplied: 'pushd.pushlog.applied.*',
  events: (source: EventSource): string => `pushd.events.${source}`,
  allEvents: 'pushd.events.>',
} as const;

export const streams: { readonly events: DurableStreamConfig; readonly pushes: DurableStreamConfig } = {
  /**
   * Delivery, presence and registry events (sent, arrived, connected, disconnected, registered,
   * unregistered), consumed by stats, dispatch and tag.
   */
  events: {
    name: 'PUSHD_EVENTS',
    subjects: ['pushd.events.>'],
    maxAgeMs: 7 * 24 * 3600 * 1000,
  },
  /**
   * Accepted pushes waiting to be applied (dispatch), in entries of pushes accepted together. The stream
   * sequence gives the msg_ids (sequence * 1024 + place in the entry), so one stream orders every app's
   * messages. Kept 72 hours, the longest a message may wait for a device: a push not
   * applied by then has expired anyway.
   */
  pushes: {
    name: 'PUSHD_PUSHES',
    subjects: ['pushd.pushes.*'],
    maxAgeMs: 72 * 3600 * 1000,
  },
};

/**
 * The push-log partition of an app. All pushes of an app share one partition, which one dispatch instance
 * at a time applies in order; apps spread over partitions so that instances share the work.
 */
export function pushPartition(accessId: number, partitions: number): number {
  return accessId % partitions;
}

/** Node ids name a gateway in subjects and routes: letters, digits, '_' and '-', at most 64. */
export function isValidNodeId(value: string): boolean {
  return TOKEN.test(value);
}

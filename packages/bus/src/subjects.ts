import type { DurableStreamConfig } from './bus.js';

/**
 * Every NATS subject the system uses is built here and nowhere else. Layout (docs/architecture.md):
 *
 *   pushd.node.<node_id>.deliver   dispatch -> one gateway node: messages for devices it holds
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
  events: (source: EventSource): string => `pushd.events.${source}`,
  allEvents: 'pushd.events.>',
} as const;

export const streams: { readonly events: DurableStreamConfig } = {
  /**
   * Delivery, presence and registry events (sent, arrived, connected, disconnected, registered,
   * unregistered), consumed by stats, dispatch and tag.
   */
  events: {
    name: 'PUSHD_EVENTS',
    subjects: ['pushd.events.>'],
    maxAgeMs: 7 * 24 * 3600 * 1000,
  },
};

/** Node ids name a gateway in subjects and routes: letters, digits, '_' and '-', at most 64. */
export function isValidNodeId(value: string): boolean {
  return TOKEN.test(value);
}

import { HotCounter } from '@pushd/common';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface GatewayMetrics {
  connections: Gauge<'platform'>;
  connects: Counter<'kind'>;
  disconnects: Counter<'reason'>;
  upgradeFailures: Counter<'code'>;
  /** Hot: counted per frame and per delivered message (HotCounter). */
  framesIn: HotCounter<'type'>;
  framesOut: HotCounter<'type'>;
  bytesOut: HotCounter;
  messagesDelivered: HotCounter<'source'>;
  duplicatesDropped: Counter;
  clicksUnattributed: Counter;
  deviceEventsIgnored: Counter<'type'>;
  gapRefetches: Counter;
  lateMessagesDropped: Counter;
  interruptionResyncs: Counter;
  catchUpRetries: Counter;
  broadcastsReceived: Counter;
  tagReloads: Counter;
  slowConsumers: Counter;
  deliveryLatency: Histogram<'source'>;
  sessionSetup: Histogram;
  batchItems: Histogram<'call'>;
  eventPublishFailures: Counter;
  eventsDropped: Counter;
}

/** Names follow gateway_<noun>_<unit|total>; labels stay low-cardinality (never a token or an id). */
export function createGatewayMetrics(registry: Registry): GatewayMetrics {
  const registers = [registry];
  return {
    connections: new Gauge({
      name: 'gateway_connections',
      help: 'Device sessions open on this gateway, by platform.',
      labelNames: ['platform'],
      registers,
    }),
    connects: new Counter({
      name: 'gateway_connects_total',
      help: 'Sessions established, by kind (session = reconnect with a credential, registration).',
      labelNames: ['kind'],
      registers,
    }),
    disconnects: new Counter({
      name: 'gateway_disconnects_total',
      help: 'Sessions closed, by reason (the catalogue code, or closed_by_device).',
      labelNames: ['reason'],
      registers,
    }),
    upgradeFailures: new Counter({
      name: 'gateway_upgrade_failures_total',
      help: 'WebSocket upgrades refused, by catalogue code.',
      labelNames: ['code'],
      registers,
    }),
    framesIn: new HotCounter({
      name: 'gateway_frames_in_total',
      help: 'Frames received from devices, by type (malformed when they could not be decoded).',
      labelNames: ['type'],
      registers,
    }),
    framesOut: new HotCounter({
      name: 'gateway_frames_out_total',
      help: 'Frames sent to devices, by type.',
      labelNames: ['type'],
      registers,
    }),
    bytesOut: new HotCounter({
      name: 'gateway_bytes_out_total',
      help: 'Bytes of frames sent to devices.',
      registers,
    }),
    messagesDelivered: new HotCounter({
      name: 'gateway_messages_delivered_total',
      help: 'Messages written to device connections, by source (live, or pending from the offline window).',
      labelNames: ['source'],
      registers,
    }),
    duplicatesDropped: new Counter({
      name: 'gateway_duplicates_dropped_total',
      help: 'Live messages not written because the session had already delivered them.',
      registers,
    }),
    clicksUnattributed: new Counter({
      name: 'gateway_clicks_unattributed_total',
      help: 'Click frames dropped uncounted: no push_id, and no unacknowledged message of that msg_id on the connection.',
      registers,
    }),
    deviceEventsIgnored: new Counter({
      name: 'gateway_device_events_ignored_total',
      help: 'Acks of msg ids a session has no record of delivering, and clicks, ignored past the per-session budget of each heartbeat interval (a device flooding made-up ids), by type (ack, click).',
      labelNames: ['type'],
      registers,
    }),
    broadcastsReceived: new Counter({
      name: 'gateway_broadcasts_received_total',
      help: 'Broadcast and tag pushes evaluated against the devices of their app held here.',
      registers,
    }),
    tagReloads: new Counter({
      name: 'gateway_tag_reloads_total',
      help: 'Device tag sets reloaded because the tag service announced a change for a device held here.',
      registers,
    }),
    gapRefetches: new Counter({
      name: 'gateway_gap_refetches_total',
      help: 'Pending messages fetched again because a live message arrived ahead of one not yet seen.',
      registers,
    }),
    lateMessagesDropped: new Counter({
      name: 'gateway_late_messages_dropped_total',
      help: 'Messages that could no longer be delivered in msg id order (a later one was written to the device first, or a second fetch did not find one a live message chained onto): never written, reported to the device in Deliver.dropped.',
      registers,
    }),
    interruptionResyncs: new Counter({
      name: 'gateway_interruption_resyncs_total',
      help: 'Live sessions made to fetch their pending messages because the NATS connection was interrupted (what was published meanwhile is lost).',
      registers,
    }),
    catchUpRetries: new Counter({
      name: 'gateway_catch_up_retries_total',
      help: 'FetchPending calls retried because dispatch was unavailable or too slow (the session waits, buffering).',
      registers,
    }),
    slowConsumers: new Counter({
      name: 'gateway_send_queue_drops_total',
      help: 'Connections dropped because their send queue exceeded the cap (slow consumers).',
      registers,
    }),
    deliveryLatency: new Histogram({
      name: 'gateway_delivery_latency_seconds',
      help: 'From push acceptance (sent_at) to the message being written to the device connection, by source (live; pending = kept while the device was offline, so as long as it was away).',
      labelNames: ['source'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    sessionSetup: new Histogram({
      name: 'gateway_session_setup_seconds',
      help: 'From a session upgrade request to its Connected frame and offline messages written to the connection (the credential check, the route write, the catch-up), for sessions that went live; registration connections are not counted.',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    batchItems: new Histogram({
      name: 'gateway_batch_items',
      help: 'Requests per batched call of the handshake path, by call (authenticate_devices: session upgrades sharing a registry AuthenticateDevices; fetch_pending_batch: catch-ups sharing a dispatch FetchPendingBatch).',
      labelNames: ['call'],
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 500],
      registers,
    }),
    eventPublishFailures: new Counter({
      name: 'gateway_event_publish_failures_total',
      help: 'Event batches that could not be stored in the durable stream and were retried.',
      registers,
    }),
    eventsDropped: new Counter({
      name: 'gateway_events_dropped_total',
      help: 'Delivery and presence events dropped because the durable stream was unreachable for too long.',
      registers,
    }),
  };
}

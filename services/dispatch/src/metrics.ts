import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface DispatchMetrics {
  pushes: Counter<'audience' | 'outcome'>;
  pushDuration: Histogram<'audience'>;
  routed: Counter<'route'>;
  eventPublishFailures: Counter;
  acksRecovered: Counter;
  eventsConsumed: Counter<'type'>;
  appliedAgain: Counter;
  applyLag: Histogram<'kind'>;
  applyFailures: Counter;
  applyEntries: Histogram;
  entriesSkipped: Counter;
  occurrencesNotClaimed: Counter;
  pushLogBacklog: Gauge;
  scheduledPushes: Gauge;
  scheduleOverdue: Gauge;
  scheduleLateness: Histogram;
  scheduledFired: Counter<'outcome'>;
  scheduleFailures: Counter;
}

export function createDispatchMetrics(registry: Registry): DispatchMetrics {
  return {
    pushes: new Counter({
      name: 'dispatch_pushes_total',
      help: 'Push calls, by audience type and outcome (accepted or the error code).',
      labelNames: ['audience', 'outcome'],
      registers: [registry],
    }),
    pushDuration: new Histogram({
      name: 'dispatch_push_duration_seconds',
      help: 'Time to accept a push (validate, resolve devices, append to the push log), by audience type.',
      labelNames: ['audience'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: [registry],
    }),
    routed: new Counter({
      name: 'dispatch_deliveries_routed_total',
      help: 'Messages routed to a device: online (published to its gateway) or offline (kept in its window).',
      labelNames: ['route'],
      registers: [registry],
    }),
    eventPublishFailures: new Counter({
      name: 'dispatch_event_publish_failures_total',
      help: 'Delivery events that could not be published to the durable stream (stats will undercount).',
      registers: [registry],
    }),
    acksRecovered: new Counter({
      name: 'dispatch_acks_recovered_total',
      help: 'Window messages a reconnecting device said it processed (its last_msg_id) whose acks were lost with its previous connection: taken out of the window and counted as arrived.',
      registers: [registry],
    }),
    eventsConsumed: new Counter({
      name: 'dispatch_events_consumed_total',
      help: 'Events applied from the durable stream, by type.',
      labelNames: ['type'],
      registers: [registry],
    }),
    appliedAgain: new Counter({
      name: 'dispatch_apply_repeated_total',
      help:
        'Device windows that already held a message being applied (a push applied again after a dispatch ' +
        'instance died or timed out mid-way); the message is routed again, devices drop the duplicate.',
      registers: [registry],
    }),
    applyLag: new Histogram({
      name: 'dispatch_apply_lag_seconds',
      help:
        'Time from accepting a push to applying it (stored in windows or the broadcast log, routed), by ' +
        'kind (targeted, broadcast): the push log backlog as latency.',
      labelNames: ['kind'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    pushLogBacklog: new Gauge({
      name: 'dispatch_push_log_backlog',
      help:
        'Accepted pushes not applied yet, over every push-log partition (read from JetStream every 5 s; ' +
        'the same on every instance: aggregate with max).',
      registers: [registry],
    }),
    applyFailures: new Counter({
      name: 'dispatch_apply_failures_total',
      help: 'Push log entries whose application failed and will be retried (Redis or NATS unavailable).',
      registers: [registry],
    }),
    applyEntries: new Histogram({
      name: 'dispatch_apply_entries',
      help:
        'Push-log entries applied together by one application: 1 for an entry applied on its own, more ' +
        'when the applier took the entries waiting behind a delivery with it (look-ahead).',
      buckets: [1, 2, 4, 8, 16, 32, 64],
      registers: [registry],
    }),
    occurrencesNotClaimed: new Counter({
      name: 'dispatch_scheduled_occurrences_not_claimed_total',
      help:
        'Push-log entries of a scheduled occurrence not delivered because another entry of the same ' +
        'occurrence claimed it (appended twice past the deduplication window) or the push moved on ' +
        '(applied already, cancelled).',
      registers: [registry],
    }),
    entriesSkipped: new Counter({
      name: 'dispatch_push_log_entries_skipped_total',
      help:
        'Push-log deliveries acknowledged without applying: their entry was applied ahead, with an ' +
        'earlier one (look-ahead), by this instance or another (its marker received).',
      registers: [registry],
    }),
    scheduledPushes: new Gauge({
      name: 'dispatch_scheduled_pushes',
      help:
        'Occurrences of scheduled and recurring pushes waiting to be fired (or being fired), over all ' +
        'partitions. Every dispatch instance reports the same figure: aggregate with max, not sum.',
      registers: [registry],
    }),
    scheduleOverdue: new Gauge({
      name: 'dispatch_schedule_overdue_seconds',
      help:
        'How long the oldest due occurrence has waited without being claimed (0 when none waits): ' +
        'above a second, the schedulers are behind or none runs. The same on every instance.',
      registers: [registry],
    }),
    scheduleLateness: new Histogram({
      name: 'dispatch_schedule_lateness_seconds',
      help: 'Time from an occurrence being due (its fire time) to the scheduler firing it.',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600],
      registers: [registry],
    }),
    scheduledFired: new Counter({
      name: 'dispatch_scheduled_fired_total',
      help:
        'Occurrences of scheduled pushes taken from the schedule, by outcome: sent (appended to the push ' +
        'log), cancelled, expired (failed: due longer than its TTL ago), skipped (already fired or gone).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    scheduleFailures: new Counter({
      name: 'dispatch_schedule_failures_total',
      help: 'Schedule polls or occurrences that failed (Redis or NATS unavailable); retried after the lease.',
      registers: [registry],
    }),
  };
}

import { Counter, Histogram, type Registry } from 'prom-client';

export interface DispatchMetrics {
  pushes: Counter<'audience' | 'outcome'>;
  pushDuration: Histogram<'audience'>;
  routed: Counter<'route'>;
  eventPublishFailures: Counter;
  eventsConsumed: Counter<'type'>;
  appendRetries: Counter;
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
      help: 'Time to accept a push (validate, persist, route), by audience type.',
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
    eventsConsumed: new Counter({
      name: 'dispatch_events_consumed_total',
      help: 'Events applied from the durable stream, by type.',
      labelNames: ['type'],
      registers: [registry],
    }),
    appendRetries: new Counter({
      name: 'dispatch_inbox_append_retries_total',
      help: 'Appends retried with a fresh msg_id because a concurrent push to the same device went first.',
      registers: [registry],
    }),
  };
}

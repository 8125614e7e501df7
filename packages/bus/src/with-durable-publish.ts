import type { Bus } from './bus.js';

/**
 * A bus that is `bus` in everything but durable publishes, which go through `publishDurable` (given the
 * real one to call). Tests use it to make the durable stream fail, wait or record, on either adapter.
 */
export function withDurablePublish(
  bus: Bus,
  publishDurable: (
    real: Bus['publishDurable'],
    ...args: Parameters<Bus['publishDurable']>
  ) => ReturnType<Bus['publishDurable']>,
): Bus {
  const real: Bus['publishDurable'] = (subject, data, options) => bus.publishDurable(subject, data, options);
  return {
    publish: (subject, data) => bus.publish(subject, data),
    subscribe: (subject, handler, options) => bus.subscribe(subject, handler, options),
    publishDurable: (subject, data, options) => publishDurable(real, subject, data, options),
    consume: (options) => bus.consume(options),
    consumerBacklog: (stream, consumer) => bus.consumerBacklog(stream, consumer),
    readDurable: (options) => bus.readDurable(options),
    ready: () => bus.ready(),
    flush: () => bus.flush(),
    onInterruption: (listener) => bus.onInterruption(listener),
    close: () => bus.close(),
  };
}

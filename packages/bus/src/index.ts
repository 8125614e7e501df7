export type {
  Bus,
  BusSubscription,
  ConsumeOptions,
  DurableConsumer,
  DurableMessage,
  DurableMessageMeta,
  DurablePublishResult,
  DurableStreamConfig,
  MessageHandler,
  PublishDurableOptions,
  ReadDurableOptions,
  SubscribeOptions,
} from './bus.js';
export { MemoryBroker, type MemoryBrokerOptions, MemoryBus, type MemoryBusOptions } from './bus-memory.js';
export { NatsBus, type NatsBusOptions } from './bus-nats.js';
export { type EventSource, isValidNodeId, pushPartition, streams, subjects } from './subjects.js';
export { withDurablePublish } from './with-durable-publish.js';

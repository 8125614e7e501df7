export { type CreateDispatchOptions, createDispatch, type DispatchParts } from './dispatch.js';
export {
  ALL_AUDIENCE_INTERVAL_MS,
  DispatchService,
  type DispatchServiceOptions,
  MAX_EXPIRE_S,
  MAX_MESSAGE_BYTES,
  OFFLINE_CAPACITY,
  validateMessage,
} from './dispatch-service.js';
export { dispatchEnv } from './env.js';
export { DispatchEventConsumer, type DispatchEventConsumerOptions } from './event-consumer.js';
export { createDispatchMetrics, type DispatchMetrics } from './metrics.js';
export { PushApplier, type PushApplierOptions } from './push-applier.js';
export {
  type AcceptTimes,
  firstFireTime,
  inAcceptWindow,
  intervalMs,
  intoAcceptWindow,
  type Loop,
  type LoopInterval,
  MAX_ACCEPT_WINDOWS,
  MAX_LOOP_AHEAD_MS,
  MAX_SEND_AHEAD_MS,
  nextOccurrence,
  type SchedulePlan,
  validateAcceptTime,
  validateLoop,
  validateSchedule,
  validateSendTime,
} from './schedule-times.js';
export { type SchedulePushInput, Scheduler, type SchedulerOptions } from './scheduler.js';

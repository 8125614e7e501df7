import { type Bus, type DurableConsumer, streams, subjects } from '@pushd/bus';
import { type Clock, type Logger, systemClock } from '@pushd/common';
import {
  BroadcastDelivery,
  Event,
  EventBatch,
  EventType,
  NodeDelivery,
  Platform,
  PushCommand,
  type PushMessage,
  PushStatus,
  type TargetDevice,
} from '@pushd/proto';
import type { BroadcastLog, InboxStore, PushStore, RouteStore } from '@pushd/store';
import type { DispatchMetrics } from './metrics.js';

/** The brief's offline window: Android keeps the newest 2 messages, iOS the newest 1. */
export const OFFLINE_CAPACITY: Readonly<Record<Platform, number>> = {
  [Platform.PLATFORM_ANDROID]: 2,
  [Platform.PLATFORM_IOS]: 1,
  [Platform.PLATFORM_UNSPECIFIED]: 1,
};

/** How often the push log's backlog gauge is read from the bus. */
const BACKLOG_REFRESH_MS = 5_000;

/** Window appends in flight for one push: enough to hide Redis round trips, bounded for fairness. */
const APPEND_CONCURRENCY = 64;

export interface PushApplierOptions {
  bus: Bus;
  pushes: PushStore;
  inboxes: InboxStore;
  routes: RouteStore;
  broadcasts: BroadcastLog;
  /**
   * Push-log partitions (the subjects pushd.pushes.0 .. N-1). Every dispatch instance must use the same
   * number, and changing it while pushes wait in the log may apply an app's waiting pushes out of order.
   * Default: 16.
   */
  partitions?: number;
  /**
   * How long an instance may take to apply one push before another instance takes it over; also the wait
   * before a push whose application failed is tried again. Default: 30 s.
   */
  takeOverAfterMs?: number;
  /**
   * Waits between the tries of one delivery of a push whose application fails (Redis or NATS briefly
   * unavailable), before the delivery is given up and the log redelivers it. Default: [50, 250, 1000] ms.
   */
  retryDelaysMs?: readonly number[];
  /**
   * Deliveries of one push before it is given up and marked FAILED: every push of the partition waits
   * behind it, so a push that cannot be applied (a persistent fault) must not hold them for ever.
   * Default: 10 (with the defaults, about 5 minutes).
   */
  maxDeliveries?: number;
  metrics: DispatchMetrics;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
}

/**
 * Applies accepted pushes in log order: this is where message order comes from. Each partition of the push
 * log has one durable consumer shared by every dispatch instance with at most one message outstanding, so
 * whichever instance holds it, an app's pushes are applied one after the other in msg_id order (the stream
 * sequence). Applying a push:
 * - targeted (token, lists, accounts): append to each device's offline window, then one publish per
 *   gateway node holding some of them (windows first: a device connecting meanwhile finds it there);
 * - broadcast and tag pushes: append once to the app's broadcast log, then one publish every gateway
 *   receives; gateways evaluate the audience against the devices they hold.
 * Every publish of an app carries the msg_id of the app's previous broadcast, and broadcasts chain to each
 * other, so a gateway that missed one (a reconnect, a dropped message) notices and catches up rather than
 * deliver out of order. Applying twice (an instance died after applying, before acknowledging) appends
 * nothing new and publishes again; devices drop what they already have by msg_id.
 */
export class PushApplier {
  private readonly clock: Clock;
  private readonly partitions: number;
  private consumers: DurableConsumer[] = [];
  private backlogTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: PushApplierOptions) {
    this.clock = options.clock ?? systemClock;
    this.partitions = options.partitions ?? 16;
  }

  start(): void {
    this.backlogTimer = setInterval(() => void this.refreshBacklog(), BACKLOG_REFRESH_MS);
    this.backlogTimer.unref();
    for (let partition = 0; partition < this.partitions; partition++) {
      this.consumers.push(
        this.options.bus.consume({
          stream: streams.pushes.name,
          consumer: `dispatch-apply-${partition}`,
          filterSubject: subjects.pushes(partition),
          maxAckPending: 1,
          redeliverAfterMs: this.options.takeOverAfterMs ?? 30_000,
          handler: (data, meta) => this.handle(partition, data, meta.seq, meta.deliveryCount),
        }),
      );
    }
  }

  /** Reads the push log's backlog (dispatch_push_log_backlog); public for tests. Never rejects. */
  async refreshBacklog(): Promise<void> {
    try {
      const backlogs = await Promise.all(
        Array.from({ length: this.partitions }, (_, partition) =>
          this.options.bus.consumerBacklog(streams.pushes.name, `dispatch-apply-${partition}`),
        ),
      );
      this.options.metrics.pushLogBacklog.set(backlogs.reduce<number>((sum, n) => sum + (n ?? 0), 0));
    } catch (error) {
      this.options.logger.warn({ err: error }, 'reading the push log backlog failed');
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.backlogTimer);
    await Promise.all(this.consumers.map((consumer) => consumer.stop()));
    this.consumers = [];
  }

  /**
   * One delivery of a log entry: tries a few times in place (a brief outage should not stall the
   * partition for takeOverAfterMs), then lets the log redeliver it, and gives it up after maxDeliveries.
   */
  private async handle(
    partition: number,
    data: Uint8Array,
    seq: number,
    deliveryCount: number,
  ): Promise<void> {
    const { metrics, logger } = this.options;
    let command: PushCommand;
    try {
      command = PushCommand.decode(data);
    } catch (error) {
      // No retry can read it, and it would block the partition: dropped, loudly.
      metrics.applyFailures.inc();
      logger.error({ err: error, partition, seq }, 'an undecodable push-log entry was dropped');
      return;
    }
    const delays = this.options.retryDelaysMs ?? [50, 250, 1000];
    for (let attempt = 0; ; attempt++) {
      try {
        await this.apply(command, seq);
        return;
      } catch (error) {
        metrics.applyFailures.inc();
        const { accessId, pushId } = command;
        logger.error(
          { err: error, partition, seq, accessId, pushId, deliveryCount, attempt },
          'applying a push failed',
        );
        const delay = delays[attempt];
        if (delay !== undefined) {
          await new Promise((resolve) => setTimeout(resolve, delay));
          continue;
        }
        if (deliveryCount < (this.options.maxDeliveries ?? 10)) throw error;
        const reason = error instanceof Error ? error.message : String(error);
        await this.options.pushes
          .update(accessId, pushId, {
            status: PushStatus.PUSH_STATUS_FAILED,
            failure: `could not be applied: ${reason}`,
          })
          .catch((cause: unknown) =>
            logger.error({ err: cause, accessId, pushId }, 'marking a push failed failed'),
          );
        logger.error(
          { accessId, pushId, seq, deliveryCount },
          'a push that could not be applied was given up',
        );
        return;
      }
    }
  }

  /** Applies one push whose log sequence is `msgId`. Public for tests; the log calls it in order. */
  async apply(command: PushCommand, msgId: number): Promise<void> {
    const { accessId, pushId } = command;
    const now = this.clock.now();
    const message: PushMessage = {
      msgId,
      pushId,
      message: command.message,
      sentAtMs: command.acceptedAtMs,
      expiresAtMs: command.expiresAtMs,
    };
    const broadcast = command.devices.length === 0;
    this.options.metrics.applyLag.observe(
      { kind: broadcast ? 'broadcast' : 'targeted' },
      Math.max(0, now - command.acceptedAtMs) / 1000,
    );
    if (command.expiresAtMs <= now) {
      // Waited in the log past its expiry (dispatch was down that long): never delivered, by the rules. A
      // recurring push's later occurrences still come.
      await this.options.pushes.update(accessId, pushId, {
        status: command.moreOccurrences ? PushStatus.PUSH_STATUS_SCHEDULED : PushStatus.PUSH_STATUS_FAILED,
        occurrences: command.occurrence,
        failure: 'expired in the push log before it could be sent',
      });
      return;
    }
    // SENT events are stored while the record is saved; both before the log entry is acknowledged, so
    // that a crash makes this push apply again rather than lose its counts.
    const sent = broadcast ? [] : await this.applyTargeted(command, message, now);
    if (broadcast) await this.applyBroadcast(command, message, now);
    const target = broadcast ? command.countedTarget : command.devices.length;
    // An update, not a save: the record (created at acceptance) keeps its place in the app's list. A
    // recurring push goes back to SCHEDULED until its last occurrence.
    const saved = this.options.pushes.update(accessId, pushId, {
      status: command.moreOccurrences ? PushStatus.PUSH_STATUS_SCHEDULED : PushStatus.PUSH_STATUS_DONE,
      msgId,
      target,
      ...(command.occurrence > 0 ? { occurrences: command.occurrence } : {}),
    });
    await Promise.all([saved, ...sent]);
  }

  private async applyBroadcast(command: PushCommand, message: PushMessage, now: number): Promise<void> {
    const { accessId } = command;
    const { broadcasts, bus } = this.options;
    // Only this partition's applier appends to this app's log, so the head read here is the predecessor.
    const previousBroadcastId = await broadcasts.head(accessId);
    const target = command.audience?.target;
    const delivery: BroadcastDelivery = {
      accessId,
      message,
      expression: target?.$case === 'tags' ? target.value : undefined,
      platform: command.platform,
      previousBroadcastId: previousBroadcastId >= message.msgId ? 0 : previousBroadcastId,
    };
    const data = BroadcastDelivery.encode(delivery).finish();
    // Online only: the log keeps nothing (an entry expired on arrival), but its head still moves, so the
    // broadcast chain stays unbroken for gateways.
    const appended = await broadcasts.append(
      accessId,
      { msgId: message.msgId, expiresAtMs: command.onlineOnly ? now : message.expiresAtMs, data },
      now,
    );
    if (!appended.appended) {
      // Applied before (this is a redelivery): publish again, chained onto itself, so that a gateway that
      // has it drops it and one that has not fetches the log.
      this.options.metrics.appliedAgain.inc();
      const again = BroadcastDelivery.encode({ ...delivery, previousBroadcastId: message.msgId }).finish();
      bus.publish(subjects.broadcast(accessId), again);
      return;
    }
    bus.publish(subjects.broadcast(accessId), data);
  }

  /** Windows, then routes; returns the SENT event publishes, started and not yet awaited. */
  private async applyTargeted(
    command: PushCommand,
    message: PushMessage,
    now: number,
  ): Promise<Promise<void>[]> {
    const { accessId, pushId } = command;
    // Read beside the appends: only this partition's applier moves the app's broadcast head.
    const head = this.options.broadcasts.head(accessId);
    if (command.onlineOnly) return this.applyOnlineOnly(command, message, await head);
    const appending = mapConcurrently(command.devices, APPEND_CONCURRENCY, async (device) => {
      const result = await this.options.inboxes.append(
        accessId,
        device.token,
        message,
        OFFLINE_CAPACITY[device.platform] ?? 1,
        now,
      );
      if (result.appended) return { device, previousMsgId: result.previousMsgId };
      // The window already holds this message or a later one: applied before. Chaining it onto itself
      // makes a gateway that already delivered it drop it, and one that did not fetch the window.
      this.options.metrics.appliedAgain.inc();
      return { device, previousMsgId: message.msgId };
    });
    const [previousBroadcastId, appended] = await Promise.all([head, appending]);
    await this.route(accessId, message, appended, previousBroadcastId);
    return this.publishSentByPlatform(accessId, pushId, message.msgId, command.devices);
  }

  /**
   * expire_time_s 0: published to the devices that have a route, stored nowhere. It claims no window
   * predecessor (0): it was never in a window, and the log order already puts it after every stored
   * message of the app published before it.
   */
  private async applyOnlineOnly(
    command: PushCommand,
    message: PushMessage,
    previousBroadcastId: number,
  ): Promise<Promise<void>[]> {
    const { accessId, pushId } = command;
    const routed = await this.route(
      accessId,
      message,
      command.devices.map((device) => ({ device, previousMsgId: 0 })),
      previousBroadcastId,
    );
    return this.publishSentByPlatform(accessId, pushId, message.msgId, routed);
  }

  /** One SENT event per platform with devices, publishes started together. */
  private publishSentByPlatform(
    accessId: number,
    pushId: string,
    msgId: number,
    devices: TargetDevice[],
  ): Promise<void>[] {
    const publishes: Promise<void>[] = [];
    for (const platform of [Platform.PLATFORM_ANDROID, Platform.PLATFORM_IOS]) {
      const tokens = devices.filter((device) => device.platform === platform).map((d) => d.token);
      if (tokens.length > 0) publishes.push(this.publishSent(accessId, pushId, msgId, platform, tokens));
    }
    return publishes;
  }

  /**
   * One publish per gateway node, however many of its devices the push targets; devices without a route
   * are offline and keep the message in their windows. Returns the devices that had a route.
   */
  private async route(
    accessId: number,
    message: PushMessage,
    appended: { device: TargetDevice; previousMsgId: number }[],
    previousBroadcastId: number,
  ): Promise<TargetDevice[]> {
    if (appended.length === 0) return [];
    const routes = await this.options.routes.getMany(
      accessId,
      appended.map((entry) => entry.device.token),
    );
    const batches = new Map<string, { tokens: string[]; previousMsgIds: number[] }>();
    appended.forEach((entry, index) => {
      const route = routes[index];
      if (route === undefined) return;
      let batch = batches.get(route.nodeId);
      if (batch === undefined) {
        batch = { tokens: [], previousMsgIds: [] };
        batches.set(route.nodeId, batch);
      }
      batch.tokens.push(entry.device.token);
      batch.previousMsgIds.push(entry.previousMsgId);
    });
    for (const [nodeId, batch] of batches) {
      const delivery = NodeDelivery.encode({
        accessId,
        tokens: batch.tokens,
        message,
        previousMsgIds: batch.previousMsgIds,
        previousBroadcastId,
      }).finish();
      this.options.bus.publish(subjects.nodeDelivery(nodeId), delivery);
    }
    const routed = appended.filter((_, index) => routes[index] !== undefined).map((entry) => entry.device);
    if (routed.length > 0) this.options.metrics.routed.inc({ route: 'online' }, routed.length);
    if (appended.length > routed.length)
      this.options.metrics.routed.inc({ route: 'offline' }, appended.length - routed.length);
    return routed;
  }

  /**
   * Counts the push as sent for these devices. The push is persisted and routed, so a failure here must not
   * fail the application (applying again would send it twice): it is logged and counted for alerting.
   */
  private async publishSent(
    accessId: number,
    pushId: string,
    msgId: number,
    platform: Platform,
    tokens: string[],
  ): Promise<void> {
    const event = Event.create({
      type: EventType.EVENT_TYPE_SENT,
      accessId,
      pushId,
      msgId,
      platform,
      tokens,
      atMs: this.clock.now(),
    });
    try {
      await this.options.bus.publishDurable(
        subjects.events('dispatch'),
        EventBatch.encode({ events: [event] }).finish(),
      );
    } catch (error) {
      this.options.metrics.eventPublishFailures.inc();
      this.options.logger.error({ err: error, accessId, pushId }, 'publishing the sent event failed');
    }
  }
}

/** Maps with at most `limit` calls in flight, results in input order. */
export async function mapConcurrently<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

import {
  type Bus,
  type BusSubscription,
  type DurableConsumer,
  type DurableMessageMeta,
  streams,
  subjects,
} from '@pushd/bus';
import { type Clock, type Logger, mapConcurrently, systemClock, tokensByApp } from '@pushd/common';
import {
  BroadcastDelivery,
  Event,
  EventBatch,
  EventType,
  encodeMessage,
  NodeDelivery,
  Platform,
  type PushCommand,
  PushLogApplied,
  type PushMessage,
  PushStatus,
  type TargetDevice,
} from '@pushd/proto';
import type {
  BroadcastLog,
  InboxStore,
  PushPatch,
  PushStore,
  PushUpdateResult,
  Route,
  RouteStore,
} from '@pushd/store';
import type { DispatchMetrics } from './metrics.js';
import { readPushLogEntry } from './push-log.js';

/** The brief's offline window: Android keeps the newest 2 messages, iOS the newest 1. */
export const OFFLINE_CAPACITY: Readonly<Record<Platform, number>> = {
  [Platform.PLATFORM_ANDROID]: 2,
  [Platform.PLATFORM_IOS]: 1,
  [Platform.PLATFORM_UNSPECIFIED]: 1,
};

/** How often the push log's backlog gauge is read from the bus. */
const BACKLOG_REFRESH_MS = 5_000;

/** Devices whose window appends are in flight at once: enough to hide Redis round trips, bounded. */
const APPEND_CONCURRENCY = 64;

/** Devices named by the SENT events of one durable publish: ~450 KB, under NATS's 1 MB payload limit. */
const SENT_TOKENS_PER_BATCH = 10_000;

/**
 * Most pushes one look-ahead applies together (the delivered entry's always, however many): 16 full
 * entries. Keeps one application's memory and duration (well within takeOverAfterMs) bounded whatever
 * lookAheadEntries says; the round trips saved are already most of the gain at this size.
 */
const LOOK_AHEAD_MAX_PUSHES = 4096;

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
  /**
   * Entries waiting behind a delivered one that are applied together with it (look-ahead): with a
   * backlog, one application (a few store and bus round trips) covers many entries instead of one, so
   * the applier's throughput grows with the load. Their own deliveries are then acknowledged without
   * applying them again. Only on an entry's first delivery, and never more than LOOK_AHEAD_MAX_PUSHES
   * pushes. 0: every entry is applied on its own delivery. Default: 64.
   */
  lookAheadEntries?: number;
  /**
   * Entries that must be waiting behind a delivered one for a look-ahead: reading them costs a consumer
   * created and deleted on the stream (three JetStream API calls) plus one acknowledged delivery per entry
   * taken along, which pays off only against several entries' application round trips. At a moderate
   * rate one entry often waits behind another: applied alone, it costs less. Default: 4.
   */
  lookAheadMinPending?: number;
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
  private readonly lookAheadEntries: number;
  private readonly lookAheadMinPending: number;
  private consumers: DurableConsumer[] = [];
  private markers: BusSubscription | undefined;
  private backlogTimer: NodeJS.Timeout | undefined;
  /**
   * Per partition, the highest stream sequence up to which every entry is known applied by a completed
   * look-ahead (this instance's or, through its marker, another's): deliveries at or below it are
   * acknowledged without applying. Stream sequences never go back (the stream is never deleted: msg_ids
   * come from them), so the mark stays true.
   */
  private readonly appliedThrough = new Map<number, number>();

  constructor(private readonly options: PushApplierOptions) {
    this.clock = options.clock ?? systemClock;
    this.partitions = options.partitions ?? 16;
    this.lookAheadEntries = Math.max(0, Math.floor(options.lookAheadEntries ?? 64));
    this.lookAheadMinPending = Math.max(1, Math.floor(options.lookAheadMinPending ?? 4));
  }

  start(): void {
    this.backlogTimer = setInterval(() => void this.refreshBacklog(), BACKLOG_REFRESH_MS);
    this.backlogTimer.unref();
    // Before consuming: a marker received late only costs applying its entries again.
    this.markers = this.options.bus.subscribe(subjects.allPushLogApplied, (data) => this.onMarker(data));
    for (let partition = 0; partition < this.partitions; partition++) {
      this.consumers.push(
        this.options.bus.consume({
          stream: streams.pushes.name,
          consumer: `dispatch-apply-${partition}`,
          filterSubject: subjects.pushes(partition),
          maxAckPending: 1,
          redeliverAfterMs: this.options.takeOverAfterMs ?? 30_000,
          handler: (data, meta) => this.handle(partition, data, meta),
        }),
      );
    }
  }

  /** Another instance's (or this one's) look-ahead marker: its partition's entries up to a seq are applied. */
  private onMarker(data: Uint8Array): void {
    let marker: PushLogApplied;
    try {
      marker = PushLogApplied.decode(data);
    } catch (error) {
      this.options.logger.warn({ err: error }, 'an undecodable push-log marker was ignored');
      return;
    }
    if (marker.partition >= this.partitions) return; // another partition count: not ours to trust
    this.noteApplied(marker.partition, marker.throughSeq);
  }

  private noteApplied(partition: number, throughSeq: number): void {
    if (throughSeq > (this.appliedThrough.get(partition) ?? 0))
      this.appliedThrough.set(partition, throughSeq);
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
    this.markers?.unsubscribe();
    this.markers = undefined;
  }

  /**
   * One delivery of a log entry (the pushes one instance accepted together, in order). An entry a
   * completed look-ahead applied is acknowledged at once. With entries waiting behind it (first delivery
   * only), it is applied together with them (look-ahead); if that fails, or there is no look-ahead, it is
   * applied alone: tried a few times in place (a brief outage should not stall the partition for
   * takeOverAfterMs), then left for the log to redeliver, and given up after maxDeliveries. A try skips the
   * pushes an earlier try of this delivery applied.
   */
  private async handle(partition: number, data: Uint8Array, meta: DurableMessageMeta): Promise<void> {
    const { seq, deliveryCount } = meta;
    const { metrics, logger } = this.options;
    if (seq <= (this.appliedThrough.get(partition) ?? 0)) {
      metrics.entriesSkipped.inc();
      return;
    }
    let pushes: LoggedPush[];
    try {
      pushes = readPushLogEntry(data, seq);
    } catch (error) {
      // No retry can read it, and it would block the partition: dropped, loudly.
      metrics.applyFailures.inc();
      logger.error({ err: error, partition, seq }, 'an undecodable push-log entry was dropped');
      return;
    }
    const applied = new Set<number>();
    // A redelivery applies its entry alone: the entry may be the one that fails, and the entries behind it
    // keep their own deliveries (and delivery counts) in any case.
    if (deliveryCount === 1 && meta.pending >= this.lookAheadMinPending && this.lookAheadEntries > 0) {
      if (await this.applyWithLookAhead(partition, seq, pushes, meta.pending, applied)) return;
    }
    const delays = this.options.retryDelaysMs ?? [50, 250, 1000];
    for (let attempt = 0; ; attempt++) {
      try {
        await this.applyEntry(
          pushes.filter((push) => !applied.has(push.msgId)),
          applied,
        );
        metrics.applyEntries.observe(1);
        return;
      } catch (error) {
        metrics.applyFailures.inc();
        logger.error(
          { err: error, partition, seq, pushes: pushes.length, deliveryCount, attempt },
          'applying a push-log entry failed',
        );
        const delay = delays[attempt];
        if (delay !== undefined) {
          await new Promise((resolve) => setTimeout(resolve, delay));
          continue;
        }
        if (deliveryCount < (this.options.maxDeliveries ?? 10)) throw error;
        // Given up as a whole: one push at a time, so that only the pushes that cannot be applied fail
        // (one accepted together with a broken push must not share its fate).
        for (const push of pushes.filter((p) => !applied.has(p.msgId))) {
          try {
            await this.applyEntry([push], applied);
          } catch (cause) {
            await this.giveUp(push, cause, seq, deliveryCount);
          }
        }
        metrics.applyEntries.observe(1);
        return;
      }
    }
  }

  /**
   * Applies the delivered entry `seq` together with the entries stored behind it in its partition (at most
   * lookAheadEntries and `pending`), as one list of pushes in log order, and marks them applied: true once
   * done. False when there is nothing to take along or applying fails: the caller then applies the
   * delivered entry alone, as without look-ahead (its pushes this attempt applied are in `applied`; the
   * entries behind it are applied again on their own deliveries, which is harmless).
   *
   * Why order holds: `seq` is delivered only once every earlier entry of the partition was acknowledged
   * (or given up), and the entries read are the partition's next ones, contiguous, in sequence order, so
   * the list is exactly what applying the entries one after the other would apply. Hence the mark: when it
   * is set, every entry up to the last one taken is applied.
   */
  private async applyWithLookAhead(
    partition: number,
    seq: number,
    pushes: LoggedPush[],
    pending: number,
    applied: Set<number>,
  ): Promise<boolean> {
    const { metrics, logger } = this.options;
    const ahead = await this.readAhead(
      partition,
      seq,
      Math.min(pending, this.lookAheadEntries),
      pushes.length,
    );
    if (ahead.length === 0) return false;
    const throughSeq = ahead.at(-1)?.seq ?? seq;
    const together = pushes.concat(...ahead.map((entry) => entry.pushes));
    const appliedTogether = new Set<number>();
    try {
      await this.applyEntry(together, appliedTogether);
    } catch (error) {
      metrics.applyFailures.inc();
      logger.error(
        { err: error, partition, seq, throughSeq, pushes: together.length },
        'applying push-log entries together failed; applying the delivered one alone',
      );
      // Only the delivered entry's own pushes count as done for its retries.
      for (const push of pushes) if (appliedTogether.has(push.msgId)) applied.add(push.msgId);
      return false;
    }
    metrics.applyEntries.observe(1 + ahead.length);
    this.noteApplied(partition, throughSeq);
    // Records are updated and SENT events stored: exactly when the entry would be acknowledged. At most
    // once: an instance that misses it applies those entries again when their deliveries reach it.
    try {
      this.options.bus.publish(
        subjects.pushLogApplied(partition),
        encodeMessage(PushLogApplied, { partition, throughSeq }),
      );
    } catch (error) {
      logger.warn({ err: error, partition, throughSeq }, 'publishing a push-log marker failed');
    }
    return true;
  }

  /**
   * The entries stored after `seq` in the partition, decoded, in log order: at most `maxEntries`, and no
   * more pushes than LOOK_AHEAD_MAX_PUSHES with the delivered entry's `delivered` ones. Stops before an
   * undecodable entry (its own delivery drops it, loudly) and returns none when the log cannot be read:
   * the delivered entry is then applied alone.
   */
  private async readAhead(
    partition: number,
    seq: number,
    maxEntries: number,
    delivered: number,
  ): Promise<{ seq: number; pushes: LoggedPush[] }[]> {
    let stored: Awaited<ReturnType<Bus['readDurable']>>;
    try {
      stored = await this.options.bus.readDurable({
        stream: streams.pushes.name,
        filterSubject: subjects.pushes(partition),
        afterSeq: seq,
        maxMessages: maxEntries,
      });
    } catch (error) {
      this.options.logger.warn({ err: error, partition, seq }, 'reading ahead in the push log failed');
      return [];
    }
    const entries: { seq: number; pushes: LoggedPush[] }[] = [];
    let total = delivered;
    for (const message of stored) {
      let pushes: LoggedPush[];
      try {
        pushes = readPushLogEntry(message.data, message.seq);
      } catch {
        break;
      }
      total += pushes.length;
      if (total > LOOK_AHEAD_MAX_PUSHES) break;
      entries.push({ seq: message.seq, pushes });
    }
    return entries;
  }

  /**
   * Marks a push that could not be applied FAILED, so that the pushes behind it in the partition go on. A
   * recurring push goes back to SCHEDULED instead, as when an occurrence expires: its later occurrences
   * still come (the scheduler fires only a SCHEDULED push), and the record says why this one was not sent.
   */
  private async giveUp(push: LoggedPush, error: unknown, seq: number, deliveryCount: number): Promise<void> {
    const { logger } = this.options;
    const { accessId, pushId, occurrence, moreOccurrences } = push.command;
    const failure = `could not be applied: ${error instanceof Error ? error.message : String(error)}`;
    await this.updateRecord(
      push.command,
      moreOccurrences
        ? {
            status: PushStatus.PUSH_STATUS_SCHEDULED,
            occurrences: occurrence,
            failure: `occurrence ${occurrence} ${failure}`,
          }
        : { status: PushStatus.PUSH_STATUS_FAILED, failure },
    ).catch((cause: unknown) =>
      logger.error({ err: cause, accessId, pushId }, 'marking a push failed failed'),
    );
    logger.error({ accessId, pushId, seq, deliveryCount }, 'a push that could not be applied was given up');
  }

  /** Applies one push whose msg_id is `msgId`. Public for tests; the log calls applyEntry in order. */
  async apply(command: PushCommand, msgId: number): Promise<void> {
    await this.applyEntry([{ command, msgId }], new Set());
  }

  /**
   * Applies pushes in msg_id order, adding the msg_id of each one done (its record updated) to `applied`.
   * Runs of targeted pushes are applied together (applyTargeted); each broadcast alone, between them, so
   * that the broadcast chain each message carries is the one before it in the log.
   */
  private async applyEntry(pushes: LoggedPush[], applied: Set<number>): Promise<void> {
    const now = this.clock.now();
    const notClaimed = await this.occurrencesNotClaimed(pushes);
    let run: LoggedPush[] = [];
    for (const push of pushes) {
      if (notClaimed.has(push)) {
        applied.add(push.msgId);
        continue;
      }
      const { command } = push;
      const broadcast = isBroadcast(command);
      this.options.metrics.applyLag.observe(
        { kind: broadcast ? 'broadcast' : 'targeted' },
        Math.max(0, now - command.acceptedAtMs) / 1000,
      );
      if (command.expiresAtMs > now && broadcast) {
        await this.applyTargeted(run, now, applied);
        run = [];
        await this.applyBroadcast(push, now);
        await this.recordApplied(push, command.countedTarget);
        applied.add(push.msgId);
      } else {
        run.push(push);
      }
    }
    await this.applyTargeted(run, now, applied);
  }

  /**
   * The scheduled occurrences among `pushes` that must be applied no further: the scheduler can append an
   * occurrence twice past the log's deduplication window (an instance stalled after starting it, or Redis
   * away for minutes between its append and its bookkeeping, or an expired copy after a re-fire), and only
   * the first entry to claim it on the push record applies it, delivering it or marking it expired
   * (PushStore.claimDelivery); an entry whose push moved on without it neither. The claims go out in log
   * order on one key, so within a look-ahead the first entry wins. One call per scheduled push; immediate
   * pushes (occurrence 0) are appended once by the accept path.
   */
  private async occurrencesNotClaimed(pushes: LoggedPush[]): Promise<Set<LoggedPush>> {
    const scheduled = pushes.filter(({ command }) => command.occurrence > 0);
    const notClaimed = new Set<LoggedPush>();
    if (scheduled.length === 0) return notClaimed;
    const claims = await Promise.all(
      scheduled.map(({ command, msgId }) =>
        this.options.pushes.claimDelivery(command.accessId, command.pushId, command.occurrence, msgId),
      ),
    );
    scheduled.forEach((push, i) => {
      if (claims[i]) return;
      notClaimed.add(push);
      this.options.metrics.occurrencesNotClaimed.inc();
      this.options.logger.warn(
        { accessId: push.command.accessId, pushId: push.command.pushId, occurrence: push.command.occurrence },
        'a scheduled occurrence in the push log is not applied: another entry claimed it, or its push moved on',
      );
    });
    return notClaimed;
  }

  /**
   * The record of an applied push: an update, not a save (the record, created at acceptance, keeps its
   * place in the app's list). A recurring push goes back to SCHEDULED until its last occurrence.
   */
  private recordApplied({ command, msgId }: LoggedPush, target: number): Promise<unknown> {
    return this.updateRecord(command, {
      status: command.moreOccurrences ? PushStatus.PUSH_STATUS_SCHEDULED : PushStatus.PUSH_STATUS_DONE,
      msgId,
      target,
      ...(command.occurrence > 0 ? { occurrences: command.occurrence } : {}),
    });
  }

  /**
   * Updates the record of an entry's push only while finishing it is still that entry's part: status
   * SENDING, with the entry's occurrence the one the scheduler last started (0 for an immediate push). An
   * entry applied again (its consumer created again reads the log from its start; an acknowledgement was
   * lost) thus leaves alone a record that moved on: a DONE push is not marked FAILED because its entry has
   * expired since, a recurring push cancelled or at a later occurrence is not set back to SCHEDULED.
   */
  private updateRecord(command: PushCommand, patch: PushPatch): Promise<PushUpdateResult> {
    return this.options.pushes.update(
      command.accessId,
      command.pushId,
      patch,
      [PushStatus.PUSH_STATUS_SENDING],
      command.occurrence,
    );
  }

  private async applyBroadcast({ command, msgId }: LoggedPush, now: number): Promise<void> {
    const { accessId } = command;
    const { broadcasts, bus } = this.options;
    const message = messageOf(command, msgId);
    // Only this partition's applier appends to this app's log, so the head read here is the predecessor.
    const previousBroadcastId = await broadcasts.head(accessId);
    const target = command.audience?.target;
    const delivery: BroadcastDelivery = {
      accessId,
      message,
      expression: target?.$case === 'tags' ? target.value : undefined,
      platform: command.platform,
      previousBroadcastId: previousBroadcastId >= message.msgId ? 0 : previousBroadcastId,
      onlineOnly: command.onlineOnly,
    };
    const data = encodeMessage(BroadcastDelivery, delivery);
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
      const again = encodeMessage(BroadcastDelivery, { ...delivery, previousBroadcastId: message.msgId });
      bus.publish(subjects.broadcast(accessId), again);
      return;
    }
    bus.publish(subjects.broadcast(accessId), data);
  }

  /**
   * A run of targeted pushes (and expired ones), in msg_id order: every window append of the run (one
   * device's appends one after the other, in order; devices side by side), the apps' broadcast heads and
   * routes read once, then each push's publishes per gateway node, in order, then the records and the SENT
   * events. Windows come before publishes: a device connecting meanwhile finds its messages there. The SENT
   * events are stored before the log entry is acknowledged, so that a crash applies the run again rather
   * than lose its counts.
   */
  private async applyTargeted(run: LoggedPush[], now: number, applied: Set<number>): Promise<void> {
    if (run.length === 0) return;
    const live = run.filter((push) => push.command.expiresAtMs > now);
    const apps = [...new Set(live.map((push) => push.command.accessId))];
    const messages = live.map((push) => messageOf(push.command, push.msgId));
    const [chains, heads] = await Promise.all([
      this.appendToWindows(live, messages, now),
      // Read beside the appends: only this partition's applier moves an app's broadcast head.
      Promise.all(apps.map((accessId) => this.options.broadcasts.head(accessId))),
    ]);
    const headOf = new Map(apps.map((accessId, i) => [accessId, heads[i] ?? 0]));
    const routes = await this.routesOf(live);
    const sent: Event[] = [];
    for (const [i, push] of live.entries()) {
      const { accessId, pushId } = push.command;
      const message = messages[i] as PushMessage;
      const routed = this.route(
        accessId,
        message,
        chains[i] ?? [],
        routes,
        headOf.get(accessId) ?? 0,
        push.command.onlineOnly,
      );
      // Online only: counted as sent where a route took it; otherwise stored for every device.
      const counted = push.command.onlineOnly ? routed : push.command.devices;
      sent.push(...this.sentEvents(accessId, pushId, push.msgId, counted));
    }
    await Promise.all([
      ...run.map(async (push) => {
        if (push.command.expiresAtMs > now) await this.recordApplied(push, push.command.devices.length);
        else await this.recordExpired(push.command);
        applied.add(push.msgId);
      }),
      this.publishSent(sent),
    ]);
  }

  /**
   * Waited in the log past its expiry (dispatch was down that long): never delivered, by the rules. A
   * recurring push's later occurrences still come.
   */
  private recordExpired(command: PushCommand): Promise<unknown> {
    return this.updateRecord(command, {
      status: command.moreOccurrences ? PushStatus.PUSH_STATUS_SCHEDULED : PushStatus.PUSH_STATUS_FAILED,
      occurrences: command.occurrence,
      failure: 'expired in the push log before it could be sent',
    });
  }

  /**
   * Appends each push to its devices' windows; returns, per push, its devices with the window predecessor
   * each message chains to. A device's appends run in msg_id order, one after the other (the window refuses
   * an id at or below its last one, so out of order would lose the earlier message). An online-only push
   * is stored nowhere and claims no predecessor (0): it was never in a window, and the log order already
   * puts it after every stored message of the app published before it.
   */
  private async appendToWindows(
    pushes: LoggedPush[],
    messages: PushMessage[],
    now: number,
  ): Promise<Chained[][]> {
    const chains: Chained[][] = pushes.map((push) =>
      push.command.devices.map((device) => ({ device, previousMsgId: 0 })),
    );
    const byDevice = new Map<string, { push: number; device: number }[]>();
    for (const [p, push] of pushes.entries()) {
      if (push.command.onlineOnly) continue;
      for (const [d, device] of push.command.devices.entries()) {
        const key = `${push.command.accessId}:${device.token}`;
        let appends = byDevice.get(key);
        if (appends === undefined) {
          appends = [];
          byDevice.set(key, appends);
        }
        appends.push({ push: p, device: d });
      }
    }
    await mapConcurrently([...byDevice.values()], APPEND_CONCURRENCY, async (appends) => {
      for (const { push: p, device: d } of appends) {
        const push = pushes[p] as LoggedPush;
        const device = push.command.devices[d] as TargetDevice;
        const result = await this.options.inboxes.append(
          push.command.accessId,
          device.token,
          messages[p] as PushMessage,
          OFFLINE_CAPACITY[device.platform] ?? 1,
          now,
        );
        const chain = chains[p]?.[d] as Chained;
        if (result.appended) {
          chain.previousMsgId = result.previousMsgId;
        } else {
          // The window already holds this message or a later one: applied before. Chaining it onto itself
          // makes a gateway that already delivered it drop it, and one that did not fetch the window.
          this.options.metrics.appliedAgain.inc();
          chain.previousMsgId = push.msgId;
        }
      }
    });
    return chains;
  }

  /** The routes of every device of these pushes, one read per app, by `accessId:token`. */
  private async routesOf(pushes: LoggedPush[]): Promise<Map<string, Route>> {
    const devices = pushes.flatMap(({ command }) =>
      command.devices.map(({ token }) => ({ accessId: command.accessId, token })),
    );
    const routes = new Map<string, Route>();
    await Promise.all(
      [...tokensByApp(devices)].map(async ([accessId, tokens]) => {
        const found = await this.options.routes.getMany(accessId, tokens);
        tokens.forEach((token, i) => {
          const route = found[i];
          if (route !== undefined) routes.set(`${accessId}:${token}`, route);
        });
      }),
    );
    return routes;
  }

  /**
   * One publish per gateway node, however many of its devices the push targets; devices without a route
   * are offline and keep the message in their windows. Returns the devices that had a route.
   */
  private route(
    accessId: number,
    message: PushMessage,
    chained: Chained[],
    routes: Map<string, Route>,
    previousBroadcastId: number,
    onlineOnly: boolean,
  ): TargetDevice[] {
    const batches = new Map<string, { tokens: string[]; previousMsgIds: number[] }>();
    const routed: TargetDevice[] = [];
    for (const { device, previousMsgId } of chained) {
      const route = routes.get(`${accessId}:${device.token}`);
      if (route === undefined) continue;
      routed.push(device);
      let batch = batches.get(route.nodeId);
      if (batch === undefined) {
        batch = { tokens: [], previousMsgIds: [] };
        batches.set(route.nodeId, batch);
      }
      batch.tokens.push(device.token);
      batch.previousMsgIds.push(previousMsgId);
    }
    for (const [nodeId, batch] of batches) {
      const delivery = NodeDelivery.encode({
        accessId,
        tokens: batch.tokens,
        message,
        previousMsgIds: batch.previousMsgIds,
        previousBroadcastId,
        onlineOnly,
      }).finish();
      this.options.bus.publish(subjects.nodeDelivery(nodeId), delivery);
    }
    if (routed.length > 0) this.options.metrics.routed.inc({ route: 'online' }, routed.length);
    if (chained.length > routed.length)
      this.options.metrics.routed.inc({ route: 'offline' }, chained.length - routed.length);
    return routed;
  }

  /** One SENT event per platform with devices. */
  private sentEvents(accessId: number, pushId: string, msgId: number, devices: TargetDevice[]): Event[] {
    const events: Event[] = [];
    for (const platform of [Platform.PLATFORM_ANDROID, Platform.PLATFORM_IOS]) {
      const tokens = devices.filter((device) => device.platform === platform).map((d) => d.token);
      if (tokens.length === 0) continue;
      events.push(
        Event.create({
          type: EventType.EVENT_TYPE_SENT,
          accessId,
          pushId,
          msgId,
          platform,
          tokens,
          atMs: this.clock.now(),
        }),
      );
    }
    return events;
  }

  /**
   * Counts pushes as sent, in batches of at most SENT_TOKENS_PER_BATCH devices (one event at least). The
   * pushes are persisted and routed, so a failure here must not fail the application (applying again would
   * send them twice): it is logged and counted for alerting.
   */
  private async publishSent(events: Event[]): Promise<void> {
    const batches: Event[][] = [];
    let tokens = Number.POSITIVE_INFINITY;
    for (const event of events) {
      if (tokens + event.tokens.length > SENT_TOKENS_PER_BATCH) {
        batches.push([]);
        tokens = 0;
      }
      batches.at(-1)?.push(event);
      tokens += event.tokens.length;
    }
    const publishes: Promise<unknown>[] = [];
    for (const batch of batches) {
      publishes.push(
        this.options.bus
          .publishDurable(subjects.events('dispatch'), encodeMessage(EventBatch, { events: batch }))
          .catch((error: unknown) => {
            this.options.metrics.eventPublishFailures.inc();
            this.options.logger.error(
              { err: error, pushIds: batch.map((event) => event.pushId) },
              'publishing sent events failed',
            );
          }),
      );
    }
    await Promise.all(publishes);
  }
}

/** A push as the log holds it: its command and the msg_id its place in the log gives it. */
interface LoggedPush {
  command: PushCommand;
  msgId: number;
}

/** A targeted device and the msg_id its window had before this message (what the gateway checks). */
interface Chained {
  device: TargetDevice;
  previousMsgId: number;
}

/**
 * `all` and `tags` audiences go to the app's broadcast log and every gateway. Decided by the audience, not
 * by an empty device list: a targeted push whose devices are all on another platform than the one it
 * names has no devices, and must reach nobody rather than everybody.
 */
function isBroadcast(command: PushCommand): boolean {
  const target = command.audience?.target?.$case;
  return target === 'all' || target === 'tags';
}

/** The message devices receive for a push. */
function messageOf(command: PushCommand, msgId: number): PushMessage {
  return {
    msgId,
    pushId: command.pushId,
    message: command.message,
    sentAtMs: command.acceptedAtMs,
    expiresAtMs: command.expiresAtMs,
  };
}

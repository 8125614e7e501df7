import { type Bus, pushPartition, streams } from '@pushd/bus';
import { type Clock, ConfigError, type Logger, systemClock } from '@pushd/common';
import { encodeMessage, PushCommand, PushStatus } from '@pushd/proto';
import type {
  PushStore,
  PushUpdateResult,
  ScheduledCommand,
  ScheduleEntry,
  ScheduleStore,
} from '@pushd/store';
import type { DispatchMetrics } from './metrics.js';
import { PushLogWriter } from './push-log.js';
import {
  type AcceptTimes,
  intervalMs,
  intoAcceptWindow,
  type Loop,
  nextOccurrence,
} from './schedule-times.js';

const { PUSH_STATUS_SCHEDULED: SCHEDULED, PUSH_STATUS_SENDING: SENDING } = PushStatus;
const { PUSH_STATUS_CANCELLED: CANCELLED, PUSH_STATUS_FAILED: FAILED } = PushStatus;

/** JetStream's default duplicate window, which the push log keeps (streams.pushes sets none). */
const PUSH_LOG_DEDUP_WINDOW_MS = streams.pushes.duplicateWindowMs ?? 120_000;

export interface SchedulerOptions {
  schedule: ScheduleStore;
  pushes: PushStore;
  bus: Bus;
  /** Push-log partitions; must equal the PushApplier's and the DispatchService's. Default: 16. */
  partitions?: number;
  /** Time source of due times, leases and the occurrences' times. Default: systemClock. */
  clock?: Clock;
  /**
   * Pause between two polls of every partition. With the time a poll takes, this bounds how late a push
   * fires (the issue: within 1 s of its time). Default: 250 ms.
   */
  pollIntervalMs?: number;
  /**
   * How long a claimed occurrence stays hidden from other instances; one whose instance died fires again
   * after it. Must stay below the push log's 2-minute dedup window, so that a re-fire of an occurrence
   * already appended is recognised and stores nothing. Default: 30 s.
   */
  leaseMs?: number;
  /** Most occurrences claimed per partition and claim (a poll claims again while batches come back full). Default: 100. */
  batchSize?: number;
  /** How often the scheduled-pushes and overdue gauges are read from the store. Default: 5 s. */
  gaugeIntervalMs?: number;
  metrics: DispatchMetrics;
  logger: Logger;
}

/** A push to hand to the scheduler (see validateSchedule for nominalMs and fireAtMs). */
export interface SchedulePushInput {
  accessId: number;
  pushId: string;
  /**
   * The push as the log will carry it. Its expires_at_ms - accepted_at_ms is the TTL each occurrence gets
   * from its firing; occurrence, accepted_at_ms, expires_at_ms and more_occurrences are set per occurrence.
   */
  command: PushCommand;
  /** Occurrence 1's time before accept windows (later occurrences follow it by the loop's interval). */
  nominalMs: number;
  /** Occurrence 1's time in the accept windows. */
  fireAtMs: number;
  loop?: Loop;
  acceptTime?: AcceptTimes;
}

/** The expiry of a copy that must be expired whatever the applier's clock says (see fire). */
const EXPIRED_AT_MS = 1;

/**
 * Fires scheduled and recurring pushes: every dispatch instance runs one, and each poll claims the due
 * occurrences of every partition of the schedule and fires them in order. Firing an occurrence n:
 * 1. push SCHEDULED -> SENDING with `firing` n (a compare-and-set: a cancel that came first wins, and
 *    the push is dropped). Refused with SENDING and firing n, the occurrence was started by an instance
 *    that died: go on, the steps below are idempotent;
 * 2. add occurrence n + 1 to the schedule if the loop has one, BEFORE publishing, so a crash cannot lose
 *    the rest of the series (adding it again is a no-op);
 * 3. append the command to the push log with the dedup key <app>:<push>:<n>: a re-fire within the log's
 *    2-minute window (the lease is shorter) stores nothing new;
 * 4. complete the entry.
 * The PushApplier then applies it as any push and sets the push SCHEDULED again (more occurrences) or
 * DONE; an occurrence that reached the log twice (past the window) is applied from its first entry only
 * (PushStore.claimDelivery). An occurrence whose TTL has run out before it fires (dispatch was down that
 * long, or its accept window opened too late) is not sent: the push becomes FAILED, or stays SCHEDULED
 * for the next occurrence of a loop, with the reason in `failure`; when a previous attempt started it,
 * an expired copy in the log says so instead (see fire).
 */
export class Scheduler {
  private readonly clock: Clock;
  private readonly partitions: number;
  private readonly log: PushLogWriter;
  private readonly pollIntervalMs: number;
  private readonly leaseMs: number;
  private readonly batchSize: number;
  private readonly gaugeIntervalMs: number;
  private running = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private gaugeTimer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;

  constructor(private readonly options: SchedulerOptions) {
    this.clock = options.clock ?? systemClock;
    this.partitions = options.partitions ?? 16;
    this.log = new PushLogWriter({ bus: options.bus, partitions: this.partitions });
    this.pollIntervalMs = options.pollIntervalMs ?? 250;
    this.leaseMs = options.leaseMs ?? 30_000;
    this.batchSize = options.batchSize ?? 100;
    this.gaugeIntervalMs = options.gaugeIntervalMs ?? 5_000;
    if (!(this.leaseMs > 0 && this.leaseMs < PUSH_LOG_DEDUP_WINDOW_MS)) {
      throw new ConfigError(
        `scheduler lease must be above 0 and below the push log's dedup window of ${PUSH_LOG_DEDUP_WINDOW_MS} ms ` +
          `(got ${this.leaseMs})`,
      );
    }
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedulePoll(0);
    const refresh = () => {
      this.refreshGauges().catch(() => undefined);
    };
    refresh();
    this.gaugeTimer = setInterval(refresh, this.gaugeIntervalMs);
    this.gaugeTimer.unref();
  }

  /** Stops polling; resolves after the poll in progress, if any, has finished. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    if (this.gaugeTimer) clearInterval(this.gaugeTimer);
    this.pollTimer = undefined;
    this.gaugeTimer = undefined;
    await this.polling;
  }

  /**
   * Stores a scheduled push's command and plan with the push (which must have been saved, SCHEDULED) and
   * adds its first occurrence to the schedule.
   */
  async schedule(push: SchedulePushInput): Promise<void> {
    const { accessId, pushId } = push;
    const stored: ScheduledCommand = {
      command: encodeMessage(PushCommand, push.command),
      firstNominalMs: push.nominalMs,
      ...(push.loop === undefined ? {} : { loop: push.loop }),
      ...(push.acceptTime === undefined ? {} : { acceptTime: push.acceptTime }),
    };
    await this.options.pushes.saveCommand(accessId, pushId, stored);
    await this.options.schedule.add(this.partitionOf(accessId), {
      accessId,
      pushId,
      occurrence: 1,
      fireAtMs: push.fireAtMs,
    });
  }

  /**
   * Cancels a scheduled push: SCHEDULED -> CANCELLED (compare-and-set), then removes its occurrences from
   * the schedule. A recurring push whose occurrence is being sent (SENDING) is cancelled too when later
   * occurrences remain: they are what the cancel is for (the loop would otherwise run to its end, up to
   * a year), and the occurrence in flight is delivered only if the applier claimed it already (a push
   * no longer SENDING at that occurrence is not claimed, see PushStore.claimDelivery). Refused (updated
   * false) otherwise, which the result tells: a one-off push or a last occurrence being sent has gone
   * too far. Should the removal fail, the entries fire, find the push CANCELLED and are dropped.
   */
  async cancel(accessId: number, pushId: string): Promise<PushUpdateResult> {
    const { pushes, schedule } = this.options;
    let result = await pushes.update(accessId, pushId, { status: CANCELLED }, [SCHEDULED]);
    // Each refusal means the status moved between the two reads (the applier finished the occurrence,
    // or the scheduler started the next one): a few tries settle it.
    for (let attempt = 0; attempt < 3 && !result.updated; attempt++) {
      if (result.status === SENDING && (await this.occurrenceAfter(accessId, pushId, result.firing))) {
        result = await pushes.update(accessId, pushId, { status: CANCELLED }, [SENDING], result.firing);
      } else if (result.status === SCHEDULED) {
        result = await pushes.update(accessId, pushId, { status: CANCELLED }, [SCHEDULED]);
      } else {
        break;
      }
    }
    if (result.updated) await schedule.remove(this.partitionOf(accessId), accessId, pushId);
    return result;
  }

  /** Whether a recurring push has an occurrence after `occurrence` (false for a one-off push). */
  private async occurrenceAfter(accessId: number, pushId: string, occurrence: number): Promise<boolean> {
    const stored = await this.options.pushes.command(accessId, pushId);
    return (
      stored !== undefined &&
      nextOccurrenceOf(stored, occurrence, ttlOf(PushCommand.decode(stored.command))) !== undefined
    );
  }

  /** One round over every partition (what the timer runs); public for tests. Never rejects. */
  async poll(): Promise<void> {
    await Promise.all(
      Array.from({ length: this.partitions }, (_, partition) => this.pollPartition(partition)),
    );
  }

  /** Reads the gauges from the store; public for tests. */
  async refreshGauges(): Promise<void> {
    const now = this.clock.now();
    const { schedule, metrics } = this.options;
    try {
      const partitions = Array.from({ length: this.partitions }, (_, partition) => partition);
      const [pending, oldest] = await Promise.all([
        Promise.all(partitions.map((partition) => schedule.pending(partition))),
        Promise.all(partitions.map((partition) => schedule.oldestDueMs(partition, now))),
      ]);
      metrics.scheduledPushes.set(pending.reduce((sum, n) => sum + n, 0));
      const due = oldest.filter((at): at is number => at !== undefined);
      metrics.scheduleOverdue.set(due.length === 0 ? 0 : Math.max(0, now - Math.min(...due)) / 1000);
    } catch (error) {
      metrics.scheduleFailures.inc();
      this.options.logger.warn({ err: error }, 'reading the schedule gauges failed');
    }
  }

  private schedulePoll(delayMs: number): void {
    this.pollTimer = setTimeout(() => {
      this.polling = this.poll().finally(() => {
        this.polling = undefined;
        // The next poll starts a full interval after this one ended: polls never overlap.
        if (this.running) this.schedulePoll(this.pollIntervalMs);
      });
    }, delayMs);
    this.pollTimer.unref();
  }

  private async pollPartition(partition: number): Promise<void> {
    try {
      for (;;) {
        const due = await this.options.schedule.claimDue(
          partition,
          this.clock.now(),
          this.leaseMs,
          this.batchSize,
        );
        // One after the other, earliest first: an app's pushes due together reach the log in that order.
        for (const entry of due) await this.fireSafely(partition, entry);
        if (due.length < this.batchSize || !this.running) return;
      }
    } catch (error) {
      this.options.metrics.scheduleFailures.inc();
      this.options.logger.error({ err: error, partition }, 'claiming scheduled pushes failed');
    }
  }

  private async fireSafely(partition: number, entry: ScheduleEntry): Promise<void> {
    try {
      await this.fire(partition, entry);
    } catch (error) {
      // Left claimed: due again when the lease ends, and then fired again (idempotent).
      this.options.metrics.scheduleFailures.inc();
      this.options.logger.error(
        { err: error, accessId: entry.accessId, pushId: entry.pushId, occurrence: entry.occurrence },
        'firing a scheduled push failed; retried after the lease',
      );
    }
  }

  private async fire(partition: number, entry: ScheduleEntry): Promise<void> {
    const { schedule, pushes, metrics } = this.options;
    const { accessId, pushId, occurrence } = entry;
    const now = this.clock.now();
    const started = await pushes.update(accessId, pushId, { status: SENDING, firing: occurrence }, [
      SCHEDULED,
    ]);
    if (!started.updated && !(started.status === SENDING && started.firing === occurrence)) {
      if (started.status === SENDING && started.firing < occurrence) {
        // The previous occurrence is still waiting in the push log: this one comes back after its lease,
        // and reaches the log after it anyway.
        this.options.logger.warn(
          { accessId, pushId, occurrence, sending: started.firing },
          'a scheduled push waits for its previous occurrence to be applied',
        );
        return;
      }
      // Cancelled, finished, gone, or this occurrence was fired and applied already.
      await schedule.complete(partition, entry);
      metrics.scheduledFired.inc({ outcome: started.status === CANCELLED ? 'cancelled' : 'skipped' });
      return;
    }
    metrics.scheduleLateness.observe(Math.max(0, now - entry.fireAtMs) / 1000);
    const stored = await pushes.command(accessId, pushId);
    if (stored === undefined) {
      await pushes.update(accessId, pushId, { status: FAILED, failure: 'its scheduled command was lost' }, [
        SENDING,
      ]);
      await schedule.complete(partition, entry);
      metrics.scheduledFired.inc({ outcome: 'skipped' });
      this.options.logger.error({ accessId, pushId, occurrence }, 'a scheduled push has no stored command');
      return;
    }
    const command = PushCommand.decode(stored.command);
    const ttlMs = ttlOf(command);
    const nominalMs = nominalTimeOf(stored, occurrence);
    const next = nextOccurrenceOf(stored, occurrence, ttlMs);
    if (next !== undefined) {
      await schedule.add(partition, {
        accessId,
        pushId,
        occurrence: next.occurrence,
        fireAtMs: next.fireAtMs,
      });
    }

    const failure = expiry(entry.fireAtMs, nominalMs, ttlMs, now);
    const key = `${accessId}:${pushId}:${occurrence}`;
    if (failure !== undefined && !started.updated) {
      // Fired again after a previous attempt started this occurrence: that attempt may have appended it,
      // late, with an expiry of its own firing time plus the TTL, and the entry may still wait in the log
      // and be delivered. Marking the record here would make the applier drop that entry or report a
      // delivered push as failed. An expired copy under the same key goes after it in the log instead (or
      // is no entry at all within the deduplication window): the applier marks the occurrence expired
      // only if no earlier entry of it claimed it. Expired at 1 ms past the epoch, not at `now`: the
      // applier's clock may be behind this one.
      await this.log.appendOnce(
        {
          ...command,
          occurrence,
          acceptedAtMs: now,
          expiresAtMs: EXPIRED_AT_MS,
          moreOccurrences: next !== undefined,
        },
        key,
      );
      await schedule.complete(partition, entry);
      metrics.scheduledFired.inc({ outcome: 'expired' });
      return;
    }
    if (failure !== undefined) {
      // A loop goes on with its next occurrence; the record keeps why this one was not sent.
      const patch =
        next === undefined
          ? { status: FAILED, failure }
          : { status: SCHEDULED, failure: `occurrence ${occurrence} ${failure}` };
      await pushes.update(accessId, pushId, patch, [SENDING]);
      await schedule.complete(partition, entry);
      metrics.scheduledFired.inc({ outcome: 'expired' });
      return;
    }

    const published = await this.log.appendOnce(
      {
        ...command,
        occurrence,
        acceptedAtMs: now,
        expiresAtMs: now + ttlMs,
        moreOccurrences: next !== undefined,
      },
      key,
    );
    if (published.duplicate) {
      this.options.logger.info(
        { accessId, pushId, occurrence, msgId: published.msgId },
        'a scheduled push fired again after its instance died was already in the push log',
      );
    }
    await schedule.complete(partition, entry);
    metrics.scheduledFired.inc({ outcome: 'sent' });
  }

  private partitionOf(accessId: number): number {
    return pushPartition(accessId, this.partitions);
  }
}

/**
 * Why an occurrence can no longer be sent, if so: its accept window opened after its TTL had run out from
 * its nominal time, or it fires more than its TTL after it was due. A TTL of 0 (online-only pushes)
 * expires nothing here: such a push goes to whoever is connected when it fires.
 */
function expiry(fireAtMs: number, nominalMs: number, ttlMs: number, now: number): string | undefined {
  if (ttlMs <= 0) return undefined;
  if (fireAtMs >= nominalMs + ttlMs) return 'expired before its accept window opened';
  if (now >= fireAtMs + ttlMs) return 'expired before it could be sent';
  return undefined;
}

/** How long each occurrence of a push lives (its command's expiry less its acceptance; 0: online only). */
function ttlOf(command: PushCommand): number {
  return command.expiresAtMs - command.acceptedAtMs;
}

/** When an occurrence of a stored push was due before any accept window moved it (1 is the first). */
function nominalTimeOf(stored: ScheduledCommand, occurrence: number): number {
  const step = stored.loop === undefined ? 0 : (intervalMs(stored.loop.interval) ?? 0);
  return stored.firstNominalMs + (occurrence - 1) * step;
}

/**
 * The occurrence after `occurrence` of a recurring push, with its number, if its loop has one; undefined
 * for a one-off push. The same answer for the scheduler and for a cancel: it depends on the stored push
 * alone. An occurrence fires after the previous one did (nextOccurrence), unless that one's window opened
 * after its TTL had run out: it sent nothing, and the next goes out at the same opening.
 */
function nextOccurrenceOf(stored: ScheduledCommand, occurrence: number, ttlMs: number) {
  if (stored.loop === undefined) return undefined;
  const nominalMs = nominalTimeOf(stored, occurrence);
  const firedAtMs = intoAcceptWindow(nominalMs, stored.acceptTime);
  const sendable = ttlMs <= 0 || firedAtMs < nominalMs + ttlMs;
  const next = nextOccurrence({
    previousFireAtMs: nominalMs,
    interval: stored.loop.interval,
    endTimeMs: stored.loop.endTimeMs,
    acceptTime: stored.acceptTime,
    ...(sendable ? { previousFiredAtMs: firedAtMs } : {}),
  });
  return next === undefined ? undefined : { ...next, occurrence: occurrence + next.steps };
}

import { setTimeout as sleep } from 'node:timers/promises';
import { type Bus, MemoryBus, pushPartition, streams } from '@pushd/bus';
import { ConfigError, ManualClock, silentLogger } from '@pushd/common';
import { MessageType, Platform, PushCommand, PushRecord, PushStatus } from '@pushd/proto';
import { MemoryPushStore, MemoryScheduleStore, type PushStore, type ScheduleStore } from '@pushd/store';
import { waitFor } from '@pushd/testkit';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { createDispatchMetrics, type DispatchMetrics } from './metrics.js';
import { readPushLogEntry } from './push-log.js';
import type { AcceptTimes, Loop, LoopInterval } from './schedule-times.js';
import { Scheduler, type SchedulerOptions } from './scheduler.js';

const APP = 1_500_000_001;
const PARTITION = pushPartition(APP, 16);
const SECOND = 1000;
const HOUR = 3600 * SECOND;
const DAY = 24 * HOUR;
const LEASE = 30 * SECOND;
const DAILY = 1 as LoopInterval;
const { PUSH_STATUS_SCHEDULED: SCHEDULED, PUSH_STATUS_SENDING: SENDING, PUSH_STATUS_DONE: DONE } = PushStatus;
const { PUSH_STATUS_CANCELLED: CANCELLED, PUSH_STATUS_FAILED: FAILED } = PushStatus;

interface Logged {
  command: PushCommand;
  msgId: number;
}

/** Memory stores and bus on one manual clock, and the push log as a consumer reads it. */
function setup() {
  const clock = new ManualClock();
  const pushes = new MemoryPushStore({ clock });
  const schedule = new MemoryScheduleStore();
  const bus = new MemoryBus({ streams: [streams.events, streams.pushes], clock });
  const registry = new Registry();
  const metrics = createDispatchMetrics(registry);
  const log: Logged[] = [];
  bus.consume({
    stream: streams.pushes.name,
    consumer: 'test-log',
    handler: async (data, meta) => {
      log.push(...readPushLogEntry(data, meta.seq));
    },
  });
  const schedulers: Scheduler[] = [];
  const scheduler = (overrides: Partial<SchedulerOptions> = {}) => {
    const made = new Scheduler({
      schedule,
      pushes,
      bus,
      clock,
      metrics,
      logger: silentLogger(),
      leaseMs: LEASE,
      ...overrides,
    });
    schedulers.push(made);
    return made;
  };
  return { clock, pushes, schedule, bus, metrics, log, scheduler, schedulers };
}

type Env = ReturnType<typeof setup>;
let env: Env | undefined;

afterEach(async () => {
  if (!env) return;
  await Promise.all(env.schedulers.map((s) => s.stop()));
  await env.bus.close();
  env = undefined;
});

/** Saves a SCHEDULED push and hands it to the scheduler, as DispatchService will. */
async function schedulePush(
  e: Env,
  pushId: string,
  options: { fireAtMs: number; nominalMs?: number; ttlMs?: number; loop?: Loop; acceptTime?: AcceptTimes },
  scheduler = e.schedulers[0] ?? e.scheduler(),
): Promise<void> {
  const now = e.clock.now();
  const nominalMs = options.nominalMs ?? options.fireAtMs;
  await e.pushes.save(
    PushRecord.fromPartial({
      accessId: APP,
      pushId,
      status: SCHEDULED,
      audience: { target: { $case: 'token', value: 'a'.repeat(40) } },
      message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: `push ${pushId}` },
      createdAtMs: now,
      expiresAtMs: now + (options.ttlMs ?? HOUR),
      sendTimeMs: nominalMs,
    }),
  );
  await scheduler.schedule({
    accessId: APP,
    pushId,
    command: PushCommand.fromPartial({
      accessId: APP,
      pushId,
      message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: `push ${pushId}` },
      acceptedAtMs: now,
      expiresAtMs: now + (options.ttlMs ?? HOUR),
      devices: [{ token: 'a'.repeat(40), platform: Platform.PLATFORM_ANDROID }],
    }),
    nominalMs,
    fireAtMs: options.fireAtMs,
    loop: options.loop,
    acceptTime: options.acceptTime,
  });
}

/** What the PushApplier does with each command it applies: the push becomes SCHEDULED again, or DONE. */
async function applyAll(e: Env, from: number): Promise<void> {
  for (const { command, msgId } of e.log.slice(from)) {
    await e.pushes.update(
      APP,
      command.pushId,
      { status: command.moreOccurrences ? SCHEDULED : DONE, msgId, occurrences: command.occurrence },
      [SENDING],
    );
  }
}

/** Lets the log's consumer take what was published, and checks how many commands it holds. */
async function logHolds(e: Env, count: number): Promise<void> {
  if (count > 0) await waitFor(() => e.log.length >= count || undefined, `${count} commands in the log`);
  await sleep(20);
  expect(e.log).toHaveLength(count);
}

async function fired(metrics: DispatchMetrics): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const value of (await metrics.scheduledFired.get()).values)
    counts[String(value.labels.outcome)] = value.value;
  return counts;
}

/** A store whose calls can be made to fail, standing in for an instance that dies at that step. */
function dying<T extends object>(target: T, method: keyof T): { store: T; dead: { value: boolean } } {
  const dead = { value: true };
  const store = new Proxy(target, {
    get(object, property, receiver) {
      const value = Reflect.get(object, property, receiver);
      if (property !== method || typeof value !== 'function') {
        return typeof value === 'function' ? value.bind(object) : value;
      }
      return async (...args: unknown[]) => {
        if (dead.value) throw new Error(`instance died at ${String(method)}`);
        return value.apply(object, args);
      };
    },
  });
  return { store, dead };
}

/**
 * A daily loop at 07:45 UTC with a 09:00-09:30 window in Berlin, around the night clocks went back: the
 * occurrence due 2025-10-25 (09:45 CEST) fires at the 26th's opening, 09:00 CET (08:00 UTC), where the one
 * due 2025-10-26 (08:45 CET) would fire too.
 */
const AUTUMN_IN_BERLIN = {
  nominal: Date.parse('2025-10-25T07:45:00Z'),
  opening: Date.parse('2025-10-26T08:00:00Z'),
  acceptTime: { timeZone: 'Europe/Berlin', windows: [{ startMinute: 540, endMinute: 570 }] } as AcceptTimes,
};

describe('Scheduler', () => {
  it('fires a push at its time, not before, as an occurrence of the push log', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const due = e.clock.now() + 10 * SECOND;
    await schedulePush(e, '1', { fireAtMs: due, ttlMs: 2 * HOUR });
    expect(await e.schedule.pending(PARTITION)).toBe(1);

    e.clock.set(due - 1);
    await scheduler.poll();
    await logHolds(e, 0);
    expect((await e.pushes.get(APP, '1'))?.status).toBe(SCHEDULED);

    e.clock.set(due + 300);
    await scheduler.poll();
    await logHolds(e, 1);
    expect(e.log[0]!.command).toMatchObject({
      accessId: APP,
      pushId: '1',
      occurrence: 1,
      moreOccurrences: false,
      acceptedAtMs: due + 300,
      expiresAtMs: due + 300 + 2 * HOUR,
      devices: [{ token: 'a'.repeat(40), platform: Platform.PLATFORM_ANDROID }],
    });
    expect((await e.pushes.get(APP, '1'))?.status).toBe(SENDING);
    expect(await e.schedule.pending(PARTITION)).toBe(0);
    expect(await fired(e.metrics)).toEqual({ sent: 1 });
    const lateness = (await e.metrics.scheduleLateness.get()).values;
    expect(
      lateness.find((v) => v.metricName === 'dispatch_schedule_lateness_seconds_sum')?.value,
    ).toBeCloseTo(0.3);
  });

  it('fires every push exactly once with two instances polling the same stores', async () => {
    env = setup();
    const e = env;
    const [a, b] = [e.scheduler({ batchSize: 3 }), e.scheduler({ batchSize: 3 })];
    const start = e.clock.now();
    for (let i = 1; i <= 30; i++) await schedulePush(e, String(i), { fireAtMs: start + i * 100 }, a);
    for (let step = 1; step <= 4; step++) {
      e.clock.set(start + step * 1000);
      await Promise.all([a.poll(), b.poll(), a.poll(), b.poll()]);
    }
    await logHolds(e, 30);
    const ids = e.log.map((entry) => Number(entry.command.pushId));
    expect([...ids].sort((x, y) => x - y)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(await fired(e.metrics)).toEqual({ sent: 30 });
  });

  it('polls on its own once started, and stops', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler({ pollIntervalMs: 5 });
    await schedulePush(e, '1', { fireAtMs: e.clock.now() + SECOND });
    scheduler.start();
    await sleep(30);
    expect(e.log).toHaveLength(0);
    e.clock.advance(SECOND);
    await logHolds(e, 1);
    await scheduler.stop();
    await schedulePush(e, '2', { fireAtMs: e.clock.now() });
    await logHolds(e, 1);
  });

  it('never publishes a cancelled push', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const due = e.clock.now() + SECOND;
    await schedulePush(e, '1', { fireAtMs: due });
    await schedulePush(e, '2', { fireAtMs: due });
    expect(await scheduler.cancel(APP, '1')).toEqual({ updated: true, status: CANCELLED, firing: 0 });
    expect(await e.schedule.pending(PARTITION)).toBe(1);
    // Cancelled while its entry stays (a removal that failed, or one racing the claim): dropped when due.
    await e.pushes.update(APP, '2', { status: CANCELLED }, [SCHEDULED]);
    e.clock.set(due);
    await scheduler.poll();
    await logHolds(e, 0);
    expect(await e.schedule.pending(PARTITION)).toBe(0);
    expect(await fired(e.metrics)).toEqual({ cancelled: 1 });
    expect((await e.pushes.get(APP, '1'))?.status).toBe(CANCELLED);
    // A push being sent can no longer be cancelled.
    await schedulePush(e, '3', { fireAtMs: due });
    await scheduler.poll();
    expect(await scheduler.cancel(APP, '3')).toEqual({ updated: false, status: SENDING, firing: 1 });
  });

  it('cancels a loop while one of its occurrences is being sent, but not its last occurrence', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const start = e.clock.now() + HOUR;
    await schedulePush(e, '1', { fireAtMs: start, loop: { interval: DAILY, endTimeMs: start + DAY + HOUR } });
    e.clock.set(start + 200);
    await scheduler.poll();
    await logHolds(e, 1);
    // Occurrence 1 waits in the log (SENDING); occurrence 2 is scheduled: the loop can still be stopped.
    expect(await scheduler.cancel(APP, '1')).toMatchObject({ updated: true, status: CANCELLED });
    expect(await e.schedule.pending(PARTITION)).toBe(0);
    // The applier's update of occurrence 1 leaves the cancel alone, and no later occurrence fires.
    await applyAll(e, 0);
    expect((await e.pushes.get(APP, '1'))?.status).toBe(CANCELLED);
    e.clock.set(start + DAY + 200);
    await scheduler.poll();
    await logHolds(e, 1);

    // The last occurrence being sent has gone too far, as a one-off push being sent has.
    await schedulePush(e, '2', { fireAtMs: start + DAY, loop: { interval: DAILY, endTimeMs: start + DAY } });
    await scheduler.poll();
    await logHolds(e, 2);
    expect(await scheduler.cancel(APP, '2')).toEqual({ updated: false, status: SENDING, firing: 1 });
  });

  describe('an instance that dies with a claim is replaced after the lease, and the log holds one command', () => {
    for (const [step, die] of [
      ['after claiming', (e: Env) => dying<PushStore>(e.pushes, 'update')],
      ['after starting the occurrence', (e: Env) => dying<Bus>(e.bus, 'publishDurable')],
      ['after publishing', (e: Env) => dying<ScheduleStore>(e.schedule, 'complete')],
    ] as const) {
      it(step, async () => {
        env = setup();
        const e = env;
        const due = e.clock.now() + SECOND;
        const crash = die(e);
        const key = step === 'after claiming' ? 'pushes' : step === 'after publishing' ? 'schedule' : 'bus';
        const doomed = e.scheduler({ [key]: crash.store } as Partial<SchedulerOptions>);
        const survivor = e.scheduler();
        await schedulePush(e, '1', { fireAtMs: due }, survivor);
        e.clock.set(due);
        await doomed.poll();
        await logHolds(e, step === 'after publishing' ? 1 : 0);
        // Within the lease the claim hides the entry from the other instance.
        e.clock.set(due + LEASE - 1);
        await survivor.poll();
        await logHolds(e, step === 'after publishing' ? 1 : 0);
        e.clock.set(due + LEASE);
        await survivor.poll();
        await logHolds(e, 1);
        expect(e.log[0]!.command).toMatchObject({ pushId: '1', occurrence: 1 });
        expect(await e.schedule.pending(PARTITION)).toBe(0);
        expect((await e.pushes.get(APP, '1'))?.status).toBe(SENDING);
        // The dead instance coming back changes nothing.
        crash.dead.value = false;
        await doomed.poll();
        await survivor.poll();
        await logHolds(e, 1);
      });
    }
  });

  it('fires a daily loop until its end, occurrence after occurrence', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const start = e.clock.now() + HOUR;
    await schedulePush(e, '1', {
      fireAtMs: start,
      loop: { interval: DAILY, endTimeMs: start + 4 * DAY + HOUR },
    });
    for (let day = 0; day <= 6; day++) {
      e.clock.set(start + day * DAY + 200);
      const before = e.log.length;
      await scheduler.poll();
      await logHolds(e, Math.min(day + 1, 5));
      await applyAll(e, before);
    }
    expect(e.log.map((entry) => entry.command.occurrence)).toEqual([1, 2, 3, 4, 5]);
    expect(e.log.map((entry) => entry.command.moreOccurrences)).toEqual([true, true, true, true, false]);
    expect(e.log.map((entry) => entry.command.acceptedAtMs)).toEqual(
      [0, 1, 2, 3, 4].map((d) => start + d * DAY + 200),
    );
    expect(e.log.map((entry) => entry.command.expiresAtMs - entry.command.acceptedAtMs)).toEqual(
      Array(5).fill(HOUR),
    );
    expect(await e.pushes.get(APP, '1')).toMatchObject({
      status: DONE,
      occurrences: 5,
      msgId: e.log[4]!.msgId,
    });
    expect(await e.schedule.pending(PARTITION)).toBe(0);
  });

  it('moves occurrences of a loop into its accept windows', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    // The clock starts at 2026-01-01T00:00Z; nominal 06:00 UTC daily, window 20:00-21:00 in Shanghai (12:00 UTC).
    const nominal = e.clock.now() + 6 * HOUR;
    const window: AcceptTimes = {
      timeZone: 'Asia/Shanghai',
      windows: [{ startMinute: 1200, endMinute: 1260 }],
    };
    await schedulePush(e, '1', {
      nominalMs: nominal,
      fireAtMs: nominal + 6 * HOUR,
      ttlMs: 12 * HOUR,
      loop: { interval: DAILY, endTimeMs: nominal + DAY + 7 * HOUR },
      acceptTime: window,
    });
    e.clock.set(nominal + 6 * HOUR);
    await scheduler.poll();
    await logHolds(e, 1);
    await applyAll(e, 0);
    e.clock.set(nominal + DAY + 6 * HOUR - 1);
    await scheduler.poll();
    await logHolds(e, 1);
    e.clock.set(nominal + DAY + 6 * HOUR);
    await scheduler.poll();
    await logHolds(e, 2);
    expect(e.log[1]!.command).toMatchObject({ occurrence: 2, moreOccurrences: false });
  });

  it('fires a daily loop once per window on the day clocks go back, skipping the occurrence that would fire twice', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const { nominal, opening: firstFire, acceptTime } = AUTUMN_IN_BERLIN;
    e.clock.set(nominal - HOUR);
    await schedulePush(e, '1', {
      nominalMs: nominal,
      fireAtMs: firstFire,
      ttlMs: 72 * HOUR,
      loop: { interval: DAILY, endTimeMs: nominal + 3 * DAY },
      acceptTime,
    });
    e.clock.set(firstFire);
    await scheduler.poll();
    await logHolds(e, 1);
    await applyAll(e, 0);
    // Nothing else at that opening, even after a lease would have passed.
    e.clock.set(firstFire + 10 * 60_000);
    await scheduler.poll();
    await logHolds(e, 1);
    // The next fires at the 27th's opening, as occurrence 3 (the 26th's was skipped).
    e.clock.set(Date.parse('2025-10-27T08:00:00Z'));
    await scheduler.poll();
    await logHolds(e, 2);
    expect(e.log.map((entry) => entry.command.occurrence)).toEqual([1, 3]);
  });

  it('sends the occurrence due at an opening where the one before expired unsent, and refuses to cancel a last one being sent', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const { nominal, opening, acceptTime: berlin } = AUTUMN_IN_BERLIN;
    e.clock.set(nominal - HOUR);
    // A 24-hour TTL: occurrence 1, moved 24 h 15 min by the window, expires unsent; occurrence 2 (08:45 CET
    // on the 26th) goes out at that same opening.
    await schedulePush(e, '1', {
      nominalMs: nominal,
      fireAtMs: opening,
      ttlMs: 24 * HOUR,
      loop: { interval: DAILY, endTimeMs: nominal + 2 * DAY },
      acceptTime: berlin,
    });
    e.clock.set(opening);
    await scheduler.poll();
    await scheduler.poll();
    await logHolds(e, 1);
    expect(e.log[0]!.command).toMatchObject({ occurrence: 2 });

    // With a 72-hour TTL occurrence 1 is sent at that opening and the loop, ending on the 26th, has no
    // occurrence after it (the 26th's is skipped): it is the last, and too far gone to cancel.
    await schedulePush(e, '2', {
      nominalMs: nominal,
      fireAtMs: opening,
      ttlMs: 72 * HOUR,
      loop: { interval: DAILY, endTimeMs: Date.parse('2025-10-26T12:00:00Z') },
      acceptTime: berlin,
    });
    await scheduler.poll();
    await logHolds(e, 2);
    expect(e.log[1]!.command).toMatchObject({ occurrence: 1, moreOccurrences: false });
    expect(await scheduler.cancel(APP, '2')).toEqual({ updated: false, status: SENDING, firing: 1 });
  });

  it('waits for the previous occurrence to be applied before firing the next', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const start = e.clock.now();
    await schedulePush(e, '1', {
      fireAtMs: start,
      ttlMs: 2 * DAY,
      loop: { interval: DAILY, endTimeMs: start + DAY },
    });
    await scheduler.poll();
    await logHolds(e, 1);
    // Occurrence 1 is still SENDING (not applied) when occurrence 2 is due.
    e.clock.set(start + DAY);
    await scheduler.poll();
    await logHolds(e, 1);
    await applyAll(e, 0);
    e.clock.set(start + DAY + LEASE);
    await scheduler.poll();
    await logHolds(e, 2);
    expect(e.log[1]!.command.occurrence).toBe(2);
  });

  it('fails an occurrence that fires after its TTL ran out', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const due = e.clock.now() + SECOND;
    await schedulePush(e, '1', { fireAtMs: due, ttlMs: HOUR });
    e.clock.set(due + HOUR);
    await scheduler.poll();
    await logHolds(e, 0);
    expect(await e.pushes.get(APP, '1')).toMatchObject({
      status: FAILED,
      failure: 'expired before it could be sent',
    });
    expect(await fired(e.metrics)).toEqual({ expired: 1 });
    expect(await e.schedule.pending(PARTITION)).toBe(0);
  });

  it('leaves an occurrence fired again past its TTL to the entry its first attempt may have appended', async () => {
    env = setup();
    const e = env;
    const due = e.clock.now() + SECOND;
    const crash = dying<ScheduleStore>(e.schedule, 'complete');
    const doomed = e.scheduler({ schedule: crash.store });
    const survivor = e.scheduler();
    await schedulePush(e, '1', { fireAtMs: due, ttlMs: HOUR }, survivor);
    // The first attempt fires 10 minutes late (its entry expires an hour after that) and dies before
    // its bookkeeping; the claim comes due again and is fired again past the nominal TTL.
    e.clock.set(due + 10 * 60 * SECOND);
    await doomed.poll();
    await logHolds(e, 1);
    e.clock.set(due + HOUR + SECOND);
    await survivor.poll();
    // Not marked failed here: an expired copy goes after the first entry, which decides.
    await logHolds(e, 2);
    expect((await e.pushes.get(APP, '1'))?.status).toBe(SENDING);
    const [first, again] = e.log.map((logged) => logged.command);
    expect(first).toMatchObject({ occurrence: 1, expiresAtMs: due + 10 * 60 * SECOND + HOUR });
    // Expired whatever the applier's clock says.
    expect(again).toMatchObject({ occurrence: 1, acceptedAtMs: due + HOUR + SECOND, expiresAtMs: 1 });
    await applyAll(e, 0);
    expect((await e.pushes.get(APP, '1'))?.status).toBe(DONE);
    expect(await e.schedule.pending(PARTITION)).toBe(0);
  });

  it('fails an occurrence whose accept window opens after its TTL', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const nominal = e.clock.now() + HOUR;
    await schedulePush(e, '1', { nominalMs: nominal, fireAtMs: nominal + 3 * HOUR, ttlMs: 2 * HOUR });
    e.clock.set(nominal + 3 * HOUR);
    await scheduler.poll();
    await logHolds(e, 0);
    expect(await e.pushes.get(APP, '1')).toMatchObject({
      status: FAILED,
      failure: 'expired before its accept window opened',
    });
  });

  it('skips an expired occurrence of a loop and goes on with the next', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler();
    const start = e.clock.now();
    await schedulePush(e, '1', {
      fireAtMs: start,
      ttlMs: HOUR,
      loop: { interval: DAILY, endTimeMs: start + 2 * DAY },
    });
    // Dispatch was down for a day and a half: occurrences 1 and 2 expired, 3 is still ahead.
    e.clock.set(start + DAY + 12 * HOUR);
    await scheduler.poll();
    await scheduler.poll();
    await logHolds(e, 0);
    expect(await e.pushes.get(APP, '1')).toMatchObject({
      status: SCHEDULED,
      failure: 'occurrence 2 expired before it could be sent',
    });
    expect(await fired(e.metrics)).toEqual({ expired: 2 });
    e.clock.set(start + 2 * DAY);
    await scheduler.poll();
    await logHolds(e, 1);
    expect(e.log[0]!.command).toMatchObject({ occurrence: 3, moreOccurrences: false });
  });

  it('reports the scheduled pushes and how long the oldest due one has waited', async () => {
    env = setup();
    const e = env;
    const scheduler = e.scheduler({ partitions: 16 });
    const now = e.clock.now();
    await schedulePush(e, '1', { fireAtMs: now - 5 * SECOND });
    await schedulePush(e, '2', { fireAtMs: now + HOUR });
    await scheduler.refreshGauges();
    expect((await e.metrics.scheduledPushes.get()).values[0]?.value).toBe(2);
    expect((await e.metrics.scheduleOverdue.get()).values[0]?.value).toBe(5);
    await scheduler.poll();
    await scheduler.refreshGauges();
    expect((await e.metrics.scheduledPushes.get()).values[0]?.value).toBe(1);
    expect((await e.metrics.scheduleOverdue.get()).values[0]?.value).toBe(0);
  });

  it('refuses a lease as long as the push log dedup window', () => {
    env = setup();
    expect(() => env!.scheduler({ leaseMs: 120_000 })).toThrow(ConfigError);
    expect(() => env!.scheduler({ leaseMs: 0 })).toThrow(ConfigError);
  });
});

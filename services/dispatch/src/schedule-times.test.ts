import { PushdError } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import {
  type AcceptTimes,
  firstFireTime,
  inAcceptWindow,
  intoAcceptWindow,
  type LoopInterval,
  nextOccurrence,
  validateAcceptTime,
  validateLoop,
  validateSchedule,
  validateSendTime,
} from './schedule-times.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const DAILY = 1 as LoopInterval;
const WEEKLY = 2 as LoopInterval;
const at = (iso: string) => Date.parse(iso);

function windows(timeZone: string, ...pairs: [number, number][]): AcceptTimes {
  return { timeZone, windows: pairs.map(([startMinute, endMinute]) => ({ startMinute, endMinute })) };
}

function invalid(call: () => unknown): { field: string | undefined; message: string } {
  try {
    call();
  } catch (error) {
    expect(error).toBeInstanceOf(PushdError);
    expect((error as PushdError).code).toBe('INVALID_ARGUMENT');
    return { field: (error as PushdError).metadata?.field, message: (error as PushdError).message };
  }
  throw new Error('did not throw');
}

describe('firstFireTime', () => {
  const now = at('2026-03-10T12:00:00Z');

  it('is the send time when ahead, else now', () => {
    expect(firstFireTime({ now })).toBe(now);
    expect(firstFireTime({ now, sendTimeMs: now + HOUR })).toBe(now + HOUR);
    expect(firstFireTime({ now, sendTimeMs: now - HOUR })).toBe(now);
    expect(firstFireTime({ now, sendTimeMs: 0 })).toBe(now);
  });

  it('keeps a time inside a window and moves one outside to the next window start (UTC)', () => {
    const nineToSix = windows('', [540, 1080]);
    expect(firstFireTime({ now: at('2026-03-10T08:00:00Z'), acceptTime: nineToSix })).toBe(
      at('2026-03-10T09:00:00Z'),
    );
    expect(firstFireTime({ now: at('2026-03-10T09:00:00Z'), acceptTime: nineToSix })).toBe(
      at('2026-03-10T09:00:00Z'),
    );
    expect(firstFireTime({ now: at('2026-03-10T17:59:59.999Z'), acceptTime: nineToSix })).toBe(
      at('2026-03-10T17:59:59.999Z'),
    );
    // The end is exclusive.
    expect(firstFireTime({ now: at('2026-03-10T18:00:00Z'), acceptTime: nineToSix })).toBe(
      at('2026-03-11T09:00:00Z'),
    );
    expect(firstFireTime({ now: at('2026-03-10T08:59:30Z'), acceptTime: nineToSix })).toBe(
      at('2026-03-10T09:00:00Z'),
    );
    // The send time is moved, not now.
    expect(
      firstFireTime({
        now: at('2026-03-10T10:00:00Z'),
        sendTimeMs: at('2026-03-12T20:00:00Z'),
        acceptTime: nineToSix,
      }),
    ).toBe(at('2026-03-13T09:00:00Z'));
  });

  it('takes the earliest of several windows', () => {
    const two = windows('UTC', [1200, 1260], [480, 540]);
    expect(firstFireTime({ now: at('2026-03-10T07:00:00Z'), acceptTime: two })).toBe(
      at('2026-03-10T08:00:00Z'),
    );
    expect(firstFireTime({ now: at('2026-03-10T10:00:00Z'), acceptTime: two })).toBe(
      at('2026-03-10T20:00:00Z'),
    );
    expect(firstFireTime({ now: at('2026-03-10T21:00:00Z'), acceptTime: two })).toBe(
      at('2026-03-11T08:00:00Z'),
    );
  });

  it('reads windows on the wall clock of Asia/Shanghai (UTC+8)', () => {
    const nineToTen = windows('Asia/Shanghai', [540, 600]);
    // 08:30 in Shanghai is 00:30 UTC; the window opens at 09:00 local, 01:00 UTC.
    expect(firstFireTime({ now: at('2026-03-10T00:30:00Z'), acceptTime: nineToTen })).toBe(
      at('2026-03-10T01:00:00Z'),
    );
    expect(firstFireTime({ now: at('2026-03-10T01:59:00Z'), acceptTime: nineToTen })).toBe(
      at('2026-03-10T01:59:00Z'),
    );
    // 10:00 local: closed until tomorrow.
    expect(firstFireTime({ now: at('2026-03-10T02:00:00Z'), acceptTime: nineToTen })).toBe(
      at('2026-03-11T01:00:00Z'),
    );
    // 20:00 UTC on the 10th is already 04:00 on the 11th in Shanghai: the window of the 11th.
    expect(firstFireTime({ now: at('2026-03-10T20:00:00Z'), acceptTime: nineToTen })).toBe(
      at('2026-03-11T01:00:00Z'),
    );
  });

  it('handles a window spanning midnight', () => {
    const night = windows('Asia/Shanghai', [1320, 360]); // 22:00 to 06:00 local = 14:00 to 22:00 UTC
    expect(firstFireTime({ now: at('2026-03-10T06:00:00Z'), acceptTime: night })).toBe(
      at('2026-03-10T14:00:00Z'),
    );
    expect(firstFireTime({ now: at('2026-03-10T15:00:00Z'), acceptTime: night })).toBe(
      at('2026-03-10T15:00:00Z'),
    ); // 23:00
    expect(firstFireTime({ now: at('2026-03-10T16:30:00Z'), acceptTime: night })).toBe(
      at('2026-03-10T16:30:00Z'),
    ); // 00:30
    expect(firstFireTime({ now: at('2026-03-10T21:59:00Z'), acceptTime: night })).toBe(
      at('2026-03-10T21:59:00Z'),
    ); // 05:59
    expect(firstFireTime({ now: at('2026-03-10T22:00:00Z'), acceptTime: night })).toBe(
      at('2026-03-11T14:00:00Z'),
    ); // 06:00
    // A window from 1440 (midnight) is the next midnight.
    expect(firstFireTime({ now: at('2026-03-10T12:00:00Z'), acceptTime: windows('UTC', [1440, 60]) })).toBe(
      at('2026-03-11T00:00:00Z'),
    );
    // The whole day.
    expect(firstFireTime({ now: at('2026-03-10T12:34:00Z'), acceptTime: windows('UTC', [0, 1440]) })).toBe(
      at('2026-03-10T12:34:00Z'),
    );
  });

  describe('Europe/Paris across DST', () => {
    const nineToTen = windows('Europe/Paris', [540, 600]);

    it('keeps the local hours of a window across the spring change (CET +1 to CEST +2, 2026-03-29)', () => {
      // 10:30 CET on the 28th: the window of the 29th opens at 09:00 CEST = 07:00 UTC, not 08:00.
      expect(firstFireTime({ now: at('2026-03-28T09:30:00Z'), acceptTime: nineToTen })).toBe(
        at('2026-03-29T07:00:00Z'),
      );
      expect(firstFireTime({ now: at('2026-03-27T09:30:00Z'), acceptTime: nineToTen })).toBe(
        at('2026-03-28T08:00:00Z'),
      );
      expect(inAcceptWindow(at('2026-03-29T07:59:00Z'), nineToTen)).toBe(true);
      expect(inAcceptWindow(at('2026-03-29T08:00:00Z'), nineToTen)).toBe(false);
    });

    it('keeps the local hours across the autumn change (CEST to CET, 2026-10-25)', () => {
      expect(firstFireTime({ now: at('2026-10-24T09:30:00Z'), acceptTime: nineToTen })).toBe(
        at('2026-10-25T08:00:00Z'),
      );
    });

    it('skips a window that the spring-forward gap removes, and shifts one the gap cuts into', () => {
      // 02:00-03:00 does not exist on 2026-03-29: the next one is on the 30th, 02:00 CEST = 00:00 UTC.
      expect(
        firstFireTime({ now: at('2026-03-29T00:30:00Z'), acceptTime: windows('Europe/Paris', [120, 180]) }),
      ).toBe(at('2026-03-30T00:00:00Z'));
      // 02:30-04:00: 02:30 does not exist; it is read as 03:30 CEST (01:30 UTC), inside the window.
      expect(
        firstFireTime({ now: at('2026-03-29T00:30:00Z'), acceptTime: windows('Europe/Paris', [150, 240]) }),
      ).toBe(at('2026-03-29T01:30:00Z'));
    });

    it('takes the first of the repeated hour on the fall-back day', () => {
      // 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET) on 2026-10-25.
      expect(
        firstFireTime({ now: at('2026-10-24T23:00:00Z'), acceptTime: windows('Europe/Paris', [150, 240]) }),
      ).toBe(at('2026-10-25T00:30:00Z'));
    });
  });
});

describe('nextOccurrence', () => {
  const start = at('2026-03-10T08:00:00Z');

  it('adds 24 hours or 7 days to the nominal time', () => {
    expect(nextOccurrence({ previousFireAtMs: start, interval: DAILY, endTimeMs: start + 10 * DAY })).toEqual(
      {
        nominalMs: start + DAY,
        fireAtMs: start + DAY,
        steps: 1,
      },
    );
    expect(
      nextOccurrence({ previousFireAtMs: start, interval: WEEKLY, endTimeMs: start + 10 * DAY }),
    ).toEqual({
      nominalMs: start + 7 * DAY,
      fireAtMs: start + 7 * DAY,
      steps: 1,
    });
  });

  it('ends with the loop: an occurrence exactly at the end is the last', () => {
    expect(
      nextOccurrence({ previousFireAtMs: start, interval: DAILY, endTimeMs: start + DAY }),
    ).toBeDefined();
    expect(
      nextOccurrence({ previousFireAtMs: start, interval: DAILY, endTimeMs: start + DAY - 1 }),
    ).toBeUndefined();
    expect(
      nextOccurrence({ previousFireAtMs: start, interval: WEEKLY, endTimeMs: start + 6 * DAY }),
    ).toBeUndefined();
    expect(
      nextOccurrence({ previousFireAtMs: start, interval: 0 as LoopInterval, endTimeMs: start + DAY }),
    ).toBeUndefined();
  });

  it('moves the occurrence into the windows, from its nominal time', () => {
    // Nominal 08:00 UTC = 16:00 in Shanghai; the window is 20:00-21:00 local (12:00 UTC).
    const evening = windows('Asia/Shanghai', [1200, 1260]);
    expect(
      nextOccurrence({
        previousFireAtMs: start,
        interval: DAILY,
        endTimeMs: start + 10 * DAY,
        acceptTime: evening,
      }),
    ).toEqual({ nominalMs: start + DAY, fireAtMs: at('2026-03-11T12:00:00Z'), steps: 1 });
    // A window that would move the last occurrence past the end: none.
    expect(
      nextOccurrence({
        previousFireAtMs: start,
        interval: DAILY,
        endTimeMs: start + DAY + HOUR,
        acceptTime: evening,
      }),
    ).toBeUndefined();
  });

  it('keeps the UTC time of the nominal occurrence across DST, while windows keep local hours', () => {
    // Daily 08:00 UTC is 09:00 CET before 2026-03-29 and 10:00 CEST after; with a 09:00-09:30 Paris window,
    // occurrences after the change wait for the next day's window.
    const paris = windows('Europe/Paris', [540, 570]);
    const before = at('2026-03-28T08:00:00Z');
    expect(inAcceptWindow(before, paris)).toBe(true);
    expect(
      nextOccurrence({
        previousFireAtMs: before,
        interval: DAILY,
        endTimeMs: before + 10 * DAY,
        acceptTime: paris,
      }),
    ).toEqual({ nominalMs: at('2026-03-29T08:00:00Z'), fireAtMs: at('2026-03-30T07:00:00Z'), steps: 1 });
  });

  it('skips an occurrence a window would fire together with the one before, on the day clocks go back', () => {
    // Daily 07:45 UTC with a 09:00-09:30 Berlin window. On 2025-10-25 that is 09:45 CEST, past the window:
    // it fires at the next opening, 2025-10-26 09:00 CET (08:00 UTC), 24 h 15 min later. The occurrence due
    // 2025-10-26 07:45 UTC (08:45 CET) would fire at that same opening: the next to fire is the 27th's.
    const berlin = windows('Europe/Berlin', [540, 570]);
    const previous = at('2025-10-25T07:45:00Z');
    const fired = at('2025-10-26T08:00:00Z');
    const loop = { interval: DAILY, endTimeMs: previous + 10 * DAY, acceptTime: berlin };
    expect(nextOccurrence({ ...loop, previousFireAtMs: previous })).toEqual({
      nominalMs: at('2025-10-26T07:45:00Z'),
      fireAtMs: fired,
      steps: 1,
    });
    expect(nextOccurrence({ ...loop, previousFireAtMs: previous, previousFiredAtMs: fired })).toEqual({
      nominalMs: at('2025-10-27T07:45:00Z'),
      fireAtMs: at('2025-10-27T08:00:00Z'),
      steps: 2,
    });
    // None left before the end: none at all.
    expect(
      nextOccurrence({
        ...loop,
        endTimeMs: at('2025-10-26T12:00:00Z'),
        previousFireAtMs: previous,
        previousFiredAtMs: fired,
      }),
    ).toBeUndefined();
  });
});

describe('intoAcceptWindow', () => {
  it('leaves a time alone without windows', () => {
    expect(intoAcceptWindow(123, undefined)).toBe(123);
    expect(intoAcceptWindow(123, windows('UTC'))).toBe(123);
  });
});

describe('validation', () => {
  const now = at('2026-03-10T12:00:00Z');

  it('send_time_ms: at most 30 days ahead, any past time', () => {
    validateSendTime(undefined, now);
    validateSendTime(now - 365 * DAY, now);
    validateSendTime(now + 30 * DAY, now);
    expect(invalid(() => validateSendTime(now + 30 * DAY + 1, now))).toMatchObject({
      field: 'send_time_ms',
      message: expect.stringMatching(/30 days/),
    });
  });

  it('loop: an interval, an end within a year and not before the first send', () => {
    validateLoop({ interval: DAILY, endTimeMs: now + 365 * DAY }, now, now);
    expect(
      invalid(() => validateLoop({ interval: 0 as LoopInterval, endTimeMs: now + DAY }, now, now)).field,
    ).toBe('loop.interval');
    expect(
      invalid(() => validateLoop({ interval: 7 as LoopInterval, endTimeMs: now + DAY }, now, now)).field,
    ).toBe('loop.interval');
    expect(invalid(() => validateLoop({ interval: DAILY, endTimeMs: 0 }, now, now))).toMatchObject({
      field: 'loop.end_time_ms',
      message: expect.stringMatching(/required/),
    });
    expect(
      invalid(() => validateLoop({ interval: WEEKLY, endTimeMs: now + 366 * DAY }, now, now)),
    ).toMatchObject({
      field: 'loop.end_time_ms',
      message: expect.stringMatching(/1 year/),
    });
    expect(
      invalid(() => validateLoop({ interval: DAILY, endTimeMs: now + HOUR }, now + DAY, now)).field,
    ).toBe('loop.end_time_ms');
  });

  it('accept_time: 1 to 10 windows of minutes 0..1440, not empty, in a known zone', () => {
    validateAcceptTime(windows('Asia/Shanghai', [0, 1440], [1440, 60], [1320, 360], [1320, 0]));
    expect(invalid(() => validateAcceptTime(windows('UTC', [1440, 0])))).toMatchObject({
      field: 'accept_time.windows[0]',
      message: expect.stringMatching(/never opens/),
    });
    validateAcceptTime(windows('', [0, 1]));
    expect(invalid(() => validateAcceptTime(windows('UTC'))).field).toBe('accept_time.windows');
    const eleven = Array.from({ length: 11 }, (_, i) => [i, i + 1] as [number, number]);
    expect(invalid(() => validateAcceptTime(windows('UTC', ...eleven)))).toMatchObject({
      field: 'accept_time.windows',
      message: expect.stringMatching(/at most 10/),
    });
    expect(invalid(() => validateAcceptTime(windows('UTC', [0, 60], [1441, 60]))).field).toBe(
      'accept_time.windows[1].start_minute',
    );
    expect(invalid(() => validateAcceptTime(windows('UTC', [0, 1500]))).field).toBe(
      'accept_time.windows[0].end_minute',
    );
    expect(invalid(() => validateAcceptTime(windows('UTC', [600, 600]))).field).toBe(
      'accept_time.windows[0]',
    );
    expect(invalid(() => validateAcceptTime(windows('Mars/Olympus_Mons', [0, 60])))).toMatchObject({
      field: 'accept_time.time_zone',
      message: expect.stringMatching(/Mars\/Olympus_Mons/),
    });
  });

  it('validateSchedule tells when the push is first due and whether it waits for the scheduler', () => {
    expect(validateSchedule({}, now)).toEqual({ nominalMs: now, fireAtMs: now, scheduled: false });
    expect(validateSchedule({ sendTimeMs: now - 1 }, now)).toEqual({
      nominalMs: now,
      fireAtMs: now,
      scheduled: false,
    });
    expect(validateSchedule({ sendTimeMs: now + HOUR }, now)).toEqual({
      nominalMs: now + HOUR,
      fireAtMs: now + HOUR,
      scheduled: true,
    });
    // Now (12:00 UTC) is outside 14:00-15:00: it waits for the window.
    expect(validateSchedule({ acceptTime: windows('UTC', [840, 900]) }, now)).toEqual({
      nominalMs: now,
      fireAtMs: now + 2 * HOUR,
      scheduled: true,
    });
    expect(validateSchedule({ acceptTime: windows('UTC', [660, 900]) }, now).scheduled).toBe(false);
    expect(validateSchedule({ loop: { interval: DAILY, endTimeMs: now + DAY } }, now)).toEqual({
      nominalMs: now,
      fireAtMs: now,
      scheduled: true,
    });
    expect(
      invalid(() =>
        validateSchedule({ loop: { interval: DAILY, endTimeMs: now + HOUR }, sendTimeMs: now + DAY }, now),
      ).field,
    ).toBe('loop.end_time_ms');
    // Ending at 13:00 with a window from 14:00: its first occurrence would come after its end.
    const pastTheEnd = { interval: DAILY, endTimeMs: now + HOUR };
    expect(
      invalid(() => validateSchedule({ loop: pastTheEnd, acceptTime: windows('UTC', [840, 900]) }, now)),
    ).toMatchObject({
      field: 'loop.end_time_ms',
      message: expect.stringMatching(/first occurrence at .*14:00/),
    });
    // The window opening before the end is fine.
    expect(
      validateSchedule(
        { loop: { ...pastTheEnd, endTimeMs: now + 3 * HOUR }, acceptTime: windows('UTC', [840, 900]) },
        now,
      ),
    ).toMatchObject({ fireAtMs: now + 2 * HOUR, scheduled: true });
  });
});

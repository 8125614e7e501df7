import { type AudienceExpr, matches } from '@pushd/audience';
import { Platform } from '@pushd/proto';
import { beforeEach, describe, expect, it } from 'vitest';
import { type AudienceIndex, DAY_MS } from './audience-index.js';

const APP = 1_500_000_001;
const OTHER_APP = 1_500_000_002;
// Real time: Redis expires day bitmaps by its own clock, so a day bitmap of a fixed past date would be gone.
const NOW = Date.now();

const tag = (name: string): AudienceExpr => ({ kind: 'tag', tag: name });
const and = (...terms: AudienceExpr[]): AudienceExpr => ({ kind: 'and', terms });
const or = (...terms: AudienceExpr[]): AudienceExpr => ({ kind: 'or', terms });
const not = (term: AudienceExpr): AudienceExpr => ({ kind: 'not', term });
const ALL: AudienceExpr = { kind: 'all' };

/** A small deterministic generator (mulberry32), so that a failing population can be reproduced. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface SimDevice {
  index: number;
  registered: boolean;
  platform: Platform;
  tags: Set<string>;
  online: boolean;
  /** Days before NOW's day on which the device was seen. */
  seenDaysAgo: number[];
}

const USER_TAGS = ['vip', 'gamer', 'beijing', '省份:广东', 'a b'];
const LEAVES = [
  ...USER_TAGS,
  'never-set',
  'pushd:platform:android',
  'pushd:platform:ios',
  'pushd:app_version:2.0',
  'pushd:active:1d',
  'pushd:active:7d',
  'pushd:active:30d',
];

function population(rand: () => number, size: number): SimDevice[] {
  const devices: SimDevice[] = [];
  let index = 0;
  for (let n = 0; n < size; n++) {
    // Gaps in the numbering, as crashes and re-registrations leave them.
    index += rand() < 0.2 ? 2 + Math.floor(rand() * 40) : 1;
    devices.push({
      index,
      registered: rand() < 0.85,
      platform: rand() < 0.6 ? Platform.PLATFORM_ANDROID : Platform.PLATFORM_IOS,
      tags: new Set([...USER_TAGS, 'pushd:app_version:2.0'].filter(() => rand() < 0.4)),
      online: rand() < 0.3,
      seenDaysAgo: [0, 1, 3, 6, 7, 12, 29, 30, 45].filter(() => rand() < 0.2),
    });
  }
  return devices;
}

function randomExpr(rand: () => number, depth: number): AudienceExpr {
  const r = rand();
  if (depth === 0 || r < 0.35) {
    if (rand() < 0.05) return ALL;
    return tag(LEAVES[Math.floor(rand() * LEAVES.length)]!);
  }
  if (r < 0.5) return not(randomExpr(rand, depth - 1));
  const terms = Array.from({ length: 2 + Math.floor(rand() * 3) }, () => randomExpr(rand, depth - 1));
  return r < 0.75 ? and(...terms) : or(...terms);
}

/** What the index must answer, computed device by device. */
function bruteForce(devices: SimDevice[], expr: AudienceExpr): { matched: number; online: number } {
  let matched = 0;
  let online = 0;
  for (const device of devices) {
    if (!device.registered) continue;
    const active = (days: number) => device.online || device.seenDaysAgo.some((ago) => ago < days);
    const has = (name: string): boolean => {
      switch (name) {
        case 'pushd:platform:android':
          return device.platform === Platform.PLATFORM_ANDROID;
        case 'pushd:platform:ios':
          return device.platform === Platform.PLATFORM_IOS;
        case 'pushd:active:1d':
          return active(1);
        case 'pushd:active:7d':
          return active(7);
        case 'pushd:active:30d':
          return active(30);
        default:
          return device.tags.has(name);
      }
    };
    if (matches(expr, has)) {
      matched++;
      if (device.online) online++;
    }
  }
  return { matched, online };
}

async function load(index: AudienceIndex, app: number, devices: SimDevice[]): Promise<void> {
  for (const device of devices) {
    // Every device was registered once; some unregistered since, leaving their other bits behind.
    await index.setRegistered(app, device.index, device.platform, true);
    await index.setTags(app, device.index, [...device.tags], []);
    await index.setOnline(app, device.index, device.online);
    for (const ago of device.seenDaysAgo) await index.markSeen(app, device.index, NOW - ago * DAY_MS);
    if (!device.registered) await index.setRegistered(app, device.index, device.platform, false);
  }
}

/** The AudienceIndex contract; `makeIndex` must return an empty index for every test. */
export function describeAudienceIndexContract(
  name: string,
  makeIndex: () => AudienceIndex | Promise<AudienceIndex>,
): void {
  describe(`AudienceIndex contract: ${name}`, () => {
    let index: AudienceIndex;
    beforeEach(async () => {
      index = await makeIndex();
    });

    it('answers zero for an app without devices', async () => {
      expect(await index.count(APP, ALL, NOW)).toEqual({ matched: 0, online: 0 });
      expect(await index.count(APP, not(tag('x')), NOW)).toEqual({ matched: 0, online: 0 });
    });

    it('counts registered devices, per platform, and online ones', async () => {
      await index.setRegistered(APP, 0, Platform.PLATFORM_ANDROID, true);
      await index.setRegistered(APP, 1, Platform.PLATFORM_IOS, true);
      await index.setRegistered(APP, 2, Platform.PLATFORM_IOS, true);
      await index.setOnline(APP, 2, true);
      expect(await index.count(APP, ALL, NOW)).toEqual({ matched: 3, online: 1 });
      expect(await index.count(APP, tag('pushd:platform:ios'), NOW)).toEqual({ matched: 2, online: 1 });
      expect(await index.count(APP, tag('pushd:platform:android'), NOW)).toEqual({ matched: 1, online: 0 });
      // A device that moves platform leaves the other one.
      await index.setRegistered(APP, 0, Platform.PLATFORM_IOS, true);
      expect(await index.count(APP, tag('pushd:platform:android'), NOW)).toEqual({ matched: 0, online: 0 });
      expect(await index.count(APP, tag('pushd:platform:ios'), NOW)).toEqual({ matched: 3, online: 1 });
      await index.setOnline(APP, 2, false);
      expect(await index.count(APP, ALL, NOW)).toEqual({ matched: 3, online: 0 });
    });

    it('never counts a device that is not registered, whatever bits it left behind', async () => {
      await index.setRegistered(APP, 0, Platform.PLATFORM_ANDROID, true);
      await index.setRegistered(APP, 5, Platform.PLATFORM_ANDROID, true);
      await index.setTags(APP, [0, 5, 9], ['vip'], []);
      await index.setOnline(APP, 9, true);
      await index.markSeen(APP, 9, NOW);
      expect(await index.count(APP, tag('vip'), NOW)).toEqual({ matched: 2, online: 0 });
      expect(await index.count(APP, tag('pushd:active:1d'), NOW)).toEqual({ matched: 0, online: 0 });
      await index.setRegistered(APP, 5, Platform.PLATFORM_ANDROID, false);
      expect(await index.count(APP, tag('vip'), NOW)).toEqual({ matched: 1, online: 0 });
      expect(await index.count(APP, tag('pushd:platform:android'), NOW)).toEqual({ matched: 1, online: 0 });
      expect(await index.count(APP, not(tag('vip')), NOW)).toEqual({ matched: 0, online: 0 });
    });

    it('takes NOT within the registered devices, beyond the end of the negated bitmap', async () => {
      for (const i of [0, 1, 100, 1000]) await index.setRegistered(APP, i, Platform.PLATFORM_IOS, true);
      await index.setTags(APP, 0, ['short'], []);
      expect(await index.count(APP, not(tag('short')), NOW)).toEqual({ matched: 3, online: 0 });
      expect(await index.count(APP, not(tag('missing')), NOW)).toEqual({ matched: 4, online: 0 });
      expect(await index.count(APP, not(not(tag('short'))), NOW)).toEqual({ matched: 1, online: 0 });
    });

    it('sets and clears tags of several devices at once', async () => {
      for (const i of [0, 1, 2, 3]) await index.setRegistered(APP, i, Platform.PLATFORM_ANDROID, true);
      await index.setTags(APP, [0, 1, 2], ['a', 'b'], []);
      await index.setTags(APP, [1, 2, 3], ['c'], ['a']);
      expect(await index.count(APP, tag('a'), NOW)).toEqual({ matched: 1, online: 0 });
      expect(await index.count(APP, tag('b'), NOW)).toEqual({ matched: 3, online: 0 });
      expect(await index.count(APP, tag('c'), NOW)).toEqual({ matched: 3, online: 0 });
      await index.setTags(APP, [], ['a'], []);
      await index.setTags(APP, 0, [], ['a', 'never']);
      expect(await index.count(APP, tag('a'), NOW)).toEqual({ matched: 0, online: 0 });
    });

    it('dates activity by UTC day: today, the last 7 and the last 30 days, or connected now', async () => {
      const today = Math.floor(NOW / DAY_MS) * DAY_MS;
      for (const i of [0, 1, 2, 3, 4]) await index.setRegistered(APP, i, Platform.PLATFORM_ANDROID, true);
      await index.markSeen(APP, 0, today); // this morning, 00:00 UTC
      await index.markSeen(APP, 1, today - 1); // yesterday, 23:59:59.999 UTC
      await index.markSeen(APP, 2, today - 6 * DAY_MS);
      await index.markSeen(APP, 3, today - 30 * DAY_MS);
      await index.setOnline(APP, 4, true); // connected for weeks, never seen by markSeen lately
      const active = async (days: number) =>
        (await index.count(APP, tag(`pushd:active:${days}d`), NOW)).matched;
      expect(await active(1)).toBe(2);
      expect(await active(7)).toBe(4);
      expect(await active(30)).toBe(4);
      expect(await index.count(APP, tag('pushd:active:30d'), NOW + 29 * DAY_MS)).toEqual({
        matched: 2,
        online: 1,
      });
    });

    it('keeps apps apart', async () => {
      await index.setRegistered(APP, 0, Platform.PLATFORM_ANDROID, true);
      await index.setTags(APP, 0, ['vip'], []);
      await index.setRegistered(OTHER_APP, 0, Platform.PLATFORM_IOS, true);
      expect(await index.count(OTHER_APP, tag('vip'), NOW)).toEqual({ matched: 0, online: 0 });
      expect(await index.count(OTHER_APP, tag('pushd:platform:ios'), NOW)).toEqual({ matched: 1, online: 0 });
      expect(await index.count(APP, tag('pushd:platform:ios'), NOW)).toEqual({ matched: 0, online: 0 });
    });

    it('agrees with a device-by-device evaluation on random populations and expressions', async () => {
      const rand = random(20260315);
      for (let round = 0; round < 3; round++) {
        const app = APP + 10 + round;
        const devices = population(rand, 60);
        await load(index, app, devices);
        const fixed = [
          ALL,
          and(tag('vip'), tag('pushd:platform:ios'), not(tag('gamer'))),
          or(tag('pushd:active:7d'), and(tag('a b'), tag('省份:广东'))),
          not(or(tag('pushd:app_version:2.0'), tag('never-set'))),
        ];
        for (const expr of [...fixed, ...Array.from({ length: 40 }, () => randomExpr(rand, 3))]) {
          expect(await index.count(app, expr, NOW), JSON.stringify(expr)).toEqual(bruteForce(devices, expr));
        }
      }
    });
  });
}

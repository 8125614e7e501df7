import { ManualClock } from '@pushd/common';
import { PushRecord, PushStatus } from '@pushd/proto';
import { describe, expect, it } from 'vitest';
import { describeAppStoreContract } from './app-store.contract.js';
import { MemoryAppStore } from './app-store-memory.js';
import { describeAudienceIndexContract } from './audience-index.contract.js';
import { MemoryAudienceIndex } from './audience-index-memory.js';
import { describeBroadcastLogContract } from './broadcast-log.contract.js';
import { MemoryBroadcastLog } from './broadcast-log-memory.js';
import { describeDeviceStoreContract } from './device-store.contract.js';
import { MemoryDeviceStore } from './device-store-memory.js';
import { describeInboxStoreContract } from './inbox-store.contract.js';
import { MemoryInboxStore } from './inbox-store-memory.js';
import { describePushStoreContract } from './push-store.contract.js';
import { MemoryPushStore } from './push-store-memory.js';
import { describeRouteStoreContract } from './route-store.contract.js';
import { MemoryRouteStore } from './route-store-memory.js';
import { describeScheduleStoreContract } from './schedule-store.contract.js';
import { MemoryScheduleStore } from './schedule-store-memory.js';
import { describeStatsStoreContract } from './stats-store.contract.js';
import { MemoryStatsStore } from './stats-store-memory.js';
import { createMemoryStores } from './stores.js';
import { describeTagStoreContract } from './tag-store.contract.js';
import { MemoryTagStore } from './tag-store-memory.js';

describeAppStoreContract('memory', () => new MemoryAppStore());
describeAudienceIndexContract('memory', () => new MemoryAudienceIndex());
describeBroadcastLogContract('memory', (options) => new MemoryBroadcastLog(options));
describeDeviceStoreContract('memory', () => new MemoryDeviceStore());
describeInboxStoreContract('memory', () => new MemoryInboxStore());
describePushStoreContract('memory', () => new MemoryPushStore());
describeRouteStoreContract('memory', () => new MemoryRouteStore());
describeScheduleStoreContract('memory', () => new MemoryScheduleStore());
describeStatsStoreContract('memory', (options) => new MemoryStatsStore(options));
describeTagStoreContract('memory', () => new MemoryTagStore());

const APP = 1_500_000_001;
const TOKEN = 'f'.repeat(40);

describe('memory stores with an injected clock', () => {
  it('expire routes by the clock and refresh from its current time', async () => {
    const clock = new ManualClock();
    const routes = new MemoryRouteStore({ clock });
    await routes.set(APP, TOKEN, { nodeId: 'gw', sessionId: 's', openedAtMs: 0 }, 1000);
    clock.advance(999);
    await routes.refresh(
      [{ accessId: APP, token: TOKEN, route: { nodeId: 'gw', sessionId: 's', openedAtMs: 0 } }],
      1000,
    );
    clock.advance(999);
    expect(await routes.get(APP, TOKEN)).toEqual({ nodeId: 'gw', sessionId: 's', openedAtMs: 0 });
    clock.advance(1);
    expect(await routes.get(APP, TOKEN)).toBeUndefined();
  });

  it('forget who was counted after the dedup window, but keep the counts', async () => {
    const clock = new ManualClock();
    const stats = new MemoryStatsStore({ clock, dedupTtlMs: 1000 });
    expect(await stats.addSent(APP, '1', [TOKEN])).toBe(1);
    clock.advance(999);
    expect(await stats.addSent(APP, '1', [TOKEN])).toBe(0);
    clock.advance(1000);
    expect(await stats.addSent(APP, '1', [TOKEN])).toBe(1);
    expect(await stats.get(APP, '1')).toEqual({ sent: 2, arrived: 0 });
  });

  it('createMemoryStores shares the clock with the stores that keep time', async () => {
    const clock = new ManualClock();
    const stores = createMemoryStores({ clock });
    await stores.routes.set(APP, TOKEN, { nodeId: 'gw', sessionId: 's', openedAtMs: 0 }, 10);
    clock.advance(10);
    expect(await stores.routes.get(APP, TOKEN)).toBeUndefined();
    expect(Object.keys(stores).sort()).toEqual([
      'apps',
      'audience',
      'broadcasts',
      'devices',
      'inboxes',
      'pushes',
      'routes',
      'schedules',
      'stats',
      'tags',
    ]);
  });
});

describe('memory push store retention, by its clock', () => {
  const DAY = 24 * 3_600_000;
  const push = (pushId: string, createdAtMs: number) =>
    PushRecord.fromPartial({
      accessId: APP,
      pushId,
      createdAtMs,
      sendTimeMs: createdAtMs,
      status: PushStatus.PUSH_STATUS_SCHEDULED,
    });

  it('forgets a push 30 days after its creation, and removes it on the next save', async () => {
    const clock = new ManualClock();
    const pushes = new MemoryPushStore({ clock });
    await pushes.save(push('1', clock.now()));
    clock.advance(30 * DAY - 1);
    expect(await pushes.get(APP, '1')).toBeDefined();
    clock.advance(1);
    expect(await pushes.get(APP, '1')).toBeUndefined();
    expect((await pushes.list(APP, { limit: 10 })).pushes).toEqual([]);
    await pushes.save(push('2', clock.now()));
    expect((await pushes.list(APP, { limit: 10 })).pushes.map((p) => p.pushId)).toEqual(['2']);
  });

  it('keeps a recurring push until 30 days after its loop ends', async () => {
    const clock = new ManualClock();
    const pushes = new MemoryPushStore({ clock });
    const start = clock.now();
    await pushes.save(push('1', start));
    await pushes.saveCommand(APP, '1', {
      command: new Uint8Array([1]),
      firstNominalMs: start,
      loop: { interval: 1, endTimeMs: start + 100 * DAY },
    });
    // Saving the record again (the applier) does not shorten it.
    await pushes.save({ ...push('1', start), status: PushStatus.PUSH_STATUS_SENDING });
    clock.advance(130 * DAY - 1);
    await pushes.save(push('2', clock.now()));
    expect((await pushes.get(APP, '1'))?.status).toBe(PushStatus.PUSH_STATUS_SENDING);
    expect((await pushes.list(APP, { limit: 10 })).pushes.map((p) => p.pushId)).toEqual(['2', '1']);
    clock.advance(1);
    expect(await pushes.get(APP, '1')).toBeUndefined();
    expect(await pushes.command(APP, '1')).toBeUndefined();
  });
});

describe('memory broadcast log', () => {
  it('keeps the rate gate by the callers’ `now`, not by the wall clock', async () => {
    const log = new MemoryBroadcastLog();
    expect(await log.tryAcquireBroadcastSlot(APP, 3000, 1_000)).toEqual({ acquired: true });
    expect(await log.tryAcquireBroadcastSlot(APP, 3000, 1_001)).toEqual({
      acquired: false,
      retryAfterMs: 2999,
    });
    expect(await log.tryAcquireBroadcastSlot(APP, 3000, 3_999)).toEqual({ acquired: false, retryAfterMs: 1 });
    expect(await log.tryAcquireBroadcastSlot(APP + 1, 3000, 3_999)).toEqual({ acquired: true });
    expect(await log.tryAcquireBroadcastSlot(APP, 3000, 4_000)).toEqual({ acquired: true });
    // A window below 1 ms is 1 ms, as PX on Redis.
    expect(await log.tryAcquireBroadcastSlot(APP + 2, 0.2, 10)).toEqual({ acquired: true });
    expect(await log.tryAcquireBroadcastSlot(APP + 2, 0.2, 10.5)).toEqual({
      acquired: false,
      retryAfterMs: 1,
    });
    expect(await log.tryAcquireBroadcastSlot(APP + 2, 0.2, 11)).toEqual({ acquired: true });
  });
});

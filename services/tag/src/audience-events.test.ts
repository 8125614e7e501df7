import { silentLogger } from '@pushd/common';
import { Event, EventType, Platform } from '@pushd/proto';
import { type AudienceIndex, createMemoryStores } from '@pushd/store';
import { describe, expect, it } from 'vitest';
import { AudienceEvents } from './audience-events.js';

const APP = 7;
const TOKEN = 'device-token-1';
const INDEX = 0;

const event = (type: EventType, atMs: number, sessionId = '') =>
  Event.create({
    type,
    accessId: APP,
    token: TOKEN,
    platform: Platform.PLATFORM_ANDROID,
    atMs,
    deviceIndex: INDEX,
    sessionId,
  });

/**
 * Two replicas of the tag consumer on the same stores. Replica 1's next online-bit write stalls until
 * `resume()`, after `reachedBit` resolves: it has decided from the state and not written the bit yet.
 */
async function twoReplicas() {
  const stores = createMemoryStores();
  let stalled: () => void = () => {};
  const reachedBit = new Promise<void>((resolve) => {
    stalled = resolve;
  });
  let resume: () => void = () => {};
  const resumed = new Promise<void>((resolve) => {
    resume = resolve;
  });
  let stallNext = true;
  const stalling = new Proxy(stores.audience, {
    get(target, property, receiver) {
      if (property === 'setOnline') {
        return async (...args: Parameters<AudienceIndex['setOnline']>) => {
          if (stallNext) {
            stallNext = false;
            stalled();
            await resumed;
          }
          return target.setOnline(...args);
        };
      }
      const value = Reflect.get(target, property, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const replica1 = new AudienceEvents({ tags: stores.tags, audience: stalling, logger: silentLogger() });
  const replica2 = new AudienceEvents({
    tags: stores.tags,
    audience: stores.audience,
    logger: silentLogger(),
  });
  const now = Date.now();
  await replica2.apply(event(EventType.EVENT_TYPE_REGISTERED, now - 1_000));
  const counted = () => stores.audience.count(APP, { kind: 'all' }, now);
  return { stores, replica1, replica2, reachedBit, resume, now, counted };
}

describe('AudienceEvents presence', () => {
  it('leaves the online bit as the state decided when two replicas apply a connect and its disconnect side by side', async () => {
    const { stores, replica1, replica2, reachedBit, resume, now, counted } = await twoReplicas();
    const connect = replica1.apply(event(EventType.EVENT_TYPE_CONNECTED, now, 's1'));
    await reachedBit;
    await replica2.apply(event(EventType.EVENT_TYPE_DISCONNECTED, now + 10, 's1'));
    expect(await counted()).toEqual({ matched: 1, online: 0 });
    resume();
    await connect;
    expect((await stores.tags.state(APP, TOKEN))?.online).toBe(false);
    expect(await counted()).toEqual({ matched: 1, online: 0 });
  });
});

import { MessageType, PushMessage } from '@pushd/proto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { InboxStore } from './inbox-store.js';

const APP = 1_500_000_001;
const TOKEN = 'a'.repeat(40);
const HOUR = 3_600_000;
/**
 * Set to the real time before each test: a Redis store also lets windows expire by the server's clock, so
 * the `nowMs` the tests pass must be close to it.
 */
let NOW = Date.now();

function message(msgId: number, expiresAtMs = NOW + 72 * HOUR, collapseId?: string): PushMessage {
  return PushMessage.fromPartial({
    msgId,
    pushId: String(msgId),
    message: {
      type: MessageType.MESSAGE_TYPE_NOTIFY,
      title: `title ${msgId}`,
      content: 'content \u0000 with a NUL byte, ✓ and 表情',
      customContent: { key: 'value', '{k}': ':v:' },
      collapseId,
    },
    sentAtMs: NOW,
    expiresAtMs,
  });
}

/** The InboxStore contract; `makeStore` must return an empty store for every test. */
export function describeInboxStoreContract(
  name: string,
  makeStore: () => InboxStore | Promise<InboxStore>,
): void {
  describe(`InboxStore contract: ${name}`, () => {
    let store: InboxStore;
    beforeEach(async () => {
      store = await makeStore();
      NOW = Date.now();
    });

    const ids = async (after = 0, now = NOW, token = TOKEN) =>
      (await store.pending(APP, token, after, now)).messages.map((m) => m.msgId);

    it('returns what was appended, whole and oldest first', async () => {
      expect(await store.append(APP, TOKEN, message(1), 2, NOW)).toEqual({
        appended: true,
        previousMsgId: 0,
      });
      expect(await store.append(APP, TOKEN, message(2), 2, NOW)).toEqual({
        appended: true,
        previousMsgId: 1,
      });
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [message(1), message(2)],
        lastMsgId: 2,
        dropped: 0,
      });
    });

    it('returns nothing and lastMsgId 0 for a device that never had a message', async () => {
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [],
        lastMsgId: 0,
        dropped: 0,
      });
    });

    it('keeps only the newest `capacity` messages', async () => {
      for (const id of [1, 2, 3, 4]) await store.append(APP, TOKEN, message(id), 2, NOW);
      expect(await ids()).toEqual([3, 4]);
      await store.append(APP, TOKEN, message(5), 1, NOW);
      expect(await ids()).toEqual([5]);
    });

    it('returns only messages after afterMsgId', async () => {
      for (const id of [1, 2, 3]) await store.append(APP, TOKEN, message(id), 3, NOW);
      expect(await ids(1)).toEqual([2, 3]);
      expect(await ids(3)).toEqual([]);
    });

    it('never returns an expired message and drops it from the window', async () => {
      await store.append(APP, TOKEN, message(1, NOW + 10), 2, NOW);
      await store.append(APP, TOKEN, message(2, NOW + HOUR), 2, NOW);
      expect(await ids(0, NOW + 9)).toEqual([1, 2]);
      expect(await ids(0, NOW + 10)).toEqual([2]);
      // Expired messages do not take a place in the window: 1 is dropped, 2 and 3 are kept.
      await store.append(APP, TOKEN, message(3, NOW + HOUR), 2, NOW + 20);
      expect(await ids(0, NOW + 20)).toEqual([2, 3]);
      // Even when asked about an earlier time, a dropped message does not come back.
      expect(await ids(0, NOW)).toEqual([2, 3]);
    });

    it('keeps the newest non-expired messages, whatever their expiry order', async () => {
      await store.append(APP, TOKEN, message(1, NOW + HOUR), 2, NOW);
      await store.append(APP, TOKEN, message(2, NOW + 10), 2, NOW);
      await store.append(APP, TOKEN, message(3, NOW + HOUR), 2, NOW + 50);
      expect(await ids(0, NOW + 50)).toEqual([1, 3]);
    });

    it('does not store a message that is already expired, but advances lastMsgId', async () => {
      expect(await store.append(APP, TOKEN, message(1, NOW), 2, NOW)).toEqual({
        appended: true,
        previousMsgId: 0,
      });
      // It is owed to the device, which will never get it.
      expect(await store.pending(APP, TOKEN, 0, NOW - 1)).toEqual({
        processed: [],
        messages: [],
        lastMsgId: 1,
        dropped: 1,
      });
    });

    it('refuses a msgId that is not above lastMsgId, and stores duplicates once', async () => {
      await store.append(APP, TOKEN, message(5), 2, NOW);
      expect(await store.append(APP, TOKEN, message(5), 2, NOW)).toEqual({ appended: false, lastMsgId: 5 });
      expect(await store.append(APP, TOKEN, message(3), 2, NOW)).toEqual({ appended: false, lastMsgId: 5 });
      expect(await ids()).toEqual([5]);
    });

    it('admits racing appends in increasing msgId order only', async () => {
      const results = await Promise.all(
        [3, 1, 4, 2, 5].map((id) => store.append(APP, TOKEN, message(id), 5, NOW)),
      );
      const appended = [3, 1, 4, 2, 5].filter((_, i) => results[i]?.appended);
      const window = await ids();
      expect(window).toEqual([...window].sort((a, b) => a - b));
      expect(window.sort()).toEqual(appended.sort());
      expect((await store.pending(APP, TOKEN, 0, NOW)).lastMsgId).toBe(Math.max(...appended));
    });

    it('forgets acknowledged messages but keeps lastMsgId', async () => {
      for (const id of [1, 2, 3]) await store.append(APP, TOKEN, message(id), 3, NOW);
      await store.ack(APP, TOKEN, [1, 3, 99]);
      expect(await ids()).toEqual([2]);
      await store.ack(APP, TOKEN, [2]);
      await store.ack(APP, TOKEN, []);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [],
        lastMsgId: 3,
        dropped: 0,
      });
      expect(await store.append(APP, TOKEN, message(3), 3, NOW)).toEqual({ appended: false, lastMsgId: 3 });
    });

    it('keeps lastMsgId after the messages expire', async () => {
      await store.append(APP, TOKEN, message(7, NOW + 10), 2, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW + 20)).toEqual({
        processed: [],
        messages: [],
        lastMsgId: 7,
        dropped: 1,
      });
      expect(await store.append(APP, TOKEN, message(8), 2, NOW + 20)).toEqual({
        appended: true,
        previousMsgId: 7,
      });
    });

    it('clears messages and lastMsgId', async () => {
      await store.append(APP, TOKEN, message(4), 2, NOW);
      await store.clear(APP, TOKEN);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [],
        lastMsgId: 0,
        dropped: 0,
      });
      expect(await store.append(APP, TOKEN, message(1), 2, NOW)).toEqual({
        appended: true,
        previousMsgId: 0,
      });
    });

    it('keeps devices and apps apart', async () => {
      const other = 'b'.repeat(40);
      await store.append(APP, TOKEN, message(1), 2, NOW);
      await store.append(APP, other, message(2), 2, NOW);
      await store.append(APP + 1, TOKEN, message(3), 2, NOW);
      expect(await ids(0, NOW, TOKEN)).toEqual([1]);
      expect(await ids(0, NOW, other)).toEqual([2]);
      expect((await store.pending(APP + 1, TOKEN, 0, NOW)).messages.map((m) => m.msgId)).toEqual([3]);
    });

    const dropped = async (now = NOW, token = TOKEN) => (await store.pending(APP, token, 0, now)).dropped;

    it('counts what the capacity evicts, reports it once and resets it (Android: 2 places)', async () => {
      for (const id of [1, 2, 3, 4, 5]) await store.append(APP, TOKEN, message(id), 2, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [message(4), message(5)],
        lastMsgId: 5,
        dropped: 3,
      });
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [message(4), message(5)],
        lastMsgId: 5,
        dropped: 0,
      });
      // Counts add up across appends until a pending takes them.
      await store.append(APP, TOKEN, message(6), 2, NOW);
      await store.append(APP, TOKEN, message(7), 2, NOW);
      expect(await dropped()).toBe(2);
    });

    it('counts what the capacity evicts on iOS (1 place)', async () => {
      for (const id of [1, 2, 3, 4, 5]) await store.append(APP, TOKEN, message(id), 1, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [message(5)],
        lastMsgId: 5,
        dropped: 4,
      });
    });

    it('counts a window message once whether pending or append finds it expired', async () => {
      await store.append(APP, TOKEN, message(1, NOW + 10), 2, NOW);
      await store.append(APP, TOKEN, message(2, NOW + HOUR), 2, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW + 10)).toEqual({
        processed: [],
        messages: [message(2, NOW + HOUR)],
        lastMsgId: 2,
        dropped: 1,
      });
      expect(await dropped(NOW + 10)).toBe(0);
      // Found expired by an append: 3 expires, 4 comes after.
      await store.append(APP, TOKEN, message(3, NOW + 20), 2, NOW + 10);
      await store.append(APP, TOKEN, message(4, NOW + HOUR), 2, NOW + 30);
      expect(await store.pending(APP, TOKEN, 0, NOW + 30)).toEqual({
        processed: [],
        messages: [message(2, NOW + HOUR), message(4, NOW + HOUR)],
        lastMsgId: 4,
        dropped: 1,
      });
      // Evicted (2 and 4) and expired (5) add up, whatever afterMsgId: the count is of messages owed.
      await store.append(APP, TOKEN, message(5, NOW + 40), 3, NOW + 30);
      await store.append(APP, TOKEN, message(6, NOW + HOUR), 3, NOW + 30);
      await store.append(APP, TOKEN, message(7, NOW + HOUR), 2, NOW + 30);
      expect(await store.pending(APP, TOKEN, 6, NOW + 40)).toEqual({
        processed: [],
        messages: [message(7, NOW + HOUR)],
        lastMsgId: 7,
        dropped: 3,
      });
    });

    it('takes the messages up to what the device processed out of the window, when told it did', async () => {
      for (const id of [1, 2, 3]) await store.append(APP, TOKEN, message(id), 3, NOW);
      // Not told: a fetch after what a gateway wrote leaves them (they may not have reached the device).
      expect(await store.pending(APP, TOKEN, 2, NOW)).toMatchObject({
        messages: [message(3)],
        processed: [],
      });
      expect(await ids()).toEqual([1, 2, 3]);
      // Told: 1 and 2 arrived (their acks were lost); they leave the window, and are not dropped later.
      expect(await store.pending(APP, TOKEN, 2, NOW, true)).toEqual({
        messages: [message(3)],
        lastMsgId: 3,
        dropped: 0,
        processed: [message(1), message(2)],
      });
      expect(await ids()).toEqual([3]);
      await store.append(APP, TOKEN, message(4), 2, NOW);
      await store.append(APP, TOKEN, message(5), 2, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toMatchObject({
        messages: [message(4), message(5)],
        dropped: 1,
      });
    });

    it('never counts an acknowledged message as dropped', async () => {
      await store.append(APP, TOKEN, message(1, NOW + 10), 2, NOW);
      await store.append(APP, TOKEN, message(2), 2, NOW);
      await store.ack(APP, TOKEN, [1, 2]);
      await store.append(APP, TOKEN, message(3), 2, NOW);
      await store.append(APP, TOKEN, message(4), 2, NOW + 20);
      expect(await store.pending(APP, TOKEN, 0, NOW + 20)).toEqual({
        processed: [],
        messages: [message(3), message(4)],
        lastMsgId: 4,
        dropped: 0,
      });
    });

    it('forgets the dropped count when the window is cleared', async () => {
      for (const id of [1, 2, 3]) await store.append(APP, TOKEN, message(id), 1, NOW);
      await store.clear(APP, TOKEN);
      expect(await dropped()).toBe(0);
      await store.append(APP, TOKEN, message(1), 1, NOW);
      expect(await dropped()).toBe(0);
    });

    it('replaces the entries of the same collapse id without counting them', async () => {
      await store.append(APP, TOKEN, message(1, undefined, 'score'), 2, NOW);
      await store.append(APP, TOKEN, message(2, undefined, 'news'), 2, NOW);
      await store.append(APP, TOKEN, message(3, undefined, 'score'), 2, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [message(2, undefined, 'news'), message(3, undefined, 'score')],
        lastMsgId: 3,
        dropped: 0,
      });
      // With one place (iOS): 2 is replaced (not counted), 3 is evicted (counted).
      await store.append(APP, TOKEN, message(4, undefined, 'news'), 1, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [message(4, undefined, 'news')],
        lastMsgId: 4,
        dropped: 1,
      });
      // A message without a collapse id replaces nothing; one with another id neither: 4 is evicted.
      await store.append(APP, TOKEN, message(5), 2, NOW);
      await store.append(APP, TOKEN, message(6, undefined, 'other'), 2, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({
        processed: [],
        messages: [message(5), message(6, undefined, 'other')],
        lastMsgId: 6,
        dropped: 1,
      });
    });

    it('replaces an expired entry of the same collapse id without counting it', async () => {
      await store.append(APP, TOKEN, message(1, NOW + 10, 'score'), 2, NOW);
      await store.append(APP, TOKEN, message(2, NOW + HOUR, 'score'), 2, NOW + 20);
      expect(await store.pending(APP, TOKEN, 0, NOW + 20)).toEqual({
        processed: [],
        messages: [message(2, NOW + HOUR, 'score')],
        lastMsgId: 2,
        dropped: 0,
      });
      // Acknowledged, then replaced: nothing left to replace, nothing counted.
      await store.ack(APP, TOKEN, [2]);
      await store.append(APP, TOKEN, message(3, NOW + HOUR, 'score'), 2, NOW + 20);
      expect(await store.pending(APP, TOKEN, 0, NOW + 20)).toEqual({
        processed: [],
        messages: [message(3, NOW + HOUR, 'score')],
        lastMsgId: 3,
        dropped: 0,
      });
    });

    it('collapses only within one device', async () => {
      const other = 'b'.repeat(40);
      await store.append(APP, TOKEN, message(1, undefined, 'score'), 2, NOW);
      await store.append(APP, other, message(2, undefined, 'score'), 2, NOW);
      await store.append(APP + 1, TOKEN, message(3, undefined, 'score'), 2, NOW);
      expect(await ids(0, NOW, TOKEN)).toEqual([1]);
      expect(await ids(0, NOW, other)).toEqual([2]);
      expect((await store.pending(APP + 1, TOKEN, 0, NOW)).messages.map((m) => m.msgId)).toEqual([3]);
    });

    it('returns copies that callers cannot use to change the store', async () => {
      const original = message(1);
      await store.append(APP, TOKEN, original, 2, NOW);
      original.pushId = 'changed';
      const [first] = (await store.pending(APP, TOKEN, 0, NOW)).messages;
      if (first?.message) first.message.title = 'changed';
      expect((await store.pending(APP, TOKEN, 0, NOW)).messages).toEqual([message(1)]);
    });
  });
}

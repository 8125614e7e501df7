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

function message(msgId: number, expiresAtMs = NOW + 72 * HOUR): PushMessage {
  return PushMessage.fromPartial({
    msgId,
    pushId: String(msgId),
    message: {
      type: MessageType.MESSAGE_TYPE_NOTIFY,
      title: `title ${msgId}`,
      content: 'content \u0000 with a NUL byte, ✓ and 表情',
      customContent: { key: 'value', '{k}': ':v:' },
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
        messages: [message(1), message(2)],
        lastMsgId: 2,
      });
    });

    it('returns nothing and lastMsgId 0 for a device that never had a message', async () => {
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({ messages: [], lastMsgId: 0 });
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
      expect(await store.pending(APP, TOKEN, 0, NOW - 1)).toEqual({ messages: [], lastMsgId: 1 });
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
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({ messages: [], lastMsgId: 3 });
      expect(await store.append(APP, TOKEN, message(3), 3, NOW)).toEqual({ appended: false, lastMsgId: 3 });
    });

    it('keeps lastMsgId after the messages expire', async () => {
      await store.append(APP, TOKEN, message(7, NOW + 10), 2, NOW);
      expect(await store.pending(APP, TOKEN, 0, NOW + 20)).toEqual({ messages: [], lastMsgId: 7 });
      expect(await store.append(APP, TOKEN, message(8), 2, NOW + 20)).toEqual({
        appended: true,
        previousMsgId: 7,
      });
    });

    it('clears messages and lastMsgId', async () => {
      await store.append(APP, TOKEN, message(4), 2, NOW);
      await store.clear(APP, TOKEN);
      expect(await store.pending(APP, TOKEN, 0, NOW)).toEqual({ messages: [], lastMsgId: 0 });
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

import { MessageType, PushRecord, PushStatus } from '@pushd/proto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { PushStore } from './push-store.js';

const APP = 1_500_000_001;

function record(pushId: string, msgId: number): PushRecord {
  return PushRecord.fromPartial({
    accessId: APP,
    pushId,
    msgId,
    status: PushStatus.PUSH_STATUS_SCHEDULED,
    audience: { target: { $case: 'token', value: 'c'.repeat(40) } },
    message: {
      type: MessageType.MESSAGE_TYPE_MESSAGE,
      title: 'hello',
      content: '世界 \u0000 {x}',
      customContent: { a: '1' },
    },
    createdAtMs: 1_767_225_600_000,
    expiresAtMs: 1_767_225_600_000 + 72 * 3_600_000,
    target: 0,
  });
}

/** The PushStore contract; `makeStore` must return an empty store for every test. */
export function describePushStoreContract(
  name: string,
  makeStore: () => PushStore | Promise<PushStore>,
): void {
  describe(`PushStore contract: ${name}`, () => {
    let store: PushStore;
    beforeEach(async () => {
      store = await makeStore();
    });

    it('hands out increasing push ids (decimal strings) and msg ids per app', async () => {
      const first = await store.nextIds(APP);
      const second = await store.nextIds(APP);
      expect(first.pushId).toMatch(/^[0-9]+$/);
      expect(Number(second.pushId)).toBeGreaterThan(Number(first.pushId));
      expect(second.msgId).toBeGreaterThan(first.msgId);
      expect(first.msgId).toBeGreaterThan(0);
      const other = await store.nextIds(APP + 1);
      expect(other.msgId).toBeGreaterThan(0);
    });

    it('hands out distinct ids under concurrency', async () => {
      const ids = await Promise.all(Array.from({ length: 20 }, () => store.nextIds(APP)));
      expect(new Set(ids.map((i) => i.pushId)).size).toBe(20);
      expect(new Set(ids.map((i) => i.msgId)).size).toBe(20);
    });

    it('gives a further msg id above every id handed out before', async () => {
      const { msgId } = await store.nextIds(APP);
      const further = await store.nextMsgId(APP);
      expect(further).toBeGreaterThan(msgId);
      expect((await store.nextIds(APP)).msgId).toBeGreaterThan(further);
    });

    it('saves and gets a push record', async () => {
      const push = record('1', 1);
      await store.save(push);
      expect(await store.get(APP, '1')).toEqual(push);
      expect(await store.get(APP, '2')).toBeUndefined();
      expect(await store.get(APP + 1, '1')).toBeUndefined();
      await store.save({ ...push, target: 3, status: PushStatus.PUSH_STATUS_DONE });
      expect(await store.get(APP, '1')).toEqual({ ...push, target: 3, status: PushStatus.PUSH_STATUS_DONE });
    });

    it('sets status and target of an existing push only', async () => {
      await store.save(record('1', 1));
      expect(await store.setStatus(APP, '1', PushStatus.PUSH_STATUS_DONE, 42)).toBe(true);
      expect(await store.get(APP, '1')).toEqual({
        ...record('1', 1),
        status: PushStatus.PUSH_STATUS_DONE,
        target: 42,
      });
      expect(await store.setStatus(APP, '2', PushStatus.PUSH_STATUS_DONE, 1)).toBe(false);
      expect(await store.get(APP, '2')).toBeUndefined();
    });

    it('returns copies that callers cannot use to change the store', async () => {
      const push = record('1', 1);
      await store.save(push);
      push.status = PushStatus.PUSH_STATUS_CANCELLED;
      const got = await store.get(APP, '1');
      if (got) got.target = 99;
      expect(await store.get(APP, '1')).toEqual(record('1', 1));
    });
  });
}

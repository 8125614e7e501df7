import { PushMessage } from '@pushd/proto';
import { describe, expect, it } from 'vitest';
import { MAX_UNACKED, Session, sharedTags } from './session.js';

describe('Session', () => {
  const socket = {} as ConstructorParameters<typeof Session>[0];

  it('derives one stable id per serial, distinct between serials, with the process prefix', () => {
    const first = new Session(socket, 1, 7, 'proto', 0, 0, undefined);
    const second = new Session(socket, 2, 7, 'proto', 0, 0, undefined);
    expect(first.id).toBe(first.id);
    expect(first.id).not.toBe(second.id);
    const prefix = first.id.slice(0, first.id.lastIndexOf('.') + 1);
    expect(prefix.length).toBeGreaterThanOrEqual(13);
    expect(second.id.startsWith(prefix)).toBe(true);
    // The id fences route clears: the same session must always give the same string.
    expect(new Session(socket, 1, 9, 'json', 0, 0, undefined).id).toBe(first.id);
  });

  it('gives every session without tags the same empty list, and keeps tag lists equal', () => {
    expect(sharedTags([])).toBe(sharedTags([]));
    expect(Object.isFrozen(sharedTags([]))).toBe(true);
    expect(new Session(socket, 3, 7, 'proto', 0, 0, undefined).userTags).toBe(sharedTags([]));
    expect(sharedTags(['vip', 'pushd:locale:fr'])).toEqual(['vip', 'pushd:locale:fr']);
  });

  describe('unacknowledged messages', () => {
    const message = (msgId: number) => PushMessage.create({ msgId, pushId: `push-${msgId}` });

    it('keeps one message out at a time and gives it back once, on its ack', () => {
      const session = new Session(socket, 4, 7, 'proto', 0, 0, undefined);
      const first = message(10);
      session.rememberUnacked(first);
      expect(session.unackedCount).toBe(1);
      expect(session.unackedMessage(11)).toBeUndefined();
      expect(session.takeUnacked(11)).toBeUndefined();
      expect(session.unackedMessage(10)).toBe(first);
      expect(session.takeUnacked(10)).toBe(first);
      expect(session.takeUnacked(10)).toBeUndefined();
      expect(session.unackedCount).toBe(0);
      // The same message delivered again (a catch-up after a gap) is kept once.
      session.rememberUnacked(first);
      session.rememberUnacked(first);
      expect(session.unackedCount).toBe(1);
    });

    it('keeps several out, acked in any order, and forgets the oldest past the bound', () => {
      const session = new Session(socket, 5, 7, 'proto', 0, 0, undefined);
      for (let msgId = 1; msgId <= 3; msgId++) session.rememberUnacked(message(msgId));
      expect(session.unackedCount).toBe(3);
      expect(session.takeUnacked(2)?.pushId).toBe('push-2');
      expect(session.takeUnacked(1)?.pushId).toBe('push-1');
      expect(session.unackedMessage(3)?.pushId).toBe('push-3');
      expect(session.takeUnacked(3)?.pushId).toBe('push-3');
      expect(session.unackedCount).toBe(0);
      // Back to one out at a time after the others were acked.
      session.rememberUnacked(message(4));
      expect(session.takeUnacked(4)?.pushId).toBe('push-4');

      for (let msgId = 100; msgId < 100 + MAX_UNACKED + 5; msgId++) session.rememberUnacked(message(msgId));
      expect(session.unackedCount).toBe(MAX_UNACKED);
      expect(session.unackedMessage(104)).toBeUndefined();
      expect(session.unackedMessage(105)?.pushId).toBe('push-105');
      expect(session.unackedMessage(100 + MAX_UNACKED + 4)?.pushId).toBe(`push-${100 + MAX_UNACKED + 4}`);
    });
  });
});

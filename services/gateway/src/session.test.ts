import { describe, expect, it } from 'vitest';
import { Session, sharedTags } from './session.js';

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
});

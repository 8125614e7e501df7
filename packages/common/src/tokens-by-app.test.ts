import { describe, expect, it } from 'vitest';
import { tokensByApp } from './tokens-by-app.js';

describe('tokensByApp', () => {
  it('groups distinct tokens per app, apps and tokens in first-seen order', () => {
    const grouped = tokensByApp([
      { accessId: 2, token: 'b' },
      { accessId: 1, token: 'a' },
      { accessId: 2, token: 'c' },
      { accessId: 2, token: 'b' },
      { accessId: 1, token: 'a' },
    ]);
    expect([...grouped]).toEqual([
      [2, ['b', 'c']],
      [1, ['a']],
    ]);
    expect(tokensByApp([]).size).toBe(0);
  });
});

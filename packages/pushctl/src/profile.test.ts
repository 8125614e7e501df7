import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { loadProfile, updateProfile } from './profile.js';

const PROFILE_MODULE = fileURLToPath(new URL('./profile.ts', import.meta.url));

let directory = '';
afterEach(() => {
  delete process.env.PUSHCTL_CONFIG;
  if (directory !== '') rmSync(directory, { recursive: true, force: true });
});

function useTemporaryProfile(): string {
  directory = mkdtempSync(join(tmpdir(), 'pushctl-profile-'));
  const path = join(directory, 'profile.json');
  process.env.PUSHCTL_CONFIG = path;
  return path;
}

/** A process that increments its own counter in the profile `times` times, each a separate update. */
function incrementer(path: string, name: string, times: number): Promise<number | null> {
  const script = `
    import { updateProfile } from ${JSON.stringify(PROFILE_MODULE)};
    for (let i = 0; i < ${times}; i++) {
      updateProfile((current) => ({ ...current, ${JSON.stringify(name)}: (current[${JSON.stringify(name)}] ?? 0) + 1 }));
    }`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, PUSHCTL_CONFIG: path },
    stdio: 'inherit',
  });
  return new Promise((resolve) => child.once('exit', resolve));
}

describe('pushctl profile', () => {
  it('keeps every change of commands changing it at once', { timeout: 60_000 }, async () => {
    const path = useTemporaryProfile();
    const names = ['a', 'b', 'c', 'd'];
    const statuses = await Promise.all(names.map((name) => incrementer(path, name, 150)));
    expect(statuses).toEqual([0, 0, 0, 0]);
    expect(JSON.parse(readFileSync(path, 'utf8'))).toEqual({ a: 150, b: 150, c: 150, d: 150 });
  });

  it('takes over a lock left by a command that died, and waits for one that is held', () => {
    const path = useTemporaryProfile();
    const lock = `${path}.lock`;
    writeFileSync(lock, '');
    const old = (Date.now() - 60_000) / 1000;
    utimesSync(lock, old, old);
    updateProfile((current) => ({ ...current, lastPushId: 'p1' }));
    expect(loadProfile()).toEqual({ lastPushId: 'p1' });

    writeFileSync(lock, ''); // fresh: another command is changing the profile
    const started = Date.now();
    expect(() => updateProfile((current) => ({ ...current, lastPushId: 'p2' }))).toThrow(
      /profile\.json\.lock is held by another pushctl command/,
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(5_000);
    expect(loadProfile()).toEqual({ lastPushId: 'p1' });
  }, 20_000);
});

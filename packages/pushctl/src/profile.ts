import { closeSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';

/**
 * What pushctl remembers between commands, so that a first push takes three short commands: the
 * endpoints, the app created last, and the simulated device's identity.
 */
export interface Profile {
  registry?: string;
  dispatch?: string;
  stats?: string;
  gateway?: string;
  app?: { accessId: number; accessKey: string; secretKey: string };
  device?: { deviceId: string; token?: string; credential?: string; lastMsgId?: number; platform?: string };
  lastPushId?: string;
}

/** How long a command waits for another one to finish its change of the profile. */
const LOCK_WAIT_MS = 5_000;
/** A lock file older than this was left by a command that died holding it (a change takes milliseconds). */
const STALE_LOCK_MS = 10_000;
const LOCK_RETRY_MS = 5;

/** The profile file: $PUSHCTL_CONFIG, else .pushctl.json in the working directory. */
export function profilePath(): string {
  return resolve(process.env.PUSHCTL_CONFIG ?? '.pushctl.json');
}

export function loadProfile(): Profile {
  try {
    return JSON.parse(readFileSync(profilePath(), 'utf8')) as Profile;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new Error(`cannot read ${profilePath()}: ${(error as Error).message}`);
  }
}

/**
 * Changes the profile: reads it, applies `change` and writes the result, holding a lock file meanwhile.
 * Commands run at once (`pushctl device` saving each message it receives while `pushctl push` saves its
 * push id): without the lock, one could write back what it read before the other's write, losing it. The
 * write goes through a temporary file and a rename, so a reader never sees half a file.
 */
export function updateProfile(change: (current: Profile) => Profile): void {
  const path = profilePath();
  const lock = `${path}.lock`;
  acquireLock(lock);
  try {
    const temporary = `${path}.${process.pid}.tmp`;
    writeFileSync(temporary, `${JSON.stringify(change(loadProfile()), null, 2)}\n`, { mode: 0o600 });
    renameSync(temporary, path);
  } finally {
    rmSync(lock, { force: true });
  }
}

function acquireLock(lock: string): void {
  const deadline = Date.now() + LOCK_WAIT_MS;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    try {
      closeSync(openSync(lock, 'wx'));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (lockAgeMs(lock) > STALE_LOCK_MS) {
      rmSync(lock, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${lock} is held by another pushctl command; remove it if none is running (it waited ${LOCK_WAIT_MS} ms)`,
      );
    }
    Atomics.wait(pause, 0, 0, LOCK_RETRY_MS); // pushctl's commands are synchronous about their profile
  }
}

/** Age of a lock file; 0 when it is gone already (then the next attempt takes it). */
function lockAgeMs(lock: string): number {
  try {
    return Date.now() - statSync(lock).mtimeMs;
  } catch {
    return 0;
  }
}

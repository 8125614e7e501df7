import { readFileSync, renameSync, writeFileSync } from 'node:fs';
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

/** Writes through a temporary file and a rename: a device and a push running at once never read half a file. */
export function saveProfile(profile: Profile): void {
  const path = profilePath();
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(profile, null, 2)}\n`, { mode: 0o600 });
  renameSync(temporary, path);
}

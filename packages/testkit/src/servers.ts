import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './ports.js';

/** A server process a test started; `stop()` kills it and removes its files. */
export interface TestServer {
  url: string;
  port: number;
  stop(): Promise<void>;
}

const INSTALL_HINT: Record<string, string> = {
  'nats-server': 'apt-get update && apt-get install -y nats-server',
  'redis-server': 'apt-get update && apt-get install -y redis-server',
};

/** Finds a server binary or fails with the command that installs it: never a silent skip. */
export function requireBinary(name: 'nats-server' | 'redis-server'): string {
  for (const candidate of [process.env[`${name.toUpperCase().replace('-', '_')}_BIN`], name, `/usr/sbin/${name}`, `/usr/bin/${name}`]) {
    if (!candidate) continue;
    const probe = spawnSync(candidate, ['--version'], { stdio: 'ignore' });
    if (probe.status === 0) return candidate;
  }
  throw new Error(
    `${name} is required by the integration and end-to-end tests but was not found on PATH or in /usr/sbin. ` +
      `Install it with: ${INSTALL_HINT[name]}`,
  );
}

/** Starts a nats-server with JetStream on a free port, storing in a fresh temporary directory. */
export async function startNatsServer(): Promise<TestServer> {
  const binary = requireBinary('nats-server');
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pushd-nats-'));
  const child = spawn(binary, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
  return track(child, port, `nats://127.0.0.1:${port}`, dir);
}

/** Starts a redis-server with nothing persisted on a free port. */
export async function startRedisServer(): Promise<TestServer> {
  const binary = requireBinary('redis-server');
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pushd-redis-'));
  const child = spawn(
    binary,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' },
  );
  return track(child, port, `redis://127.0.0.1:${port}`, dir);
}

async function track(child: ChildProcess, port: number, url: string, dir: string): Promise<TestServer> {
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  try {
    await waitForPort(port);
  } catch (error) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    url,
    port,
    async stop() {
      if (!exited) {
        const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await gone;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

import { execFile, spawn } from 'node:child_process';
import { type AddressInfo, createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SystemUnderTest, startProcessSystem } from '../support/system.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

describe('service configuration', () => {
  it('refuses to start on bad environment, naming every bad variable, with exit status 78', async () => {
    const failure = run(process.execPath, ['--import', 'tsx', 'services/dispatch/src/main.ts'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', CLUSTER_TOKEN: 'short', GRPC_PORT: 'abc', NATS_URL: 'http://x' },
    });
    await expect(failure).rejects.toMatchObject({ code: 78 });
    const { stderr } = (await failure.catch((error: { stderr: string }) => error)) as { stderr: string };
    expect(stderr).toContain('Invalid configuration');
    expect(stderr).toMatch(/CLUSTER_TOKEN: must be at least 16 characters/);
    expect(stderr).toMatch(/GRPC_PORT: .*\(got "abc"\)/);
    expect(stderr).toMatch(/NATS_URL: must be a URL starting with nats:\/\/ or tls:\/\//);
  });

  it('exits at once on SIGTERM while it is still starting (as PID 1 it would otherwise ignore it)', async () => {
    // A "NATS server" that accepts and never speaks: the service waits in its connect.
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as AddressInfo;
    try {
      const child = spawn(process.execPath, ['--import', 'tsx', 'services/registry/src/main.ts'], {
        cwd: ROOT,
        env: {
          PATH: process.env.PATH ?? '',
          CLUSTER_TOKEN: 'a-cluster-token-for-this-test',
          NATS_URL: `nats://127.0.0.1:${port}`,
          REDIS_URL: 'redis://127.0.0.1:1',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      // Connected to the silent server: start-up is under way.
      await new Promise<void>((resolve) => silent.once('connection', () => resolve()));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(143);
      expect(stderr).toContain('SIGTERM during start-up: exiting');
    } finally {
      silent.close();
    }
  });

  it('refuses a Redis URL the client cannot use the same way, not with a stack trace', async () => {
    // Connects to nothing: Redis is configured (and refused) before NATS is dialled.
    const failure = run(process.execPath, ['--import', 'tsx', 'services/registry/src/main.ts'], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        CLUSTER_TOKEN: 'a-cluster-token-for-this-test',
        REDIS_URL: 'redis://127.0.0.1:1/2,redis://127.0.0.1:2',
      },
    });
    await expect(failure).rejects.toMatchObject({ code: 78 });
    const { stderr } = (await failure.catch((error: { stderr: string }) => error)) as { stderr: string };
    expect(stderr).toMatch(/registry: Invalid configuration:\n {2}REDIS_URL: Redis Cluster has no databases/);
    expect(stderr).not.toMatch(/\n\s+at /);
  });
});

describe('operations endpoints of every service process', () => {
  let system: SystemUnderTest;

  beforeAll(async () => {
    system = await startProcessSystem();
  }, 90_000);

  afterAll(() => system?.stop());

  it('serve /healthz, /readyz and Prometheus /metrics with their own names', async () => {
    const prefixes = new Set<string>();
    for (const port of system.opsPorts) {
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
      const response = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
      const text = await response.text();
      const prefix = /^# HELP (\w+?)_/m.exec(text)?.[1];
      expect(prefix).toBeDefined();
      prefixes.add(prefix ?? '');
      // Client health of both dependencies is exported by every process.
      expect(text).toMatch(new RegExp(`^${prefix}_nats_connected(\\{[^}]*\\})? 1$`, 'm'));
      expect(text).toMatch(new RegExp(`^${prefix}_redis_connected(\\{[^}]*\\})? 1$`, 'm'));
      expect(text).toMatch(new RegExp(`^${prefix}_process_resident_memory_bytes `, 'm'));
    }
    expect([...prefixes].sort()).toEqual(['dispatch', 'gateway', 'registry', 'stats', 'tag']);
  });
});

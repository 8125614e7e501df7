import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { waitFor } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN, type SystemUnderTest, startEmbeddedSystem } from '../support/system.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../../packages/pushctl/bin/pushctl.mjs', import.meta.url));

// The README's "first push in two minutes", command by command, through the real CLI.
describe('pushctl against the embedded system', () => {
  let system: SystemUnderTest;
  let dir: string;
  let env: NodeJS.ProcessEnv;
  let endpoints: string[];
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    system = await startEmbeddedSystem();
    dir = mkdtempSync(join(tmpdir(), 'pushctl-'));
    env = { ...process.env, PUSHCTL_CONFIG: join(dir, 'profile.json'), CLUSTER_TOKEN };
    endpoints = [
      '--registry',
      system.registry,
      '--dispatch',
      system.dispatch,
      '--stats',
      system.stats,
      '--gateway',
      system.gatewayUrl,
    ];
  });

  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL');
    await system?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const pushctl = async (...args: string[]) => {
    const { stdout } = await run(process.execPath, [BIN, ...args, ...endpoints, '--json'], { env });
    return stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  };

  // Each step starts a Node.js process (through tsx): generous on a loaded 2-core machine.
  it('creates an app, runs a device, pushes to it and reads the stats', { timeout: 150_000 }, async () => {
    const [app] = await pushctl('app', 'create', '--name', 'demo');
    expect(app).toMatchObject({
      accessId: expect.any(Number),
      accessKey: expect.any(String),
      secretKey: expect.any(String),
    });

    const device = spawn(process.execPath, [BIN, 'device', '--count', '1', ...endpoints, '--json'], { env });
    children.push(device);
    const lines: Record<string, unknown>[] = [];
    let buffered = '';
    device.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const parts = buffered.split('\n');
      buffered = parts.pop() ?? '';
      for (const part of parts) if (part.trim()) lines.push(JSON.parse(part));
    });
    let stderr = '';
    device.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => device.once('exit', resolve));
    await waitFor(() => lines.some((l) => l.event === 'connected'), 'the device to connect', 20_000);

    const [pushed] = await pushctl('push', '--title', 'Hello', '--content', 'first push', '--custom', 'k=v');
    await waitFor(() => lines.some((l) => l.event === 'message'), 'the device to print the message', 30_000);
    expect(pushed).toMatchObject({ pushId: expect.any(String) });
    expect({ status: await exited, stderr }).toEqual({ status: 0, stderr: '' });
    expect(lines.find((l) => l.event === 'message')).toMatchObject({
      pushId: pushed?.pushId,
      title: 'Hello',
      content: 'first push',
      customContent: { k: 'v' },
    });

    await waitFor(
      async () => {
        const [stats] = await pushctl('stats');
        return stats?.sent === 1 && stats.arrived === 1;
      },
      'stats sent=1 arrived=1',
      20_000,
    );

    // Broadcast and tag audiences: counted from the audience index, the second `all` within 3 s refused.
    const [everyone] = await pushctl('push', '--all', '--content', 'to everyone');
    expect(everyone).toMatchObject({ pushId: expect.any(String), target: 1 });
    await expect(pushctl('push', '--all', '--content', 'again')).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('RATE_LIMITED'),
    });
    const [tagged] = await pushctl('push', '--tags', 'vip,beta', '--tags-op', 'and', '--content', 'vips');
    expect(tagged).toMatchObject({ target: 0 });

    // A scheduled push: listed as scheduled, then cancelled.
    const sendAt = new Date(Date.now() + 3_600_000).toISOString();
    const [later] = await pushctl('push', '--tags', 'vip', '--content', 'later', '--send-at', sendAt);
    expect(later).toMatchObject({ pushId: expect.any(String), msgId: 0 });
    expect(await pushctl('pushes', '--status', 'scheduled')).toEqual([
      expect.objectContaining({ pushId: later?.pushId, status: 'scheduled', sendTimeMs: Date.parse(sendAt) }),
    ]);
    expect(await pushctl('cancel')).toEqual([{ pushId: later?.pushId, status: 'cancelled' }]);
    expect((await pushctl('pushes', '--status', 'cancelled')).map((line) => line.pushId)).toEqual([
      later?.pushId,
    ]);
  });

  it('explains a missing app and a refused call on stderr with exit status 1', async () => {
    const fresh = { ...env, PUSHCTL_CONFIG: join(dir, 'empty.json') };
    await expect(
      run(process.execPath, [BIN, 'push', '--content', 'x', ...endpoints], { env: fresh }),
    ).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('no app'),
    });
    await expect(
      run(
        process.execPath,
        [BIN, 'app', 'create', '--name', 'x', '--cluster-token', 'wrong-token-wrong-token', ...endpoints],
        { env },
      ),
    ).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('UNAUTHENTICATED') });
  });
});

// The C peer of the peers benchmark: a Mosquitto broker (Debian's `mosquitto` package) started on a free
// loopback port with its own configuration, and an MQTT publisher for the harness.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from '@pushd/testkit';
import { connectAsync, type MqttClient } from 'mqtt';
import type { Cleanup } from './lifecycle.js';

export const MOSQUITTO_INSTALL = 'apt-get update && apt-get install -y --no-install-recommends mosquitto';

/** The broker's binary and the version it prints, or an error saying how to install it: never a skip. */
export function requireMosquitto(): { binary: string; version: string } {
  for (const candidate of [process.env.MOSQUITTO_BIN, 'mosquitto', '/usr/sbin/mosquitto']) {
    if (!candidate) continue;
    // `mosquitto -h` prints its version and usage and exits with 3.
    const probe = spawnSync(candidate, ['-h'], { encoding: 'utf8', timeout: 10_000 });
    if (probe.error !== undefined) continue;
    const version = /mosquitto version (\S+)/.exec(`${probe.stdout}${probe.stderr}`)?.[1];
    if (version !== undefined) return { binary: candidate, version };
  }
  throw new Error(
    'mosquitto (the MQTT broker the peers benchmark compares with) was not found on PATH or in /usr/sbin. ' +
      `Install it from Debian with: ${MOSQUITTO_INSTALL}`,
  );
}

export interface MosquittoBroker {
  url: string;
  port: number;
  pid: number;
  version: string;
  stop(): Promise<void>;
}

/**
 * Starts a broker listening on 127.0.0.1 only, nothing persisted, anonymous clients allowed, with
 * TCP_NODELAY on its sockets (Node's servers set it by default; without it the comparison would be about
 * Nagle's algorithm). Everything else is Mosquitto's default (20 QoS 1 messages in flight and 1,000 queued
 * per client).
 */
export async function startMosquitto(cleanup: Cleanup): Promise<MosquittoBroker> {
  const { binary, version } = requireMosquitto();
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pushd-mosquitto-'));
  const config = join(dir, 'mosquitto.conf');
  writeFileSync(
    config,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence false',
      'set_tcp_nodelay true',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(binary, ['-c', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  const output: string[] = [];
  child.stderr?.on('data', (chunk: Buffer) => {
    output.push(chunk.toString());
    if (output.length > 50) output.shift();
  });
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await gone;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  cleanup.add('mosquitto', stop);
  try {
    await waitForPort(port);
  } catch (error) {
    throw new Error(`mosquitto did not start: ${String(error)}\n${output.join('')}`);
  }
  return { url: `mqtt://127.0.0.1:${port}`, port, pid: child.pid ?? 0, version, stop };
}

/** The harness's publisher: QoS 1, so a publish resolves when the broker has taken it (its PUBACK). */
export async function mqttPublisher(cleanup: Cleanup, url: string): Promise<MqttClient> {
  const client = await connectAsync(url, {
    clientId: 'bench-publisher',
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 0,
  });
  cleanup.add('mqtt publisher', () => client.endAsync(true));
  return client;
}

// The benchmarks in smoke mode (tiny N, a few seconds each), so that the suite cannot rot: each runs as
// `pnpm bench <name> --smoke` would, and its last line of stdout must be the JSON object of its figures.
// No timing is asserted; counts are (every device received every broadcast). peers needs the Mosquitto
// broker (Debian's mosquitto package, which .ci/run installs): without it the run fails saying so.
// The full runs and their figures are in docs/benchmarks.md; they are not run in CI.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { ROOT } from './children.js';

/** The figures the issue names for each benchmark. */
const FIGURES = {
  connections: ['devices', 'bytes_per_conn', 'ref_bytes_per_conn', 'ratio'],
  targeted: ['max_pushes_per_s', 'p99_ms', 'lost'],
  reconnect: [
    'devices',
    'secs_to_all_connected',
    'handshakes_per_s',
    'ref_handshakes_per_s',
    'ratio',
    'offline_msgs_delivered',
  ],
  tags: [
    'devices',
    'registered',
    'indexed',
    'registrations_per_s',
    'redis_bytes_per_device',
    'dry_run_p50_ms',
    'dry_run_p90_ms',
    'dry_run_1term_p50_ms',
    'accept_token_p50_ms',
    'accept_1pct_p50_ms',
    'accept_10pct_p50_ms',
    'accept_50pct_p50_ms',
    'apply_10pct_p50_ms',
  ],
  fanout: [
    'devices',
    'msgs_per_s',
    'ref_msgs_per_s',
    'ratio',
    'p50_ms',
    'p99_ms',
    'all_p99_ms',
    'spread_devices',
    'spread_msgs_per_s',
    'spread_ref_msgs_per_s',
    'spread_ratio',
    'spread_p99_ms',
  ],
  peers: [
    'devices',
    'ours_msgs_per_s',
    'socketio_msgs_per_s',
    'mosquitto_msgs_per_s',
    'ours_p99_ms',
    'socketio_p99_ms',
    'mosquitto_p99_ms',
  ],
} as const;

/** Runs one benchmark in smoke mode; resolves with its stdout, stderr and exit code. */
function runSmoke(name: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'test/bench/run.ts', name, '--smoke', '--timeout-s', '50'],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    // The harness stops itself at --timeout-s; this is the backstop if it hangs anyway (SIGTERM lets it
    // stop what it started).
    const timer = setTimeout(() => child.kill('SIGTERM'), 55_000);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

// One after the other: run at once on a 2-core machine they would each come close to their deadline.
describe('benchmark smoke runs', () => {
  for (const [name, figures] of Object.entries(FIGURES)) {
    it(`${name} prints its figures as the last line`, { timeout: 60_000 }, async () => {
      const { code, stdout, stderr } = await runSmoke(name);
      expect(code, stderr).toBe(0);
      const lines = stdout.trimEnd().split('\n');
      const result = JSON.parse(lines[lines.length - 1] ?? '') as Record<string, unknown>;
      expect(result.benchmark).toBe(name);
      for (const figure of figures) {
        expect(Number.isFinite(result[figure]), `${figure} = ${String(result[figure])}`).toBe(true);
      }
      if ('lost' in result) expect(result.lost).toBe(0);
      if (name === 'targeted') {
        // Measured (not necessarily above 0 in a one-second smoke step: /proc counts CPU in 10 ms ticks).
        for (const side of ['server', 'harness']) {
          const figure = result[`closed_loop_${side}_cpu_ms_per_push`];
          expect(Number.isFinite(figure) && (figure as number) >= 0, `${side}: ${String(figure)}`).toBe(true);
        }
      }
      if (name === 'reconnect') {
        expect(result.offline_msgs_delivered).toBe(result.offline_msgs_accepted);
        // Present and measured; not necessarily above 0: /proc counts CPU in 10 ms ticks, and 60 bare `ws`
        // handshakes on a fast machine can take less than one.
        for (const side of ['server', 'ref_server', 'device', 'ref_device']) {
          const figure = result[`${side}_cpu_ms_per_handshake`];
          expect(Number.isFinite(figure) && (figure as number) >= 0, `${side}: ${String(figure)}`).toBe(true);
        }
      }
      if (name !== 'targeted') expect(result.devices).toBeGreaterThan(0);
      if (name === 'tags') {
        // Every device registered and indexed, the 10 % cohort exactly 10 %, memory measured.
        expect(result.registered).toBe(result.devices);
        expect(result.indexed).toBe(result.devices);
        expect(result.accept_10pct_target).toBe(Math.floor((result.devices as number) / 10));
        expect(result.redis_bytes_per_device).toBeGreaterThan(0);
      }
      if (name === 'fanout') {
        // Every device received every broadcast, through the tag pushes, `all` and over two gateways.
        const devices = result.devices as number;
        expect(result.expected).toBe(devices * (result.broadcasts as number));
        expect(result.delivered).toBe(result.expected);
        expect(result.all_delivered).toBe(devices * (result.all_broadcasts as number));
        expect(result.spread_gateways).toBeGreaterThan(1);
        expect(result.spread_expected).toBe(
          (result.spread_devices as number) * (result.spread_broadcasts as number),
        );
        expect(result.spread_delivered).toBe(result.spread_expected);
        for (const figure of ['msgs_per_s', 'ref_msgs_per_s', 'spread_msgs_per_s', 'ratio']) {
          expect(result[figure]).toBeGreaterThan(0);
        }
      }
      if (name === 'peers') {
        // Every subscriber of each peer received every broadcast.
        expect(result.expected).toBe((result.devices as number) * (result.broadcasts as number));
        for (const peer of ['ours', 'socketio', 'mosquitto']) {
          expect(result[`${peer}_delivered`], peer).toBe(result.expected);
          expect(result[`${peer}_msgs_per_s`], peer).toBeGreaterThan(0);
        }
      }
    });
  }
});

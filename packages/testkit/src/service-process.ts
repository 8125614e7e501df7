import { type ChildProcess, spawn } from 'node:child_process';
import { waitFor } from './ports.js';

export interface ServiceProcessOptions {
  /** Repository root: the process runs there and loads `services/<service>/src/main.ts`. */
  root: string;
  /** Directory name under services/, e.g. 'gateway'. */
  service: string;
  /** The whole environment of the process besides PATH (services read nothing else). */
  env: Record<string, string>;
  /** OPS_PORT of the process: start() resolves once its /readyz answers 200. */
  opsPort: number;
  /** Node.js flags before `--import tsx`, e.g. ['--cpu-prof', '--cpu-prof-dir=/tmp/p']. Default: none. */
  nodeArgs?: string[];
  /** How long the process has to become ready. Default: 30000 ms. */
  readyTimeoutMs?: number;
  /** Lines of output kept for error messages. Default: 200. */
  keepOutputChunks?: number;
}

/** A service started as its own Node.js process, in its own process group. */
export interface ServiceProcess {
  readonly service: string;
  /** Process id (also the id of its process group). */
  readonly pid: number;
  /** Whether the process has exited. */
  readonly exited: boolean;
  /** What the process printed lately (stdout and stderr). */
  output(): string;
  /**
   * SIGTERM to the process group, SIGKILL after `graceMs` (default 10000). Resolves once the process
   * exited; does nothing when it already has.
   */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts `node [nodeArgs] --import tsx services/<service>/src/main.ts` with the given environment (the
 * production shape the end-to-end tests and benchmarks run) and waits for its /readyz. The process leads
 * its own process group, so stop() also reaches anything it spawned.
 */
export async function startServiceProcess(options: ServiceProcessOptions): Promise<ServiceProcess> {
  const keep = options.keepOutputChunks ?? 200;
  const output: string[] = [];
  const child: ChildProcess = spawn(
    process.execPath,
    [...(options.nodeArgs ?? []), '--import', 'tsx', `services/${options.service}/src/main.ts`],
    {
      cwd: options.root,
      env: { PATH: process.env.PATH ?? '', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    },
  );
  const record = (chunk: Buffer) => {
    output.push(chunk.toString());
    if (output.length > keep) output.shift();
  };
  child.stdout?.on('data', record);
  child.stderr?.on('data', record);
  let exited = false;
  const gone = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
  });
  const pid = child.pid ?? 0;
  const stop = async (graceMs = 10_000) => {
    if (exited) return;
    signalGroup(pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(pid, 'SIGKILL'), graceMs);
    await gone;
    clearTimeout(timer);
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`${options.service} exited during start`);
        const response = await fetch(`http://127.0.0.1:${options.opsPort}/readyz`).catch(() => undefined);
        return response?.status === 200;
      },
      `${options.service} to become ready`,
      options.readyTimeoutMs ?? 30_000,
    );
  } catch (error) {
    await stop(2_000);
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`${message}\n--- ${options.service} output ---\n${output.join('')}`);
  }
  return {
    service: options.service,
    pid,
    get exited() {
      return exited;
    },
    output: () => output.join(''),
    stop,
  };
}

/** Signals a process group; a group that is already gone is not an error. */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  if (pid <= 0) return;
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {}
  }
}

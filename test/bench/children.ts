import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { signalGroup } from '@pushd/testkit';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** A request to a harness child: `op` names the handler, the rest are its arguments. */
export interface Call {
  id: number;
  op: string;
  args: unknown;
}

/** A child's answer to one Call. */
export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

/**
 * A harness child process (device worker, pusher, reference server): a TypeScript file run with tsx, in its
 * own process group, answering calls over the IPC channel (structured clone, so typed arrays travel as
 * such). It exits by itself when the channel closes, so a harness that dies does not leave it behind.
 */
export class HarnessChild {
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(value: unknown): void; reject(error: Error): void }>();
  private readonly output: string[] = [];
  private exitedFlag = false;
  private readonly gone: Promise<void>;
  /** Its inspector port, when started with one (profiling, memory after a collection). */
  readonly inspectPort: number | undefined;

  constructor(
    readonly name: string,
    script: string,
    options: { nodeArgs?: string[]; env?: Record<string, string>; inspectPort?: number } = {},
  ) {
    this.inspectPort = options.inspectPort;
    const inspect = options.inspectPort === undefined ? [] : [`--inspect=127.0.0.1:${options.inspectPort}`];
    this.child = spawn(
      process.execPath,
      [...(options.nodeArgs ?? []), ...inspect, '--import', 'tsx', script],
      {
        cwd: ROOT,
        env: { ...process.env, ...options.env },
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
        serialization: 'advanced',
        detached: true,
      },
    );
    const keep = (chunk: Buffer) => {
      this.output.push(chunk.toString());
      if (this.output.length > 100) this.output.shift();
    };
    this.child.stdout?.on('data', keep);
    this.child.stderr?.on('data', keep);
    this.child.on('message', (message: Reply) => {
      const waiter = this.waiting.get(message.id);
      if (waiter === undefined) return;
      this.waiting.delete(message.id);
      if (message.ok) waiter.resolve(message.result);
      else waiter.reject(new Error(`${this.name}: ${message.error}`));
    });
    this.gone = new Promise<void>((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitedFlag = true;
        const error = new Error(
          `${this.name} exited (${signal ?? code}) with calls pending\n${this.output.join('')}`,
        );
        for (const waiter of this.waiting.values()) waiter.reject(error);
        this.waiting.clear();
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  get exited(): boolean {
    return this.exitedFlag;
  }

  /** Calls `op` in the child; rejects after timeoutMs (default 10 minutes) or when the child exits. */
  call<T>(op: string, args: unknown = {}, timeoutMs = 600_000): Promise<T> {
    if (this.exitedFlag) return Promise.reject(new Error(`${this.name} has exited\n${this.output.join('')}`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`${this.name}: ${op} took longer than ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value as T);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.child.send({ id, op, args } satisfies Call);
    });
  }

  /** Waits for the child to say it is ready (it answers the 'ready' call once its setup is done). */
  ready(timeoutMs = 30_000): Promise<unknown> {
    return this.call('ready', {}, timeoutMs);
  }

  /** SIGTERM to its process group, SIGKILL after graceMs; resolves once it exited. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.exitedFlag) return;
    signalGroup(this.pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(this.pid, 'SIGKILL'), graceMs);
    await this.gone;
    clearTimeout(timer);
  }
}

/**
 * The child side: answers calls with the handlers, and exits when the parent goes away (the IPC channel
 * closes) or on SIGTERM.
 */
export function serveCalls(handlers: Record<string, (args: never) => unknown>): void {
  const send = process.send?.bind(process);
  if (send === undefined) {
    process.stderr.write('this file is a harness child: run it through the benchmark harness\n');
    process.exit(2);
  }
  process.on('message', (message: Call) => {
    const handler = handlers[message.op] ?? (message.op === 'ready' ? () => true : undefined);
    if (handler === undefined) {
      send({ id: message.id, ok: false, error: `unknown op ${message.op}` } satisfies Reply);
      return;
    }
    Promise.resolve()
      .then(() => handler(message.args as never))
      .then(
        (result) => send({ id: message.id, ok: true, result } satisfies Reply),
        (error: unknown) =>
          send({
            id: message.id,
            ok: false,
            error: error instanceof Error ? (error.stack ?? error.message) : String(error),
          } satisfies Reply),
      );
  });
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}

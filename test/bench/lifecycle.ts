/**
 * Everything a benchmark started, stopped in reverse order whatever happens: at the end, on an error, on
 * SIGINT/SIGTERM and when the run's deadline passes.
 */
export class Cleanup {
  private readonly steps: { name: string; run: () => Promise<void> }[] = [];
  private running: Promise<void> | undefined;

  /** Registers a stop step; returns a function that runs it early (once) and removes it. */
  add(name: string, run: () => Promise<void>): () => Promise<void> {
    const step = { name, run };
    this.steps.push(step);
    return async () => {
      const index = this.steps.indexOf(step);
      if (index < 0) return;
      this.steps.splice(index, 1);
      await run();
    };
  }

  /** Runs every step, last registered first; a failing step is reported and does not stop the others. */
  runAll(): Promise<void> {
    this.running ??= (async () => {
      while (this.steps.length > 0) {
        const step = this.steps.pop()!;
        try {
          await step.run();
        } catch (error) {
          log(`stopping ${step.name} failed: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    })();
    return this.running;
  }
}

/** Progress goes to stderr, so that stdout holds only the table and the final JSON line. */
export function log(message: string): void {
  const time = new Date().toISOString().slice(11, 23);
  process.stderr.write(`[bench ${time}] ${message}\n`);
}

/**
 * Runs `body` with a cleanup that always runs: after it returns or throws, on SIGINT/SIGTERM, and after
 * `deadlineS` (a benchmark must stop by itself). Exits the process with 0 on success, 1 otherwise.
 */
export async function runBounded(
  deadlineS: number,
  body: (cleanup: Cleanup) => Promise<void>,
): Promise<never> {
  const cleanup = new Cleanup();
  let exiting = false;
  const abort = async (why: string, code: number) => {
    if (exiting) return;
    exiting = true;
    log(`${why}: stopping everything`);
    await cleanup.runAll();
    process.exit(code);
  };
  process.on('SIGINT', () => void abort('SIGINT', 130));
  process.on('SIGTERM', () => void abort('SIGTERM', 143));
  const deadline = setTimeout(() => void abort(`deadline of ${deadlineS} s passed`, 1), deadlineS * 1000);
  deadline.unref();
  let code = 0;
  try {
    await body(cleanup);
  } catch (error) {
    log(`failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    code = 1;
  }
  // Also when a signal or the deadline is already stopping everything: runAll() returns that same run, so
  // the process does not exit before the services it started are stopped.
  exiting = true;
  await cleanup.runAll();
  process.exit(code);
}

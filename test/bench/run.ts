// `pnpm bench <name> [options]`: runs one benchmark, prints its tables and, as the last line of stdout,
// one JSON object with its figures. Progress goes to stderr. See docs/benchmarks.md.
import { writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { connectionsBench } from './connections.js';
import { fanoutBench } from './fanout.js';
import { log, runBounded } from './lifecycle.js';
import { type BenchOptions, parseOptions } from './options.js';
import { peersBench } from './peers.js';
import { reconnectBench } from './reconnect.js';
import { printResult } from './report.js';
import { tagsBench } from './tags.js';
import { targetedBench } from './targeted.js';

let options: BenchOptions;
try {
  options = parseOptions(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(2);
}

const benches = {
  connections: connectionsBench,
  targeted: targetedBench,
  reconnect: reconnectBench,
  tags: tagsBench,
  fanout: fanoutBench,
  peers: peersBench,
};
const deadlineS = options.timeoutS ?? (options.smoke ? 90 : 3_600);

await runBounded(deadlineS, async (cleanup) => {
  const started = performance.now();
  const loadBefore = loadavg()[0] ?? 0;
  const result = await benches[options.name](cleanup, options);
  await cleanup.runAll();
  const seconds = (performance.now() - started) / 1000;
  log(`${options.name} done in ${seconds.toFixed(1)} s`);
  // The machine, and how busy it was: the figures are only comparable on the same, otherwise idle, one.
  result.tables.push({
    title: 'machine',
    headers: ['cores', 'memory', 'node', 'load avg (1 min) at start / end', 'run time'],
    rows: [
      [
        cpus().length,
        `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
        process.version,
        `${loadBefore.toFixed(2)} / ${(loadavg()[0] ?? 0).toFixed(2)}`,
        `${seconds.toFixed(0)} s`,
      ],
    ],
  });
  for (const [service, env] of Object.entries(options.serviceEnv ?? {})) {
    result.figures[`${service}_env`] = Object.entries(env)
      .map(([key, value]) => `${key}=${value}`)
      .join(' ');
  }
  if (options.out !== undefined) writeFileSync(options.out, `${JSON.stringify(result.figures)}\n`);
  printResult(result);
});

// `tsx test/bench/profile-top.ts <file> [top]`: where a process spent its CPU (a .cpuprofile from
// `pnpm bench <name> --cpu-prof DIR`) or what allocated its live memory (a .heapprofile from
// `pnpm bench connections --heap-profile DIR`), by function and by package or directory.
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface HeapNode {
  callFrame: ProfileNode['callFrame'];
  selfSize: number;
  children: HeapNode[];
}

interface Profile {
  head?: HeapNode;
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** node_modules/.pnpm/<pkg>@<version>/node_modules/<pkg>/... -> <pkg>; repository files by directory. */
function area(url: string): string {
  if (url === '') return '(native/vm)';
  const modules = url.lastIndexOf('/node_modules/');
  if (modules >= 0) {
    const rest = url.slice(modules + '/node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : (rest[0] ?? url);
  }
  if (url.startsWith('node:')) return url;
  const match = /\/(services|packages)\/([^/]+)\//.exec(url);
  return match ? `${match[1]}/${match[2]}` : url;
}

const file = process.argv[2];
const top = Number(process.argv[3] ?? 25);
if (file === undefined) {
  process.stderr.write('usage: tsx test/bench/profile-top.ts <file.cpuprofile|file.heapprofile> [top]\n');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;

function frameName(frame: ProfileNode['callFrame']): string {
  const where =
    frame.url === ''
      ? ''
      : ` ${frame.url.replace(/^.*\/(node_modules|services|packages)\//, '$1/')}:${frame.lineNumber + 1}`;
  return `${frame.functionName || '(anonymous)'}${where}`;
}

function printTop(title: string, entries: Map<string, number>, total: number, unit: (n: number) => string) {
  process.stdout.write(`\n${title}\n`);
  for (const [name, value] of [...entries].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(
      `${((100 * value) / total).toFixed(1).padStart(6)}% ${unit(value).padStart(10)}  ${name}\n`,
    );
  }
}

if (profile.head !== undefined) {
  // Sampling heap profile: self sizes of live allocations, by the function that allocated them.
  const bySite = new Map<string, number>();
  const byArea = new Map<string, number>();
  let total = 0;
  const walk = (node: HeapNode) => {
    if (node.selfSize > 0) {
      total += node.selfSize;
      const name = frameName(node.callFrame);
      bySite.set(name, (bySite.get(name) ?? 0) + node.selfSize);
      const key = node.callFrame.functionName.startsWith('(')
        ? node.callFrame.functionName
        : area(node.callFrame.url);
      byArea.set(key, (byArea.get(key) ?? 0) + node.selfSize);
    }
    for (const child of node.children) walk(child);
  };
  walk(profile.head);
  const kib = (n: number) => `${(n / 1024).toFixed(0)} KiB`;
  process.stdout.write(`${file}: ${kib(total)} of live sampled allocations\n`);
  printTop('by package or directory (allocating function)', byArea, total, kib);
  printTop('by allocating function', bySite, total, kib);
  process.exit(0);
}
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const selfUs = new Map<number, number>();
profile.samples.forEach((id, index) => {
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[index] ?? 0));
});
const totalUs = profile.endTime - profile.startTime;
const byFunction = new Map<string, number>();
const byArea = new Map<string, number>();
let idleUs = 0;
for (const [id, us] of selfUs) {
  const frame = byId.get(id)?.callFrame;
  if (frame === undefined) continue;
  if (frame.functionName === '(idle)') {
    idleUs += us;
    continue;
  }
  const name = frameName(frame);
  byFunction.set(name, (byFunction.get(name) ?? 0) + us);
  const key = frame.functionName.startsWith('(') ? frame.functionName : area(frame.url);
  byArea.set(key, (byArea.get(key) ?? 0) + us);
}
const busyUs = totalUs - idleUs;
const ms = (us: number) => `${(us / 1000).toFixed(0)} ms`;
process.stdout.write(
  `${file}: ${(totalUs / 1e6).toFixed(1)} s profiled, ${(busyUs / 1e6).toFixed(1)} s busy ` +
    `(${((100 * busyUs) / totalUs).toFixed(0)}%); shares below are of busy time\n`,
);
printTop('by package or directory (self time)', byArea, busyUs, ms);
printTop('by function (self time)', byFunction, busyUs, ms);

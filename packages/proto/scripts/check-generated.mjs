// Fails when the committed generated code (src/gen, src/descriptor.binpb) is not what proto/ generates.
// Generates into a temporary directory and compares byte by byte, so a dirty work tree is never touched.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const pkg = fileURLToPath(new URL('..', import.meta.url));
const buf = join(pkg, 'node_modules/.bin/buf');
const tmp = mkdtempSync(join(tmpdir(), 'pushd-proto-'));

function listFiles(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? listFiles(path) : [path];
  });
}

try {
  execFileSync(buf, ['lint'], { cwd: root, stdio: 'inherit' });
  execFileSync(buf, ['generate', '-o', tmp], { cwd: root, stdio: 'inherit' });
  execFileSync(buf, ['build', '-o', join(tmp, 'descriptor.binpb')], { cwd: root, stdio: 'inherit' });
  const fresh = join(tmp, 'packages/proto/src/gen');
  const committed = join(pkg, 'src/gen');
  const problems = [];
  const freshFiles = new Set(listFiles(fresh).map((f) => relative(fresh, f)));
  const committedFiles = new Set(listFiles(committed).map((f) => relative(committed, f)));
  for (const f of freshFiles) {
    if (!committedFiles.has(f)) problems.push(`missing: src/gen/${f}`);
    else if (!readFileSync(join(fresh, f)).equals(readFileSync(join(committed, f))))
      problems.push(`stale: src/gen/${f}`);
  }
  for (const f of committedFiles) if (!freshFiles.has(f)) problems.push(`extra: src/gen/${f}`);
  if (!readFileSync(join(tmp, 'descriptor.binpb')).equals(readFileSync(join(pkg, 'src/descriptor.binpb')))) {
    problems.push('stale: src/descriptor.binpb');
  }
  if (problems.length > 0) {
    console.error(`Generated protobuf code is out of date with proto/:\n  ${problems.join('\n  ')}`);
    console.error('Run `pnpm generate` and commit the result.');
    process.exit(1);
  }
  console.log('generated protobuf code is up to date');
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

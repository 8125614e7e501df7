#!/usr/bin/env node
// Builds one service for production: `pnpm build` runs this in each services/<name> directory (turbo runs
// them all). Workspace packages ship TypeScript source, so the service's src/main.ts and every @pushd/*
// module it reaches are bundled by esbuild into dist/main.js; third-party packages stay external and load
// from node_modules as usual (grpc-js, protobufjs, ioredis, nats keep their own files, lazy requires and
// optional native parts).
//
// What dist/ holds, and why:
//   main.js, main.js.map   the bundle (run with --enable-source-maps for TypeScript stack traces)
//   package.json           "type": "module" so that dist/ loads as ESM wherever it is copied, and the
//                          exact versions of the packages the bundle imports
//   node_modules/<pkg>     relative links to the package directories the bundled workspace code resolved
//                          at build time. In pnpm's isolated layout a service's own node_modules holds only
//                          its direct dependencies, while the bundle imports those of @pushd/store,
//                          @pushd/rpc... too (ioredis, @grpc/proto-loader 0.7 where grpc-js itself uses
//                          0.8). The links give each import exactly the copy its workspace package was
//                          written against; they point into node_modules/.pnpm, which a production install
//                          (`pnpm install --prod --frozen-lockfile`) recreates with the same names.
//   descriptor.binpb, scripts/*.lua
//                          files that bundled modules read at run time through
//                          `new URL('./x', import.meta.url)`: in the bundle import.meta.url is dist/main.js,
//                          so each is copied to the same place relative to dist/ as to its source module.
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createRequire, isBuiltin } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';

const serviceDir = process.cwd();
const servicePackage = JSON.parse(readFileSync(join(serviceDir, 'package.json'), 'utf8'));
const entryPoint = join(serviceDir, 'src', 'main.ts');
const distDir = join(serviceDir, 'dist');
const workspaceScope = '@pushd/';

if (!existsSync(entryPoint)) fail(`${servicePackage.name}: no src/main.ts in ${serviceDir}`);

// esbuild is a devDependency of each service (not of the root), so it is resolved from the service.
const esbuild = createRequire(join(serviceDir, 'package.json'))('esbuild');

/** @type {Map<string, { root: string; importers: Set<string> }>} third-party packages the bundle imports */
const externals = new Map();

/** 'ioredis' -> 'ioredis', '@grpc/grpc-js/build/src/x' -> '@grpc/grpc-js', 'zod/v4' -> 'zod'. */
function packageName(specifier) {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/** The real directory of `name` as Node would find it from `fromDir` (nearest node_modules upwards). */
function findPackageRoot(name, fromDir) {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return realpathSync(candidate);
    if (dirname(dir) === dir) return undefined;
  }
}

/** Bundles @pushd/* (and relative imports); leaves Node built-ins and npm packages external. */
const externalsPlugin = {
  name: 'pushd-externals',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.kind === 'entry-point' || args.path.startsWith(workspaceScope)) return undefined;
      if (isBuiltin(args.path)) return { path: args.path, external: true };
      const name = packageName(args.path);
      const root = findPackageRoot(name, args.resolveDir);
      if (!root)
        return {
          errors: [{ text: `${name} is imported but not installed where ${args.importer} can find it` }],
        };
      const seen = externals.get(name);
      if (seen && seen.root !== root) {
        // One bare specifier in one bundle can only load one copy.
        return {
          errors: [
            {
              text:
                `bundled workspace modules import two different copies of ${name}:\n` +
                `  ${relative(serviceDir, seen.root)} (from ${[...seen.importers].join(', ')})\n` +
                `  ${relative(serviceDir, root)} (from ${args.importer})\n` +
                'align the versions in the package.json files of the workspace packages',
            },
          ],
        };
      }
      if (seen) seen.importers.add(args.importer);
      else externals.set(name, { root, importers: new Set([args.importer]) });
      return { path: args.path, external: true };
    });
  },
};

rmSync(distDir, { recursive: true, force: true });

const result = await esbuild
  .build({
    entryPoints: [entryPoint],
    outfile: join(distDir, 'main.js'),
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    sourcemap: 'linked',
    // The map serves stack traces, which need positions, not the sources: keeps the image small.
    sourcesContent: false,
    // Class and function names survive bundling (esbuild renames clashing top-level names otherwise), so
    // that logs and errors name what the source names.
    keepNames: true,
    // An ESM bundle has no `require`: should bundled workspace code call require() (say, for an optional
    // CommonJS package), esbuild's shim calls this one instead of throwing "Dynamic require".
    banner: {
      js: "import { createRequire as __pushdCreateRequire } from 'node:module';\nconst require = __pushdCreateRequire(import.meta.url);",
    },
    plugins: [externalsPlugin],
    metafile: true,
    logLevel: 'warning',
  })
  .catch(() => fail(`${servicePackage.name}: esbuild failed (errors above)`));

// ---- run-time files of bundled modules -------------------------------------------------------------------

const NEW_URL = /new URL\(\s*(?:"([^"]*)"|'([^']*)'|`([^`]*)`)\s*,\s*import\.meta\.url\s*\)/g;
/** @type {Map<string, string>} path in dist/ -> source path */
const assets = new Map();

function addAsset(source, sourceModule) {
  const target = resolve(distDir, relative(dirname(sourceModule), source));
  if (!target.startsWith(distDir + sep)) {
    fail(
      `${sourceModule} reads ${source}, which would lie outside dist/ next to the bundle: keep such files below the module's directory`,
    );
  }
  const previous = assets.get(target);
  if (previous && previous !== source)
    fail(`${relative(serviceDir, target)} is wanted as both ${previous} and ${source}: rename one`);
  if (!existsSync(source)) fail(`${sourceModule} reads ${source}, which does not exist`);
  assets.set(target, source);
}

for (const input of Object.keys(result.metafile.inputs)) {
  const file = resolve(input);
  // Workspace sources only; npm packages are external and esbuild's virtual inputs are not files.
  if (file.split(sep).includes('node_modules') || !/\.[cm]?[jt]s$/.test(file) || !existsSync(file)) continue;
  // Transformed, so that comments and types do not count; the calls stay as written.
  const { code } = await esbuild.transform(readFileSync(file, 'utf8'), {
    loader: file.endsWith('.ts') ? 'ts' : 'js',
    format: 'esm',
  });
  let understood = 0;
  for (const match of code.matchAll(NEW_URL)) {
    understood += 1;
    const literal = match[1] ?? match[2] ?? (match[3].includes('${') ? undefined : match[3]);
    if (literal !== undefined) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(literal)) continue; // an absolute URL, not a file next to the module
      addAsset(resolve(dirname(file), literal), file);
      continue;
    }
    // A template such as `./scripts/${name}.lua`: every file of that directory ending like the template.
    const template = match[3];
    const staticPrefix = template.slice(0, template.indexOf('${'));
    const directory = staticPrefix.slice(0, staticPrefix.lastIndexOf('/') + 1);
    const suffix = template.slice(template.lastIndexOf('}') + 1);
    if (directory === '' || directory === './' || suffix.includes('/')) {
      fail(
        `${file}: cannot tell which files \`${template}\` reads; keep them in a subdirectory (./dir/\${name}.ext)`,
      );
    }
    const sourceDir = resolve(dirname(file), directory);
    for (const name of readdirSync(sourceDir)) {
      if (name.endsWith(suffix)) addAsset(join(sourceDir, name), file);
    }
  }
  const uses = code.match(/import\.meta/g)?.length ?? 0;
  if (uses > understood) {
    // dirname/filename/url of a bundled module are those of dist/main.js: any other use is a bug waiting.
    fail(
      `${file} uses import.meta other than in new URL('./file', import.meta.url); teach scripts/build-service.mjs how to relocate it`,
    );
  }
}

for (const [target, source] of assets) {
  mkdirSync(dirname(target), { recursive: true });
  cpSync(source, target);
}

// ---- the bundle's packages ------------------------------------------------------------------------------

const dependencies = {};
for (const [name, { root }] of [...externals].sort(([a], [b]) => a.localeCompare(b))) {
  const link = join(distDir, 'node_modules', name);
  mkdirSync(dirname(link), { recursive: true });
  symlinkSync(relative(dirname(link), root), link, 'dir');
  dependencies[name] = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
}

writeFileSync(
  join(distDir, 'package.json'),
  `${JSON.stringify({ private: true, type: 'module', dependencies }, null, 2)}\n`,
);

const size = result.metafile.outputs[relative(process.cwd(), join(distDir, 'main.js'))]?.bytes;
process.stdout.write(
  `${servicePackage.name}: dist/main.js${size ? ` (${Math.round(size / 1024)} KiB)` : ''}, ` +
    `${Object.keys(dependencies).length} external packages, ${assets.size} run-time files\n`,
);

function fail(message) {
  process.stderr.write(`build-service: ${message}\n`);
  process.exit(1);
}

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dispatchEnv } from '@pushd/dispatch';
import { gatewayEnv } from '@pushd/gateway';
import { registryEnv } from '@pushd/registry';
import { statsEnv } from '@pushd/stats';
import { tagEnv } from '@pushd/tag';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

// Static checks of deploy/: nothing here needs Docker or a cluster. What they catch is drift between the
// manifests and the code: a variable a service no longer reads (zod drops unknown keys silently, so a
// renamed variable would fall back to its default without a word), a port the probes or Services name
// that the container does not declare or the service does not listen on, a path the Dockerfile copies
// that has moved.

const root = fileURLToPath(new URL('../..', import.meta.url));
const deployDir = join(root, 'deploy');
const kubernetesDir = join(deployDir, 'kubernetes');

interface FieldSchema {
  safeParse(value: unknown): { success: boolean; data?: unknown };
}
const schemas: Record<string, { shape: Record<string, FieldSchema> }> = {
  registry: registryEnv,
  tag: tagEnv,
  dispatch: dispatchEnv,
  stats: statsEnv,
  gateway: gatewayEnv,
};

/** Which container port carries the port a variable sets (names used by every manifest here). */
const PORT_NAMES: Record<string, string> = { GRPC_PORT: 'grpc', WS_PORT: 'ws', OPS_PORT: 'ops' };

// ---- reading ------------------------------------------------------------------------------------------

function filesUnder(dir: string, pattern: RegExp): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && pattern.test(entry.name))
    .map((entry) => join(entry.parentPath, entry.name))
    .sort();
}

/** Every document of a YAML file, as plain values; fails on any syntax error. */
function readYaml(file: string): unknown[] {
  // merge: compose.yaml shares its common settings through `<<:` merge keys.
  return parseAllDocuments(readFileSync(file, 'utf8'), { merge: true }).map((document) => {
    if (document.errors.length > 0) {
      throw new Error(`${relative(root, file)}: ${document.errors.map((e) => e.message).join('; ')}`);
    }
    return document.toJS();
  });
}

type Obj = Record<string, unknown>;
const isObj = (value: unknown): value is Obj =>
  typeof value === 'object' && value !== null && !Array.isArray(value);
const obj = (value: unknown): Obj => (isObj(value) ? value : {});
const list = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);
const str = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);

/** `services/<name>/dist/main.js` in a command -> the service's name. */
function serviceOf(command: unknown): string | undefined {
  for (const part of list(command)) {
    const match = /^services\/([a-z-]+)\/dist\/main\.js$/.exec(String(part));
    if (match) return match[1];
  }
  return undefined;
}

function schemaOf(service: string): { shape: Record<string, FieldSchema> } {
  const schema = schemas[service];
  if (!schema) throw new Error(`no env schema for service ${service}`);
  return schema;
}

/** What the service would use for `key` with nothing set: the schema's default. */
function schemaDefault(service: string, key: string): unknown {
  const field = schemaOf(service).shape[key];
  const parsed = field?.safeParse(undefined);
  return parsed?.success ? parsed.data : undefined;
}

// ---- the Dockerfile -------------------------------------------------------------------------------------

const dockerfilePath = join(deployDir, 'docker', 'Dockerfile');

interface Instruction {
  keyword: string;
  args: string;
  stage: number;
}

/** Instructions with continuation lines joined and comments dropped, each tagged with its stage. */
function parseDockerfile(text: string): Instruction[] {
  const logical: string[] = [];
  let current = '';
  for (const line of text.split('\n')) {
    if (/^\s*#/.test(line)) continue;
    if (line.endsWith('\\')) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    current += line;
    if (current.trim()) logical.push(current.trim());
    current = '';
  }
  let stage = -1;
  return logical.map((line) => {
    const space = line.indexOf(' ');
    const keyword = line.slice(0, space).toUpperCase();
    if (keyword === 'FROM') stage += 1;
    return { keyword, args: line.slice(space + 1).trim(), stage };
  });
}

const dockerfile = parseDockerfile(readFileSync(dockerfilePath, 'utf8'));
const finalStage = Math.max(...dockerfile.map((i) => i.stage));

/** ENV of the final (runtime) stage: what every container of the image starts with. */
const imageEnv: Record<string, string> = {};
for (const { args } of dockerfile.filter((i) => i.keyword === 'ENV' && i.stage === finalStage)) {
  for (const match of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) {
    imageEnv[match[1] as string] = (match[2] as string).replace(/^"|"$/g, '');
  }
}

/** The value a service sees for `key`: set explicitly, else from the image, else the schema's default. */
function effective(service: string, key: string, set: Record<string, string>): unknown {
  if (key in set) return set[key];
  if (key in imageEnv) return imageEnv[key];
  return schemaDefault(service, key);
}

// ---- the Kubernetes objects -----------------------------------------------------------------------------

const kubernetesFiles = filesUnder(kubernetesDir, /\.ya?ml$/).filter(
  (f) => !f.endsWith('kustomization.yaml'),
);
const objects = kubernetesFiles.flatMap((file) =>
  readYaml(file)
    .filter((document) => document !== null)
    .map((document) => ({ file: relative(root, file), object: obj(document) })),
);
const ofKind = (kind: string) =>
  objects.filter(({ object }) => object.kind === kind).map(({ object }) => object);
const nameOf = (object: Obj) => String(obj(object.metadata).name);
const configMaps = new Map(ofKind('ConfigMap').map((o) => [nameOf(o), obj(o.data)]));
const secrets = new Map(ofKind('Secret').map((o) => [nameOf(o), { ...obj(o.data), ...obj(o.stringData) }]));
const deployments = ofKind('Deployment');
const services = ofKind('Service');

function podSpec(deployment: Obj): Obj {
  return obj(obj(obj(deployment.spec).template).spec);
}
function containersOf(deployment: Obj): Obj[] {
  return list(podSpec(deployment).containers).map(obj);
}
function templateLabels(deployment: Obj): Obj {
  return obj(obj(obj(obj(deployment.spec).template).metadata).labels);
}
const selects = (selector: Obj, labels: Obj) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

/** Every variable a container gets, with its value where the manifests know it. */
function containerEnv(container: Obj): { names: string[]; values: Record<string, string> } {
  const names: string[] = [];
  const values: Record<string, string> = {};
  for (const source of list(container.envFrom).map(obj)) {
    const configMap = str(obj(source.configMapRef).name);
    const secret = str(obj(source.secretRef).name);
    const data = configMap ? configMaps.get(configMap) : secret ? secrets.get(secret) : undefined;
    if (!data) throw new Error(`envFrom names ${configMap ?? secret}, which no manifest defines`);
    for (const [key, value] of Object.entries(data)) {
      names.push(key);
      values[key] = String(value);
    }
  }
  for (const variable of list(container.env).map(obj)) {
    const name = String(variable.name);
    names.push(name);
    if (variable.value !== undefined) values[name] = String(variable.value);
    const secretRef = obj(obj(variable.valueFrom).secretKeyRef);
    if (secretRef.name !== undefined) {
      const secret = secrets.get(String(secretRef.name));
      if (!secret || !(String(secretRef.key) in secret)) {
        throw new Error(
          `${name} comes from secret ${secretRef.name}/${secretRef.key}, which no manifest defines`,
        );
      }
    }
  }
  return { names, values };
}

function containerPorts(container: Obj): Map<string, number> {
  return new Map(
    list(container.ports)
      .map(obj)
      .map((p) => [String(p.name), Number(p.containerPort)]),
  );
}

/** `dns:///registry:50051` or `registry:50051` -> host and port. */
function parseTarget(target: string): { host: string; port: number } {
  const match = /^(?:dns:\/\/\/)?([a-z0-9.-]+):(\d+)$/.exec(target);
  if (!match) throw new Error(`cannot read the gRPC target ${target}`);
  return { host: (match[1] as string).split('.')[0] as string, port: Number(match[2]) };
}

describe('deploy/ YAML', () => {
  it.each(filesUnder(deployDir, /\.ya?ml$/).map((f) => relative(root, f)))('%s parses', (file) => {
    expect(readYaml(join(root, file)).length).toBeGreaterThan(0);
  });
});

describe('Kubernetes manifests', () => {
  it('are all listed in the kustomization, which lists nothing else', () => {
    const [kustomization] = readYaml(join(kubernetesDir, 'kustomization.yaml'));
    const listed = list(obj(kustomization).resources).map(String).sort();
    expect(listed).toEqual(kubernetesFiles.map((f) => relative(kubernetesDir, f)).sort());
  });

  it('each object has an apiVersion, a kind and a DNS-1123 name', () => {
    expect(objects.length).toBeGreaterThan(0);
    for (const { file, object } of objects) {
      expect(typeof object.apiVersion, file).toBe('string');
      expect(typeof object.kind, file).toBe('string');
      expect(nameOf(object), file).toMatch(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/);
    }
  });

  it('ship a cluster token that no service would accept, so it cannot be left in place', () => {
    const token = secrets.get('pushd-cluster-token')?.CLUSTER_TOKEN;
    expect(token).toBeDefined();
    expect(schemaOf('registry').shape.CLUSTER_TOKEN?.safeParse(token).success).toBe(false);
  });

  it('run each pushd service exactly once', () => {
    const run = deployments.flatMap(containersOf).map((c) => serviceOf(c.args) ?? serviceOf(c.command));
    expect(run.sort()).toEqual(['dispatch', 'gateway', 'registry', 'stats', 'tag']);
  });

  describe.each(deployments.map((d) => [nameOf(d), d] as const))('Deployment %s', (_name, deployment) => {
    const labels = templateLabels(deployment);

    it('selects its own pods', () => {
      expect(selects(obj(obj(obj(deployment.spec).selector).matchLabels), labels)).toBe(true);
    });

    it.each(containersOf(deployment).map((c) => [String(c.name), c] as const))(
      'container %s',
      (_c, container) => {
        const service = serviceOf(container.args) ?? serviceOf(container.command);
        expect(service, 'args name services/<name>/dist/main.js').toBeDefined();
        const schema = schemaOf(service as string);
        const { names, values } = containerEnv(container);

        // Every variable is one the service reads.
        for (const name of names)
          expect(Object.keys(schema.shape), `${service} reads ${name}`).toContain(name);
        expect(new Set(names).size, 'no variable set twice').toBe(names.length);
        // Without a cluster token a service exits at start: it must come from the Secret.
        expect(names).toContain('CLUSTER_TOKEN');

        // The ports the container declares are the ones the service listens on, and the other way round.
        const ports = containerPorts(container);
        for (const [variable, portName] of Object.entries(PORT_NAMES)) {
          if (!(variable in schema.shape)) continue;
          expect(ports.get(portName), `${portName} port`).toBe(
            Number(effective(service as string, variable, values)),
          );
        }

        // Probes name declared ports.
        for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
          const port = obj(obj(container[probe]).httpGet).port;
          if (port === undefined) continue;
          if (typeof port === 'number') expect([...ports.values()], probe).toContain(port);
          else expect([...ports.keys()], probe).toContain(port);
        }
        expect(obj(obj(container.readinessProbe).httpGet).path).toBe('/readyz');
        expect(obj(obj(container.livenessProbe).httpGet).path).toBe('/healthz');

        // Prometheus scrapes the ops port.
        const annotations = obj(obj(obj(obj(deployment.spec).template).metadata).annotations);
        expect(annotations['prometheus.io/scrape']).toBe('true');
        expect(Number(annotations['prometheus.io/port'])).toBe(ports.get('ops'));

        // Addresses of other services name a Service port that reaches their gRPC port.
        for (const name of names.filter((n) => n.endsWith('_ADDR'))) {
          const { host, port } = parseTarget(values[name] ?? '');
          const target = services.find((s) => nameOf(s) === host);
          expect(target, `${name}: a Service named ${host}`).toBeDefined();
          const servicePort = list(obj(target?.spec).ports)
            .map(obj)
            .find((p) => Number(p.port) === port);
          expect(servicePort, `${name}: Service ${host} has port ${port}`).toBeDefined();
          const backend = deployments.find((d) =>
            selects(obj(obj(target?.spec).selector), templateLabels(d)),
          );
          const backendPorts = containersOf(backend ?? {}).map(containerPorts);
          expect(
            backendPorts.some((p) => p.get('grpc') === port),
            `${name}: ${host} serves gRPC on ${port}`,
          ).toBe(true);
        }
      },
    );
  });

  describe.each(services.map((s) => [nameOf(s), s] as const))('Service %s', (_name, service) => {
    it('selects one Deployment and targets ports its containers declare', () => {
      const spec = obj(service.spec);
      const backends = deployments.filter((d) => selects(obj(spec.selector), templateLabels(d)));
      expect(backends).toHaveLength(1);
      const ports = containersOf(backends[0] as Obj).map(containerPorts);
      for (const port of list(spec.ports).map(obj)) {
        const target = port.targetPort ?? port.port;
        const number =
          typeof target === 'number' ? target : ports.map((p) => p.get(String(target))).find(Boolean);
        expect(number, `targetPort ${String(target)}`).toBeDefined();
        // A headless Service's DNS hands out pod addresses: callers use the port as written, unmapped.
        if (spec.clusterIP === 'None') expect(port.port).toBe(number);
      }
    });
  });

  it('gateways: NODE_ID from the pod name, a grace period that covers the drain, a PDB and an HPA', () => {
    const gateway = deployments.find((d) => containersOf(d).some((c) => serviceOf(c.args) === 'gateway'));
    expect(gateway).toBeDefined();
    const container = containersOf(gateway as Obj)[0] as Obj;
    const nodeId = list(container.env)
      .map(obj)
      .find((v) => v.name === 'NODE_ID');
    expect(obj(obj(nodeId?.valueFrom).fieldRef).fieldPath).toBe('metadata.name');

    // preStop sleep, then the process's own shutdown deadline (stopOnSignals: 25 s), before SIGKILL.
    const preStop = list(obj(obj(obj(container.lifecycle).preStop).exec).command).map(String);
    const sleepSeconds = preStop[0] === 'sleep' ? Number(preStop[1]) : 0;
    expect(Number(podSpec(gateway as Obj).terminationGracePeriodSeconds)).toBeGreaterThan(sleepSeconds + 25);

    const labels = templateLabels(gateway as Obj);
    const pdb = ofKind('PodDisruptionBudget').find((p) =>
      selects(obj(obj(obj(p.spec).selector).matchLabels), labels),
    );
    expect(pdb).toBeDefined();
    const hpa = ofKind('HorizontalPodAutoscaler').find(
      (h) => obj(obj(h.spec).scaleTargetRef).name === nameOf(gateway as Obj),
    );
    expect(hpa).toBeDefined();
    // The autoscaler owns the replica count; a fixed one would be reapplied on every `kubectl apply`.
    expect(obj((gateway as Obj).spec).replicas).toBeUndefined();
  });
});

describe('compose.yaml', () => {
  const [compose] = readYaml(join(deployDir, 'docker', 'compose.yaml'));
  const composeServices = obj(obj(compose).services);
  const pushdServices = Object.entries(composeServices)
    .map(([name, value]) => ({ name, spec: obj(value), service: serviceOf(obj(value).command) }))
    .filter((s): s is { name: string; spec: Obj; service: string } => s.service !== undefined);

  /** environment: as a map or as a list of KEY=VALUE. */
  function environmentOf(spec: Obj): Record<string, string> {
    const environment = spec.environment;
    if (Array.isArray(environment)) {
      return Object.fromEntries(environment.map((line) => String(line).split(/=(.*)/s).slice(0, 2)));
    }
    return Object.fromEntries(Object.entries(obj(environment)).map(([k, v]) => [k, String(v)]));
  }

  it('runs each pushd service once', () => {
    expect(pushdServices.map((s) => s.service).sort()).toEqual([
      'dispatch',
      'gateway',
      'registry',
      'stats',
      'tag',
    ]);
  });

  it.each(pushdServices.map((s) => [s.name, s] as const))(
    '%s sets only variables its service reads',
    (_n, s) => {
      const environment = environmentOf(s.spec);
      const schema = schemaOf(s.service);
      for (const name of Object.keys(environment))
        expect(Object.keys(schema.shape), `${s.service} reads ${name}`).toContain(name);
      expect(Object.keys(environment)).toContain('CLUSTER_TOKEN');

      // Addresses name a compose service and the port it listens on.
      for (const [name, value] of Object.entries(environment).filter(([n]) => n.endsWith('_ADDR'))) {
        const { host, port } = parseTarget(value);
        const target = pushdServices.find((t) => t.name === host);
        expect(target, `${name}: a service named ${host}`).toBeDefined();
        const targetService = target as { spec: Obj; service: string };
        expect(
          Number(effective(targetService.service, 'GRPC_PORT', environmentOf(targetService.spec))),
          name,
        ).toBe(port);
      }

      // Published ports are ports the service listens on.
      const listening = Object.keys(PORT_NAMES)
        .filter((variable) => variable in schema.shape)
        .map((variable) => Number(effective(s.service, variable, environment)));
      for (const published of list(s.spec.ports).map(String)) {
        expect(listening, published).toContain(Number(published.split(':').at(-1)));
      }
    },
  );

  it('builds from the repository root with the Dockerfile here', () => {
    for (const s of pushdServices) {
      const build = obj(s.spec.build);
      const context = resolve(deployDir, 'docker', String(build.context));
      expect(context).toBe(resolve(root));
      expect(existsSync(join(context, String(build.dockerfile)))).toBe(true);
    }
  });
});

describe('Dockerfile', () => {
  const ignored = readFileSync(`${dockerfilePath}.dockerignore`, 'utf8')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'));
  /** A path of the build context that Dockerfile.dockerignore leaves out (the patterns used there). */
  const isIgnored = (path: string) =>
    ignored.some((pattern) => {
      const name = pattern.replace(/^\*\*\//, '');
      return pattern.startsWith('**/')
        ? path.split('/').includes(name)
        : path === name || path.startsWith(`${name}/`);
    });

  it('copies from the build context only paths that exist and are not ignored', () => {
    const copies = dockerfile.filter(
      (i) => (i.keyword === 'COPY' || i.keyword === 'ADD') && !/--from=/.test(i.args),
    );
    expect(copies.length).toBeGreaterThan(0);
    for (const { args } of copies) {
      const sources = args
        .split(/\s+/)
        .filter((part) => !part.startsWith('--'))
        .slice(0, -1);
      for (const source of sources) {
        if (source === '.') continue;
        expect(existsSync(join(root, source)), source).toBe(true);
        expect(isIgnored(source), source).toBe(false);
      }
    }
  });

  it('keeps every workspace package in the build context (the frozen install needs them all)', () => {
    const globs = readFileSync(join(root, 'pnpm-workspace.yaml'), 'utf8').match(/^\s+-\s+(\S+)$/gm) ?? [];
    const members = globs
      .map((line) => line.replace(/^\s+-\s+/, '').replace(/['"]/g, ''))
      .flatMap((glob) =>
        glob.endsWith('/*')
          ? readdirSync(join(root, glob.slice(0, -2)), { withFileTypes: true })
              .filter(
                (e) => e.isDirectory() && existsSync(join(root, glob.slice(0, -2), e.name, 'package.json')),
              )
              .map((e) => `${glob.slice(0, -2)}/${e.name}`)
          : [glob],
      );
    expect(members.length).toBeGreaterThan(0);
    for (const member of members) expect(isIgnored(member), member).toBe(false);
  });

  it('runs a built service by default, with the build script every service uses', () => {
    const cmd = dockerfile.filter((i) => i.keyword === 'CMD' && i.stage === finalStage).at(-1);
    const service = serviceOf(JSON.parse(cmd?.args ?? '[]'));
    expect(service).toBeDefined();
    const built = readdirSync(join(root, 'services')).filter((name) =>
      existsSync(join(root, 'services', name, 'package.json')),
    );
    expect(built).toContain(service);
    for (const name of built) {
      const manifest = JSON.parse(readFileSync(join(root, 'services', name, 'package.json'), 'utf8'));
      expect(manifest.scripts.build, name).toBe('node ../../scripts/build-service.mjs');
      expect(existsSync(join(root, 'services', name, 'src', 'main.ts')), name).toBe(true);
    }
    expect(existsSync(join(root, 'scripts', 'build-service.mjs'))).toBe(true);
  });

  it('exposes the ports the services listen on in the image', () => {
    const exposed = dockerfile
      .filter((i) => i.keyword === 'EXPOSE' && i.stage === finalStage)
      .flatMap((i) => i.args.split(/\s+/).map((p) => Number(p.split('/')[0])));
    for (const service of ['registry', 'tag', 'dispatch', 'stats', 'gateway']) {
      for (const variable of Object.keys(PORT_NAMES).filter((v) => v in schemaOf(service).shape)) {
        expect(exposed, `${service} ${variable}`).toContain(Number(effective(service, variable, {})));
      }
    }
  });

  it('runs as a non-root user and checks /healthz on the ops port', () => {
    const user = dockerfile.filter((i) => i.keyword === 'USER' && i.stage === finalStage).at(-1);
    expect(user?.args.split(':')[0]).not.toMatch(/^(0|root)$/);
    const healthcheck = dockerfile.find((i) => i.keyword === 'HEALTHCHECK' && i.stage === finalStage);
    expect(healthcheck?.args).toMatch(/OPS_PORT.*\/healthz/);
    expect(imageEnv.OPS_PORT).toBeDefined();
  });
});

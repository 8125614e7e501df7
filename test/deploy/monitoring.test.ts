import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { startProcessSystem } from '../support/system.js';

// The monitoring assets of deploy/ checked with the real tools: promtool (Debian's `prometheus` package)
// validates the scrape configuration and the rules, and lints the live /metrics output of every service
// started as its own process; then every metric name the dashboard and the rules use must be one that a
// live service exports, so that a renamed metric cannot leave a silent panel or an alert that never fires.

const root = fileURLToPath(new URL('../..', import.meta.url));
const prometheusDir = join(root, 'deploy', 'prometheus');
const prometheusConfig = join(prometheusDir, 'prometheus.yml');
const ruleFiles = ['recording.yml', 'alerts.yml'].map((name) => join(prometheusDir, name));
const dashboardFile = join(root, 'deploy', 'grafana', 'pushd-dashboard.json');
const rel = (file: string) => relative(root, file);

// ---- promtool -----------------------------------------------------------------------------------------

function promtool(args: string[], input?: string): { status: number; output: string } {
  const result = spawnSync('promtool', args, { input, encoding: 'utf8', timeout: 30_000 });
  if (result.error) throw result.error;
  return { status: result.status ?? -1, output: `${result.stdout}${result.stderr}` };
}

function requirePromtool(): void {
  const found = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
  if (found.error || found.status !== 0) {
    throw new Error(
      'promtool is required by test/deploy/monitoring.test.ts; install it from Debian: ' +
        'apt-get install -y --no-install-recommends prometheus',
    );
  }
}

// ---- PromQL: the metric names an expression reads -----------------------------------------------------

const KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'and',
  'or',
  'unless',
  'offset',
  'bool',
  'inf',
  'nan',
  'atan2',
]);

/** Grafana's variables replaced by values that keep the expression valid PromQL. */
function expandGrafanaVariables(expr: string): string {
  return expr
    .replace(/\$__(rate_interval|interval|range)\b/g, '5m')
    .replace(/\$\{[^}]+\}|\$[A-Za-z_]\w*/g, '.+');
}

interface MetricReferences {
  /** Metric names written out: identifiers followed by a selector, a range, an operator or the end. */
  names: string[];
  /** `__name__` matchers, as anchored regular expressions. */
  namePatterns: string[];
}

function metricReferences(expr: string): MetricReferences {
  const namePatterns: string[] = [];
  let text = expandGrafanaVariables(expr);
  // Selectors: keep their __name__ matchers, drop the label matchers (label names are not metrics).
  text = text.replace(/\{([^}]*)\}/g, (_whole, matchers: string) => {
    for (const [, operator, value = ''] of matchers.matchAll(/__name__\s*(=~|=)\s*"((?:[^"\\]|\\.)*)"/g)) {
      namePatterns.push(operator === '=' ? value.replace(/[.*+?^$()|[\]\\]/g, '\\$&') : value);
    }
    return ' ';
  });
  text = text
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, ' ') // strings (label_replace arguments)
    .replace(/\[[^\]]*\]/g, ' ') // ranges and subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' '); // label lists
  const names: string[] = [];
  for (const m of text.matchAll(/[0-9][0-9.eE+]*[a-zA-Z]*|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, identifier, call] = m;
    if (!identifier || call || KEYWORDS.has(identifier.toLowerCase())) continue;
    names.push(identifier);
  }
  return { names, namePatterns };
}

// ---- what the files use -------------------------------------------------------------------------------

interface Use {
  file: string;
  where: string;
  expr: string;
}

type Obj = Record<string, unknown>;
const isObj = (value: unknown): value is Obj =>
  typeof value === 'object' && value !== null && !Array.isArray(value);
const list = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);

function ruleUses(file: string): { uses: Use[]; records: string[] } {
  const document = parse(readFileSync(file, 'utf8')) as unknown;
  const uses: Use[] = [];
  const records: string[] = [];
  for (const group of list(isObj(document) ? document.groups : undefined).filter(isObj)) {
    for (const rule of list(group.rules).filter(isObj)) {
      const name = String(rule.record ?? rule.alert);
      if (typeof rule.record === 'string') records.push(rule.record);
      uses.push({ file, where: `${group.name} / ${name}`, expr: String(rule.expr) });
    }
  }
  return { uses, records };
}

function dashboardUses(dashboard: Obj): Use[] {
  const uses: Use[] = [];
  const walk = (panels: unknown[]) => {
    for (const panel of panels.filter(isObj)) {
      for (const target of list(panel.targets).filter(isObj)) {
        if (typeof target.expr === 'string') {
          uses.push({
            file: dashboardFile,
            where: `panel "${panel.title}" ${target.refId}`,
            expr: target.expr,
          });
        }
      }
      walk(list(panel.panels));
    }
  };
  walk(list(dashboard.panels));
  const templating = isObj(dashboard.templating) ? dashboard.templating : {};
  for (const variable of list(templating.list).filter(isObj)) {
    if (variable.type !== 'query') continue;
    const query = isObj(variable.query) ? String(variable.query.query) : String(variable.query);
    // label_values(<series selector>, <label>): the selector is PromQL, the label is not a metric.
    const selector = /^label_values\((.+),\s*\w+\s*\)$/.exec(query.trim())?.[1] ?? query;
    if (/^label_values\(\s*\w+\s*\)$/.test(query.trim())) continue;
    uses.push({ file: dashboardFile, where: `variable $${variable.name}`, expr: selector });
  }
  return uses;
}

// ---- the live services --------------------------------------------------------------------------------

interface Exposition {
  port: number;
  text: string;
}

/** Metric families (from `# TYPE`) and the sample names each family produces. */
function exportedNames(expositions: Exposition[]): { families: Map<string, string>; samples: Set<string> } {
  const families = new Map<string, string>();
  const samples = new Set<string>();
  for (const { text } of expositions) {
    for (const line of text.split('\n')) {
      const [, family, type] = /^# TYPE (\S+) (\S+)/.exec(line) ?? [];
      if (family && type) families.set(family, type);
      const [, sample] = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line) ?? [];
      if (sample) samples.add(sample);
    }
  }
  return { families, samples };
}

describe('monitoring assets (deploy/prometheus, deploy/grafana)', () => {
  beforeAll(() => requirePromtool());

  it('prometheus.yml passes promtool check config, with its rule files', () => {
    const direct = promtool(['check', 'config', prometheusConfig]);
    if (direct.status === 0) return;
    // Debian builds promtool without Kubernetes service discovery (the client-go dependency is not
    // packaged), so it refuses kubernetes_sd_configs. Only then: check a copy whose Kubernetes discovery
    // is replaced by a static target; everything else (relabelling, rule_files, the rules) is checked as
    // written. The discovery block itself is checked by hand below.
    expect(direct.output, `${rel(prometheusConfig)}:\n${direct.output}`).toMatch(
      /field kubernetes_sd_configs not found/,
    );
    const config = parse(readFileSync(prometheusConfig, 'utf8')) as Obj;
    const jobs = list(config.scrape_configs).filter(isObj);
    const kubernetesJobs = jobs.filter((job) => Array.isArray(job.kubernetes_sd_configs));
    expect(kubernetesJobs.length, 'a job with kubernetes_sd_configs').toBeGreaterThan(0);
    for (const job of kubernetesJobs) {
      const sd = list(job.kubernetes_sd_configs).filter(isObj);
      expect(sd.map((c) => c.role)).toEqual(['pod']);
      const relabels = JSON.stringify(job.relabel_configs);
      expect(relabels).toContain('__meta_kubernetes_pod_annotation_prometheus_io_scrape');
      expect(relabels).toContain('__meta_kubernetes_pod_annotation_prometheus_io_port');
      delete job.kubernetes_sd_configs;
      job.static_configs = [{ targets: ['pod.invalid:9090'] }];
    }
    const dir = mkdtempSync(join(tmpdir(), 'pushd-prometheus-'));
    try {
      for (const file of ruleFiles) copyFileSync(file, join(dir, relative(prometheusDir, file)));
      writeFileSync(join(dir, 'prometheus.yml'), stringify(config));
      const checked = promtool(['check', 'config', join(dir, 'prometheus.yml')]);
      expect(
        checked.status,
        `${rel(prometheusConfig)} (Kubernetes discovery aside):\n${checked.output}`,
      ).toBe(0);
      expect(checked.output).toMatch(/SUCCESS: 2 rule files found/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each(ruleFiles.map(rel))('%s passes promtool check rules', (file) => {
    const checked = promtool(['check', 'rules', join(root, file)]);
    expect(checked.status, `${file}:\n${checked.output}`).toBe(0);
  });

  it('every alert has a severity, a summary and a description', () => {
    const { uses } = ruleUses(join(prometheusDir, 'alerts.yml'));
    const document = parse(readFileSync(join(prometheusDir, 'alerts.yml'), 'utf8')) as Obj;
    const alerts = list(document.groups)
      .filter(isObj)
      .flatMap((group) => list(group.rules).filter(isObj));
    expect(alerts.length).toBe(uses.length);
    for (const alert of alerts) {
      const labels = isObj(alert.labels) ? alert.labels : {};
      const annotations = isObj(alert.annotations) ? alert.annotations : {};
      expect(['critical', 'warning', 'info'], `${alert.alert}: severity`).toContain(labels.severity);
      expect(annotations.summary, `${alert.alert}: summary`).toBeTruthy();
      expect(String(annotations.description), `${alert.alert}: description with a runbook hint`).toMatch(
        /Runbook:/,
      );
    }
  });

  it('the dashboard is provisioning-ready and its queries are valid PromQL', () => {
    const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8')) as Obj;
    expect(dashboard.id ?? null, 'no numeric id: provisioning assigns it').toBeNull();
    expect(dashboard.uid).toBe('pushd-overview');
    expect(dashboard.schemaVersion).toBe(39);
    const uses = dashboardUses(dashboard);
    expect(uses.length).toBeGreaterThan(20);
    // Every query through the data source variable, which defaults to the provisioned uid.
    const sources = JSON.stringify(dashboard.panels).match(/"uid":"[^"]*"/g) ?? [];
    expect(new Set(sources)).toEqual(new Set([`"uid":"\${DS_PROMETHEUS}"`]));
    // promtool parses PromQL only inside rules: check each query as a recording rule.
    const rules = {
      groups: [
        {
          name: 'dashboard',
          rules: uses.map((use, i) => ({
            record: `dashboard:query_${i}`,
            expr: expandGrafanaVariables(use.expr),
          })),
        },
      ],
    };
    const dir = mkdtempSync(join(tmpdir(), 'pushd-dashboard-'));
    try {
      writeFileSync(join(dir, 'dashboard.yml'), stringify(rules));
      const checked = promtool(['check', 'rules', join(dir, 'dashboard.yml')]);
      const named = uses.map((use, i) => `dashboard:query_${i} = ${use.where}`).join('\n');
      expect(checked.status, `${rel(dashboardFile)}:\n${checked.output}\n${named}`).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('against every service running as its own process', () => {
    let expositions: Exposition[] = [];
    let stop: (() => Promise<void>) | undefined;

    beforeAll(async () => {
      const system = await startProcessSystem();
      stop = () => system.stop();
      expositions = await Promise.all(
        system.opsPorts.map(async (port) => {
          const response = await fetch(`http://127.0.0.1:${port}/metrics`);
          expect(response.status).toBe(200);
          return { port, text: await response.text() };
        }),
      );
    }, 90_000);
    afterAll(async () => {
      await stop?.();
    });

    it('every /metrics passes promtool check metrics', () => {
      expect(expositions.length).toBe(5);
      for (const { port, text } of expositions) {
        const service = /^# TYPE ([a-z]+)_process_cpu_seconds_total/m.exec(text)?.[1] ?? `ops port ${port}`;
        const checked = promtool(['check', 'metrics'], text);
        expect(checked.status, `${service} /metrics:\n${checked.output}`).toBe(0);
      }
    });

    it('the dashboard and the rules only use metrics the services export', () => {
      const { families, samples } = exportedNames(expositions);
      const recording = ruleFiles.map(ruleUses);
      const records = new Set(recording.flatMap((r) => r.records));
      const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8')) as Obj;
      const uses = [...recording.flatMap((r) => r.uses), ...dashboardUses(dashboard)];
      const exported = (name: string): boolean => {
        if (name === 'up' || records.has(name) || families.has(name)) return true;
        const base = /^(.+)_(bucket|sum|count)$/.exec(name)?.[1];
        return base !== undefined && ['histogram', 'summary'].includes(families.get(base) ?? '');
      };
      // A labelled family has no sample before its first observation: match __name__ against the
      // families' sample names too.
      const candidates = new Set(samples);
      for (const [family, type] of families) {
        candidates.add(family);
        if (type === 'histogram' || type === 'summary') {
          for (const suffix of ['_bucket', '_sum', '_count']) candidates.add(`${family}${suffix}`);
        }
      }
      const missing: string[] = [];
      let checked = 0;
      for (const use of uses) {
        const { names, namePatterns } = metricReferences(use.expr);
        for (const name of names) {
          checked += 1;
          if (!exported(name))
            missing.push(`${rel(use.file)} (${use.where}): ${name} is exported by no service`);
        }
        for (const pattern of namePatterns) {
          checked += 1;
          const regex = new RegExp(`^(?:${pattern})$`);
          if (![...candidates].some((candidate) => regex.test(candidate))) {
            missing.push(
              `${rel(use.file)} (${use.where}): __name__=~"${pattern}" matches no exported metric`,
            );
          }
        }
      }
      expect(missing, missing.join('\n')).toEqual([]);
      expect(checked).toBeGreaterThan(50);
    });
  });
});

describe('metricReferences', () => {
  it('finds metric names and __name__ matchers, not functions, labels or keywords', () => {
    expect(
      metricReferences(
        'histogram_quantile(0.99, sum by (le, job) (rate(gateway_x_bucket{instance=~"$instance"}[$__rate_interval]))) > 1 and on (job) up == 0 or vector(0) * rec:a:b offset 1h',
      ),
    ).toEqual({ names: ['gateway_x_bucket', 'up', 'rec:a:b'], namePatterns: [] });
    expect(metricReferences('sum({__name__=~"(a|b)_nats_connected", job="x"}) / c_total')).toEqual({
      names: ['c_total'],
      namePatterns: ['(a|b)_nats_connected'],
    });
  });
});

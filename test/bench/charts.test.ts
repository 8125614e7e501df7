// The benchmark charts (test/bench/charts.ts): the committed SVGs are what the committed results render,
// each is well-formed standalone SVG, and an older result missing a figure fails by name instead of
// drawing NaN. No benchmark runs here: only the JSON files in docs/bench-results are read.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CHARTS_DIR, findDrift, formatNumber, RESULTS_DIR, renderCharts, writeCharts } from './charts.js';
import { ROOT } from './children.js';

const BENCHMARKS = ['connections', 'fanout', 'peers', 'reconnect', 'tags', 'targeted'];

/**
 * What keeps an SVG from being well-formed XML, as far as hand-built SVG goes: an XML declaration, one root
 * element, balanced tags with quoted and unrepeated attributes, text with only the predefined entities or
 * character references. (No XML parser is among the repository's dependencies, and one is not worth adding
 * for this.)
 */
function xmlProblems(xml: string): string[] {
  const problems: string[] = [];
  const open: string[] = [];
  let roots = 0;
  const badEntity = /&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/;
  const token =
    /<\?xml[^?]*\?>|<\/([A-Za-z][\w:.-]*)\s*>|<([A-Za-z][\w:.-]*)((?:\s+[A-Za-z_:][\w:.-]*\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>|([^<]+)|(<)/gy;
  for (const match of xml.matchAll(token)) {
    const [whole, closing, opening, attributes = '', selfClosing, content, strayBracket] = match;
    if (strayBracket !== undefined) {
      problems.push(
        `unparsable markup at offset ${match.index}: ${xml.slice(match.index, match.index + 40)}`,
      );
      break;
    }
    if (content !== undefined) {
      if (badEntity.test(content)) problems.push(`unescaped & in text "${content.trim()}"`);
      if (open.length === 0 && content.trim() !== '')
        problems.push(`text outside the root: "${content.trim()}"`);
    } else if (closing !== undefined) {
      const expected = open.pop();
      if (expected !== closing) problems.push(`</${closing}> closes <${expected ?? 'nothing'}>`);
    } else if (opening !== undefined) {
      if (open.length === 0) roots += 1;
      const names = [...attributes.matchAll(/([A-Za-z_:][\w:.-]*)\s*=/g)].map((name) => name[1]);
      if (new Set(names).size !== names.length) problems.push(`<${opening}> repeats an attribute`);
      if (badEntity.test(attributes)) problems.push(`unescaped & in the attributes of <${opening}>`);
      if (selfClosing !== '/') open.push(opening);
    } else if (!whole.startsWith('<?xml') || match.index !== 0) {
      problems.push('the XML declaration is not at the start');
    }
  }
  if (open.length > 0) problems.push(`unclosed: ${open.join(' > ')}`);
  if (roots !== 1) problems.push(`${roots} root elements`);
  return problems;
}

const temporaryDirs: string[] = [];

/** A copy of the committed results in a temporary directory, to break without touching the real ones. */
function copyOfResults(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pushd-charts-'));
  temporaryDirs.push(dir);
  for (const file of readdirSync(RESULTS_DIR).filter((name) => name.endsWith('.json'))) {
    cpSync(join(RESULTS_DIR, file), join(dir, file));
  }
  return dir;
}

/** Rewrites one result file of a copy with a change to its figures. */
function editResult(dir: string, name: string, edit: (figures: Record<string, unknown>) => void): void {
  const path = join(dir, `${name}.json`);
  const figures = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  edit(figures);
  writeFileSync(path, JSON.stringify(figures));
}

afterEach(() => {
  for (const dir of temporaryDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('benchmark charts', () => {
  it('the committed charts are what the committed results render (pnpm bench:charts --check)', () => {
    expect(findDrift(RESULTS_DIR, CHARTS_DIR), 'run npx --yes pnpm@12.4.2 bench:charts').toEqual([]);
    // The command line too: its exit code is what a drift check in CI would look at.
    const check = spawnSync(process.execPath, ['--import', 'tsx', 'test/bench/charts.ts', '--check'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    expect(check.status, check.stderr).toBe(0);
  });

  it('the check lists a chart that differs, is missing or has no result any more', () => {
    const results = copyOfResults();
    const charts = join(results, 'charts');
    writeCharts(results, charts);
    expect(findDrift(results, charts)).toEqual([]);

    editResult(results, 'peers', (figures) => {
      figures.ours_msgs_per_s = 12_345;
    });
    rmSync(join(charts, 'tags.svg'));
    writeFileSync(join(charts, 'gone.svg'), '<svg xmlns="http://www.w3.org/2000/svg"/>\n');
    expect(findDrift(results, charts)).toEqual([
      'gone.svg (no result file renders it)',
      'peers.svg (differs)',
      'tags.svg (missing)',
    ]);
  });

  it('renders one chart per benchmark, each well-formed standalone SVG', () => {
    // The checker itself catches what it is there for.
    expect(xmlProblems('<svg><g></svg>')).not.toEqual([]);
    expect(xmlProblems('<svg><text>a & b</text></svg>')).not.toEqual([]);
    expect(xmlProblems('<svg x="1" x="2"/>')).not.toEqual([]);

    const rendered = renderCharts(RESULTS_DIR);
    expect([...rendered.keys()].sort()).toEqual(BENCHMARKS.map((name) => `${name}.svg`));
    for (const [file, svg] of rendered) {
      expect(xmlProblems(svg), file).toEqual([]);
      expect(svg, file).toMatch(
        /^<\?xml version="1.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www.w3.org\/2000\/svg" /,
      );
      expect(svg, file).toContain('viewBox="0 0 640 360"');
      // Standalone: nothing fetched or run when the image is shown.
      expect(svg, file).not.toMatch(/<script|<style|@import|href=|url\(/);
      expect(svg, file).not.toMatch(/NaN|undefined|Infinity/);
    }
    // Figures of the committed results, as the docs write them.
    const result = (name: string) =>
      JSON.parse(readFileSync(join(RESULTS_DIR, `${name}.json`), 'utf8')) as Record<string, number>;
    expect(rendered.get('peers.svg')).toContain(`>${formatNumber(result('peers').ours_msgs_per_s ?? -1)}<`);
    expect(rendered.get('fanout.svg')).toContain(
      `>${formatNumber(Math.round(result('fanout').p99_ms ?? -1))}<`,
    );
  });

  it('formats numbers with thousands separators', () => {
    expect(formatNumber(10_579)).toBe('10,579');
    expect(formatNumber(1_000_000)).toBe('1,000,000');
    expect(formatNumber(923)).toBe('923');
    expect(formatNumber(0.59, 2)).toBe('0.59');
    expect(formatNumber(12_329.85, 1)).toBe('12,329.9');
  });

  it('an older result without a figure fails naming the file and the key', () => {
    const results = copyOfResults();
    editResult(results, 'fanout', (figures) => {
      delete figures.spread_p99_ms;
    });
    expect(() => renderCharts(results)).toThrow(/fanout\.json: missing key "spread_p99_ms"/);

    // A figure the harness could not measure: NaN, which JSON writes as null.
    editResult(results, 'fanout', (figures) => {
      figures.spread_p99_ms = null;
    });
    expect(() => renderCharts(results)).toThrow(/fanout\.json: key "spread_p99_ms" is null, not a number/);
  });
});

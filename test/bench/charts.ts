// `pnpm bench:charts` (`tsx test/bench/charts.ts`): one SVG bar chart per benchmark result,
// docs/bench-results/<name>.json -> docs/bench-results/charts/<name>.svg, embedded in docs/benchmarks.md.
// `--check` renders them in memory instead and exits 1 listing every chart that differs from the committed
// file, so that the charts cannot drift from the results (test/bench/charts.test.ts runs it).
//
// The SVG is built by hand so that the generator needs no dependency and its output depends on the JSON
// alone (no date, no font to load, no randomness, numbers formatted without the locale): the same results
// give the same bytes, which is what makes the check possible.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const RESULTS_DIR = join(ROOT, 'docs/bench-results');
export const CHARTS_DIR = join(RESULTS_DIR, 'charts');

/** The issue's targets, on the machine of docs/benchmarks.md. */
const TARGETS = {
  /** connections: pushd's RSS per connection at most 1.3 times the bare ws server's. */
  connectionsRatio: 1.3,
  /** fanout, 18,000 devices on one gateway: at least 0.8 of the bare ws server's msgs/s... */
  fanoutRatio: 0.8,
  /** ...with p99 latency at most 500 ms. */
  fanoutP99Ms: 500,
  /** targeted: sustained pushes/s. */
  targetedPushesPerS: 10_000,
  /** reconnect: at least half the bare ws server's handshakes/s. */
  reconnectRatio: 0.5,
  /** tags: median dry run and median accept of a tag push. */
  dryRunMs: 100,
  acceptMs: 50,
} as const;

// ---------------------------------------------------------------------------------------------------------
// Reading the results

/** One result file's figures; every read names the file and the key when the figure is not there. */
class Figures {
  constructor(
    readonly file: string,
    private readonly values: Record<string, unknown>,
  ) {}

  number(key: string): number {
    const value = this.present(key);
    // report.ts writes a figure it could not measure as NaN, which JSON turns into null.
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw new Error(`${this.file}: key "${key}" is ${JSON.stringify(value)}, not a number`);
    }
    return value;
  }

  string(key: string): string {
    const value = this.present(key);
    if (typeof value !== 'string') {
      throw new Error(`${this.file}: key "${key}" is ${JSON.stringify(value)}, not a string`);
    }
    return value;
  }

  private present(key: string): unknown {
    const value = this.values[key];
    if (value === undefined) {
      throw new Error(
        `${this.file}: missing key "${key}" (a result from an older harness? re-run its benchmark)`,
      );
    }
    return value;
  }
}

function readFigures(path: string): Figures {
  const file = displayPath(path);
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new Error(`${file}: not valid JSON (${error instanceof Error ? error.message : String(error)})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Error(`${file}: expected one JSON object of figures`);
  }
  return new Figures(file, parsed as Record<string, unknown>);
}

/** Paths inside the repository as the docs write them; others (a test's temporary directory) in full. */
function displayPath(path: string): string {
  const inside = relative(ROOT, path);
  return inside.startsWith('..') || isAbsolute(inside) ? path : inside;
}

// ---------------------------------------------------------------------------------------------------------
// Number formats: thousands separators as docs/benchmarks.md writes them (10,579), without the locale.

export function formatNumber(value: number, decimals = 0): string {
  const [whole = '', fraction] = Math.abs(value).toFixed(decimals).split('.');
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${value < 0 ? '-' : ''}${grouped}${fraction === undefined ? '' : `.${fraction}`}`;
}

const formatInteger = (value: number): string => formatNumber(value);

/** Milliseconds with the digits that matter: 12,330, 923, 54.3, 0.59. */
function formatMs(value: number): string {
  return formatNumber(value, value >= 100 ? 0 : value >= 10 ? 1 : 2);
}

const formatRatio = (value: number): string => value.toFixed(2);

// ---------------------------------------------------------------------------------------------------------
// What a chart shows

interface Series {
  name: string;
  color: string;
}

interface Bar {
  series: Series;
  value: number;
}

/** Bars side by side above one category label. */
interface Group {
  label: string;
  /** A second, smaller line under the label: the configuration, or the ratio the target is about. */
  note?: string;
  bars: Bar[];
  /** The issue's target for this group, drawn as a dashed line across it. */
  target?: number;
}

interface Panel {
  /** The unit of the vertical axis; ", log scale" is added for a log scale. */
  yTitle: string;
  xTitle: string;
  scale: 'linear' | 'log';
  /** Its share of the chart's width. */
  share: number;
  format: (value: number) => string;
  groups: Group[];
}

interface Chart {
  title: string;
  subtitle: string;
  series: Series[];
  /** The legend entry of the dashed target lines. */
  targetCaption: string;
  panels: Panel[];
}

const PUSHD: Series = { name: 'pushd', color: '#0969da' };
const BARE_WS: Series = { name: 'bare ws (reference)', color: '#8c959f' };
const SOCKET_IO: Series = { name: 'socket.io', color: '#d4760b' };
const MOSQUITTO: Series = { name: 'Mosquitto (QoS 1)', color: '#1a7f37' };

function connectionsChart(f: Figures): Chart {
  const refRss = f.number('ref_bytes_per_conn');
  return {
    title: 'connections: memory per idle connection (bytes)',
    subtitle: `${formatInteger(f.number('devices'))} idle devices on one gateway and on a bare ws server, after garbage collection`,
    series: [PUSHD, BARE_WS],
    targetCaption: `target: pushd RSS ≤ ${TARGETS.connectionsRatio} × bare ws`,
    panels: [
      {
        yTitle: 'bytes per connection',
        xTitle: 'memory of the server process · lower is better',
        scale: 'linear',
        share: 1,
        format: formatInteger,
        groups: [
          {
            label: 'RSS',
            note: `ratio ${formatRatio(f.number('ratio'))}`,
            bars: [
              { series: PUSHD, value: f.number('bytes_per_conn') },
              { series: BARE_WS, value: refRss },
            ],
            target: TARGETS.connectionsRatio * refRss,
          },
          {
            label: 'heap used',
            note: `ratio ${formatRatio(f.number('heap_ratio'))} (no target)`,
            bars: [
              { series: PUSHD, value: f.number('heap_bytes_per_conn') },
              { series: BARE_WS, value: f.number('ref_heap_bytes_per_conn') },
            ],
          },
        ],
      },
    ],
  };
}

function fanoutChart(f: Figures): Chart {
  const oneGateway = `${formatInteger(f.number('devices'))} / ${formatInteger(f.number('gateways'))}`;
  const spread = `${formatInteger(f.number('spread_devices'))} / ${formatInteger(f.number('spread_gateways'))}`;
  const refMsgsPerS = f.number('ref_msgs_per_s');
  return {
    title: 'fanout: broadcast throughput (msgs/s) and latency (ms)',
    subtitle: `a ${formatInteger(f.number('notification_bytes'))}-byte notification to every device, one broadcast in flight, bare ws in the same run`,
    series: [PUSHD, BARE_WS],
    targetCaption: `targets, one gateway: ≥ ${TARGETS.fanoutRatio} × bare ws msgs/s; p99 ≤ ${formatInteger(TARGETS.fanoutP99Ms)} ms`,
    panels: [
      {
        yTitle: 'msgs/s',
        xTitle: 'devices / gateways',
        scale: 'linear',
        share: 0.42,
        format: formatInteger,
        groups: [
          {
            label: oneGateway,
            note: `ratio ${formatRatio(f.number('ratio'))}`,
            bars: [
              { series: PUSHD, value: f.number('msgs_per_s') },
              { series: BARE_WS, value: refMsgsPerS },
            ],
            target: TARGETS.fanoutRatio * refMsgsPerS,
          },
          {
            label: spread,
            note: `ratio ${formatRatio(f.number('spread_ratio'))}`,
            bars: [
              { series: PUSHD, value: f.number('spread_msgs_per_s') },
              { series: BARE_WS, value: f.number('spread_ref_msgs_per_s') },
            ],
          },
        ],
      },
      {
        yTitle: 'ms',
        xTitle: 'percentile · devices / gateways',
        scale: 'log',
        share: 0.58,
        format: formatMs,
        groups: [
          {
            label: 'p50',
            note: oneGateway,
            bars: [
              { series: PUSHD, value: f.number('p50_ms') },
              { series: BARE_WS, value: f.number('ref_p50_ms') },
            ],
          },
          {
            label: 'p99',
            note: oneGateway,
            bars: [
              { series: PUSHD, value: f.number('p99_ms') },
              { series: BARE_WS, value: f.number('ref_p99_ms') },
            ],
            target: TARGETS.fanoutP99Ms,
          },
          { label: 'p50', note: spread, bars: [{ series: PUSHD, value: f.number('spread_p50_ms') }] },
          { label: 'p99', note: spread, bars: [{ series: PUSHD, value: f.number('spread_p99_ms') }] },
        ],
      },
    ],
  };
}

function peersChart(f: Figures): Chart {
  const socketIoMsgsPerS = f.number('socketio_msgs_per_s');
  // The prefix of each peer's figures in peers.json.
  const peers = [
    { series: PUSHD, prefix: 'ours' },
    { series: SOCKET_IO, prefix: 'socketio' },
    { series: MOSQUITTO, prefix: 'mosquitto' },
  ];
  return {
    title: 'peers: pushd, socket.io and Mosquitto, msgs/s and latency (ms)',
    subtitle: `${formatInteger(f.number('devices'))} subscribers, ${formatInteger(f.number('broadcasts'))} broadcasts of a ${formatInteger(f.number('notification_bytes'))}-byte notification, one in flight`,
    series: [PUSHD, SOCKET_IO, MOSQUITTO],
    targetCaption: 'target: pushd ahead of socket.io',
    panels: [
      {
        yTitle: 'msgs/s',
        xTitle: 'peer and version',
        scale: 'linear',
        share: 0.6,
        format: formatInteger,
        groups: [
          {
            label: 'pushd',
            note: `${formatRatio(f.number('ours_vs_socketio'))} × socket.io`,
            bars: [{ series: PUSHD, value: f.number('ours_msgs_per_s') }],
            target: socketIoMsgsPerS,
          },
          {
            label: 'socket.io',
            note: `${f.string('socketio_version')}, WebSocket`,
            bars: [{ series: SOCKET_IO, value: socketIoMsgsPerS }],
          },
          {
            label: 'Mosquitto',
            note: `${f.string('mosquitto_version')}, MQTT`,
            bars: [{ series: MOSQUITTO, value: f.number('mosquitto_msgs_per_s') }],
          },
        ],
      },
      {
        yTitle: 'ms',
        xTitle: 'send to receipt',
        scale: 'log',
        share: 0.4,
        format: formatMs,
        groups: ['p50', 'p99'].map((percentile) => ({
          label: percentile,
          bars: peers.map((peer) => ({
            series: peer.series,
            value: f.number(`${peer.prefix}_${percentile}_ms`),
          })),
        })),
      },
    ],
  };
}

function reconnectChart(f: Figures): Chart {
  const refHandshakesPerS = f.number('ref_handshakes_per_s');
  return {
    title: 'reconnect: session handshakes per second (handshakes/s)',
    subtitle: `${formatInteger(f.number('devices'))} devices over ${formatInteger(f.number('gateways'))} gateways, all connecting at once · higher is better`,
    series: [PUSHD, BARE_WS],
    targetCaption: `target: ≥ ${TARGETS.reconnectRatio} × bare ws`,
    panels: [
      {
        yTitle: 'handshakes/s',
        xTitle: 'phase',
        scale: 'linear',
        share: 1,
        format: formatInteger,
        groups: [
          {
            label: 'reconnect after a drop',
            note: `ratio ${formatRatio(f.number('ratio'))}, one offline message each`,
            bars: [
              { series: PUSHD, value: f.number('handshakes_per_s') },
              { series: BARE_WS, value: refHandshakesPerS },
            ],
            target: TARGETS.reconnectRatio * refHandshakesPerS,
          },
          {
            label: 'first connect',
            note: 'pushd only',
            bars: [{ series: PUSHD, value: f.number('first_connect_handshakes_per_s') }],
          },
        ],
      },
    ],
  };
}

function targetedChart(f: Figures): Chart {
  const sustained = f.number('max_pushes_per_s');
  return {
    title: 'targeted: single-device pushes per second (pushes/s)',
    subtitle: `${formatInteger(f.number('devices'))} online devices on one gateway, ${formatInteger(f.number('pushers'))} pusher processes, one token per push`,
    series: [PUSHD],
    targetCaption: `target: ≥ ${formatInteger(TARGETS.targetedPushesPerS)} pushes/s sustained`,
    panels: [
      {
        yTitle: 'pushes/s',
        xTitle: 'load',
        scale: 'linear',
        share: 1,
        format: formatInteger,
        groups: [
          {
            label: 'sustained: p99 < 100 ms, none lost',
            // 0 means that the first, slowest step already failed: say at which rate.
            note:
              sustained === 0
                ? `no step held; the first, ${formatInteger(f.number('first_failed_rate'))}/s, failed`
                : `p99 ${formatMs(f.number('p99_ms'))} ms`,
            bars: [{ series: PUSHD, value: sustained }],
            target: TARGETS.targetedPushesPerS,
          },
          {
            label: 'closed loop: the ceiling',
            note: `p99 ${formatMs(f.number('closed_loop_p99_ms'))} ms`,
            bars: [{ series: PUSHD, value: f.number('closed_loop_pushes_per_s') }],
            target: TARGETS.targetedPushesPerS,
          },
        ],
      },
    ],
  };
}

function tagsChart(f: Figures): Chart {
  const median = (key: string): Bar[] => [{ series: PUSHD, value: f.number(key) }];
  const dryRun = (note: string, key: string): Group => ({
    label: 'dry run',
    note,
    bars: median(key),
    target: TARGETS.dryRunMs,
  });
  const accept = (note: string, key: string): Group => ({
    label: 'accept',
    note,
    bars: median(key),
    target: TARGETS.acceptMs,
  });
  return {
    title: 'tags: audience dry run and push accept, median (ms)',
    subtitle: `${formatInteger(f.number('devices'))} devices in one redis-server, ${formatInteger(f.number('runs'))} runs each, services in-process (no gRPC hop)`,
    series: [{ ...PUSHD, name: 'pushd, p50' }],
    targetCaption: `targets: dry run ≤ ${TARGETS.dryRunMs} ms, accept ≤ ${TARGETS.acceptMs} ms`,
    panels: [
      {
        yTitle: 'ms',
        xTitle: 'call, and its expression or audience',
        scale: 'log',
        share: 1,
        format: formatMs,
        groups: [
          dryRun('3 terms', 'dry_run_p50_ms'),
          dryRun('1 term', 'dry_run_1term_p50_ms'),
          dryRun('TagService', 'dry_run_service_p50_ms'),
          accept('1 token', 'accept_token_p50_ms'),
          accept('1 % by tag', 'accept_1pct_p50_ms'),
          accept('10 % by tag', 'accept_10pct_p50_ms'),
          accept('50 % by tag', 'accept_50pct_p50_ms'),
        ],
      },
    ],
  };
}

/** The chart of each benchmark, by the name of its result file. */
const CHARTS: Record<string, (figures: Figures) => Chart> = {
  connections: connectionsChart,
  fanout: fanoutChart,
  peers: peersChart,
  reconnect: reconnectChart,
  tags: tagsChart,
  targeted: targetedChart,
};

// ---------------------------------------------------------------------------------------------------------
// Drawing

const WIDTH = 640;
const HEIGHT = 360;
const MARGIN = 16;
const PLOT_TOP = 78;
const PLOT_BOTTOM = 290;
/** Room left of each plot for the tick labels and the rotated axis title. */
const PLOT_LEFT = 72;
const PLOT_RIGHT = 12;
const TEXT_COLOR = '#1f2328';
const MUTED_COLOR = '#59636e';
const GRID_COLOR = '#d8dee4';
const AXIS_COLOR = '#59636e';
const TARGET_COLOR = '#cf222e';

function escapeXml(text: string): string {
  return text
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&apos;');
}

/** Coordinates to 0.1 px: short, and the same on every machine. */
function px(value: number): string {
  return String(Math.round(value * 10) / 10);
}

/**
 * A generous estimate of a text's width in a sans-serif font. The generator cannot measure text, so it
 * refuses labels that would not fit rather than draw them over each other.
 */
function textWidth(text: string, fontSize: number): number {
  return text.length * fontSize * 0.58;
}

function assertFits(text: string, fontSize: number, available: number, chart: Chart): void {
  if (textWidth(text, fontSize) > available) {
    throw new Error(
      `chart "${chart.title}": "${text}" is too wide for its ${Math.round(available)} px; shorten it`,
    );
  }
}

interface TextOptions {
  size: number;
  color?: string;
  anchor?: 'start' | 'middle' | 'end';
  bold?: boolean;
  /** Degrees, about (x, y): -90 for a vertical axis title. */
  rotate?: number;
}

function text(x: number, y: number, content: string, options: TextOptions): string {
  const attributes = [
    options.rotate === undefined
      ? `x="${px(x)}" y="${px(y)}"`
      : `transform="translate(${px(x)} ${px(y)}) rotate(${options.rotate})"`,
    `font-size="${options.size}"`,
    `fill="${options.color ?? TEXT_COLOR}"`,
  ];
  if (options.anchor !== undefined && options.anchor !== 'start') {
    attributes.push(`text-anchor="${options.anchor}"`);
  }
  if (options.bold === true) attributes.push('font-weight="bold"');
  return `<text ${attributes.join(' ')}>${escapeXml(content)}</text>`;
}

/** Where values go on a panel's vertical axis, and which ticks it shows. */
interface Axis {
  ticks: number[];
  y(value: number): number;
  tickLabel(value: number): string;
}

function linearAxis(values: number[]): Axis {
  // Room above the tallest bar for its value label; about five ticks at 1, 2 or 5 times a power of ten.
  const top = Math.max(...values) * 1.08 || 1;
  const roughStep = top / 5;
  const magnitude = 10 ** Math.floor(Math.log10(roughStep));
  const step = [1, 2, 5, 10].map((multiple) => multiple * magnitude).find((s) => s >= roughStep)!;
  const count = Math.ceil(top / step);
  const decimals = step >= 1 ? 0 : Math.ceil(-Math.log10(step));
  const ticks = Array.from({ length: count + 1 }, (_, index) => Number((index * step).toFixed(decimals)));
  const max = count * step;
  return {
    ticks,
    y: (value) => PLOT_BOTTOM - (value / max) * (PLOT_BOTTOM - PLOT_TOP),
    tickLabel: (value) => formatNumber(value, decimals),
  };
}

function logAxis(values: number[], chart: Chart): Axis {
  if (values.some((value) => value <= 0)) {
    throw new Error(`chart "${chart.title}": a value of 0 or less cannot be drawn on a log scale`);
  }
  // Whole decades, with room (a factor of two) above the tallest bar for its value label.
  const low = Math.floor(Math.log10(Math.min(...values)));
  const high = Math.ceil(Math.log10(Math.max(...values) * 2));
  const ticks = Array.from({ length: high - low + 1 }, (_, index) => 10 ** (low + index));
  return {
    ticks,
    y: (value) => PLOT_BOTTOM - ((Math.log10(value) - low) / (high - low)) * (PLOT_BOTTOM - PLOT_TOP),
    tickLabel: (value) => {
      const exponent = Math.round(Math.log10(value));
      return exponent < 0 ? value.toFixed(-exponent) : formatNumber(value);
    },
  };
}

function drawLegend(chart: Chart): string[] {
  const parts: string[] = [];
  const baseline = 62;
  let x = MARGIN;
  for (const series of chart.series) {
    parts.push(
      `<rect x="${px(x)}" y="${px(baseline - 9)}" width="10" height="10" fill="${series.color}"/>`,
      text(x + 14, baseline, series.name, { size: 11 }),
    );
    x += 14 + textWidth(series.name, 11) + 14;
  }
  parts.push(
    `<line x1="${px(x)}" y1="${px(baseline - 4)}" x2="${px(x + 18)}" y2="${px(baseline - 4)}" stroke="${TARGET_COLOR}" stroke-width="2" stroke-dasharray="5 3"/>`,
    text(x + 22, baseline, chart.targetCaption, { size: 11 }),
  );
  x += 22 + textWidth(chart.targetCaption, 11);
  if (x > WIDTH - MARGIN) {
    throw new Error(`chart "${chart.title}": the legend is too wide for one line; shorten its captions`);
  }
  return parts;
}

function drawPanel(chart: Chart, panel: Panel, panelLeft: number, panelWidth: number): string[] {
  const parts: string[] = [];
  const left = panelLeft + PLOT_LEFT;
  const right = panelLeft + panelWidth - PLOT_RIGHT;
  const values = panel.groups.flatMap((group) => [
    ...group.bars.map((bar) => bar.value),
    ...(group.target === undefined ? [] : [group.target]),
  ]);
  const axis = panel.scale === 'log' ? logAxis(values, chart) : linearAxis(values);
  const base = PLOT_BOTTOM;

  for (const tick of axis.ticks) {
    const y = axis.y(tick);
    parts.push(
      `<line x1="${px(left)}" y1="${px(y)}" x2="${px(right)}" y2="${px(y)}" stroke="${GRID_COLOR}" stroke-width="1"/>`,
      text(left - 6, y + 3.5, axis.tickLabel(tick), { size: 10, color: MUTED_COLOR, anchor: 'end' }),
    );
  }
  const yTitle = panel.scale === 'log' ? `${panel.yTitle}, log scale` : panel.yTitle;
  const middle = (PLOT_TOP + PLOT_BOTTOM) / 2;
  parts.push(
    text(panelLeft + 16, middle, yTitle, { size: 11, color: MUTED_COLOR, anchor: 'middle', rotate: -90 }),
  );

  const groupWidth = (right - left) / panel.groups.length;
  panel.groups.forEach((group, groupIndex) => {
    const groupLeft = left + groupIndex * groupWidth;
    const center = groupLeft + groupWidth / 2;
    const slot = Math.min(64, (groupWidth * 0.8) / group.bars.length);
    const firstSlot = center - (slot * group.bars.length) / 2;
    group.bars.forEach((bar, barIndex) => {
      // On a log scale a bar starts at the axis's lowest decade; on a linear one, at zero.
      const top = axis.y(bar.value);
      const x = firstSlot + barIndex * slot + 3;
      const label = panel.format(bar.value);
      parts.push(
        `<rect x="${px(x)}" y="${px(top)}" width="${px(slot - 6)}" height="${px(base - top)}" fill="${bar.series.color}"><title>${escapeXml(`${bar.series.name}: ${label}`)}</title></rect>`,
        text(x + (slot - 6) / 2, top - 4, label, { size: 10, anchor: 'middle' }),
      );
    });
    if (group.target !== undefined) {
      const y = axis.y(group.target);
      parts.push(
        `<line x1="${px(groupLeft + 4)}" y1="${px(y)}" x2="${px(groupLeft + groupWidth - 4)}" y2="${px(y)}" stroke="${TARGET_COLOR}" stroke-width="2" stroke-dasharray="5 3"><title>${escapeXml(`target: ${panel.format(group.target)}`)}</title></line>`,
      );
    }
    assertFits(group.label, 11, groupWidth, chart);
    parts.push(text(center, base + 15, group.label, { size: 11, anchor: 'middle' }));
    if (group.note !== undefined) {
      assertFits(group.note, 10, groupWidth, chart);
      parts.push(text(center, base + 29, group.note, { size: 10, color: MUTED_COLOR, anchor: 'middle' }));
    }
  });

  assertFits(panel.xTitle, 11, right - left, chart);
  parts.push(
    `<line x1="${px(left)}" y1="${px(PLOT_TOP)}" x2="${px(left)}" y2="${px(base)}" stroke="${AXIS_COLOR}" stroke-width="1"/>`,
    `<line x1="${px(left)}" y1="${px(base)}" x2="${px(right)}" y2="${px(base)}" stroke="${AXIS_COLOR}" stroke-width="1"/>`,
    text((left + right) / 2, base + 48, panel.xTitle, { size: 11, color: MUTED_COLOR, anchor: 'middle' }),
  );
  return parts;
}

function renderSvg(chart: Chart): string {
  assertFits(chart.title, 15, WIDTH - 2 * MARGIN, chart);
  assertFits(chart.subtitle, 11, WIDTH - 2 * MARGIN, chart);
  const body = [
    `<title>${escapeXml(chart.title)}</title>`,
    // Opaque, so that the chart reads the same on a dark page.
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#ffffff"/>`,
    text(MARGIN, 24, chart.title, { size: 15, bold: true }),
    text(MARGIN, 42, chart.subtitle, { size: 11, color: MUTED_COLOR }),
    ...drawLegend(chart),
  ];
  let panelLeft = 0;
  for (const panel of chart.panels) {
    const panelWidth = WIDTH * panel.share;
    body.push(`<g>`, ...drawPanel(chart, panel, panelLeft, panelWidth).map((line) => `  ${line}`), `</g>`);
    panelLeft += panelWidth;
  }
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="Helvetica, Arial, sans-serif" role="img">`,
    ...body.map((line) => `  ${line}`),
    '</svg>',
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// Files

/** Renders the chart of every `<name>.json` in resultsDir: chart file name -> SVG text. */
export function renderCharts(resultsDir: string): Map<string, string> {
  const charts = new Map<string, string>();
  const resultFiles = readdirSync(resultsDir)
    .filter((file) => file.endsWith('.json'))
    .sort();
  for (const file of resultFiles) {
    const name = basename(file, '.json');
    const chartOf = Object.hasOwn(CHARTS, name) ? CHARTS[name] : undefined;
    if (chartOf === undefined) {
      throw new Error(
        `${displayPath(join(resultsDir, file))}: no chart is defined for benchmark "${name}" (add one to test/bench/charts.ts)`,
      );
    }
    charts.set(`${name}.svg`, renderSvg(chartOf(readFigures(join(resultsDir, file)))));
  }
  return charts;
}

function committedCharts(chartsDir: string): string[] {
  return existsSync(chartsDir) ? readdirSync(chartsDir).filter((file) => file.endsWith('.svg')) : [];
}

/**
 * The chart files that differ from what the results render: changed, missing, or left over from a result
 * that is gone. Empty when the committed charts are up to date.
 */
export function findDrift(resultsDir: string, chartsDir: string): string[] {
  const rendered = renderCharts(resultsDir);
  const drift: string[] = [];
  for (const [file, svg] of rendered) {
    const path = join(chartsDir, file);
    if (!existsSync(path)) drift.push(`${file} (missing)`);
    else if (readFileSync(path, 'utf8') !== svg) drift.push(`${file} (differs)`);
  }
  for (const file of committedCharts(chartsDir)) {
    if (!rendered.has(file)) drift.push(`${file} (no result file renders it)`);
  }
  return drift.sort();
}

/** Writes every chart, and removes the charts whose result file is gone. Returns the paths written. */
export function writeCharts(resultsDir: string, chartsDir: string): string[] {
  const rendered = renderCharts(resultsDir);
  mkdirSync(chartsDir, { recursive: true });
  for (const file of committedCharts(chartsDir)) {
    if (!rendered.has(file)) rmSync(join(chartsDir, file));
  }
  const written: string[] = [];
  for (const [file, svg] of rendered) {
    const path = join(chartsDir, file);
    writeFileSync(path, svg);
    written.push(displayPath(path));
  }
  return written;
}

function main(args: string[]): number {
  const unknown = args.filter((arg) => arg !== '--check');
  if (unknown.length > 0) {
    process.stderr.write(
      `unknown argument ${unknown.join(' ')}\nusage: tsx test/bench/charts.ts [--check]\n`,
    );
    return 2;
  }
  if (args.includes('--check')) {
    const drift = findDrift(RESULTS_DIR, CHARTS_DIR);
    if (drift.length > 0) {
      process.stderr.write(
        `charts in ${displayPath(CHARTS_DIR)} differ from the results; run pnpm bench:charts:\n${drift.map((file) => `  ${file}\n`).join('')}`,
      );
      return 1;
    }
    process.stdout.write(`charts in ${displayPath(CHARTS_DIR)} are up to date\n`);
    return 0;
  }
  for (const path of writeCharts(RESULTS_DIR, CHARTS_DIR)) process.stdout.write(`wrote ${path}\n`);
  return 0;
}

// Run as a script (tsx test/bench/charts.ts), not when the test imports it.
if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  }
}

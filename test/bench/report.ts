/** A value of the final JSON line: figures are numbers; a few labels are strings. */
export type Figures = Record<string, number | string | boolean>;

/** What a benchmark hands back: human-readable tables, then the figures of the JSON line. */
export interface BenchResult {
  tables: Table[];
  figures: Figures;
}

export interface Table {
  title: string;
  headers: string[];
  rows: (string | number)[][];
}

/** Prints the tables, then the figures as one JSON object: the last line of stdout. */
export function printResult(result: BenchResult): void {
  for (const table of result.tables) process.stdout.write(`${formatTable(table)}\n`);
  process.stdout.write(`${JSON.stringify(result.figures)}\n`);
}

export function formatTable(table: Table): string {
  const cells = [table.headers, ...table.rows.map((row) => row.map(formatCell))];
  const widths = table.headers.map((_, column) =>
    Math.max(...cells.map((row) => (row[column] ?? '').toString().length)),
  );
  const line = (row: (string | number)[]) =>
    `| ${row.map((cell, column) => String(cell).padEnd(widths[column] ?? 0)).join(' | ')} |`;
  return [
    `\n${table.title}`,
    line(table.headers),
    `|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`,
    ...cells.slice(1).map(line),
  ].join('\n');
}

function formatCell(value: string | number): string {
  if (typeof value === 'string') return value;
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  return Math.abs(value) >= 100
    ? value.toFixed(0)
    : Math.abs(value) >= 1
      ? value.toFixed(2)
      : value.toFixed(3);
}

/** Rounds a figure for the JSON line; a NaN stays NaN (null in JSON), so that a missing figure shows. */
export function round(value: number, digits = 2): number {
  if (!Number.isFinite(value)) return value;
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

export function formatCounts(counts: Record<string, number>): string {
  const entries = Object.entries(counts);
  return entries.length === 0 ? 'none' : entries.map(([code, n]) => `${code} ${n}`).join(', ');
}

export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

import { readFileSync } from 'node:fs';
import { ERROR_CATALOGUE, type ErrorCode } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import {
  decodeClientFrame,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
} from './device-codec.js';

// docs/protocol.md is what client implementers copy from: its JSON frame examples must be frames the codec
// accepts and would itself emit, and its error table must be the catalogue.

const DOC_PATH = new URL('../../../docs/protocol.md', import.meta.url);
const doc = readFileSync(DOC_PATH, 'utf8');
const lines = doc.split('\n');

interface FrameExample {
  side: 'client' | 'server';
  line: number;
  text: string;
}

/** Every ```json block preceded (blank lines allowed) by `<!-- frame: client -->` or `<!-- frame: server -->`. */
function frameExamples(): FrameExample[] {
  const examples: FrameExample[] = [];
  for (let i = 0; i < lines.length; i++) {
    const marker = /^<!-- frame: (client|server) -->\s*$/.exec(lines[i] ?? '');
    if (!marker) continue;
    let start = i + 1;
    while (start < lines.length && lines[start]?.trim() === '') start++;
    if (lines[start]?.trim() !== '```json')
      throw new Error(`line ${i + 1}: frame marker not followed by a json block`);
    const end = lines.findIndex((line, index) => index > start && line.trim() === '```');
    if (end < 0) throw new Error(`line ${start + 1}: unterminated json block`);
    examples.push({
      side: marker[1] as 'client' | 'server',
      line: start + 1,
      text: lines.slice(start + 1, end).join('\n'),
    });
  }
  return examples;
}

const examples = frameExamples();

describe('docs/protocol.md frame examples', () => {
  it('marks every json block as a frame, and has examples', () => {
    const jsonBlocks = lines.filter((line) => line.trim() === '```json').length;
    expect(examples.length).toBeGreaterThan(0);
    expect(examples.length).toBe(jsonBlocks);
  });

  it.each(examples.map((example) => [`${example.side} frame at line ${example.line}`, example] as const))(
    '%s decodes and re-encodes to the same JSON',
    (_name, { side, text }) => {
      const data = Buffer.from(text);
      const expected = JSON.parse(text);
      if (side === 'client') {
        const frame = decodeClientFrame(data, false, 'json');
        expect(JSON.parse(encodeClientFrame(frame, 'json') as string)).toEqual(expected);
        const binary = encodeClientFrame(frame, 'proto') as Uint8Array;
        expect(decodeClientFrame(binary, true, 'proto')).toEqual(frame);
      } else {
        const frame = decodeServerFrame(data, false, 'json');
        expect(JSON.parse(encodeServerFrame(frame, 'json') as string)).toEqual(expected);
        const binary = encodeServerFrame(frame, 'proto') as Uint8Array;
        expect(decodeServerFrame(binary, true, 'proto')).toEqual(frame);
      }
    },
  );

  it('shows every frame body at least once', () => {
    const kinds = (side: 'client' | 'server') =>
      new Set(
        examples
          .filter((example) => example.side === side)
          .map((example) => {
            const data = Buffer.from(example.text);
            const frame =
              side === 'client'
                ? decodeClientFrame(data, false, 'json')
                : decodeServerFrame(data, false, 'json');
            return frame.body?.$case;
          }),
      );
    expect([...kinds('client')].sort()).toEqual([
      'ack',
      'click',
      'ping',
      'register',
      'reportLocation',
      'unregister',
      'updateTags',
    ]);
    expect([...kinds('server')].sort()).toEqual([
      'connected',
      'deliver',
      'error',
      'locationReported',
      'pong',
      'registered',
      'tagsUpdated',
      'unregistered',
    ]);
  });
});

describe('docs/protocol.md error catalogue', () => {
  /** Rows of the table under "### 7.2 Error catalogue": code, meaning, HTTP, WS close, gRPC, reconnect, where. */
  function catalogueRows(): string[][] {
    const start = lines.findIndex((line) => /^### .*Error catalogue/.test(line));
    if (start < 0) throw new Error('no "Error catalogue" section');
    const end = lines.findIndex((line, index) => index > start && /^#{1,3} /.test(line));
    return lines
      .slice(start, end < 0 ? undefined : end)
      .filter((line) => /^\|\s*`[A-Z_]+`\s*\|/.test(line))
      .map((line) =>
        line
          .slice(1, -1)
          .split('|')
          .map((cell) => cell.trim()),
      );
  }

  it('lists every catalogue code once, with its summary, statuses, close code and reconnect flag', () => {
    const rows = catalogueRows();
    expect(rows.map((row) => row[0]?.replaceAll('`', '')).sort()).toEqual(
      Object.keys(ERROR_CATALOGUE).sort(),
    );
    for (const row of rows) {
      const code = row[0]?.replaceAll('`', '') as ErrorCode;
      const spec = ERROR_CATALOGUE[code];
      expect({
        code,
        summary: row[1],
        httpStatus: Number(row[2]),
        wsCloseCode: Number(row[3]),
        grpcStatus: Number(/\((\d+)\)/.exec(row[4] ?? '')?.[1]),
        reconnect: row[5] === 'yes' ? true : row[5] === 'no' ? false : row[5],
      }).toEqual({ code, ...spec });
    }
  });
});

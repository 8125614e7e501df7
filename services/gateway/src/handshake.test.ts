import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { PushdError } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import { negotiateEncoding, parseHandshake } from './handshake.js';

/** parseHandshake reads only the headers of the request and the parsed URL. */
function parse(headers: IncomingHttpHeaders, query = '') {
  const url = new URL(`/v1/ws${query}`, 'http://gateway');
  return parseHandshake({ headers } as IncomingMessage, url);
}

function refusal(headers: IncomingHttpHeaders, query = ''): PushdError {
  try {
    parse(headers, query);
  } catch (error) {
    if (error instanceof PushdError) return error;
    throw error;
  }
  throw new Error('expected parseHandshake to throw');
}

describe('parseHandshake', () => {
  it('reads a session from the x-pushd headers', () => {
    expect(
      parse({
        'x-pushd-access-id': '1500000001',
        'x-pushd-token': 'tok',
        'x-pushd-credential': 'cred',
        'x-pushd-last-msg-id': '42',
      }),
    ).toEqual({
      accessId: 1_500_000_001,
      auth: { kind: 'session', token: 'tok', credential: 'cred' },
      lastMsgId: 42,
      encoding: 'proto',
    });
  });

  it('reads a registration from the query string when headers are absent', () => {
    expect(parse({}, '?access_id=1500000002&access_key=AKEY&last_msg_id=7')).toEqual({
      accessId: 1_500_000_002,
      auth: { kind: 'registration', accessKey: 'AKEY' },
      lastMsgId: 7,
      encoding: 'proto',
    });
    expect(parse({}, '?access_id=9&token=t&credential=c').auth).toEqual({
      kind: 'session',
      token: 't',
      credential: 'c',
    });
  });

  it('prefers a non-empty header to the query parameter, and falls back on an empty header', () => {
    const handshake = parse(
      { 'x-pushd-access-id': '11', 'x-pushd-access-key': 'FROM-HEADER', 'x-pushd-last-msg-id': '' },
      '?access_id=22&access_key=FROM-QUERY&last_msg_id=5',
    );
    expect(handshake.accessId).toBe(11);
    expect(handshake.auth).toEqual({ kind: 'registration', accessKey: 'FROM-HEADER' });
    expect(handshake.lastMsgId).toBe(5);
    expect(parse({ 'x-pushd-access-id': '' }, '?access_id=33&access_key=k').accessId).toBe(33);
  });

  it('makes a connection with a token or credential a session, which then needs both', () => {
    expect(
      parse({
        'x-pushd-access-id': '1',
        'x-pushd-token': 't',
        'x-pushd-credential': 'c',
        'x-pushd-access-key': 'k',
      }).auth,
    ).toEqual({ kind: 'session', token: 't', credential: 'c' });
    expect(
      refusal({ 'x-pushd-access-id': '1', 'x-pushd-token': 't', 'x-pushd-access-key': 'k' }),
    ).toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    expect(refusal({ 'x-pushd-access-id': '1', 'x-pushd-credential': 'c' })).toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    expect(refusal({ 'x-pushd-access-id': '1' })).toMatchObject({ code: 'UNAUTHENTICATED' });
  });

  it.each([
    ['missing', {}],
    ['empty', { 'x-pushd-access-id': '' }],
    ['zero', { 'x-pushd-access-id': '0' }],
    ['negative', { 'x-pushd-access-id': '-5' }],
    ['not a number', { 'x-pushd-access-id': 'abc' }],
    ['fractional', { 'x-pushd-access-id': '1.5' }],
    ['beyond 2^53-1', { 'x-pushd-access-id': '9007199254740993' }],
    ['hexadecimal', { 'x-pushd-access-id': '0x10' }],
    ['in exponent notation', { 'x-pushd-access-id': '1e3' }],
    ['written with a decimal point', { 'x-pushd-access-id': '7.0' }],
    ['padded with spaces', { 'x-pushd-access-id': ' 7 ' }],
    ['signed', { 'x-pushd-access-id': '+7' }],
  ])('refuses an access id that is %s (INVALID_ARGUMENT, field x-pushd-access-id)', (_what, headers) => {
    expect(refusal({ ...headers, 'x-pushd-access-key': 'k' })).toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'x-pushd-access-id' },
    });
  });

  it.each([
    ['negative', '-1'],
    ['not a number', 'abc'],
    ['fractional', '2.5'],
    ['beyond 2^53-1', '9007199254740993'],
    ['in exponent notation', '1e5'],
    ['hexadecimal', '0x10'],
    ['binary', '0b11'],
  ])('refuses a last_msg_id that is %s (INVALID_ARGUMENT)', (_what, value) => {
    expect(
      refusal({ 'x-pushd-access-id': '1', 'x-pushd-access-key': 'k', 'x-pushd-last-msg-id': value }),
    ).toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'x-pushd-last-msg-id' } });
    expect(refusal({}, `?access_id=1&access_key=k&last_msg_id=${value}`)).toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'x-pushd-last-msg-id' },
    });
  });

  it('negotiates the encoding from the offered subprotocols before anything else', () => {
    const base = { 'x-pushd-access-id': '1', 'x-pushd-access-key': 'k' };
    expect(parse({ ...base, 'sec-websocket-protocol': 'pushd.v1.json' }).encoding).toBe('json');
    expect(parse({ ...base, 'sec-websocket-protocol': 'pushd.v1.proto' }).encoding).toBe('proto');
    // An unsupported offer is refused even when the rest of the request is wrong too.
    expect(refusal({ 'sec-websocket-protocol': 'mqtt' })).toMatchObject({ code: 'UNSUPPORTED_PROTOCOL' });
  });
});

describe('negotiateEncoding', () => {
  it('defaults to binary protobuf when nothing is offered', () => {
    expect(negotiateEncoding(undefined)).toBe('proto');
    expect(negotiateEncoding('')).toBe('proto');
    expect(negotiateEncoding('  ')).toBe('proto');
  });

  it('takes the first offered subprotocol it speaks', () => {
    expect(negotiateEncoding('pushd.v1.json')).toBe('json');
    expect(negotiateEncoding('pushd.v1.json, pushd.v1.proto')).toBe('json');
    expect(negotiateEncoding('pushd.v1.proto,pushd.v1.json')).toBe('proto');
    expect(negotiateEncoding('graphql-ws, pushd.v1.json')).toBe('json');
  });

  it('refuses offers it does not speak with UNSUPPORTED_PROTOCOL', () => {
    for (const offered of [
      'mqtt',
      'pushd.v2.proto, chat',
      'PUSHD.V1.JSON',
      // Malformed lists, which ws would refuse with a bare-text 400 of its own.
      'pushd.v1.proto, pushd.v1.proto',
      'pushd.v1.proto,,pushd.v1.json',
      'pushd.v1.proto, pushd v1',
    ]) {
      expect(() => negotiateEncoding(offered), offered).toThrow(
        expect.objectContaining({ code: 'UNSUPPORTED_PROTOCOL' }),
      );
    }
  });
});

import type { IncomingMessage } from 'node:http';
import { invalidArgument, PushdError } from '@pushd/common';
import { encodingOfSubprotocol, type FrameEncoding } from '@pushd/proto';

/** How a device authenticates its upgrade request. */
export type HandshakeAuth =
  | { kind: 'session'; token: string; credential: string }
  | { kind: 'registration'; accessKey: string };

export interface Handshake {
  accessId: number;
  auth: HandshakeAuth;
  /** Highest msg_id the device has already processed; older pending messages are not sent again. */
  lastMsgId: number;
  encoding: FrameEncoding;
}

/**
 * Reads the upgrade request (docs/protocol.md, "Handshake"): credentials from x-pushd-* headers, or from
 * the query string for tools that cannot set headers; the encoding from the offered subprotocols. Throws a
 * PushdError naming what is wrong; nothing is looked up here.
 */
export function parseHandshake(request: IncomingMessage, url: URL): Handshake {
  const encoding = negotiateEncoding(request.headers['sec-websocket-protocol']);
  const accessIdText = headerOrQuery(request, url, 'x-pushd-access-id', 'access_id');
  if (accessIdText === '') throw invalidArgument('x-pushd-access-id', 'required');
  const accessId = decimal(accessIdText);
  if (!Number.isSafeInteger(accessId) || accessId <= 0) {
    throw invalidArgument('x-pushd-access-id', 'must be a positive integer');
  }
  const lastMsgIdText = headerOrQuery(request, url, 'x-pushd-last-msg-id', 'last_msg_id');
  const lastMsgId = lastMsgIdText === '' ? 0 : decimal(lastMsgIdText);
  if (!Number.isSafeInteger(lastMsgId) || lastMsgId < 0) {
    throw invalidArgument('x-pushd-last-msg-id', 'must be a non-negative integer');
  }

  const token = headerOrQuery(request, url, 'x-pushd-token', 'token');
  const credential = headerOrQuery(request, url, 'x-pushd-credential', 'credential');
  const accessKey = headerOrQuery(request, url, 'x-pushd-access-key', 'access_key');
  if (token !== '' || credential !== '') {
    if (token === '' || credential === '') {
      throw new PushdError('UNAUTHENTICATED', 'a session needs both x-pushd-token and x-pushd-credential');
    }
    return { accessId, auth: { kind: 'session', token, credential }, lastMsgId, encoding };
  }
  if (accessKey !== '') return { accessId, auth: { kind: 'registration', accessKey }, lastMsgId, encoding };
  throw new PushdError(
    'UNAUTHENTICATED',
    'send x-pushd-token and x-pushd-credential to resume a session, or x-pushd-access-key to register',
  );
}

/** A non-empty header, else the query parameter ('' when neither is given). */
function headerOrQuery(request: IncomingMessage, url: URL, header: string, query: string): string {
  const fromHeader = request.headers[header];
  if (typeof fromHeader === 'string' && fromHeader !== '') return fromHeader;
  return url.searchParams.get(query) ?? '';
}

/**
 * A number written in decimal digits only, NaN otherwise: Number() would also take '0x10', '1e3', '7.0'
 * and ' 7 ', which the protocol refuses (a last_msg_id of '1e5' would skip every message up to 100000).
 */
function decimal(text: string): number {
  return /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
}

/** A subprotocol name: an HTTP token (RFC 7230 tchar), what ws accepts in the header's list. */
const SUBPROTOCOL_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * The first offered subprotocol we speak, binary protobuf when none is offered. ws's handleProtocols makes
 * the same choice, so the response header and the encoding agree.
 */
export function negotiateEncoding(offered: string | undefined): FrameEncoding {
  if (offered === undefined || offered.trim() === '') return 'proto';
  const names = offered.split(',').map((name) => name.trim());
  // ws refuses such a header with a bare-text 400 of its own, after the registry was asked: refused here.
  if (names.some((name) => !SUBPROTOCOL_NAME.test(name)) || new Set(names).size !== names.length) {
    throw new PushdError(
      'UNSUPPORTED_PROTOCOL',
      `the Sec-WebSocket-Protocol header (${offered}) is not a list of distinct subprotocol names`,
    );
  }
  for (const name of names) {
    const encoding = encodingOfSubprotocol(name);
    if (encoding) return encoding;
  }
  throw new PushdError(
    'UNSUPPORTED_PROTOCOL',
    `none of the offered subprotocols (${offered}) is supported; offer pushd.v1.proto or pushd.v1.json`,
  );
}

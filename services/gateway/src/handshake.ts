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
  const value = (header: string, query: string): string => {
    const fromHeader = request.headers[header];
    if (typeof fromHeader === 'string' && fromHeader !== '') return fromHeader;
    return url.searchParams.get(query) ?? '';
  };

  const encoding = negotiateEncoding(request.headers['sec-websocket-protocol']);
  const accessIdText = value('x-pushd-access-id', 'access_id');
  if (accessIdText === '') throw invalidArgument('x-pushd-access-id', 'required');
  const accessId = Number(accessIdText);
  if (!Number.isSafeInteger(accessId) || accessId <= 0) {
    throw invalidArgument('x-pushd-access-id', 'must be a positive integer');
  }
  const lastMsgIdText = value('x-pushd-last-msg-id', 'last_msg_id');
  const lastMsgId = lastMsgIdText === '' ? 0 : Number(lastMsgIdText);
  if (!Number.isSafeInteger(lastMsgId) || lastMsgId < 0) {
    throw invalidArgument('x-pushd-last-msg-id', 'must be a non-negative integer');
  }

  const token = value('x-pushd-token', 'token');
  const credential = value('x-pushd-credential', 'credential');
  const accessKey = value('x-pushd-access-key', 'access_key');
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

import { ERROR_CATALOGUE, type ErrorCode, isErrorCode, PushdError } from '@pushd/common';

/**
 * Translation of the gateway's failures as they appear on the wire (WebSocket close codes, refused HTTP
 * upgrades, error frames) back into catalogue errors. The gateway translates at its edge; this is the same
 * edge seen from the device.
 */

/**
 * Close codes shared by several catalogue entries, resolved to the one that can end a device connection.
 * Every other shared code resolves to its first catalogue entry; entries sharing a close code agree on
 * `reconnect` (a unit test guards that), so the choice never changes what a device does next.
 */
const CONNECTION_MEANING: Readonly<Record<number, ErrorCode>> = {
  // TAG_LIMIT_EXCEEDED shares 4409 but is a control-plane error; it never closes a device connection.
  4409: 'CONNECTION_REPLACED',
};

const CODE_BY_CLOSE_CODE: ReadonlyMap<number, ErrorCode> = (() => {
  const byCloseCode = new Map<number, ErrorCode>();
  for (const code of Object.keys(ERROR_CATALOGUE) as ErrorCode[]) {
    const closeCode = ERROR_CATALOGUE[code].wsCloseCode;
    if (!byCloseCode.has(closeCode)) byCloseCode.set(closeCode, code);
  }
  for (const [closeCode, code] of Object.entries(CONNECTION_MEANING))
    byCloseCode.set(Number(closeCode), code);
  return byCloseCode;
})();

/**
 * The catalogue code a WebSocket close code stands for, or undefined for codes outside the catalogue
 * (1000, 1001, 1006...). When the gateway put a catalogue code in the close reason (`"INVALID_CREDENTIAL"`
 * or `"INVALID_CREDENTIAL: ..."`) and it has this close code, that more precise code wins.
 */
export function parseCloseCode(code: number, reason?: string): ErrorCode | undefined {
  if (reason) {
    const word = /^[A-Z_]+/.exec(reason)?.[0];
    if (word !== undefined && isErrorCode(word) && ERROR_CATALOGUE[word].wsCloseCode === code) return word;
  }
  return CODE_BY_CLOSE_CODE.get(code);
}

/**
 * Close codes that mean the network or an intermediary dropped the connection rather than the gateway
 * refusing the device: going away, no status, abnormal closure (no close frame, the usual result of a lost
 * network), server error, service restart, try again later, bad gateway.
 */
const TRANSIENT_CLOSE_CODES: ReadonlySet<number> = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/**
 * Why a connection closed, as a catalogue error; undefined for a normal close (1000). Transient network
 * closes become UNAVAILABLE (reconnect) and anything else outside the catalogue PROTOCOL_VIOLATION (no
 * reconnect), so the catalogue's `reconnect` flag alone decides whether a device reconnects.
 */
export function errorFromClose(code: number, reason: string): PushdError | undefined {
  if (code === 1000) return undefined;
  const detail = reason ? `${code}: ${reason}` : `${code}`;
  const metadata = { closeCode: String(code) };
  const known = parseCloseCode(code, reason);
  if (known !== undefined) return new PushdError(known, `connection closed (${detail})`, { metadata });
  if (TRANSIENT_CLOSE_CODES.has(code)) {
    return new PushdError('UNAVAILABLE', `connection lost (${detail})`, { metadata });
  }
  return new PushdError('PROTOCOL_VIOLATION', `connection closed with an unexpected code (${detail})`, {
    metadata,
  });
}

/** Status codes of refusals whose body carried no catalogue code (a proxy, or not a pushd gateway). */
function codeOfHttpStatus(status: number): ErrorCode {
  switch (status) {
    case 401:
      return 'UNAUTHENTICATED';
    case 403:
      return 'PERMISSION_DENIED';
    case 404:
    case 405:
    case 501:
      return 'UNIMPLEMENTED';
    case 408:
    case 504:
      return 'DEADLINE_EXCEEDED';
    case 429:
      return 'RATE_LIMITED';
    case 502:
    case 503:
      return 'UNAVAILABLE';
    default:
      return status >= 500 ? 'INTERNAL' : 'INVALID_ARGUMENT';
  }
}

/**
 * The error of a refused WebSocket upgrade. The gateway answers `{"code": "<CATALOGUE_CODE>", "message":
 * "..."}`; any other body is classified by its HTTP status.
 */
export function errorFromRefusal(status: number, body: string): PushdError {
  const metadata = { httpStatus: String(status) };
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  if (typeof parsed === 'object' && parsed !== null) {
    const { code, message } = parsed as { code?: unknown; message?: unknown };
    if (typeof code === 'string' && isErrorCode(code)) {
      return new PushdError(code, typeof message === 'string' && message !== '' ? message : undefined, {
        metadata,
      });
    }
  }
  const excerpt = body.length > 200 ? `${body.slice(0, 200)}...` : body;
  return new PushdError(
    codeOfHttpStatus(status),
    `the gateway refused the connection with HTTP ${status}${excerpt ? `: ${excerpt}` : ''}`,
    { metadata },
  );
}

/**
 * An error frame's content as a PushdError. A code this SDK does not know (a newer gateway) becomes
 * INTERNAL with the original kept in metadata.serverCode.
 */
export function errorFromFrame(code: string, message: string): PushdError {
  if (isErrorCode(code)) return new PushdError(code, message !== '' ? message : undefined);
  return new PushdError('INTERNAL', message !== '' ? `${code}: ${message}` : code, {
    metadata: { serverCode: code },
  });
}

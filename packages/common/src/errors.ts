/**
 * The error catalogue: every failure a caller can see has one stable code here, and the code decides how
 * it is translated at each edge (gRPC status, HTTP status, WebSocket close code). Code inside the services
 * throws PushdError and never picks a transport status itself. docs/protocol.md lists the same table.
 */

/** gRPC status codes used by the catalogue (numeric values of @grpc/grpc-js `status`). */
const Grpc = {
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export interface ErrorSpec {
  /** What the code means, for docs and for the default message. */
  readonly summary: string;
  readonly grpcStatus: number;
  readonly httpStatus: number;
  /**
   * WebSocket close code (4000-4999) when this error ends a device connection. By convention 4000 + the
   * HTTP status, so the two read alike; 4409/4410 are the connection-specific ones.
   */
  readonly wsCloseCode: number;
  /** Whether a device should reconnect (with backoff) after a close with this code. */
  readonly reconnect: boolean;
}

function spec(
  summary: string,
  grpcStatus: number,
  httpStatus: number,
  wsCloseCode: number,
  reconnect: boolean,
): ErrorSpec {
  return { summary, grpcStatus, httpStatus, wsCloseCode, reconnect };
}

export const ERROR_CATALOGUE = {
  INVALID_ARGUMENT: spec(
    'a field of the request is missing or invalid',
    Grpc.INVALID_ARGUMENT,
    400,
    4400,
    false,
  ),
  UNAUTHENTICATED: spec('no valid credentials were presented', Grpc.UNAUTHENTICATED, 401, 4401, false),
  INVALID_CREDENTIAL: spec(
    'the device token and credential do not match',
    Grpc.UNAUTHENTICATED,
    401,
    4401,
    false,
  ),
  PERMISSION_DENIED: spec('the credentials do not allow this call', Grpc.PERMISSION_DENIED, 403, 4403, false),
  APP_NOT_FOUND: spec('no app has this access id', Grpc.NOT_FOUND, 404, 4404, false),
  TOKEN_NOT_FOUND: spec('no registered device has this token in this app', Grpc.NOT_FOUND, 404, 4404, false),
  ACCOUNT_NOT_FOUND: spec('no device is bound to this account in this app', Grpc.NOT_FOUND, 404, 4404, false),
  PUSH_NOT_FOUND: spec('no push has this push id in this app', Grpc.NOT_FOUND, 404, 4404, false),
  ENDPOINT_NOT_FOUND: spec('no endpoint at this path', Grpc.UNIMPLEMENTED, 404, 4404, false),
  PAYLOAD_TOO_LARGE: spec('the message exceeds the 4096-byte limit', Grpc.INVALID_ARGUMENT, 413, 4413, false),
  TAG_LIMIT_EXCEEDED: spec('the call would exceed a tag limit', Grpc.FAILED_PRECONDITION, 409, 4409, false),
  PUSH_ALREADY_SENT: spec(
    'the push is being sent or was sent; it can no longer be cancelled',
    Grpc.FAILED_PRECONDITION,
    409,
    4409,
    false,
  ),
  PUSH_NOT_CANCELLABLE: spec(
    'only a scheduled push can be cancelled',
    Grpc.FAILED_PRECONDITION,
    409,
    4409,
    false,
  ),
  IDEMPOTENCY_KEY_IN_USE: spec(
    'a call with this idempotency key is still in progress; retry',
    Grpc.ABORTED,
    409,
    4409,
    false,
  ),
  RATE_LIMITED: spec('too many calls of this kind; retry later', Grpc.RESOURCE_EXHAUSTED, 429, 4429, true),
  UNSUPPORTED_PROTOCOL: spec(
    'no offered WebSocket subprotocol is supported',
    Grpc.INVALID_ARGUMENT,
    400,
    4400,
    false,
  ),
  FRAME_MALFORMED: spec('a frame could not be decoded', Grpc.INVALID_ARGUMENT, 400, 4400, false),
  FRAME_TOO_LARGE: spec('a frame exceeds the gateway limit', Grpc.INVALID_ARGUMENT, 413, 1009, false),
  PROTOCOL_VIOLATION: spec(
    'a frame is not allowed in this state',
    Grpc.FAILED_PRECONDITION,
    400,
    4400,
    false,
  ),
  REGISTRATION_TIMEOUT: spec('no Register frame came in time', Grpc.DEADLINE_EXCEEDED, 408, 4408, true),
  CONNECTION_REPLACED: spec(
    'the same device opened a newer connection',
    Grpc.ALREADY_EXISTS,
    409,
    4409,
    false,
  ),
  DEVICE_UNREGISTERED: spec('the device was unregistered', Grpc.NOT_FOUND, 410, 4410, false),
  SLOW_CONSUMER: spec(
    'the device did not read its frames fast enough',
    Grpc.RESOURCE_EXHAUSTED,
    429,
    4429,
    true,
  ),
  SHUTTING_DOWN: spec('the server is shutting down; reconnect', Grpc.UNAVAILABLE, 503, 4503, true),
  UNAVAILABLE: spec('a dependency is unavailable; retry', Grpc.UNAVAILABLE, 503, 4503, true),
  DEADLINE_EXCEEDED: spec('the call did not complete in time', Grpc.DEADLINE_EXCEEDED, 504, 4504, true),
  UNIMPLEMENTED: spec('the method is not implemented by this server', Grpc.UNIMPLEMENTED, 501, 4501, false),
  INTERNAL: spec('an unexpected error; it was logged', Grpc.INTERNAL, 500, 4500, true),
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

export function isErrorCode(value: string): value is ErrorCode {
  return Object.hasOwn(ERROR_CATALOGUE, value);
}

/** The one error type services throw. `code` is stable; `message` names the problem for a human. */
export class PushdError extends Error {
  override readonly name = 'PushdError';
  readonly code: ErrorCode;
  /** Extra machine-readable facts (the field, the limit, when to retry...); carried to every edge. */
  readonly metadata: Readonly<Record<string, string>>;

  constructor(
    code: ErrorCode,
    message?: string,
    options?: { cause?: unknown; metadata?: Record<string, string> },
  ) {
    super(
      message ?? ERROR_CATALOGUE[code].summary,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.code = code;
    this.metadata = options?.metadata ?? {};
  }

  get spec(): ErrorSpec {
    return ERROR_CATALOGUE[this.code];
  }
}

/** Any thrown value as a PushdError: unknown errors become INTERNAL with the original kept as `cause`. */
export function toPushdError(error: unknown): PushdError {
  if (error instanceof PushdError) return error;
  return new PushdError('INTERNAL', undefined, { cause: error });
}

/** No registered device of app `accessId` has `token` (the registry's answer, and dispatch's for a push). */
export function tokenNotFound(accessId: number, token: string): PushdError {
  return new PushdError(
    'TOKEN_NOT_FOUND',
    `no registered device has token ${JSON.stringify(token)} in app ${accessId}`,
    { metadata: { token } },
  );
}

export function invalidArgument(field: string, problem: string): PushdError {
  return new PushdError('INVALID_ARGUMENT', `${field}: ${problem}`, { metadata: { field } });
}

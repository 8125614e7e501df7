import { Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { isErrorCode, PushdError, toPushdError } from '@pushd/common';
import { Any, ErrorInfo, Status } from '@pushd/proto';

/** Domain of our google.rpc.ErrorInfo details; reason is the catalogue code. */
export const ERROR_DOMAIN = 'pushd.dev';
/** Plain trailer with the catalogue code, for clients that do not decode rich error details. */
export const ERROR_CODE_TRAILER = 'pushd-error-code';
const DETAILS_TRAILER = 'grpc-status-details-bin';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

/**
 * A PushdError as google.rpc.Status: the catalogue's gRPC status code, the message, and the catalogue code
 * with the error's metadata as google.rpc.ErrorInfo. What a failed call carries in grpc-status-details-bin,
 * and what one item of a batch reply carries as its error (so the caller rebuilds the same PushdError).
 */
export function toStatus(error: unknown): Status {
  const pushdError = toPushdError(error);
  const info = ErrorInfo.create({
    reason: pushdError.code,
    domain: ERROR_DOMAIN,
    metadata: { ...pushdError.metadata },
  });
  return Status.create({
    code: pushdError.spec.grpcStatus,
    message: pushdError.message,
    details: [Any.create({ typeUrl: ERROR_INFO_TYPE, value: Buffer.from(ErrorInfo.encode(info).finish()) })],
  });
}

/**
 * A PushdError as a gRPC error: the catalogue's status code, the message, the code as a plain trailer and
 * as google.rpc.ErrorInfo in grpc-status-details-bin (gRPC's standard rich error model).
 */
export function toGrpcError(error: unknown): Partial<ServiceError> {
  const pushdError = toPushdError(error);
  const metadata = new Metadata();
  metadata.set(ERROR_CODE_TRAILER, pushdError.code);
  metadata.set(DETAILS_TRAILER, Buffer.from(Status.encode(toStatus(pushdError)).finish()));
  return { code: pushdError.spec.grpcStatus, details: pushdError.message, metadata };
}

const GRPC_STATUS_TO_CODE: Partial<Record<number, PushdError['code']>> = {
  [status.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [status.DEADLINE_EXCEEDED]: 'DEADLINE_EXCEEDED',
  [status.UNAUTHENTICATED]: 'UNAUTHENTICATED',
  [status.PERMISSION_DENIED]: 'PERMISSION_DENIED',
  // Our own rate limits carry their code in the trailer; a bare RESOURCE_EXHAUSTED is gRPC's own, a
  // message over its size limit: the request itself is wrong, and retrying it cannot help.
  [status.RESOURCE_EXHAUSTED]: 'INVALID_ARGUMENT',
  [status.UNIMPLEMENTED]: 'UNIMPLEMENTED',
  [status.UNAVAILABLE]: 'UNAVAILABLE',
  [status.CANCELLED]: 'UNAVAILABLE',
};

/**
 * A gRPC client error as a PushdError: the catalogue code from the trailer when the server is one of ours,
 * otherwise the closest code for the gRPC status (UNAVAILABLE for transport failures).
 */
export function fromGrpcError(error: ServiceError): PushdError {
  const trailer = error.metadata?.get(ERROR_CODE_TRAILER)[0];
  const code =
    typeof trailer === 'string' && isErrorCode(trailer)
      ? trailer
      : (GRPC_STATUS_TO_CODE[error.code] ?? 'INTERNAL');
  return new PushdError(code, error.details || error.message, {
    cause: error,
    metadata: readErrorInfo(error),
  });
}

/**
 * The PushdError a google.rpc.Status carries (the inverse of toStatus): the code from its ErrorInfo when it
 * is one of ours, otherwise the closest code for its gRPC status.
 */
export function fromStatus(status: Status): PushdError {
  const info = errorInfoOf(status);
  const reason = info?.domain === ERROR_DOMAIN ? info.reason : '';
  const code = isErrorCode(reason) ? reason : (GRPC_STATUS_TO_CODE[status.code] ?? 'INTERNAL');
  return new PushdError(code, status.message || undefined, { metadata: { ...info?.metadata } });
}

function readErrorInfo(error: ServiceError): Record<string, string> {
  const raw = error.metadata?.get(DETAILS_TRAILER)[0];
  if (!Buffer.isBuffer(raw)) return {};
  try {
    return { ...errorInfoOf(Status.decode(raw))?.metadata };
  } catch {
    return {};
  }
}

/** The first google.rpc.ErrorInfo among a status's details; undefined if none (or undecodable). */
function errorInfoOf(status: Status): ErrorInfo | undefined {
  const detail = status.details.find((any) => any.typeUrl === ERROR_INFO_TYPE);
  if (detail === undefined) return undefined;
  try {
    return ErrorInfo.decode(detail.value);
  } catch {
    return undefined;
  }
}

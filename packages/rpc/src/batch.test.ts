import { ERROR_CATALOGUE, type ErrorCode, PushdError } from '@pushd/common';
import { AuthenticateDeviceResult, Status } from '@pushd/proto';
import { describe, expect, it } from 'vitest';
import {
  checkBatchSize,
  fromBatchResult,
  MAX_BATCH_ITEMS,
  settle,
  toBatchResult,
  unwrapSettled,
} from './batch.js';
import { fromStatus, toStatus } from './errors.js';

// One item of a batch reply carries its error as google.rpc.Status: the caller must rebuild exactly the
// PushdError the single call would have thrown, or a refused handshake would answer differently.

/** Through the wire format of a real batch reply, as a gateway decodes it. */
const overTheWire = (result: AuthenticateDeviceResult) =>
  AuthenticateDeviceResult.decode(AuthenticateDeviceResult.encode(result).finish());

describe('batch item errors', () => {
  it('rebuild every catalogue code with its message and metadata', () => {
    for (const code of Object.keys(ERROR_CATALOGUE) as ErrorCode[]) {
      const original = new PushdError(code, `why ${code}`, { metadata: { field: 'token', limit: '500' } });
      const settled = fromBatchResult(overTheWire(toBatchResult({ status: 'rejected', reason: original })));
      expect(settled.status).toBe('rejected');
      const rebuilt = (settled as PromiseRejectedResult).reason;
      expect(rebuilt).toBeInstanceOf(PushdError);
      expect(rebuilt).toMatchObject({ code, message: `why ${code}`, metadata: original.metadata });
      expect((rebuilt as PushdError).spec).toEqual(original.spec);
    }
  });

  it('carry the gRPC status of the code, so a stock client reading the Status sees what a failed call says', () => {
    const status = toStatus(new PushdError('INVALID_CREDENTIAL', 'no'));
    expect(status.code).toBe(ERROR_CATALOGUE.INVALID_CREDENTIAL.grpcStatus);
    expect(status.message).toBe('no');
    expect(status.details[0]?.typeUrl).toBe('type.googleapis.com/google.rpc.ErrorInfo');
  });

  it('turn an unexpected error into INTERNAL, and a status without our ErrorInfo into the closest code', () => {
    const internal = fromStatus(toStatus(new Error('a bug')));
    expect(internal.code).toBe('INTERNAL');
    expect(fromStatus(Status.create({ code: 14, message: 'foreign' }))).toMatchObject({
      code: 'UNAVAILABLE',
      message: 'foreign',
    });
    expect(fromStatus(Status.create({ code: 2 })).code).toBe('INTERNAL');
  });

  it('pass responses through, and call an item without an outcome INTERNAL', () => {
    const response = { device: undefined };
    expect(fromBatchResult(overTheWire(toBatchResult({ status: 'fulfilled', value: response })))).toEqual({
      status: 'fulfilled',
      value: response,
    });
    const empty = fromBatchResult(AuthenticateDeviceResult.create());
    expect(empty).toMatchObject({ status: 'rejected', reason: { code: 'INTERNAL' } });
  });
});

describe('checkBatchSize', () => {
  it('accepts 1 to MAX_BATCH_ITEMS and refuses none or more with INVALID_ARGUMENT naming the limit', () => {
    expect(() => checkBatchSize('requests', 1)).not.toThrow();
    expect(() => checkBatchSize('requests', MAX_BATCH_ITEMS)).not.toThrow();
    expect(() => checkBatchSize('requests', 0)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field: 'requests', limit: '500' } }),
    );
    let over: unknown;
    try {
      checkBatchSize('requests', MAX_BATCH_ITEMS + 1);
    } catch (error) {
      over = error;
    }
    expect(over).toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'requests: at most 500 per call (got 501)',
      metadata: { field: 'requests', limit: '500' },
    });
  });
});

describe('settle and unwrapSettled', () => {
  it('turn a return or a throw into a settled result and back', () => {
    expect(settle(() => 7)).toEqual({ status: 'fulfilled', value: 7 });
    const failure = new PushdError('TOKEN_NOT_FOUND');
    expect(
      settle(() => {
        throw failure;
      }),
    ).toEqual({ status: 'rejected', reason: failure });
    expect(unwrapSettled({ status: 'fulfilled', value: 'x' })).toBe('x');
    expect(() => unwrapSettled({ status: 'rejected', reason: failure })).toThrow(failure);
  });
});

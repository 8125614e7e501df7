import { ERROR_CATALOGUE, type ErrorCode } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import { errorFromClose, errorFromFrame, errorFromRefusal, parseCloseCode } from './wire-errors.js';

describe('parseCloseCode', () => {
  it('maps catalogue close codes, 1009 included, and nothing else', () => {
    expect(parseCloseCode(4401)).toBe('UNAUTHENTICATED');
    expect(parseCloseCode(4503)).toBe('SHUTTING_DOWN');
    expect(parseCloseCode(4410)).toBe('DEVICE_UNREGISTERED');
    expect(parseCloseCode(1009)).toBe('FRAME_TOO_LARGE');
    expect(parseCloseCode(4409)).toBe('CONNECTION_REPLACED');
    expect(parseCloseCode(1000)).toBeUndefined();
    expect(parseCloseCode(1006)).toBeUndefined();
    expect(parseCloseCode(4999)).toBeUndefined();
  });

  it('prefers a catalogue code named in the reason when it has the same close code', () => {
    expect(parseCloseCode(4401, 'INVALID_CREDENTIAL')).toBe('INVALID_CREDENTIAL');
    expect(parseCloseCode(4401, 'INVALID_CREDENTIAL: re-registered elsewhere')).toBe('INVALID_CREDENTIAL');
    expect(parseCloseCode(4401, 'SHUTTING_DOWN')).toBe('UNAUTHENTICATED');
    expect(parseCloseCode(4401, 'bye')).toBe('UNAUTHENTICATED');
  });

  it('relies on entries sharing a close code agreeing on reconnect', () => {
    // The client decides whether to reconnect from a close code alone when no error frame came first.
    const byCloseCode = new Map<number, boolean>();
    for (const code of Object.keys(ERROR_CATALOGUE) as ErrorCode[]) {
      const { wsCloseCode, reconnect } = ERROR_CATALOGUE[code];
      expect(byCloseCode.get(wsCloseCode) ?? reconnect, `${code} (${wsCloseCode})`).toBe(reconnect);
      byCloseCode.set(wsCloseCode, reconnect);
    }
  });
});

describe('errorFromClose', () => {
  it('reports no error for a normal close, UNAVAILABLE for a lost network, PROTOCOL_VIOLATION otherwise', () => {
    expect(errorFromClose(1000, '')).toBeUndefined();
    expect(errorFromClose(1006, '')?.code).toBe('UNAVAILABLE');
    expect(errorFromClose(1001, 'going away')?.code).toBe('UNAVAILABLE');
    expect(errorFromClose(1002, '')?.code).toBe('PROTOCOL_VIOLATION');
    expect(errorFromClose(4404, '')?.code).toBe('APP_NOT_FOUND');
    expect(errorFromClose(4503, 'UNAVAILABLE')?.metadata.closeCode).toBe('4503');
  });
});

describe('errorFromRefusal', () => {
  it('takes the catalogue code of the body', () => {
    const error = errorFromRefusal(404, '{"code":"APP_NOT_FOUND","message":"no app 42"}');
    expect(error.code).toBe('APP_NOT_FOUND');
    expect(error.message).toBe('no app 42');
  });

  it('falls back on the HTTP status', () => {
    expect(errorFromRefusal(401, '').code).toBe('UNAUTHENTICATED');
    expect(errorFromRefusal(404, '<html>').code).toBe('UNIMPLEMENTED');
    expect(errorFromRefusal(429, '{"code":"NOT_A_CODE"}').code).toBe('RATE_LIMITED');
    expect(errorFromRefusal(502, '').code).toBe('UNAVAILABLE');
    expect(errorFromRefusal(500, '').code).toBe('INTERNAL');
    expect(errorFromRefusal(400, '').code).toBe('INVALID_ARGUMENT');
  });
});

describe('errorFromFrame', () => {
  it('keeps an unknown code in metadata', () => {
    expect(errorFromFrame('RATE_LIMITED', '').code).toBe('RATE_LIMITED');
    const error = errorFromFrame('SOMETHING_NEW', 'from a newer gateway');
    expect(error.code).toBe('INTERNAL');
    expect(error.metadata.serverCode).toBe('SOMETHING_NEW');
  });
});

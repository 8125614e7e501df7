import { describe, expect, it } from 'vitest';
import { parseOptions } from './options.js';

describe('pnpm bench options', () => {
  it('gives each service its own extra environment; --gateway-env is the gateway shorthand', () => {
    const options = parseOptions([
      'targeted',
      '--service-env',
      'dispatch:NODE_OPTIONS=--max-semi-space-size=32',
      '--service-env',
      'registry:LOG_LEVEL=info',
      '--gateway-env',
      'HEARTBEAT_INTERVAL_MS=600000',
      '--service-env',
      'gateway:A=b=c',
    ]);
    expect(options.serviceEnv).toEqual({
      dispatch: { NODE_OPTIONS: '--max-semi-space-size=32' },
      registry: { LOG_LEVEL: 'info' },
      // The value keeps everything after the first '='.
      gateway: { HEARTBEAT_INTERVAL_MS: '600000', A: 'b=c' },
    });
  });

  it('leaves the services alone without either option', () => {
    expect(parseOptions(['fanout']).serviceEnv).toBeUndefined();
  });

  it('refuses an entry without a known service or a KEY=VALUE, naming it', () => {
    expect(() => parseOptions(['targeted', '--service-env', 'tag:A=1'])).toThrow(
      '--service-env tag:A=1: expected SERVICE:KEY=VALUE, SERVICE one of gateway, dispatch, registry',
    );
    expect(() => parseOptions(['targeted', '--service-env', 'A=1'])).toThrow(
      /^--service-env A=1: expected SERVICE:KEY=VALUE/,
    );
    expect(() => parseOptions(['targeted', '--service-env', 'dispatch:=1'])).toThrow(
      /^--service-env dispatch:=1: expected/,
    );
    expect(() => parseOptions(['targeted', '--gateway-env', 'NOVALUE'])).toThrow(
      '--gateway-env NOVALUE: expected KEY=VALUE',
    );
  });
});

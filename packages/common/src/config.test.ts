import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, envField, parseEnv } from './config.js';

describe('parseEnv', () => {
  const schema = z.object({ OPS_PORT: envField.port(9100), BATCH_MS: envField.ms(50) });

  it('takes decimal ports, and the default when the variable is unset or blank', () => {
    expect(parseEnv(schema, {})).toEqual({ OPS_PORT: 9100, BATCH_MS: 50 });
    expect(parseEnv(schema, { OPS_PORT: '' })).toMatchObject({ OPS_PORT: 9100 });
    expect(parseEnv(schema, { OPS_PORT: '  ' })).toMatchObject({ OPS_PORT: 9100 });
    expect(parseEnv(schema, { OPS_PORT: '8080' })).toMatchObject({ OPS_PORT: 8080 });
    expect(parseEnv(schema, { OPS_PORT: '0' })).toMatchObject({ OPS_PORT: 0 });
  });

  it('refuses a port that is not 0 to 65535 in decimal digits, naming the variable and its value', () => {
    for (const value of ['0x1F90', '8080abc', '65536', '-1', '1e3', 'http']) {
      let thrown: unknown;
      try {
        parseEnv(schema, { OPS_PORT: value });
      } catch (error) {
        thrown = error;
      }
      expect(thrown, value).toBeInstanceOf(ConfigError);
      expect((thrown as ConfigError).message).toContain(
        `OPS_PORT: must be a port number, 0 to 65535 (got ${JSON.stringify(value)})`,
      );
    }
  });

  it('refuses a duration Node timers cannot wait (over 2^31 - 1 ms) instead of firing it every millisecond', () => {
    expect(parseEnv(schema, { BATCH_MS: String(2 ** 31 - 1) })).toMatchObject({ BATCH_MS: 2 ** 31 - 1 });
    expect(() => parseEnv(schema, { BATCH_MS: String(2 ** 31) })).toThrow(
      /BATCH_MS: must be at most 2147483647 \(24\.8 days\)/,
    );
  });

  it('refuses a duration below the least a setting works with', () => {
    const ttl = z.object({ TTL_MS: envField.ms(60_000, 3_000) });
    expect(parseEnv(ttl, { TTL_MS: '3000' })).toEqual({ TTL_MS: 3_000 });
    expect(() => parseEnv(ttl, { TTL_MS: '600' })).toThrow(/TTL_MS: must be at least 3000/);
    expect(() => parseEnv(schema, { BATCH_MS: '0' })).toThrow(/BATCH_MS: must be at least 1/);
  });
});

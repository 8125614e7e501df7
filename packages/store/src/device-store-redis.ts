import { PushdError } from '@pushd/common';
import { Platform } from '@pushd/proto';
import type { DeviceCounts, DeviceRecord, DeviceStore } from './device-store.js';
import type { RedisKeys } from './keys.js';
import { commandPerKey, redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';

export interface RedisDeviceStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
}

/** Device hash fields (short: there is one hash per registered device). `x` is the device index. */
const FIELDS = ['p', 'av', 'ov', 'lo', 'sv', 'a', 'ch', 'r', 'x'] as const;

/** Concurrent binds of one token are rare; each retry takes a higher version, so this is generous. */
const MAX_BIND_ATTEMPTS = 8;

/**
 * Devices on Redis. Three entities in three slots are involved, written in ordered single-slot steps:
 *
 * - The device hash (`{d:...}:dev`) is the source of truth: registration details, the bound account
 *   (`a`) and the version of that binding (`bv`).
 * - The account index (`{c:...}:tokens`, token -> bind version) is derived from it and may hold extra
 *   entries after a crash between steps. accountTokens therefore lists only tokens whose device record
 *   still names the account, and deletes the others (read-repair). Bind versions come from a per-app
 *   counter, so they never repeat even across re-registration, and index writes are conditional on them:
 *   a late step of an older bind can never remove the entry of a newer one. Entries are written before the
 *   device record names the account, so a bound token is never missing from its index.
 * - The app's covered-device counters (`{a:...}:devices`) are adjusted after the device step, from the
 *   transition that step observed atomically (created, platform changed, removed), so concurrent calls
 *   count each transition once. A crash between the two steps leaves a counter off by that one device
 *   (retrying the call does not repeat the transition); the device hashes remain the truth to recount from.
 * - Device indexes come from the app's counter (`x` in `{a:...}:devices`) in the app's slot, while the
 *   record is in the device's. The upsert script never writes a record without an index: for a new device
 *   (or a record that has none) it asks for one, the store takes the next number from the counter and runs
 *   the script again with it; the script keeps an index the record already has. A crash between the
 *   counter and the record, or a concurrent first registration of the same device, only leaves a number
 *   unused (a zero bit in every bitmap).
 */
export class RedisDeviceStore implements DeviceStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;

  constructor(options: RedisDeviceStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    defineScripts(this.redis);
  }

  async upsert(
    device: Omit<DeviceRecord, 'account' | 'index'>,
  ): Promise<{ created: boolean; device: DeviceRecord }> {
    const run = (candidate: string) =>
      redisCall(
        runScript(
          this.redis,
          'deviceUpsert',
          [this.keys.device(device.accessId, device.token)],
          [
            device.platform,
            device.appVersion,
            device.osVersion,
            device.locale,
            device.sdkVersion,
            device.credentialHash,
            device.registeredAtMs,
            candidate,
          ],
        ),
      ) as Promise<[number, string?, string?, string?, string?]>;
    // Re-registrations (the common case) have an index: one round trip. A new device takes three.
    let reply = await run('');
    if (reply[0] === 2) {
      const taken = await redisCall(this.redis.hincrby(this.keys.deviceCounts(device.accessId), 'x', 1));
      reply = await run(String(taken - 1));
    }
    const [created, previousPlatform = '', registeredAtMs = '0', account = '', index = '-1'] = reply;
    const platform = String(device.platform);
    const deltas: (string | number)[] = [];
    if (created === 1) deltas.push('t', 1, `p${platform}`, 1);
    else if (previousPlatform !== '' && previousPlatform !== platform) {
      deltas.push(`p${previousPlatform}`, -1, `p${platform}`, 1);
    }
    if (deltas.length > 0) {
      await redisCall(runScript(this.redis, 'hashIncr', [this.keys.deviceCounts(device.accessId)], deltas));
    }
    return {
      created: created === 1,
      device: { ...device, account, registeredAtMs: Number(registeredAtMs), index: Number(index) },
    };
  }

  async getMany(accessId: number, tokens: string[]): Promise<(DeviceRecord | undefined)[]> {
    const replies = await commandPerKey(
      tokens.map((token) => this.keys.device(accessId, token)),
      (key) => this.redis.hmget(key, ...FIELDS),
    );
    return tokens.map((token, i) => {
      const values = replies[i]!;
      return toRecord(accessId, token, Object.fromEntries(FIELDS.map((field, f) => [field, values[f]])));
    });
  }

  async get(accessId: number, token: string): Promise<DeviceRecord | undefined> {
    const values = await redisCall(this.redis.hmget(this.keys.device(accessId, token), ...FIELDS));
    return toRecord(accessId, token, Object.fromEntries(FIELDS.map((field, i) => [field, values[i]])));
  }

  async remove(accessId: number, token: string, index?: number): Promise<DeviceRecord | undefined> {
    const reply = (await redisCall(
      runScript(
        this.redis,
        'deviceRemove',
        [this.keys.device(accessId, token)],
        [index === undefined ? '' : index],
      ),
    )) as string[] | null;
    if (!reply) return undefined;
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < reply.length; i += 2) fields[reply[i]!] = reply[i + 1]!;
    const record = toRecord(accessId, token, fields);
    if (!record) return undefined;
    if (record.account !== '') {
      await redisCall(
        runScript(
          this.redis,
          'accountDelete',
          [this.keys.accountTokens(accessId, record.account)],
          [token, fields.bv ?? '0'],
        ),
      );
    }
    await redisCall(
      runScript(
        this.redis,
        'hashIncr',
        [this.keys.deviceCounts(accessId)],
        ['t', -1, `p${record.platform}`, -1],
      ),
    );
    return record;
  }

  async setAccount(
    accessId: number,
    token: string,
    account: string,
  ): Promise<{ previous: string } | undefined> {
    const deviceKey = this.keys.device(accessId, token);
    for (let attempt = 0; attempt < MAX_BIND_ATTEMPTS; attempt++) {
      const version = await redisCall(this.redis.hincrby(this.keys.idSeq(accessId), 'b', 1));
      const indexKey = account === '' ? undefined : this.keys.accountTokens(accessId, account);
      // 1. Index first: once the record names the account, the token is already listed.
      if (indexKey) await redisCall(runScript(this.redis, 'accountPut', [indexKey], [token, version]));
      // 2. The record: the binding takes effect here.
      const reply = (await redisCall(runScript(this.redis, 'deviceBind', [deviceKey], [account, version]))) as
        | [number, string]
        | null;
      if (!reply || reply[0] === 1) {
        // Not registered, or a newer bind won: withdraw step 1 (read-repair would, later).
        if (indexKey) await redisCall(runScript(this.redis, 'accountDelete', [indexKey], [token, version]));
        if (!reply) return undefined;
        continue;
      }
      const previous = reply[1];
      // 3. Leave the previous account's index, unless a newer bind put the token back there.
      if (previous !== '' && previous !== account) {
        await redisCall(
          runScript(
            this.redis,
            'accountDelete',
            [this.keys.accountTokens(accessId, previous)],
            [token, version],
          ),
        );
      }
      return { previous };
    }
    throw new PushdError(
      'UNAVAILABLE',
      `binding token ${token} lost ${MAX_BIND_ATTEMPTS} races in a row; retry`,
    );
  }

  async accountTokens(accessId: number, account: string): Promise<string[]> {
    if (account === '') return [];
    const indexKey = this.keys.accountTokens(accessId, account);
    const index = await redisCall(this.redis.hgetall(indexKey));
    const tokens = Object.keys(index);
    if (tokens.length === 0) return [];
    const records = await commandPerKey(
      tokens.map((token) => this.keys.device(accessId, token)),
      (key) => this.redis.hmget(key, 'a', 'bv'),
    );
    const bound: string[] = [];
    const stale: [string, string][] = [];
    tokens.forEach((token, i) => {
      const [boundTo, bindVersion] = records[i] as [string | null, string | null];
      const indexVersion = index[token]!;
      if (boundTo === account) bound.push(token);
      // A record at a lower version than the entry means that bind is still in flight: leave it.
      else if (boundTo === null || Number(bindVersion ?? 0) >= Number(indexVersion))
        stale.push([token, indexVersion]);
    });
    if (stale.length > 0) {
      await commandPerKey(
        stale.map(() => indexKey),
        (key, i) => {
          const [token, version] = stale[i]!;
          return runScript(this.redis, 'accountDelete', [key], [token, version]);
        },
      );
    }
    return bound;
  }

  async count(accessId: number): Promise<DeviceCounts> {
    const [total, android, ios] = await redisCall(
      this.redis.hmget(
        this.keys.deviceCounts(accessId),
        't',
        `p${Platform.PLATFORM_ANDROID}`,
        `p${Platform.PLATFORM_IOS}`,
      ),
    );
    return { total: Number(total ?? 0), android: Number(android ?? 0), ios: Number(ios ?? 0) };
  }
}

function toRecord(
  accessId: number,
  token: string,
  fields: Record<string, string | null | undefined>,
): DeviceRecord | undefined {
  if (fields.r == null) return undefined;
  return {
    accessId,
    token,
    platform: Number(fields.p ?? 0) as Platform,
    appVersion: fields.av ?? '',
    osVersion: fields.ov ?? '',
    locale: fields.lo ?? '',
    sdkVersion: fields.sv ?? '',
    account: fields.a ?? '',
    credentialHash: fields.ch ?? '',
    registeredAtMs: Number(fields.r),
    // The upsert script writes `x` with the record; -1 would only be a record from before indexes existed.
    index: fields.x == null ? -1 : Number(fields.x),
  };
}

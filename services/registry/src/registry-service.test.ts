import { type Bus, MemoryBus, streams, subjects, withDurablePublish } from '@pushd/bus';
import { ManualClock, PushdError, silentLogger } from '@pushd/common';
import {
  type AuthenticateDeviceRequest,
  AuthenticateDevicesResponse,
  type Event,
  EventBatch,
  EventType,
  Platform,
  type RegisterDeviceRequest,
} from '@pushd/proto';
import {
  basicAuthorization,
  bearerAuthorization,
  type CallContext,
  callContext,
  fromBatchResult,
  MAX_BATCH_ITEMS,
} from '@pushd/rpc';
import { createMemoryStores } from '@pushd/store';
import { waitFor } from '@pushd/testkit';
import { describe, expect, it } from 'vitest';
import { RegistryService } from './registry-service.js';

const CLUSTER_TOKEN = 'registry-unit-test-cluster-token';

/** The context a handler gets for a call with this `authorization` metadata (none when undefined). */
const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));

/** A valid device id: 16 to 128 characters of [A-Za-z0-9_-]. */
const deviceId = (n: number) => `device_${String(n).padStart(12, '0')}`;

interface TestApp {
  accessId: number;
  accessKey: string;
  secretKey: string;
  /** Call context with this app's credentials. */
  auth: () => CallContext;
}

function setup(options: { bus?: Bus } = {}) {
  const clock = new ManualClock();
  const stores = createMemoryStores({ clock });
  const bus = options.bus ?? new MemoryBus({ streams: [streams.events] });
  const service = new RegistryService({
    apps: stores.apps,
    devices: stores.devices,
    bus,
    clusterToken: CLUSTER_TOKEN,
    logger: silentLogger(),
    clock,
  });
  const h = service.handlers();

  const createApp = async (name = 'demo'): Promise<TestApp> => {
    const created = await h.createApp({ name }, cluster());
    const accessId = created.app?.accessId ?? 0;
    return {
      accessId,
      accessKey: created.accessKey,
      secretKey: created.secretKey,
      auth: () => callContext(basicAuthorization(accessId, created.secretKey)),
    };
  };

  const registerRequest = (
    app: TestApp,
    id: string,
    fields: Partial<RegisterDeviceRequest> = {},
  ): RegisterDeviceRequest => ({
    accessId: app.accessId,
    accessKey: app.accessKey,
    deviceId: id,
    platform: Platform.PLATFORM_ANDROID,
    appVersion: '3.2.0',
    osVersion: '14',
    locale: 'zh-CN',
    sdkVersion: 'ts/0.1.0',
    ...fields,
  });

  const register = (app: TestApp, id: string, fields: Partial<RegisterDeviceRequest> = {}) =>
    h.registerDevice(registerRequest(app, id, fields), cluster());

  /** Registers and returns the token. */
  const registerToken = async (app: TestApp, id: string, platform = Platform.PLATFORM_ANDROID) =>
    (await register(app, id, { platform })).device?.token ?? '';

  return { clock, stores, bus, h, createApp, registerRequest, register, registerToken };
}

/** Decoded events published on the registry's event subject. */
/** UNREGISTERED events the registry announces (every registration also announces a REGISTERED one). */
function recordRegistryEvents(bus: Bus): Event[] {
  const events: Event[] = [];
  bus.subscribe(subjects.events('registry'), (data) =>
    events.push(
      ...EventBatch.decode(data).events.filter((e) => e.type === EventType.EVENT_TYPE_UNREGISTERED),
    ),
  );
  return events;
}

describe('RegistryService.createApp', () => {
  it('creates an app with the cluster token and returns its keys once', async () => {
    const { h, clock } = setup();
    const created = await h.createApp({ name: '  Shop  ' }, cluster());
    expect(created.app).toEqual({ accessId: 1_500_000_001, name: 'Shop', createdAtMs: clock.now() });
    expect(created.accessKey).toMatch(/^A[A-Z0-9]+$/);
    expect(created.secretKey.length).toBeGreaterThanOrEqual(32);

    const second = await h.createApp({ name: 'Other' }, cluster());
    expect(second.app?.accessId).toBe(1_500_000_002);
    expect(second.accessKey).not.toBe(created.accessKey);
    expect(second.secretKey).not.toBe(created.secretKey);

    // The keys work: access key and secret key are each verified, wrong ones are refused.
    const accessId = created.app?.accessId ?? 0;
    await expect(
      h.verifyApp({ accessId, key: { $case: 'accessKey', value: created.accessKey } }, cluster()),
    ).resolves.toMatchObject({ app: { accessId, name: 'Shop' } });
    await expect(
      h.verifyApp({ accessId, key: { $case: 'secretKey', value: created.secretKey } }, cluster()),
    ).resolves.toMatchObject({ app: { accessId } });
    await expect(
      h.verifyApp({ accessId, key: { $case: 'secretKey', value: second.secretKey } }, cluster()),
    ).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(
      h.verifyApp({ accessId, key: { $case: 'accessKey', value: second.accessKey } }, cluster()),
    ).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
  });

  it('needs the cluster token: app credentials are PERMISSION_DENIED, none or a wrong token UNAUTHENTICATED', async () => {
    const { h, createApp } = setup();
    const app = await createApp();
    await expect(h.createApp({ name: 'sneaky' }, app.auth())).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    await expect(h.createApp({ name: 'anonymous' }, callContext())).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    await expect(
      h.createApp({ name: 'guess' }, callContext(bearerAuthorization('not-the-cluster-token'))),
    ).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(
      h.createApp({ name: 'wrong secret' }, callContext(basicAuthorization(app.accessId, 'wrong-secret'))),
    ).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    // Nothing was created by the refused calls: the next app takes the next id.
    expect((await createApp('next')).accessId).toBe(app.accessId + 1);
  });

  it.each([
    ['empty', ''],
    ['blank', '   '],
    ['65 characters', 'n'.repeat(65)],
  ])('refuses a name that is %s with INVALID_ARGUMENT on field name', async (_what, name) => {
    const { h } = setup();
    const refused = h.createApp({ name }, cluster());
    await expect(refused).rejects.toBeInstanceOf(PushdError);
    await expect(refused).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'name' } });
  });

  it('accepts a name of 64 characters', async () => {
    const { h } = setup();
    await expect(h.createApp({ name: 'n'.repeat(64) }, cluster())).resolves.toMatchObject({
      app: { name: 'n'.repeat(64) },
    });
  });
});

describe('RegistryService.registerDevice', () => {
  it('registers a device: a 40-hex token, a credential that authenticates, created=true', async () => {
    const { h, createApp, register, clock } = setup();
    const app = await createApp();
    const registered = await register(app, deviceId(1));
    expect(registered.created).toBe(true);
    expect(registered.device).toMatchObject({
      accessId: app.accessId,
      token: expect.stringMatching(/^[0-9a-f]{40}$/),
      platform: Platform.PLATFORM_ANDROID,
      appVersion: '3.2.0',
      osVersion: '14',
      locale: 'zh-CN',
      sdkVersion: 'ts/0.1.0',
      account: '',
      registeredAtMs: clock.now(),
    });
    const token = registered.device?.token ?? '';
    await expect(
      h.authenticateDevice({ accessId: app.accessId, token, credential: registered.credential }, cluster()),
    ).resolves.toMatchObject({ device: { token, platform: Platform.PLATFORM_ANDROID } });
  });

  it('refuses a wrong access key with UNAUTHENTICATED and an unknown app with APP_NOT_FOUND', async () => {
    const { createApp, register, registerRequest, h } = setup();
    const app = await createApp();
    const other = await createApp('other');
    await expect(register(app, deviceId(1), { accessKey: other.accessKey })).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    await expect(register(app, deviceId(1), { accessKey: '' })).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    await expect(
      h.registerDevice({ ...registerRequest(app, deviceId(1)), accessId: 1_999_999_999 }, cluster()),
    ).rejects.toMatchObject({ code: 'APP_NOT_FOUND' });
    // Nothing was registered by the refused calls.
    await expect(h.countDevices({ accessId: app.accessId }, cluster())).resolves.toEqual({
      total: 0,
      android: 0,
      ios: 0,
    });
  });

  it('is a cluster-only method: app credentials are PERMISSION_DENIED', async () => {
    const { h, createApp, registerRequest } = setup();
    const app = await createApp();
    await expect(h.registerDevice(registerRequest(app, deviceId(1)), app.auth())).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
  });

  it.each([
    ['15 characters', 'a'.repeat(15)],
    ['129 characters', 'a'.repeat(129)],
    ['a dot', 'abcdefghij.klmnopq'],
    ['a space', 'abcdefghij klmnopq'],
    ['a slash', 'abcdefghij/klmnopq'],
    ['non-ASCII letters', 'abcdefghijklmnopé'],
    ['empty', ''],
  ])('refuses a device_id with %s (INVALID_ARGUMENT, field device_id)', async (_what, id) => {
    const { createApp, register } = setup();
    const app = await createApp();
    await expect(register(app, id)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'device_id' },
    });
  });

  it('accepts device ids of 16 and 128 characters of [A-Za-z0-9_-]', async () => {
    const { createApp, register } = setup();
    const app = await createApp();
    await expect(register(app, 'aZ09_-aZ09_-aZ09')).resolves.toMatchObject({ created: true });
    await expect(register(app, 'x'.repeat(128))).resolves.toMatchObject({ created: true });
  });

  it.each([
    ['PLATFORM_UNSPECIFIED', Platform.PLATFORM_UNSPECIFIED],
    ['an unknown number', 7 as Platform],
    ['a negative number', -1 as Platform],
  ])('refuses platform %s (INVALID_ARGUMENT, field platform)', async (_what, platform) => {
    const { createApp, register } = setup();
    const app = await createApp();
    await expect(register(app, deviceId(1), { platform })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'platform' },
    });
  });

  it.each([
    ['app_version', 'appVersion'],
    ['os_version', 'osVersion'],
    ['locale', 'locale'],
    ['sdk_version', 'sdkVersion'],
  ] as const)('refuses an over-long or control-character %s, naming the field', async (field, key) => {
    const { createApp, register, h } = setup();
    const app = await createApp();
    for (const bad of ['v'.repeat(65), 'line\nbreak', 'nul\u0000', 'bell\u0007', 'del\u007f', 'c1\u0085']) {
      await expect(register(app, deviceId(1), { [key]: bad }), JSON.stringify(bad)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        metadata: { field },
      });
    }
    await expect(h.countDevices({ accessId: app.accessId }, cluster())).resolves.toMatchObject({ total: 0 });
    // At the limit, and empty, are fine.
    await expect(register(app, deviceId(1), { [key]: 'v'.repeat(64) })).resolves.toMatchObject({
      created: true,
    });
    await expect(register(app, deviceId(2), { [key]: '' })).resolves.toMatchObject({ created: true });
  });

  it('gives the same token to the same device_id, with created=false and a new credential that replaces the old', async () => {
    const { h, createApp, register, clock } = setup();
    const app = await createApp();
    const first = await register(app, deviceId(1), { appVersion: '1.0' });
    const registeredAtMs = clock.now();
    clock.advance(60_000);
    const second = await register(app, deviceId(1), { appVersion: '2.0' });

    expect(second.created).toBe(false);
    expect(second.device?.token).toBe(first.device?.token);
    expect(second.credential).not.toBe(first.credential);
    // Details are updated, the first registration time is kept.
    expect(second.device).toMatchObject({ appVersion: '2.0', registeredAtMs });

    const token = first.device?.token ?? '';
    const oldCredential = h.authenticateDevice(
      { accessId: app.accessId, token, credential: first.credential },
      cluster(),
    );
    await expect(oldCredential).rejects.toBeInstanceOf(PushdError);
    await expect(oldCredential).rejects.toMatchObject({ code: 'INVALID_CREDENTIAL' });
    await expect(
      h.authenticateDevice({ accessId: app.accessId, token, credential: second.credential }, cluster()),
    ).resolves.toMatchObject({ device: { token, appVersion: '2.0' } });
    // Still one covered device.
    await expect(h.countDevices({ accessId: app.accessId }, cluster())).resolves.toMatchObject({ total: 1 });
  });

  it('gives different tokens to the same device_id in different apps, and different device ids different tokens', async () => {
    const { createApp, registerToken } = setup();
    const a = await createApp('a');
    const b = await createApp('b');
    const inA = await registerToken(a, deviceId(1));
    const inB = await registerToken(b, deviceId(1));
    const otherInA = await registerToken(a, deviceId(2));
    expect(inA).toMatch(/^[0-9a-f]{40}$/);
    expect(inB).toMatch(/^[0-9a-f]{40}$/);
    expect(inA).not.toBe(inB);
    expect(otherInA).not.toBe(inA);
  });
});

describe('RegistryService.authenticateDevice', () => {
  it('gives the same INVALID_CREDENTIAL answer for an unknown token and for a wrong credential', async () => {
    const { h, createApp, register, registerToken } = setup();
    const app = await createApp();
    const registered = await register(app, deviceId(1));
    const token = registered.device?.token ?? '';
    const otherCredential = (await register(app, deviceId(2))).credential;

    const wrongCredential = await h
      .authenticateDevice({ accessId: app.accessId, token, credential: otherCredential }, cluster())
      .catch((error: unknown) => error);
    const unknownToken = await h
      .authenticateDevice(
        { accessId: app.accessId, token: 'f'.repeat(40), credential: registered.credential },
        cluster(),
      )
      .catch((error: unknown) => error);
    const emptyCredential = await h
      .authenticateDevice({ accessId: app.accessId, token, credential: '' }, cluster())
      .catch((error: unknown) => error);

    for (const error of [wrongCredential, unknownToken, emptyCredential]) {
      expect(error).toBeInstanceOf(PushdError);
      expect(error).toMatchObject({ code: 'INVALID_CREDENTIAL' });
    }
    // Not even the message tells a known token from an unknown one.
    expect((unknownToken as PushdError).message).toBe((wrongCredential as PushdError).message);
    expect((unknownToken as PushdError).metadata).toEqual((wrongCredential as PushdError).metadata);

    // A token of another app does not authenticate in this one, even with its own credential.
    const b = await createApp('b');
    const inB = await register(b, deviceId(1));
    await expect(
      h.authenticateDevice(
        { accessId: app.accessId, token: inB.device?.token ?? '', credential: inB.credential },
        cluster(),
      ),
    ).rejects.toMatchObject({ code: 'INVALID_CREDENTIAL' });
    expect(await registerToken(app, deviceId(3))).not.toBe(inB.device?.token);
  });

  it('is a cluster-only method', async () => {
    const { h, createApp, register } = setup();
    const app = await createApp();
    const registered = await register(app, deviceId(1));
    await expect(
      h.authenticateDevice(
        { accessId: app.accessId, token: registered.device?.token ?? '', credential: registered.credential },
        app.auth(),
      ),
    ).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
  });
});

describe('RegistryService.authenticateDevices', () => {
  /** A settled result compared by what a caller sees: the response, or the error's code, message, metadata. */
  const seen = (settled: PromiseSettledResult<unknown>) =>
    settled.status === 'fulfilled'
      ? { ok: settled.value }
      : {
          code: (settled.reason as PushdError).code,
          message: (settled.reason as PushdError).message,
          metadata: (settled.reason as PushdError).metadata,
        };

  it('answers each request as the single call would, in order: good ones succeed, bad ones fail alone', async () => {
    const { h, createApp, register } = setup();
    const a = await createApp('a');
    const b = await createApp('b');
    const inA = await register(a, deviceId(1));
    const alsoInA = await register(a, deviceId(2));
    const inB = await register(b, deviceId(1));
    const tokenOf = (registered: typeof inA) => registered.device?.token ?? '';
    const requests: AuthenticateDeviceRequest[] = [
      { accessId: a.accessId, token: tokenOf(inA), credential: inA.credential },
      // A wrong credential, an unknown token, an empty one, another app's token: INVALID_CREDENTIAL each.
      { accessId: a.accessId, token: tokenOf(alsoInA), credential: inA.credential },
      { accessId: a.accessId, token: 'f'.repeat(40), credential: inA.credential },
      { accessId: a.accessId, token: '', credential: inA.credential },
      { accessId: a.accessId, token: tokenOf(inB), credential: inB.credential },
      { accessId: b.accessId, token: tokenOf(inB), credential: inB.credential },
      // No such app: APP_NOT_FOUND; no access id: INVALID_ARGUMENT.
      { accessId: 1_999_999_999, token: tokenOf(inA), credential: inA.credential },
      { accessId: 0, token: tokenOf(inA), credential: inA.credential },
      // The same device twice in one batch is answered twice.
      { accessId: a.accessId, token: tokenOf(alsoInA), credential: alsoInA.credential },
      { accessId: a.accessId, token: tokenOf(alsoInA), credential: alsoInA.credential },
    ];
    const response = await h.authenticateDevices({ requests }, cluster());
    // As the gateway gets it: through the wire format.
    const results = AuthenticateDevicesResponse.decode(AuthenticateDevicesResponse.encode(response).finish())
      .results.map(fromBatchResult)
      .map(seen);
    const singles = await Promise.all(
      requests.map((request) =>
        h.authenticateDevice(request, cluster()).then(
          (value): PromiseSettledResult<unknown> => ({ status: 'fulfilled', value }),
          (reason: unknown): PromiseSettledResult<unknown> => ({ status: 'rejected', reason }),
        ),
      ),
    );
    expect(results).toEqual(singles.map(seen));
    expect(results.map((result) => ('ok' in result ? 'OK' : result.code))).toEqual([
      'OK',
      'INVALID_CREDENTIAL',
      'INVALID_CREDENTIAL',
      'INVALID_CREDENTIAL',
      'INVALID_CREDENTIAL',
      'OK',
      'APP_NOT_FOUND',
      'INVALID_ARGUMENT',
      'OK',
      'OK',
    ]);
    expect(results[0]).toMatchObject({ ok: { device: { token: tokenOf(inA), accessId: a.accessId } } });
    expect(results[5]).toMatchObject({ ok: { device: { token: tokenOf(inB), accessId: b.accessId } } });
  });

  it('reads the devices of each app together: one app lookup and one many-device read per app', async () => {
    const { h, stores, createApp, register } = setup();
    const apps = [await createApp('a'), await createApp('b')];
    const requests: AuthenticateDeviceRequest[] = [];
    for (const [n, app] of [...apps, ...apps, ...apps].entries()) {
      const registered = await register(app, deviceId(n));
      requests.push({
        accessId: app.accessId,
        token: registered.device?.token ?? '',
        credential: registered.credential,
      });
    }
    const reads = { apps: 0, devices: 0, manyDevices: 0 };
    const { get: getApp } = stores.apps;
    const { get: getDevice, getMany } = stores.devices;
    stores.apps.get = (...args) => {
      reads.apps++;
      return getApp.apply(stores.apps, args);
    };
    stores.devices.get = (...args) => {
      reads.devices++;
      return getDevice.apply(stores.devices, args);
    };
    stores.devices.getMany = (...args) => {
      reads.manyDevices++;
      return getMany.apply(stores.devices, args);
    };
    const { results } = await h.authenticateDevices({ requests }, cluster());
    expect(results.map((result) => result.outcome?.$case)).toEqual(requests.map(() => 'response'));
    expect(reads).toEqual({ apps: 2, devices: 0, manyDevices: 2 });
  });

  it('fails as a whole, with the error of the store, when the store cannot be read', async () => {
    const { h, stores, createApp, register } = setup();
    const app = await createApp();
    const registered = await register(app, deviceId(1));
    stores.devices.getMany = async () => {
      throw new PushdError('UNAVAILABLE', 'redis: connection lost (test)');
    };
    await expect(
      h.authenticateDevices(
        {
          requests: [
            {
              accessId: app.accessId,
              token: registered.device?.token ?? '',
              credential: registered.credential,
            },
          ],
        },
        cluster(),
      ),
    ).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  it(`refuses an empty batch and one over ${MAX_BATCH_ITEMS} with INVALID_ARGUMENT, reading nothing`, async () => {
    const { h, stores, createApp, register } = setup();
    const app = await createApp();
    const registered = await register(app, deviceId(1));
    const request = {
      accessId: app.accessId,
      token: registered.device?.token ?? '',
      credential: registered.credential,
    };
    let reads = 0;
    const { getMany } = stores.devices;
    stores.devices.getMany = (...args) => {
      reads++;
      return getMany.apply(stores.devices, args);
    };
    await expect(h.authenticateDevices({ requests: [] }, cluster())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'requests' },
    });
    await expect(
      h.authenticateDevices({ requests: Array(MAX_BATCH_ITEMS + 1).fill(request) }, cluster()),
    ).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: `requests: at most ${MAX_BATCH_ITEMS} per call (got ${MAX_BATCH_ITEMS + 1})`,
      metadata: { field: 'requests', limit: String(MAX_BATCH_ITEMS) },
    });
    expect(reads).toBe(0);
    const { results } = await h.authenticateDevices(
      { requests: Array(MAX_BATCH_ITEMS).fill(request) },
      cluster(),
    );
    expect(results).toHaveLength(MAX_BATCH_ITEMS);
    expect(results.every((result) => result.outcome?.$case === 'response')).toBe(true);
  });

  it('is a cluster-only method', async () => {
    const { h, createApp, register } = setup();
    const app = await createApp();
    const registered = await register(app, deviceId(1));
    const requests = [
      { accessId: app.accessId, token: registered.device?.token ?? '', credential: registered.credential },
    ];
    await expect(h.authenticateDevices({ requests }, app.auth())).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    await expect(h.authenticateDevices({ requests }, callContext())).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
  });
});

describe('RegistryService accounts', () => {
  it('binds a token to one account at a time: the last bind wins and the token leaves the previous account', async () => {
    const { h, createApp, registerToken } = setup();
    const app = await createApp();
    const token = await registerToken(app, deviceId(1));
    const list = async (account: string) =>
      (await h.listAccountTokens({ accessId: 0, account }, app.auth())).tokens;

    await expect(h.bindAccount({ accessId: 0, token, account: 'alice' }, app.auth())).resolves.toEqual({
      previousAccount: '',
    });
    expect(await list('alice')).toEqual([token]);

    await expect(h.bindAccount({ accessId: 0, token, account: 'bob' }, app.auth())).resolves.toEqual({
      previousAccount: 'alice',
    });
    expect(await list('alice')).toEqual([]);
    expect(await list('bob')).toEqual([token]);
    await expect(h.getDevice({ accessId: 0, token }, app.auth())).resolves.toMatchObject({
      device: { account: 'bob' },
    });

    // Binding to the same account again changes nothing.
    await expect(h.bindAccount({ accessId: 0, token, account: 'bob' }, app.auth())).resolves.toEqual({
      previousAccount: 'bob',
    });
    expect(await list('bob')).toEqual([token]);
  });

  it('unbinds, and an account keeps its other tokens', async () => {
    const { h, createApp, registerToken } = setup();
    const app = await createApp();
    const tokens: string[] = [];
    for (let n = 0; n < 25; n++) {
      const token = await registerToken(
        app,
        deviceId(n),
        n % 2 ? Platform.PLATFORM_IOS : Platform.PLATFORM_ANDROID,
      );
      tokens.push(token);
      await h.bindAccount({ accessId: app.accessId, token, account: 'family' }, cluster());
    }
    const list = async () =>
      (await h.listAccountTokens({ accessId: app.accessId, account: 'family' }, cluster())).tokens;
    expect((await list()).sort()).toEqual([...tokens].sort());

    const [first, second, ...rest] = tokens as [string, string, ...string[]];
    await expect(h.unbindAccount({ accessId: 0, token: first }, app.auth())).resolves.toEqual({
      previousAccount: 'family',
    });
    // Unbinding again: nothing was bound.
    await expect(h.unbindAccount({ accessId: 0, token: first }, app.auth())).resolves.toEqual({
      previousAccount: '',
    });
    await h.bindAccount({ accessId: 0, token: second, account: 'someone-else' }, app.auth());
    expect((await list()).sort()).toEqual([...rest].sort());
    await expect(h.getDevice({ accessId: 0, token: first }, app.auth())).resolves.toMatchObject({
      device: { account: '' },
    });
  });

  it.each([
    ['empty', ''],
    ['129 characters', 'a'.repeat(129)],
    ['a newline', 'ali\nce'],
    ['a NUL', 'alice\u0000'],
    ['a tab', 'ali\tce'],
  ])('refuses an account name that is %s (INVALID_ARGUMENT, field account)', async (_what, account) => {
    const { h, createApp, registerToken } = setup();
    const app = await createApp();
    const token = await registerToken(app, deviceId(1));
    await expect(h.bindAccount({ accessId: 0, token, account }, app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'account' },
    });
    await expect(h.getDevice({ accessId: 0, token }, app.auth())).resolves.toMatchObject({
      device: { account: '' },
    });
  });

  it('accepts an account of 128 characters and any printable Unicode', async () => {
    const { h, createApp, registerToken } = setup();
    const app = await createApp();
    const token = await registerToken(app, deviceId(1));
    for (const account of ['a'.repeat(128), '张三@example.com', 'user {1}: ✓']) {
      await h.bindAccount({ accessId: 0, token, account }, app.auth());
      await expect(h.listAccountTokens({ accessId: 0, account }, app.auth())).resolves.toEqual({
        tokens: [token],
      });
    }
  });

  it('answers TOKEN_NOT_FOUND for an unknown token, INVALID_ARGUMENT for none and for listing an empty account', async () => {
    const { h, createApp } = setup();
    const app = await createApp();
    const unknown = 'a'.repeat(40);
    await expect(
      h.bindAccount({ accessId: 0, token: unknown, account: 'alice' }, app.auth()),
    ).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND', metadata: { token: unknown } });
    await expect(h.unbindAccount({ accessId: 0, token: unknown }, app.auth())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(h.listAccountTokens({ accessId: 0, account: '' }, app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'account' },
    });
    await expect(h.listAccountTokens({ accessId: 0, account: 'alice' }, app.auth())).resolves.toEqual({
      tokens: [],
    });
    // No token is not an unknown one: INVALID_ARGUMENT naming the field, as every other call answers it.
    await expect(
      h.bindAccount({ accessId: 0, token: '', account: 'alice' }, app.auth()),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', metadata: { field: 'token' } });
    await expect(h.unbindAccount({ accessId: 0, token: '' }, app.auth())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      metadata: { field: 'token' },
    });
  });

  it('keeps the binding when the device registers again', async () => {
    const { h, createApp, register, registerToken } = setup();
    const app = await createApp();
    const token = await registerToken(app, deviceId(1));
    await h.bindAccount({ accessId: 0, token, account: 'alice' }, app.auth());
    await expect(register(app, deviceId(1))).resolves.toMatchObject({
      created: false,
      device: { account: 'alice' },
    });
    await expect(h.listAccountTokens({ accessId: 0, account: 'alice' }, app.auth())).resolves.toEqual({
      tokens: [token],
    });
  });
});

describe('RegistryService.unregisterDevice', () => {
  it('removes the device and its binding, decrements the covered devices by platform, and announces it', async () => {
    const { h, createApp, register, registerToken, bus, clock } = setup();
    const events = recordRegistryEvents(bus);
    const app = await createApp();
    const android = await registerToken(app, deviceId(1), Platform.PLATFORM_ANDROID);
    await registerToken(app, deviceId(2), Platform.PLATFORM_ANDROID);
    const ios = await registerToken(app, deviceId(3), Platform.PLATFORM_IOS);
    await h.bindAccount({ accessId: 0, token: ios, account: 'alice' }, app.auth());
    await h.bindAccount({ accessId: 0, token: android, account: 'alice' }, app.auth());
    await expect(h.countDevices({ accessId: 0 }, app.auth())).resolves.toEqual({
      total: 3,
      android: 2,
      ios: 1,
    });

    clock.advance(1_000);
    await expect(h.unregisterDevice({ accessId: 0, token: ios }, app.auth())).resolves.toEqual({});

    await expect(h.countDevices({ accessId: 0 }, app.auth())).resolves.toEqual({
      total: 2,
      android: 2,
      ios: 0,
    });
    await expect(h.listAccountTokens({ accessId: 0, account: 'alice' }, app.auth())).resolves.toEqual({
      tokens: [android],
    });
    await expect(h.getDevice({ accessId: 0, token: ios }, app.auth())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(h.unregisterDevice({ accessId: 0, token: ios }, app.auth())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });

    await waitFor(() => events.length >= 1, 'the UNREGISTERED event');
    expect(events).toEqual([
      expect.objectContaining({
        type: EventType.EVENT_TYPE_UNREGISTERED,
        accessId: app.accessId,
        token: ios,
        platform: Platform.PLATFORM_IOS,
        atMs: clock.now(),
      }),
    ]);

    // The device can come back: same token, a new registration.
    const again = await register(app, deviceId(3), { platform: Platform.PLATFORM_IOS });
    expect(again.created).toBe(true);
    expect(again.device?.token).toBe(ios);
    expect(again.device?.account).toBe('');
    await expect(h.countDevices({ accessId: 0 }, app.auth())).resolves.toEqual({
      total: 3,
      android: 2,
      ios: 1,
    });
  });

  it('stores the event in the durable stream, where consumers that were away find it', async () => {
    const bus = new MemoryBus({ streams: [streams.events] });
    const { h, createApp, registerToken } = setup({ bus });
    const app = await createApp();
    const token = await registerToken(app, deviceId(1));
    await h.unregisterDevice({ accessId: app.accessId, token }, cluster());

    // A consumer that starts after the call still gets the event.
    const consumed: Event[] = [];
    const consumer = bus.consume({
      stream: streams.events.name,
      consumer: 'late-consumer',
      handler: async (data) => {
        consumed.push(
          ...EventBatch.decode(data).events.filter((e) => e.type === EventType.EVENT_TYPE_UNREGISTERED),
        );
      },
    });
    try {
      await waitFor(() => consumed.length >= 1, 'the stored UNREGISTERED event');
      expect(consumed[0]).toMatchObject({ type: EventType.EVENT_TYPE_UNREGISTERED, token });
    } finally {
      await consumer.stop();
    }
  });

  it('can be retried after the event could not be stored, and the retry announces the unregistration', async () => {
    // The durable stream is unreachable for the first call. Dispatch and tag only learn of an
    // unregistration from this event: if it is never published, the device's tags and offline window
    // outlive it, and come back when the same device_id registers again (same token).
    const memory = new MemoryBus({ streams: [streams.events] });
    let failNext = false;
    const bus: Bus = withDurablePublish(memory, async (real, subject, data) => {
      if (failNext) {
        failNext = false;
        throw new PushdError('UNAVAILABLE', 'stream unreachable (test)');
      }
      return real(subject, data);
    });
    const { h, createApp, registerToken } = setup({ bus });
    const events = recordRegistryEvents(memory);
    const app = await createApp();
    const token = await registerToken(app, deviceId(1));

    failNext = true;
    await expect(h.unregisterDevice({ accessId: 0, token }, app.auth())).rejects.toMatchObject({
      code: 'UNAVAILABLE',
    });
    // Nothing changed: the device is still registered.
    await expect(h.getDevice({ accessId: 0, token }, app.auth())).resolves.toMatchObject({
      device: { token },
    });
    // UNAVAILABLE tells the caller to retry; the retry must complete the unregistration.
    await expect(h.unregisterDevice({ accessId: 0, token }, app.auth())).resolves.toEqual({});
    await waitFor(() => events.length >= 1, 'the UNREGISTERED event after the retry');
    expect(events[0]).toMatchObject({ type: EventType.EVENT_TYPE_UNREGISTERED, token });
  });

  it('a delayed unregister does not remove the registration the device made after another one', async () => {
    // The first call is held at its announcement (a slow stream) while its retry unregisters the device
    // and the device registers again (same token, a new index). When the first call goes on, the new
    // registration must stay: nobody would announce its end.
    const memory = new MemoryBus({ streams: [streams.events] });
    let hold = false;
    let release: (() => void) | undefined;
    const bus: Bus = withDurablePublish(memory, async (real, subject, data) => {
      if (hold) {
        hold = false;
        await new Promise<void>((resolve) => {
          release = resolve;
        });
      }
      return real(subject, data);
    });
    const { h, createApp, registerToken } = setup({ bus });
    const app = await createApp();
    const token = await registerToken(app, deviceId(1));
    hold = true;
    const delayed = h.unregisterDevice({ accessId: 0, token }, app.auth());
    await waitFor(() => release !== undefined, 'the first call held at its announcement');
    await h.unregisterDevice({ accessId: 0, token }, app.auth());
    expect(await registerToken(app, deviceId(1))).toBe(token);
    const registered = (await h.getDevice({ accessId: 0, token }, app.auth())).device;
    release?.();
    await expect(delayed).resolves.toEqual({});
    expect((await h.getDevice({ accessId: 0, token }, app.auth())).device).toEqual(registered);
  });
});

describe('RegistryService tenant isolation', () => {
  it('lets an app act only on its own access id: another id is PERMISSION_DENIED, 0 means its own', async () => {
    const { h, createApp, registerToken } = setup();
    const a = await createApp('a');
    const b = await createApp('b');
    const tokenA = await registerToken(a, deviceId(1));
    const tokenB = await registerToken(b, deviceId(2), Platform.PLATFORM_IOS);
    await h.bindAccount({ accessId: a.accessId, token: tokenA, account: 'alice' }, cluster());

    // B names A's access id: refused whatever the method.
    const asB = b.auth;
    const denied = [
      h.getDevice({ accessId: a.accessId, token: tokenA }, asB()),
      h.unregisterDevice({ accessId: a.accessId, token: tokenA }, asB()),
      h.bindAccount({ accessId: a.accessId, token: tokenA, account: 'mallory' }, asB()),
      h.unbindAccount({ accessId: a.accessId, token: tokenA }, asB()),
      h.listAccountTokens({ accessId: a.accessId, account: 'alice' }, asB()),
      h.countDevices({ accessId: a.accessId }, asB()),
    ];
    for (const attempt of denied) await expect(attempt).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });

    // B with access id 0 acts on B: A's token is not found there, and A's data is untouched.
    await expect(h.getDevice({ accessId: 0, token: tokenA }, asB())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(h.unregisterDevice({ accessId: 0, token: tokenA }, asB())).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
    await expect(
      h.bindAccount({ accessId: 0, token: tokenA, account: 'mallory' }, asB()),
    ).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    await expect(h.listAccountTokens({ accessId: 0, account: 'alice' }, asB())).resolves.toEqual({
      tokens: [],
    });
    await expect(h.countDevices({ accessId: 0 }, asB())).resolves.toEqual({ total: 1, android: 0, ios: 1 });
    await expect(h.getDevice({ accessId: 0, token: tokenB }, asB())).resolves.toMatchObject({
      device: { accessId: b.accessId, token: tokenB },
    });
    // B may also name itself explicitly.
    await expect(h.getDevice({ accessId: b.accessId, token: tokenB }, asB())).resolves.toMatchObject({
      device: { token: tokenB },
    });

    await expect(h.getDevice({ accessId: 0, token: tokenA }, a.auth())).resolves.toMatchObject({
      device: { accessId: a.accessId, account: 'alice' },
    });
    await expect(h.countDevices({ accessId: 0 }, a.auth())).resolves.toEqual({
      total: 1,
      android: 1,
      ios: 0,
    });
  });

  it('requires an access id from the cluster token, and refuses a wrong app secret', async () => {
    const { h, createApp, registerToken } = setup();
    const a = await createApp('a');
    const b = await createApp('b');
    const token = await registerToken(a, deviceId(1));
    await expect(h.getDevice({ accessId: 0, token }, cluster())).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(
      h.getDevice({ accessId: 0, token }, callContext(basicAuthorization(a.accessId, b.secretKey))),
    ).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(h.getDevice({ accessId: 0, token }, callContext())).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    await expect(h.getDevice({ accessId: a.accessId, token }, cluster())).resolves.toMatchObject({
      device: { token },
    });
  });
});

describe('RegistryService.countDevices', () => {
  it('counts covered devices by platform, following re-registration on another platform', async () => {
    const { h, createApp, registerToken } = setup();
    const app = await createApp();
    await registerToken(app, deviceId(1), Platform.PLATFORM_ANDROID);
    await registerToken(app, deviceId(2), Platform.PLATFORM_ANDROID);
    await registerToken(app, deviceId(3), Platform.PLATFORM_IOS);
    await expect(h.countDevices({ accessId: app.accessId }, cluster())).resolves.toEqual({
      total: 3,
      android: 2,
      ios: 1,
    });
    await registerToken(app, deviceId(2), Platform.PLATFORM_IOS);
    await expect(h.countDevices({ accessId: app.accessId }, cluster())).resolves.toEqual({
      total: 3,
      android: 1,
      ios: 2,
    });
    await expect(h.countDevices({ accessId: 1_999_999_999 }, cluster())).rejects.toMatchObject({
      code: 'APP_NOT_FOUND',
    });
  });
});

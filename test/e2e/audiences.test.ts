import { MessageType, Platform } from '@pushd/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientsFor, type TestApp, TestDevice } from '../support/clients.js';
import {
  ON_CLUSTERS,
  type SystemUnderTest,
  startEmbeddedSystem,
  startProcessSystem,
} from '../support/system.js';

// Targeted audiences end to end: token lists, accounts (last bind wins), account lists, platforms.
describe.each([
  ['separate processes on NATS and Redis', startProcessSystem],
  ON_CLUSTERS,
  ['embedded mode', startEmbeddedSystem],
] as const)('audiences: %s', (_mode, start) => {
  let system: SystemUnderTest;
  let clients: ReturnType<typeof clientsFor>;
  let app: TestApp;
  const devices: TestDevice[] = [];

  beforeAll(async () => {
    system = await start();
    clients = clientsFor(system);
    app = await clients.createApp('audiences');
  }, 90_000);

  afterAll(async () => {
    for (const device of devices) await device.client.close();
    clients?.close();
    await system?.stop();
  });

  const register = async (platform = Platform.PLATFORM_ANDROID) => {
    const device = await TestDevice.register(system, app, { platform });
    devices.push(device);
    return device;
  };

  const push = (audience: object, content: string, platform = Platform.PLATFORM_UNSPECIFIED) =>
    clients.forApp(app).dispatch.push({
      accessId: app.accessId,
      audience: { target: audience as never },
      message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content, customContent: {} },
      platform,
    });

  const contents = (device: TestDevice) => device.received.map((m) => m.message?.content);

  it('a token list reaches its registered devices and lists the others', async () => {
    const [a, b] = [await register(), await register(Platform.PLATFORM_IOS)];
    const unknown = '0'.repeat(40);
    const result = await push({ $case: 'tokenList', value: { tokens: [a.token, unknown, b.token] } }, 'list');
    expect(result).toMatchObject({ invalidTokens: [unknown], target: 2 });
    await a.waitForMessages(1);
    await b.waitForMessages(1);
    expect(contents(a)).toEqual(['list']);
    await expect(push({ $case: 'tokenList', value: { tokens: [unknown] } }, 'x')).rejects.toMatchObject({
      code: 'TOKEN_NOT_FOUND',
    });
  });

  it('an account reaches every device bound to it; binding elsewhere (last bind wins) or unregistering stops it', async () => {
    const { registry } = clients.forApp(app);
    const [phone, tablet, spare] = [
      await register(),
      await register(Platform.PLATFORM_IOS),
      await register(),
    ];
    for (const device of [phone, tablet, spare]) {
      await registry.bindAccount({ accessId: app.accessId, token: device.token, account: 'alice' });
    }
    expect((await push({ $case: 'account', value: 'alice' }, 'to alice')).target).toBe(3);
    for (const device of [phone, tablet, spare]) await device.waitForMessages(1);

    const rebound = await registry.bindAccount({
      accessId: app.accessId,
      token: tablet.token,
      account: 'bob',
    });
    expect(rebound.previousAccount).toBe('alice');
    await registry.unregisterDevice({ accessId: app.accessId, token: spare.token });
    expect((await push({ $case: 'account', value: 'alice' }, 'alice again')).target).toBe(1);
    expect((await push({ $case: 'account', value: 'bob' }, 'to bob')).target).toBe(1);
    await phone.waitForMessages(2);
    await tablet.waitForMessages(2);
    expect(contents(phone)).toEqual(['to alice', 'alice again']);
    expect(contents(tablet)).toEqual(['to alice', 'to bob']);
    await expect(push({ $case: 'account', value: 'nobody' }, 'x')).rejects.toMatchObject({
      code: 'ACCOUNT_NOT_FOUND',
    });
  });

  it('an account list reaches the devices of every account, restricted to a platform when asked', async () => {
    const { registry } = clients.forApp(app);
    const [carolAndroid, carolIos, daveIos] = [
      await register(),
      await register(Platform.PLATFORM_IOS),
      await register(Platform.PLATFORM_IOS),
    ];
    await registry.bindAccount({ accessId: app.accessId, token: carolAndroid.token, account: 'carol' });
    await registry.bindAccount({ accessId: app.accessId, token: carolIos.token, account: 'carol' });
    await registry.bindAccount({ accessId: app.accessId, token: daveIos.token, account: 'dave' });
    const result = await push(
      { $case: 'accountList', value: { accounts: ['carol', 'dave', 'erin'] } },
      'ios only',
      Platform.PLATFORM_IOS,
    );
    expect(result).toMatchObject({ unknownAccounts: ['erin'], target: 2 });
    await carolIos.waitForMessages(1);
    await daveIos.waitForMessages(1);
    const all = await push({ $case: 'accountList', value: { accounts: ['carol', 'dave'] } }, 'everyone');
    expect(all.target).toBe(3);
    await carolAndroid.waitForMessages(1);
    expect(contents(carolAndroid)).toEqual(['everyone']);
  });
});

import {
  DeviceClient,
  type DeviceClientOptions,
  generateDeviceId,
  type PushMessage,
} from '@pushd/device-sdk';
import {
  DispatchServiceService,
  MessageType,
  Platform,
  type PushRequest,
  RegistryServiceService,
  StatsServiceService,
  TagServiceService,
} from '@pushd/proto';
import { basicAuthorization, bearerAuthorization, createRpcClient } from '@pushd/rpc';
import { waitFor } from '@pushd/testkit';
import { CLUSTER_TOKEN, type SystemUnderTest } from './system.js';

export interface TestApp {
  accessId: number;
  accessKey: string;
  secretKey: string;
}

/** gRPC clients with the cluster token (admin) and with an app's credentials; closed by `close()`. */
export function clientsFor(system: SystemUnderTest) {
  const opened: { close(): void }[] = [];
  const track = <T extends { close(): void }>(client: T): T => {
    opened.push(client);
    return client;
  };
  const admin = track(
    createRpcClient(RegistryServiceService, {
      address: system.registry,
      authorization: bearerAuthorization(CLUSTER_TOKEN),
    }),
  );
  return {
    admin,
    async createApp(name = 'e2e'): Promise<TestApp> {
      const created = await admin.createApp({ name });
      return {
        accessId: created.app?.accessId ?? 0,
        accessKey: created.accessKey,
        secretKey: created.secretKey,
      };
    },
    forApp(app: TestApp) {
      const authorization = basicAuthorization(app.accessId, app.secretKey);
      return {
        registry: track(createRpcClient(RegistryServiceService, { address: system.registry, authorization })),
        dispatch: track(createRpcClient(DispatchServiceService, { address: system.dispatch, authorization })),
        stats: track(createRpcClient(StatsServiceService, { address: system.stats, authorization })),
        tag: track(createRpcClient(TagServiceService, { address: system.tag, authorization })),
      };
    },
    close() {
      for (const client of opened) client.close();
    },
  };
}

/** A notification push request to one token. */
export function notifyToken(
  accessId: number,
  token: string,
  title: string,
  content: string,
  /** Default: absent (72 hours). 0: online only. */
  expireTimeS?: number,
) {
  return {
    accessId,
    audience: { target: { $case: 'token' as const, value: token } },
    message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title, content, customContent: {} },
    expireTimeS,
    platform: Platform.PLATFORM_UNSPECIFIED,
  };
}

/** A simulated device that records what it receives. */
export class TestDevice {
  readonly received: PushMessage[] = [];
  /** The `dropped` counts the gateway reported (messages lost to the offline window's cap or expiry). */
  readonly dropped: number[] = [];
  client: DeviceClient;

  constructor(options: DeviceClientOptions) {
    this.client = new DeviceClient(options);
    this.client.on('message', (message) => this.received.push(message));
    this.client.on('dropped', (count) => this.dropped.push(count));
    this.client.on('error', () => undefined);
  }

  /** Registers a new device of the app and returns it connected. */
  static async register(
    system: SystemUnderTest,
    app: TestApp,
    options: Partial<DeviceClientOptions> & { deviceId?: string; platform?: Platform } = {},
  ): Promise<TestDevice> {
    const device = new TestDevice({
      url: system.gatewayUrl,
      accessId: app.accessId,
      registration: {
        accessKey: app.accessKey,
        deviceId: options.deviceId ?? generateDeviceId(),
        platform: options.platform ?? Platform.PLATFORM_ANDROID,
      },
      ...options,
    });
    await device.client.connect();
    return device;
  }

  /** Connects again as the same device with the credential the registration returned. */
  async reconnect(
    system: SystemUnderTest,
    app: TestApp,
    options: Partial<DeviceClientOptions> = {},
  ): Promise<void> {
    const token = this.client.token;
    const credential = this.client.credential;
    if (!token || !credential) throw new Error('device never registered');
    const lastMsgId = this.client.lastMsgId;
    this.client.removeAllListeners();
    this.client = new DeviceClient({
      url: system.gatewayUrl,
      accessId: app.accessId,
      session: { token, credential },
      lastMsgId,
      ...options,
    });
    this.client.on('message', (message) => this.received.push(message));
    this.client.on('dropped', (count) => this.dropped.push(count));
    this.client.on('error', () => undefined);
    await this.client.connect();
  }

  get token(): string {
    const token = this.client.token;
    if (!token) throw new Error('device has no token');
    return token;
  }

  async waitForMessages(count: number, timeoutMs = 10_000): Promise<PushMessage[]> {
    await waitFor(
      () => this.received.length >= count,
      `${count} message(s) (have ${this.received.length})`,
      timeoutMs,
    );
    return this.received;
  }
}

/** A notification push request of the app (72 h by default) to any audience target. */
export function notifyRequest(
  app: TestApp,
  target: object,
  content: string,
  fields: Partial<PushRequest> = {},
): PushRequest {
  return {
    accessId: app.accessId,
    audience: { target: target as never },
    message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content, customContent: {} },
    platform: Platform.PLATFORM_UNSPECIFIED,
    ...fields,
  };
}

/** The `tags` audience target of a TPNS tag_list: devices with any (OR) or all (AND) of the tags. */
export function tagListTarget(tags: string[], op = 'OR') {
  return { $case: 'tags', value: { form: { $case: 'tagList', value: { tags, op } } } };
}

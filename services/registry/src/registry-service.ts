import { createHmac } from 'node:crypto';
import type { Bus } from '@pushd/bus';
import { subjects } from '@pushd/bus';
import {
  type Clock,
  hashSecret,
  invalidArgument,
  type Logger,
  PushdError,
  randomSecret,
  secretMatchesHash,
  systemClock,
  tokenNotFound,
  tokensByApp,
} from '@pushd/common';
import {
  type App,
  type AuthenticateDeviceRequest,
  type AuthenticateDeviceResponse,
  type Device,
  Event,
  EventBatch,
  EventType,
  encodeMessage,
  Platform,
  type RegistryServiceService,
} from '@pushd/proto';
import {
  CallAuthorizer,
  checkBatchSize,
  type ServiceHandlers,
  settle,
  toBatchResult,
  unwrapSettled,
} from '@pushd/rpc';
import type { AppRecord, AppStore, DeviceRecord, DeviceStore } from '@pushd/store';

export interface RegistryServiceOptions {
  apps: AppStore;
  devices: DeviceStore;
  /**
   * Carries UNREGISTERED events to gateways (close the connection), dispatch and tag (forget the device),
   * and REGISTERED events to tag (the audience index).
   */
  bus: Bus;
  /** Shared secret of internal callers and operators. */
  clusterToken: string;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
}

const DEVICE_ID = /^[A-Za-z0-9_-]{16,128}$/;
/** Tokens one GetDevices call may name (the tag service's batch calls take up to 1,000). */
const MAX_TOKENS_PER_LOOKUP = 1_000;
const ACCOUNT_MAX_CHARS = 128;
/**
 * app_version, os_version, locale, sdk_version: the first three become built-in tags, which expressions
 * accept up to the same length (REGISTRATION_VALUE_MAX_CHARS of @pushd/audience): keep the two equal.
 */
const DETAIL_MAX_CHARS = 64;

/** Apps, device registration and account binding (proto/pushd/v1/registry.proto). */
export class RegistryService {
  private readonly clock: Clock;
  private readonly authorizer: CallAuthorizer;

  constructor(private readonly options: RegistryServiceOptions) {
    this.clock = options.clock ?? systemClock;
    this.authorizer = new CallAuthorizer({
      clusterToken: options.clusterToken,
      verifyAppSecret: async (accessId, secretKey) => {
        const app = await options.apps.get(accessId);
        return app !== undefined && secretMatchesHash(secretKey, app.secretKeyHash);
      },
    });
  }

  handlers(): ServiceHandlers<typeof RegistryServiceService> {
    const { apps, devices } = this.options;
    const auth = this.authorizer;
    return {
      createApp: async (request, { metadata }) => {
        await auth.requireCluster(metadata);
        const name = request.name.trim();
        if (name.length < 1 || name.length > 64) throw invalidArgument('name', 'must be 1 to 64 characters');
        const accessKey = `A${randomSecret(12).replace(/[-_]/g, 'x').toUpperCase()}`;
        const secretKey = randomSecret(32);
        const app = await apps.create({
          name,
          accessKey,
          secretKeyHash: hashSecret(secretKey),
          tokenKey: randomSecret(32),
          createdAtMs: this.clock.now(),
        });
        this.options.logger.info({ accessId: app.accessId, name }, 'app created');
        return { app: toApp(app), accessKey, secretKey };
      },

      verifyApp: async (request, { metadata }) => {
        await auth.requireCluster(metadata);
        const app = await this.requireApp(request.accessId);
        const key = request.key;
        if (key === undefined) throw invalidArgument('key', 'set access_key or secret_key');
        const valid =
          key.$case === 'accessKey'
            ? key.value === app.accessKey
            : secretMatchesHash(key.value, app.secretKeyHash);
        if (!valid)
          throw new PushdError(
            'UNAUTHENTICATED',
            `wrong ${key.$case === 'accessKey' ? 'access' : 'secret'} key for app ${app.accessId}`,
          );
        return { app: toApp(app) };
      },

      registerDevice: async (request, { metadata }) => {
        await auth.requireCluster(metadata);
        const app = await this.requireApp(request.accessId);
        if (request.accessKey !== app.accessKey) {
          throw new PushdError('UNAUTHENTICATED', `wrong access key for app ${app.accessId}`);
        }
        if (!DEVICE_ID.test(request.deviceId)) {
          throw invalidArgument('device_id', 'must be 16 to 128 characters of A-Z, a-z, 0-9, "_" and "-"');
        }
        if (request.platform !== Platform.PLATFORM_ANDROID && request.platform !== Platform.PLATFORM_IOS) {
          throw invalidArgument('platform', 'must be PLATFORM_ANDROID or PLATFORM_IOS');
        }
        const details = {
          appVersion: detail('app_version', request.appVersion),
          osVersion: detail('os_version', request.osVersion),
          locale: detail('locale', request.locale),
          sdkVersion: detail('sdk_version', request.sdkVersion),
        };
        // The token is derived, not stored against the device id: registering again yields the same token
        // without an index from device ids to tokens (and one Redis slot per device).
        const token = createHmac('sha256', app.tokenKey).update(request.deviceId).digest('hex').slice(0, 40);
        const credential = randomSecret(32);
        const now = this.clock.now();
        const { created, device } = await devices.upsert({
          accessId: app.accessId,
          token,
          platform: request.platform,
          ...details,
          credentialHash: hashSecret(credential),
          registeredAtMs: now,
        });
        // Durable and before the reply: a registration the device was told about is in the index
        // eventually; if the event cannot be stored, the call fails and the device registers again
        // (the same token and index: the upsert above is idempotent).
        await this.announce(
          Event.create({
            type: EventType.EVENT_TYPE_REGISTERED,
            accessId: device.accessId,
            token: device.token,
            platform: device.platform,
            atMs: now,
            appVersion: device.appVersion,
            osVersion: device.osVersion,
            locale: device.locale,
            deviceIndex: indexOf(device),
          }),
        );
        return { device: toDevice(device), credential, created };
      },

      authenticateDevice: async (request, { metadata }) => {
        await auth.requireCluster(metadata);
        const [result] = await this.authenticate([request]);
        return unwrapSettled(result!);
      },

      authenticateDevices: async (request, { metadata }) => {
        await auth.requireCluster(metadata);
        checkBatchSize('requests', request.requests.length);
        return { results: (await this.authenticate(request.requests)).map(toBatchResult) };
      },

      getDevice: async (request, { metadata }) => {
        const accessId = await auth.requireApp(metadata, request.accessId);
        return { device: toDevice(await this.requireDevice(accessId, request.token)) };
      },

      getDevices: async (request, { metadata }) => {
        const accessId = await auth.requireApp(metadata, request.accessId);
        if (request.tokens.length > MAX_TOKENS_PER_LOOKUP) {
          throw invalidArgument('tokens', `at most ${MAX_TOKENS_PER_LOOKUP} tokens per call`);
        }
        const tokens = [...new Set(request.tokens.filter((token) => token !== ''))];
        const found = await devices.getMany(accessId, tokens);
        return { devices: found.filter((device) => device !== undefined).map(toDevice) };
      },

      unregisterDevice: async (request, { metadata }) => {
        const accessId = await auth.requireApp(metadata, request.accessId);
        const device = await this.requireDevice(accessId, request.token);
        // Announce first, remove second. Durable: dispatch and tag must forget the device even if they are
        // down right now; gateways also receive it on the same subject and close the device's connection.
        // If the announcement cannot be stored the device stays registered and a retry does it all again;
        // if the removal fails after it, a retry finds the device and announces again (consumers apply
        // the event idempotently). The other order would leave a removed device whose retry finds nothing
        // to announce, so its offline window and tags would outlive it.
        await this.announce(
          Event.create({
            type: EventType.EVENT_TYPE_UNREGISTERED,
            accessId,
            token: device.token,
            platform: device.platform,
            atMs: this.clock.now(),
            deviceIndex: indexOf(device),
          }),
        );
        // Only the registration announced: a call delayed past another unregister and the device's
        // registering again must not delete the new registration, which nobody would announce.
        if ((await devices.remove(accessId, request.token, device.index)) === undefined) {
          // Removed by a concurrent call in between (its announcement and ours say the same), or
          // registered again since under a new index (ours is about the old one, which is gone).
          this.options.logger.debug({ accessId }, 'device already removed by a concurrent unregister');
        }
        return {};
      },

      bindAccount: async (request, { metadata }) => {
        const accessId = await auth.requireApp(metadata, request.accessId);
        if (request.token === '') throw invalidArgument('token', 'required');
        const account = request.account;
        if (account.length < 1 || account.length > ACCOUNT_MAX_CHARS || /\p{Cc}/u.test(account)) {
          throw invalidArgument(
            'account',
            `must be 1 to ${ACCOUNT_MAX_CHARS} characters without control characters`,
          );
        }
        const result = await devices.setAccount(accessId, request.token, account);
        if (result === undefined) throw tokenNotFound(accessId, request.token);
        return { previousAccount: result.previous };
      },

      unbindAccount: async (request, { metadata }) => {
        const accessId = await auth.requireApp(metadata, request.accessId);
        if (request.token === '') throw invalidArgument('token', 'required');
        const result = await devices.setAccount(accessId, request.token, '');
        if (result === undefined) throw tokenNotFound(accessId, request.token);
        return { previousAccount: result.previous };
      },

      listAccountTokens: async (request, { metadata }) => {
        const accessId = await auth.requireApp(metadata, request.accessId);
        if (request.account === '') throw invalidArgument('account', 'required');
        return { tokens: await devices.accountTokens(accessId, request.account) };
      },

      countDevices: async (request, { metadata }) => {
        const accessId = await auth.requireApp(metadata, request.accessId);
        await this.requireApp(accessId);
        return devices.count(accessId);
      },
    };
  }

  /**
   * AuthenticateDevice for each request, in order (the single call is a batch of one). The apps and devices
   * the batch names are read together, one lookup per app and one many-device read per app (one round trip
   * on Redis), then each request is decided on its own: a refusal is that request's result, while a failed
   * read fails them all (thrown), as it would have failed each single call.
   */
  private async authenticate(
    requests: AuthenticateDeviceRequest[],
  ): Promise<PromiseSettledResult<AuthenticateDeviceResponse>[]> {
    const apps = new Map<number, AppRecord | undefined>();
    const devices = new Map<string, DeviceRecord>();
    await Promise.all(
      // Without an access id, a request reads nothing (INVALID_ARGUMENT). An empty token names no device:
      // it gets INVALID_CREDENTIAL like any unknown one, but its app is still read (APP_NOT_FOUND first).
      [...tokensByApp(requests.filter((request) => request.accessId))].map(async ([accessId, named]) => {
        const tokens = named.filter((token) => token !== '');
        const [app, found] = await Promise.all([
          this.options.apps.get(accessId),
          this.options.devices.getMany(accessId, tokens),
        ]);
        apps.set(accessId, app);
        found.forEach((device, i) => {
          if (device !== undefined) devices.set(`${accessId}:${tokens[i]}`, device);
        });
      }),
    );
    return requests.map((request) =>
      settle(() => {
        appOrThrow(request.accessId, apps.get(request.accessId));
        const device = devices.get(`${request.accessId}:${request.token}`);
        // Unknown token and wrong credential are one answer, so that tokens cannot be probed.
        if (device === undefined || !secretMatchesHash(request.credential, device.credentialHash)) {
          throw new PushdError('INVALID_CREDENTIAL', 'unknown token or wrong credential; register again');
        }
        return { device: toDevice(device) };
      }),
    );
  }

  private async announce(event: Event): Promise<void> {
    await this.options.bus.publishDurable(
      subjects.events('registry'),
      encodeMessage(EventBatch, { events: [event] }),
    );
  }

  private async requireApp(accessId: number): Promise<AppRecord> {
    return appOrThrow(accessId, accessId ? await this.options.apps.get(accessId) : undefined);
  }

  private async requireDevice(accessId: number, token: string): Promise<DeviceRecord> {
    if (token === '') throw invalidArgument('token', 'required');
    const device = await this.options.devices.get(accessId, token);
    if (device === undefined) throw tokenNotFound(accessId, token);
    return device;
  }
}

/** The app record looked up for `accessId`; INVALID_ARGUMENT without an id, APP_NOT_FOUND without an app. */
function appOrThrow(accessId: number, app: AppRecord | undefined): AppRecord {
  if (!accessId) throw invalidArgument('access_id', 'required');
  if (app === undefined) throw new PushdError('APP_NOT_FOUND', `no app has access id ${accessId}`);
  return app;
}

function detail(field: string, value: string): string {
  if (value.length > DETAIL_MAX_CHARS || /\p{Cc}/u.test(value)) {
    throw invalidArgument(field, `must be at most ${DETAIL_MAX_CHARS} characters without control characters`);
  }
  return value;
}

function toApp(app: AppRecord): App {
  return { accessId: app.accessId, name: app.name, createdAtMs: app.createdAtMs };
}

function toDevice(device: DeviceRecord): Device {
  return {
    accessId: device.accessId,
    token: device.token,
    platform: device.platform,
    appVersion: device.appVersion,
    osVersion: device.osVersion,
    locale: device.locale,
    sdkVersion: device.sdkVersion,
    account: device.account,
    registeredAtMs: device.registeredAtMs,
    index: indexOf(device),
  };
}

/** The device index, absent for a record stored before indexes existed (DeviceRecord.index -1). */
function indexOf(device: DeviceRecord): number | undefined {
  return device.index >= 0 ? device.index : undefined;
}

import { generateDeviceId } from '@pushd/device-sdk';
import { Platform, RegistryServiceService } from '@pushd/proto';
import { bearerAuthorization, createRpcClient } from '@pushd/rpc';
import { log } from './lifecycle.js';
import { CLUSTER_TOKEN } from './system.js';

export interface BenchApp {
  accessId: number;
  accessKey: string;
  secretKey: string;
}

export interface RegisteredDevices {
  tokens: string[];
  credentials: string[];
  elapsedMs: number;
  perSecond: number;
}

/** Creates an app through the registry with the cluster token. */
export async function createBenchApp(registry: string): Promise<BenchApp> {
  const client = createRpcClient(RegistryServiceService, {
    address: registry,
    authorization: bearerAuthorization(CLUSTER_TOKEN),
  });
  try {
    const created = await client.createApp({ name: 'bench' });
    return {
      accessId: created.app?.accessId ?? 0,
      accessKey: created.accessKey,
      secretKey: created.secretKey,
    };
  } finally {
    client.close();
  }
}

/**
 * Registers `count` Android devices with RegisterDevice (cluster token and the app's access key: what the
 * gateway does for a registration connection), `concurrency` calls at a time. Registering through the
 * gateway would measure registration connections, which no benchmark here is about; the devices then
 * connect as real sessions with the credentials returned.
 */
export async function registerDevices(
  registry: string,
  app: BenchApp,
  count: number,
  concurrency = 256,
): Promise<RegisteredDevices> {
  const client = createRpcClient(RegistryServiceService, {
    address: registry,
    authorization: bearerAuthorization(CLUSTER_TOKEN),
    deadlineMs: 30_000,
  });
  const tokens = new Array<string>(count);
  const credentials = new Array<string>(count);
  let next = 0;
  let done = 0;
  const started = performance.now();
  let lastLog = started;
  try {
    const lane = async () => {
      while (next < count) {
        const index = next++;
        const result = await client.registerDevice({
          accessId: app.accessId,
          accessKey: app.accessKey,
          deviceId: generateDeviceId(),
          platform: Platform.PLATFORM_ANDROID,
          appVersion: '1.0.0',
          osVersion: '14',
          locale: 'en-US',
          sdkVersion: 'bench',
        });
        tokens[index] = result.device?.token ?? '';
        credentials[index] = result.credential;
        done++;
        if (performance.now() - lastLog > 5_000) {
          lastLog = performance.now();
          log(`registered ${done}/${count}`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  } finally {
    client.close();
  }
  const elapsedMs = performance.now() - started;
  return { tokens, credentials, elapsedMs, perSecond: count / (elapsedMs / 1000) };
}

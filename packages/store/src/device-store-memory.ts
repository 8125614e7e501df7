import { Platform } from '@pushd/proto';
import type { DeviceCounts, DeviceRecord, DeviceStore } from './device-store.js';

interface AppDevices {
  devices: Map<string, DeviceRecord>;
  /** account -> tokens bound to it. */
  accounts: Map<string, Set<string>>;
  counts: DeviceCounts;
  /** Device indexes handed out; the next device gets this one. */
  nextIndex: number;
}

/** Devices in process memory. Every method completes in one synchronous step, so each is atomic. */
export class MemoryDeviceStore implements DeviceStore {
  private readonly apps = new Map<number, AppDevices>();

  async upsert(
    device: Omit<DeviceRecord, 'account' | 'index'>,
  ): Promise<{ created: boolean; device: DeviceRecord }> {
    const app = this.app(device.accessId);
    const existing = app.devices.get(device.token);
    if (!existing) {
      const record: DeviceRecord = { ...device, account: '', index: app.nextIndex++ };
      app.devices.set(device.token, record);
      count(app.counts, record.platform, 1, true);
      return { created: true, device: { ...record } };
    }
    if (existing.platform !== device.platform) {
      count(app.counts, existing.platform, -1, false);
      count(app.counts, device.platform, 1, false);
    }
    const record: DeviceRecord = {
      ...device,
      account: existing.account,
      registeredAtMs: existing.registeredAtMs,
      index: existing.index,
    };
    app.devices.set(device.token, record);
    return { created: false, device: { ...record } };
  }

  async get(accessId: number, token: string): Promise<DeviceRecord | undefined> {
    const record = this.apps.get(accessId)?.devices.get(token);
    return record ? { ...record } : undefined;
  }

  async getMany(accessId: number, tokens: string[]): Promise<(DeviceRecord | undefined)[]> {
    const devices = this.apps.get(accessId)?.devices;
    return tokens.map((token) => {
      const record = devices?.get(token);
      return record ? { ...record } : undefined;
    });
  }

  async remove(accessId: number, token: string, index?: number): Promise<DeviceRecord | undefined> {
    const app = this.apps.get(accessId);
    const record = app?.devices.get(token);
    if (!app || !record) return undefined;
    if (index !== undefined && record.index !== index) return undefined;
    app.devices.delete(token);
    unbind(app, record.account, token);
    count(app.counts, record.platform, -1, true);
    return { ...record };
  }

  async setAccount(
    accessId: number,
    token: string,
    account: string,
  ): Promise<{ previous: string } | undefined> {
    const app = this.apps.get(accessId);
    const record = app?.devices.get(token);
    if (!app || !record) return undefined;
    const previous = record.account;
    if (previous !== account) {
      unbind(app, previous, token);
      if (account !== '') {
        const tokens = app.accounts.get(account);
        if (tokens) tokens.add(token);
        else app.accounts.set(account, new Set([token]));
      }
      app.devices.set(token, { ...record, account });
    }
    return { previous };
  }

  async accountTokens(accessId: number, account: string): Promise<string[]> {
    if (account === '') return [];
    return [...(this.apps.get(accessId)?.accounts.get(account) ?? [])];
  }

  async count(accessId: number): Promise<DeviceCounts> {
    const counts = this.apps.get(accessId)?.counts;
    return counts ? { ...counts } : { total: 0, android: 0, ios: 0 };
  }

  private app(accessId: number): AppDevices {
    let app = this.apps.get(accessId);
    if (!app) {
      app = {
        devices: new Map(),
        accounts: new Map(),
        counts: { total: 0, android: 0, ios: 0 },
        nextIndex: 0,
      };
      this.apps.set(accessId, app);
    }
    return app;
  }
}

function unbind(app: AppDevices, account: string, token: string): void {
  if (account === '') return;
  const tokens = app.accounts.get(account);
  if (!tokens) return;
  tokens.delete(token);
  // Accounts come and go with users: an empty index must not outlive its last device.
  if (tokens.size === 0) app.accounts.delete(account);
}

function count(counts: DeviceCounts, platform: Platform, delta: number, total: boolean): void {
  if (total) counts.total += delta;
  if (platform === Platform.PLATFORM_ANDROID) counts.android += delta;
  else if (platform === Platform.PLATFORM_IOS) counts.ios += delta;
}

import type { Platform } from '@pushd/proto';

/** A registered device. Owned by the registry service. */
export interface DeviceRecord {
  accessId: number;
  /** 40 hex characters, derived from the app's token key and the device id: stable across re-registration. */
  token: string;
  platform: Platform;
  appVersion: string;
  osVersion: string;
  locale: string;
  sdkVersion: string;
  /** Bound account, '' for none. A token binds to at most one account. */
  account: string;
  /** SHA-256 of the device's current credential. */
  credentialHash: string;
  registeredAtMs: number;
  /**
   * The device's number in its app (0, 1, 2, ...), given at its first registration and kept while it stays
   * registered: its bit position in the audience bitmaps (audience-index.ts). A token that unregisters and
   * registers again gets a new one. Numbers are dense except for the few a crash or concurrent first
   * registrations of one device leave unused.
   */
  index: number;
}

export interface DeviceCounts {
  total: number;
  android: number;
  ios: number;
}

export interface DeviceStore {
  /**
   * Stores a registration. A new token is created with the app's next device index (created: true,
   * covered-device counts grow); an existing one keeps its registeredAtMs, account and index and takes the
   * new credential hash and device details (created: false). Atomic per token.
   */
  upsert(
    device: Omit<DeviceRecord, 'account' | 'index'>,
  ): Promise<{ created: boolean; device: DeviceRecord }>;

  get(accessId: number, token: string): Promise<DeviceRecord | undefined>;

  /** Several devices at once: the record of each token, in order, undefined for unknown ones. */
  getMany(accessId: number, tokens: string[]): Promise<(DeviceRecord | undefined)[]>;

  /**
   * Deletes the registration and its account binding; returns what was removed, undefined if nothing.
   * With `index`, only the registration of that index (DeviceRecord.index, -1 for a record from before
   * indexes existed): a removal decided on a record read earlier must not delete a newer registration of
   * the token made since (undefined then, and nothing changes).
   */
  remove(accessId: number, token: string, index?: number): Promise<DeviceRecord | undefined>;

  /**
   * Binds the token to `account` ('' unbinds). Last bind wins: the token leaves its previous account.
   * Returns the previous account ('' if none), or undefined when the token is not registered.
   */
  setAccount(accessId: number, token: string, account: string): Promise<{ previous: string } | undefined>;

  /** Tokens currently bound to `account`, in no particular order. */
  accountTokens(accessId: number, account: string): Promise<string[]>;

  /** Covered devices: registered now, by platform. */
  count(accessId: number): Promise<DeviceCounts>;
}

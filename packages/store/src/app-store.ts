/** The first access id a store assigns (the TPNS AccessId shape). */
export const FIRST_ACCESS_ID = 1_500_000_001;

/** Apps (tenants). Owned by the registry service. */
export interface AppRecord {
  /** Numeric, assigned by the store, increasing from 1500000001 (the TPNS AccessId shape). */
  accessId: number;
  name: string;
  /** Device-side key, embedded in the mobile app: lets a device register. Stored as is. */
  accessKey: string;
  /** SHA-256 of the server-side secret key (the secret itself is shown once at creation). */
  secretKeyHash: string;
  /** Random per-app key from which device tokens are derived (HMAC of the device id). */
  tokenKey: string;
  createdAtMs: number;
}

export interface AppStore {
  /** Assigns the next access id and stores the app. */
  create(app: Omit<AppRecord, 'accessId'>): Promise<AppRecord>;
  get(accessId: number): Promise<AppRecord | undefined>;
}

import { type AppRecord, type AppStore, FIRST_ACCESS_ID } from './app-store.js';

export class MemoryAppStore implements AppStore {
  private readonly apps = new Map<number, AppRecord>();
  private nextAccessId = FIRST_ACCESS_ID;

  async create(app: Omit<AppRecord, 'accessId'>): Promise<AppRecord> {
    const record: AppRecord = { ...app, accessId: this.nextAccessId++ };
    this.apps.set(record.accessId, record);
    return { ...record };
  }

  async get(accessId: number): Promise<AppRecord | undefined> {
    const record = this.apps.get(accessId);
    return record ? { ...record } : undefined;
  }
}

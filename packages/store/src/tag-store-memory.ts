import type { TagStore } from './tag-store.js';

/** Tags in process memory. Every method completes in one synchronous step, so `add` is all-or-nothing. */
export class MemoryTagStore implements TagStore {
  private readonly devices = new Map<string, Set<string>>();

  async add(
    accessId: number,
    token: string,
    tags: string[],
    maxPerDevice: number,
  ): Promise<{ ok: true; count: number } | { ok: false; wouldHave: number }> {
    const key = deviceKey(accessId, token);
    const current = this.devices.get(key);
    const fresh = new Set(tags.filter((tag) => !current?.has(tag)));
    const after = (current?.size ?? 0) + fresh.size;
    if (after > maxPerDevice) return { ok: false, wouldHave: after };
    if (fresh.size > 0) {
      if (current) for (const tag of fresh) current.add(tag);
      else this.devices.set(key, fresh);
    }
    return { ok: true, count: after };
  }

  async remove(accessId: number, token: string, tags: string[]): Promise<number> {
    const key = deviceKey(accessId, token);
    const current = this.devices.get(key);
    if (!current) return 0;
    for (const tag of tags) current.delete(tag);
    if (current.size === 0) this.devices.delete(key);
    return current.size;
  }

  async list(accessId: number, token: string): Promise<string[]> {
    return [...(this.devices.get(deviceKey(accessId, token)) ?? [])].sort();
  }

  async clear(accessId: number, token: string): Promise<void> {
    this.devices.delete(deviceKey(accessId, token));
  }
}

function deviceKey(accessId: number, token: string): string {
  return `${accessId}\n${token}`;
}

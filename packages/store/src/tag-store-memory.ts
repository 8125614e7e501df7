import type { Platform } from '@pushd/proto';
import {
  type AppTag,
  type DeviceTagState,
  isAttributeTag,
  type RegistrationAttributes,
  type TagChange,
  type TagDevice,
  type TagLimits,
  type TagStore,
  type TagWrite,
} from './tag-store.js';

interface DeviceState {
  index: number;
  unregistered: boolean;
  /** User and attribute tags (tag-store.ts). */
  tags: Set<string>;
  platform: Platform;
  builtin: string[];
  registeredAtMs: number;
  sessionId: string;
  sessionAtMs: number;
  online: boolean;
  /** The newest disconnect of a session not recorded when it came, and its at_ms. */
  endedSessionId: string;
  endedAtMs: number;
}

/**
 * Tags in process memory, with the semantics of the Redis store (tag-store.ts). Every method completes in
 * one synchronous step, so calls are all-or-nothing without reservations and counts are always exact.
 * Markers of unregistered devices are kept for the life of the process.
 */
export class MemoryTagStore implements TagStore {
  private readonly devices = new Map<string, DeviceState>();
  /** Per app: tag -> devices holding it. */
  private readonly counts = new Map<number, Map<string, number>>();

  async add(accessId: number, devices: TagDevice[], tags: string[], limits: TagLimits): Promise<TagWrite> {
    const targets = distinctDevices(devices);
    const live = targets.filter((device) => !this.obsolete(accessId, device));
    const stale = targets.filter((device) => !live.includes(device)).map((device) => device.token);
    if (live.length === 0) return { ok: true, changes: [], stale };
    const counts = this.appCounts(accessId);
    const fresh = tags.filter((tag) => !counts.has(tag)).length;
    if (fresh > 0 && counts.size + fresh > limits.perApp) {
      return { ok: false, limit: 'per_app', wouldHave: counts.size + fresh };
    }
    for (const device of live) {
      const held = this.current(accessId, device)?.tags;
      const after = userCount(held) + tags.filter((tag) => !held?.has(tag)).length;
      if (after > limits.perDevice) {
        return { ok: false, limit: 'per_device', token: device.token, wouldHave: after };
      }
    }
    const changes = live.map((device) => {
      const state = this.claim(accessId, device);
      const added = tags.filter((tag) => !state.tags.has(tag));
      for (const tag of added) state.tags.add(tag);
      this.adjust(accessId, added, 1);
      return { token: device.token, count: userCount(state.tags), added, removed: [] };
    });
    return { ok: true, changes, stale };
  }

  async remove(
    accessId: number,
    devices: TagDevice[],
    tags: string[],
  ): Promise<{ changes: TagChange[]; stale: string[] }> {
    const changes: TagChange[] = [];
    const stale: string[] = [];
    for (const device of distinctDevices(devices)) {
      if (this.obsolete(accessId, device)) {
        stale.push(device.token);
        continue;
      }
      const state = this.claim(accessId, device);
      const removed = tags.filter((tag) => state.tags.delete(tag)).sort();
      this.adjust(accessId, removed, -1);
      changes.push({ token: device.token, count: userCount(state.tags), added: [], removed });
    }
    return { changes, stale };
  }

  async replace(accessId: number, device: TagDevice, tags: string[], limits: TagLimits): Promise<TagWrite> {
    if (tags.length > limits.perDevice) {
      return { ok: false, limit: 'per_device', token: device.token, wouldHave: tags.length };
    }
    if (this.obsolete(accessId, device)) return { ok: true, changes: [], stale: [device.token] };
    const counts = this.appCounts(accessId);
    const fresh = tags.filter((tag) => !counts.has(tag)).length;
    // Checked before the device's old tags are given up, as the Redis store reserves before it releases:
    // swapping a tag only this device holds for a new one is refused when the app is at its limit.
    if (fresh > 0 && counts.size + fresh > limits.perApp) {
      return { ok: false, limit: 'per_app', wouldHave: counts.size + fresh };
    }
    const state = this.claim(accessId, device);
    const added = tags.filter((tag) => !state.tags.has(tag));
    const held = [...state.tags];
    const removed = held.filter((tag) => !isAttributeTag(tag) && !tags.includes(tag)).sort();
    state.tags = new Set([...held.filter(isAttributeTag), ...tags]);
    this.adjust(accessId, added, 1);
    this.adjust(accessId, removed, -1);
    return { ok: true, changes: [{ token: device.token, count: tags.length, added, removed }], stale: [] };
  }

  async clear(accessId: number, device: TagDevice): Promise<{ changes: TagChange[]; stale: string[] }> {
    const held = [...(this.current(accessId, device)?.tags ?? [])];
    return this.remove(
      accessId,
      [device],
      held.filter((tag) => !isAttributeTag(tag)),
    );
  }

  async setAttributes(
    accessId: number,
    device: TagDevice,
    prefixes: string[],
    tags: string[],
  ): Promise<{ changes: TagChange[]; stale: string[] }> {
    if (this.obsolete(accessId, device)) return { changes: [], stale: [device.token] };
    const state = this.claim(accessId, device);
    const replaced = (tag: string) =>
      isAttributeTag(tag) && prefixes.some((prefix) => tag.startsWith(prefix));
    const added = tags.filter((tag) => !state.tags.has(tag));
    const removed = [...state.tags].filter((tag) => replaced(tag) && !tags.includes(tag)).sort();
    for (const tag of removed) state.tags.delete(tag);
    for (const tag of added) state.tags.add(tag);
    return { changes: [{ token: device.token, count: userCount(state.tags), added, removed }], stale: [] };
  }

  async list(accessId: number, token: string, index?: number): Promise<string[]> {
    const state = this.devices.get(deviceKey(accessId, token));
    if (!state || state.unregistered || (index !== undefined && state.index !== index)) return [];
    return [...state.tags].sort();
  }

  async appTags(
    accessId: number,
    page: { after?: string; limit: number },
  ): Promise<{ tags: AppTag[]; total: number }> {
    const all = [...(this.counts.get(accessId) ?? [])]
      .map(([tag, devices]) => ({ tag, devices }))
      .sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : 0));
    const after = page.after;
    const start = after === undefined ? 0 : all.findIndex((entry) => entry.tag > after);
    return { tags: start < 0 ? [] : all.slice(start, start + page.limit), total: all.length };
  }

  async state(accessId: number, token: string): Promise<DeviceTagState | undefined> {
    const state = this.devices.get(deviceKey(accessId, token));
    if (!state) return undefined;
    return {
      index: state.index,
      unregistered: state.unregistered,
      platform: state.platform,
      builtin: [...state.builtin],
      registeredAtMs: state.registeredAtMs,
      online: state.online,
    };
  }

  async commitRegistration(
    accessId: number,
    token: string,
    attributes: RegistrationAttributes,
    expected: string[],
  ): Promise<'applied' | 'changed' | 'obsolete'> {
    const device = { token, index: attributes.index };
    if (this.obsolete(accessId, device)) return 'obsolete';
    const state = this.claim(accessId, device);
    if (state.registeredAtMs > attributes.atMs) return 'obsolete';
    if (state.builtin.join('\n') !== expected.join('\n')) return 'changed';
    state.platform = attributes.platform;
    state.builtin = [...attributes.builtin];
    state.registeredAtMs = attributes.atMs;
    return 'applied';
  }

  async presence(
    accessId: number,
    token: string,
    index: number,
    event: { sessionId: string; atMs: number; connected: boolean },
  ): Promise<{ online: boolean } | undefined> {
    const device = { token, index };
    if (this.obsolete(accessId, device)) return undefined;
    const state = this.claim(accessId, device);
    if (event.connected) {
      if (event.sessionId !== state.sessionId && event.atMs >= state.sessionAtMs) {
        state.sessionId = event.sessionId;
        state.sessionAtMs = event.atMs;
        state.online = event.sessionId !== state.endedSessionId;
      }
    } else if (state.sessionId === event.sessionId) {
      state.online = false;
    } else if (event.atMs > state.endedAtMs) {
      state.endedSessionId = event.sessionId;
      state.endedAtMs = event.atMs;
    }
    return { online: state.online };
  }

  async unregister(
    accessId: number,
    token: string,
    index: number,
  ): Promise<{ tags: string[]; builtin: string[]; platform: Platform } | undefined> {
    const key = deviceKey(accessId, token);
    const state = this.devices.get(key);
    if (state && (state.index > index || (state.index === index && state.unregistered))) return undefined;
    const own = state?.index === index;
    const tags = [...(state?.tags ?? [])].sort();
    this.adjust(accessId, tags, -1);
    this.devices.set(key, { ...blank(index), unregistered: true });
    return own && state
      ? { tags, builtin: state.builtin, platform: state.platform }
      : { tags: [], builtin: [], platform: 0 as Platform };
  }

  /** The call's index is older than the state's, or its registration unregistered. */
  private obsolete(accessId: number, device: TagDevice): boolean {
    const state = this.devices.get(deviceKey(accessId, device.token));
    return (
      state !== undefined &&
      (state.index > device.index || (state.index === device.index && state.unregistered))
    );
  }

  /** The state of this registration, if any (not an older one's). */
  private current(accessId: number, device: TagDevice): DeviceState | undefined {
    const state = this.devices.get(deviceKey(accessId, device.token));
    return state?.index === device.index ? state : undefined;
  }

  /** The state of this registration, replacing (and uncounting) an older registration's. */
  private claim(accessId: number, device: TagDevice): DeviceState {
    const key = deviceKey(accessId, device.token);
    const state = this.devices.get(key);
    if (state?.index === device.index) return state;
    if (state) this.adjust(accessId, [...state.tags], -1);
    const fresh = blank(device.index);
    this.devices.set(key, fresh);
    return fresh;
  }

  private appCounts(accessId: number): Map<string, number> {
    let counts = this.counts.get(accessId);
    if (!counts) {
      counts = new Map();
      this.counts.set(accessId, counts);
    }
    return counts;
  }

  /** Changes the app-wide counts of the user tags among `tags` (attribute tags are not counted). */
  private adjust(accessId: number, tags: string[], delta: number): void {
    const counts = this.appCounts(accessId);
    for (const tag of tags) {
      if (isAttributeTag(tag)) continue;
      const next = (counts.get(tag) ?? 0) + delta;
      if (next > 0) counts.set(tag, next);
      else counts.delete(tag);
    }
  }
}

function blank(index: number): DeviceState {
  return {
    index,
    unregistered: false,
    tags: new Set(),
    platform: 0 as Platform,
    builtin: [],
    registeredAtMs: 0,
    sessionId: '',
    sessionAtMs: -1,
    online: false,
    endedSessionId: '',
    endedAtMs: -1,
  };
}

/** The user tags of a set (its members that are not attribute tags). */
function userCount(tags: Set<string> | undefined): number {
  let count = 0;
  for (const tag of tags ?? []) if (!isAttributeTag(tag)) count++;
  return count;
}

function distinctDevices(devices: TagDevice[]): TagDevice[] {
  const seen = new Set<string>();
  return devices.filter((device) => !seen.has(device.token) && seen.add(device.token));
}

function deviceKey(accessId: number, token: string): string {
  return `${accessId}\n${token}`;
}

import type { Platform } from '@pushd/proto';
import type { RedisKeys } from './keys.js';
import { commandPerKey, redisCall } from './redis-call.js';
import type { RedisClient } from './redis-client.js';
import { defineScripts, runScript } from './redis-scripts.js';
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

export interface RedisTagStoreOptions {
  redis: RedisClient;
  keys: RedisKeys;
  /**
   * How long the marker of an unregistered device makes late events about that registration obsolete.
   * Default: 7 days, the retention of the event stream (nothing older can be delivered).
   */
  unregisteredMarkerTtlMs?: number;
}

/** One reply of tag-device.lua (see the top of that script). */
interface DeviceReply {
  status: number;
  count: number;
  added: string[];
  removed: string[];
  kept: string[];
  dropped: string[];
  online: boolean;
  builtin: string[];
  platform: Platform;
}

type Counts = Map<string, number>;

/**
 * Tags on Redis. A device's tags (user and attribute tags, tag-store.ts) are a set in the device's slot
 * (`{d:...}:tags`) beside the tag service's view of the device (`{d:...}:tagmeta`: which registration it
 * belongs to, built-in attributes, last session); the app's counts of user tags (`{a:...}:tagcount`, tag ->
 * devices holding it) are in the app's slot. Attribute tags change in one step (tag-device.lua
 * 'attributes') and have no app-wide count.
 * A call that adds tags runs as ordered single-slot steps:
 *
 * 1. reserve (app slot, tag-reserve.lua): every count the call could need is added at once, or the call is
 *    refused when it could raise the app's distinct tags above the limit (nothing written);
 * 2. apply (each device's slot, tag-device.lua, pipelined): the set changes all-or-nothing against the
 *    per-device limit; a device that would exceed it changes nothing. If any device of the call was
 *    refused, the devices already changed are changed back (their added tags removed) and the call is
 *    refused;
 * 3. release (app slot, tag-release.lua): counts reserved but not needed (tags a device already held,
 *    devices refused or skipped) and counts of tags devices lost are given back; a count reaching 0 is
 *    deleted and its tag stops counting toward the limit.
 *
 * Removing tags is steps 2 and 3. What a crash leaves: between 1 and 2, or 2 and 3, counts stay higher
 * than the devices holding the tags (reservations never given back; tags removed from sets but still
 * counted), never lower. So the error is always on the side of refusing: an app may be refused a tag it
 * would have had room for, it can never exceed 10,000 distinct tags or 100 per device (the device limit
 * is checked by the atomic step 2 itself). Counts are a recount job away from exact (none yet). A crash in
 * the middle of changing back a refused call leaves some devices with the call's tags (still counted).
 * Changing back races other calls on the same devices: a tag another call removed meanwhile is not
 * given back twice; a tag another call added meanwhile (it found the tag held, so it changed nothing) is
 * taken off with the rest (docs/architecture.md, known limits).
 */
export class RedisTagStore implements TagStore {
  private readonly redis: RedisClient;
  private readonly keys: RedisKeys;
  private readonly markerTtlMs: number;

  constructor(options: RedisTagStoreOptions) {
    this.redis = options.redis;
    this.keys = options.keys;
    this.markerTtlMs = options.unregisteredMarkerTtlMs ?? 7 * 24 * 3_600_000;
    defineScripts(this.redis);
  }

  async add(accessId: number, devices: TagDevice[], tags: string[], limits: TagLimits): Promise<TagWrite> {
    const targets = distinctDevices(devices);
    if (targets.length === 0) return { ok: true, changes: [], stale: [] };
    const reserved = new Map(tags.map((tag) => [tag, targets.length]));
    const refusal = await this.reserve(accessId, reserved, limits.perApp);
    if (refusal !== undefined) return { ok: false, limit: 'per_app', wouldHave: refusal };

    const replies = await this.device(accessId, targets, (device) => [
      'add',
      device.index,
      limits.perDevice,
      ...tags,
    ]);
    const release: Counts = new Map();
    for (const reply of replies) count(release, reply.dropped);
    const refused = replies.findIndex((reply) => reply.status === 0);
    if (refused >= 0) {
      // Undo the devices this call changed, then give back everything it reserved.
      const changed = targets.filter((_, i) => replies[i]!.status === 1 && replies[i]!.added.length > 0);
      const undo = await this.device(accessId, changed, (device) => [
        'remove',
        device.index,
        0,
        ...replies[targets.indexOf(device)]!.added,
      ]);
      // Back: what was reserved and not used, and what the undo itself took off a device. A tag this
      // call added that the undo no longer found was removed meanwhile by another call, which gave its
      // count back itself: giving it back here too would leave the count lower than its devices.
      for (const reply of undo) {
        count(release, reply.dropped);
        count(release, reply.removed);
      }
      for (const [tag, n] of reserved) release.set(tag, (release.get(tag) ?? 0) + n);
      for (const device of changed) {
        for (const tag of replies[targets.indexOf(device)]!.added)
          release.set(tag, (release.get(tag) ?? 0) - 1);
      }
      await this.release(accessId, release);
      return {
        ok: false,
        limit: 'per_device',
        token: targets[refused]!.token,
        wouldHave: replies[refused]!.count,
      };
    }
    const changes: TagChange[] = [];
    const stale: string[] = [];
    replies.forEach((reply, i) => {
      const token = targets[i]!.token;
      if (reply.status === -1) {
        stale.push(token);
        count(release, tags);
        return;
      }
      count(release, reply.kept);
      changes.push({ token, count: reply.count, added: reply.added, removed: [] });
    });
    await this.release(accessId, release);
    return { ok: true, changes, stale };
  }

  async remove(
    accessId: number,
    devices: TagDevice[],
    tags: string[],
  ): Promise<{ changes: TagChange[]; stale: string[] }> {
    const targets = distinctDevices(devices);
    const replies = await this.device(accessId, targets, (device) => ['remove', device.index, 0, ...tags]);
    return this.settle(accessId, targets, replies);
  }

  async replace(accessId: number, device: TagDevice, tags: string[], limits: TagLimits): Promise<TagWrite> {
    if (tags.length > limits.perDevice) {
      return { ok: false, limit: 'per_device', token: device.token, wouldHave: tags.length };
    }
    const reserved = new Map(tags.map((tag) => [tag, 1]));
    const refusal = await this.reserve(accessId, reserved, limits.perApp);
    if (refusal !== undefined) return { ok: false, limit: 'per_app', wouldHave: refusal };
    const [reply] = await this.device(accessId, [device], () => [
      'set',
      device.index,
      limits.perDevice,
      ...tags,
    ]);
    const release: Counts = new Map();
    count(release, reply!.dropped);
    if (reply!.status !== 1) {
      count(release, tags);
      await this.release(accessId, release);
      if (reply!.status === 0) {
        return { ok: false, limit: 'per_device', token: device.token, wouldHave: reply!.count };
      }
      return { ok: true, changes: [], stale: [device.token] };
    }
    count(release, reply!.kept);
    count(release, reply!.removed);
    await this.release(accessId, release);
    return {
      ok: true,
      changes: [{ token: device.token, count: reply!.count, added: reply!.added, removed: reply!.removed }],
      stale: [],
    };
  }

  async clear(accessId: number, device: TagDevice): Promise<{ changes: TagChange[]; stale: string[] }> {
    const replies = await this.device(accessId, [device], () => ['clear', device.index]);
    return this.settle(accessId, [device], replies);
  }

  async setAttributes(
    accessId: number,
    device: TagDevice,
    prefixes: string[],
    tags: string[],
  ): Promise<{ changes: TagChange[]; stale: string[] }> {
    const [reply] = await this.device(accessId, [device], () => [
      'attributes',
      device.index,
      prefixes.length,
      ...prefixes,
      ...tags,
    ]);
    // Only what a newer registration dropped has app-wide counts to give back.
    await this.release(accessId, count(new Map(), reply!.dropped));
    if (reply!.status !== 1) return { changes: [], stale: [device.token] };
    return {
      changes: [{ token: device.token, count: reply!.count, added: reply!.added, removed: reply!.removed }],
      stale: [],
    };
  }

  async list(accessId: number, token: string, index?: number): Promise<string[]> {
    const tags = (await redisCall(
      runScript(
        this.redis,
        'tagDevice',
        [this.keys.tags(accessId, token), this.keys.tagMeta(accessId, token)],
        ['list', index ?? -1],
      ),
    )) as string[];
    return tags.sort();
  }

  async appTags(
    accessId: number,
    page: { after?: string; limit: number },
  ): Promise<{ tags: AppTag[]; total: number }> {
    // At most 10,000 fields plus reservations in flight: one read, sorted here.
    const counts = await redisCall(this.redis.hgetall(this.keys.tagCounts(accessId)));
    const all = Object.entries(counts)
      .map(([tag, devices]) => ({ tag, devices: Number(devices) }))
      .filter((entry) => entry.devices > 0)
      .sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : 0));
    const after = page.after;
    const start = after === undefined ? 0 : all.findIndex((entry) => entry.tag > after);
    return { tags: start < 0 ? [] : all.slice(start, start + page.limit), total: all.length };
  }

  async state(accessId: number, token: string): Promise<DeviceTagState | undefined> {
    const [x, d, p, b, ra, o] = await redisCall(
      this.redis.hmget(this.keys.tagMeta(accessId, token), 'x', 'd', 'p', 'b', 'ra', 'o'),
    );
    if (x == null) return undefined;
    return {
      index: Number(x),
      unregistered: d === '1',
      platform: Number(p ?? 0) as Platform,
      builtin: splitBuiltin(b ?? ''),
      registeredAtMs: Number(ra ?? 0),
      online: o === '1',
    };
  }

  async commitRegistration(
    accessId: number,
    token: string,
    attributes: RegistrationAttributes,
    expected: string[],
  ): Promise<'applied' | 'changed' | 'obsolete'> {
    const [reply] = await this.device(accessId, [{ token, index: attributes.index }], () => [
      'register',
      attributes.index,
      joinBuiltin(expected),
      attributes.platform,
      joinBuiltin(attributes.builtin),
      attributes.atMs,
    ]);
    await this.release(accessId, count(new Map(), reply!.dropped));
    return reply!.status === 1 ? 'applied' : reply!.status === 2 ? 'changed' : 'obsolete';
  }

  async presence(
    accessId: number,
    token: string,
    index: number,
    event: { sessionId: string; atMs: number; connected: boolean },
  ): Promise<{ online: boolean } | undefined> {
    const [reply] = await this.device(accessId, [{ token, index }], () => [
      'presence',
      index,
      event.sessionId,
      event.atMs,
      event.connected ? '1' : '0',
    ]);
    await this.release(accessId, count(new Map(), reply!.dropped));
    return reply!.status === 1 ? { online: reply!.online } : undefined;
  }

  async unregister(
    accessId: number,
    token: string,
    index: number,
  ): Promise<{ tags: string[]; builtin: string[]; platform: Platform } | undefined> {
    const [reply] = await this.device(accessId, [{ token, index }], () => [
      'unregister',
      index,
      this.markerTtlMs,
    ]);
    if (reply!.status !== 1) return undefined;
    await this.release(accessId, count(count(new Map(), reply!.removed), reply!.dropped));
    return { tags: reply!.removed, builtin: reply!.builtin, platform: reply!.platform };
  }

  /** Step 3 of removals: counts of tags the devices lost are given back. */
  private async settle(
    accessId: number,
    targets: TagDevice[],
    replies: DeviceReply[],
  ): Promise<{ changes: TagChange[]; stale: string[] }> {
    const release: Counts = new Map();
    const changes: TagChange[] = [];
    const stale: string[] = [];
    replies.forEach((reply, i) => {
      const token = targets[i]!.token;
      count(release, reply.dropped);
      if (reply.status !== 1) {
        stale.push(token);
        return;
      }
      count(release, reply.removed);
      changes.push({ token, count: reply.count, added: [], removed: reply.removed });
    });
    await this.release(accessId, release);
    return { changes, stale };
  }

  /** Returns undefined when reserved, or the distinct tags the app would have had. */
  private async reserve(accessId: number, counts: Counts, maxDistinct: number): Promise<number | undefined> {
    if (counts.size === 0) return undefined;
    const [ok, distinct] = (await redisCall(
      runScript(this.redis, 'tagReserve', [this.keys.tagCounts(accessId)], [maxDistinct, ...pairs(counts)]),
    )) as [number, number];
    return ok === 1 ? undefined : distinct;
  }

  private async release(accessId: number, counts: Counts): Promise<void> {
    if (counts.size === 0) return;
    await redisCall(runScript(this.redis, 'tagRelease', [this.keys.tagCounts(accessId)], pairs(counts)));
  }

  /** Runs tag-device.lua for each device, one round trip per Redis node. */
  private async device(
    accessId: number,
    devices: TagDevice[],
    args: (device: TagDevice) => (string | number)[],
  ): Promise<DeviceReply[]> {
    const replies = await commandPerKey(
      devices.map((device) => this.keys.tags(accessId, device.token)),
      (key, i) => {
        const device = devices[i]!;
        // Both keys share the device's hash tag, so routing the command by the first one is right.
        return runScript(
          this.redis,
          'tagDevice',
          [key, this.keys.tagMeta(accessId, device.token)],
          args(device),
        );
      },
    );
    return replies.map((raw) => parseReply(raw as (string | number)[]));
  }
}

function parseReply(raw: (string | number)[]): DeviceReply {
  let at = 0;
  const next = () => raw[at++];
  const list = () => {
    const n = Number(next());
    const out = raw.slice(at, at + n).map(String);
    at += n;
    return out;
  };
  const status = Number(next());
  const count = Number(next());
  const added = list();
  // Sorted, as Redis returns set members in no particular order.
  const removed = list().sort();
  const kept = list();
  const dropped = list();
  const online = Number(next()) === 1;
  const builtin = splitBuiltin(String(next() ?? ''));
  const platform = Number(next() ?? 0) as Platform;
  return { status, count, added, removed, kept, dropped, online, builtin, platform };
}

function distinctDevices(devices: TagDevice[]): TagDevice[] {
  const seen = new Set<string>();
  return devices.filter((device) => !seen.has(device.token) && seen.add(device.token));
}

/** Adds the user tags among `tags` to `counts`: attribute tags have no app-wide count. */
function count(counts: Counts, tags: string[]): Counts {
  for (const tag of tags) if (!isAttributeTag(tag)) counts.set(tag, (counts.get(tag) ?? 0) + 1);
  return counts;
}

function pairs(counts: Counts): (string | number)[] {
  const out: (string | number)[] = [];
  for (const [tag, n] of counts) if (n !== 0) out.push(tag, n);
  return out;
}

/** Built-in tags are stored '\n'-joined: the registry refuses control characters in device details. */
function joinBuiltin(tags: string[]): string {
  return tags.join('\n');
}

function splitBuiltin(value: string): string[] {
  return value === '' ? [] : value.split('\n');
}

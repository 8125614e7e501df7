import { RESERVED_TAG_PREFIX } from '@pushd/audience';
import type { Platform } from '@pushd/proto';

/**
 * Whether a member of a device's tag set is an attribute tag (a built-in `pushd:` tag pushd keeps in the
 * set, such as the device's reported location) rather than a user tag.
 */
export function isAttributeTag(tag: string): boolean {
  return tag.startsWith(RESERVED_TAG_PREFIX);
}

/** The brief's tag limits (MISSION rule 3), passed per call so that tests can use small ones. */
export interface TagLimits {
  /** User tags one device may hold (the brief: 100). */
  perDevice: number;
  /** Distinct user tags one app may use over all its devices (the brief: 10,000). */
  perApp: number;
}

/** A device as the tag store addresses it: its token and its index (DeviceRecord.index). */
export interface TagDevice {
  token: string;
  index: number;
}

/** What one call did to one device's user tags (or, for setAttributes, to its attribute tags). */
export interface TagChange {
  token: string;
  /** User tags the device holds after the call (attribute tags are never counted). */
  count: number;
  /** Tags the call gave the device that it did not hold before. */
  added: string[];
  /** Tags the call took from the device. */
  removed: string[];
}

/** The outcome of a call that may refuse: applied whole, or refused whole naming the limit. */
export type TagWrite =
  | {
      ok: true;
      changes: TagChange[];
      /**
       * Tokens skipped because they registered again (a new index) since the caller looked them up:
       * nothing was written for them.
       */
      stale: string[];
    }
  | { ok: false; limit: 'per_device'; token: string; wouldHave: number }
  | { ok: false; limit: 'per_app'; wouldHave: number };

/** A user tag of an app and how many devices hold it. */
export interface AppTag {
  tag: string;
  devices: number;
}

/** What the tag service applied to the audience index for a device (its built-in attributes). */
export interface DeviceTagState {
  /** The registration (device index) this state belongs to. */
  index: number;
  /** That registration ended: the state is kept for a while so that late events about it are ignored. */
  unregistered: boolean;
  platform: Platform;
  /** Built-in value tags set for the index (`pushd:app_version:2.1.0`, ...). */
  builtin: string[];
  /** at_ms of the registration event applied last, 0 if none. */
  registeredAtMs: number;
  /** Whether the presence events applied so far leave the device online (see presence). */
  online: boolean;
}

/** A registration event's attributes, as commitRegistration stores them. */
export interface RegistrationAttributes {
  index: number;
  platform: Platform;
  builtin: string[];
  atMs: number;
}

/**
 * Tags of devices and their app-wide counts. Owned by the tag service.
 *
 * A device's tag set holds two kinds of members: user tags (set by the app or the device, never starting
 * with `pushd:`) and attribute tags (`pushd:` tags pushd sets itself with setAttributes: the device's
 * reported province and city). Keeping both in one set lets every reader of a device's tags (gateways,
 * dispatch's catch-up, through `list`) see both with one read. Only user tags are user tags for the rest
 * of this interface: `count`, both limits and the app-wide counts (`appTags`) ignore attribute tags, and
 * add / remove / replace / clear (whose `tags` must be user tags; the tag service validates them) leave
 * attribute tags in place. unregister and a newer registration forget both kinds.
 *
 * Each device's user tags belong to one registration of its token (one device index): a write for a newer
 * index first forgets the tags of the older one (whose UNREGISTERED event has not been applied yet), and a
 * write with an older index than the state's is skipped (`stale`), so that a call or an event that raced a
 * re-registration cannot leak tags into the new one.
 *
 * Per app, the store counts the devices holding each user tag; the number of tags with a count above zero
 * is the app's distinct tag count that `perApp` limits. Calls that add tags are all-or-nothing over every
 * device and tag they name: either the whole call is applied, or it is refused (naming the limit) and
 * nothing of it is. Implementations may refuse a call that would fit when a crash left counts too high;
 * they never let an app exceed the limits (see tag-store-redis.ts for the steps).
 */
export interface TagStore {
  /** Adds `tags` (distinct) to every device. */
  add(accessId: number, devices: TagDevice[], tags: string[], limits: TagLimits): Promise<TagWrite>;

  /** Removes `tags` from every device (tags a device does not hold are ignored). */
  remove(
    accessId: number,
    devices: TagDevice[],
    tags: string[],
  ): Promise<{ changes: TagChange[]; stale: string[] }>;

  /** Replaces all user tags of the device by `tags` (distinct; empty clears). */
  replace(accessId: number, device: TagDevice, tags: string[], limits: TagLimits): Promise<TagWrite>;

  /** Removes every user tag of the device (its attribute tags stay). */
  clear(accessId: number, device: TagDevice): Promise<{ changes: TagChange[]; stale: string[] }>;

  /**
   * Replaces the device's attribute tags that start with one of `prefixes` (e.g. `pushd:province:` and
   * `pushd:city:`) by `tags` (distinct, each starting with one of the prefixes; empty removes them all).
   * `added` / `removed` name the attribute tags that changed; `count` is the device's user tag count.
   * No limit applies and no app-wide count changes.
   */
  setAttributes(
    accessId: number,
    device: TagDevice,
    prefixes: string[],
    tags: string[],
  ): Promise<{ changes: TagChange[]; stale: string[] }>;

  /**
   * The device's tags, user and attribute tags (isAttributeTag tells them apart), sorted. With `index`,
   * only the tags of that registration (none if the state belongs to another one).
   */
  list(accessId: number, token: string, index?: number): Promise<string[]>;

  /** The app's user tags with a device count, sorted, `limit` of them after `after`; `total` counts all. */
  appTags(
    accessId: number,
    page: { after?: string; limit: number },
  ): Promise<{ tags: AppTag[]; total: number }>;

  /** The device's built-in state, undefined if the tag service never saw it. */
  state(accessId: number, token: string): Promise<DeviceTagState | undefined>;

  /**
   * Records a registration event's attributes, as applied to the audience index, provided the built-in
   * tags stored for that index are still `expected` (the caller's read; [] when none). 'changed' means
   * they are not (read the state again); 'obsolete' that a newer registration or a newer registration
   * event owns the state, or this registration unregistered (the event must not be applied).
   */
  commitRegistration(
    accessId: number,
    token: string,
    attributes: RegistrationAttributes,
    expected: string[],
  ): Promise<'applied' | 'changed' | 'obsolete'>;

  /**
   * Records that session `sessionId` of the device connected or disconnected at `atMs`; returns whether the
   * device is online afterwards (a disconnect of a session that another one replaced changes nothing), or
   * undefined when the event is obsolete (a newer registration, or this one unregistered). Events come at
   * least once and in any order: a connect of the session already recorded changes nothing (it may have
   * disconnected since), and a connect whose disconnect came first (the newest disconnect of a session
   * not recorded is kept) records the session offline.
   */
  presence(
    accessId: number,
    token: string,
    index: number,
    event: { sessionId: string; atMs: number; connected: boolean },
  ): Promise<{ online: boolean } | undefined>;

  /**
   * Forgets the device's tags and state for registration `index` (it unregistered), keeping a marker
   * that makes later events about that registration obsolete. Returns what the registration held (`tags`:
   * user and attribute tags, whose index bits the caller clears), or undefined when a newer registration
   * owns the state or this one was already forgotten.
   */
  unregister(
    accessId: number,
    token: string,
    index: number,
  ): Promise<{ tags: string[]; builtin: string[]; platform: Platform } | undefined>;
}

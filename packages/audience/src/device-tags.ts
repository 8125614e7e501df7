/**
 * The tags one device has, as a `HasTag` for the evaluators: its user tags plus the built-in `pushd:` tags
 * derived from what it reported at registration. Gateways build one per connection (and again when its
 * tags change); dispatch builds one when a device comes back and catches up on broadcasts.
 *
 * The tag store's set of a device (what both pass as `userTags`) also holds the built-in tags the tag
 * service keeps there, its reported location (`pushd:province:<p>`, `pushd:city:<c>`): a `pushd:` tag is
 * held when either the attributes make it or the set holds it.
 */
import type { Platform } from '@pushd/proto';
import type { HasTag } from './evaluate.js';
import { builtinTag, platformTag, RESERVED_TAG_PREFIX } from './expression.js';

/** What a device reported about itself (registry Device fields); empty strings mean "not reported". */
export interface DeviceAttributes {
  /** Makes pushd:platform:<android|ios>; PLATFORM_UNSPECIFIED makes none. */
  platform: Platform;
  appVersion: string;
  osVersion: string;
  locale: string;
  /**
   * The device's location, for callers that know it otherwise; the tag service stores reported locations
   * in the device's tag set, which `userTags` brings. Default: none.
   */
  province?: string;
  city?: string;
}

/**
 * A `HasTag` for a device that is connected (or connecting) now: it is active within 1, 7 and 30 days.
 * The built-in tags are computed once here, so a lookup is one or two Set probes.
 */
export function deviceTagTest(attributes: DeviceAttributes, userTags: Iterable<string>): HasTag {
  const builtins = new Set<string>([
    builtinTag('active', '1d'),
    builtinTag('active', '7d'),
    builtinTag('active', '30d'),
  ]);
  const platform = platformTag(attributes.platform);
  if (platform !== undefined) builtins.add(platform);
  if (attributes.appVersion) builtins.add(builtinTag('app_version', attributes.appVersion));
  if (attributes.osVersion) builtins.add(builtinTag('os_version', attributes.osVersion));
  if (attributes.locale) builtins.add(builtinTag('locale', attributes.locale));
  if (attributes.province) builtins.add(builtinTag('province', attributes.province));
  if (attributes.city) builtins.add(builtinTag('city', attributes.city));
  const user = new Set(userTags);
  if (user.size === 0) return (tag) => builtins.has(tag);
  return (tag) => (tag.startsWith(RESERVED_TAG_PREFIX) && builtins.has(tag)) || user.has(tag);
}

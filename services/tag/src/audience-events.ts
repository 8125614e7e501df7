import { builtinTag } from '@pushd/audience';
import type { Logger } from '@pushd/common';
import { type Event, EventType } from '@pushd/proto';
import type { AudienceIndex, TagStore } from '@pushd/store';

export interface AudienceEventsOptions {
  tags: TagStore;
  audience: AudienceIndex;
  logger: Logger;
}

/** Attempts at a registration whose built-in tags another event changed meanwhile. */
const MAX_REGISTRATION_ATTEMPTS = 5;
/** Writes of a device's online bit while another replica keeps changing its presence (see presence). */
const MAX_ONLINE_WRITES = 5;

/**
 * Keeps the audience index current from registry and gateway events, without any call from the app:
 * registered and platform bits and built-in value tags from REGISTERED / UNREGISTERED, the online bit and
 * the day a device was last seen from CONNECTED / DISCONNECTED.
 *
 * Events arrive at least once and, across publishers and redeliveries, in any order. Each names the
 * registration it is about (its device index), and the tag store's per-device state (tag-store.ts) says
 * which registration is current and what was applied for it, so applying an event twice changes nothing
 * and an event about an older registration, or one that unregistered, is dropped. Index bits are written
 * before that state (so that a crash in between is repaired by the redelivery), and an unregistration
 * marks the state before it clears the registered bit, so that whatever the interleaving of the two, the
 * last write to a registration's bit after it unregistered is a clear.
 */
export class AudienceEvents {
  constructor(private readonly options: AudienceEventsOptions) {}

  async apply(event: Event): Promise<void> {
    switch (event.type) {
      case EventType.EVENT_TYPE_REGISTERED:
        return this.registered(event);
      case EventType.EVENT_TYPE_UNREGISTERED:
        return this.unregistered(event);
      case EventType.EVENT_TYPE_CONNECTED:
      case EventType.EVENT_TYPE_DISCONNECTED:
        return this.presence(event);
      default:
        return;
    }
  }

  private async registered(event: Event): Promise<void> {
    const { tags, audience } = this.options;
    const index = event.deviceIndex;
    if (index === undefined) return;
    const { accessId, token, platform, atMs } = event;
    const builtin = builtinTagsOf(event);
    for (let attempt = 0; attempt < MAX_REGISTRATION_ATTEMPTS; attempt++) {
      const state = await tags.state(accessId, token);
      if (
        state !== undefined &&
        (state.index > index ||
          (state.index === index && (state.unregistered || state.registeredAtMs > atMs)))
      ) {
        return;
      }
      const previous = state?.index === index ? state.builtin : [];
      await audience.setRegistered(accessId, index, platform, true);
      await audience.setTags(
        accessId,
        index,
        builtin,
        previous.filter((tag) => !builtin.includes(tag)),
      );
      await audience.markSeen(accessId, index, atMs);
      const outcome = await tags.commitRegistration(
        accessId,
        token,
        { index, platform, builtin, atMs },
        previous,
      );
      if (outcome === 'applied') return;
      if (outcome === 'obsolete') {
        await this.undoRegistration(event, index, builtin);
        return;
      }
    }
    this.options.logger.warn(
      { accessId, token },
      'registration event kept losing races; redelivery will retry',
    );
    throw new Error('registration event could not be applied');
  }

  /**
   * The device unregistered, registered again, or a newer registration event was applied while this one
   * wrote bits: put back what the current state says.
   */
  private async undoRegistration(event: Event, index: number, builtin: string[]): Promise<void> {
    const { tags, audience } = this.options;
    const state = await tags.state(event.accessId, event.token);
    if (state?.index === index && !state.unregistered) {
      await audience.setRegistered(event.accessId, index, state.platform, true);
      await audience.setTags(
        event.accessId,
        index,
        state.builtin,
        builtin.filter((tag) => !state.builtin.includes(tag)),
      );
      return;
    }
    await audience.setRegistered(event.accessId, index, event.platform, false);
    await audience.setTags(event.accessId, index, [], builtin);
  }

  private async unregistered(event: Event): Promise<void> {
    const { tags, audience } = this.options;
    const { accessId, token } = event;
    // Without an index the event is about a registration from before indexes existed, which the index
    // never held. The device's state, if any, belongs to a later registration: taking its index would
    // unregister that one.
    const index = event.deviceIndex;
    if (index === undefined) return;
    // The state first (it makes late events about this registration obsolete), then the bits.
    const held = await tags.unregister(accessId, token, index);
    await audience.setRegistered(accessId, index, event.platform, false);
    await audience.setOnline(accessId, index, false);
    if (held !== undefined && held.tags.length + held.builtin.length > 0) {
      await audience.setTags(accessId, index, [], [...held.tags, ...held.builtin]);
    }
  }

  private async presence(event: Event): Promise<void> {
    const { tags, audience } = this.options;
    const index = event.deviceIndex;
    if (index === undefined) return;
    const result = await tags.presence(event.accessId, event.token, index, {
      sessionId: event.sessionId ?? '',
      atMs: event.atMs,
      connected: event.type === EventType.EVENT_TYPE_CONNECTED,
    });
    if (result === undefined) return;
    // The bit is in the app's hash slot, the state in the device's: two replicas applying a connect and
    // a disconnect of one device side by side (neighbouring batches) can write the bit in the opposite
    // order to the one the state decided. So each writer reads the state back after its write and
    // writes again until the two agree: the last write to the bit then matches the state. A registration
    // that unregistered, or that a newer one replaced, is offline.
    let online = result.online;
    for (let write = 0; write < MAX_ONLINE_WRITES; write++) {
      await audience.setOnline(event.accessId, index, online);
      const state = await tags.state(event.accessId, event.token);
      const current = state !== undefined && state.index === index && !state.unregistered && state.online;
      if (current === online) break;
      online = current;
    }
    await audience.markSeen(event.accessId, index, event.atMs);
  }
}

/** The built-in value tags of a registration: app version, OS version and locale, when the device gave them. */
export function builtinTagsOf(details: {
  appVersion?: string;
  osVersion?: string;
  locale?: string;
}): string[] {
  const tags: string[] = [];
  if (details.appVersion) tags.push(builtinTag('app_version', details.appVersion));
  if (details.osVersion) tags.push(builtinTag('os_version', details.osVersion));
  if (details.locale) tags.push(builtinTag('locale', details.locale));
  return tags;
}

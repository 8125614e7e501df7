import { describe, expect, it } from 'vitest';
import { Message, MessageType, Platform, Toggle } from './gen/pushd/v1/common.js';
import { forPlatform } from './message-platform.js';

const both = Message.fromPartial({
  type: MessageType.MESSAGE_TYPE_NOTIFY,
  title: 'Sale',
  content: 'Everything half price',
  collapseId: 'sale',
  android: { channelId: 'promo', ring: Toggle.TOGGLE_ON, badge: { change: { $case: 'add', value: 1 } } },
  ios: { subtitle: 'Today only', sound: 'default' },
});

describe('forPlatform', () => {
  it('gives Android devices the android style only, and iOS devices the ios style only', () => {
    const android = forPlatform(both, Platform.PLATFORM_ANDROID);
    expect(android).toEqual({ ...both, ios: undefined });
    expect(Message.toJSON(android)).not.toHaveProperty('ios');
    const ios = forPlatform(both, Platform.PLATFORM_IOS);
    expect(ios).toEqual({ ...both, android: undefined });
    expect(Message.toJSON(ios)).not.toHaveProperty('android');
    // The other platform's bytes are not on the wire either.
    expect(Message.encode(android).finish().length).toBeLessThan(Message.encode(both).finish().length);
  });

  it('leaves the input unchanged', () => {
    const copy = structuredClone(both);
    forPlatform(both, Platform.PLATFORM_ANDROID);
    forPlatform(both, Platform.PLATFORM_IOS);
    expect(both).toEqual(copy);
  });

  it('returns the same object when there is nothing to drop', () => {
    expect(forPlatform(both, Platform.PLATFORM_UNSPECIFIED)).toBe(both);
    const androidOnly = { ...both, ios: undefined };
    expect(forPlatform(androidOnly, Platform.PLATFORM_ANDROID)).toBe(androidOnly);
    const iosOnly = { ...both, android: undefined };
    expect(forPlatform(iosOnly, Platform.PLATFORM_IOS)).toBe(iosOnly);
    const plain = Message.fromPartial({ type: MessageType.MESSAGE_TYPE_NOTIFY, content: 'x' });
    expect(forPlatform(plain, Platform.PLATFORM_ANDROID)).toBe(plain);
    expect(forPlatform(plain, Platform.PLATFORM_IOS)).toBe(plain);
  });
});

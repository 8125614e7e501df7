import { type Message, Platform } from './gen/pushd/v1/common.js';

/**
 * The message as a device of `platform` receives it: Android devices get `android` and not `ios`, iOS
 * devices the reverse, so that no device pays for (or learns of) the other platform's style. A device of
 * unknown platform (PLATFORM_UNSPECIFIED) keeps both. Returns `message` itself when there is nothing to
 * drop, so that callers can cache per message object; otherwise a shallow copy (the rest is shared, never
 * changed).
 */
export function forPlatform(message: Message, platform: Platform): Message {
  if (platform === Platform.PLATFORM_ANDROID) {
    if (message.ios === undefined) return message;
    return { ...message, ios: undefined };
  }
  if (platform === Platform.PLATFORM_IOS) {
    if (message.android === undefined) return message;
    return { ...message, android: undefined };
  }
  return message;
}

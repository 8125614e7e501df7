import { invalidArgument, PushdError } from '@pushd/common';
import {
  type AndroidStyle,
  type Badge,
  type ClickAction,
  encodeMessage,
  type IosStyle,
  Message,
  MessageType,
  Toggle,
} from '@pushd/proto';

/** Serialized message limit, in UTF-8 bytes (as TPNS), styles and collapse_id included. */
export const MAX_MESSAGE_BYTES = 4096;
/** collapse_id: 1 to this many characters of COLLAPSE_ID_CHARS. */
export const MAX_COLLAPSE_ID_CHARS = 64;
/** Android notification channel ids (TPNS caps its own at 64 too). */
export const MAX_CHANNEL_ID_CHARS = 64;
/** intent URIs, click URLs and icon URLs. */
export const MAX_URI_CHARS = 1024;
/** An activity class name for open_app. */
export const MAX_ACTIVITY_CHARS = 256;
/** aps.alert.subtitle. */
export const MAX_SUBTITLE_CHARS = 256;
/** aps.sound and aps.category. */
export const MAX_SOUND_CHARS = 64;
export const MAX_CATEGORY_CHARS = 64;
/** Badge.add: more than 99 at once is a sender's bug, not a count. */
export const MAX_BADGE_ADD = 99;
/** Badge.set: what launchers and iOS display without truncating oddly. */
export const MAX_BADGE_SET = 99_999;

/** Safe in Redis keys and HTTP headers alike; an SDK may use it as a notification tag or identifier. */
const COLLAPSE_ID_CHARS = /^[A-Za-z0-9_.:-]+$/;
/** An Android resource name (res/drawable, res/raw), without extension. */
const RESOURCE_NAME = /^[a-z0-9_]+$/;
/** A Java class name, fully qualified or relative to the package (".MainActivity", as in the manifest). */
const ACTIVITY_NAME = /^\.?[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*$/;

/**
 * Checks the content against the API's rules and returns it.
 *
 * Styles are for notifications: on a pass-through message (MESSAGE_TYPE_MESSAGE) the SDK shows nothing,
 * so `android` is refused and `ios` may only carry `content_available` (an iOS pass-through is a silent,
 * background push: APNs delivers it only when the aps dictionary holds content-available alone, which is
 * also how TPNS sends iOS pass-through messages). A push may carry both `android` and `ios`; each device
 * receives only its platform's (forPlatform in @pushd/proto).
 */
export function validateMessage(message: Message | undefined): Message {
  if (message === undefined) throw invalidArgument('message', 'required');
  if (message.type === MessageType.MESSAGE_TYPE_NOTIFY) {
    if (message.content === '') throw invalidArgument('message.content', 'required for a notification');
  } else if (message.type === MessageType.MESSAGE_TYPE_MESSAGE) {
    if (message.content === '' && Object.keys(message.customContent).length === 0) {
      throw invalidArgument('message', 'a pass-through message needs content or custom_content');
    }
  } else {
    throw invalidArgument('message.type', 'must be MESSAGE_TYPE_NOTIFY or MESSAGE_TYPE_MESSAGE');
  }
  if (message.collapseId !== undefined) validateCollapseId(message.collapseId);
  const notification = message.type === MessageType.MESSAGE_TYPE_NOTIFY;
  if (message.android !== undefined) {
    if (!notification) {
      throw invalidArgument(
        'message.android',
        'styles are for notifications (MESSAGE_TYPE_NOTIFY); a pass-through message has none',
      );
    }
    validateAndroid(message.android);
  }
  if (message.ios !== undefined) {
    if (!notification && !isSilentOnly(message.ios)) {
      throw invalidArgument(
        'message.ios',
        'a pass-through message may only set content_available; the other fields are for notifications (MESSAGE_TYPE_NOTIFY)',
      );
    }
    validateIos(message.ios);
  }
  const size = encodeMessage(Message, message).length;
  if (size > MAX_MESSAGE_BYTES) {
    throw new PushdError(
      'PAYLOAD_TOO_LARGE',
      `message is ${size} bytes serialized; the limit is ${MAX_MESSAGE_BYTES}`,
      {
        metadata: { limit: String(MAX_MESSAGE_BYTES), size: String(size) },
      },
    );
  }
  return message;
}

function validateCollapseId(collapseId: string): void {
  if (
    collapseId.length < 1 ||
    collapseId.length > MAX_COLLAPSE_ID_CHARS ||
    !COLLAPSE_ID_CHARS.test(collapseId)
  ) {
    throw invalidArgument(
      'message.collapse_id',
      `must be 1 to ${MAX_COLLAPSE_ID_CHARS} characters of [A-Za-z0-9_.:-] when present`,
    );
  }
}

function validateAndroid(android: AndroidStyle): void {
  const field = 'message.android';
  maxChars(`${field}.channel_id`, android.channelId, MAX_CHANNEL_ID_CHARS);
  if (!Number.isInteger(android.builderId) || android.builderId < 0) {
    throw invalidArgument(`${field}.builder_id`, 'must be 0 (the default layout) or a positive id');
  }
  toggle(`${field}.ring`, android.ring);
  if (android.ringRaw !== '' && !RESOURCE_NAME.test(android.ringRaw)) {
    throw invalidArgument(
      `${field}.ring_raw`,
      'must be a sound resource name of [a-z0-9_] (a file in res/raw, without extension)',
    );
  }
  toggle(`${field}.vibrate`, android.vibrate);
  toggle(`${field}.lights`, android.lights);
  toggle(`${field}.clearable`, android.clearable);
  if (android.icon !== '' && !RESOURCE_NAME.test(android.icon) && !isHttpUrl(android.icon, ['https:'])) {
    throw invalidArgument(
      `${field}.icon`,
      `must be a drawable name of [a-z0-9_] or an https URL of at most ${MAX_URI_CHARS} characters`,
    );
  }
  if (android.smallIcon !== '' && !RESOURCE_NAME.test(android.smallIcon)) {
    throw invalidArgument(`${field}.small_icon`, 'must be a drawable name of [a-z0-9_]');
  }
  if (android.badge !== undefined) validateBadge(`${field}.badge`, android.badge);
  if (android.action !== undefined) validateAction(`${field}.action`, android.action);
}

function validateAction(field: string, action: ClickAction): void {
  const target = action.target;
  // No target: the SDK's default, opening the app.
  if (target === undefined) return;
  switch (target.$case) {
    case 'openApp':
      // Empty: the launcher activity.
      if (
        target.value !== '' &&
        (target.value.length > MAX_ACTIVITY_CHARS || !ACTIVITY_NAME.test(target.value))
      ) {
        throw invalidArgument(
          `${field}.open_app`,
          `must be empty (the launcher activity) or an activity class name of at most ${MAX_ACTIVITY_CHARS} characters`,
        );
      }
      return;
    case 'openUrl':
      if (!isHttpUrl(target.value, ['http:', 'https:'])) {
        throw invalidArgument(
          `${field}.open_url`,
          `must be an http or https URL of at most ${MAX_URI_CHARS} characters`,
        );
      }
      return;
    case 'intent':
      if (target.value.trim() === '' || chars(target.value) > MAX_URI_CHARS) {
        throw invalidArgument(
          `${field}.intent`,
          `must be a non-empty intent URI of at most ${MAX_URI_CHARS} characters`,
        );
      }
      return;
  }
}

function validateIos(ios: IosStyle): void {
  const field = 'message.ios';
  maxChars(`${field}.subtitle`, ios.subtitle, MAX_SUBTITLE_CHARS);
  maxChars(`${field}.sound`, ios.sound, MAX_SOUND_CHARS);
  maxChars(`${field}.category`, ios.category, MAX_CATEGORY_CHARS);
  if (ios.badge !== undefined) validateBadge(`${field}.badge`, ios.badge);
}

function validateBadge(field: string, badge: Badge): void {
  const change = badge.change;
  // An empty Badge leaves the badge as it is, like no Badge.
  if (change === undefined) return;
  if (change.$case === 'add') {
    if (!Number.isInteger(change.value) || change.value < 0 || change.value > MAX_BADGE_ADD) {
      throw invalidArgument(`${field}.add`, `must be 0 to ${MAX_BADGE_ADD}`);
    }
  } else if (!Number.isInteger(change.value) || change.value < 0 || change.value > MAX_BADGE_SET) {
    throw invalidArgument(`${field}.set`, `must be 0 to ${MAX_BADGE_SET}`);
  }
}

/** An iOS style with nothing but content_available (mutable_content needs an alert to change). */
function isSilentOnly(ios: IosStyle): boolean {
  return (
    ios.subtitle === '' &&
    ios.badge === undefined &&
    ios.sound === '' &&
    ios.category === '' &&
    !ios.mutableContent
  );
}

function toggle(field: string, value: Toggle): void {
  if (value !== Toggle.TOGGLE_UNSPECIFIED && value !== Toggle.TOGGLE_ON && value !== Toggle.TOGGLE_OFF) {
    throw invalidArgument(field, 'must be TOGGLE_UNSPECIFIED, TOGGLE_ON or TOGGLE_OFF');
  }
}

function maxChars(field: string, value: string, max: number): void {
  if (chars(value) > max) throw invalidArgument(field, `at most ${max} characters`);
}

/** Characters as people count them in most scripts: code points, not UTF-16 units. */
function chars(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}

function isHttpUrl(value: string, protocols: readonly string[]): boolean {
  if (chars(value) > MAX_URI_CHARS || /\s/.test(value)) return false;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  return protocols.includes(url.protocol) && url.hostname !== '';
}

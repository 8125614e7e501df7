import { PushdError } from '@pushd/common';
import { AndroidStyle, IosStyle, Message, MessageType, Toggle } from '@pushd/proto';
import { describe, expect, it } from 'vitest';
import { MAX_MESSAGE_BYTES, validateMessage } from './message-rules.js';

const notify = (fields: Partial<Message> = {}): Message => ({
  ...Message.create(),
  type: MessageType.MESSAGE_TYPE_NOTIFY,
  content: 'hello',
  ...fields,
});
const android = (fields: Partial<AndroidStyle>): Message =>
  notify({ android: { ...AndroidStyle.create(), ...fields } });
const ios = (fields: Partial<IosStyle>): Message => notify({ ios: { ...IosStyle.create(), ...fields } });

/** The INVALID_ARGUMENT error naming `field`, as validateMessage throws it. */
const invalid = (field: string) =>
  expect.objectContaining({ code: 'INVALID_ARGUMENT', metadata: { field } }) as unknown as Error;

describe('validateMessage: styles', () => {
  it('accepts a notification with both styles filled in', () => {
    const full = notify({
      collapseId: 'order-1234:status',
      android: {
        channelId: 'orders',
        builderId: 3,
        ring: Toggle.TOGGLE_ON,
        ringRaw: 'chime_2',
        vibrate: Toggle.TOGGLE_OFF,
        lights: Toggle.TOGGLE_UNSPECIFIED,
        clearable: Toggle.TOGGLE_ON,
        icon: 'https://cdn.example.com/i/1234.png',
        smallIcon: 'ic_stat_order',
        badge: { change: { $case: 'add', value: 99 } },
        action: { target: { $case: 'openUrl', value: 'https://example.com/orders/1234?x=1' } },
      },
      ios: {
        subtitle: 'Shipped',
        badge: { change: { $case: 'set', value: 99_999 } },
        sound: 'default',
        category: 'ORDER',
        mutableContent: true,
        contentAvailable: true,
      },
    });
    expect(validateMessage(full)).toBe(full);
  });

  it('accepts empty styles and the SDK defaults they stand for', () => {
    for (const message of [
      android({}),
      ios({}),
      android({ badge: {}, action: {} }),
      android({ icon: 'ic_launcher', action: { target: { $case: 'openApp', value: '' } } }),
      android({ action: { target: { $case: 'openApp', value: '.MainActivity' } } }),
      android({ action: { target: { $case: 'openApp', value: 'com.example.app.OrderActivity' } } }),
      android({ action: { target: { $case: 'openUrl', value: 'http://example.com' } } }),
      android({ action: { target: { $case: 'intent', value: 'intent://orders/1#Intent;scheme=app;end' } } }),
      android({ action: { target: { $case: 'intent', value: 'myapp://orders/1' } } }),
      android({ badge: { change: { $case: 'set', value: 0 } } }),
    ]) {
      expect(validateMessage(message)).toBe(message);
    }
  });

  it.each([
    [
      'message.android.action.open_url',
      android({ action: { target: { $case: 'openUrl', value: 'ftp://x.y' } } }),
    ],
    [
      'message.android.action.open_url',
      android({ action: { target: { $case: 'openUrl', value: 'example.com' } } }),
    ],
    ['message.android.action.open_url', android({ action: { target: { $case: 'openUrl', value: '' } } })],
    [
      'message.android.action.open_url',
      android({ action: { target: { $case: 'openUrl', value: 'javascript:alert(1)' } } }),
    ],
    [
      'message.android.action.open_url',
      android({ action: { target: { $case: 'openUrl', value: `https://example.com/${'a'.repeat(1010)}` } } }),
    ],
    ['message.android.action.intent', android({ action: { target: { $case: 'intent', value: '' } } })],
    ['message.android.action.intent', android({ action: { target: { $case: 'intent', value: '   ' } } })],
    [
      'message.android.action.intent',
      android({ action: { target: { $case: 'intent', value: 'x'.repeat(1025) } } }),
    ],
    [
      'message.android.action.open_app',
      android({ action: { target: { $case: 'openApp', value: 'not a class' } } }),
    ],
    ['message.android.channel_id', android({ channelId: 'c'.repeat(65) })],
    ['message.android.builder_id', android({ builderId: -1 })],
    ['message.android.icon', android({ icon: 'Icon-Large' })],
    ['message.android.icon', android({ icon: 'http://cdn.example.com/i.png' })],
    ['message.android.small_icon', android({ smallIcon: 'https://cdn.example.com/i.png' })],
    ['message.android.small_icon', android({ smallIcon: 'ic stat' })],
    ['message.android.ring_raw', android({ ringRaw: 'chime.mp3' })],
    ['message.android.ring', android({ ring: 7 as Toggle })],
    ['message.android.vibrate', android({ vibrate: 9 as Toggle })],
    ['message.android.lights', android({ lights: -3 as Toggle })],
    ['message.android.clearable', android({ clearable: 3 as Toggle })],
    ['message.android.badge.add', android({ badge: { change: { $case: 'add', value: 100 } } })],
    ['message.android.badge.set', android({ badge: { change: { $case: 'set', value: 100_000 } } })],
    ['message.ios.badge.add', ios({ badge: { change: { $case: 'add', value: 100 } } })],
    ['message.ios.badge.set', ios({ badge: { change: { $case: 'set', value: 100_000 } } })],
    ['message.ios.sound', ios({ sound: 's'.repeat(65) })],
    ['message.ios.category', ios({ category: 'c'.repeat(65) })],
    ['message.ios.subtitle', ios({ subtitle: 's'.repeat(257) })],
  ])('refuses %s', (field, message) => {
    expect(() => validateMessage(message)).toThrow(invalid(field));
  });

  it('counts characters, not UTF-16 units or bytes, against the length limits', () => {
    // 256 CJK characters (768 bytes) and 256 emoji (512 UTF-16 units) are within the subtitle's 256.
    expect(() => validateMessage(ios({ subtitle: '订'.repeat(256) }))).not.toThrow();
    expect(() => validateMessage(ios({ subtitle: '📦'.repeat(256) }))).not.toThrow();
    expect(() => validateMessage(ios({ subtitle: '📦'.repeat(257) }))).toThrow(
      invalid('message.ios.subtitle'),
    );
    expect(() => validateMessage(android({ channelId: '频'.repeat(64) }))).not.toThrow();
  });

  it('keeps styles to notifications: a pass-through message may only ask iOS for content_available', () => {
    const passThrough = (fields: Partial<Message>): Message =>
      notify({
        type: MessageType.MESSAGE_TYPE_MESSAGE,
        content: '',
        customContent: { sync: 'inbox' },
        ...fields,
      });
    const iosStyle = (fields: Partial<IosStyle>) => ({ ...IosStyle.create(), ...fields });
    const silent = passThrough({ ios: iosStyle({ contentAvailable: true }) });
    expect(validateMessage(silent)).toBe(silent);
    // An empty ios style says nothing either.
    const empty = passThrough({ ios: iosStyle({}) });
    expect(validateMessage(empty)).toBe(empty);
    expect(() => validateMessage(passThrough({ android: AndroidStyle.create() }))).toThrow(
      invalid('message.android'),
    );
    expect(() =>
      validateMessage(passThrough({ android: { ...AndroidStyle.create(), channelId: 'sync' } })),
    ).toThrow(invalid('message.android'));
    for (const style of [
      { subtitle: 's' },
      { sound: 'default' },
      { category: 'C' },
      { mutableContent: true },
      { badge: { change: { $case: 'set' as const, value: 1 } } },
    ]) {
      expect(() =>
        validateMessage(passThrough({ ios: iosStyle({ contentAvailable: true, ...style }) })),
      ).toThrow(invalid('message.ios'));
    }
    // collapse_id is not a style: a newer pass-through may replace an older one just as well.
    const collapsing = passThrough({ collapseId: 'inbox-sync' });
    expect(validateMessage(collapsing)).toBe(collapsing);
  });
});

describe('validateMessage: collapse_id', () => {
  it('accepts 1 to 64 characters of [A-Za-z0-9_.:-]', () => {
    for (const collapseId of ['a', 'Order_1234.status:v-2', 'x'.repeat(64)]) {
      expect(() => validateMessage(notify({ collapseId }))).not.toThrow();
    }
  });

  it('refuses an empty, long or otherwise spelled collapse_id', () => {
    for (const collapseId of ['', 'x'.repeat(65), 'with space', 'slash/y', '{tag}', '订单', 'a\n']) {
      expect(() => validateMessage(notify({ collapseId }))).toThrow(invalid('message.collapse_id'));
    }
  });
});

describe('validateMessage: size', () => {
  it('counts the styles and collapse_id in the 4096 bytes', () => {
    // At the limit without styles: type (2) + content tag (1) + length (2) + 4091 bytes.
    const atLimit = notify({ content: 'a'.repeat(4091) });
    expect(Message.encode(atLimit).finish().length).toBe(MAX_MESSAGE_BYTES);
    expect(validateMessage(atLimit)).toBe(atLimit);
    for (const extra of [
      { collapseId: 'c' },
      { android: { ...AndroidStyle.create(), channelId: 'c' } },
      { ios: { ...IosStyle.create(), subtitle: 's' } },
      // Both styles are in the accepted push, even though each device receives only one of them.
      { android: AndroidStyle.create(), ios: IosStyle.create() },
    ]) {
      let thrown: unknown;
      try {
        validateMessage(notify({ content: 'a'.repeat(4091), ...extra }));
      } catch (error) {
        thrown = error;
      }
      expect(thrown).toBeInstanceOf(PushdError);
      expect(thrown).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', metadata: { limit: '4096' } });
    }
  });

  it('reports an invalid field before the size', () => {
    expect(() =>
      validateMessage(
        notify({
          content: 'a'.repeat(5000),
          android: { ...AndroidStyle.create(), channelId: 'c'.repeat(65) },
        }),
      ),
    ).toThrow(invalid('message.android.channel_id'));
  });
});

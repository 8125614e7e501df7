// The notification the fanout and peers benchmarks broadcast: 200 bytes as dispatch measures a message
// (Message.encode, the size its 4,096-byte limit applies to), the same bytes for every peer. Its
// custom_content carries the broadcast's number (`b`, fixed width) and the publisher's clock when it
// published (`t`, ms since the epoch, fixed width), so that the size does not change from one to the next.
import { Message, MessageType } from '@pushd/proto';

export const NOTIFICATION_BYTES = 200;

/** Digits of `b`: broadcast numbers stay below 10^8. */
const SEQ_DIGITS = 8;

function draft(seq: number, t: number, content: string): Message {
  return Message.create({
    type: MessageType.MESSAGE_TYPE_NOTIFY,
    title: 'pushd fanout benchmark',
    content,
    customContent: { b: String(seq).padStart(SEQ_DIGITS, '0'), t: t.toFixed(3) },
  });
}

/** Content padding that makes the encoded message exactly NOTIFICATION_BYTES for 13-digit times. */
const PADDING = (() => {
  const probe = 1_700_000_000_000.5;
  let content = '';
  while (Message.encode(draft(1, probe, content)).finish().length < NOTIFICATION_BYTES) content += 'x';
  const size = Message.encode(draft(1, probe, content)).finish().length;
  if (size !== NOTIFICATION_BYTES)
    throw new Error(`the notification is ${size} bytes, not ${NOTIFICATION_BYTES}`);
  return content;
})();

/** The notification of broadcast `seq`, published at `t` (ms since the epoch, fractional). */
export function notification(seq: number, t: number): Message {
  return draft(seq, t, PADDING);
}

/** Broadcast number and publish time of a received message's custom_content, if it has them. */
export function stampOf(customContent: Record<string, string> | undefined): { seq: number; t: number } {
  const seq = Number(customContent?.b);
  const t = Number(customContent?.t);
  return { seq: Number.isInteger(seq) ? seq : -1, t: Number.isFinite(t) ? t : Number.NaN };
}

/** Wall-clock time in ms since the epoch with sub-millisecond precision (comparable across processes). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

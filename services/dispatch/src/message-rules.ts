import { invalidArgument, PushdError } from '@pushd/common';
import { Message, MessageType } from '@pushd/proto';

/** Serialized message limit, in UTF-8 bytes (as TPNS). */
export const MAX_MESSAGE_BYTES = 4096;

/** Checks the content against the API's rules and returns it. */
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
  const size = Message.encode(message).finish().length;
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

import { PushdError } from '@pushd/common';
import { encodeMessage, type MessageEncoder } from './encode.js';
import { ClientFrame, ServerFrame } from './gen/pushd/v1/device.js';

/**
 * WebSocket subprotocols of the device protocol. Binary protobuf is the default (mobile SDKs); JSON is
 * the proto3 JSON mapping of the same frames, for debugging with any WebSocket tool.
 */
export const SUBPROTOCOL_PROTO = 'pushd.v1.proto';
export const SUBPROTOCOL_JSON = 'pushd.v1.json';

export type FrameEncoding = 'proto' | 'json';

/** Most msg_ids one Ack frame may carry; a device with more to acknowledge sends several frames. */
export const MAX_ACK_IDS = 1000;

/** Longest push_id a Click frame may name (push ids are short decimal numbers; this bounds what a device can make the gateway carry). */
export const MAX_CLICK_PUSH_ID_CHARS = 64;

export function encodingOfSubprotocol(subprotocol: string): FrameEncoding | undefined {
  if (subprotocol === SUBPROTOCOL_PROTO) return 'proto';
  if (subprotocol === SUBPROTOCOL_JSON) return 'json';
  return undefined;
}

export function subprotocolOf(encoding: FrameEncoding): string {
  return encoding === 'proto' ? SUBPROTOCOL_PROTO : SUBPROTOCOL_JSON;
}

/** Encodes a frame for the wire: a Uint8Array for a binary frame, a string for a text frame. */
function encodeFrame<T>(
  codec: MessageEncoder<T> & { toJSON(frame: T): unknown },
  frame: T,
  encoding: FrameEncoding,
): Uint8Array | string {
  return encoding === 'proto' ? encodeMessage(codec, frame) : JSON.stringify(codec.toJSON(frame));
}

/**
 * Decodes one frame. Anything that is not exactly one well-formed frame of the negotiated encoding throws
 * PushdError FRAME_MALFORMED with a message naming the problem.
 */
function decodeFrame<T extends { body?: unknown }>(
  codec: { decode(data: Uint8Array): T; fromJSON(value: unknown): T },
  kinds: readonly string[],
  data: Uint8Array,
  isBinary: boolean,
  encoding: FrameEncoding,
  checkJsonBody?: (kind: string, body: Record<string, unknown>) => void,
): T {
  let frame: T;
  if (encoding === 'proto') {
    if (!isBinary)
      throw malformed('text frame on the binary protocol (pushd.v1.proto expects binary frames)');
    try {
      frame = codec.decode(data);
    } catch (error) {
      throw malformed(`not a protobuf frame (${error instanceof Error ? error.message : String(error)})`);
    }
  } else {
    if (isBinary) throw malformed('binary frame on the JSON protocol (pushd.v1.json expects text frames)');
    let value: unknown;
    try {
      value = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
    } catch {
      throw malformed('not valid JSON');
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      throw malformed('not a JSON object');
    const present = Object.keys(value).filter((key) => key !== 'id');
    const unknown = present.filter((key) => !kinds.includes(key));
    if (unknown.length > 0)
      throw malformed(
        `unknown field ${JSON.stringify(unknown[0])}; expected id and one of ${kinds.join(', ')}`,
      );
    if (present.length > 1) throw malformed(`more than one body (${present.join(', ')}); send one per frame`);
    const body = (value as Record<string, unknown>)[present[0] ?? ''];
    if (present.length === 1 && (typeof body !== 'object' || body === null || Array.isArray(body))) {
      throw malformed(`"${present[0]}" must be an object`);
    }
    if (present.length === 1) checkJsonBody?.(present[0]!, body as Record<string, unknown>);
    const id = (value as Record<string, unknown>).id;
    if (
      id !== undefined &&
      !(typeof id === 'number' && Number.isInteger(id) && id >= 0 && id <= 0xffffffff)
    ) {
      throw malformed('"id" must be an integer from 0 to 4294967295');
    }
    try {
      frame = codec.fromJSON(value);
    } catch (error) {
      // ts-proto throws on unknown enum names (e.g. "PLATFORM_WINDOWS"): still the device's malformed input.
      throw malformed(error instanceof Error ? error.message : String(error));
    }
  }
  if (frame.body === undefined) throw malformed(`frame has no body; expected one of ${kinds.join(', ')}`);
  return frame;
}

function malformed(problem: string): PushdError {
  return new PushdError('FRAME_MALFORMED', `malformed frame: ${problem}`);
}

/**
 * The msg ids of a device's JSON Ack and Click, checked before the generated fromJSON, which turns any value
 * into a number (`true` into 1, `[7]` into 7, a string that is no list into an empty one): an unsigned
 * 64-bit integer in proto3 JSON is a JSON integer or a string of decimal digits, nothing else.
 */
function checkClientJsonBody(kind: string, body: Record<string, unknown>): void {
  if (kind === 'ack') {
    for (const name of ['msgIds', 'msg_ids']) {
      const ids = body[name];
      // null is the default value, as proto3 JSON reads it for any field.
      if (ids !== undefined && ids !== null && (!Array.isArray(ids) || !ids.every(isJsonUint64))) {
        throw malformed(`"ack.${name}" must be an array of positive integers`);
      }
    }
  } else if (kind === 'click') {
    for (const name of ['msgId', 'msg_id']) {
      if (body[name] !== undefined && body[name] !== null && !isJsonUint64(body[name])) {
        throw malformed(`"click.${name}" must be a positive integer`);
      }
    }
  }
}

function isJsonUint64(value: unknown): boolean {
  return (
    (typeof value === 'number' && Number.isInteger(value) && value >= 0) ||
    (typeof value === 'string' && /^[0-9]+$/.test(value))
  );
}

// Top-level body keys. Two-word bodies are accepted under their proto field name too, as proto3 JSON
// parsers do (and as the generated fromJSON reads them); the gateway itself emits the lowerCamelCase name.
const CLIENT_KINDS = [
  'register',
  'ack',
  'ping',
  'unregister',
  'updateTags',
  'update_tags',
  'reportLocation',
  'report_location',
  'click',
] as const;
const SERVER_KINDS = [
  'connected',
  'registered',
  'deliver',
  'pong',
  'error',
  'unregistered',
  'tagsUpdated',
  'tags_updated',
  'locationReported',
  'location_reported',
] as const;

export function encodeServerFrame(frame: ServerFrame, encoding: FrameEncoding): Uint8Array | string {
  return encodeFrame(ServerFrame, frame, encoding);
}

export function decodeClientFrame(data: Uint8Array, isBinary: boolean, encoding: FrameEncoding): ClientFrame {
  return decodeFrame(ClientFrame, CLIENT_KINDS, data, isBinary, encoding, checkClientJsonBody);
}

export function encodeClientFrame(frame: ClientFrame, encoding: FrameEncoding): Uint8Array | string {
  return encodeFrame(ClientFrame, frame, encoding);
}

export function decodeServerFrame(data: Uint8Array, isBinary: boolean, encoding: FrameEncoding): ServerFrame {
  return decodeFrame(ServerFrame, SERVER_KINDS, data, isBinary, encoding);
}

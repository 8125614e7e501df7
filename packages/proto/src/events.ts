import type { Logger } from '@pushd/common';
import { EventBatch } from './gen/pushd/v1/bus.js';

/**
 * An event batch from the durable stream, or undefined, logged at error level, when it cannot be decoded.
 * No retry can read it, and a consumer that rejected it would have it delivered again until the stream
 * drops it (7 days), holding one of the consumer's ack-pending slots all along (a NATS consumer stops at
 * 1,000 of them). So consumers drop it, loudly, and go on, as the push applier does with log entries.
 */
export function decodeEvents(data: Uint8Array, logger: Logger): EventBatch | undefined {
  try {
    return EventBatch.decode(data);
  } catch (error) {
    logger.error({ err: error, bytes: data.byteLength }, 'an undecodable event batch was dropped');
    return undefined;
  }
}

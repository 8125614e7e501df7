// Public names of the reference device client. Listed one by one so that nothing leaks by `export *`.

// The protocol types a client's user handles, so that a device app needs no direct @pushd/proto import.
export {
  type Connected,
  type FrameEncoding,
  type Message,
  MessageType,
  Platform,
  type Pong,
  type PushMessage,
  type Registered,
} from '@pushd/proto';
export { reconnectDelayMs } from './backoff.js';
export {
  type ConnectResult,
  DeviceClient,
  type DeviceClientEvents,
  type DeviceClientOptions,
  type DeviceClientState,
  type DeviceCloseEvent,
  type DevicePlatform,
  type DeviceRegistration,
  type DeviceSession,
  type ReconnectOptions,
  SDK_VERSION,
  type TagUpdate,
} from './device-client.js';
export { generateDeviceId, isValidDeviceId } from './device-id.js';
export { errorFromClose, errorFromFrame, errorFromRefusal, parseCloseCode } from './wire-errors.js';

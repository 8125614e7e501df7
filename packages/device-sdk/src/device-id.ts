import { randomBytes } from 'node:crypto';

/** What the gateway accepts as Register.device_id (device.proto). */
const DEVICE_ID_PATTERN = /^[A-Za-z0-9_-]{16,128}$/;

/**
 * A new device id: 128 random bits as unpadded base64url (22 characters). An app generates it once, on
 * first start, and keeps it: the same device id is what gets the same token back on re-registration.
 */
export function generateDeviceId(): string {
  return randomBytes(16).toString('base64url');
}

export function isValidDeviceId(deviceId: string): boolean {
  return DEVICE_ID_PATTERN.test(deviceId);
}

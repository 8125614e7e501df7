import { hostname } from 'node:os';
import { commonEnvShape, envField } from '@pushd/common';
import { z } from 'zod';

export const gatewayEnv = z.object({
  ...commonEnvShape({ opsPort: 9100 }),
  /** Port of the device WebSocket endpoint (/v1/ws). */
  WS_PORT: envField.port(8080),
  /**
   * Unique name of this gateway in routes and NATS subjects. Default: the host name (a pod name in
   * Kubernetes), made subject-safe.
   */
  NODE_ID: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, "_" or "-", at most 64')
    .default(
      hostname()
        .replace(/[^A-Za-z0-9_-]/g, '-')
        .slice(0, 64),
    ),
  REGISTRY_ADDR: z.string().min(1).default('127.0.0.1:50051'),
  DISPATCH_ADDR: z.string().min(1).default('127.0.0.1:50053'),
  /** The tag service (its GRPC_PORT default is 50052): devices' UpdateTags and ReportLocation frames. */
  TAG_ADDR: z.string().min(1).default('127.0.0.1:50052'),
  HEARTBEAT_INTERVAL_MS: envField.ms(25_000),
  MAX_FRAME_BYTES: envField.count(16_384),
  MAX_BUFFERED_BYTES: envField.count(1_048_576),
  REGISTER_TIMEOUT_MS: envField.ms(10_000),
  /**
   * How long a device's route lives without a refresh; refreshed every third of it, at most once a second,
   * so below 3 s routes would lapse between refreshes (the device then looks offline to dispatch).
   */
  ROUTE_TTL_MS: envField.ms(1_800_000, 3_000),
  /**
   * Batch calls of each kind (AuthenticateDevices, FetchPendingBatch) in flight at once: fewer make larger
   * batches (fewer calls, less CPU per handshake) at the price of handshakes waiting behind a slow call.
   */
  CALL_BATCH_IN_FLIGHT: envField.count(1),
});

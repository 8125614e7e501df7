import { commonEnvShape, envField } from '@pushd/common';
import { z } from 'zod';

export const statsEnv = z.object({
  ...commonEnvShape({ opsPort: 9104 }),
  GRPC_PORT: envField.port(50054),
  /** host:port (or a gRPC target) of the registry service. */
  REGISTRY_ADDR: z.string().min(1).default('127.0.0.1:50051'),
  /** host:port (or a gRPC target) of the dispatch service. */
  DISPATCH_ADDR: z.string().min(1).default('127.0.0.1:50053'),
  /** host:port (or a gRPC target) of the tag service (online devices of GetAppStats). */
  TAG_ADDR: z.string().min(1).default('127.0.0.1:50052'),
});

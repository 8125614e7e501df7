import { commonEnvShape, envField } from '@pushd/common';
import { z } from 'zod';

export const tagEnv = z.object({
  ...commonEnvShape({ opsPort: 9102 }),
  GRPC_PORT: envField.port(50052),
  /** host:port (or a gRPC target such as dns:///registry:50051) of the registry service. */
  REGISTRY_ADDR: z.string().min(1).default('127.0.0.1:50051'),
});

import { commonEnvShape, envField } from '@pushd/common';
import { z } from 'zod';

export const dispatchEnv = z.object({
  ...commonEnvShape({ opsPort: 9103 }),
  GRPC_PORT: envField.port(50053),
  /** host:port (or a gRPC target such as dns:///registry:50051) of the registry service. */
  REGISTRY_ADDR: z.string().min(1).default('127.0.0.1:50051'),
  /**
   * Partitions of the push log (apps spread over them; each is applied in order by one instance at a
   * time). The same on every dispatch instance; change it only with the log empty.
   */
  PUSH_PARTITIONS: z.coerce.number().int().min(1).max(256).default(16),
});

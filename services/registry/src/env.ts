import { commonEnvShape, envField } from '@pushd/common';
import { z } from 'zod';

export const registryEnv = z.object({
  ...commonEnvShape({ opsPort: 9101 }),
  GRPC_PORT: envField.port(50051),
});

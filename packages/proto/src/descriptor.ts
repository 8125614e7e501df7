import { fileURLToPath } from 'node:url';

/**
 * The FileDescriptorSet of everything in proto/ (built by `pnpm generate` with buf), which gRPC server
 * reflection serves so that stock tools (grpcurl, grpcui, Postman) can discover and call the services.
 */
export const descriptorSetPath: string = fileURLToPath(new URL('./descriptor.binpb', import.meta.url));

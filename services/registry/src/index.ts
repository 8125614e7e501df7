export { registryEnv } from './env.js';
export { RegistryService, type RegistryServiceOptions } from './registry-service.js';

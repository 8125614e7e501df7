export {
  type AppSecretVerifier,
  basicAuthorization,
  bearerAuthorization,
  CallAuthorizer,
  type CallAuthorizerOptions,
  type Caller,
  verifyAppSecretWithRegistry,
} from './auth.js';
export {
  type BatchResult,
  checkBatchSize,
  fromBatchResult,
  MAX_BATCH_ITEMS,
  settle,
  toBatchResult,
  unwrapSettled,
} from './batch.js';
export { CallBatcher, type CallBatcherOptions } from './call-batcher.js';
export {
  createRpcClient,
  type PromiseClient,
  type RpcClientOptions,
  type StreamCallOptions,
} from './client.js';
export type {
  CallContext,
  RequestOf,
  ResponseOf,
  ServiceDefinitionShape,
  ServiceHandlers,
  StreamCallContext,
} from './definition.js';
export {
  ERROR_CODE_TRAILER,
  ERROR_DOMAIN,
  fromGrpcError,
  fromStatus,
  toGrpcError,
  toStatus,
} from './errors.js';
export { callContext, inProcessClient } from './in-process.js';
export { bindService, GrpcServer, type GrpcServerOptions, type GrpcServiceBinding } from './server.js';

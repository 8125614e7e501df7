import {
  type CallOptions,
  type ChannelOptions,
  Client,
  credentials,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import type { RequestOf, ResponseOf, ServiceDefinitionShape } from './definition.js';
import { fromGrpcError } from './errors.js';

export interface RpcClientOptions {
  /** host:port of the service (any gRPC target string grpc-js accepts, e.g. 'dns:///registry:50051'). */
  address: string;
  /** `authorization` metadata sent with every call (see bearerAuthorization / basicAuthorization). */
  authorization: string;
  /** Deadline of each call. Default: 5000 ms. */
  deadlineMs?: number;
  /** Extra grpc-js channel options. Default: keepalive every 30 s, round-robin over resolved addresses. */
  channelOptions?: ChannelOptions;
}

/** A promise-returning client: one method per RPC of the definition, errors as PushdError. */
export type PromiseClient<Definition extends ServiceDefinitionShape> = {
  [Name in keyof Definition]: (
    request: RequestOf<Definition[Name]>,
    options?: { deadlineMs?: number },
  ) => Promise<ResponseOf<Definition[Name]>>;
} & { close(): void };

/**
 * Creates a client for a ts-proto service definition. The channel is shared by all methods, reconnects by
 * itself, and spreads calls over the addresses a DNS name resolves to when given `dns:///` targets.
 */
export function createRpcClient<Definition extends ServiceDefinitionShape>(
  definition: Definition,
  options: RpcClientOptions,
): PromiseClient<Definition> {
  const client = new Client(options.address, credentials.createInsecure(), {
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    // grpc-js defaults to pick_first (one backend per client); round robin spreads calls over every
    // address a dns:/// target resolves to (headless Kubernetes Services).
    'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
    ...options.channelOptions,
  });
  const defaultDeadlineMs = options.deadlineMs ?? 5_000;
  const methods: Record<string, unknown> = { close: () => client.close() };
  for (const [name, method] of Object.entries(definition)) {
    methods[name] = (request: unknown, callOptions?: { deadlineMs?: number }) =>
      new Promise((resolve, reject) => {
        const metadata = new Metadata();
        metadata.set('authorization', options.authorization);
        const grpcOptions: CallOptions = {
          deadline: Date.now() + (callOptions?.deadlineMs ?? defaultDeadlineMs),
        };
        client.makeUnaryRequest(
          method.path,
          method.requestSerialize,
          method.responseDeserialize,
          request,
          metadata,
          grpcOptions,
          (error: ServiceError | null, response: unknown) => {
            if (error) reject(fromGrpcError(error));
            else resolve(response);
          },
        );
      });
  }
  return methods as PromiseClient<Definition>;
}

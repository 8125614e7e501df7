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

/** Options of one server-streaming call. */
export interface StreamCallOptions {
  /** Aborting it cancels the call; the iteration then ends without an error. Default: none. */
  signal?: AbortSignal;
  /** Deadline of the whole stream. Default: none (a stream lasts until it ends or is cancelled). */
  deadlineMs?: number;
}

/**
 * A promise-returning client: one method per RPC of the definition, errors as PushdError. A
 * server-streaming method returns an async iterable of its responses; leaving the loop early (break,
 * return, throw) cancels the call.
 */
export type PromiseClient<Definition extends ServiceDefinitionShape> = {
  [Name in keyof Definition]: Definition[Name] extends { responseStream: true }
    ? (
        request: RequestOf<Definition[Name]>,
        options?: StreamCallOptions,
      ) => AsyncIterable<ResponseOf<Definition[Name]>>
    : (
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
  const metadataOf = () => {
    const metadata = new Metadata();
    metadata.set('authorization', options.authorization);
    return metadata;
  };
  for (const [name, method] of Object.entries(definition)) {
    if (method.responseStream) {
      methods[name] = (request: unknown, callOptions: StreamCallOptions = {}) =>
        streamCall(client, method, request, metadataOf(), callOptions);
      continue;
    }
    methods[name] = (request: unknown, callOptions?: { deadlineMs?: number }) =>
      new Promise((resolve, reject) => {
        const metadata = metadataOf();
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

/** One server-streaming call as an async iterable; the call starts when iteration does. */
async function* streamCall(
  client: Client,
  method: ServiceDefinitionShape[string],
  request: unknown,
  metadata: Metadata,
  options: StreamCallOptions,
): AsyncGenerator<unknown> {
  const { signal } = options;
  if (signal?.aborted) return;
  const grpcOptions: CallOptions =
    options.deadlineMs === undefined ? {} : { deadline: Date.now() + options.deadlineMs };
  const call = client.makeServerStreamRequest(
    method.path,
    method.requestSerialize,
    method.responseDeserialize,
    request,
    metadata,
    grpcOptions,
  );
  const cancel = () => call.cancel();
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    for await (const response of call) yield response;
  } catch (error) {
    // Our own cancel ends the stream with CANCELLED: that is the end the caller asked for.
    if (signal?.aborted) return;
    throw fromGrpcError(error as ServiceError);
  } finally {
    signal?.removeEventListener('abort', cancel);
    // Leaving the loop early: the server stops producing.
    call.cancel();
  }
}

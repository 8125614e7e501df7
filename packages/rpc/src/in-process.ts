import { Metadata } from '@grpc/grpc-js';
import type { PromiseClient, StreamCallOptions } from './client.js';
import type {
  CallContext,
  ServiceDefinitionShape,
  ServiceHandlers,
  StreamCallContext,
} from './definition.js';

type UnaryHandler = (request: unknown, context: CallContext) => Promise<unknown>;
type StreamHandler = (request: unknown, context: StreamCallContext) => AsyncIterable<unknown>;

/** The context a handler gets for a call with this `authorization` metadata (none when undefined). */
export function callContext(authorization?: string, path = '/pushd.v1.InProcess/Call'): CallContext {
  const metadata = new Metadata();
  if (authorization !== undefined) metadata.set('authorization', authorization);
  return { metadata, path };
}

/**
 * A client of a service's handlers in this process, for unit tests: every call goes through the method's
 * protobuf serializers both ways, so it sees exactly what a gRPC client would, without a socket.
 */
export function inProcessClient<Definition extends ServiceDefinitionShape>(
  definition: Definition,
  handlers: ServiceHandlers<Definition>,
  authorization: string,
): PromiseClient<Definition> {
  const client: Record<string, unknown> = { close: () => {} };
  for (const [name, method] of Object.entries(definition)) {
    if (method.responseStream) {
      const handler = handlers[name as keyof Definition] as unknown as StreamHandler;
      client[name] = (request: unknown, options: StreamCallOptions = {}) =>
        streamInProcess(method, handler, request, authorization, options);
      continue;
    }
    const handler = handlers[name as keyof Definition] as unknown as UnaryHandler;
    client[name] = async (request: unknown) => {
      const decoded = method.requestDeserialize(method.requestSerialize(request));
      const response = await handler(decoded, callContext(authorization, method.path));
      return method.responseDeserialize(method.responseSerialize(response));
    };
  }
  return client as PromiseClient<Definition>;
}

/** A streaming call in process: the caller's signal (or leaving its loop) aborts the handler's. */
async function* streamInProcess(
  method: ServiceDefinitionShape[string],
  handler: StreamHandler,
  request: unknown,
  authorization: string,
  options: StreamCallOptions,
): AsyncGenerator<unknown> {
  const controller = new AbortController();
  const abort = () => controller.abort();
  options.signal?.addEventListener('abort', abort, { once: true });
  if (options.signal?.aborted) return;
  const decoded = method.requestDeserialize(method.requestSerialize(request));
  const responses = handler(decoded, {
    ...callContext(authorization, method.path),
    signal: controller.signal,
  })[Symbol.asyncIterator]();
  try {
    while (true) {
      const next = await responses.next();
      if (next.done || controller.signal.aborted) return;
      yield method.responseDeserialize(method.responseSerialize(next.value));
    }
  } finally {
    options.signal?.removeEventListener('abort', abort);
    // Aborted before the handler's own finally runs, as a cancel over the wire would be.
    controller.abort();
    await responses.return?.();
  }
}

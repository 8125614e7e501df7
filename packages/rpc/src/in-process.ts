import { Metadata } from '@grpc/grpc-js';
import type { PromiseClient } from './client.js';
import type { CallContext, ServiceDefinitionShape, ServiceHandlers } from './definition.js';

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
    const handler = handlers[name as keyof Definition];
    client[name] = async (request: unknown) => {
      const decoded = method.requestDeserialize(method.requestSerialize(request));
      const response = await handler(decoded, callContext(authorization, method.path));
      return method.responseDeserialize(method.responseSerialize(response));
    };
  }
  return client as PromiseClient<Definition>;
}

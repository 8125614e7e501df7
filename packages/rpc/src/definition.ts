import type { Metadata } from '@grpc/grpc-js';

/** The shape of one unary method in a ts-proto `outputServices=grpc-js` service definition. */
export interface UnaryMethodDefinition<Request, Response> {
  path: string;
  requestStream: false;
  responseStream: false;
  requestSerialize(value: Request): Buffer;
  requestDeserialize(value: Buffer): Request;
  responseSerialize(value: Response): Buffer;
  responseDeserialize(value: Buffer): Response;
}

/** A server-streaming method: one request, any number of responses. */
export interface ServerStreamMethodDefinition<Request, Response> {
  path: string;
  requestStream: false;
  responseStream: true;
  requestSerialize(value: Request): Buffer;
  requestDeserialize(value: Buffer): Request;
  responseSerialize(value: Response): Buffer;
  responseDeserialize(value: Buffer): Response;
}

export type ServiceDefinitionShape = Record<
  string,
  // biome-ignore lint/suspicious/noExplicitAny: a definition's methods are matched structurally, whatever their types.
  UnaryMethodDefinition<any, any> | ServerStreamMethodDefinition<any, any>
>;

export type RequestOf<M> = M extends { requestDeserialize(value: Buffer): infer Request } ? Request : never;
export type ResponseOf<M> = M extends { responseDeserialize(value: Buffer): infer Response }
  ? Response
  : never;

/** What a handler learns about its call besides the request. */
export interface CallContext {
  metadata: Metadata;
  /** The method's full path, e.g. '/pushd.v1.DispatchService/Push'. */
  path: string;
}

/** A streaming handler's context: `signal` aborts when the client cancels or the server stops. */
export interface StreamCallContext extends CallContext {
  signal: AbortSignal;
}

/**
 * A service implemented as async functions: a unary method returns the response or throws a PushdError;
 * a server-streaming method returns an async iterable of responses (typically an async generator), whose
 * end ends the call and whose PushdError becomes the call's status.
 */
export type ServiceHandlers<Definition extends ServiceDefinitionShape> = {
  [Name in keyof Definition]: Definition[Name] extends { responseStream: true }
    ? (
        request: RequestOf<Definition[Name]>,
        context: StreamCallContext,
      ) => AsyncIterable<ResponseOf<Definition[Name]>>
    : (request: RequestOf<Definition[Name]>, context: CallContext) => Promise<ResponseOf<Definition[Name]>>;
};

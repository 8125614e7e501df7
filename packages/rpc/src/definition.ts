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

// biome-ignore lint/suspicious/noExplicitAny: a definition's methods are matched structurally, whatever their types.
export type ServiceDefinitionShape = Record<string, UnaryMethodDefinition<any, any>>;

export type RequestOf<M> = M extends UnaryMethodDefinition<infer Request, unknown> ? Request : never;
export type ResponseOf<M> = M extends UnaryMethodDefinition<unknown, infer Response> ? Response : never;

/** What a handler learns about its call besides the request. */
export interface CallContext {
  metadata: Metadata;
  /** The method's full path, e.g. '/pushd.v1.DispatchService/Push'. */
  path: string;
}

/** A service implemented as async functions: return the response or throw a PushdError. */
export type ServiceHandlers<Definition extends ServiceDefinitionShape> = {
  [Name in keyof Definition]: (
    request: RequestOf<Definition[Name]>,
    context: CallContext,
  ) => Promise<ResponseOf<Definition[Name]>>;
};

import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import {
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type sendUnaryData,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { loadFileDescriptorSetFromBuffer } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { type Logger, PushdError } from '@pushd/common';
import { descriptorSetPath } from '@pushd/proto';
import { HealthImplementation } from 'grpc-health-check';
import { Counter, Histogram, type Registry } from 'prom-client';
import type {
  CallContext,
  ServiceDefinitionShape,
  ServiceHandlers,
  StreamCallContext,
} from './definition.js';
import { toGrpcError } from './errors.js';

export interface GrpcServiceBinding<Definition extends ServiceDefinitionShape = ServiceDefinitionShape> {
  /** Fully-qualified name, e.g. 'pushd.v1.DispatchService' (for health and reflection). */
  name: string;
  definition: Definition;
  handlers: ServiceHandlers<Definition>;
}

/** Binds handlers to a ts-proto service definition with their types checked against each other. */
export function bindService<Definition extends ServiceDefinitionShape>(
  name: string,
  definition: Definition,
  handlers: ServiceHandlers<Definition>,
): GrpcServiceBinding {
  return { name, definition, handlers } as unknown as GrpcServiceBinding;
}

export interface GrpcServerOptions {
  /** Interface to bind. Default: '0.0.0.0'. */
  host?: string;
  /** Port; 0 picks a free one (see `port` after start). */
  port: number;
  services: GrpcServiceBinding[];
  logger: Logger;
  /** Where request metrics go, named `<metricPrefix>_grpc_*`. */
  registry: Registry;
  metricPrefix: string;
}

/**
 * A gRPC server for our services plus the standard health-checking protocol (grpc.health.v1, one status
 * per service and '' for the whole server) and server reflection (v1 and v1alpha), so stock tools such as
 * grpcurl and grpc_health_probe can discover and probe it. Handler errors become catalogue statuses.
 */
export class GrpcServer {
  private readonly server = new Server({
    'grpc.max_receive_message_length': 4 * 1024 * 1024,
    // Clients reconnect (and re-resolve DNS) every few minutes, so new replicas get traffic after a scale-up.
    'grpc.max_connection_age_ms': 300_000,
    'grpc.max_connection_age_grace_ms': 30_000,
  });
  private readonly health: HealthImplementation;
  /** Streams in flight: stopping the server ends them (they would otherwise hold the shutdown). */
  private readonly streams = new Set<AbortController>();
  private boundPort = 0;

  constructor(private readonly options: GrpcServerOptions) {
    const requests = new Counter({
      name: `${options.metricPrefix}_grpc_requests_total`,
      help: 'gRPC requests handled, by method and catalogue code (OK on success).',
      labelNames: ['method', 'code'],
      registers: [options.registry],
    });
    const duration = new Histogram({
      name: `${options.metricPrefix}_grpc_request_duration_seconds`,
      help: 'Time to handle a gRPC request, by method.',
      labelNames: ['method'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [options.registry],
    });

    for (const service of options.services) {
      const implementation: UntypedServiceImplementation = {};
      const definition: Record<string, unknown> = {};
      for (const [methodName, method] of Object.entries(service.definition)) {
        definition[methodName] = {
          ...method,
          requestDeserialize: decodingOrMarking(method.requestDeserialize),
        };
        const handler = service.handlers[methodName];
        if (!handler) throw new Error(`${service.name}: no handler for ${methodName}`);
        const label = method.path.slice(method.path.lastIndexOf('/') + 1);
        const failed = (error: unknown) => {
          const grpcError = toGrpcError(error);
          const code = grpcError.metadata?.get('pushd-error-code')[0];
          requests.inc({ method: label, code: String(code) });
          if (code === 'INTERNAL') options.logger.error({ err: error, method: label }, 'gRPC handler failed');
          return grpcError;
        };
        if (method.responseStream) {
          // No duration: a stream lasts as long as its client wants, which would drown the latency figures.
          const stream = handler as unknown as StreamHandler;
          implementation[methodName] = (call: ServerWritableStream<unknown, unknown>) => {
            const undecodable = undecodableRequest(call.request);
            if (undecodable !== undefined) {
              call.emit('error', failed(undecodable));
              return;
            }
            this.serveStream(call, stream, method.path).then(
              () => requests.inc({ method: label, code: 'OK' }),
              (error: unknown) => {
                if (!call.cancelled) call.emit('error', failed(error));
              },
            );
          };
          continue;
        }
        const unary = handler as unknown as UnaryHandler;
        implementation[methodName] = (
          call: ServerUnaryCall<unknown, unknown>,
          callback: sendUnaryData<unknown>,
        ) => {
          const undecodable = undecodableRequest(call.request);
          if (undecodable !== undefined) {
            callback(failed(undecodable));
            return;
          }
          const stop = duration.startTimer({ method: label });
          unary(call.request, { metadata: call.metadata, path: method.path }).then(
            (response) => {
              stop();
              requests.inc({ method: label, code: 'OK' });
              callback(null, response);
            },
            (error: unknown) => {
              stop();
              callback(failed(error));
            },
          );
        };
      }
      this.server.addService(definition as unknown as ServiceDefinition, implementation);
    }

    const statuses = Object.fromEntries(options.services.map((s) => [s.name, 'NOT_SERVING' as const]));
    this.health = new HealthImplementation({ '': 'NOT_SERVING', ...statuses });
    this.health.addToServer(this.server);
    const descriptors = loadFileDescriptorSetFromBuffer(readFileSync(descriptorSetPath));
    new ReflectionService(descriptors, { services: options.services.map((s) => s.name) }).addToServer(
      this.server,
    );
  }

  get port(): number {
    return this.boundPort;
  }

  /**
   * Writes the handler's responses as they come, waiting for the client to take them (a slow console must
   * not grow the server's memory), and ends the call when the handler's iterable ends. A client cancel
   * aborts the handler's signal and stops the iteration; so does the server stopping.
   */
  private async serveStream(
    call: ServerWritableStream<unknown, unknown>,
    handler: StreamHandler,
    path: string,
  ): Promise<void> {
    const controller = new AbortController();
    const abort = () => controller.abort();
    call.once('cancelled', abort);
    this.streams.add(controller);
    try {
      for await (const response of handler(call.request, {
        metadata: call.metadata,
        path,
        signal: controller.signal,
      })) {
        if (controller.signal.aborted) break;
        if (!call.write(response)) {
          await Promise.race([once(call, 'drain'), once(controller.signal, 'abort')]);
        }
      }
      if (call.cancelled) return;
      // Aborted without a cancel: the server is stopping, and the client should follow elsewhere.
      if (controller.signal.aborted) throw new PushdError('UNAVAILABLE', 'server stopping; call again');
      call.end();
    } finally {
      this.streams.delete(controller);
      call.off('cancelled', abort);
    }
  }

  async start(): Promise<void> {
    const address = `${this.options.host ?? '0.0.0.0'}:${this.options.port}`;
    this.boundPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(address, ServerCredentials.createInsecure(), (error, port) =>
        error ? reject(new Error(`gRPC server could not bind ${address}: ${error.message}`)) : resolve(port),
      );
    });
    this.setServing(true);
  }

  /** Marks every service (and the server) SERVING or NOT_SERVING in the health protocol. */
  setServing(serving: boolean): void {
    const value = serving ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', value);
    for (const service of this.options.services) this.health.setStatus(service.name, value);
  }

  /** Reports NOT_SERVING, lets in-flight calls finish for up to graceMs, then forces the rest closed. */
  async stop(graceMs = 5_000): Promise<void> {
    this.setServing(false);
    for (const stream of this.streams) stream.abort();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

type UnaryHandler = (request: unknown, context: CallContext) => Promise<unknown>;
type StreamHandler = (request: unknown, context: StreamCallContext) => AsyncIterable<unknown>;

/** Marks a request whose bytes could not be decoded (see decodingOrMarking). */
const UNDECODABLE = Symbol('undecodable request');

/**
 * The method's decoder, which marks a request it cannot decode instead of throwing: grpc-js would answer
 * a throwing decoder with INTERNAL, and the caller must learn that its request was at fault. The generated
 * decoders throw, for instance, on a 64-bit value above 2^53 - 1, which JavaScript numbers cannot hold.
 */
function decodingOrMarking(decode: (bytes: Buffer) => unknown): (bytes: Buffer) => unknown {
  return (bytes) => {
    try {
      return decode(bytes);
    } catch (error) {
      return { [UNDECODABLE]: error };
    }
  };
}

/** INVALID_ARGUMENT naming why, for a request decodingOrMarking marked; undefined for a decoded one. */
function undecodableRequest(request: unknown): PushdError | undefined {
  if (typeof request !== 'object' || request === null || !(UNDECODABLE in request)) return undefined;
  const cause = (request as { [UNDECODABLE]: unknown })[UNDECODABLE];
  const why = cause instanceof Error ? cause.message : String(cause);
  const hint = /SAFE_INTEGER/.test(why) ? ' (64-bit numbers must be at most 2^53 - 1)' : '';
  return new PushdError('INVALID_ARGUMENT', `the request could not be decoded${hint}: ${why}`);
}

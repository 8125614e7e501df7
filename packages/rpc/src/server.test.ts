import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import {
  Client,
  credentials,
  loadPackageDefinition,
  Metadata,
  type ServiceError,
  status,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { PushdError, silentLogger } from '@pushd/common';
import { StatsServiceService } from '@pushd/proto';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { basicAuthorization, bearerAuthorization, CallAuthorizer } from './auth.js';
import { createRpcClient } from './client.js';
import type { StreamCallContext } from './definition.js';
import { inProcessClient } from './in-process.js';
import { bindService, GrpcServer } from './server.js';

// A real server on loopback (no broker or database involved): errors cross the wire as catalogue codes,
// and stock clients can probe health and discover the services by reflection.
const require = createRequire(import.meta.url);
const CLUSTER = 'cluster-token-for-tests';

const pushStats = (pushId: string, sent: number) => ({
  pushId,
  sent,
  arrived: 1,
  clicked: 0,
  target: 0,
  conversion: 0,
  platforms: [],
});

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (const deadline = Date.now() + 5_000; !condition(); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Streams ended by their client, by push id: the handler saw its signal abort and its loop end. */
const watchesEnded: string[] = [];

/**
 * 'three': three responses, then the end. 'forever': one every 10 ms until cancelled. 'fail': one, then
 * PUSH_NOT_FOUND.
 */
async function* watchHandler(
  request: { pushId: string },
  { signal }: StreamCallContext,
): AsyncGenerator<{ stats: ReturnType<typeof pushStats> }> {
  try {
    for (let n = 1; !signal.aborted; n++) {
      if (request.pushId === 'three' && n > 3) return;
      yield { stats: pushStats(request.pushId, n) };
      if (request.pushId === 'fail') throw new PushdError('PUSH_NOT_FOUND', 'gone');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  } finally {
    if (signal.aborted) watchesEnded.push(request.pushId);
  }
}

describe('GrpcServer', () => {
  const metrics = new Registry();
  const authorizer = new CallAuthorizer({
    clusterToken: CLUSTER,
    verifyAppSecret: async (accessId, secret) => accessId === 7 && secret === 'seven',
  });
  const server = new GrpcServer({
    host: '127.0.0.1',
    port: 0,
    logger: silentLogger(),
    registry: metrics,
    metricPrefix: 'test',
    services: [
      bindService('pushd.v1.StatsService', StatsServiceService, {
        getPushStats: async (request, { metadata }) => {
          const accessId = await authorizer.requireApp(metadata, request.accessId);
          if (request.pushId === 'missing') {
            throw new PushdError('PUSH_NOT_FOUND', 'no push has id "missing"', {
              metadata: { push_id: 'missing' },
            });
          }
          if (request.pushId === 'boom') throw new Error('unexpected');
          return { stats: pushStats(`${accessId}:${request.pushId}`, 2) };
        },
        watchPushStats: watchHandler,
        getAppStats: async () => ({ coveredDevices: 0, onlineDevices: 0, platforms: [], days: [] }),
      }),
    ],
  });
  const address = () => `127.0.0.1:${server.port}`;

  beforeAll(() => server.start());
  afterAll(() => server.stop(100));

  it('answers with app credentials and acts on the caller app', async () => {
    const client = createRpcClient(StatsServiceService, {
      address: address(),
      authorization: basicAuthorization(7, 'seven'),
    });
    await expect(client.getPushStats({ accessId: 0, pushId: 'p1' })).resolves.toMatchObject({
      stats: { pushId: '7:p1', sent: 2 },
    });
    client.close();
  });

  it('carries catalogue codes, messages and metadata across the wire', async () => {
    const client = createRpcClient(StatsServiceService, {
      address: address(),
      authorization: bearerAuthorization(CLUSTER),
    });
    const missing = client.getPushStats({ accessId: 7, pushId: 'missing' });
    await expect(missing).rejects.toBeInstanceOf(PushdError);
    await expect(missing).rejects.toMatchObject({
      code: 'PUSH_NOT_FOUND',
      message: 'no push has id "missing"',
      metadata: { push_id: 'missing' },
    });
    await expect(client.getPushStats({ accessId: 7, pushId: 'boom' })).rejects.toMatchObject({
      code: 'INTERNAL',
    });
    client.close();
  });

  it('answers a request it cannot decode with INVALID_ARGUMENT, not INTERNAL', async () => {
    // GetPushStatsRequest with access_id (field 1, tag 0x08) 2^60, a varint of eight empty groups and
    // 0x10: valid protobuf that no JavaScript number holds exactly.
    const tooLarge = Uint8Array.of(0x08, ...Array<number>(8).fill(0x80), 0x10);
    const truncated = Uint8Array.of(0x12, 0x05, 0x61); // push_id (field 2) says 5 bytes, has 1
    const client = new Client(address(), credentials.createInsecure());
    const call = (bytes: Uint8Array) =>
      new Promise<ServiceError>((resolve, reject) =>
        client.makeUnaryRequest(
          '/pushd.v1.StatsService/GetPushStats',
          (raw: Uint8Array) => Buffer.from(raw),
          (raw: Buffer) => raw,
          bytes,
          (error) => (error ? resolve(error) : reject(new Error('answered'))),
        ),
      );
    for (const [bytes, message] of [
      [tooLarge, /could not be decoded \(64-bit numbers must be at most 2\^53 - 1\)/],
      [truncated, /could not be decoded: /],
    ] as const) {
      const error = await call(bytes);
      expect(error.code).toBe(status.INVALID_ARGUMENT);
      expect(error.details).toMatch(message);
      expect(error.metadata.get('pushd-error-code')).toEqual(['INVALID_ARGUMENT']);
    }
    client.close();
  });

  it("reports gRPC's own size limit as INVALID_ARGUMENT, which is not retried, not as a rate limit", async () => {
    const client = createRpcClient(StatsServiceService, {
      address: address(),
      authorization: basicAuthorization(7, 'seven'),
    });
    const tooLarge = client.getPushStats({ accessId: 0, pushId: 'x'.repeat(5 * 1024 * 1024) });
    await expect(tooLarge).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/larger than max/),
    });
    client.close();
  });

  it('refuses missing, wrong and cross-tenant credentials with distinct codes', async () => {
    const wrong = createRpcClient(StatsServiceService, {
      address: address(),
      authorization: basicAuthorization(7, 'eight'),
    });
    await expect(wrong.getPushStats({ accessId: 7, pushId: 'p' })).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    const other = createRpcClient(StatsServiceService, {
      address: address(),
      authorization: basicAuthorization(7, 'seven'),
    });
    await expect(other.getPushStats({ accessId: 8, pushId: 'p' })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
    });
    const none = createRpcClient(StatsServiceService, { address: address(), authorization: '' });
    await expect(none.getPushStats({ accessId: 7, pushId: 'p' })).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
    });
    for (const client of [wrong, other, none]) client.close();
  });

  it('streams a server-streaming method to its end, and its error as a catalogue code', async () => {
    const client = createRpcClient(StatsServiceService, {
      address: address(),
      authorization: bearerAuthorization(CLUSTER),
    });
    const sent: number[] = [];
    for await (const response of client.watchPushStats({ accessId: 7, pushId: 'three' }))
      sent.push(response.stats?.sent ?? 0);
    expect(sent).toEqual([1, 2, 3]);

    const failing: number[] = [];
    const consume = async () => {
      for await (const response of client.watchPushStats({ accessId: 7, pushId: 'fail' }))
        failing.push(response.stats?.sent ?? 0);
    };
    await expect(consume()).rejects.toMatchObject({ code: 'PUSH_NOT_FOUND', message: 'gone' });
    expect(failing).toEqual([1]);
    client.close();
  });

  it('ends a stream on the server when the client cancels, by its signal or by leaving the loop', async () => {
    const client = createRpcClient(StatsServiceService, {
      address: address(),
      authorization: bearerAuthorization(CLUSTER),
    });
    const controller = new AbortController();
    let received = 0;
    for await (const _ of client.watchPushStats({ accessId: 7, pushId: 'forever' }, controller)) {
      if (++received === 3) controller.abort();
    }
    expect(received).toBe(3);
    await waitFor(() => watchesEnded.includes('forever'), 'the handler to see the cancel');

    for await (const response of client.watchPushStats({ accessId: 7, pushId: 'forever' })) {
      if ((response.stats?.sent ?? 0) >= 2) break;
    }
    await waitFor(() => watchesEnded.filter((id) => id === 'forever').length === 2, 'the second cancel');
    client.close();
  });

  it('reports an unreachable server as UNAVAILABLE', async () => {
    const client = createRpcClient(StatsServiceService, {
      address: '127.0.0.1:1',
      authorization: 'x',
      deadlineMs: 2_000,
    });
    await expect(client.getPushStats({ accessId: 7, pushId: 'p' })).rejects.toMatchObject({
      code: expect.stringMatching(/UNAVAILABLE|DEADLINE_EXCEEDED/),
    });
    client.close();
  });

  it('serves grpc.health.v1 for the server and each service', async () => {
    const healthProto = join(
      dirname(require.resolve('grpc-health-check/package.json')),
      'proto/health/v1/health.proto',
    );
    // biome-ignore lint/suspicious/noExplicitAny: a dynamically loaded stock client.
    const health = loadPackageDefinition(loadSync(healthProto, { enums: String })) as any;
    const client = new health.grpc.health.v1.Health(address(), credentials.createInsecure());
    const check = (service: string) =>
      new Promise<string>((resolve, reject) =>
        client.Check({ service }, (error: Error | null, response: { status: string }) =>
          error ? reject(error) : resolve(response.status),
        ),
      );
    expect(await check('')).toBe('SERVING');
    expect(await check('pushd.v1.StatsService')).toBe('SERVING');
    client.close();
  });

  it('lists its services and serves their descriptors by reflection', async () => {
    const reflectionProto = join(
      dirname(require.resolve('@grpc/reflection/package.json')),
      'build/proto/grpc/reflection/v1/reflection.proto',
    );
    // biome-ignore lint/suspicious/noExplicitAny: a dynamically loaded stock client.
    const reflection = loadPackageDefinition(loadSync(reflectionProto, { keepCase: true })) as any;
    const client = new reflection.grpc.reflection.v1.ServerReflection(
      address(),
      credentials.createInsecure(),
    );
    const ask = (request: object) =>
      new Promise<Record<string, unknown>>((resolve, reject) => {
        const call = client.ServerReflectionInfo(new Metadata());
        call.on('data', (response: Record<string, unknown>) => {
          resolve(response);
          call.end();
        });
        call.on('error', reject);
        call.write(request);
      });
    const listed = (await ask({ list_services: '' })) as {
      list_services_response: { service: { name: string }[] };
    };
    expect(listed.list_services_response.service.map((s) => s.name)).toContain('pushd.v1.StatsService');
    const file = (await ask({ file_containing_symbol: 'pushd.v1.StatsService' })) as {
      file_descriptor_response: { file_descriptor_proto: Buffer[] };
    };
    expect(file.file_descriptor_response.file_descriptor_proto.length).toBeGreaterThan(0);
    client.close();
  });

  it('counts requests by method and code without ids in labels', async () => {
    const text = await metrics.metrics();
    expect(text).toMatch(/test_grpc_requests_total\{method="GetPushStats",code="OK"\} \d+/);
    expect(text).toMatch(/test_grpc_requests_total\{method="GetPushStats",code="PUSH_NOT_FOUND"\} \d+/);
  });
});

describe('inProcessClient', () => {
  it('streams through the serializers and aborts the handler when the caller leaves its loop', async () => {
    const client = inProcessClient(
      StatsServiceService,
      {
        getPushStats: async () => ({ stats: pushStats('x', 0) }),
        watchPushStats: watchHandler,
        getAppStats: async () => ({ coveredDevices: 0, onlineDevices: 0, platforms: [], days: [] }),
      },
      bearerAuthorization(CLUSTER),
    );
    const sent: number[] = [];
    for await (const response of client.watchPushStats({ accessId: 7, pushId: 'three' }))
      sent.push(response.stats?.sent ?? 0);
    expect(sent).toEqual([1, 2, 3]);
    for await (const response of client.watchPushStats({ accessId: 7, pushId: 'in-process' })) {
      if ((response.stats?.sent ?? 0) === 2) break;
    }
    expect(watchesEnded).toContain('in-process');
  });
});

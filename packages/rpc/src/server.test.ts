import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { credentials, loadPackageDefinition, Metadata } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { PushdError, silentLogger } from '@pushd/common';
import { StatsServiceService } from '@pushd/proto';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { basicAuthorization, bearerAuthorization, CallAuthorizer } from './auth.js';
import { createRpcClient } from './client.js';
import { bindService, GrpcServer } from './server.js';

// A real server on loopback (no broker or database involved): errors cross the wire as catalogue codes,
// and stock clients can probe health and discover the services by reflection.
const require = createRequire(import.meta.url);
const CLUSTER = 'cluster-token-for-tests';

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
          return { stats: { pushId: `${accessId}:${request.pushId}`, sent: 2, arrived: 1 } };
        },
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

import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { type Bus, type DurableStreamConfig, NatsBus } from '@pushd/bus';
import { createMetricsRegistry, PushdError, silentLogger } from '@pushd/common';
import { type NatsTestServer, startNatsServer } from '@pushd/testkit';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { describeBusContract } from '../../packages/bus/src/bus.contract.js';

describeBusContract('NatsBus', async () => {
  const server = await startNatsServer();
  const opened: Bus[] = [];
  return {
    async createBus(streams) {
      const bus = await NatsBus.connect({ servers: server.url, streams, logger: silentLogger() });
      opened.push(bus);
      return bus;
    },
    async teardown() {
      await Promise.all(opened.map((bus) => bus.close()));
      await server.stop();
    },
  };
});

const STREAM: DurableStreamConfig = { name: 'EVENTS', subjects: ['ev.>'] };
const bytes = (text: string) => new TextEncoder().encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);
const until = (check: () => unknown, timeout = 20_000) => vi.waitFor(check, { timeout, interval: 50 });
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('NatsBus against a nats-server that goes away', () => {
  let server: NatsTestServer;
  const opened: NatsBus[] = [];
  const open = async (extra: Partial<Parameters<typeof NatsBus.connect>[0]> = {}) => {
    const bus = await NatsBus.connect({
      servers: server.url,
      streams: [STREAM],
      logger: silentLogger(),
      reconnectWaitMs: 100,
      ...extra,
    });
    opened.push(bus);
    return bus;
  };

  beforeEach(async () => {
    server = await startNatsServer();
  });
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((bus) => bus.close()));
    await server.stop();
  });

  it('rejects ready() while the server is down, and is ready again once it is back', async () => {
    const registry = createMetricsRegistry({ service: 'test', processMetrics: false });
    const bus = await open({ registry, metricPrefix: 'test' });
    await expect(bus.ready()).resolves.toBeUndefined();
    expect((await registry.getSingleMetric('test_nats_connected')!.get()).values[0]!.value).toBe(1);

    await server.stopProcess();
    await until(async () => {
      const error = await bus.ready().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(PushdError);
      expect((error as PushdError).code).toBe('UNAVAILABLE');
    });
    expect((await registry.getSingleMetric('test_nats_connected')!.get()).values[0]!.value).toBe(0);
    // Fan-out while disconnected is dropped, not buffered, and does not throw.
    expect(() => bus.publish('core.x', bytes('dropped'))).not.toThrow();

    await server.startProcess();
    await until(() => bus.ready());
    expect((await registry.getSingleMetric('test_nats_connected')!.get()).values[0]!.value).toBe(1);
    expect((await registry.getSingleMetric('test_nats_reconnects_total')!.get()).values[0]!.value).toBe(1);
  });

  it('reconnects after a restart: subscriptions keep receiving', async () => {
    const publisher = await open();
    const subscriber = await open();
    const seen: string[] = [];
    subscriber.subscribe('core.restart', (data) => seen.push(text(data)));
    await subscriber.flush();
    publisher.publish('core.restart', bytes('before'));
    await until(() => expect(seen).toEqual(['before']));

    await server.restart();
    await until(async () => {
      await publisher.ready();
      await subscriber.ready();
    });
    await subscriber.flush();
    await until(async () => {
      publisher.publish('core.restart', bytes('after'));
      await publisher.flush();
      expect(seen).toContain('after');
    });
  });

  it('tells its interruption listeners once it is connected again, and not the ones removed', async () => {
    const bus = await open();
    let told = 0;
    let toldRemoved = 0;
    bus.onInterruption(() => told++);
    const remove = bus.onInterruption(() => toldRemoved++);
    remove();
    await bus.flush();
    expect(told).toBe(0);

    await server.restart();
    await until(() => expect(told).toBe(1));
    await until(() => bus.ready());
    expect(toldRemoved).toBe(0);
  });

  it('keeps durable messages across a restart and consumes them afterwards', async () => {
    const bus = await open();
    for (let i = 0; i < 5; i++) await bus.publishDurable('ev.gateway', bytes(`stored-${i}`));

    await server.restart();
    const other = await open(); // a process started after the restart
    const seen: string[] = [];
    const consumer = other.consume({
      stream: STREAM.name,
      consumer: 'after-restart',
      handler: async (data) => {
        seen.push(text(data));
      },
    });
    await until(() => expect(seen).toEqual(['stored-0', 'stored-1', 'stored-2', 'stored-3', 'stored-4']));
    await consumer.stop();
  });

  // Without a server-side limit of unacknowledged messages, and with max_ack_pending 1 (the push log's
  // appliers: one message at a time whatever the instances).
  it.each([
    ['no max_ack_pending', undefined],
    ['max_ack_pending 1', 1],
  ] as const)('keeps a running consumer going across a restart: %s', async (_way, maxAckPending) => {
    const bus = await open();
    const seen: string[] = [];
    const consumer = bus.consume({
      stream: STREAM.name,
      consumer: 'running',
      redeliverAfterMs: 1_000,
      ...(maxAckPending === undefined ? {} : { maxAckPending }),
      handler: async (data) => {
        seen.push(text(data));
      },
    });
    await bus.publishDurable('ev.gateway', bytes('one'));
    await until(() => expect(seen).toEqual(['one']));
    // Let the ack reach the server (at least once: an ack lost in the restart means one more delivery).
    await new Promise((resolve) => setTimeout(resolve, 100));
    await bus.flush();

    await server.restart();
    await until(() => bus.ready());
    await until(() => bus.publishDurable('ev.gateway', bytes('two')));
    await until(() => expect(seen).toContain('two'));
    expect(seen.filter((s) => s === 'one')).toHaveLength(1);
    await consumer.stop();
  });

  // A durable consumer deleted under a running pull (by an operator, or lost with JetStream's state): the
  // bus creates it again and goes on, instead of pulling from the stale handle for ever (it did).
  it('consumes again after its durable consumer was deleted', async () => {
    const bus = await open();
    const seen: string[] = [];
    const consumer = bus.consume({
      stream: STREAM.name,
      consumer: 'deleted',
      maxAckPending: 1,
      handler: async (data) => {
        seen.push(text(data));
      },
    });
    await bus.publishDurable('ev.gateway', bytes('one'));
    await until(() => expect(seen).toEqual(['one']));
    const admin = await connect({ servers: server.url });
    await (await jetstreamManager(admin)).consumers.delete(STREAM.name, 'deleted');
    await until(async () => {
      await bus.publishDurable('ev.gateway', bytes('again'));
      expect(seen).toContain('again');
    });
    await admin.close();
    await consumer.stop();
  });

  it('creates a deleted consumer again with startWithinMs: only what was stored within it comes again', async () => {
    const bus = await open();
    const seen: string[] = [];
    const consumer = bus.consume({
      stream: STREAM.name,
      consumer: 'deleted-window',
      startWithinMs: 2_500,
      handler: async (data) => {
        seen.push(text(data));
      },
    });
    await bus.publishDurable('ev.gateway', bytes('old'));
    await until(() => expect(seen).toEqual(['old']));
    await sleep(3_000);
    await bus.publishDurable('ev.gateway', bytes('recent'));
    await until(() => expect(seen).toEqual(['old', 'recent']));
    const admin = await connect({ servers: server.url });
    await (await jetstreamManager(admin)).consumers.delete(STREAM.name, 'deleted-window');
    await until(async () => {
      await bus.publishDurable('ev.gateway', bytes('again'));
      expect(seen).toContain('again');
    });
    // Recreated at "2.5 s ago": 'recent' once more (a handler deduplicating for 2.5 s would drop it), never 'old'
    // (stored 3 s or more before).
    expect(seen.filter((message) => message === 'old')).toHaveLength(1);
    expect(seen.filter((message) => message === 'recent')).toHaveLength(2);
    await admin.close();
    await consumer.stop();
  });

  it('rejects publishDurable with UNAVAILABLE at once while the server is down', async () => {
    const bus = await open();
    await server.stopProcess();
    await until(() => expect(bus.ready()).rejects.toBeInstanceOf(PushdError));
    const started = performance.now();
    await expect(bus.publishDurable('ev.gateway', bytes('x'))).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(performance.now() - started).toBeLessThan(1_000);

    await server.startProcess();
    await until(() => bus.ready());
    await until(() => bus.publishDurable('ev.gateway', bytes('y')));
  });

  it('fails connect() with UNAVAILABLE when no server answers', async () => {
    const port = server.port;
    await server.stopProcess();
    await expect(
      NatsBus.connect({ servers: `nats://127.0.0.1:${port}`, logger: silentLogger() }),
    ).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  it('accepts a comma-separated server list and updates a stream configuration idempotently', async () => {
    const bus = await open({ servers: `nats://127.0.0.1:1, ${server.url}` });
    await bus.ready();
    const again = await open({ streams: [{ ...STREAM, maxAgeMs: 60_000 }] });
    await again.publishDurable('ev.gateway', bytes('x'));
  });
});

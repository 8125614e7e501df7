// NatsBus on a real three-node NATS cluster (JetStream, streams replicated three times), as production
// grows: fan-out between buses connected to different nodes, durable publishing and consuming across
// nodes, the replicated log and its consumer surviving the loss of any one node, and the reader that looks
// ahead of a consumer. The single-server behaviour is test/integration/nats-bus.test.ts's.
import { type DurableStreamConfig, NatsBus } from '@pushd/bus';
import { silentLogger } from '@pushd/common';
import { type NatsTestCluster, startNatsCluster } from '@pushd/testkit';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);
const until = (check: () => unknown, timeout = 30_000) => vi.waitFor(check, { timeout, interval: 50 });

let cluster: NatsTestCluster;
const opened: NatsBus[] = [];

/** A bus connected first to node `index` (it knows the others and fails over to them). */
async function busOn(index: number, streams: DurableStreamConfig[]): Promise<NatsBus> {
  const urls = cluster.url.split(',');
  const bus = await NatsBus.connect({
    servers: [urls[index]!, ...urls.filter((_, i) => i !== index)],
    streams,
    logger: silentLogger(),
    reconnectWaitMs: 100,
  });
  opened.push(bus);
  return bus;
}

/** The nodes holding a copy of `stream` (leader or replica): those whose monitoring lists it. */
async function peersOf(stream: string): Promise<string[]> {
  interface Jsz {
    account_details?: { stream_detail?: { name: string }[] }[];
  }
  const holding: string[] = [];
  for (const [index, url] of cluster.monitorUrls.entries()) {
    const jsz = (await (await fetch(`${url}/jsz?streams=true`)).json()) as Jsz;
    const streams = jsz.account_details?.flatMap((account) => account.stream_detail ?? []) ?? [];
    if (streams.some((candidate) => candidate.name === stream)) holding.push(`n${index + 1}`);
  }
  return holding;
}

beforeAll(async () => {
  cluster = await startNatsCluster(3);
}, 60_000);

afterAll(async () => {
  await Promise.all(opened.map((bus) => bus.close()));
  await cluster?.stop();
});

describe('NatsBus on a three-node NATS cluster', () => {
  it('fans a message out to subscribers connected to other nodes', async () => {
    const [one, two, three] = [await busOn(0, []), await busOn(1, []), await busOn(2, [])];
    const onTwo: string[] = [];
    const onThree: string[] = [];
    two.subscribe('fan.node.deliver', (data) => onTwo.push(text(data)));
    three.subscribe('fan.node.deliver', (data) => onThree.push(text(data)));
    await two.flush();
    await three.flush();
    // Interest crosses the routes asynchronously: publish until both nodes' subscribers have one.
    await until(async () => {
      one.publish('fan.node.deliver', bytes('hello'));
      await one.flush();
      expect(onTwo.length).toBeGreaterThan(0);
      expect(onThree.length).toBeGreaterThan(0);
    });
    expect(new Set([...onTwo, ...onThree])).toEqual(new Set(['hello']));
  });

  it("never lowers a stream's replicas when a bus declares it with fewer", async () => {
    const replicated: DurableStreamConfig = { name: 'CLUSTER_KEEP', subjects: ['ckeep.>'], replicas: 3 };
    const first = await busOn(0, [replicated]);
    await first.publishDurable('ckeep.a', bytes('kept'));
    await until(async () => expect(await peersOf('CLUSTER_KEEP')).toHaveLength(3));
    // A service started without the shared setting (1 replica) declares the same stream.
    const stale = await busOn(1, [{ ...replicated, replicas: 1, maxAgeMs: 3_600_000 }]);
    await stale.publishDurable('ckeep.b', bytes('also kept'));
    expect(await peersOf('CLUSTER_KEEP')).toHaveLength(3);
    // Nothing was lost on the way: both messages are in the stream.
    const read = await first.readDurable({ stream: 'CLUSTER_KEEP', afterSeq: 0, maxMessages: 10 });
    expect(read.map((message) => text(message.data))).toEqual(['kept', 'also kept']);
  });

  it('reads ahead of a consumer from any node without consuming', async () => {
    const stream: DurableStreamConfig = { name: 'CLUSTER_READ', subjects: ['cread.>'], replicas: 3 };
    const writer = await busOn(2, [stream]);
    const reader = await busOn(0, [stream]);
    for (let i = 1; i <= 5; i++) await writer.publishDurable(`cread.p${i % 2}`, bytes(`r${i}`));
    const read = await reader.readDurable({ stream: stream.name, afterSeq: 2, maxMessages: 10 });
    expect(read.map((message) => text(message.data))).toEqual(['r3', 'r4', 'r5']);
    expect(await reader.consumerBacklog(stream.name, 'nobody')).toBeUndefined();
  });

  it('keeps a replicated log in order through the loss of the node each side is on', async () => {
    const stream: DurableStreamConfig = { name: 'CLUSTER_LOG', subjects: ['clog.>'], replicas: 3 };
    const producer = await busOn(0, [stream]);
    const consumerBus = await busOn(1, [stream]);
    const received: string[] = [];
    const consumer = consumerBus.consume({
      stream: stream.name,
      consumer: 'applier',
      maxAckPending: 1,
      redeliverAfterMs: 1_000,
      handler: async (data) => {
        received.push(text(data));
      },
    });
    const acknowledged: string[] = [];
    const publish = async (value: string) => {
      // A publish is acknowledged once a majority of the replicas stored it; while a leader is being
      // elected it is refused (UNAVAILABLE), and the producer sends it again, as an API client sends
      // again a push refused with UNAVAILABLE.
      await until(async () => {
        await producer.publishDurable(`clog.${value}`, bytes(value), { dedupKey: value });
      });
      acknowledged.push(value);
    };
    for (let i = 0; i < 20; i++) await publish(`m${i}`);
    await until(() => expect(received).toHaveLength(20));
    // The bus created the stream on all three nodes (a leader and two current replicas).
    expect(await peersOf(stream.name)).toEqual(['n1', 'n2', 'n3']);

    // Down go the nodes the consumer's and the producer's connections were on, one after the other; the
    // log keeps a majority (two of three) at each step.
    await cluster.nodes[1]!.stopProcess();
    for (let i = 20; i < 40; i++) await publish(`m${i}`);
    await cluster.nodes[1]!.startProcess();
    // Back and caught up before the next node goes: two nodes down at once would be no majority.
    await cluster.ready();
    await cluster.nodes[0]!.stopProcess();
    for (let i = 40; i < 60; i++) await publish(`m${i}`);
    await cluster.nodes[0]!.startProcess();
    await cluster.ready();

    // Everything acknowledged arrives, in publish order; a message delivered again after a failover is
    // the at-least-once of the contract, never a reordering.
    await until(() => expect(new Set(received).size).toBe(60));
    const firstSeen = received.filter((value, i) => received.indexOf(value) === i);
    expect(firstSeen).toEqual(acknowledged);
    await consumer.stop();
  }, 120_000);
});

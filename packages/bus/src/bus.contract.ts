/**
 * The behaviour every Bus implementation must have, as one vitest suite run against each of them:
 * packages/bus/src/bus-memory.test.ts (MemoryBus) and test/integration/nats-bus.test.ts (NatsBus on a real
 * nats-server). Import it by path; it is not part of the package's public names.
 */
import { PushdError } from '@pushd/common';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Bus, DurableMessageMeta, DurableStreamConfig } from './bus.js';

/** What a contract run needs from the implementation under test. */
export interface BusHarness {
  /**
   * A new bus instance onto the server shared by every instance of this harness (another MemoryBus handle
   * on the same broker, another connection to the same nats-server), as if opened by another process.
   * It must create `streams`.
   */
  createBus(streams: DurableStreamConfig[]): Promise<Bus>;
  /** Closes what the harness opened (buses it created, servers). Called after each test. */
  teardown(): Promise<void>;
}

const STREAM: DurableStreamConfig = { name: 'CONTRACT', subjects: ['contract.>'], maxAgeMs: 3_600_000 };
const REDELIVER_MS = 300;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (text: string) => encoder.encode(text);
const text = (data: Uint8Array) => decoder.decode(data);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const until = (check: () => void, timeout = 10_000) => vi.waitFor(check, { timeout, interval: 10 });

/** A handler whose received messages (as text) are kept in order. */
function collector() {
  const received: string[] = [];
  const subjects: string[] = [];
  return {
    received,
    subjects,
    handler: (data: Uint8Array, subject: string) => {
      received.push(text(data));
      subjects.push(subject);
    },
  };
}

/** Lets messages in transit arrive, so that a test can check that nothing more came. */
async function settle(...buses: Bus[]): Promise<void> {
  for (const bus of buses) await bus.flush();
  await sleep(150);
  for (const bus of buses) await bus.flush();
}

export function describeBusContract(name: string, setup: () => Promise<BusHarness>): void {
  describe(`Bus contract: ${name}`, () => {
    let harness: BusHarness;
    const buses = async (count: number): Promise<Bus[]> => {
      const created: Bus[] = [];
      for (let i = 0; i < count; i++) created.push(await harness.createBus([STREAM]));
      return created;
    };

    beforeEach(async () => {
      harness = await setup();
    });
    afterEach(async () => {
      await harness.teardown();
    });

    describe('fan-out (publish/subscribe)', () => {
      it('delivers each message to every subscriber, on every instance', async () => {
        const [a, b, c] = await buses(3);
        const onA1 = collector();
        const onA2 = collector();
        const onB = collector();
        a!.subscribe('fan.node1.deliver', onA1.handler);
        a!.subscribe('fan.node1.deliver', onA2.handler);
        b!.subscribe('fan.node1.deliver', onB.handler);
        await a!.flush();
        await b!.flush();

        c!.publish('fan.node1.deliver', bytes('one'));
        c!.publish('fan.node1.deliver', bytes('two'));
        await c!.flush();

        await until(() => {
          expect(onA1.received).toEqual(['one', 'two']);
          expect(onA2.received).toEqual(['one', 'two']);
          expect(onB.received).toEqual(['one', 'two']);
        });
        expect(onB.subjects).toEqual(['fan.node1.deliver', 'fan.node1.deliver']);
        await settle(a!, b!, c!);
        expect(onA1.received).toHaveLength(2);
      });

      it('delivers asynchronously, never inside the publish call', async () => {
        const [a] = await buses(1);
        const on = collector();
        a!.subscribe('async.check', on.handler);
        await a!.flush();
        a!.publish('async.check', bytes('x'));
        expect(on.received).toEqual([]);
        await until(() => expect(on.received).toEqual(['x']));
      });

      it('gives each message to one member of a queue group, and still to every plain subscriber', async () => {
        const [a, b, c] = await buses(3);
        const members = [collector(), collector(), collector()];
        const plain = collector();
        a!.subscribe('work.jobs', members[0]!.handler, { queue: 'workers' });
        a!.subscribe('work.jobs', members[1]!.handler, { queue: 'workers' });
        b!.subscribe('work.jobs', members[2]!.handler, { queue: 'workers' });
        b!.subscribe('work.jobs', plain.handler);
        await a!.flush();
        await b!.flush();

        const sent = Array.from({ length: 90 }, (_, i) => `job-${i}`);
        for (const job of sent) c!.publish('work.jobs', bytes(job));
        await c!.flush();

        await until(() => {
          const all = members.flatMap((m) => m.received);
          expect(all).toHaveLength(sent.length);
          expect(plain.received).toHaveLength(sent.length);
        });
        await settle(a!, b!, c!);
        const all = members.flatMap((m) => m.received);
        expect(all.sort()).toEqual([...sent].sort());
        for (const member of members) expect(member.received.length).toBeGreaterThan(0);
        expect(plain.received).toEqual(sent);
      });

      it('matches `*` as one token and `>` as one or more trailing tokens', async () => {
        const [a, b] = await buses(2);
        const star = collector();
        const tail = collector();
        const exact = collector();
        a!.subscribe('wild.*.deliver', star.handler);
        a!.subscribe('wild.>', tail.handler);
        a!.subscribe('wild.n1', exact.handler);
        await a!.flush();

        for (const subject of [
          'wild.n1.deliver',
          'wild.n1',
          'wild.n1.x.deliver',
          'wild',
          'wildly.n1.deliver',
        ]) {
          b!.publish(subject, bytes(subject));
        }
        await b!.flush();

        await until(() => expect(tail.received).toHaveLength(3));
        await settle(a!, b!);
        expect(star.received).toEqual(['wild.n1.deliver']);
        expect(tail.received).toEqual(['wild.n1.deliver', 'wild.n1', 'wild.n1.x.deliver']);
        expect(exact.received).toEqual(['wild.n1']);
      });

      it('stops delivering after unsubscribe', async () => {
        const [a, b] = await buses(2);
        const on = collector();
        const other = collector();
        const subscription = a!.subscribe('unsub.x', on.handler);
        a!.subscribe('unsub.x', other.handler);
        await a!.flush();
        b!.publish('unsub.x', bytes('before'));
        await b!.flush();
        await until(() => expect(on.received).toEqual(['before']));

        subscription.unsubscribe();
        subscription.unsubscribe(); // idempotent
        await a!.flush();
        b!.publish('unsub.x', bytes('after'));
        await b!.flush();
        await until(() => expect(other.received).toEqual(['before', 'after']));
        await settle(a!, b!);
        expect(on.received).toEqual(['before']);
      });

      it('keeps publish order per subscriber', async () => {
        const [a, b] = await buses(2);
        const local = collector();
        const remote = collector();
        a!.subscribe('order.x', local.handler);
        b!.subscribe('order.x', remote.handler);
        await a!.flush();
        await b!.flush();

        const sent = Array.from({ length: 2_000 }, (_, i) => String(i));
        for (const message of sent) a!.publish('order.x', bytes(message));
        await a!.flush();

        await until(() => {
          expect(local.received).toHaveLength(sent.length);
          expect(remote.received).toHaveLength(sent.length);
        });
        expect(local.received).toEqual(sent);
        expect(remote.received).toEqual(sent);
      });

      it('drops a message published while nobody subscribes', async () => {
        const [a, b] = await buses(2);
        b!.publish('nobody.x', bytes('lost'));
        await b!.flush();
        await settle(a!, b!);

        const on = collector();
        a!.subscribe('nobody.x', on.handler);
        await a!.flush();
        b!.publish('nobody.x', bytes('seen'));
        await b!.flush();
        await until(() => expect(on.received).toEqual(['seen']));
        await settle(a!, b!);
        expect(on.received).toEqual(['seen']);
      });
    });

    describe('durable events (publishDurable/consume)', () => {
      it('stores what is published and delivers it in order to a consumer started later', async () => {
        const [a, b] = await buses(2);
        for (let i = 0; i < 5; i++) await a!.publishDurable('contract.basic.gateway', bytes(`e${i}`));

        const seen: Array<{ data: string; meta: DurableMessageMeta }> = [];
        const consumer = b!.consume({
          stream: STREAM.name,
          consumer: 'basic',
          filterSubject: 'contract.basic.>',
          handler: async (data, meta) => {
            seen.push({ data: text(data), meta });
          },
        });
        await until(() => expect(seen).toHaveLength(5));
        expect(seen.map((s) => s.data)).toEqual(['e0', 'e1', 'e2', 'e3', 'e4']);
        for (const s of seen) {
          expect(s.meta).toEqual({
            subject: 'contract.basic.gateway',
            seq: expect.any(Number),
            deliveryCount: 1,
            pending: expect.any(Number),
          });
        }

        await a!.publishDurable('contract.basic.dispatch', bytes('e5'));
        await until(() => expect(seen).toHaveLength(6));
        expect(seen[5]!.meta.subject).toBe('contract.basic.dispatch');
        await consumer.stop();
      });

      it('delivers again, with a higher deliveryCount, a message whose handler rejected', async () => {
        const [a, b] = await buses(2);
        const deliveries: Array<[string, number, number]> = [];
        const started = performance.now();
        const consumer = b!.consume({
          stream: STREAM.name,
          consumer: 'retry',
          filterSubject: 'contract.retry.>',
          redeliverAfterMs: REDELIVER_MS,
          handler: async (data, meta) => {
            deliveries.push([text(data), meta.deliveryCount, performance.now() - started]);
            if (text(data) === 'flaky' && meta.deliveryCount < 3) throw new Error('not now');
          },
        });
        await a!.publishDurable('contract.retry.x', bytes('flaky'));
        await a!.publishDurable('contract.retry.x', bytes('fine'));

        await until(() => expect(deliveries.filter(([d]) => d === 'flaky')).toHaveLength(3));
        const flaky = deliveries.filter(([d]) => d === 'flaky');
        expect(flaky.map(([, count]) => count)).toEqual([1, 2, 3]);
        // Redelivered after the delay, not at once.
        expect(flaky[1]![2] - flaky[0]![2]).toBeGreaterThanOrEqual(REDELIVER_MS * 0.8);
        await settle(a!, b!);
        await sleep(REDELIVER_MS * 2);
        // Acknowledged once the handler resolved: no further deliveries.
        expect(deliveries.filter(([d]) => d === 'flaky')).toHaveLength(3);
        expect(deliveries.filter(([d]) => d === 'fine')).toEqual([['fine', 1, expect.any(Number)]]);
        await consumer.stop();
      });

      it('gives what a stopped consumer did not acknowledge to a new consumer of the same name', async () => {
        const [a, b, c] = await buses(3);
        for (let i = 0; i < 10; i++) await a!.publishDurable('contract.restart.gateway', bytes(`m${i}`));

        // First "process": acknowledges m0..m2, is stopped while handling m3, which then fails.
        const first: string[] = [];
        let releaseM3!: () => void;
        const m3Started = new Promise<void>((resolve) => {
          releaseM3 = resolve;
        });
        let failM3!: (error: Error) => void;
        const consumerB = b!.consume({
          stream: STREAM.name,
          consumer: 'restart',
          filterSubject: 'contract.restart.>',
          redeliverAfterMs: REDELIVER_MS,
          handler: (data) => {
            first.push(text(data));
            if (text(data) !== 'm3') return Promise.resolve();
            releaseM3();
            return new Promise<void>((_, reject) => {
              failM3 = reject;
            });
          },
        });
        await m3Started;
        const stopping = consumerB.stop();
        let stopped = false;
        void stopping.then(() => {
          stopped = true;
        });
        await sleep(50);
        expect(stopped).toBe(false); // waits for the handler in flight
        failM3(new Error('shutting down'));
        await stopping;
        expect(first).toEqual(['m0', 'm1', 'm2', 'm3']);

        // Second "process", on another instance.
        const second: Array<[string, number]> = [];
        const consumerC = c!.consume({
          stream: STREAM.name,
          consumer: 'restart',
          filterSubject: 'contract.restart.>',
          redeliverAfterMs: REDELIVER_MS,
          handler: async (data, meta) => {
            second.push([text(data), meta.deliveryCount]);
          },
        });
        await until(() => expect(second).toHaveLength(7));
        await settle(a!, c!);
        await sleep(REDELIVER_MS * 2);
        expect(second.map(([d]) => d).sort()).toEqual(['m3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9']);
        expect(second.find(([d]) => d === 'm3')![1]).toBeGreaterThanOrEqual(2);
        await consumerC.stop();
      });

      it('shares the work between consumers of the same name without duplicates', async () => {
        const [a, b, c] = await buses(3);
        const byB: string[] = [];
        const byC: string[] = [];
        const slow = (into: string[]) => async (data: Uint8Array) => {
          into.push(text(data));
          await sleep(2);
        };
        const options = { stream: STREAM.name, consumer: 'shared', filterSubject: 'contract.shared.>' };
        const consumerB = b!.consume({ ...options, handler: slow(byB) });
        const consumerC = c!.consume({ ...options, handler: slow(byC), concurrency: 2 });

        const sent = Array.from({ length: 60 }, (_, i) => `w${i}`);
        for (const message of sent) await a!.publishDurable('contract.shared.gateway', bytes(message));

        await until(() => expect(byB.length + byC.length).toBe(sent.length));
        await settle(a!, b!, c!);
        expect([...byB, ...byC].sort()).toEqual([...sent].sort());
        expect(byB.length).toBeGreaterThan(0);
        expect(byC.length).toBeGreaterThan(0);
        await Promise.all([consumerB.stop(), consumerC.stop()]);
      });

      it('runs at most `concurrency` handlers at once', async () => {
        const [a] = await buses(1);
        let running = 0;
        let maxRunning = 0;
        let done = 0;
        const consumer = a!.consume({
          stream: STREAM.name,
          consumer: 'limited',
          filterSubject: 'contract.limited.>',
          concurrency: 3,
          handler: async () => {
            running++;
            maxRunning = Math.max(maxRunning, running);
            await sleep(10);
            running--;
            done++;
          },
        });
        for (let i = 0; i < 20; i++) await a!.publishDurable('contract.limited.x', bytes(String(i)));
        await until(() => expect(done).toBe(20));
        expect(maxRunning).toBeLessThanOrEqual(3);
        expect(maxRunning).toBeGreaterThan(1);
        await consumer.stop();
      });

      it('delivers only the subjects matching filterSubject', async () => {
        const [a, b] = await buses(2);
        await a!.publishDurable('contract.filter.gateway', bytes('g1'));
        await a!.publishDurable('contract.filter.dispatch', bytes('d1'));
        await a!.publishDurable('contract.filter.gateway', bytes('g2'));
        const seen: string[] = [];
        const consumer = b!.consume({
          stream: STREAM.name,
          consumer: 'filtered',
          filterSubject: 'contract.filter.gateway',
          handler: async (data, meta) => {
            seen.push(`${text(data)}@${meta.subject}`);
          },
        });
        await until(() => expect(seen).toHaveLength(2));
        await settle(a!, b!);
        expect(seen).toEqual(['g1@contract.filter.gateway', 'g2@contract.filter.gateway']);
        await consumer.stop();
        // An instance joining the consumer without a filter keeps the one it was created with.
        const joined = b!.consume({
          stream: STREAM.name,
          consumer: 'filtered',
          handler: async (data, meta) => {
            seen.push(`${text(data)}@${meta.subject}`);
          },
        });
        await a!.publishDurable('contract.filter.dispatch', bytes('d2'));
        await a!.publishDurable('contract.filter.gateway', bytes('g3'));
        await until(() => expect(seen).toHaveLength(3));
        await settle(a!, b!);
        expect(seen.slice(2)).toEqual(['g3@contract.filter.gateway']);
        await joined.stop();
      });

      it('also gives a durable message to the core subscribers of its subject, as NATS does', async () => {
        const [a, b] = await buses(2);
        const on = collector();
        b!.subscribe('contract.core.>', on.handler);
        await b!.flush();
        await a!.publishDurable('contract.core.gateway', bytes('stored'));
        await until(() => expect(on.received).toEqual(['stored']));
        expect(on.subjects).toEqual(['contract.core.gateway']);
      });

      it('resolves publishDurable to the stream sequence, one more per stored message, as meta.seq says', async () => {
        const [a, b] = await buses(2);
        const results: Array<{ seq: number; duplicate: boolean }> = [];
        // Two publishers and two subjects: the sequence is the stream's, not a subject's or a connection's.
        for (let i = 0; i < 6; i++) {
          const publisher = i % 2 === 0 ? a! : b!;
          const subject = i % 3 === 0 ? 'contract.seq.other' : 'contract.seq.mine';
          results.push(await publisher.publishDurable(subject, bytes(`s${i}`)));
        }
        const first = results[0]!.seq;
        expect(first).toBeGreaterThanOrEqual(1);
        expect(results).toEqual(results.map((_, i) => ({ seq: first + i, duplicate: false })));

        const seen: Array<[string, number]> = [];
        const consumer = b!.consume({
          stream: STREAM.name,
          consumer: 'seq',
          filterSubject: 'contract.seq.mine',
          handler: async (data, meta) => {
            seen.push([text(data), meta.seq]);
          },
        });
        await until(() => expect(seen).toHaveLength(4));
        expect(seen).toEqual([
          ['s1', first + 1],
          ['s2', first + 2],
          ['s4', first + 4],
          ['s5', first + 5],
        ]);
        await consumer.stop();
      });

      it('stores a message published twice with one dedupKey once, and resolves both to its seq', async () => {
        const [a, b] = await buses(2);
        const core = collector();
        b!.subscribe('contract.dedup.>', core.handler);
        await b!.flush();

        const first = await a!.publishDurable('contract.dedup.x', bytes('first'), { dedupKey: 'k1' });
        // From another instance, as a retry by another process would be.
        const again = await b!.publishDurable('contract.dedup.x', bytes('again'), { dedupKey: 'k1' });
        const other = await a!.publishDurable('contract.dedup.x', bytes('other'), { dedupKey: 'k2' });
        const plain = await a!.publishDurable('contract.dedup.x', bytes('plain'));
        expect(first.duplicate).toBe(false);
        expect(again).toEqual({ seq: first.seq, duplicate: true });
        expect(other).toEqual({ seq: first.seq + 1, duplicate: false });
        expect(plain).toEqual({ seq: first.seq + 2, duplicate: false });

        const seen: Array<[string, number]> = [];
        const consumer = b!.consume({
          stream: STREAM.name,
          consumer: 'dedup',
          filterSubject: 'contract.dedup.>',
          handler: async (data, meta) => {
            seen.push([text(data), meta.seq]);
          },
        });
        await until(() => expect(seen).toHaveLength(3));
        await settle(a!, b!);
        expect(seen).toEqual([
          ['first', first.seq],
          ['other', first.seq + 1],
          ['plain', first.seq + 2],
        ]);
        // Deduplication is the stream's: the subject carried the duplicate to its core subscribers.
        expect(core.received).toEqual(['first', 'again', 'other', 'plain']);
        await consumer.stop();
      });

      it('stores a dedupKey again once the duplicate window is over', async () => {
        const windowed: DurableStreamConfig = {
          name: 'CONTRACT_WINDOW',
          subjects: ['window.>'],
          maxAgeMs: 3_600_000,
          duplicateWindowMs: 300,
        };
        const a = await harness.createBus([windowed]);
        const first = await a.publishDurable('window.x', bytes('1'), { dedupKey: 'k' });
        expect(await a.publishDurable('window.x', bytes('2'), { dedupKey: 'k' })).toEqual({
          seq: first.seq,
          duplicate: true,
        });
        await sleep(500);
        expect(await a.publishDurable('window.x', bytes('3'), { dedupKey: 'k' })).toEqual({
          seq: first.seq + 1,
          duplicate: false,
        });
      });

      it('rejects a dedupKey NATS would alter or ignore with INVALID_ARGUMENT', async () => {
        const [a] = await buses(1);
        for (const dedupKey of ['', ' k', 'k\n']) {
          await expect(
            a!.publishDurable('contract.badkey.x', bytes('x'), { dedupKey }),
          ).rejects.toMatchObject({
            code: 'INVALID_ARGUMENT',
          });
        }
      });

      it('with maxAckPending 1, handles messages one at a time in stream order over every instance', async () => {
        const [a, b, c] = await buses(3);
        const options = { stream: STREAM.name, consumer: 'ordered', filterSubject: 'contract.ordered.>' };
        // The consumer exists without a limit first: consume() must set it on an existing consumer too.
        await b!.consume({ ...options, handler: async () => {} }).stop();

        const sent = Array.from({ length: 50 }, (_, i) => `o${i}`);
        const publish = async (messages: string[]) => {
          for (const message of messages) await a!.publishDurable('contract.ordered.x', bytes(message));
        };
        await publish(sent.slice(0, 25));
        const handled: string[] = [];
        const byInstance = [0, 0];
        let running = 0;
        let maxRunning = 0;
        const handler = (instance: number) => async (data: Uint8Array) => {
          running++;
          maxRunning = Math.max(maxRunning, running);
          handled.push(text(data));
          byInstance[instance]!++;
          await sleep(Math.random() * 4);
          running--;
        };
        // concurrency above the limit: the limit, not the instance's slots, must keep the order.
        const consumerB = b!.consume({ ...options, maxAckPending: 1, concurrency: 4, handler: handler(0) });
        const consumerC = c!.consume({ ...options, maxAckPending: 1, handler: handler(1) });
        await publish(sent.slice(25));

        await until(() => expect(handled).toHaveLength(sent.length));
        await settle(a!, b!, c!);
        expect(handled).toEqual(sent);
        expect(maxRunning).toBe(1);
        expect(byInstance[0]).toBeGreaterThan(0);
        expect(byInstance[1]).toBeGreaterThan(0);
        await Promise.all([consumerB.stop(), consumerC.stop()]);
      });

      it('with maxAckPending 1, delivers a rejected message again before any later one', async () => {
        const [a, b, c] = await buses(3);
        const deliveries: Array<[string, number, number]> = [];
        const started = performance.now();
        const handler = async (data: Uint8Array, meta: DurableMessageMeta) => {
          deliveries.push([text(data), meta.deliveryCount, performance.now() - started]);
          if (text(data) === 'r1' && meta.deliveryCount === 1) throw new Error('not now');
        };
        const options = {
          stream: STREAM.name,
          consumer: 'ordered-retry',
          filterSubject: 'contract.oretry.>',
          redeliverAfterMs: REDELIVER_MS,
          maxAckPending: 1,
          handler,
        };
        const consumerB = b!.consume(options);
        const consumerC = c!.consume({ ...options, concurrency: 3 });
        for (let i = 0; i < 5; i++) await a!.publishDurable('contract.oretry.x', bytes(`r${i}`));

        await until(() => expect(deliveries).toHaveLength(6));
        await settle(a!, b!, c!);
        expect(deliveries.map(([data, count]) => [data, count])).toEqual([
          ['r0', 1],
          ['r1', 1],
          ['r1', 2],
          ['r2', 1],
          ['r3', 1],
          ['r4', 1],
        ]);
        expect(deliveries[2]![2] - deliveries[1]![2]).toBeGreaterThanOrEqual(REDELIVER_MS * 0.8);
        await Promise.all([consumerB.stop(), consumerC.stop()]);
      });

      it('tells each delivery how many matching messages were stored after it and not delivered yet', async () => {
        const [a, b] = await buses(2);
        for (let i = 0; i < 5; i++) {
          await a!.publishDurable('contract.pending.x', bytes(`p${i}`));
          // Other subjects of the stream, not matching the filter: never counted.
          await a!.publishDurable('contract.unpending.x', bytes(`u${i}`));
        }
        const seen: Array<[string, number, number]> = [];
        let failed = false;
        const consumer = b!.consume({
          stream: STREAM.name,
          consumer: 'pending',
          filterSubject: 'contract.pending.>',
          maxAckPending: 1,
          redeliverAfterMs: REDELIVER_MS,
          handler: async (data, meta) => {
            seen.push([text(data), meta.deliveryCount, meta.pending]);
            if (text(data) === 'p2' && !failed) {
              failed = true;
              throw new Error('not now');
            }
          },
        });
        await until(() => expect(seen).toHaveLength(6));
        // A redelivery counts the messages behind it that were never delivered, as the first one did.
        expect(seen).toEqual([
          ['p0', 1, 4],
          ['p1', 1, 3],
          ['p2', 1, 2],
          ['p2', 2, 2],
          ['p3', 1, 1],
          ['p4', 1, 0],
        ]);
        await a!.publishDurable('contract.pending.x', bytes('late'));
        await until(() => expect(seen).toHaveLength(7));
        expect(seen[6]).toEqual(['late', 1, 0]);
        await consumer.stop();
      });

      it('reads stored messages after a sequence, filtered, in order and bounded, without consuming them', async () => {
        const [a, b] = await buses(2);
        const stored: Array<{ seq: number; subject: string; data: string }> = [];
        for (let i = 0; i < 8; i++) {
          const subject = i % 3 === 1 ? 'contract.read.other' : 'contract.read.mine';
          const { seq } = await a!.publishDurable(subject, bytes(`m${i}`));
          stored.push({ seq, subject, data: `m${i}` });
        }
        const read = async (options: { filterSubject?: string; afterSeq: number; maxMessages: number }) =>
          (await b!.readDurable({ stream: STREAM.name, ...options })).map((m) => ({
            seq: m.seq,
            subject: m.subject,
            data: text(m.data),
          }));
        const mine = stored.filter((m) => m.subject === 'contract.read.mine');
        expect(mine).toHaveLength(5);

        // Everything matching after the start, in sequence order; fewer than asked when fewer are stored.
        expect(await read({ filterSubject: 'contract.read.mine', afterSeq: 0, maxMessages: 100 })).toEqual(
          mine,
        );
        // Bounded by maxMessages, from the first sequence above afterSeq (afterSeq itself excluded).
        expect(
          await read({ filterSubject: 'contract.read.mine', afterSeq: mine[1]!.seq, maxMessages: 2 }),
        ).toEqual(mine.slice(2, 4));
        // A wildcard filter and no filter: every subject.
        expect(
          await read({ filterSubject: 'contract.read.*', afterSeq: stored[2]!.seq, maxMessages: 3 }),
        ).toEqual(stored.slice(3, 6));
        expect(await read({ afterSeq: stored[5]!.seq, maxMessages: 10 })).toEqual(stored.slice(6));
        // Nothing stored there: none, at once (no waiting for new messages).
        expect(await read({ filterSubject: 'contract.read.none', afterSeq: 0, maxMessages: 5 })).toEqual([]);
        expect(
          await read({ filterSubject: 'contract.read.mine', afterSeq: stored[7]!.seq, maxMessages: 5 }),
        ).toEqual([]);
        expect(await read({ afterSeq: stored[7]!.seq + 100, maxMessages: 5 })).toEqual([]);

        // A durable consumer still gets every message: reading changed none of its state.
        const seen: string[] = [];
        const consumer = b!.consume({
          stream: STREAM.name,
          consumer: 'after-read',
          filterSubject: 'contract.read.mine',
          handler: async (data) => {
            seen.push(text(data));
          },
        });
        await until(() => expect(seen).toEqual(mine.map((m) => m.data)));
        await consumer.stop();
        await a!.publishDurable('contract.read.mine', bytes('later'));
        expect(
          await read({ filterSubject: 'contract.read.mine', afterSeq: stored[7]!.seq, maxMessages: 5 }),
        ).toEqual([{ seq: stored[7]!.seq + 1, subject: 'contract.read.mine', data: 'later' }]);
        expect(await b!.consumerBacklog(STREAM.name, 'after-read')).toBe(1);
      });

      it('refuses to read with bad options (INVALID_ARGUMENT) or from an unknown stream (UNAVAILABLE)', async () => {
        const [a] = await buses(1);
        for (const bad of [
          { afterSeq: -1, maxMessages: 1 },
          { afterSeq: 1.5, maxMessages: 1 },
          { afterSeq: 0, maxMessages: 0 },
          { afterSeq: 0, maxMessages: 1, filterSubject: 'contract..x' },
        ]) {
          await expect(a!.readDurable({ stream: STREAM.name, ...bad })).rejects.toMatchObject({
            code: 'INVALID_ARGUMENT',
          });
        }
        await expect(
          a!.readDurable({ stream: 'NO_SUCH_STREAM', afterSeq: 0, maxMessages: 1 }),
        ).rejects.toMatchObject({ code: 'UNAVAILABLE' });
      });

      it('counts a consumer backlog: waiting and unacknowledged messages, per consumer and filter', async () => {
        const [a] = await buses(1);
        expect(await a!.consumerBacklog(STREAM.name, 'backlog')).toBeUndefined();
        let release: () => void = () => {};
        const held = new Promise<void>((resolve) => {
          release = resolve;
        });
        let handled = 0;
        const consumer = a!.consume({
          stream: STREAM.name,
          consumer: 'backlog',
          filterSubject: 'contract.backlog.>',
          maxAckPending: 1,
          handler: async () => {
            await held;
            handled++;
          },
        });
        for (let i = 0; i < 4; i++) await a!.publishDurable('contract.backlog.x', bytes(`b${i}`));
        await a!.publishDurable('contract.other.x', bytes('not counted'));
        // One delivered and held, three waiting behind it.
        await until(async () => expect(await a!.consumerBacklog(STREAM.name, 'backlog')).toBe(4));
        release();
        await until(() => expect(handled).toBe(4));
        await until(async () => expect(await a!.consumerBacklog(STREAM.name, 'backlog')).toBe(0));
        await consumer.stop();
        await a!.publishDurable('contract.backlog.x', bytes('after stop'));
        await until(async () => expect(await a!.consumerBacklog(STREAM.name, 'backlog')).toBe(1));
      });

      it('gives a consumer the maxAckPending of its latest consume(), none meaning no limit', async () => {
        const [a] = await buses(1);
        let running = 0;
        let maxRunning = 0;
        let done = 0;
        const options = {
          stream: STREAM.name,
          consumer: 'latest',
          filterSubject: 'contract.latest.>',
          concurrency: 3,
          handler: async () => {
            running++;
            maxRunning = Math.max(maxRunning, running);
            await sleep(10);
            running--;
            done++;
          },
        };
        const limited = a!.consume({ ...options, maxAckPending: 1 });
        for (let i = 0; i < 10; i++) await a!.publishDurable('contract.latest.x', bytes(String(i)));
        await until(() => expect(done).toBe(10));
        await limited.stop();
        expect(maxRunning).toBe(1);

        maxRunning = 0;
        const unlimited = a!.consume(options);
        for (let i = 0; i < 10; i++) await a!.publishDurable('contract.latest.x', bytes(String(i)));
        await until(() => expect(done).toBe(20));
        expect(maxRunning).toBeGreaterThan(1);
        await unlimited.stop();
      });

      it('refuses a maxAckPending that is not a positive integer with INVALID_ARGUMENT', async () => {
        const [a] = await buses(1);
        for (const maxAckPending of [0, -1, 1.5]) {
          expect(() =>
            a!.consume({ stream: STREAM.name, consumer: 'bad', maxAckPending, handler: async () => {} }),
          ).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
        }
      });

      it('starts a consumer it creates with startWithinMs at the messages stored within that time', async () => {
        const [a, b] = await buses(2);
        const options = { stream: STREAM.name, filterSubject: 'contract.window.>', startWithinMs: 2_500 };
        // 'kept' exists before anything is stored: it keeps its position whatever startWithinMs says later.
        await b!.consume({ ...options, consumer: 'kept', handler: async () => {} }).stop();
        await a!.publishDurable('contract.window.x', bytes('old'));
        // 'old' is 3 s old or more when 'recent' is created; 'new' younger than 2.5 s unless creating it stalls.
        await sleep(3_000);
        await a!.publishDurable('contract.window.x', bytes('new'));

        const recent: string[] = [];
        const kept: string[] = [];
        const consumers = [
          b!.consume({
            ...options,
            consumer: 'recent',
            handler: async (data) => void recent.push(text(data)),
          }),
          b!.consume({ ...options, consumer: 'kept', handler: async (data) => void kept.push(text(data)) }),
        ];
        await until(() => expect(kept).toEqual(['old', 'new']));
        await until(() => expect(recent).toEqual(['new']));
        await settle(a!, b!);
        expect(recent).toEqual(['new']);
        for (const consumer of consumers) await consumer.stop();
      });

      it('refuses a startWithinMs that is not a positive number of ms with INVALID_ARGUMENT', async () => {
        const [a] = await buses(1);
        for (const startWithinMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
          expect(() =>
            a!.consume({ stream: STREAM.name, consumer: 'bad', startWithinMs, handler: async () => {} }),
          ).toThrow(
            expect.objectContaining({
              code: 'INVALID_ARGUMENT',
              message: expect.stringContaining('startWithinMs'),
            }),
          );
        }
      });

      it('rejects publishDurable with UNAVAILABLE, naming the subject, when no stream stores it', async () => {
        const [a] = await buses(1);
        const error = await a!.publishDurable('nostream.events.x', bytes('x')).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(error).toBeInstanceOf(PushdError);
        expect((error as PushdError).code).toBe('UNAVAILABLE');
        expect((error as PushdError).message).toContain('nostream.events.x');
      });
    });

    describe('lifecycle', () => {
      it('is ready while open, and rejects ready() once closed', async () => {
        const [a] = await buses(1);
        await expect(a!.ready()).resolves.toBeUndefined();
        await a!.close();
        await expect(a!.ready()).rejects.toBeInstanceOf(PushdError);
      });
    });
  });
}

import { PushdError } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import { CallBatcher, type CallBatcherOptions } from './call-batcher.js';

/** One turn of the event loop: whatever the batcher scheduled before this has run. */
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

interface Call {
  requests: number[];
  deadlineMs: number;
  /** Answers the call: each request's result, by default its request times ten. */
  answer(results?: PromiseSettledResult<number>[]): void;
  fail(error: unknown): void;
}

/**
 * A batcher whose calls the test answers by hand (held until then), or at once with `auto`. Requests are
 * numbers; a request's response is itself times ten, and a negative request is refused with TOKEN_NOT_FOUND.
 */
function harness(options: Partial<CallBatcherOptions<number, number>> & { auto?: boolean } = {}) {
  const calls: Call[] = [];
  const sizes: number[] = [];
  const batcher = new CallBatcher<number, number>({
    send: (requests, { deadlineMs }) =>
      new Promise((resolve, reject) => {
        const call: Call = {
          requests,
          deadlineMs,
          answer: (results) =>
            resolve(
              results ??
                requests.map((request) =>
                  request < 0
                    ? { status: 'rejected', reason: new PushdError('TOKEN_NOT_FOUND', `no ${request}`) }
                    : { status: 'fulfilled', value: request * 10 },
                ),
            ),
          fail: reject,
        };
        calls.push(call);
        if (options.auto) call.answer();
      }),
    itemsPerCall: { observe: (items) => sizes.push(items) },
    ...options,
  });
  return { batcher, calls, sizes };
}

/** Settles a promise into what it gave: its value, or its error. */
const outcome = <T>(promise: Promise<T>) =>
  promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );

describe('CallBatcher', () => {
  it('sends the requests of one turn in one call and gives each caller its own result, in order', async () => {
    const { batcher, calls, sizes } = harness({ auto: true });
    const results = await Promise.all([1, 2, 3, 4, 5].map((n) => batcher.call(n)));
    expect(results).toEqual([10, 20, 30, 40, 50]);
    expect(calls.map((call) => call.requests)).toEqual([[1, 2, 3, 4, 5]]);
    expect(sizes).toEqual([5]);
  });

  it('sends a request of an idle batcher at once, without waiting for others', async () => {
    const { batcher, calls } = harness();
    const answer = batcher.call(7);
    await nextTurn();
    expect(calls.map((call) => call.requests)).toEqual([[7]]);
    calls[0]?.answer();
    expect(await answer).toBe(70);
  });

  it('rejects only the requests whose result is an error, with that error', async () => {
    const { batcher } = harness({ auto: true });
    const [good, bad, alsoGood] = await Promise.all([1, -2, 3].map((n) => outcome(batcher.call(n))));
    expect(good).toEqual({ value: 10 });
    expect(bad).toEqual({ error: expect.objectContaining({ code: 'TOKEN_NOT_FOUND', message: 'no -2' }) });
    expect(alsoGood).toEqual({ value: 30 });
  });

  it('rejects every request of a call that fails as a whole, and the next call works', async () => {
    const { batcher, calls } = harness();
    const failed = [1, 2, 3].map((n) => outcome(batcher.call(n)));
    await nextTurn();
    const outage = new PushdError('UNAVAILABLE', 'registry down (test)');
    calls[0]?.fail(outage);
    expect(await Promise.all(failed)).toEqual([{ error: outage }, { error: outage }, { error: outage }]);

    const later = batcher.call(4);
    await nextTurn();
    calls[1]?.answer();
    expect(await later).toBe(40);
    expect(calls.map((call) => call.requests)).toEqual([[1, 2, 3], [4]]);
  });

  it('fails every request of a call whose reply has the wrong number of results with INTERNAL', async () => {
    const { batcher, calls } = harness();
    const pending = [1, 2].map((n) => outcome(batcher.call(n)));
    await nextTurn();
    calls[0]?.answer([{ status: 'fulfilled', value: 10 }]);
    for (const result of await Promise.all(pending)) {
      expect(result).toEqual({ error: expect.objectContaining({ code: 'INTERNAL' }) });
    }
  });

  it('puts at most maxBatch requests in a call, filling the free call slots and no more', async () => {
    const { batcher, calls, sizes } = harness({ maxBatch: 4, maxInFlight: 2 });
    const answers = Array.from({ length: 10 }, (_, n) => batcher.call(n));
    await nextTurn();
    expect(calls.map((call) => call.requests)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
    ]);
    calls[0]?.answer();
    expect(await answers[0]).toBe(0);
    await nextTurn();
    expect(calls.map((call) => call.requests)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
      [8, 9],
    ]);
    calls[1]?.answer();
    calls[2]?.answer();
    expect(await Promise.all(answers)).toEqual(Array.from({ length: 10 }, (_, n) => n * 10));
    expect(sizes).toEqual([4, 4, 2]);
  });

  it('has at most maxInFlight calls out; requests arriving meanwhile wait and go together in the next', async () => {
    const { batcher, calls } = harness({ maxInFlight: 2 });
    const first = batcher.call(1);
    await nextTurn();
    const second = batcher.call(2);
    await nextTurn();
    expect(calls.map((call) => call.requests)).toEqual([[1], [2]]);

    // Both slots busy: these wait, over several turns, however long it takes.
    const waiting = [3, 4, 5].map((n) => batcher.call(n));
    for (let turn = 0; turn < 5; turn++) await nextTurn();
    expect(calls).toHaveLength(2);

    calls[1]?.answer();
    expect(await second).toBe(20);
    await nextTurn();
    expect(calls.map((call) => call.requests)).toEqual([[1], [2], [3, 4, 5]]);
    calls[0]?.answer();
    calls[2]?.answer();
    expect(await first).toBe(10);
    expect(await Promise.all(waiting)).toEqual([30, 40, 50]);
  });

  it('gives a call what is left of its oldest request deadline, and fails requests that waited it out unsent', async () => {
    let now = 1_000;
    const { batcher, calls } = harness({ maxInFlight: 1, deadlineMs: 5_000, now: () => now });
    const first = outcome(batcher.call(1));
    await nextTurn();
    expect(calls[0]?.deadlineMs).toBe(5_000);

    now += 1_000;
    const late = outcome(batcher.call(2));
    now += 1_000;
    const later = outcome(batcher.call(3));
    // The slot frees 4.5 s after the first request, 3.5 s after request 2: the call gets its 1.5 s left.
    now += 2_500;
    calls[0]?.answer();
    await first;
    await nextTurn();
    expect(calls[1]?.requests).toEqual([2, 3]);
    expect(calls[1]?.deadlineMs).toBe(1_500);
    calls[1]?.answer();
    expect(await late).toEqual({ value: 20 });
    expect(await later).toEqual({ value: 30 });

    // A request still queued past its deadline is failed without being sent.
    const held = outcome(batcher.call(4));
    await nextTurn();
    const expired = outcome(batcher.call(5));
    now += 5_000;
    calls[2]?.answer();
    expect(await held).toEqual({ value: 40 });
    expect(await expired).toEqual({ error: expect.objectContaining({ code: 'DEADLINE_EXCEEDED' }) });
    await nextTurn();
    expect(calls.map((call) => call.requests)).toEqual([[1], [2, 3], [4]]);
  });

  it('refuses a maxBatch or maxInFlight below 1, and a deadline that is not positive, at construction', () => {
    const send = async () => [];
    expect(() => new CallBatcher({ send, maxBatch: 0 })).toThrow(RangeError);
    expect(() => new CallBatcher({ send, maxInFlight: 0 })).toThrow(RangeError);
    expect(() => new CallBatcher({ send, maxInFlight: 1.5 })).toThrow(RangeError);
    expect(() => new CallBatcher({ send, deadlineMs: 0 })).toThrow(RangeError);
    expect(() => new CallBatcher({ send, deadlineMs: Number.NaN })).toThrow(RangeError);
  });
});

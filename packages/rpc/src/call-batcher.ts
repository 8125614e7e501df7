import { PushdError } from '@pushd/common';

export interface CallBatcherOptions<Request, Response> {
  /**
   * Makes one batch call: one settled result per request, in order (a rejected one is that request's
   * error). Rejecting fails every request of the call with that error. `deadlineMs` is what is left of
   * the deadline of the call's oldest request.
   */
  send(requests: Request[], options: { deadlineMs: number }): Promise<PromiseSettledResult<Response>[]>;
  /** Most requests in one call (the servers refuse more than MAX_BATCH_ITEMS, 500). Default: 256. */
  maxBatch?: number;
  /**
   * Calls in flight at once. Requests arriving while all are busy wait, and go together in the next call
   * once one returns: the busier the server, the larger the batches. Default: 4.
   */
  maxInFlight?: number;
  /**
   * Each request's deadline, counted from when it is added, as a single call's deadline counted from when
   * it was made (the RPC client's default). A request that waited this long for a free call fails with
   * DEADLINE_EXCEEDED without being sent. Default: 5000 ms.
   */
  deadlineMs?: number;
  /** Told the number of requests of each call (a histogram's labelled child). Default: none. */
  itemsPerCall?: { observe(items: number): void };
  /** Default: Date.now. */
  now?: () => number;
}

interface Queued<Request, Response> {
  request: Request;
  deadlineAtMs: number;
  resolve(response: Response): void;
  reject(error: unknown): void;
}

/**
 * Turns single calls into batch calls with natural batching: no fixed linger. A request added while a
 * call slot is free goes out in the next check phase of the event loop (setImmediate, so the requests
 * added by every I/O callback of the same turn, such as the upgrades read together, share a call); while
 * every slot is busy, requests queue and the next free slot takes them all (up to maxBatch). An idle
 * caller therefore pays no wait, and a loaded one makes fewer, larger calls. Each request's promise
 * settles with its own result.
 */
export class CallBatcher<Request, Response> {
  private queue: Queued<Request, Response>[] = [];
  private inFlight = 0;
  private scheduled = false;
  private readonly maxBatch: number;
  private readonly maxInFlight: number;
  private readonly deadlineMs: number;
  private readonly now: () => number;

  constructor(private readonly options: CallBatcherOptions<Request, Response>) {
    this.maxBatch = options.maxBatch ?? 256;
    this.maxInFlight = options.maxInFlight ?? 4;
    this.deadlineMs = options.deadlineMs ?? 5_000;
    this.now = options.now ?? Date.now;
    if (!Number.isSafeInteger(this.maxBatch) || this.maxBatch < 1) {
      throw new RangeError(`maxBatch must be a positive integer (got ${this.maxBatch})`);
    }
    if (!Number.isSafeInteger(this.maxInFlight) || this.maxInFlight < 1) {
      throw new RangeError(`maxInFlight must be a positive integer (got ${this.maxInFlight})`);
    }
    // NaN or 0 would fail every request unsent, with DEADLINE_EXCEEDED.
    if (!(this.deadlineMs > 0)) {
      throw new RangeError(`deadlineMs must be positive (got ${this.deadlineMs})`);
    }
  }

  /** Resolves with the request's response, or rejects with its error or that of the whole call. */
  call(request: Request): Promise<Response> {
    return new Promise<Response>((resolve, reject) => {
      this.queue.push({ request, deadlineAtMs: this.now() + this.deadlineMs, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0 || this.inFlight >= this.maxInFlight) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.sendQueued();
    });
  }

  /** Fills the free slots: each takes up to maxBatch of the oldest requests. */
  private sendQueued(): void {
    const now = this.now();
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch: Queued<Request, Response>[] = [];
      for (const item of this.queue.splice(0, this.maxBatch)) {
        if (item.deadlineAtMs > now) batch.push(item);
        else {
          item.reject(
            new PushdError('DEADLINE_EXCEEDED', `waited ${this.deadlineMs} ms for a free call; not sent`),
          );
        }
      }
      if (batch.length > 0) void this.send(batch, now);
    }
  }

  private async send(batch: Queued<Request, Response>[], now: number): Promise<void> {
    this.inFlight++;
    this.options.itemsPerCall?.observe(batch.length);
    try {
      // The first request is the oldest (they queue in order): its deadline is the call's.
      const results = await this.options.send(
        batch.map((item) => item.request),
        { deadlineMs: batch[0]!.deadlineAtMs - now },
      );
      if (results.length !== batch.length) {
        throw new PushdError(
          'INTERNAL',
          `a batch call answered ${results.length} results for ${batch.length} requests`,
        );
      }
      batch.forEach((item, i) => {
        const result = results[i]!;
        if (result.status === 'fulfilled') item.resolve(result.value);
        else item.reject(result.reason);
      });
    } catch (error) {
      for (const item of batch) item.reject(error);
    } finally {
      this.inFlight--;
      this.schedule();
    }
  }
}

import { type Clock, type Logger, PushdError, silentLogger, systemClock } from '@pushd/common';
import type {
  Bus,
  BusSubscription,
  ConsumeOptions,
  DurableConsumer,
  DurableMessage,
  DurableMessageMeta,
  DurablePublishResult,
  DurableStreamConfig,
  MessageHandler,
  PublishDurableOptions,
  ReadDurableOptions,
  SubscribeOptions,
} from './bus.js';
import {
  checkDedupKey,
  checkMaxAckPending,
  checkReadDurable,
  checkStartWithinMs,
  duplicateWindowOf,
} from './durable-options.js';
import { ErrorReporter } from './error-reporter.js';
import { isValidPublishSubject, isValidSubscribeSubject, subjectMatches } from './subject-match.js';

const DEFAULT_MAX_AGE_MS = 7 * 24 * 3600 * 1000;
const DEFAULT_REDELIVER_AFTER_MS = 5_000;
/** Routes cached per published subject; cleared when a subscription changes or when it grows past this. */
const ROUTE_CACHE_LIMIT = 10_000;

export interface MemoryBrokerOptions {
  /** Time source for stream retention (`maxAgeMs`) and the duplicate window. Default: systemClock. */
  clock?: Clock;
  /** Durable streams to create (idempotent; a later definition of the same name updates it). */
  streams?: DurableStreamConfig[];
  /** Where failures of handlers are reported (throttled). Default: silent. */
  logger?: Logger;
}

/**
 * The in-process "server" behind MemoryBus: subscriptions, queue groups and durable streams live here, so
 * several MemoryBus handles onto one broker behave like several connections to one nats-server. The
 * embedded process creates one broker and gives a handle to each service.
 */
export class MemoryBroker {
  readonly clock: Clock;
  private readonly errors: ErrorReporter;

  // Core pub/sub.
  private readonly subscriptions = new Set<CoreSubscription>();
  private readonly routes = new Map<string, Route>();
  // Deliveries waiting for the next drain, as parallel arrays (no object per message).
  private pendingSubs: CoreSubscription[] = [];
  private pendingData: Uint8Array[] = [];
  private pendingSubjects: string[] = [];
  private pendingCount = 0;
  private spareSubs: CoreSubscription[] = [];
  private spareData: Uint8Array[] = [];
  private spareSubjects: string[] = [];
  private drainScheduled = false;

  // Durable streams.
  private readonly streams = new Map<string, MemoryStream>();
  private readonly streamList: MemoryStream[] = [];

  constructor(options: MemoryBrokerOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.errors = new ErrorReporter(options.logger ?? silentLogger(), 'memory bus');
    for (const config of options.streams ?? []) this.addStream(config);
  }

  /** Creates a durable stream, or updates the subjects, retention and duplicate window of an existing one. */
  addStream(config: DurableStreamConfig): void {
    if (config.subjects.length === 0) throw new Error(`stream ${config.name} needs at least one subject`);
    for (const subject of config.subjects) {
      if (!isValidSubscribeSubject(subject)) throw new Error(`invalid subject ${JSON.stringify(subject)}`);
    }
    const existing = this.streams.get(config.name);
    if (existing) {
      existing.subjects = [...config.subjects];
      existing.maxAgeMs = config.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
      existing.duplicateWindowMs = duplicateWindowOf(config.duplicateWindowMs, existing.maxAgeMs);
      return;
    }
    const stream = new MemoryStream(config, this.clock);
    this.streams.set(config.name, stream);
    this.streamList.push(stream);
  }

  // ---- core ----

  publish(subject: string, data: Uint8Array): void {
    let route = this.routes.get(subject);
    if (route === undefined) route = this.buildRoute(subject);
    const plain = route.plain;
    for (let i = 0; i < plain.length; i++) this.enqueue(plain[i]!, data, subject);
    const groups = route.groups;
    for (let i = 0; i < groups.length; i++) {
      const group = groups[i]!;
      const member = group.members[group.next % group.members.length]!;
      group.next = (group.next + 1) % group.members.length;
      this.enqueue(member, data, subject);
    }
  }

  subscribe(subject: string, handler: MessageHandler, queue: string | undefined): CoreSubscription {
    if (!isValidSubscribeSubject(subject)) {
      throw new PushdError('INVALID_ARGUMENT', `invalid subscription subject ${JSON.stringify(subject)}`);
    }
    const subscription: CoreSubscription = { subject, queue, handler, closed: false };
    this.subscriptions.add(subscription);
    this.routes.clear();
    return subscription;
  }

  unsubscribe(subscription: CoreSubscription): void {
    if (subscription.closed) return;
    subscription.closed = true;
    this.subscriptions.delete(subscription);
    this.routes.clear();
  }

  /** Resolves after every delivery queued so far was handed to its handler. */
  flush(): Promise<void> {
    return new Promise((resolve) => setImmediate(resolve));
  }

  private enqueue(subscription: CoreSubscription, data: Uint8Array, subject: string): void {
    const n = this.pendingCount;
    this.pendingSubs[n] = subscription;
    this.pendingData[n] = data;
    this.pendingSubjects[n] = subject;
    this.pendingCount = n + 1;
    if (!this.drainScheduled) {
      this.drainScheduled = true;
      setImmediate(this.drain);
    }
  }

  /** Delivers one batch; deliveries queued by handlers meanwhile go to the next batch (fair to I/O). */
  private readonly drain = (): void => {
    this.drainScheduled = false;
    const subs = this.pendingSubs;
    const data = this.pendingData;
    const subjects = this.pendingSubjects;
    const count = this.pendingCount;
    this.pendingSubs = this.spareSubs;
    this.pendingData = this.spareData;
    this.pendingSubjects = this.spareSubjects;
    this.pendingCount = 0;
    for (let i = 0; i < count; i++) {
      const subscription = subs[i]!;
      const payload = data[i]!;
      subs[i] = CLOSED_SUBSCRIPTION;
      data[i] = EMPTY;
      if (subscription.closed) continue;
      try {
        subscription.handler(payload, subjects[i]!);
      } catch (error) {
        this.errors.report(error, { subject: subscription.subject }, 'a subscription handler threw');
      }
    }
    this.spareSubs = subs;
    this.spareData = data;
    this.spareSubjects = subjects;
  };

  private buildRoute(subject: string): Route {
    if (!isValidPublishSubject(subject)) {
      throw new PushdError('INVALID_ARGUMENT', `invalid publish subject ${JSON.stringify(subject)}`);
    }
    const plain: CoreSubscription[] = [];
    const byQueue = new Map<string, CoreSubscription[]>();
    for (const subscription of this.subscriptions) {
      if (!subjectMatches(subscription.subject, subject)) continue;
      if (subscription.queue === undefined) {
        plain.push(subscription);
      } else {
        const members = byQueue.get(subscription.queue);
        if (members) members.push(subscription);
        else byQueue.set(subscription.queue, [subscription]);
      }
    }
    const groups: QueueRoute[] = [];
    for (const members of byQueue.values()) groups.push({ members, next: 0 });
    const route: Route = { plain, groups };
    if (this.routes.size >= ROUTE_CACHE_LIMIT) this.routes.clear();
    this.routes.set(subject, route);
    return route;
  }

  // ---- durable ----

  publishDurable(subject: string, data: Uint8Array, dedupKey: string | undefined): DurablePublishResult {
    const streams = this.streamList;
    for (let i = 0; i < streams.length; i++) {
      const stream = streams[i]!;
      if (stream.owns(subject)) {
        const result = stream.append(subject, data, dedupKey);
        // As in NATS, a message a stream stores was published on its subject: core subscribers get it too,
        // even a duplicate (NATS dedupes in the stream, after the subject has carried it).
        this.publish(subject, data);
        return result;
      }
    }
    throw new PushdError('UNAVAILABLE', `no durable stream stores subject '${subject}'`, {
      metadata: { subject },
    });
  }

  /** See Bus.consumerBacklog. */
  consumerBacklog(stream: string, consumer: string): number | undefined {
    return this.streams.get(stream)?.group(consumer)?.backlog();
  }

  /** See Bus.readDurable. */
  readDurable(options: ReadDurableOptions): DurableMessage[] {
    checkReadDurable(options);
    const stream = this.streams.get(options.stream);
    if (!stream) {
      throw new PushdError('UNAVAILABLE', `no durable stream named '${options.stream}'`, {
        metadata: { stream: options.stream },
      });
    }
    return stream.read(options.filterSubject, options.afterSeq, options.maxMessages);
  }

  consume(member: MemoryDurableConsumer, options: ConsumeOptions): MemoryConsumerGroup {
    const stream = this.streams.get(options.stream);
    if (!stream) {
      throw new PushdError('UNAVAILABLE', `no durable stream named '${options.stream}'`, {
        metadata: { stream: options.stream },
      });
    }
    if (options.filterSubject !== undefined && !isValidSubscribeSubject(options.filterSubject)) {
      throw new PushdError(
        'INVALID_ARGUMENT',
        `invalid filter subject ${JSON.stringify(options.filterSubject)}`,
      );
    }
    const group = stream.consumerGroup(options);
    group.join(member);
    return group;
  }
}

interface CoreSubscription {
  readonly subject: string;
  readonly queue: string | undefined;
  readonly handler: MessageHandler;
  closed: boolean;
}

interface Route {
  plain: CoreSubscription[];
  groups: QueueRoute[];
}

interface QueueRoute {
  members: CoreSubscription[];
  next: number;
}

const EMPTY = new Uint8Array(0);
const CLOSED_SUBSCRIPTION: CoreSubscription = {
  subject: '',
  queue: undefined,
  handler: () => {},
  closed: true,
};

interface StoredMessage {
  readonly seq: number;
  readonly subject: string;
  readonly data: Uint8Array;
  readonly time: number;
}

class MemoryStream {
  subjects: string[];
  maxAgeMs: number;
  duplicateWindowMs: number;
  /** Stream sequence and store time by dedupKey, oldest first (a Map iterates in insertion order). */
  private readonly dedup = new Map<string, { seq: number; time: number }>();
  /** messages[head + i] has sequence firstSeq + i; messages before head were removed. */
  private messages: StoredMessage[] = [];
  /**
   * The sequences stored on each subject, ascending (removed ones included until the next compaction):
   * counting a filter's messages (a delivery's `pending`, a backlog) costs a binary search per subject
   * instead of a walk over every message of the stream.
   */
  private seqsBySubject = new Map<string, number[]>();
  private head = 0;
  private firstSeqValue = 1;
  lastSeq = 0;
  private readonly groups = new Map<string, MemoryConsumerGroup>();
  private readonly groupList: MemoryConsumerGroup[] = [];

  constructor(
    config: DurableStreamConfig,
    private readonly clock: Clock,
  ) {
    this.subjects = [...config.subjects];
    this.maxAgeMs = config.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
    this.duplicateWindowMs = duplicateWindowOf(config.duplicateWindowMs, this.maxAgeMs);
  }

  owns(subject: string): boolean {
    for (let i = 0; i < this.subjects.length; i++) {
      if (subjectMatches(this.subjects[i]!, subject)) return true;
    }
    return false;
  }

  get firstSeq(): number {
    return this.firstSeqValue;
  }

  /** Stores the message unless `dedupKey` was stored within the duplicate window (as JetStream does). */
  append(subject: string, data: Uint8Array, dedupKey: string | undefined): DurablePublishResult {
    const now = this.clock.now();
    this.expire(now);
    if (dedupKey !== undefined) {
      const first = this.dedup.get(dedupKey);
      if (first) return { seq: first.seq, duplicate: true };
    }
    this.lastSeq++;
    this.messages.push({ seq: this.lastSeq, subject, data, time: now });
    const seqs = this.seqsBySubject.get(subject);
    if (seqs === undefined) this.seqsBySubject.set(subject, [this.lastSeq]);
    else seqs.push(this.lastSeq);
    if (dedupKey !== undefined) this.dedup.set(dedupKey, { seq: this.lastSeq, time: now });
    const groups = this.groupList;
    for (let i = 0; i < groups.length; i++) groups[i]!.schedule();
    return { seq: this.lastSeq, duplicate: false };
  }

  /** Sequence of the first stored message stored at `time` or later (lastSeq + 1 when none is). */
  firstSeqStoredSince(time: number): number {
    // Stored times never decrease along the sequence: binary search the stored messages.
    let low = this.head;
    let high = this.messages.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.messages[middle]!.time < time) low = middle + 1;
      else high = middle;
    }
    return low < this.messages.length ? this.messages[low]!.seq : this.lastSeq + 1;
  }

  /** The stored message with this sequence, or undefined when removed (too old). */
  get(seq: number): StoredMessage | undefined {
    if (seq < this.firstSeqValue) return undefined;
    return this.messages[this.head + seq - this.firstSeqValue];
  }

  /** Stored messages matching `filter` (undefined: all) with a sequence of at least `fromSeq`. */
  countFrom(filter: string | undefined, fromSeq: number): number {
    const from = Math.max(fromSeq, this.firstSeqValue);
    if (from > this.lastSeq) return 0;
    // Messages are removed from the front only, so the stored sequences have no gaps.
    if (filter === undefined) return this.lastSeq - from + 1;
    let count = 0;
    for (const [subject, seqs] of this.seqsBySubject) {
      if (subjectMatches(filter, subject)) count += seqs.length - lowerBound(seqs, from);
    }
    return count;
  }

  /** See Bus.readDurable. */
  read(filter: string | undefined, afterSeq: number, maxMessages: number): DurableMessage[] {
    this.expire();
    const found: DurableMessage[] = [];
    for (
      let seq = Math.max(afterSeq + 1, this.firstSeqValue);
      seq <= this.lastSeq && found.length < maxMessages;
      seq++
    ) {
      const message = this.get(seq);
      if (message === undefined) continue;
      if (filter !== undefined && !subjectMatches(filter, message.subject)) continue;
      found.push({ seq: message.seq, subject: message.subject, data: message.data });
    }
    return found;
  }

  /**
   * Drops messages older than maxAgeMs, whether acknowledged or not (NATS limits retention), and forgets
   * dedupKeys older than the duplicate window.
   */
  expire(now = this.clock.now()): void {
    const forgetBefore = now - this.duplicateWindowMs;
    for (const [key, entry] of this.dedup) {
      if (entry.time > forgetBefore) break; // the rest are younger
      this.dedup.delete(key);
    }
    const oldest = now - this.maxAgeMs;
    const messages = this.messages;
    while (this.head < messages.length && messages[this.head]!.time <= oldest) {
      this.head++;
      this.firstSeqValue++;
    }
    if (this.head > 1024 && this.head * 2 > messages.length) {
      this.messages = messages.slice(this.head);
      this.head = 0;
      const compacted = new Map<string, number[]>();
      for (const [subject, seqs] of this.seqsBySubject) {
        const kept = seqs.slice(lowerBound(seqs, this.firstSeqValue));
        if (kept.length > 0) compacted.set(subject, kept);
      }
      this.seqsBySubject = compacted;
    }
  }

  /** The named consumer, if one was ever created. */
  group(name: string): MemoryConsumerGroup | undefined {
    return this.groups.get(name);
  }

  consumerGroup(options: ConsumeOptions): MemoryConsumerGroup {
    const { consumer: name, filterSubject, maxAckPending, startWithinMs } = options;
    let group = this.groups.get(name);
    if (!group) {
      const startSeq =
        startWithinMs === undefined
          ? this.firstSeq
          : this.firstSeqStoredSince(this.clock.now() - startWithinMs);
      group = new MemoryConsumerGroup(this, filterSubject, startSeq);
      this.groups.set(name, group);
      this.groupList.push(group);
    } else {
      // Like NatsBus's consumer update: a filter given replaces the old one, none keeps it.
      if (filterSubject !== undefined) group.filterSubject = filterSubject;
    }
    group.maxAckPending = maxAckPending ?? Number.POSITIVE_INFINITY;
    return group;
  }
}

/** Delivery state of one stored message for one named consumer, from first delivery until acknowledged. */
interface PendingDelivery {
  readonly seq: number;
  deliveries: number;
  /** When it becomes due for redelivery (monotonic ms), unless acknowledged first. */
  dueAt: number;
  /** Waiting in the `ready` queue for redelivery. */
  queued: boolean;
}

/**
 * One named consumer of a stream: its position, the messages delivered but not acknowledged, and the
 * members (MemoryDurableConsumer instances using the name) that share the work.
 */
class MemoryConsumerGroup {
  /** Next stream sequence never delivered to this consumer. */
  private nextSeq: number;
  /** Most entries in `pending` (delivered, not acknowledged) before new messages wait; over all members. */
  maxAckPending = Number.POSITIVE_INFINITY;
  private readonly pending = new Map<number, PendingDelivery>();
  /** Sequences due for redelivery, delivered before new messages. */
  private readonly ready: number[] = [];
  private readonly members: MemoryDurableConsumer[] = [];
  private nextMember = 0;
  private pumpScheduled = false;
  private taken: StoredMessage | undefined;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;

  constructor(
    private readonly stream: MemoryStream,
    public filterSubject: string | undefined,
    startSeq: number,
  ) {
    this.nextSeq = startSeq;
  }

  join(member: MemoryDurableConsumer): void {
    this.members.push(member);
    this.schedule();
  }

  leave(member: MemoryDurableConsumer): void {
    const index = this.members.indexOf(member);
    if (index !== -1) this.members.splice(index, 1);
  }

  /** Runs the dispatch loop soon (never inside the caller's stack). */
  schedule(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(this.pump);
  }

  ack(seq: number): void {
    const entry = this.pending.get(seq);
    if (entry && !entry.queued) this.pending.delete(seq);
    else if (entry) entry.deliveries = -1; // acknowledged while queued for redelivery: skip it there
  }

  nak(seq: number, delayMs: number): void {
    const entry = this.pending.get(seq);
    if (!entry || entry.queued) return;
    this.arm(entry, performance.now() + delayMs);
  }

  private readonly pump = (): void => {
    this.pumpScheduled = false;
    if (this.members.length === 0) return;
    this.stream.expire();
    for (;;) {
      const index = this.nextMemberWithCapacity();
      if (index === -1) return;
      const entry = this.takeNext();
      if (!entry) return;
      // The turn passes only with a delivery: a member whose turn found nothing to take (maxAckPending
      // reached) must not lose it, or the members would not share the work.
      const member = this.members[index]!;
      this.nextMember = (index + 1) % this.members.length;
      const message = this.taken!;
      this.taken = undefined;
      entry.deliveries++;
      this.arm(entry, performance.now() + member.redeliverAfterMs);
      member.deliver(this, message, entry.deliveries, this.undelivered());
    }
  };

  /** Index of the first member from `nextMember` on (round robin) that can take a message, or -1. */
  private nextMemberWithCapacity(): number {
    const count = this.members.length;
    for (let i = 0; i < count; i++) {
      const index = (this.nextMember + i) % count;
      if (this.members[index]!.hasCapacity()) return index;
    }
    return -1;
  }

  /** Delivered and not acknowledged, plus stored and matching but not delivered yet. */
  backlog(): number {
    let count = 0;
    for (const entry of this.pending.values()) if (entry.deliveries >= 0) count++;
    return count + this.undelivered();
  }

  /** Stored messages matching the filter never delivered to this consumer (DurableMessageMeta.pending). */
  undelivered(): number {
    return this.stream.countFrom(this.filterSubject, this.nextSeq);
  }

  /**
   * The next message to deliver: a due redelivery first, then the next new one matching the filter unless
   * maxAckPending messages are unacknowledged. Returns its delivery state and leaves the message in `taken`.
   */
  private takeNext(): PendingDelivery | undefined {
    while (this.ready.length > 0) {
      const seq = this.ready.shift()!;
      const entry = this.pending.get(seq);
      if (!entry) continue;
      entry.queued = false;
      const message = this.stream.get(seq);
      if (!message || entry.deliveries < 0) {
        this.pending.delete(seq);
        continue;
      }
      this.taken = message;
      return entry;
    }
    // The ready queue is empty here, so every entry in `pending` is a delivery not acknowledged yet (an
    // acknowledged one is only kept while queued for redelivery).
    if (this.pending.size >= this.maxAckPending) return undefined;
    if (this.nextSeq < this.stream.firstSeq) this.nextSeq = this.stream.firstSeq;
    while (this.nextSeq <= this.stream.lastSeq) {
      const message = this.stream.get(this.nextSeq++);
      if (!message) continue;
      if (this.filterSubject !== undefined && !subjectMatches(this.filterSubject, message.subject)) continue;
      const entry: PendingDelivery = { seq: message.seq, deliveries: 0, dueAt: 0, queued: false };
      this.pending.set(message.seq, entry);
      this.taken = message;
      return entry;
    }
    return undefined;
  }

  private arm(entry: PendingDelivery, dueAt: number): void {
    entry.dueAt = dueAt;
    if (dueAt < this.timerAt) this.setTimer(dueAt);
  }

  private setTimer(at: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(this.onTimer, Math.max(0, at - performance.now()));
    this.timer.unref();
  }

  /** Moves every delivery whose wait is over to the redelivery queue and re-arms for the next one. */
  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.timerAt = Number.POSITIVE_INFINITY;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    let due = false;
    for (const entry of this.pending.values()) {
      if (entry.queued) continue;
      if (entry.dueAt <= now + 1) {
        entry.queued = true;
        this.ready.push(entry.seq);
        due = true;
      } else if (entry.dueAt < next) {
        next = entry.dueAt;
      }
    }
    if (next !== Number.POSITIVE_INFINITY) this.setTimer(next);
    if (due) this.schedule();
  };
}

/** One `consume()` call on a MemoryBus: a member of a named consumer group. */
class MemoryDurableConsumer implements DurableConsumer {
  readonly redeliverAfterMs: number;
  private readonly concurrency: number;
  private readonly handler: ConsumeOptions['handler'];
  private inFlight = 0;
  private stopped = false;
  private group: MemoryConsumerGroup | undefined;
  private idle: (() => void) | undefined;
  private stopping: Promise<void> | undefined;

  constructor(
    options: ConsumeOptions,
    private readonly onStopped: (consumer: MemoryDurableConsumer) => void,
  ) {
    this.redeliverAfterMs = options.redeliverAfterMs ?? DEFAULT_REDELIVER_AFTER_MS;
    this.concurrency = options.concurrency ?? 1;
    this.handler = options.handler;
    checkMaxAckPending(options.maxAckPending);
    checkStartWithinMs(options.startWithinMs);
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) {
      throw new PushdError(
        'INVALID_ARGUMENT',
        `concurrency must be a positive integer, got ${this.concurrency}`,
      );
    }
    if (!(this.redeliverAfterMs > 0)) {
      throw new PushdError(
        'INVALID_ARGUMENT',
        `redeliverAfterMs must be positive, got ${this.redeliverAfterMs}`,
      );
    }
  }

  attach(group: MemoryConsumerGroup): void {
    this.group = group;
  }

  hasCapacity(): boolean {
    return !this.stopped && this.inFlight < this.concurrency;
  }

  deliver(group: MemoryConsumerGroup, message: StoredMessage, deliveryCount: number, pending: number): void {
    this.inFlight++;
    const seq = message.seq;
    const meta: DurableMessageMeta = { subject: message.subject, seq, deliveryCount, pending };
    let result: Promise<void>;
    try {
      result = this.handler(message.data, meta);
    } catch (error) {
      result = Promise.reject(error);
    }
    Promise.resolve(result).then(
      () => this.settle(group, seq, true),
      () => this.settle(group, seq, false),
    );
  }

  private settle(group: MemoryConsumerGroup, seq: number, ok: boolean): void {
    this.inFlight--;
    if (ok) group.ack(seq);
    else group.nak(seq, this.redeliverAfterMs);
    if (this.stopped) {
      if (this.inFlight === 0) this.idle?.();
    } else {
      group.schedule();
    }
  }

  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopped = true;
    this.group?.leave(this);
    this.stopping = (async () => {
      if (this.inFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
      // Hand what this member cannot take any more to the remaining members.
      this.group?.schedule();
      this.onStopped(this);
    })();
    return this.stopping;
  }
}

export interface MemoryBusOptions {
  /**
   * The broker this handle connects to; handles sharing a broker see each other's messages, like
   * connections to one nats-server. Default: a private broker.
   */
  broker?: MemoryBroker;
  /** Durable streams to create on the broker (idempotent). */
  streams?: DurableStreamConfig[];
  /** Clock for stream retention, used only when the bus creates its private broker. Default: systemClock. */
  clock?: Clock;
  /** Reports handler failures (throttled); used only for a private broker. Default: silent. */
  logger?: Logger;
}

/** The one-process Bus: embedded mode and unit tests. Same contract as NatsBus (bus.contract.ts). */
export class MemoryBus implements Bus {
  readonly broker: MemoryBroker;
  private readonly subscriptions = new Set<CoreSubscription>();
  private readonly consumers = new Set<MemoryDurableConsumer>();
  private closed = false;

  constructor(options: MemoryBusOptions = {}) {
    this.broker = options.broker ?? new MemoryBroker({ clock: options.clock, logger: options.logger });
    for (const config of options.streams ?? []) this.broker.addStream(config);
  }

  publish(subject: string, data: Uint8Array): void {
    if (this.closed) throw closedError();
    this.broker.publish(subject, data);
  }

  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): BusSubscription {
    if (this.closed) throw closedError();
    const subscription = this.broker.subscribe(subject, handler, options?.queue);
    this.subscriptions.add(subscription);
    return {
      unsubscribe: () => {
        this.subscriptions.delete(subscription);
        this.broker.unsubscribe(subscription);
      },
    };
  }

  async publishDurable(
    subject: string,
    data: Uint8Array,
    options?: PublishDurableOptions,
  ): Promise<DurablePublishResult> {
    if (this.closed) throw closedError();
    const dedupKey = options?.dedupKey;
    if (dedupKey !== undefined) checkDedupKey(dedupKey);
    return this.broker.publishDurable(subject, data, dedupKey);
  }

  consume(options: ConsumeOptions): DurableConsumer {
    if (this.closed) throw closedError();
    const consumer = new MemoryDurableConsumer(options, (stopped) => this.consumers.delete(stopped));
    consumer.attach(this.broker.consume(consumer, options));
    this.consumers.add(consumer);
    return consumer;
  }

  async consumerBacklog(stream: string, consumer: string): Promise<number | undefined> {
    if (this.closed) throw closedError();
    return this.broker.consumerBacklog(stream, consumer);
  }

  async readDurable(options: ReadDurableOptions): Promise<DurableMessage[]> {
    if (this.closed) throw closedError();
    return this.broker.readDurable(options);
  }

  async ready(): Promise<void> {
    if (this.closed) throw closedError();
  }

  flush(): Promise<void> {
    return this.broker.flush();
  }

  /** Never called: nothing published to a MemoryBus is lost while its subscriptions exist. */
  onInterruption(_listener: () => void): () => void {
    return () => {};
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const subscription of this.subscriptions) this.broker.unsubscribe(subscription);
    this.subscriptions.clear();
    await Promise.all([...this.consumers].map((consumer) => consumer.stop()));
  }
}

/** Index of the first element of ascending `values` that is at least `value` (values.length if none). */
function lowerBound(values: readonly number[], value: number): number {
  let low = 0;
  let high = values.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((values[middle] as number) < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

function closedError(): PushdError {
  return new PushdError('UNAVAILABLE', 'the bus is closed');
}

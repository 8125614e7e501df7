import {
  AckPolicy,
  type Consumer,
  type ConsumerConfig,
  type ConsumerInfo,
  type ConsumerMessages,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  type JetStreamPublishOptions,
  type JsMsg,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from '@nats-io/jetstream';
import { connect, type NatsConnection, nanos, type Status, type Subscription } from '@nats-io/transport-node';
import { type Logger, PushdError } from '@pushd/common';
import { Counter, Gauge, type Registry } from 'prom-client';
import type {
  Bus,
  BusSubscription,
  ConsumeOptions,
  DurableConsumer,
  DurableMessage,
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

const DEFAULT_MAX_AGE_MS = 7 * 24 * 3600 * 1000;
const DEFAULT_REDELIVER_AFTER_MS = 5_000;
/** How long a pull request waits on the server for messages before the consumer asks again. */
const PULL_EXPIRES_MS = 10_000;
/** The server's max_ack_pending for a consumer created without one; an update asking for 0 restores it. */
const SERVER_DEFAULT_MAX_ACK_PENDING = 1_000;
/**
 * How long the server keeps a readDurable consumer that nobody deletes (this process died mid-read, or
 * its delete was lost): each call deletes its own, this is only the backstop.
 */
const READ_CONSUMER_INACTIVE_MS = 10_000;
/**
 * Longest wait of readDurable's fetch, the client's minimum. The fetch asks for no more messages than the
 * consumer counted as stored, so it ends with the last of them; it waits only if some were removed
 * meanwhile (expired at the stream's max age), for messages that will not come.
 */
const READ_FETCH_EXPIRES_MS = 1_000;

export interface NatsBusOptions {
  /** 'nats://host:4222', a comma-separated list of them, or an array. */
  servers: string | string[];
  /** Client name shown by the server's monitoring. Default: 'pushd'. */
  name?: string;
  /** Durable streams created or updated (idempotently) at connect; file storage. */
  streams?: DurableStreamConfig[];
  logger: Logger;
  /** Registers `<metricPrefix>_nats_reconnects_total`, `_nats_errors_total`, `_nats_connected`... */
  registry?: Registry;
  /** Prefix of the metric names, e.g. 'gateway'. Default: 'pushd'. */
  metricPrefix?: string;
  /** Wait between reconnect attempts; a random jitter of up to the same amount is added. Default: 1000 ms. */
  reconnectWaitMs?: number;
  /** Timeout of JetStream requests (durable publish, stream and consumer management). Default: 5000 ms. */
  requestTimeoutMs?: number;
}

interface BusMetrics {
  reconnects?: Counter;
  errors?: Counter;
  connected?: Gauge;
  dropped?: Counter;
}

/**
 * The production Bus: core NATS for fan-out, JetStream (file storage) for durable events. Reconnects
 * forever with a jittered wait. While disconnected (the client discards whatever is written meanwhile when
 * it reconnects): `publish` drops (and counts) the message, `publishDurable` and `ready()` reject at once,
 * acks are lost (those messages come again after redeliverAfterMs), and consumers resume by themselves
 * once the server is back.
 */
export class NatsBus implements Bus {
  private readonly js: JetStreamClient;
  private readonly logger: Logger;
  private readonly streams = new Map<string, DurableStreamConfig>();
  private readonly consumers = new Set<NatsDurableConsumer>();
  private readonly interruptionListeners = new Set<() => void>();
  private readonly metrics: BusMetrics;
  private readonly errors: ErrorReporter;
  private readonly publishOptions: Partial<JetStreamPublishOptions>;
  private readonly requestTimeoutMs: number;
  private connected = true;
  private closing: Promise<void> | undefined;
  private readonly statusDone: Promise<void>;
  private readonly consumerContext: ConsumerContext;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    options: NatsBusOptions,
  ) {
    this.logger = options.logger.child({ component: 'nats-bus' });
    this.requestTimeoutMs = options.requestTimeoutMs ?? 5_000;
    this.js = jetstream(nc, { timeout: this.requestTimeoutMs });
    this.publishOptions = { timeout: this.requestTimeoutMs };
    this.errors = new ErrorReporter(this.logger, 'nats-bus');
    for (const config of options.streams ?? []) this.streams.set(config.name, config);
    this.metrics = options.registry ? createMetrics(options.registry, options.metricPrefix ?? 'pushd') : {};
    this.metrics.connected?.set(1);
    this.consumerContext = {
      ensureConsumer: (consumeOptions) => this.ensureConsumer(consumeOptions),
      isConnected: () => this.connected,
      flush: () => this.nc.flush(),
      onError: () => this.metrics.errors?.inc(),
      onStopped: (consumer) => this.consumers.delete(consumer),
      logger: this.logger,
    };
    this.statusDone = this.watchStatus();
  }

  /** Connects, checks JetStream, and creates or updates the configured streams. */
  static async connect(options: NatsBusOptions): Promise<NatsBus> {
    const servers = parseServers(options.servers);
    const wait = options.reconnectWaitMs ?? 1_000;
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers,
        name: options.name ?? 'pushd',
        maxReconnectAttempts: -1,
        reconnectTimeWait: wait,
        reconnectJitter: wait,
        reconnectJitterTLS: wait,
        pingInterval: 20_000,
        maxPingOut: 3,
        timeout: options.requestTimeoutMs ?? 5_000,
        // Otherwise every request (each durable publish waits for the stream's answer) captures a stack
        // trace up front, in case it fails: ~0.1 ms of CPU per publish, a tenth of dispatch's per push.
        // Errors still carry the failure's own message and code.
        noAsyncTraces: true,
      });
    } catch (error) {
      throw new PushdError(
        'UNAVAILABLE',
        `cannot connect to NATS at ${servers.join(', ')}: ${messageOf(error)}`,
        {
          cause: error,
        },
      );
    }
    try {
      const jsm = await jetstreamManager(nc, { timeout: options.requestTimeoutMs ?? 5_000 });
      const bus = new NatsBus(nc, jsm, options);
      for (const config of options.streams ?? []) await bus.ensureStream(config);
      bus.logger.info(
        { servers, server: nc.getServer(), streams: [...bus.streams.keys()] },
        'connected to NATS',
      );
      return bus;
    } catch (error) {
      await nc.close().catch(() => {});
      throw new PushdError(
        'UNAVAILABLE',
        `NATS JetStream is not usable at ${servers.join(', ')}: ${messageOf(error)}`,
        {
          cause: error,
        },
      );
    }
  }

  publish(subject: string, data: Uint8Array): void {
    if (!this.connected) {
      if (this.closing || this.nc.isClosed()) throw closedError();
      this.metrics.dropped?.inc();
      return;
    }
    try {
      this.nc.publish(subject, data);
    } catch (error) {
      throw this.clientError(`publish to '${subject}'`, error);
    }
  }

  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): BusSubscription {
    if (this.closing) throw closedError();
    const errors = this.errors;
    let sub: Subscription;
    try {
      sub = this.nc.subscribe(subject, {
        queue: options?.queue,
        callback: (error, msg) => {
          // Runs inside the client's socket reader: it must never throw.
          if (error !== null) {
            this.metrics.errors?.inc();
            errors.report(error, { subject }, 'subscription failed');
            return;
          }
          try {
            handler(msg.data, msg.subject);
          } catch (thrown) {
            errors.report(thrown, { subject }, 'a subscription handler threw');
          }
        },
      });
    } catch (error) {
      throw this.clientError(`subscribe to '${subject}'`, error);
    }
    return {
      unsubscribe: () => {
        try {
          if (!sub.isClosed() && !this.nc.isClosed()) sub.unsubscribe();
        } catch {
          // Already going away with the connection.
        }
      },
    };
  }

  /** A client-side failure: UNAVAILABLE once the connection is closing, INVALID_ARGUMENT (bad subject...) else. */
  private clientError(what: string, error: unknown): PushdError {
    const closed = this.nc.isClosed() || this.nc.isDraining();
    return new PushdError(
      closed ? 'UNAVAILABLE' : 'INVALID_ARGUMENT',
      `${what} failed: ${messageOf(error)}`,
      {
        cause: error,
      },
    );
  }

  async publishDurable(
    subject: string,
    data: Uint8Array,
    options?: PublishDurableOptions,
  ): Promise<DurablePublishResult> {
    const dedupKey = options?.dedupKey;
    if (dedupKey !== undefined) checkDedupKey(dedupKey);
    if (!this.connected) {
      // The client discards what is written while disconnected: waiting for the ack would only time out.
      throw new PushdError('UNAVAILABLE', `durable publish to '${subject}' failed: NATS is disconnected`, {
        metadata: { subject },
      });
    }
    const publishOptions =
      dedupKey === undefined ? this.publishOptions : { ...this.publishOptions, msgID: dedupKey };
    try {
      // For a duplicate, the server stores nothing and acks with the first message's sequence.
      const ack = await this.js.publish(subject, data, publishOptions);
      return { seq: ack.seq, duplicate: ack.duplicate };
    } catch (error) {
      throw new PushdError(
        'UNAVAILABLE',
        `durable publish to '${subject}' failed: ${describePublishError(error)}`,
        {
          cause: error,
          metadata: { subject },
        },
      );
    }
  }

  consume(options: ConsumeOptions): DurableConsumer {
    if (this.closing) throw closedError();
    const consumer = new NatsDurableConsumer(this.consumerContext, options);
    this.consumers.add(consumer);
    return consumer;
  }

  async ready(): Promise<void> {
    if (this.closing || this.nc.isClosed()) throw closedError();
    if (!this.connected) throw new PushdError('UNAVAILABLE', 'NATS is disconnected (reconnecting)');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new PushdError('UNAVAILABLE', `NATS did not answer within ${this.requestTimeoutMs} ms`)),
        this.requestTimeoutMs,
      );
    });
    try {
      await Promise.race([this.nc.flush(), timeout]);
    } catch (error) {
      if (error instanceof PushdError) throw error;
      throw new PushdError('UNAVAILABLE', `NATS is not usable: ${messageOf(error)}`, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }

  async consumerBacklog(stream: string, consumer: string): Promise<number | undefined> {
    try {
      const info = await this.jsm.consumers.info(stream, consumer);
      return info.num_pending + info.num_ack_pending;
    } catch (error) {
      if (
        isApiError(error, JetStreamApiCodes.ConsumerNotFound) ||
        isApiError(error, JetStreamApiCodes.StreamNotFound)
      )
        return undefined;
      throw new PushdError(
        'UNAVAILABLE',
        `reading consumer ${consumer} of ${stream} failed: ${String(error)}`,
      );
    }
  }

  async readDurable(options: ReadDurableOptions): Promise<DurableMessage[]> {
    checkReadDurable(options);
    if (this.closing) throw closedError();
    const { stream, filterSubject, afterSeq, maxMessages } = options;
    const what = `reading ${stream} after seq ${afterSeq}`;
    if (!this.connected) throw new PushdError('UNAVAILABLE', `${what} failed: NATS is disconnected`);
    // nats-server 2.9 has no batched direct get: one ephemeral consumer starting at afterSeq + 1 (no acks,
    // in memory, one replica) is one request, and its num_pending says how many messages to fetch, so the
    // fetch asks for no message that is not stored and never waits for a new one.
    const config: Partial<ConsumerConfig> = {
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: afterSeq + 1,
      mem_storage: true,
      num_replicas: 1,
      inactive_threshold: nanos(READ_CONSUMER_INACTIVE_MS),
    };
    if (filterSubject !== undefined) config.filter_subject = filterSubject;
    let info: ConsumerInfo;
    try {
      info = await this.jsm.consumers.add(stream, config);
    } catch (error) {
      throw new PushdError('UNAVAILABLE', `${what} failed: ${messageOf(error)}`, {
        cause: error,
        metadata: { stream },
      });
    }
    const remove = () => {
      // Not waited for: the messages are read, and the inactivity threshold removes a consumer whose
      // delete is lost.
      this.jsm.consumers.delete(stream, info.name).catch(() => {});
    };
    const count = Math.min(info.num_pending, maxMessages);
    if (count === 0) {
      remove();
      return [];
    }
    const found: DurableMessage[] = [];
    try {
      const batch = await this.js.consumers
        .getConsumerFromInfo(info)
        .fetch({ max_messages: count, expires: READ_FETCH_EXPIRES_MS });
      for await (const msg of batch) {
        found.push({ seq: msg.info.streamSequence, subject: msg.subject, data: msg.data });
        if (found.length >= count) break;
      }
    } catch (error) {
      throw new PushdError('UNAVAILABLE', `${what} failed: ${messageOf(error)}`, {
        cause: error,
        metadata: { stream },
      });
    } finally {
      remove();
    }
    return found;
  }

  async flush(): Promise<void> {
    try {
      await this.nc.flush();
    } catch (error) {
      throw new PushdError('UNAVAILABLE', `NATS flush failed: ${messageOf(error)}`, { cause: error });
    }
  }

  onInterruption(listener: () => void): () => void {
    this.interruptionListeners.add(listener);
    return () => this.interruptionListeners.delete(listener);
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    await Promise.all([...this.consumers].map((consumer) => consumer.stop()));
    if (!this.nc.isClosed()) {
      // drain() sends what is buffered; if the server is away that could wait forever, so it is bounded.
      let timer: NodeJS.Timeout | undefined;
      const drained = this.nc.drain().catch(() => {});
      const timedOut = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.requestTimeoutMs);
      });
      await Promise.race([drained, timedOut]);
      clearTimeout(timer);
      if (!this.nc.isClosed()) await this.nc.close().catch(() => {});
    }
    await this.statusDone;
    this.connected = false;
    this.metrics.connected?.set(0);
    this.logger.info('NATS connection closed');
  }

  /**
   * Creates the stream, or updates its subjects/retention/duplicate window when they differ from `config`,
   * and its replicas when `config` asks for more (never fewer).
   */
  async ensureStream(config: DurableStreamConfig): Promise<void> {
    const maxAgeMs = config.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
    const wanted: WantedStream = {
      subjects: [...config.subjects],
      max_age: nanos(maxAgeMs),
      num_replicas: config.replicas ?? 1,
      duplicate_window: nanos(duplicateWindowOf(config.duplicateWindowMs, maxAgeMs)),
    };
    for (let attempt = 0; ; attempt++) {
      try {
        const info = await this.jsm.streams.info(config.name);
        // Replicas only grow here. Every service declares both streams: one started with a lower
        // NATS_STREAM_REPLICAS (a stale or missing setting) must not take copies away from what was
        // acknowledged as durable. Scaling a stream down is an operator's act (`nats stream edit`).
        const current = info.config.num_replicas ?? 1;
        if (current > wanted.num_replicas) {
          this.logger.warn(
            { stream: config.name, replicas: current, configured: wanted.num_replicas },
            'JetStream stream has more replicas than configured; keeping them (check NATS_STREAM_REPLICAS)',
          );
        }
        const target = { ...wanted, num_replicas: Math.max(current, wanted.num_replicas) };
        if (streamDiffers(info.config, target)) {
          await this.jsm.streams.update(config.name, target);
          this.logger.info({ stream: config.name, ...target }, 'updated JetStream stream');
        }
        return;
      } catch (error) {
        if (!isApiError(error, JetStreamApiCodes.StreamNotFound)) throw error;
      }
      const full: Partial<StreamConfig> & { name: string } = {
        name: config.name,
        ...wanted,
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        discard: DiscardPolicy.Old,
      };
      try {
        await this.jsm.streams.add(full);
        this.logger.info({ stream: config.name, ...wanted }, 'created JetStream stream');
        return;
      } catch (error) {
        // Another process may have created it meanwhile: look again once.
        if (attempt >= 1) throw error;
      }
    }
  }

  /**
   * Creates the durable consumer, or updates its ack wait / max ack pending / filter; returns a handle to
   * pull from it.
   */
  private async ensureConsumer(options: ResolvedConsumeOptions): Promise<EnsuredConsumer> {
    const { stream, consumer: name, filterSubject, redeliverAfterMs, maxAckPending, startWithinMs } = options;
    const ackWait = nanos(redeliverAfterMs);
    for (let attempt = 0; ; attempt++) {
      let info: ConsumerInfo;
      try {
        info = await this.jsm.consumers.info(stream, name);
      } catch (error) {
        if (isApiError(error, JetStreamApiCodes.StreamNotFound)) {
          const config = this.streams.get(stream);
          if (!config || attempt >= 2) throw error;
          await this.ensureStream(config);
          continue;
        }
        if (!isApiError(error, JetStreamApiCodes.ConsumerNotFound)) throw error;
        const config: Partial<ConsumerConfig> = {
          durable_name: name,
          ack_policy: AckPolicy.Explicit,
          ack_wait: ackWait,
          deliver_policy: DeliverPolicy.All,
          max_deliver: -1,
        };
        if (startWithinMs !== undefined) {
          // Compared with the stored messages' timestamps, taken by the server's clock.
          config.deliver_policy = DeliverPolicy.StartTime;
          config.opt_start_time = new Date(Date.now() - startWithinMs).toISOString();
        }
        if (filterSubject !== undefined) config.filter_subject = filterSubject;
        // Without maxAckPending the server applies its default, as before the option existed.
        if (maxAckPending !== undefined) config.max_ack_pending = maxAckPending;
        try {
          info = await this.jsm.consumers.add(stream, config);
          this.logger.info(
            { stream, consumer: name, filterSubject, maxAckPending, startTime: config.opt_start_time },
            'created JetStream consumer',
          );
        } catch (addError) {
          if (attempt >= 2) throw addError;
          continue; // created concurrently by another instance: read it again
        }
      }
      const current = info.config;
      const filterChanged = filterSubject !== undefined && (current.filter_subject ?? '') !== filterSubject;
      // Like ack_wait, the latest consume() wins: without maxAckPending, a limit an earlier one set is
      // replaced by the server's default (which an update asking for 0 gets).
      const maxAckPendingChanged =
        current.max_ack_pending !== (maxAckPending ?? SERVER_DEFAULT_MAX_ACK_PENDING);
      if (current.ack_wait !== ackWait || filterChanged || maxAckPendingChanged) {
        const update: Partial<ConsumerConfig> = { ack_wait: ackWait, max_ack_pending: maxAckPending ?? 0 };
        if (filterSubject !== undefined) update.filter_subject = filterSubject;
        info = await this.jsm.consumers.update(stream, name, update);
        this.logger.info(
          {
            stream,
            consumer: name,
            filterSubject,
            redeliverAfterMs,
            maxAckPending: info.config.max_ack_pending,
          },
          'updated JetStream consumer',
        );
      } else if (filterSubject === undefined && current.filter_subject) {
        this.logger.warn(
          { stream, consumer: name, filterSubject: current.filter_subject },
          'consumer keeps the filter subject it was created with',
        );
      }
      return {
        consumer: this.js.consumers.getConsumerFromInfo(info),
        maxAckPending: info.config.max_ack_pending ?? SERVER_DEFAULT_MAX_ACK_PENDING,
      };
    }
  }

  private async watchStatus(): Promise<void> {
    try {
      for await (const status of this.nc.status()) this.onStatus(status);
    } catch (error) {
      this.logger.error({ err: error }, 'NATS status stream failed');
    }
  }

  private onStatus(status: Status): void {
    switch (status.type) {
      case 'disconnect':
        this.connected = false;
        this.metrics.connected?.set(0);
        this.logger.warn({ server: status.server }, 'disconnected from NATS; reconnecting');
        break;
      case 'reconnect':
        this.connected = true;
        this.metrics.connected?.set(1);
        this.metrics.reconnects?.inc();
        this.logger.info({ server: status.server }, 'reconnected to NATS');
        for (const listener of this.interruptionListeners) {
          try {
            listener();
          } catch (error) {
            this.logger.error({ err: error }, 'a NATS interruption listener threw');
          }
        }
        break;
      case 'reconnecting':
        this.logger.debug('reconnecting to NATS');
        break;
      case 'error':
        this.metrics.errors?.inc();
        this.logger.error({ err: status.error }, 'NATS error');
        break;
      case 'staleConnection':
        this.metrics.errors?.inc();
        this.logger.warn('NATS connection is stale (pings unanswered)');
        break;
      case 'ldm':
        this.logger.warn({ server: status.server }, 'NATS server entered lame duck mode');
        break;
      case 'slowConsumer':
        this.metrics.errors?.inc();
        this.logger.warn(
          { subject: status.sub.getSubject(), pending: status.pending },
          'slow NATS subscription',
        );
        break;
      case 'update':
        if (status.added?.length || status.deleted?.length) {
          this.logger.info({ added: status.added, deleted: status.deleted }, 'NATS cluster changed');
        }
        break;
      case 'close':
        this.connected = false;
        this.metrics.connected?.set(0);
        break;
      default:
        break;
    }
  }
}

interface ResolvedConsumeOptions {
  stream: string;
  consumer: string;
  filterSubject: string | undefined;
  redeliverAfterMs: number;
  maxAckPending: number | undefined;
  startWithinMs: number | undefined;
}

interface EnsuredConsumer {
  consumer: Consumer;
  /** The consumer's max_ack_pending as the server reports it (-1 or 0: no limit). */
  maxAckPending: number;
}

interface ConsumerContext {
  ensureConsumer(options: ResolvedConsumeOptions): Promise<EnsuredConsumer>;
  isConnected(): boolean;
  flush(): Promise<void>;
  onError(): void;
  onStopped(consumer: NatsDurableConsumer): void;
  logger: Logger;
}

/**
 * One `consume()` call: pulls batches no larger than its free handler slots (so nothing waits in a local
 * buffer while its ack wait runs) nor than the consumer's max_ack_pending (some server versions refuse a
 * larger pull with 409 "Exceeded MaxAckPending", which would end every fetch in an error and a backoff),
 * runs the handler, acks on resolve and naks with the redelivery delay on reject. Errors (server restarts,
 * a deleted consumer) are retried with backoff until stop().
 *
 * With max_ack_pending reached, the pull waits on the server, which answers it as soon as an ack (from
 * this instance or another) makes room: the next message comes one round trip after the ack, without
 * polling.
 */
class NatsDurableConsumer implements DurableConsumer {
  private readonly options: ResolvedConsumeOptions;
  private readonly handler: ConsumeOptions['handler'];
  private readonly concurrency: number;
  /** Pull again once this many handler slots are free (batches of a quarter of the slots at least). */
  private readonly refillAt: number;
  private readonly logger: Logger;
  private inFlight = 0;
  /** Messages received beyond the free slots (a pull repeated on reconnect can over-deliver): run next. */
  private readonly overflow: JsMsg[] = [];
  private stopping = false;
  private batch: ConsumerMessages | undefined;
  /** Resumes the loop waiting for free slots. */
  private slotFreed: (() => void) | undefined;
  /** Cuts the backoff sleep short (on stop). */
  private wakeUp: (() => void) | undefined;
  private idle: (() => void) | undefined;
  private readonly loop: Promise<void>;
  private stopped: Promise<void> | undefined;

  constructor(
    private readonly context: ConsumerContext,
    options: ConsumeOptions,
  ) {
    const redeliverAfterMs = options.redeliverAfterMs ?? DEFAULT_REDELIVER_AFTER_MS;
    const concurrency = options.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new PushdError('INVALID_ARGUMENT', `concurrency must be a positive integer, got ${concurrency}`);
    }
    if (!(redeliverAfterMs > 0)) {
      throw new PushdError('INVALID_ARGUMENT', `redeliverAfterMs must be positive, got ${redeliverAfterMs}`);
    }
    checkMaxAckPending(options.maxAckPending);
    checkStartWithinMs(options.startWithinMs);
    this.options = {
      stream: options.stream,
      consumer: options.consumer,
      filterSubject: options.filterSubject,
      redeliverAfterMs,
      maxAckPending: options.maxAckPending,
      startWithinMs: options.startWithinMs,
    };
    this.handler = options.handler;
    this.concurrency = concurrency;
    this.refillAt = Math.max(1, Math.floor(concurrency / 4));
    this.logger = context.logger.child({ stream: options.stream, consumer: options.consumer });
    this.loop = this.run();
  }

  stop(): Promise<void> {
    if (!this.stopped) {
      this.stopping = true;
      void this.batch?.close();
      this.slotFreed?.();
      this.wakeUp?.();
      this.stopped = this.finish();
    }
    return this.stopped;
  }

  private async finish(): Promise<void> {
    await this.loop;
    for (const msg of this.overflow.splice(0)) giveBack(msg);
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    // Send the last acks before reporting stopped, so another instance does not get them again.
    if (this.context.isConnected()) await this.context.flush().catch(() => {});
    this.context.onStopped(this);
  }

  private async run(): Promise<void> {
    let consumer: Consumer | undefined;
    /** Largest pull the server accepts: the consumer's max_ack_pending. */
    let pullLimit = Number.POSITIVE_INFINITY;
    let failures = 0;
    while (!this.stopping) {
      try {
        if (!consumer) {
          const ensured = await this.context.ensureConsumer(this.options);
          consumer = ensured.consumer;
          pullLimit = ensured.maxAckPending > 0 ? ensured.maxAckPending : Number.POSITIVE_INFINITY;
        }
        if (this.freeSlots() < this.refillAt) await this.waitForSlots();
        if (this.stopping) break;
        const batch = await consumer.fetch({
          max_messages: Math.min(this.freeSlots(), pullLimit),
          expires: PULL_EXPIRES_MS,
        });
        this.batch = batch;
        if (this.stopping) void batch.close();
        for await (const msg of batch) this.dispatch(msg);
        if (failures > 0) this.logger.info('consuming again');
        failures = 0;
      } catch (error) {
        if (this.stopping) break;
        this.context.onError();
        if (consumerMayBeGone(error)) consumer = undefined;
        const level = failures === 0 ? 'warn' : 'debug';
        this.logger[level]({ err: error, failures }, 'consuming failed; retrying');
        failures++;
        await this.sleep(Math.min(5_000, 100 * 2 ** Math.min(failures, 6)) * (0.5 + Math.random() / 2));
      } finally {
        this.batch = undefined;
      }
    }
  }

  private freeSlots(): number {
    return this.concurrency - this.inFlight - this.overflow.length;
  }

  private dispatch(msg: JsMsg): void {
    if (this.stopping) {
      // Pulled while stopping: give it back for another instance right away.
      giveBack(msg);
    } else if (this.inFlight >= this.concurrency) {
      this.overflow.push(msg);
    } else {
      this.inFlight++;
      void this.handle(msg);
    }
  }

  private async handle(msg: JsMsg): Promise<void> {
    let handled = true;
    try {
      await this.handler(msg.data, {
        subject: msg.subject,
        seq: msg.info.streamSequence,
        deliveryCount: msg.info.deliveryCount,
        pending: msg.info.pending,
      });
    } catch {
      handled = false;
    }
    try {
      if (handled) msg.ack();
      else msg.nak(this.options.redeliverAfterMs);
    } catch {
      // The connection is closed: the server redelivers after the ack wait anyway.
    }
    const next = this.overflow.shift();
    if (next !== undefined && !this.stopping) {
      void this.handle(next); // takes over this slot
      return;
    }
    if (next !== undefined) giveBack(next);
    this.inFlight--;
    if (this.inFlight === 0) this.idle?.();
    if (this.slotFreed && this.freeSlots() >= this.refillAt) this.slotFreed();
  }

  private waitForSlots(): Promise<void> {
    return new Promise((resolve) => {
      this.slotFreed = () => {
        this.slotFreed = undefined;
        resolve();
      };
    });
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeUp = undefined;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        this.wakeUp = undefined;
        resolve();
      };
    });
  }
}

/** Returns a message this consumer will not handle, for immediate redelivery to another instance. */
function giveBack(msg: JsMsg): void {
  try {
    msg.nak();
  } catch {
    // The connection is closed: the server redelivers after the ack wait anyway.
  }
}

function createMetrics(registry: Registry, prefix: string): BusMetrics {
  const counter = (name: string, help: string): Counter => {
    const existing = registry.getSingleMetric(name);
    if (existing) return existing as Counter;
    return new Counter({ name, help, registers: [registry] });
  };
  const connectedName = `${prefix}_nats_connected`;
  const connected =
    (registry.getSingleMetric(connectedName) as Gauge | undefined) ??
    new Gauge({
      name: connectedName,
      help: 'Whether the NATS connection is up (1) or not (0).',
      registers: [registry],
    });
  return {
    reconnects: counter(`${prefix}_nats_reconnects_total`, 'Reconnections to NATS after a disconnect.'),
    errors: counter(
      `${prefix}_nats_errors_total`,
      'NATS errors: protocol errors, failed subscriptions and consumers.',
    ),
    connected,
    dropped: counter(
      `${prefix}_nats_dropped_total`,
      'Fan-out messages dropped because NATS was disconnected.',
    ),
  };
}

/** 'nats://a:4222,nats://b:4222' or an array of such entries into a list of servers. */
export function parseServers(servers: string | string[]): string[] {
  const list = (Array.isArray(servers) ? servers : [servers])
    .flatMap((entry) => entry.split(','))
    .map((entry) => entry.trim())
    .filter((entry) => entry.length > 0);
  if (list.length === 0) throw new PushdError('INVALID_ARGUMENT', 'no NATS server given');
  return list;
}

interface WantedStream {
  subjects: string[];
  max_age: number;
  num_replicas: number;
  duplicate_window: number;
}

function streamDiffers(current: StreamConfig, wanted: WantedStream): boolean {
  const subjects = [...(current.subjects ?? [])].sort();
  const wantedSubjects = [...wanted.subjects].sort();
  return (
    current.max_age !== wanted.max_age ||
    current.duplicate_window !== wanted.duplicate_window ||
    current.num_replicas !== wanted.num_replicas ||
    subjects.length !== wantedSubjects.length ||
    subjects.some((subject, i) => subject !== wantedSubjects[i])
  );
}

/**
 * Whether a failed pull means the durable consumer (or its stream) may be gone, so that it must be looked
 * up, and created again, before the next pull. A consumer deleted under a running pull shows as a 409
 * "consumer deleted" status, and the pulls after it as missed heartbeats, not as an API "not found":
 * pulling from the stale handle never recovered. Missed heartbeats can also mean a lost connection; the
 * lookup then costs one request. Other failures (a disconnection, a timeout) keep the handle.
 */
function consumerMayBeGone(error: unknown): boolean {
  if (
    isApiError(error, JetStreamApiCodes.ConsumerNotFound) ||
    isApiError(error, JetStreamApiCodes.StreamNotFound)
  ) {
    return true;
  }
  if (!(error instanceof Error)) return false;
  const status = error as Error & { code?: unknown };
  if (error.name === 'JetStreamStatusError' && status.code === 409) {
    return /consumer deleted|stream deleted/.test(error.message);
  }
  return error.message === 'heartbeats missed';
}

function isApiError(error: unknown, code: number): boolean {
  if (error instanceof JetStreamApiError) return error.code === code;
  // A pull that finds its consumer gone reports it as a plain error.
  if (error instanceof Error) {
    if (code === JetStreamApiCodes.ConsumerNotFound) return error.message === 'consumer not found';
    if (code === JetStreamApiCodes.StreamNotFound) return error.message === 'stream not found';
  }
  return false;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function describePublishError(error: unknown): string {
  const noResponders =
    error instanceof Error &&
    (error.name === 'JetStreamNotEnabled' || /no responders/i.test(messageOf((error as Error).cause)));
  return noResponders ? 'no stream stores this subject (or JetStream is unavailable)' : messageOf(error);
}

function closedError(): PushdError {
  return new PushdError('UNAVAILABLE', 'the bus is closed');
}

/**
 * The message bus between gateways and the control plane. Two implementations pass one contract suite
 * (bus.contract.ts): NatsBus (production: core NATS for fan-out, JetStream for durable events) and
 * MemoryBus (embedded mode and unit tests, one process).
 *
 * Two kinds of traffic, with different guarantees:
 * - fan-out (`publish`/`subscribe`): at most once, lowest latency. Losing one is safe because every
 *   message is persisted in the store before it is published, and devices catch up from the store.
 * - durable events (`publishDurable`/`consume`): at least once, survives restarts of publishers and
 *   consumers; used for delivery events (acks, sent counts) that must not be lost.
 */
export interface Bus {
  /**
   * Publishes to the current subscribers of `subject`; no subscriber means the message is dropped, and so
   * does a NATS bus that is disconnected. Handlers never run inside this call; each subscriber gets the
   * messages of one publisher in publish order.
   */
  publish(subject: string, data: Uint8Array): void;

  /**
   * Receives messages published to `subject` (NATS wildcards `*` and `>` allowed). With `queue`, each
   * message goes to one subscriber of the queue group instead of all. The handler must not throw.
   */
  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): BusSubscription;

  /**
   * Appends to the durable stream that owns `subject` (see DurableStreamConfig). Resolves once the stream
   * has stored it, with its stream sequence; rejects (UNAVAILABLE) otherwise, and the caller must not treat
   * the data as sent. As with NATS, the current core subscribers of `subject` get the message too (a
   * duplicate included: deduplication is the stream's, not the subject's).
   */
  publishDurable(
    subject: string,
    data: Uint8Array,
    options?: PublishDurableOptions,
  ): Promise<DurablePublishResult>;

  /**
   * Consumes a durable stream with a named consumer. Instances using the same `consumer` name share the
   * work (each message goes to one of them). A message is acknowledged when the handler resolves; when it
   * rejects, or the process dies first, it is delivered again after `redeliverAfterMs`.
   */
  consume(options: ConsumeOptions): DurableConsumer;

  /**
   * Messages of `stream` that the durable consumer `consumer` has not acknowledged yet: waiting, or
   * delivered and not acknowledged (a backlog gauge). Undefined when the consumer does not exist (yet).
   * Rejects (UNAVAILABLE) when the server cannot be asked.
   */
  consumerBacklog(stream: string, consumer: string): Promise<number | undefined>;

  /**
   * Reads what `stream` stores, without consuming it: the messages on subjects matching `filterSubject`
   * with a sequence above `afterSeq`, in sequence order, at most `maxMessages`. Returns fewer (or none)
   * when fewer are stored, and never waits for new ones. No durable consumer's state changes (nothing is
   * delivered, acknowledged or counted as delivered), so a consumer still gets each of them in its turn;
   * a reader uses it to look ahead of its consumer (the push applier applies a backlog together).
   * NATS: one short-lived consumer per call (one creation and one fetch, however many messages).
   * Rejects with UNAVAILABLE when the stream does not exist or the server cannot be asked, and with
   * INVALID_ARGUMENT for a bad `afterSeq`, `maxMessages` or filter.
   */
  readDurable(options: ReadDurableOptions): Promise<DurableMessage[]>;

  /** Resolves when the bus can carry traffic (for readiness checks); rejects with the reason otherwise. */
  ready(): Promise<void>;

  /**
   * Resolves once everything published so far has left this process and the subscriptions made so far are
   * in effect (NATS: one round trip to the server; memory: queued deliveries were handed to handlers).
   */
  flush(): Promise<void>;

  /**
   * Calls `listener` each time messages published to this bus's subscriptions may have been missed: NATS
   * delivers core messages at most once, so whatever was published while the connection was down is gone
   * when it comes back (the subscriptions themselves are restored). Called once the connection is back.
   * A subscriber that can recover what it missed (a gateway fetches its devices' pending messages) does
   * it then. MemoryBus never loses a message and never calls it. Returns a function removing the listener.
   */
  onInterruption(listener: () => void): () => void;

  /** Stops consumers and subscriptions, flushes, disconnects. */
  close(): Promise<void>;
}

export type MessageHandler = (data: Uint8Array, subject: string) => void;

export interface SubscribeOptions {
  /** Queue group name: each message goes to one member. Default: none (every subscriber gets it). */
  queue?: string;
}

export interface BusSubscription {
  unsubscribe(): void;
}

export interface PublishDurableOptions {
  /**
   * Message id for deduplication (NATS: the Nats-Msg-Id header). Publishing again with a key the stream
   * stored within its duplicate window (DurableStreamConfig.duplicateWindowMs) stores nothing and resolves
   * to the first message's seq with `duplicate: true`, so a publish retried after a lost answer is stored
   * once. Non-empty, without line breaks or surrounding whitespace (INVALID_ARGUMENT otherwise).
   * Default: none (every publish is stored).
   */
  dedupKey?: string;
}

export interface DurablePublishResult {
  /**
   * Stream sequence of the stored message: 1 for the stream's first message, then one more per stored
   * message. For a duplicate, the sequence of the message first stored with that dedupKey.
   */
  seq: number;
  /** True when `dedupKey` matched a message stored within the duplicate window, and nothing was stored. */
  duplicate: boolean;
}

export interface DurableStreamConfig {
  /** Stream name, e.g. 'PUSHD_EVENTS'. */
  name: string;
  /** Subjects the stream stores, e.g. ['pushd.events.>']. */
  subjects: string[];
  /** How long a message is kept, acknowledged or not. Default: 7 days. */
  maxAgeMs?: number;
  /** JetStream replicas (NATS only; 3 in a cluster). Default: 1. */
  replicas?: number;
  /**
   * How long a dedupKey is remembered after its message was stored (never longer than `maxAgeMs`, which
   * NATS requires). Default: 2 minutes (JetStream's default).
   */
  duplicateWindowMs?: number;
}

export interface ConsumeOptions {
  /**
   * Stream to read, created by the bus from its configuration if missing (MemoryBus throws UNAVAILABLE
   * when its broker has no such stream).
   */
  stream: string;
  /** Durable consumer name; instances sharing it share the work. */
  consumer: string;
  /** Only messages on subjects matching this filter. Default: every subject of the stream. */
  filterSubject?: string;
  handler: (data: Uint8Array, meta: DurableMessageMeta) => Promise<void>;
  /** Redelivery delay for a message whose handler rejected or never finished. Default: 5000 ms. */
  redeliverAfterMs?: number;
  /** Handler calls in flight at once for this consumer. Default: 1 (in stream order). */
  concurrency?: number;
  /**
   * Most messages delivered and not yet acknowledged, over ALL instances sharing the consumer name (the
   * stream's server enforces it, not each instance). With 1, the messages are handled one after another
   * in stream order whatever the number of instances, and a message whose handler rejects (or whose
   * process dies) is delivered again after `redeliverAfterMs` before any later message: one ordered
   * applier without a lease. That holds while handlers finish within `redeliverAfterMs`; a slower one has
   * its message delivered again meanwhile (at least once). Instances sharing the name must pass the same
   * value: the consumer takes the latest consume() call's. Default: no limit of the bus's own (MemoryBus:
   * unlimited; NATS: the server's default, 1000).
   */
  maxAckPending?: number;
  /**
   * Where a consumer the bus has to create starts: at the first message stored at most this many ms ago,
   * rather than at the first message the stream still holds. The bus creates the consumer on its first
   * consume() and again whenever it finds it deleted (by an operator, or lost with a NATS node); a consumer
   * that exists keeps its position. For a handler that recognizes a message it already applied only for a
   * limited time: replaying that time and no more neither applies an older message twice nor skips a
   * newer one. A positive number of ms (INVALID_ARGUMENT otherwise). Default: the first stored message.
   */
  startWithinMs?: number;
}

export interface DurableMessageMeta {
  subject: string;
  /** Stream sequence of the message: the `seq` its publishDurable resolved to. */
  seq: number;
  /** How many times this message has been delivered to the consumer, starting at 1. */
  deliveryCount: number;
  /**
   * When this message was delivered, how many messages matching the consumer's filter were stored after
   * it and had not been delivered to the consumer yet (NATS: `JsMsg.info.pending`, the consumer's
   * num_pending). Messages delivered and not acknowledged (a redelivery's neighbours) are not counted, nor
   * messages stored after the delivery. With maxAckPending 1 and a first delivery, it is the number of
   * messages waiting behind this one: a lower bound of what `readDurable` after `seq` finds.
   */
  pending: number;
}

export interface ReadDurableOptions {
  /** Stream to read. */
  stream: string;
  /** Only messages on subjects matching this filter (wildcards allowed). Default: every subject. */
  filterSubject?: string;
  /** Only messages with a higher stream sequence; 0 reads from the first one stored. */
  afterSeq: number;
  /** Most messages returned: a positive integer. */
  maxMessages: number;
}

/** A message as its stream stores it (Bus.readDurable). */
export interface DurableMessage {
  /** Stream sequence (the `seq` its publishDurable resolved to). */
  seq: number;
  subject: string;
  data: Uint8Array;
}

export interface DurableConsumer {
  /** Stops fetching; resolves after in-flight handlers finish. Unacknowledged messages stay in the stream. */
  stop(): Promise<void>;
}

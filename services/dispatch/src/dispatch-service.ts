import {
  type AudienceExpr,
  compileMatcher,
  deviceTagTest,
  fromProto,
  type Matcher,
  normalize,
  platformTag,
} from '@pushd/audience';
import { type Bus, subjects } from '@pushd/bus';
import {
  type Clock,
  invalidArgument,
  type Logger,
  mapConcurrently,
  PushdError,
  systemClock,
  tokenNotFound,
  tokensByApp,
  toPushdError,
} from '@pushd/common';
import {
  Audience,
  BroadcastDelivery,
  type DispatchServiceService,
  EventBatch,
  EventType,
  encodeMessage,
  type FetchPendingRequest,
  type FetchPendingResponse,
  type Message,
  type PendingDevice,
  Platform,
  PushCommand,
  type PushMessage,
  type PushRecord,
  type PushRequest,
  PushResponse,
  PushStatus,
  platformToJSON,
  pushStatusToJSON,
  type RegistryServiceService,
  type TargetDevice,
} from '@pushd/proto';
import {
  CallAuthorizer,
  CallBatcher,
  checkBatchSize,
  type PromiseClient,
  type ServiceHandlers,
  toBatchResult,
  verifyAppSecretWithRegistry,
} from '@pushd/rpc';
import {
  type AudienceIndex,
  type BroadcastLog,
  type BroadcastSinceResult,
  type DeviceRecord,
  type DeviceStore,
  type InboxStore,
  isPushListCursor,
  type PendingResult,
  type PushStore,
  type PushUpdateResult,
  type TagStore,
} from '@pushd/store';
import { validateMessage } from './message-rules.js';
import type { DispatchMetrics } from './metrics.js';
import { OFFLINE_CAPACITY } from './push-applier.js';
import { MAX_COMMAND_BYTES, PushLogWriter } from './push-log.js';
import { type SchedulePlan, validateSchedule } from './schedule-times.js';
import type { Scheduler } from './scheduler.js';

export { MAX_MESSAGE_BYTES, validateMessage } from './message-rules.js';
export { OFFLINE_CAPACITY } from './push-applier.js';
/** Longest a message is kept for an offline device (the brief: 72 hours), also the default. */
export const MAX_EXPIRE_S = 72 * 3600;
/** Most tokens in a token_list and accounts in an account_list (the limit, as TPNS). */
export const MAX_LIST_ENTRIES = 1000;
/**
 * An online-only push (expire_time_s 0) not applied within this time is dropped: the devices that were
 * connected when it was sent may be gone, and it was never meant to wait.
 */
export const ONLINE_ONLY_TTL_MS = 60_000;
/** A push id's share of an encoded command: field tag, length and up to 20 digits. */
const PUSH_ID_MAX_BYTES = 22;

/** The brief: at most one push to all devices per 3 seconds per app. */
export const ALL_AUDIENCE_INTERVAL_MS = 3000;
/**
 * Newest broadcast-log entries a returning device is matched against. A device keeps at most 2 messages,
 * so this only has to reach past the app's recent broadcasts that do not concern it.
 */
const BROADCAST_CATCH_UP_SCAN = 200;
/** Decoded broadcast-log entries kept per dispatch instance (see decodedBroadcast). */
const BROADCAST_CACHE_ENTRIES = 10_000;

interface DecodedBroadcast {
  message: PushMessage;
  platform: Platform;
  matcher: Matcher;
}
const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;
/** Idempotency keys: 1 to 64 characters (the API's rule). */
const MAX_IDEMPOTENCY_KEY_CHARS = 64;

interface ResolvedAudience {
  devices: DeviceRecord[];
  invalidTokens: string[];
  unknownAccounts: string[];
}

export interface DispatchServiceOptions {
  pushes: PushStore;
  inboxes: InboxStore;
  broadcasts: BroadcastLog;
  /** Counts the `all` and `tags` audiences when they are accepted (the push's target). */
  audience: AudienceIndex;
  /** User tags of a device catching up on broadcasts. */
  tags: TagStore;
  /**
   * The registry's device records, read here directly (as the gateway reads tags and the applier routes)
   * and never written: the devices a targeted push names, and the facts of a returning device its gateway
   * did not pass. The GetDevices call this replaces cost the registry several times the CPU it cost
   * dispatch, and put a hop on every push's way (docs/benchmarks.md, targeted).
   */
  devices: Pick<DeviceStore, 'get' | 'getMany'>;
  bus: Bus;
  /** Registry client authorized with the cluster token: account bindings and app secret checks. */
  registry: PromiseClient<typeof RegistryServiceService>;
  clusterToken: string;
  /** Push-log partitions; must equal the PushApplier's. Default: 16. */
  partitions?: number;
  /** Keeps scheduled and recurring pushes until they are due, and cancels them. */
  scheduler: Scheduler;
  metrics: DispatchMetrics;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
}

/**
 * Accepts pushes (proto/pushd/v1/dispatch.proto): validate, resolve named devices, then append the push to
 * the push log, whose place gives its msg_id (PushLogWriter: pushes accepted together share an entry).
 * The call returns once the log has stored it; PushApplier applies it in order. Also answers gateways'
 * catch-up reads (FetchPending).
 */
export class DispatchService {
  private readonly clock: Clock;
  private readonly authorizer: CallAuthorizer;
  private readonly log: PushLogWriter;
  private readonly broadcastCache = new Map<string, DecodedBroadcast>();
  /**
   * The device of each single-token push, looked up in batches: the pushes accepted at the same time
   * share one read of the device store (per app) instead of one read each.
   */
  private readonly deviceLookups: CallBatcher<DeviceKey, DeviceRecord | undefined>;

  constructor(private readonly options: DispatchServiceOptions) {
    this.clock = options.clock ?? systemClock;
    this.deviceLookups = new CallBatcher({
      maxBatch: MAX_LIST_ENTRIES,
      send: (keys) => this.lookUpEach(keys),
    });
    this.log = new PushLogWriter({
      bus: options.bus,
      ...(options.partitions === undefined ? {} : { partitions: options.partitions }),
    });
    this.authorizer = new CallAuthorizer({
      clusterToken: options.clusterToken,
      verifyAppSecret: verifyAppSecretWithRegistry(options.registry),
    });
  }

  handlers(): ServiceHandlers<typeof DispatchServiceService> {
    return {
      push: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        const audience = audienceLabel(request.audience);
        const stop = this.options.metrics.pushDuration.startTimer({ audience });
        try {
          const result = await this.accept(accessId, request);
          this.options.metrics.pushes.inc({ audience, outcome: 'accepted' });
          return result;
        } catch (error) {
          const code = error instanceof PushdError ? error.code : 'INTERNAL';
          this.options.metrics.pushes.inc({ audience, outcome: code });
          throw error;
        } finally {
          stop();
        }
      },

      getPush: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        if (request.pushId === '') throw invalidArgument('push_id', 'required');
        const push = await this.options.pushes.get(accessId, request.pushId);
        if (push === undefined) {
          throw new PushdError(
            'PUSH_NOT_FOUND',
            `no push has id ${JSON.stringify(request.pushId)} in app ${accessId}`,
          );
        }
        return { push };
      },

      listPushes: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        if (request.pageSize > MAX_PAGE_SIZE) {
          throw invalidArgument('page_size', `at most ${MAX_PAGE_SIZE} (got ${request.pageSize})`);
        }
        for (const field of ['created_from_ms', 'created_to_ms'] as const) {
          const value = field === 'created_from_ms' ? request.createdFromMs : request.createdToMs;
          if (value < 0) throw invalidArgument(field, `must not be negative (got ${value})`);
        }
        if (request.createdToMs !== 0 && request.createdToMs <= request.createdFromMs) {
          throw invalidArgument('created_to_ms', 'must be after created_from_ms');
        }
        const unknown = request.statuses.findIndex(
          (status) => status === PushStatus.PUSH_STATUS_UNSPECIFIED || PushStatus[status] === undefined,
        );
        if (unknown >= 0) {
          throw invalidArgument(
            `statuses[${unknown}]`,
            `must be one of SCHEDULED (1), SENDING (2), DONE (3), CANCELLED (4), FAILED (5) (got ${request.statuses[unknown]})`,
          );
        }
        if (request.pageToken !== '' && !isPushListCursor(request.pageToken)) {
          throw invalidArgument(
            'page_token',
            'is not a page token of this list (pass next_page_token of the previous page)',
          );
        }
        const page = await this.options.pushes.list(accessId, {
          ...(request.createdFromMs > 0 ? { fromMs: request.createdFromMs } : {}),
          ...(request.createdToMs > 0 ? { toMs: request.createdToMs } : {}),
          ...(request.statuses.length > 0 ? { statuses: request.statuses } : {}),
          limit: request.pageSize === 0 ? DEFAULT_PAGE_SIZE : request.pageSize,
          ...(request.pageToken !== '' ? { cursor: request.pageToken } : {}),
        });
        return { pushes: page.pushes, nextPageToken: page.nextCursor ?? '' };
      },

      cancelPush: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        if (request.pushId === '') throw invalidArgument('push_id', 'required');
        return { push: await this.cancel(accessId, request.pushId) };
      },

      fetchPending: async (request, { metadata }) => {
        await this.authorizer.requireCluster(metadata);
        return this.fetchPending(request);
      },

      fetchPendingBatch: async (request, { metadata }) => {
        await this.authorizer.requireCluster(metadata);
        checkBatchSize('requests', request.requests.length);
        const now = this.clock.now();
        const logs = this.sharedBroadcastReads(request.requests, now);
        // All in flight together: the store calls of one tick share a Redis round trip (auto-pipelining).
        const settled = await Promise.allSettled(
          request.requests.map((item) =>
            // A cursor the log refuses is left to the item's own read, so that it fails alone.
            this.fetchPending(item, now, isCursor(item.afterMsgId) ? logs.get(item.accessId) : undefined),
          ),
        );
        throwIfNothingDone(settled);
        return { results: settled.map(toBatchResult) };
      },
    };
  }

  /**
   * Validates everything first (bad input changes nothing and does not use up the `all` rate slot), then
   * claims the idempotency key, resolves the audience, stores the push record and either appends the
   * command to the log (sent now) or hands it to the scheduler.
   */
  private async accept(accessId: number, request: PushRequest): Promise<PushResponse> {
    const content = validateMessage(request.message);
    if (request.expireTimeS !== undefined && request.expireTimeS > MAX_EXPIRE_S) {
      throw invalidArgument('expire_time_s', `must be at most ${MAX_EXPIRE_S} (72 hours)`);
    }
    const platformTag = platformTagOf(request.platform);
    const key = validIdempotencyKey(request.idempotencyKey);
    const now = this.clock.now();
    const plan = validateSchedule(request, now);
    const onlineOnly = request.expireTimeS === 0;
    const ttlMs = onlineOnly ? ONLINE_ONLY_TTL_MS : (request.expireTimeS ?? MAX_EXPIRE_S) * 1000;
    if (plan.fireAtMs - plan.nominalMs >= ttlMs) {
      throw invalidArgument(
        'accept_time',
        `the next accept window opens at ${new Date(plan.fireAtMs).toISOString()}, after the message ` +
          `expires (${ttlMs / 1000} s after ${new Date(plan.nominalMs).toISOString()})`,
      );
    }
    let audienceExpr: AudienceExpr | undefined;
    const target = request.audience?.target;
    if (target?.$case === 'all' || target?.$case === 'tags') {
      audienceExpr = target.$case === 'tags' ? fromProto(target.value, 'audience.tags') : { kind: 'all' };
      if (platformTag !== undefined) {
        audienceExpr = { kind: 'and', terms: [audienceExpr, { kind: 'tag', tag: platformTag }] };
      }
    }

    // With a key, the push id is taken first (the key records it; a refused call leaves a gap in the ids);
    // without, only once the audience resolved.
    const pushId = key === undefined ? undefined : await this.newPushId(accessId);
    if (key !== undefined && pushId !== undefined) {
      const claim = await this.options.pushes.claimIdempotencyKey(accessId, key, pushId);
      if (!claim.claimed) {
        if (claim.response !== undefined) return PushResponse.decode(claim.response);
        throw new PushdError(
          'IDEMPOTENCY_KEY_IN_USE',
          `push ${claim.pushId} holds idempotency key ${JSON.stringify(key)} and is still being accepted; retry`,
          { metadata: { push_id: claim.pushId } },
        );
      }
    }
    let response: PushResponse;
    try {
      response = await this.persist(accessId, pushId, request, {
        content,
        platformTag,
        audienceExpr,
        plan,
        onlineOnly,
        ttlMs,
        now,
      });
    } catch (error) {
      // Nothing was accepted: the retry this error asks for must be free to proceed.
      if (key !== undefined && pushId !== undefined) {
        await this.options.pushes.releaseIdempotencyKey(accessId, key, pushId).catch(() => undefined);
      }
      throw error;
    }
    if (key !== undefined && pushId !== undefined) {
      // The push is accepted whatever happens here. Should recording the answer fail, the key stays held
      // without one: retries get IDEMPOTENCY_KEY_IN_USE naming this push (never a second push).
      await this.options.pushes
        .completeIdempotencyKey(accessId, key, pushId, encodeMessage(PushResponse, response))
        .catch((error: unknown) => {
          this.options.logger.error(
            { err: error, accessId, pushId },
            'recording an idempotent answer failed',
          );
        });
    }
    return response;
  }

  /** Everything accept() does once the request is known valid and the idempotency key is held. */
  private async persist(
    accessId: number,
    givenPushId: string | undefined,
    request: PushRequest,
    accepted: {
      content: Message;
      platformTag: string | undefined;
      audienceExpr: AudienceExpr | undefined;
      plan: SchedulePlan;
      onlineOnly: boolean;
      ttlMs: number;
      now: number;
    },
  ): Promise<PushResponse> {
    const { content, platformTag, audienceExpr, plan, onlineOnly, ttlMs, now } = accepted;
    let devices: TargetDevice[] = [];
    let invalidTokens: string[] = [];
    let unknownAccounts: string[] = [];
    let targetCount: number;
    if (audienceExpr !== undefined) {
      if (request.audience?.target?.$case === 'all') await this.takeAllAudienceSlot(accessId, now);
      targetCount = (await this.options.audience.count(accessId, normalize(audienceExpr), now)).matched;
    } else {
      // Named devices are resolved now, also for a scheduled push: its occurrences go to these devices.
      const resolved = await this.resolveAudience(accessId, request.audience);
      devices = resolved.devices
        .filter((device) => platformTag === undefined || device.platform === request.platform)
        .map((device) => ({ token: device.token, platform: device.platform }));
      if (devices.length === 0) {
        // Every named device is registered, none on the platform asked for: the push could reach nobody.
        throw invalidArgument(
          'platform',
          `none of the ${resolved.devices.length} targeted devices is on ${platformToJSON(request.platform)}`,
        );
      }
      invalidTokens = resolved.invalidTokens;
      unknownAccounts = resolved.unknownAccounts;
      targetCount = devices.length;
    }
    const command: PushCommand = {
      accessId,
      pushId: '',
      message: content,
      acceptedAtMs: now,
      expiresAtMs: now + ttlMs,
      platform: request.platform,
      audience: request.audience,
      devices,
      countedTarget: targetCount,
      onlineOnly,
      occurrence: 0,
      moreOccurrences: false,
    };
    // The command is one message of the push log (and the stored command of a scheduled push): NATS
    // refuses larger ones, and a scheduled push whose command cannot be logged would stay SENDING.
    // Encoded only when its devices (at most 48 bytes each) and the audience as named (up to 1,000 tokens
    // or accounts of any length the gRPC limit lets through) could bring it near the limit: the rest of a
    // command (a message of at most 4 KB) leaves room for the three quarters not estimated.
    const estimatedBytes =
      devices.length * 48 + encodeMessage(Audience, request.audience ?? Audience.create()).length;
    const commandBytes =
      estimatedBytes < MAX_COMMAND_BYTES / 4
        ? 0
        : encodeMessage(PushCommand, command).length + PUSH_ID_MAX_BYTES;
    if (commandBytes > MAX_COMMAND_BYTES) {
      throw invalidArgument(
        'audience',
        `resolves to ${devices.length} devices, a push command of ${commandBytes} bytes over the push ` +
          `log's limit of ${MAX_COMMAND_BYTES}; split the accounts or tokens over several pushes`,
      );
    }
    const pushId = givenPushId ?? (await this.newPushId(accessId));
    command.pushId = pushId;
    // Saved before the command is logged or scheduled, so the applier's update always comes after it.
    await this.options.pushes.save({
      accessId,
      pushId,
      msgId: 0,
      status: plan.scheduled ? PushStatus.PUSH_STATUS_SCHEDULED : PushStatus.PUSH_STATUS_SENDING,
      audience: request.audience,
      message: content,
      createdAtMs: now,
      expiresAtMs: plan.nominalMs + ttlMs,
      target: targetCount,
      sendTimeMs: plan.nominalMs,
      occurrences: 0,
      failure: '',
    });
    const response = { pushId, msgId: 0, invalidTokens, unknownAccounts, target: targetCount };
    if (plan.scheduled) {
      // The scheduler fires it (each occurrence gets the TTL from its own firing); its msg_id comes then.
      try {
        await this.options.scheduler.schedule({
          accessId,
          pushId,
          command,
          nominalMs: plan.nominalMs,
          fireAtMs: plan.fireAtMs,
          ...(request.loop === undefined ? {} : { loop: request.loop }),
          ...(request.acceptTime === undefined ? {} : { acceptTime: request.acceptTime }),
        });
      } catch (error) {
        // Not scheduled, or not known to be (a write whose answer was lost): the record says FAILED rather
        // than SCHEDULED for ever, which also keeps the scheduler from firing it should its entry have
        // been stored after all (it fires SCHEDULED pushes only). Should that entry have fired already,
        // the push is under way: it was accepted after all.
        const marked = await this.markFailed(
          accessId,
          pushId,
          PushStatus.PUSH_STATUS_SCHEDULED,
          'it could not be scheduled',
        );
        const fired =
          marked?.status === PushStatus.PUSH_STATUS_SENDING || marked?.status === PushStatus.PUSH_STATUS_DONE;
        if (fired) return response;
        throw error;
      }
      return response;
    }
    try {
      return { ...response, msgId: await this.log.append(command) };
    } catch (error) {
      // Not in the log, so never sent: the record says so, and the caller gets the error to retry. Only
      // while SENDING: should the log have stored it after all (an acknowledgement lost), an applier
      // that finished it first keeps its DONE.
      await this.markFailed(accessId, pushId, PushStatus.PUSH_STATUS_SENDING, 'the push log was unavailable');
      throw error;
    }
  }

  /**
   * FAILED with `failure`, if the push is still `from` (the status accept() gave it); the update's result,
   * undefined if the update itself failed (the call's own error is what the caller reports).
   */
  private markFailed(
    accessId: number,
    pushId: string,
    from: PushStatus,
    failure: string,
  ): Promise<PushUpdateResult | undefined> {
    return this.options.pushes
      .update(accessId, pushId, { status: PushStatus.PUSH_STATUS_FAILED, failure }, [from])
      .catch(() => undefined);
  }

  /**
   * SCHEDULED -> CANCELLED, atomically against the scheduler's SCHEDULED -> SENDING: exactly one of them
   * wins, so a cancel that races a send is either "cancelled" (nothing is delivered) or "already sent".
   */
  private async cancel(accessId: number, pushId: string): Promise<PushRecord> {
    const result = await this.options.scheduler.cancel(accessId, pushId);
    const record = await this.options.pushes.get(accessId, pushId);
    if (result.status === undefined || record === undefined) {
      throw new PushdError('PUSH_NOT_FOUND', `no push has id ${JSON.stringify(pushId)} in app ${accessId}`);
    }
    if (result.updated) return record;
    if (result.status === PushStatus.PUSH_STATUS_CANCELLED) return record;
    // Ended without anything sent (expired before its accept window opened, or it could not be scheduled;
    // no msg_id): PUSH_ALREADY_SENT would tell the caller it went out.
    if (result.status === PushStatus.PUSH_STATUS_FAILED && record.msgId === 0) {
      throw new PushdError(
        'PUSH_NOT_CANCELLABLE',
        `push ${pushId} is FAILED (${record.failure || 'see GetPush'}); there is nothing left to cancel`,
        { metadata: { status: 'FAILED' } },
      );
    }
    if ((await this.options.pushes.command(accessId, pushId)) === undefined) {
      throw new PushdError(
        'PUSH_NOT_CANCELLABLE',
        `push ${pushId} was sent immediately; only a scheduled push can be cancelled`,
      );
    }
    throw new PushdError(
      'PUSH_ALREADY_SENT',
      `push ${pushId} is ${pushStatusName(result.status)}; it can no longer be cancelled`,
      { metadata: { status: pushStatusName(result.status) } },
    );
  }

  private newPushId(accessId: number): Promise<string> {
    return this.options.pushes.nextPushId(accessId);
  }

  private async takeAllAudienceSlot(accessId: number, now: number): Promise<void> {
    const slot = await this.options.broadcasts.tryAcquireBroadcastSlot(
      accessId,
      ALL_AUDIENCE_INTERVAL_MS,
      now,
    );
    if (slot.acquired) return;
    throw new PushdError(
      'RATE_LIMITED',
      `app ${accessId} may push to all devices once per ${ALL_AUDIENCE_INTERVAL_MS / 1000} s; ` +
        `retry in ${slot.retryAfterMs} ms`,
      { metadata: { limit: 'all_audience_interval', retry_after_ms: String(slot.retryAfterMs) } },
    );
  }

  /**
   * One FetchPending, for the single call and each item of a batch. `appLog`: the app's broadcast log read
   * once for a whole batch at `now` (see sharedBroadcastReads); without it, this request's own read.
   */
  private async fetchPending(
    request: FetchPendingRequest,
    now = this.clock.now(),
    appLog?: Promise<BroadcastSinceResult>,
  ): Promise<FetchPendingResponse> {
    if (request.token === '') throw invalidArgument('token', 'required');
    const { accessId, token, afterMsgId } = request;
    // The window read comes last: it resets the device's dropped count and takes out what the device
    // processed, which a failure after it would lose (a retry would find neither). So the log, and the
    // device when missed broadcasts must be matched against it, are read first; the merge cannot fail.
    // The gateway's merge holds for either order of the two reads (they are in two hash slots anyway).
    const log = await (appLog === undefined
      ? this.options.broadcasts.since(accessId, afterMsgId, now, BROADCAST_CATCH_UP_SCAN)
      : appLog.then((read) => entriesAfter(read, afterMsgId)));
    const device =
      log.entries.length === 0
        ? undefined
        : (request.device ?? (await this.lookUpPendingDevice(accessId, token)));
    const window = await this.options.inboxes.pending(
      accessId,
      token,
      afterMsgId,
      now,
      request.deviceProcessed === true,
    );
    if (window.processed.length > 0) {
      this.reportProcessed(accessId, token, request.device?.platform, window.processed, now);
    }
    return this.mergeWindowAndLog(accessId, afterMsgId, window, log, device);
  }

  /**
   * Window messages the device said it processed (at or below the last_msg_id it connected with) arrived,
   * and their acks were lost with its previous connection: counted as arrived, as their acks would have
   * been (without a latency: when they arrived is not known). Not awaited by the catch-up; a failure is
   * logged and counted, as for SENT events.
   */
  private reportProcessed(
    accessId: number,
    token: string,
    platform: Platform | undefined,
    messages: PushMessage[],
    now: number,
  ): void {
    const events = messages.map((message) => ({
      type: EventType.EVENT_TYPE_ARRIVED,
      accessId,
      pushId: message.pushId,
      msgId: message.msgId,
      token,
      platform: platform ?? Platform.PLATFORM_UNSPECIFIED,
      atMs: now,
      tokens: [],
      tokensAtMs: [],
      // Taken out of the window already: dispatch's own consumer has nothing to remove.
      windowless: true,
    }));
    this.options.metrics.acksRecovered.inc(messages.length);
    this.options.bus
      .publishDurable(subjects.events('dispatch'), encodeMessage(EventBatch, { events }))
      .catch((error: unknown) => {
        this.options.metrics.eventPublishFailures.inc();
        this.options.logger.error({ err: error, accessId }, 'publishing recovered arrivals failed');
      });
  }

  /**
   * One broadcast-log read per app of a FetchPendingBatch, from the lowest cursor among its requests,
   * instead of one per device: in a reconnect storm the devices of an app read the same recent entries.
   * Exact for every request: `since` keeps the newest entries after a cursor, and the newest after a
   * higher cursor are those of them past it (entriesAfter). Read even for requests refused later (an
   * empty token): reading changes nothing but dropping expired entries, which any read does.
   */
  private sharedBroadcastReads(
    requests: FetchPendingRequest[],
    now: number,
  ): Map<number, Promise<BroadcastSinceResult>> {
    const lowest = new Map<number, number>();
    for (const { accessId, afterMsgId } of requests) {
      if (isCursor(afterMsgId))
        lowest.set(accessId, Math.min(lowest.get(accessId) ?? afterMsgId, afterMsgId));
    }
    const reads = new Map<number, Promise<BroadcastSinceResult>>();
    for (const [accessId, afterMsgId] of lowest) {
      const read = this.options.broadcasts.since(accessId, afterMsgId, now, BROADCAST_CATCH_UP_SCAN);
      read.catch(() => undefined); // each request awaiting it gets the failure; none is left unhandled
      reads.set(accessId, read);
    }
    return reads;
  }

  /**
   * What a device finds when it connects: its window (targeted messages) merged with the broadcasts of its
   * app it missed and matches, the newest of them within its platform's offline capacity, oldest first.
   */
  private mergeWindowAndLog(
    accessId: number,
    afterMsgId: number,
    window: PendingResult,
    log: BroadcastSinceResult,
    device: PendingDevice | undefined,
  ) {
    let messages = window.messages;
    // Dropped: what the window lost to its capacity or to expiry, plus matching broadcasts that the
    // capacity leaves out now (targeted and broadcast messages compete for the same places).
    let dropped = window.dropped;
    if (log.entries.length > 0) {
      if (device !== undefined) {
        const missed = this.missedBroadcasts(accessId, afterMsgId, device, log.entries);
        if (missed.length > 0) {
          const merged = [...messages, ...missed].sort((a, b) => a.msgId - b.msgId);
          messages = merged.slice(-OFFLINE_CAPACITY[device.platform]);
          dropped += merged.length - messages.length;
        }
      }
    }
    return { messages, lastMsgId: window.lastMsgId, lastBroadcastId: log.lastMsgId, dropped };
  }

  /** What a gateway passes in FetchPending, from the device and tag stores (undefined: not registered). */
  private async lookUpPendingDevice(accessId: number, token: string): Promise<PendingDevice | undefined> {
    const device = await this.options.devices.get(accessId, token);
    if (device === undefined) return undefined;
    return {
      platform: device.platform,
      appVersion: device.appVersion,
      osVersion: device.osVersion,
      locale: device.locale,
      registeredAtMs: device.registeredAtMs,
      // A record stored before device indexes existed has -1: the tag store then reads by token alone.
      userTags: await this.options.tags.list(accessId, token, device.index >= 0 ? device.index : undefined),
    };
  }

  /** The log entries (newest last) this device matches. */
  private missedBroadcasts(
    accessId: number,
    afterMsgId: number,
    device: PendingDevice,
    entries: { msgId: number; data: Uint8Array }[],
  ): PushMessage[] {
    const has = deviceTagTest(device, device.userTags);
    const messages: PushMessage[] = [];
    for (const entry of entries) {
      const broadcast = this.decodedBroadcast(accessId, entry);
      if (broadcast === undefined) continue;
      const { message, platform } = broadcast;
      if (platform !== Platform.PLATFORM_UNSPECIFIED && platform !== device.platform) continue;
      // A device that reports no cursor (a fresh install) gets what was pushed since it registered.
      if (afterMsgId === 0 && message.sentAtMs < device.registeredAtMs) continue;
      if (broadcast.matcher(has)) messages.push(message);
    }
    return messages;
  }

  /**
   * A broadcast-log entry decoded, its expression compiled, once per instance (entries never change):
   * every device of a reconnect storm is matched against the same recent entries.
   */
  private decodedBroadcast(
    accessId: number,
    entry: { msgId: number; data: Uint8Array },
  ): DecodedBroadcast | undefined {
    const key = `${accessId}:${entry.msgId}`;
    const cached = this.broadcastCache.get(key);
    if (cached !== undefined) return cached;
    const broadcast = BroadcastDelivery.decode(entry.data);
    if (broadcast.message === undefined) return undefined;
    const decoded: DecodedBroadcast = {
      message: broadcast.message,
      platform: broadcast.platform,
      matcher: compileMatcher(
        normalize(broadcast.expression === undefined ? { kind: 'all' } : fromProto(broadcast.expression)),
      ),
    };
    // Bounded: dropping everything now and then is simpler than an LRU and costs one decode per entry.
    if (this.broadcastCache.size >= BROADCAST_CACHE_ENTRIES) this.broadcastCache.clear();
    this.broadcastCache.set(key, decoded);
    return decoded;
  }

  /** The registered devices an audience names, and what it named that is not registered. */
  private async resolveAudience(accessId: number, audience: Audience | undefined): Promise<ResolvedAudience> {
    const target = audience?.target;
    const registry = this.options.registry;
    switch (target?.$case) {
      case 'token': {
        if (target.value === '') throw invalidArgument('audience.token', 'required');
        const device = await this.deviceLookups.call({ accessId, token: target.value });
        if (device === undefined) throw tokenNotFound(accessId, target.value);
        return { devices: [device], invalidTokens: [], unknownAccounts: [] };
      }
      case 'tokenList': {
        const tokens = distinctList('audience.token_list.tokens', target.value.tokens);
        const devices = await this.lookUpDevices(accessId, tokens);
        const found = new Set(devices.map((device) => device.token));
        const invalidTokens = tokens.filter((token) => !found.has(token));
        if (devices.length === 0) {
          throw new PushdError(
            'TOKEN_NOT_FOUND',
            `none of the ${tokens.length} tokens is a registered device of app ${accessId}`,
            {
              metadata: { field: 'audience.token_list.tokens' },
            },
          );
        }
        return { devices, invalidTokens, unknownAccounts: [] };
      }
      case 'account':
      case 'accountList': {
        const accounts =
          target.$case === 'account'
            ? [nonEmpty('audience.account', target.value)]
            : distinctList('audience.account_list.accounts', target.value.accounts);
        const bound = await mapConcurrently(accounts, 16, async (account) => ({
          account,
          tokens: (await registry.listAccountTokens({ accessId, account })).tokens,
        }));
        const unknownAccounts = bound
          .filter((entry) => entry.tokens.length === 0)
          .map((entry) => entry.account);
        const devices = await this.lookUpDevices(accessId, [
          ...new Set(bound.flatMap((entry) => entry.tokens)),
        ]);
        if (devices.length === 0) {
          const what =
            accounts.length === 1
              ? `account ${JSON.stringify(accounts[0])}`
              : `any of the ${accounts.length} accounts`;
          throw new PushdError(
            'ACCOUNT_NOT_FOUND',
            `no registered device is bound to ${what} in app ${accessId}`,
          );
        }
        return {
          devices,
          invalidTokens: [],
          unknownAccounts: target.$case === 'account' ? [] : unknownAccounts,
        };
      }
      default:
        throw invalidArgument('audience', 'set one of token, token_list, account, account_list, all, tags');
    }
  }

  /**
   * One batch of deviceLookups: each key's device, or undefined for a token no device of its app has.
   * The apps' lookups run side by side; a failed lookup fails only its app's keys.
   */
  private async lookUpEach(keys: DeviceKey[]): Promise<PromiseSettledResult<DeviceRecord | undefined>[]> {
    const devicesByApp = new Map<number, Promise<Map<string, DeviceRecord>>>();
    for (const [accessId, tokens] of tokensByApp(keys)) {
      devicesByApp.set(
        accessId,
        this.lookUpDevices(accessId, tokens).then(
          (devices) => new Map(devices.map((device) => [device.token, device])),
        ),
      );
    }
    return Promise.allSettled(
      keys.map(async ({ accessId, token }) => (await devicesByApp.get(accessId))?.get(token)),
    );
  }

  /** Registered devices among tokens, read from the device store 1,000 at a time. */
  private async lookUpDevices(accessId: number, tokens: string[]): Promise<DeviceRecord[]> {
    const chunks: string[][] = [];
    for (let start = 0; start < tokens.length; start += MAX_LIST_ENTRIES)
      chunks.push(tokens.slice(start, start + MAX_LIST_ENTRIES));
    const found = await mapConcurrently(chunks, 4, async (chunk) =>
      (await this.options.devices.getMany(accessId, chunk)).filter(
        (device): device is DeviceRecord => device !== undefined,
      ),
    );
    return found.flat();
  }
}

/** Failures that are not the item's own but a dependency's (the store, the registry): see throwIfNothingDone. */
const DEPENDENCY_FAILURES: ReadonlySet<string> = new Set(['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'INTERNAL']);

/**
 * Fails a FetchPendingBatch as a whole when none of its items succeeded and every failure is a
 * dependency's (the store down): then nothing was read or reset, and the outage is the call's status (its
 * metrics, the caller's retry) rather than one copy per item. Otherwise failures stay per item: each item
 * resets its device's dropped count as it reads it, so failing the call would discard counts that were
 * already handed out.
 */
function throwIfNothingDone(settled: PromiseSettledResult<unknown>[]): void {
  for (const result of settled) {
    if (result.status === 'fulfilled' || !DEPENDENCY_FAILURES.has(toPushdError(result.reason).code)) return;
  }
  const [first] = settled;
  if (first?.status === 'rejected') throw first.reason;
}

/** The metrics label of an audience kind. */
function audienceLabel(audience: Audience | undefined): string {
  switch (audience?.target?.$case) {
    case 'token':
      return 'token';
    case 'tokenList':
      return 'token_list';
    case 'account':
      return 'account';
    case 'accountList':
      return 'account_list';
    case 'all':
      return 'all';
    case 'tags':
      return 'tags';
    default:
      return 'none';
  }
}

function nonEmpty(field: string, value: string): string {
  if (value === '') throw invalidArgument(field, 'required');
  return value;
}

/** A list of 1 to MAX_LIST_ENTRIES non-empty strings, duplicates removed (first occurrence kept). */
function distinctList(field: string, values: string[]): string[] {
  if (values.length === 0) throw invalidArgument(field, 'at least one is required');
  if (values.length > MAX_LIST_ENTRIES)
    throw invalidArgument(field, `at most ${MAX_LIST_ENTRIES} per call (got ${values.length})`);
  const empty = values.indexOf('');
  if (empty >= 0) throw invalidArgument(`${field}[${empty}]`, 'must not be empty');
  return [...new Set(values)];
}

/** The built-in platform tag a restriction adds to an expression (undefined: both platforms). */
function platformTagOf(platform: Platform): string | undefined {
  switch (platform) {
    case Platform.PLATFORM_UNSPECIFIED:
      return undefined;
    case Platform.PLATFORM_ANDROID:
    case Platform.PLATFORM_IOS:
      return platformTag(platform);
    default:
      throw invalidArgument('platform', 'must be PLATFORM_ANDROID, PLATFORM_IOS or unspecified (both)');
  }
}

/** The key, or undefined when the call has none; INVALID_ARGUMENT when it is empty or too long. */
function validIdempotencyKey(key: string | undefined): string | undefined {
  if (key === undefined) return undefined;
  const chars = [...key].length;
  if (chars === 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS) {
    throw invalidArgument(
      'idempotency_key',
      `must be 1 to ${MAX_IDEMPOTENCY_KEY_CHARS} characters (got ${chars})`,
    );
  }
  return key;
}

/** SCHEDULED, SENDING, ... for messages. */
function pushStatusName(status: PushStatus): string {
  return pushStatusToJSON(status).replace('PUSH_STATUS_', '');
}

/** A device named by a push: its app and token. */
interface DeviceKey {
  accessId: number;
  token: string;
}

/** A cursor the broadcast log accepts (checkSince). */
function isCursor(afterMsgId: number): boolean {
  return Number.isSafeInteger(afterMsgId) && afterMsgId >= 0;
}

/** The entries of a log read past a device's cursor (entries are oldest first, so they are a tail). */
function entriesAfter(read: BroadcastSinceResult, afterMsgId: number): BroadcastSinceResult {
  const first = read.entries.findIndex((entry) => entry.msgId > afterMsgId);
  return { entries: first < 0 ? [] : read.entries.slice(first), lastMsgId: read.lastMsgId };
}

import { type Bus, subjects } from '@pushd/bus';
import { type Clock, invalidArgument, type Logger, PushdError, systemClock } from '@pushd/common';
import {
  type Audience,
  type Device,
  type DispatchServiceService,
  Event,
  EventBatch,
  EventType,
  Message,
  MessageType,
  NodeDelivery,
  Platform,
  type PushMessage,
  type PushRequest,
  type PushResponse,
  PushStatus,
  type RegistryServiceService,
} from '@pushd/proto';
import {
  CallAuthorizer,
  type PromiseClient,
  type ServiceHandlers,
  verifyAppSecretWithRegistry,
} from '@pushd/rpc';
import type { InboxStore, PushStore, RouteStore } from '@pushd/store';
import type { DispatchMetrics } from './metrics.js';

/** The brief's offline window: Android keeps the newest 2 messages, iOS the newest 1. */
export const OFFLINE_CAPACITY: Readonly<Record<Platform, number>> = {
  [Platform.PLATFORM_ANDROID]: 2,
  [Platform.PLATFORM_IOS]: 1,
  [Platform.PLATFORM_UNSPECIFIED]: 1,
};
/** Longest a message is kept for an offline device (the brief: 72 hours), also the default. */
export const MAX_EXPIRE_S = 72 * 3600;
/** Serialized message limit, in UTF-8 bytes (as TPNS). */
export const MAX_MESSAGE_BYTES = 4096;
/** Most tokens in a token_list and accounts in an account_list (the limit, as TPNS). */
export const MAX_LIST_ENTRIES = 1000;
/** Window appends in flight for one push: enough to hide Redis round trips, bounded for fairness. */
const APPEND_CONCURRENCY = 64;

interface ResolvedAudience {
  devices: Device[];
  invalidTokens: string[];
  unknownAccounts: string[];
}

export interface DispatchServiceOptions {
  pushes: PushStore;
  inboxes: InboxStore;
  routes: RouteStore;
  bus: Bus;
  /** Registry client authorized with the cluster token: device lookups and app secret checks. */
  registry: PromiseClient<typeof RegistryServiceService>;
  clusterToken: string;
  metrics: DispatchMetrics;
  logger: Logger;
  /** Default: systemClock. */
  clock?: Clock;
}

/** Accepts pushes: validate, persist, then route (proto/pushd/v1/dispatch.proto). */
export class DispatchService {
  private readonly clock: Clock;
  private readonly authorizer: CallAuthorizer;

  constructor(private readonly options: DispatchServiceOptions) {
    this.clock = options.clock ?? systemClock;
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
          const result = await this.acceptTargeted(accessId, request);
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

      fetchPending: async (request, { metadata }) => {
        await this.authorizer.requireCluster(metadata);
        if (request.token === '') throw invalidArgument('token', 'required');
        const { messages, lastMsgId } = await this.options.inboxes.pending(
          request.accessId,
          request.token,
          request.afterMsgId,
          this.clock.now(),
        );
        return { messages, lastMsgId, lastBroadcastId: 0 };
      },
    };
  }

  /**
   * A push to named devices (a token, a token list, accounts): validate everything, resolve the devices,
   * persist (one window append per device), then route with one publish per gateway node.
   */
  private async acceptTargeted(accessId: number, request: PushRequest): Promise<PushResponse> {
    const content = validateMessage(request.message);
    if (request.expireTimeS > MAX_EXPIRE_S) {
      throw invalidArgument('expire_time_s', `must be at most ${MAX_EXPIRE_S} (72 hours)`);
    }
    if (
      ![Platform.PLATFORM_UNSPECIFIED, Platform.PLATFORM_ANDROID, Platform.PLATFORM_IOS].includes(
        request.platform,
      )
    ) {
      throw invalidArgument('platform', 'must be PLATFORM_ANDROID, PLATFORM_IOS or unspecified (both)');
    }
    const resolved = await this.resolveAudience(accessId, request.audience);
    const devices =
      request.platform === Platform.PLATFORM_UNSPECIFIED
        ? resolved.devices
        : resolved.devices.filter((device) => device.platform === request.platform);

    const now = this.clock.now();
    const ids = await this.options.pushes.nextIds(accessId);
    const { pushId } = ids;
    const template: PushMessage = {
      msgId: ids.msgId,
      pushId,
      message: content,
      sentAtMs: now,
      expiresAtMs: now + (request.expireTimeS || MAX_EXPIRE_S) * 1000,
    };
    // Persist before anything leaves this process. A live publish may be lost (no gateway, a gateway
    // dying); the device then gets the message from its offline window when it reconnects, which is why
    // the windows are written before the routes are read.
    const appended = await mapConcurrently(devices, APPEND_CONCURRENCY, async (device) => {
      const message = { ...template };
      const previousMsgId = await this.appendInOrder(
        accessId,
        device.token,
        message,
        OFFLINE_CAPACITY[device.platform],
        now,
      );
      return { device, message, previousMsgId };
    });
    // One device: the id it actually got (a concurrent push may have made it renumber). Several: the id
    // most of them got.
    const msgId =
      appended.length === 1 && appended[0] !== undefined ? appended[0].message.msgId : template.msgId;
    await this.options.pushes.save({
      accessId,
      pushId,
      msgId,
      status: PushStatus.PUSH_STATUS_SENDING,
      audience: request.audience,
      message: content,
      createdAtMs: now,
      expiresAtMs: template.expiresAtMs,
      target: devices.length,
    });

    await this.route(accessId, appended);
    for (const platform of [Platform.PLATFORM_ANDROID, Platform.PLATFORM_IOS]) {
      const tokens = appended
        .filter((entry) => entry.device.platform === platform)
        .map((entry) => entry.device.token);
      if (tokens.length > 0) await this.publishSent(accessId, pushId, msgId, platform, tokens);
    }
    await this.options.pushes.setStatus(accessId, pushId, PushStatus.PUSH_STATUS_DONE, devices.length);
    return {
      pushId,
      msgId,
      invalidTokens: resolved.invalidTokens,
      unknownAccounts: resolved.unknownAccounts,
      target: devices.length,
    };
  }

  /** The registered devices an audience names, and what it named that is not registered. */
  private async resolveAudience(accessId: number, audience: Audience | undefined): Promise<ResolvedAudience> {
    const target = audience?.target;
    const registry = this.options.registry;
    switch (target?.$case) {
      case 'token': {
        if (target.value === '') throw invalidArgument('audience.token', 'required');
        const { device } = await registry.getDevice({ accessId, token: target.value });
        if (device === undefined) throw new PushdError('INTERNAL', 'registry returned no device');
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
        throw invalidArgument('audience', 'set one of token, token_list, account, account_list');
    }
  }

  /** Registered devices among tokens, through the registry's batch lookup (1,000 per call). */
  private async lookUpDevices(accessId: number, tokens: string[]): Promise<Device[]> {
    const chunks: string[][] = [];
    for (let start = 0; start < tokens.length; start += MAX_LIST_ENTRIES)
      chunks.push(tokens.slice(start, start + MAX_LIST_ENTRIES));
    const found = await mapConcurrently(
      chunks,
      4,
      async (chunk) => (await this.options.registry.getDevices({ accessId, tokens: chunk })).devices,
    );
    return found.flat();
  }

  /**
   * One publish per gateway node (and message id), however many of its devices the push targets; devices
   * without a route are offline and keep the message in their windows.
   */
  private async route(
    accessId: number,
    appended: { device: Device; message: PushMessage; previousMsgId: number }[],
  ): Promise<void> {
    if (appended.length === 0) return;
    const routes = await this.options.routes.getMany(
      accessId,
      appended.map((entry) => entry.device.token),
    );
    const batches = new Map<
      string,
      { nodeId: string; message: PushMessage; tokens: string[]; previousMsgIds: number[] }
    >();
    appended.forEach((entry, index) => {
      const route = routes[index];
      if (route === undefined) return;
      const key = `${route.nodeId}:${entry.message.msgId}`;
      let batch = batches.get(key);
      if (batch === undefined) {
        batch = { nodeId: route.nodeId, message: entry.message, tokens: [], previousMsgIds: [] };
        batches.set(key, batch);
      }
      batch.tokens.push(entry.device.token);
      batch.previousMsgIds.push(entry.previousMsgId);
    });
    for (const batch of batches.values()) {
      const delivery = NodeDelivery.encode({
        accessId,
        tokens: batch.tokens,
        message: batch.message,
        previousMsgIds: batch.previousMsgIds,
        previousBroadcastId: 0,
      }).finish();
      this.options.bus.publish(subjects.nodeDelivery(batch.nodeId), delivery);
    }
    const online = routes.filter((route) => route !== undefined).length;
    if (online > 0) this.options.metrics.routed.inc({ route: 'online' }, online);
    if (appended.length > online)
      this.options.metrics.routed.inc({ route: 'offline' }, appended.length - online);
  }

  /**
   * Appends to the device's window so that windows only ever grow in msg_id order: when a concurrent push
   * to the same device got a higher id and appended first, this one takes a fresh id (above every id handed
   * out so far) and appends again. Mutates message.msgId; returns the previous msg_id of the window.
   */
  private async appendInOrder(
    accessId: number,
    token: string,
    message: PushMessage,
    capacity: number,
    now: number,
  ): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const result = await this.options.inboxes.append(accessId, token, message, capacity, now);
      if (result.appended) return result.previousMsgId;
      if (attempt >= 10) {
        throw new PushdError(
          'UNAVAILABLE',
          `could not order message for ${token} after ${attempt} attempts; retry`,
        );
      }
      this.options.metrics.appendRetries.inc();
      message.msgId = await this.options.pushes.nextMsgId(accessId);
    }
  }

  /**
   * Counts the push as sent for these devices. The push is already persisted and routed, so a failure here
   * must not fail the call (a retry would send it twice): it is logged and counted for alerting.
   */
  private async publishSent(
    accessId: number,
    pushId: string,
    msgId: number,
    platform: Platform,
    tokens: string[],
  ): Promise<void> {
    const event = Event.create({
      type: EventType.EVENT_TYPE_SENT,
      accessId,
      pushId,
      msgId,
      platform,
      tokens,
      atMs: this.clock.now(),
    });
    try {
      await this.options.bus.publishDurable(
        subjects.events('dispatch'),
        EventBatch.encode({ events: [event] }).finish(),
      );
    } catch (error) {
      this.options.metrics.eventPublishFailures.inc();
      this.options.logger.error({ err: error, accessId, pushId }, 'publishing the sent event failed');
    }
  }
}

/** Checks the content against the API's rules and returns it. */
export function validateMessage(message: Message | undefined): Message {
  if (message === undefined) throw invalidArgument('message', 'required');
  if (message.type === MessageType.MESSAGE_TYPE_NOTIFY) {
    if (message.content === '') throw invalidArgument('message.content', 'required for a notification');
  } else if (message.type === MessageType.MESSAGE_TYPE_MESSAGE) {
    if (message.content === '' && Object.keys(message.customContent).length === 0) {
      throw invalidArgument('message', 'a pass-through message needs content or custom_content');
    }
  } else {
    throw invalidArgument('message.type', 'must be MESSAGE_TYPE_NOTIFY or MESSAGE_TYPE_MESSAGE');
  }
  const size = Message.encode(message).finish().length;
  if (size > MAX_MESSAGE_BYTES) {
    throw new PushdError(
      'PAYLOAD_TOO_LARGE',
      `message is ${size} bytes serialized; the limit is ${MAX_MESSAGE_BYTES}`,
      {
        metadata: { limit: String(MAX_MESSAGE_BYTES), size: String(size) },
      },
    );
  }
  return message;
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

/** Maps with at most `limit` calls in flight, results in input order. */
async function mapConcurrently<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

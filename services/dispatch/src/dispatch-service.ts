import { type Bus, subjects } from '@pushd/bus';
import { type Clock, invalidArgument, type Logger, PushdError, systemClock } from '@pushd/common';
import {
  type DispatchServiceService,
  Event,
  EventBatch,
  EventType,
  Message,
  MessageType,
  NodeDelivery,
  Platform,
  type PushMessage,
  type PushRecord,
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
        const stop = this.options.metrics.pushDuration.startTimer();
        try {
          const result = await this.pushToToken(
            accessId,
            request.audience,
            request.message,
            request.expireTimeS,
          );
          this.options.metrics.pushes.inc({ audience: 'token', outcome: 'accepted' });
          return result;
        } catch (error) {
          const code = error instanceof PushdError ? error.code : 'INTERNAL';
          this.options.metrics.pushes.inc({ audience: 'token', outcome: code });
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
        return { messages, lastMsgId };
      },
    };
  }

  private async pushToToken(
    accessId: number,
    audience: PushRecord['audience'],
    message: Message | undefined,
    expireTimeS: number,
  ): Promise<{ pushId: string; msgId: number }> {
    const target = audience?.target;
    if (target === undefined || target.$case !== 'token' || target.value === '') {
      throw invalidArgument('audience.token', 'required');
    }
    const content = validateMessage(message);
    if (expireTimeS > MAX_EXPIRE_S)
      throw invalidArgument('expire_time_s', `must be at most ${MAX_EXPIRE_S} (72 hours)`);
    const token = target.value;
    const { device } = await this.options.registry.getDevice({ accessId, token });
    if (device === undefined) throw new PushdError('INTERNAL', 'registry returned no device');

    const now = this.clock.now();
    const ids = await this.options.pushes.nextIds(accessId);
    const { pushId } = ids;
    const pushMessage: PushMessage = {
      msgId: ids.msgId,
      pushId,
      message: content,
      sentAtMs: now,
      expiresAtMs: now + (expireTimeS || MAX_EXPIRE_S) * 1000,
    };
    // Persist before anything leaves this process. A live publish may be lost (no gateway, a gateway
    // dying); the device then gets the message from its offline window when it reconnects, which is why
    // the window is written before the route is read.
    const previousMsgId = await this.appendInOrder(
      accessId,
      token,
      pushMessage,
      OFFLINE_CAPACITY[device.platform],
      now,
    );
    const msgId = pushMessage.msgId;
    await this.options.pushes.save({
      accessId,
      pushId,
      msgId,
      status: PushStatus.PUSH_STATUS_SENDING,
      audience: { target: { $case: 'token', value: token } },
      message: content,
      createdAtMs: now,
      expiresAtMs: pushMessage.expiresAtMs,
      target: 1,
    });

    const route = await this.options.routes.get(accessId, token);
    if (route !== undefined) {
      const delivery = NodeDelivery.encode({
        accessId,
        tokens: [token],
        message: pushMessage,
        previousMsgIds: [previousMsgId],
      }).finish();
      this.options.bus.publish(subjects.nodeDelivery(route.nodeId), delivery);
    }
    this.options.metrics.routed.inc({ route: route === undefined ? 'offline' : 'online' });

    await this.publishSent(accessId, pushId, msgId, device.platform, [token]);
    await this.options.pushes.setStatus(accessId, pushId, PushStatus.PUSH_STATUS_DONE, 1);
    return { pushId, msgId };
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

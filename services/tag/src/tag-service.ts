import { type AudienceExpr, builtinTag, fromProto, normalize, validateExpressionTag } from '@pushd/audience';
import { type Bus, type DurableConsumer, streams, subjects } from '@pushd/bus';
import { type Clock, invalidArgument, type Logger, PushdError, systemClock } from '@pushd/common';
import {
  type Device,
  DeviceTagsChanged,
  decodeEvents,
  encodeMessage,
  Platform,
  type RegistryServiceService,
  type TagServiceService,
} from '@pushd/proto';
import {
  CallAuthorizer,
  type PromiseClient,
  type ServiceHandlers,
  verifyAppSecretWithRegistry,
} from '@pushd/rpc';
import {
  type AudienceIndex,
  isAttributeTag,
  MemoryAudienceIndex,
  platformTag,
  type RouteStore,
  type TagDevice,
  type TagLimits,
  type TagStore,
  type TagWrite,
} from '@pushd/store';
import { AudienceEvents } from './audience-events.js';

/** The brief's limit: at most 100 tags per device. */
export const MAX_TAGS_PER_DEVICE = 100;

/** The brief's limit: at most 10,000 distinct tags per app. */
export const MAX_TAGS_PER_APP = 10_000;

/** Tokens one batch call may name. */
export const MAX_TOKENS_PER_BATCH = 1_000;

/** Reserved for built-in attribute tags (platform, version...), which cannot be set by hand. */
export const RESERVED_TAG_PREFIX = 'pushd:';

/**
 * The built-in tags of a device's location (ReportLocation), kept in its tag set by the tag store as
 * attribute tags: outside the user tag limits and counts, left alone by the user tag calls.
 */
const LOCATION_PREFIXES = [builtinTag('province', ''), builtinTag('city', '')];

const TAG_MAX_CHARS = 50;
const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1_000;

export interface TagServiceOptions {
  tags: TagStore;
  /**
   * The audience index the service keeps current and counts from; deployments pass the shared store.
   * Default: an index of its own in memory (for tests that do not look at counts).
   */
  audience?: AudienceIndex;
  bus: Bus;
  /** Where devices are connected: a tag change is announced to the gateways holding the devices. */
  routes: RouteStore;
  /** Registry client authorized with the cluster token: app secret checks, device lookups. */
  registry: PromiseClient<typeof RegistryServiceService>;
  clusterToken: string;
  logger: Logger;
  /** Dates `pushd:active:<N>d` in counts. Default: systemClock. */
  clock?: Clock;
  /** Default: 100 per device, 10,000 per app (the brief's). */
  limits?: Partial<TagLimits>;
}

/** Tags of devices and audience counts (proto/pushd/v1/tag.proto). */
export class TagService {
  private readonly authorizer: CallAuthorizer;
  private readonly audience: AudienceIndex;
  private readonly clock: Clock;
  private readonly limits: TagLimits;
  private consumer: DurableConsumer | undefined;

  constructor(private readonly options: TagServiceOptions) {
    this.authorizer = new CallAuthorizer({
      clusterToken: options.clusterToken,
      verifyAppSecret: verifyAppSecretWithRegistry(options.registry),
    });
    this.audience = options.audience ?? new MemoryAudienceIndex();
    this.clock = options.clock ?? systemClock;
    this.limits = {
      perDevice: options.limits?.perDevice ?? MAX_TAGS_PER_DEVICE,
      perApp: options.limits?.perApp ?? MAX_TAGS_PER_APP,
    };
  }

  handlers(): ServiceHandlers<typeof TagServiceService> {
    const { tags } = this.options;
    const audience = this.audience;
    const limits = this.limits;
    const app = (metadata: Parameters<CallAuthorizer['requireApp']>[0], accessId: number) =>
      this.authorizer.requireApp(metadata, accessId);
    return {
      addTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const names = validateTags(request.tags);
        const device = await this.device(accessId, request.token);
        const change = single(requireWritten(await tags.add(accessId, [device], names, limits), limits));
        await audience.setTags(accessId, device.index, names, []);
        await this.announce(accessId, [device.token]);
        return { count: change.count };
      },

      removeTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const names = validateTags(request.tags);
        const device = await this.device(accessId, request.token);
        const change = single(await tags.remove(accessId, [device], names));
        // Every named tag, not only those the store removed: a call retried after a crash repairs bits.
        await audience.setTags(accessId, device.index, [], names);
        await this.announce(accessId, [device.token]);
        return { count: change.count };
      },

      listTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const device = await this.device(accessId, request.token);
        // The set also holds the device's location tags; like every built-in tag they are not listed
        // (and a ListTags + SetTags round trip must not trip over the reserved prefix).
        const held = await tags.list(accessId, device.token, device.index);
        return { tags: held.filter((tag) => !isAttributeTag(tag)) };
      },

      setTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const names = validateTags(request.tags, { allowNone: true });
        const device = await this.device(accessId, request.token);
        const change = single(requireWritten(await tags.replace(accessId, device, names, limits), limits));
        await audience.setTags(accessId, device.index, names, change.removed);
        await this.announce(accessId, [device.token]);
        return { count: change.count };
      },

      clearTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const device = await this.device(accessId, request.token);
        const change = single(await tags.clear(accessId, device));
        await audience.setTags(accessId, device.index, [], change.removed);
        await this.announce(accessId, [device.token]);
        return { removed: change.removed.length };
      },

      batchAddTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const tokens = validateTokens(request.tokens);
        const names = validateTags(request.tags);
        const { devices, unknown } = await this.devices(accessId, tokens);
        const written = requireWritten(await tags.add(accessId, devices, names, limits), limits);
        await audience.setTags(accessId, indexesOf(devices, written.changes), names, []);
        await this.announce(
          accessId,
          devices.map((device) => device.token),
        );
        return {
          unknownTokens: [...unknown, ...written.stale],
          changed: written.changes.filter((change) => change.added.length > 0).length,
        };
      },

      batchRemoveTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const tokens = validateTokens(request.tokens);
        const names = validateTags(request.tags);
        const { devices, unknown } = await this.devices(accessId, tokens);
        const { changes, stale } = await tags.remove(accessId, devices, names);
        await audience.setTags(accessId, indexesOf(devices, changes), [], names);
        await this.announce(
          accessId,
          devices.map((device) => device.token),
        );
        return {
          unknownTokens: [...unknown, ...stale],
          changed: changes.filter((change) => change.removed.length > 0).length,
        };
      },

      listAppTags: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const pageSize = request.pageSize === 0 ? DEFAULT_PAGE_SIZE : request.pageSize;
        if (pageSize > MAX_PAGE_SIZE) {
          throw invalidArgument('page_size', `at most ${MAX_PAGE_SIZE} (0 means ${DEFAULT_PAGE_SIZE})`);
        }
        const after = request.pageToken === '' ? undefined : decodePageToken(request.pageToken);
        // One more than the page: whether there is a next page without a second read.
        const page = await tags.appTags(accessId, { after, limit: pageSize + 1 });
        const shown = page.tags.slice(0, pageSize);
        return {
          tags: shown,
          nextPageToken: page.tags.length > pageSize ? encodePageToken(shown[shown.length - 1]!.tag) : '',
          total: page.total,
        };
      },

      reportLocation: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        const location = locationTags(request.province, request.city);
        const device = await this.device(accessId, request.token);
        const change = single(await tags.setAttributes(accessId, device, LOCATION_PREFIXES, location));
        // Every location tag, not only the added ones: a report repeated after a crash repairs bits.
        await audience.setTags(accessId, device.index, location, change.removed);
        await this.announce(accessId, [device.token]);
        return {};
      },

      countAudience: async (request, { metadata }) => {
        const accessId = await app(metadata, request.accessId);
        let expr: AudienceExpr =
          request.expression === undefined ? { kind: 'all' } : fromProto(request.expression, 'expression');
        if (request.platform !== Platform.PLATFORM_UNSPECIFIED) {
          const tag = platformTag(request.platform);
          if (tag === undefined) {
            throw invalidArgument('platform', 'must be PLATFORM_ANDROID, PLATFORM_IOS or unspecified (both)');
          }
          expr = { kind: 'and', terms: [expr, { kind: 'tag', tag }] };
        }
        return audience.count(accessId, normalize(expr), this.clock.now());
      },
    };
  }

  /**
   * Tells the gateways holding these devices that their tags changed, so that tag pushes are evaluated on
   * the new ones. The tags are already stored: a failure here is logged, not returned (the device's next
   * connection loads them anyway).
   */
  private async announce(accessId: number, tokens: string[]): Promise<void> {
    try {
      const routes = await this.options.routes.getMany(accessId, tokens);
      const byNode = new Map<string, string[]>();
      routes.forEach((route, index) => {
        if (route === undefined) return;
        const held = byNode.get(route.nodeId) ?? [];
        held.push(tokens[index] as string);
        byNode.set(route.nodeId, held);
      });
      for (const [nodeId, held] of byNode) {
        this.options.bus.publish(
          subjects.nodeTags(nodeId),
          encodeMessage(DeviceTagsChanged, { accessId, tokens: held }),
        );
      }
    } catch (error) {
      this.options.logger.warn({ err: error, accessId }, 'announcing a tag change to gateways failed');
    }
  }

  /**
   * Keeps the audience index current from registry and gateway events (audience-events.ts); an
   * unregistration also forgets the device's tags.
   */
  startConsuming(): void {
    const events = new AudienceEvents({
      tags: this.options.tags,
      audience: this.audience,
      logger: this.options.logger,
    });
    this.consumer = this.options.bus.consume({
      stream: streams.events.name,
      consumer: 'tag',
      handler: async (data) => {
        // A failure rejects the whole batch, which comes again; applying an event twice changes nothing.
        for (const event of decodeEvents(data, this.options.logger)?.events ?? []) await events.apply(event);
      },
    });
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }

  private async device(accessId: number, token: string): Promise<TagDevice> {
    if (token === '') throw invalidArgument('token', 'required');
    const { device } = await this.options.registry.getDevice({ accessId, token });
    return { token, index: requireIndex(device, token) };
  }

  /** The registered devices among `tokens`, and the others. */
  private async devices(
    accessId: number,
    tokens: string[],
  ): Promise<{ devices: TagDevice[]; unknown: string[] }> {
    const { devices: found } = await this.options.registry.getDevices({ accessId, tokens });
    const indexes = new Map<string, number>();
    for (const device of found) if (device.index !== undefined) indexes.set(device.token, device.index);
    const devices: TagDevice[] = [];
    const unknown: string[] = [];
    for (const token of tokens) {
      const index = indexes.get(token);
      if (index === undefined) unknown.push(token);
      else devices.push({ token, index });
    }
    return { devices, unknown };
  }
}

/** Tag names: 1 to 50 characters, no whitespace or control characters, not in the reserved namespace. */
export function validateTags(tags: string[], options: { allowNone?: boolean } = {}): string[] {
  if (tags.length === 0 && !options.allowNone) throw invalidArgument('tags', 'at least one tag is required');
  if (tags.length > MAX_TAGS_PER_DEVICE) {
    throw invalidArgument('tags', `at most ${MAX_TAGS_PER_DEVICE} tags per call (the per-device limit)`);
  }
  for (const tag of tags) {
    if (tag.length < 1 || tag.length > TAG_MAX_CHARS || /[\s\p{Cc}]/u.test(tag)) {
      throw invalidArgument(
        'tags',
        `${JSON.stringify(tag)} must be 1 to ${TAG_MAX_CHARS} characters without whitespace`,
      );
    }
    if (tag.startsWith(RESERVED_TAG_PREFIX)) {
      throw invalidArgument(
        'tags',
        `${JSON.stringify(tag)} uses the reserved prefix "${RESERVED_TAG_PREFIX}": built-in tags are kept by pushd and cannot be set or removed by hand`,
      );
    }
  }
  return [...new Set(tags)];
}

/**
 * The built-in tags of a reported location: `pushd:province:<province>` and `pushd:city:<city>`, each only
 * when given. A value must be a valid built-in tag value (at most 50 characters, no whitespace or control
 * characters), so that any location a device reports can be named in an expression.
 */
export function locationTags(province: string, city: string): string[] {
  const tags: string[] = [];
  for (const [field, value] of [
    ['province', province],
    ['city', city],
  ] as const) {
    if (value === '') continue;
    const tag = builtinTag(field, value);
    validateExpressionTag(tag, field);
    tags.push(tag);
  }
  return tags;
}

function validateTokens(tokens: string[]): string[] {
  if (tokens.length === 0) throw invalidArgument('tokens', 'at least one token is required');
  if (tokens.length > MAX_TOKENS_PER_BATCH) {
    throw invalidArgument('tokens', `at most ${MAX_TOKENS_PER_BATCH} tokens per call`);
  }
  if (tokens.some((token) => token === '')) throw invalidArgument('tokens', 'tokens must not be empty');
  return [...new Set(tokens)];
}

function requireIndex(device: Device | undefined, token: string): number {
  if (device?.index === undefined) {
    // Only a device stored before indexes existed; its next registration gives it one.
    throw new PushdError('UNAVAILABLE', `device ${token} has no audience index yet; it must register again`);
  }
  return device.index;
}

/** The applied write, or TAG_LIMIT_EXCEEDED naming the limit when the store refused the call. */
function requireWritten(result: TagWrite, limits: TagLimits): Extract<TagWrite, { ok: true }> {
  if (result.ok) return result;
  if (result.limit === 'per_device') {
    throw new PushdError(
      'TAG_LIMIT_EXCEEDED',
      `a device may have at most ${limits.perDevice} tags; this call would give device ${result.token} ${result.wouldHave}`,
      {
        metadata: {
          limit: 'per_device',
          max: String(limits.perDevice),
          would_have: String(result.wouldHave),
          token: result.token,
        },
      },
    );
  }
  throw new PushdError(
    'TAG_LIMIT_EXCEEDED',
    `an app may use at most ${limits.perApp} distinct tags; this call would make it ${result.wouldHave}`,
    { metadata: { limit: 'per_app', max: String(limits.perApp), would_have: String(result.wouldHave) } },
  );
}

/** The one device of a single-device call; a device that registered again meanwhile is retried by the caller. */
function single<
  T extends { changes: { token: string; count: number; removed: string[] }[]; stale: string[] },
>(result: T): T['changes'][number] {
  const change = result.changes[0];
  if (change === undefined) {
    throw new PushdError('UNAVAILABLE', 'the device registered again during the call; retry');
  }
  return change;
}

function indexesOf(devices: TagDevice[], changes: { token: string }[]): number[] {
  const indexes = new Map(devices.map((device) => [device.token, device.index]));
  return changes.map((change) => indexes.get(change.token)!);
}

function encodePageToken(tag: string): string {
  return Buffer.from(tag, 'utf8').toString('base64url');
}

function decodePageToken(token: string): string {
  const tag = Buffer.from(token, 'base64url').toString('utf8');
  if (tag === '' || encodePageToken(tag) !== token)
    throw invalidArgument('page_token', 'not a token of this call');
  return tag;
}

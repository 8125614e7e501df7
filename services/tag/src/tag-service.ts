import { type Bus, type DurableConsumer, streams } from '@pushd/bus';
import { invalidArgument, type Logger, PushdError } from '@pushd/common';
import { EventBatch, EventType, type RegistryServiceService, type TagServiceService } from '@pushd/proto';
import {
  CallAuthorizer,
  type PromiseClient,
  type ServiceHandlers,
  verifyAppSecretWithRegistry,
} from '@pushd/rpc';
import type { TagStore } from '@pushd/store';

/** The brief's limit: at most 100 tags per device. */
export const MAX_TAGS_PER_DEVICE = 100;
/** Reserved for built-in attribute tags (platform, version...), which cannot be set by hand. */
export const RESERVED_TAG_PREFIX = 'pushd:';
const TAG_MAX_CHARS = 50;

export interface TagServiceOptions {
  tags: TagStore;
  bus: Bus;
  /** Registry client authorized with the cluster token: app secret checks, device existence. */
  registry: PromiseClient<typeof RegistryServiceService>;
  clusterToken: string;
  logger: Logger;
}

/** Tags of devices (proto/pushd/v1/tag.proto). */
export class TagService {
  private readonly authorizer: CallAuthorizer;
  private consumer: DurableConsumer | undefined;

  constructor(private readonly options: TagServiceOptions) {
    this.authorizer = new CallAuthorizer({
      clusterToken: options.clusterToken,
      verifyAppSecret: verifyAppSecretWithRegistry(options.registry),
    });
  }

  handlers(): ServiceHandlers<typeof TagServiceService> {
    const { tags, registry } = this.options;
    const requireDevice = async (accessId: number, token: string) => {
      if (token === '') throw invalidArgument('token', 'required');
      await registry.getDevice({ accessId, token });
    };
    return {
      addTags: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        const names = validateTags(request.tags);
        await requireDevice(accessId, request.token);
        const result = await tags.add(accessId, request.token, names, MAX_TAGS_PER_DEVICE);
        if (!result.ok) {
          throw new PushdError(
            'TAG_LIMIT_EXCEEDED',
            `a device may have at most ${MAX_TAGS_PER_DEVICE} tags; this call would give it ${result.wouldHave}`,
            { metadata: { limit: String(MAX_TAGS_PER_DEVICE), would_have: String(result.wouldHave) } },
          );
        }
        return { count: result.count };
      },
      removeTags: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        const names = validateTags(request.tags);
        await requireDevice(accessId, request.token);
        return { count: await tags.remove(accessId, request.token, names) };
      },
      listTags: async (request, { metadata }) => {
        const accessId = await this.authorizer.requireApp(metadata, request.accessId);
        await requireDevice(accessId, request.token);
        return { tags: await tags.list(accessId, request.token) };
      },
    };
  }

  /** Forgets the tags of unregistered devices. */
  startConsuming(): void {
    this.consumer = this.options.bus.consume({
      stream: streams.events.name,
      consumer: 'tag',
      handler: async (data) => {
        for (const event of EventBatch.decode(data).events) {
          if (event.type === EventType.EVENT_TYPE_UNREGISTERED)
            await this.options.tags.clear(event.accessId, event.token);
        }
      },
    });
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }
}

/** Tag names: 1 to 50 characters, no whitespace or control characters, not in the reserved namespace. */
export function validateTags(tags: string[]): string[] {
  if (tags.length === 0) throw invalidArgument('tags', 'at least one tag is required');
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
        `${JSON.stringify(tag)} uses the reserved prefix "${RESERVED_TAG_PREFIX}"`,
      );
    }
  }
  return [...new Set(tags)];
}

export { AudienceEvents, type AudienceEventsOptions, builtinTagsOf } from './audience-events.js';
export { tagEnv } from './env.js';
export {
  MAX_TAGS_PER_APP,
  MAX_TAGS_PER_DEVICE,
  MAX_TOKENS_PER_BATCH,
  RESERVED_TAG_PREFIX,
  TagService,
  type TagServiceOptions,
  validateTags,
} from './tag-service.js';

export { tagEnv } from './env.js';
export {
  MAX_TAGS_PER_DEVICE,
  RESERVED_TAG_PREFIX,
  TagService,
  type TagServiceOptions,
  validateTags,
} from './tag-service.js';

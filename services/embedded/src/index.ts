export {
  EMBEDDED_DEFAULT_PORTS,
  type EmbeddedOptions,
  type EmbeddedPorts,
  type EmbeddedSystem,
  startEmbedded,
} from './embedded.js';
export { DEV_CLUSTER_TOKEN } from './env.js';

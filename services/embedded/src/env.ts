import { envField } from '@pushd/common';
import { z } from 'zod';
import { EMBEDDED_DEFAULT_PORTS } from './embedded.js';

/** The well-known token of a first try on one machine; the banner warns when it is in use. */
export const DEV_CLUSTER_TOKEN = 'dev-cluster-token-change-me';

export const embeddedEnv = z.object({
  LOG_LEVEL: envField.logLevel().default('warn'),
  /** Shared secret for admin calls (pushctl app create). Default: DEV_CLUSTER_TOKEN, for a first try only. */
  CLUSTER_TOKEN: envField.clusterToken().default(DEV_CLUSTER_TOKEN),
  /**
   * Interface every port binds. Default: 127.0.0.1, this machine only: a first try runs with the
   * well-known cluster token, which authorizes every admin and push call (the container image sets
   * 0.0.0.0, behind its published ports).
   */
  HOST: envField.host('127.0.0.1'),
  WS_PORT: envField.port(EMBEDDED_DEFAULT_PORTS.websocket),
  OPS_PORT: envField.port(EMBEDDED_DEFAULT_PORTS.ops),
  REGISTRY_GRPC_PORT: envField.port(EMBEDDED_DEFAULT_PORTS.registry),
  TAG_GRPC_PORT: envField.port(EMBEDDED_DEFAULT_PORTS.tag),
  DISPATCH_GRPC_PORT: envField.port(EMBEDDED_DEFAULT_PORTS.dispatch),
  STATS_GRPC_PORT: envField.port(EMBEDDED_DEFAULT_PORTS.stats),
});

// `pnpm start`: the whole system in one process on the in-memory bus and stores, for a first try.
import { stopOnSignals } from '@pushd/common';
import { bootstrap } from '@pushd/runtime';
import { startEmbedded } from './embedded.js';
import { DEV_CLUSTER_TOKEN, embeddedEnv } from './env.js';

const { env, logger } = bootstrap('pushd', embeddedEnv);
const system = await startEmbedded({
  host: env.HOST,
  clusterToken: env.CLUSTER_TOKEN,
  logger,
  ports: {
    websocket: env.WS_PORT,
    ops: env.OPS_PORT,
    registry: env.REGISTRY_GRPC_PORT,
    tag: env.TAG_GRPC_PORT,
    dispatch: env.DISPATCH_GRPC_PORT,
    stats: env.STATS_GRPC_PORT,
  },
}).catch((error: unknown) => {
  logger.fatal({ err: error }, 'could not start (is another pushd already running on these ports?)');
  process.exit(1);
});

const { ports } = system;
process.stdout.write(`
pushd is running in embedded mode (one process, in-memory bus and store: nothing survives a restart).

  devices (WebSocket)   ws://localhost:${ports.websocket}/v1/ws
  registry  (gRPC)      localhost:${ports.registry}
  tag       (gRPC)      localhost:${ports.tag}
  dispatch  (gRPC)      localhost:${ports.dispatch}
  stats     (gRPC)      localhost:${ports.stats}
  metrics               http://localhost:${ports.ops}/metrics   (health: /healthz, /readyz)
  listening on          ${env.HOST}${env.HOST === '127.0.0.1' ? '  (this machine only; HOST=0.0.0.0 opens it to the network)' : ''}
${env.CLUSTER_TOKEN === DEV_CLUSTER_TOKEN ? `\n  cluster token         ${DEV_CLUSTER_TOKEN}  (the default: set CLUSTER_TOKEN outside a first try)\n` : ''}
Next, in another terminal:
  npx --yes pnpm@12.4.2 pushctl app create --name demo
  npx --yes pnpm@12.4.2 pushctl device
  npx --yes pnpm@12.4.2 pushctl push --title Hello --content "first push"

Ctrl-C stops.
`);
stopOnSignals([{ name: 'pushd', stop: () => system.stop() }], logger);

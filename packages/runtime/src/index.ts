export {
  bootstrap,
  clusterClient,
  connectNats,
  connectRedis,
  run,
  type ServiceProcess,
  type StartableComponent,
} from './process.js';

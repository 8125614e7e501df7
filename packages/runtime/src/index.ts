export {
  bootstrap,
  clientsComponent,
  clusterClient,
  connectNats,
  connectRedis,
  run,
  type ServiceProcess,
  type StartableComponent,
} from './process.js';

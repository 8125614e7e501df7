export { freePort, waitFor, waitForPort } from './ports.js';
export {
  type NatsTestCluster,
  type NatsTestServer,
  requireBinary,
  startNatsCluster,
  startNatsServer,
  startRedisCluster,
  startRedisServer,
  type TestServer,
} from './servers.js';
export {
  type ServiceProcess,
  type ServiceProcessOptions,
  signalGroup,
  startServiceProcess,
} from './service-process.js';

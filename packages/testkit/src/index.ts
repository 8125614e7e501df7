export { freePort, waitFor, waitForPort } from './ports.js';
export {
  type NatsTestServer,
  requireBinary,
  startNatsServer,
  startRedisServer,
  type TestServer,
} from './servers.js';

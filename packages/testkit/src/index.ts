export { freePort, waitFor, waitForPort } from './ports.js';
export { requireBinary, startNatsServer, startRedisServer, type TestServer } from './servers.js';

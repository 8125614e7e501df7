export { gatewayEnv } from './env.js';
export { Gateway, type GatewayOptions } from './gateway.js';
export { type Handshake, type HandshakeAuth, negotiateEncoding, parseHandshake } from './handshake.js';
export { createGatewayMetrics, type GatewayMetrics } from './metrics.js';

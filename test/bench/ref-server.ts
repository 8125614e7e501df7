// The reference: a bare `ws` server that only accepts. It authenticates nothing, keeps no per-connection
// state of its own and never looks anything up; it answers each connection with one precomputed
// Connected frame so that the same DeviceClient harness can complete its connect() against it. Its
// figures are what Node.js + ws cost on this machine, the floor the gateway is compared with.
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { encodeServerFrame, encodingOfSubprotocol, type ServerFrame } from '@pushd/proto';
import { type WebSocket, WebSocketServer } from 'ws';
import { serveCalls } from './children.js';

const connected: ServerFrame = {
  id: 0,
  body: {
    $case: 'connected',
    value: { token: 'reference', sessionId: 'reference', heartbeatIntervalMs: 0, maxFrameBytes: 16_384 },
  },
};
const frames = {
  proto: encodeServerFrame(connected, 'proto'),
  json: encodeServerFrame(connected, 'json'),
};

let open = 0;
// The gateway's WebSocketServer options, so that the comparison is about what the gateway adds.
const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: 16_384,
  clientTracking: false,
  handleProtocols: (offered) => {
    for (const name of offered) if (encodingOfSubprotocol(name) !== undefined) return name;
    return false;
  },
});
const server = createServer((_request, response) => {
  response.writeHead(426);
  response.end();
});

function onSocketError(): void {}
function onSocketClose(): void {
  open--;
}

server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
  socket.on('error', () => socket.destroy());
  wss.handleUpgrade(request, socket, head, (ws: WebSocket) => {
    open++;
    ws.on('error', onSocketError);
    ws.on('close', onSocketClose);
    const data = encodingOfSubprotocol(ws.protocol) === 'json' ? frames.json : frames.proto;
    ws.send(data, { binary: typeof data !== 'string' });
  });
});

serveCalls({
  listen: (args: { host: string }) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, args.host, () => resolve((server.address() as AddressInfo).port));
    }),
  stats: () => ({ open, memory: process.memoryUsage() }),
});

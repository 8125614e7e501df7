// The fanout reference: a bare `ws` server (the gateway's WebSocketServer options) that accepts devices,
// answers each with one precomputed Connected frame so that the same DeviceClient harness can connect to
// it, and on `broadcast` builds one Deliver frame (the same PushMessage shape and notification the gateway
// delivers) and writes that one pre-built frame to every socket. It authenticates nothing, evaluates
// nothing, keeps no chain, counts no event, and drops the devices' acks unread: the floor of Node.js + ws
// writing a broadcast on this machine, which the gateway's fanout is compared with.
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { encodeServerFrame, encodingOfSubprotocol, type ServerFrame } from '@pushd/proto';
import { type WebSocket, WebSocketServer } from 'ws';
import { serveCalls } from './children.js';
import { notification, nowMs } from './fanout-message.js';

const connected: ServerFrame = {
  id: 0,
  body: {
    $case: 'connected',
    value: { token: 'reference', sessionId: 'reference', heartbeatIntervalMs: 0, maxFrameBytes: 16_384 },
  },
};
const connectedFrames = {
  proto: encodeServerFrame(connected, 'proto'),
  json: encodeServerFrame(connected, 'json'),
};

const sockets = new Set<WebSocket>();
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
function onSocketClose(this: WebSocket): void {
  sockets.delete(this);
}

server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
  socket.on('error', () => socket.destroy());
  wss.handleUpgrade(request, socket, head, (ws: WebSocket) => {
    sockets.add(ws);
    ws.on('error', onSocketError);
    ws.on('close', onSocketClose);
    const json = encodingOfSubprotocol(ws.protocol) === 'json';
    ws.send(json ? connectedFrames.json : connectedFrames.proto, { binary: !json });
  });
});

/** The Deliver frame of broadcast `seq` published at `t`: the shape the gateway writes for a live message. */
function frameOf(seq: number, t: number): ServerFrame {
  return {
    id: 0,
    body: {
      $case: 'deliver',
      value: {
        messages: [
          {
            msgId: seq,
            pushId: 'reference-push-0000000000',
            message: notification(seq, t),
            sentAtMs: Math.floor(t),
            expiresAtMs: Math.floor(t) + 72 * 3_600_000,
          },
        ],
      },
    },
  };
}

/**
 * One broadcast: the frame is encoded once (per encoding), then written to every open socket. `seq` is
 * also the msg_id (increasing, as the SDK requires); `t` is when the harness published it.
 */
function broadcast(args: { seq: number; t: number }): { sockets: number; writeMs: number } {
  const started = performance.now();
  const frame = frameOf(args.seq, args.t);
  const proto = encodeServerFrame(frame, 'proto') as Uint8Array;
  let json: string | undefined;
  for (const ws of sockets) {
    if (encodingOfSubprotocol(ws.protocol) === 'json') {
      json ??= encodeServerFrame(frame, 'json') as string;
      ws.send(json, { binary: false });
    } else {
      ws.send(proto, { binary: true });
    }
  }
  return { sockets: sockets.size, writeMs: performance.now() - started };
}

serveCalls({
  listen: (args: { host: string }) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, args.host, () => resolve((server.address() as AddressInfo).port));
    }),
  broadcast,
  frameBytes: () => (encodeServerFrame(frameOf(1, nowMs()), 'proto') as Uint8Array).byteLength,
  stats: () => ({ open: sockets.size, memory: process.memoryUsage() }),
});

// The Node.js peer of the peers benchmark: a socket.io 4 server (WebSocket transport only, no
// per-message deflate, as the gateway), which broadcasts the benchmark's notification to every connected
// client with `io.emit` (socket.io encodes the packet once and writes it to each socket) and counts the
// clients' acks (each client emits `ack` with the message's id). It authenticates nothing and stores nothing.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server, type Socket } from 'socket.io';
import { serveCalls } from './children.js';
import { notification } from './fanout-message.js';

const httpServer = createServer();
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 16_384,
});

let open = 0;
let acks = 0;

function onAck(): void {
  acks++;
}

function onDisconnect(): void {
  open--;
}

io.on('connection', (socket: Socket) => {
  open++;
  socket.on('ack', onAck);
  socket.on('disconnect', onDisconnect);
});

/** One broadcast to every connected client; `seq` is the message id, `t` when the harness published it. */
function broadcast(args: { seq: number; t: number }): {
  sockets: number;
  writeMs: number;
  payloadBytes: number;
} {
  const started = performance.now();
  const payload = {
    msgId: args.seq,
    pushId: 'socketio-push-00000000000',
    message: notification(args.seq, args.t),
    sentAtMs: Math.floor(args.t),
  };
  io.emit('push', payload);
  return {
    sockets: open,
    writeMs: performance.now() - started,
    payloadBytes: Buffer.byteLength(JSON.stringify(payload)),
  };
}

serveCalls({
  listen: (args: { host: string }) =>
    new Promise<number>((resolve, reject) => {
      httpServer.once('error', reject);
      httpServer.listen(0, args.host, () => resolve((httpServer.address() as AddressInfo).port));
    }),
  broadcast,
  stats: () => ({ open, acks, memory: process.memoryUsage() }),
});

import { WebSocket } from 'ws';

export type RawOutcome =
  | { kind: 'open'; socket: WebSocket; protocol: string }
  | { kind: 'refused'; status: number; body: { code?: string; message?: string } };

/** Opens a WebSocket without the SDK, to send what a well-behaved client never would. */
export function rawConnect(
  url: string,
  headers: Record<string, string>,
  protocols: string[] = [],
): Promise<RawOutcome> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, protocols, { headers, perMessageDeflate: false });
    socket.once('open', () => resolve({ kind: 'open', socket, protocol: socket.protocol }));
    socket.once('unexpected-response', (_request, response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      response.on('end', () => {
        let body: { code?: string; message?: string } = {};
        try {
          body = JSON.parse(text);
        } catch {}
        resolve({ kind: 'refused', status: response.statusCode ?? 0, body });
      });
    });
    socket.once('error', reject);
  });
}

/** Collects frames until the socket closes; resolves with them and the close code. */
export function untilClosed(
  socket: WebSocket,
): Promise<{ code: number; reason: string; frames: (Buffer | string)[] }> {
  const frames: (Buffer | string)[] = [];
  socket.on('message', (data: Buffer, isBinary: boolean) => frames.push(isBinary ? data : data.toString()));
  return new Promise((resolve) =>
    socket.once('close', (code, reason) => resolve({ code, reason: reason.toString(), frames })),
  );
}

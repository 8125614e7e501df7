// A device-load process: holds up to ~15,000 DeviceClient connections (the reference SDK, as a real device
// runs it), connects them with a bounded number of handshakes in flight, and records what they receive.
import { DeviceClient, type DeviceCloseEvent, type PushMessage } from '@pushd/device-sdk';
import { serveCalls } from './children.js';

export interface DeviceSpec {
  token: string;
  credential: string;
  /** Index into ConnectArgs.urls. */
  gateway: number;
  /** Source address (127.0.0.x), to spread connections over loopback's ephemeral port ranges. */
  localAddress: string;
}

export interface ConnectArgs {
  urls: string[];
  accessId: number;
  devices: DeviceSpec[];
  /**
   * Connection attempts in flight at once in this process, per server (URL): lanes shared by all servers
   * would pile up on the slowest one and overflow its accept queue.
   */
  inflight: number;
  /** Deadline of one attempt (connect() until Connected). */
  timeoutMs: number;
  /** Attempts per device before it counts as failed. */
  attempts: number;
}

export interface ConnectResult {
  ok: number;
  failed: number;
  /** Failure codes of the last attempt of failed devices, and of retried attempts (`retry:<code>`). */
  errors: Record<string, number>;
  elapsedMs: number;
  /** Duration of each successful handshake (connect() to Connected), ms. */
  handshakeMs: Float64Array;
}

export interface WorkerStats {
  open: number;
  received: number;
  /** Connections that ended without this process closing them, by close code. */
  unexpectedCloses: Record<string, number>;
  memory: NodeJS.MemoryUsage;
}

export interface Received {
  msgIds: Float64Array;
  /** Receipt time minus the pusher's send time (custom_content.t, else sent_at_ms), ms. */
  latencyMs: Float64Array;
}

let clients: DeviceClient[] = [];
/** The highest msg id each device processed, kept across its connections (a device persists it). */
const lastMsgIds = new Map<string, number>();
let closing = false;
let msgIds: number[] = [];
let latencies: number[] = [];
const unexpectedCloses: Record<string, number> = {};

// Shared listeners: nothing is allocated per client beyond the client itself.
function onMessage(message: PushMessage): void {
  const now = performance.timeOrigin + performance.now();
  const sentAt = Number(message.message?.customContent?.t);
  msgIds.push(message.msgId);
  latencies.push(now - (Number.isFinite(sentAt) && sentAt > 0 ? sentAt : message.sentAtMs));
}

function onClose(event: DeviceCloseEvent): void {
  if (closing) return;
  const key = event.error?.code ?? String(event.code);
  unexpectedCloses[key] = (unexpectedCloses[key] ?? 0) + 1;
}

function onError(): void {}

async function connect(args: ConnectArgs): Promise<ConnectResult> {
  if (clients.length > 0) throw new Error('close the previous connections first');
  closing = false;
  clients = args.devices.map((device) => {
    const client = new DeviceClient({
      url: args.urls[device.gateway]!,
      accessId: args.accessId,
      session: { token: device.token, credential: device.credential },
      lastMsgId: lastMsgIds.get(device.token) ?? 0,
      localAddress: device.localAddress,
      requestTimeoutMs: args.timeoutMs,
    });
    client.on('message', onMessage);
    client.on('close', onClose);
    client.on('error', onError);
    return client;
  });
  const handshakeMs = new Float64Array(clients.length);
  const errors: Record<string, number> = {};
  let ok = 0;
  let failed = 0;
  const started = performance.now();
  const byServer = new Map<number, DeviceClient[]>();
  args.devices.forEach((device, index) => {
    const group = byServer.get(device.gateway) ?? [];
    group.push(clients[index]!);
    byServer.set(device.gateway, group);
  });
  const lanes: Promise<void>[] = [];
  for (const group of byServer.values()) {
    let next = 0;
    const lane = async () => {
      while (next < group.length) {
        const client = group[next++]!;
        for (let attempt = 1; ; attempt++) {
          const t0 = performance.now();
          try {
            await client.connect();
            handshakeMs[ok++] = performance.now() - t0;
            break;
          } catch (error) {
            const code = (error as { code?: string }).code ?? 'UNKNOWN';
            if (attempt >= args.attempts) {
              failed++;
              errors[code] = (errors[code] ?? 0) + 1;
              break;
            }
            errors[`retry:${code}`] = (errors[`retry:${code}`] ?? 0) + 1;
            await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
          }
        }
      }
    };
    for (let i = 0; i < Math.max(1, args.inflight); i++) lanes.push(lane());
  }
  await Promise.all(lanes);
  return {
    ok,
    failed,
    errors,
    elapsedMs: performance.now() - started,
    handshakeMs: handshakeMs.slice(0, ok),
  };
}

async function close(): Promise<{ elapsedMs: number }> {
  closing = true;
  const started = performance.now();
  await Promise.all(clients.map((client) => client.close()));
  for (const client of clients) {
    const token = client.token;
    if (token !== undefined && client.lastMsgId > 0) lastMsgIds.set(token, client.lastMsgId);
  }
  clients = [];
  return { elapsedMs: performance.now() - started };
}

function stats(args: { gc?: boolean }): WorkerStats {
  if (args.gc && typeof globalThis.gc === 'function') globalThis.gc();
  let open = 0;
  for (const client of clients) if (client.state === 'open') open++;
  return { open, received: msgIds.length, unexpectedCloses, memory: process.memoryUsage() };
}

function collect(): Received {
  const result = { msgIds: Float64Array.from(msgIds), latencyMs: Float64Array.from(latencies) };
  msgIds = [];
  latencies = [];
  return result;
}

serveCalls({ connect, close, stats, collect });

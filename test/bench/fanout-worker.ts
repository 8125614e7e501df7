// A subscriber-load process for the fanout and peers benchmarks: holds up to ~15,000 subscribers of one
// kind, connects them with a bounded number of handshakes in flight per server, acknowledges what they
// receive the way each protocol does, and records every receipt (broadcast number, publish-to-receipt
// latency). The harness waits on a broadcast with `wait`: it resolves once every subscriber this process
// connected has received it.
//
// Kinds:
// - `pushd`: DeviceClient of @pushd/device-sdk (what the device benchmarks use), against a gateway or the
//   bare ws reference; the SDK acknowledges each Deliver frame with an Ack frame.
// - `socketio`: socket.io-client over the WebSocket transport only, one connection per client
//   (forceNew); each message is acknowledged by emitting `ack` with its id.
// - `mqtt`: mqtt.js over TCP (MQTT 3.1.1), subscribed with QoS 1: the client answers each PUBLISH with a
//   PUBACK.
import { createConnection } from 'node:net';
import { DeviceClient, type PushMessage } from '@pushd/device-sdk';
import { Message } from '@pushd/proto';
import { MqttClient } from 'mqtt';
import { io, type Socket } from 'socket.io-client';
import { serveCalls } from './children.js';
import { nowMs, stampOf } from './fanout-message.js';

export type SubscriberKind = 'pushd' | 'socketio' | 'mqtt';

export interface SubscriberSpec {
  /** pushd: the device session. */
  token?: string;
  credential?: string;
  /** Index into SubscribeArgs.urls. */
  server: number;
  /** Source address (127.0.0.x), to spread connections over loopback's ephemeral port ranges. */
  localAddress: string;
  /** mqtt: client id. */
  clientId?: string;
}

export interface SubscribeArgs {
  kind: SubscriberKind;
  /** ws://…/v1/ws (pushd), http://host:port (socketio), mqtt://host:port (mqtt). */
  urls: string[];
  /** pushd only. */
  accessId?: number;
  /** mqtt only: the topic to subscribe to. */
  topic?: string;
  subscribers: SubscriberSpec[];
  /** Handshakes in flight per server in this process. */
  inflight: number;
  timeoutMs: number;
  attempts: number;
}

export interface SubscribeResult {
  ok: number;
  failed: number;
  errors: Record<string, number>;
  elapsedMs: number;
}

export interface WaitResult {
  seq: number;
  received: number;
  expected: number;
  complete: boolean;
}

export interface Receipts {
  /** Broadcast number of each receipt. */
  seqs: Float64Array;
  /** Receipt time minus publish time, ms. */
  latencyMs: Float64Array;
}

export interface SubscriberStats {
  open: number;
  connected: number;
  received: number;
  unexpectedCloses: Record<string, number>;
  rss: number;
}

interface Subscriber {
  isOpen(): boolean;
  connect(): Promise<void>;
  close(): Promise<void>;
}

let subscribers: Subscriber[] = [];
let connected = 0;
let closing = false;
const counts = new Map<number, number>();
let seqs: number[] = [];
let latencies: number[] = [];
let received = 0;
const unexpectedCloses: Record<string, number> = {};
const waiters = new Map<number, { resolve: (result: WaitResult) => void; timer: NodeJS.Timeout }>();

/** One receipt of broadcast `seq` published at `t`. */
function record(seq: number, t: number): void {
  const now = nowMs();
  received++;
  seqs.push(seq);
  latencies.push(now - t);
  const count = (counts.get(seq) ?? 0) + 1;
  counts.set(seq, count);
  if (count >= connected) {
    const waiter = waiters.get(seq);
    if (waiter !== undefined) {
      waiters.delete(seq);
      clearTimeout(waiter.timer);
      waiter.resolve({ seq, received: count, expected: connected, complete: true });
    }
  }
}

function closedUnexpectedly(key: string): void {
  if (closing) return;
  unexpectedCloses[key] = (unexpectedCloses[key] ?? 0) + 1;
}

// ---- pushd -----------------------------------------------------------------------------------------------

function onPushdMessage(message: PushMessage): void {
  const { seq, t } = stampOf(message.message?.customContent);
  record(seq, t);
}

function onPushdClose(event: { code: number; error?: { code: string } | undefined }): void {
  closedUnexpectedly(event.error?.code ?? String(event.code));
}

function onIgnoredError(): void {}

function pushdSubscriber(args: SubscribeArgs, spec: SubscriberSpec): Subscriber {
  const client = new DeviceClient({
    url: args.urls[spec.server]!,
    accessId: args.accessId ?? 0,
    session: { token: spec.token ?? '', credential: spec.credential ?? '' },
    localAddress: spec.localAddress,
    requestTimeoutMs: args.timeoutMs,
  });
  client.on('message', onPushdMessage);
  client.on('close', onPushdClose);
  client.on('error', onIgnoredError);
  return {
    isOpen: () => client.state === 'open',
    connect: async () => {
      await client.connect();
    },
    close: () => client.close(),
  };
}

// ---- socket.io ---------------------------------------------------------------------------------------------

interface SocketIoPush {
  msgId: number;
  message: { customContent?: Record<string, string> };
}

function onSocketIoPush(this: Socket, payload: SocketIoPush): void {
  const { seq, t } = stampOf(payload.message?.customContent);
  record(seq, t);
  this.emit('ack', payload.msgId);
}

function onSocketIoDisconnect(reason: string): void {
  if (reason !== 'io client disconnect') closedUnexpectedly(`socketio:${reason}`);
}

function socketIoSubscriber(args: SubscribeArgs, spec: SubscriberSpec): Subscriber {
  let socket: Socket | undefined;
  return {
    isOpen: () => socket?.connected === true,
    connect: () =>
      new Promise<void>((resolve, reject) => {
        socket?.removeAllListeners();
        socket?.disconnect();
        const s = io(args.urls[spec.server]!, {
          transports: ['websocket'],
          forceNew: true,
          reconnection: false,
          timeout: args.timeoutMs,
          localAddress: spec.localAddress,
          autoConnect: false,
        } as Parameters<typeof io>[1]);
        socket = s;
        s.once('connect', () => {
          s.off('connect_error');
          s.on('disconnect', onSocketIoDisconnect);
          resolve();
        });
        s.once('connect_error', (error: Error) => {
          s.disconnect();
          reject(Object.assign(new Error(error.message), { code: 'CONNECT_ERROR' }));
        });
        s.on('push', onSocketIoPush);
        s.connect();
      }),
    close: async () => {
      socket?.disconnect();
    },
  };
}

// ---- MQTT --------------------------------------------------------------------------------------------------

function onMqttMessage(_topic: string, payload: Buffer): void {
  const message = Message.decode(payload);
  const { seq, t } = stampOf(message.customContent);
  record(seq, t);
}

function mqttSubscriber(args: SubscribeArgs, spec: SubscriberSpec): Subscriber {
  const url = new URL(args.urls[spec.server]!);
  let client: MqttClient | undefined;
  let open = false;
  return {
    isOpen: () => open,
    connect: () =>
      new Promise<void>((resolve, reject) => {
        client?.end(true);
        const c = new MqttClient(
          () =>
            createConnection({
              host: url.hostname,
              port: Number(url.port),
              localAddress: spec.localAddress,
            }),
          {
            clientId: spec.clientId ?? `bench-${Math.random().toString(36).slice(2)}`,
            protocolVersion: 4,
            clean: true,
            keepalive: 60,
            reconnectPeriod: 0,
            connectTimeout: args.timeoutMs,
            resubscribe: false,
          },
        );
        client = c;
        const fail = (error: Error) => {
          c.end(true);
          reject(Object.assign(new Error(error.message), { code: 'MQTT_CONNECT' }));
        };
        c.once('error', fail);
        c.once('connect', () => {
          c.subscribe(args.topic ?? 'bench', { qos: 1 }, (error) => {
            if (error) {
              fail(error);
              return;
            }
            c.off('error', fail);
            c.on('error', onIgnoredError);
            open = true;
            resolve();
          });
        });
        c.on('close', () => {
          if (open) closedUnexpectedly('mqtt:close');
          open = false;
        });
        c.on('message', onMqttMessage);
      }),
    close: async () => {
      open = false;
      await new Promise<void>((resolve) => {
        if (client === undefined) resolve();
        else client.end(true, {}, () => resolve());
      });
    },
  };
}

// ---- calls -------------------------------------------------------------------------------------------------

async function subscribe(args: SubscribeArgs): Promise<SubscribeResult> {
  if (subscribers.length > 0) throw new Error('close the previous subscribers first');
  closing = false;
  connected = 0;
  const make =
    args.kind === 'pushd' ? pushdSubscriber : args.kind === 'socketio' ? socketIoSubscriber : mqttSubscriber;
  subscribers = args.subscribers.map((spec) => make(args, spec));
  const errors: Record<string, number> = {};
  let ok = 0;
  let failed = 0;
  const started = performance.now();
  const byServer = new Map<number, Subscriber[]>();
  args.subscribers.forEach((spec, index) => {
    const group = byServer.get(spec.server) ?? [];
    group.push(subscribers[index]!);
    byServer.set(spec.server, group);
  });
  const lanes: Promise<void>[] = [];
  for (const group of byServer.values()) {
    let next = 0;
    const lane = async () => {
      while (next < group.length) {
        const subscriber = group[next++]!;
        for (let attempt = 1; ; attempt++) {
          try {
            await subscriber.connect();
            ok++;
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
  connected = ok;
  return { ok, failed, errors, elapsedMs: performance.now() - started };
}

/** Resolves once every connected subscriber has received broadcast `seq`, or after timeoutMs. */
function wait(args: { seq: number; timeoutMs: number }): Promise<WaitResult> {
  const count = counts.get(args.seq) ?? 0;
  if (count >= connected) {
    return Promise.resolve({ seq: args.seq, received: count, expected: connected, complete: true });
  }
  return new Promise<WaitResult>((resolve) => {
    const timer = setTimeout(() => {
      waiters.delete(args.seq);
      const got = counts.get(args.seq) ?? 0;
      resolve({ seq: args.seq, received: got, expected: connected, complete: got >= connected });
    }, args.timeoutMs);
    waiters.set(args.seq, { resolve, timer });
  });
}

async function close(): Promise<{ elapsedMs: number }> {
  closing = true;
  const started = performance.now();
  await Promise.all(subscribers.map((subscriber) => subscriber.close()));
  subscribers = [];
  connected = 0;
  return { elapsedMs: performance.now() - started };
}

function stats(): SubscriberStats {
  let open = 0;
  for (const subscriber of subscribers) if (subscriber.isOpen()) open++;
  return { open, connected, received, unexpectedCloses, rss: process.memoryUsage().rss };
}

/** Every receipt since the last collect (and forgets them). */
function collect(): Receipts {
  const result = { seqs: Float64Array.from(seqs), latencyMs: Float64Array.from(latencies) };
  seqs = [];
  latencies = [];
  return result;
}

serveCalls({ subscribe, wait, close, stats, collect });

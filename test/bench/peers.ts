// peers: the fanout workload (repeated broadcasts of the 200-byte notification to N subscribers, each
// waited for until every subscriber has it) against pushd (one gateway, the full path from the Push API),
// a socket.io server (the Node.js peer, io.emit) and Mosquitto (the C peer, MQTT over TCP, QoS 1), with
// the same number of subscribers held by the same subscriber processes. Every subscriber acknowledges
// what it receives as its protocol does: the SDK's Ack frame, a socket.io `ack` event, an MQTT PUBACK.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Message } from '@pushd/proto';
import { freePort } from '@pushd/testkit';
import { HarnessChild } from './children.js';
import { retries } from './fanout.js';
import { SubscriberFleet } from './fanout-fleet.js';
import { NOTIFICATION_BYTES, notification } from './fanout-message.js';
import {
  AUDIENCE_NOTE,
  type PhaseResult,
  publishToServers,
  runPhase,
  SeqCounter,
  startOurs,
} from './fanout-phase.js';
import { inspectPortsOf } from './fleet.js';
import { type Cleanup, log } from './lifecycle.js';
import { formatCpu } from './measure.js';
import { mqttPublisher, requireMosquitto, startMosquitto } from './mosquitto.js';
import type { BenchOptions } from './options.js';
import { type BenchResult, formatCounts, round } from './report.js';
import { settleAll } from './system.js';

const TOPIC = 'bench/broadcast';

export async function peersBench(cleanup: Cleanup, options: BenchOptions): Promise<BenchResult> {
  // Before anything starts: a missing broker fails the run at once, saying how to install it.
  const mosquittoFound = requireMosquitto();
  const devices = options.devices ?? (options.smoke ? 40 : 18_000);
  if (devices > 19_000)
    log(`warning: ${devices} connections on one server process is over the open-file limit`);
  const window = options.window ?? 1;
  const warmup = options.smoke ? 1 : 3;
  const broadcasts = options.broadcasts ?? (options.smoke ? 5 : 30);
  const timeoutMs = options.smoke ? 10_000 : 30_000;
  const profiling = options.cpuProfDir !== undefined;
  const socketIoVersion = packageVersion('socket.io');
  const mqttVersion = packageVersion('mqtt');

  log('starting the system (one gateway), a socket.io server, mosquitto, subscriber processes');
  const [ours, fleet, socketIo, broker] = await settleAll([
    startOurs(cleanup, {
      gateways: 1,
      profiling,
      ...(options.serviceEnv === undefined ? {} : { serviceEnv: options.serviceEnv }),
    }),
    SubscriberFleet.start(cleanup, SubscriberFleet.workersFor(devices, options.deviceWorkers), profiling),
    startSocketIo(cleanup, profiling),
    startMosquitto(cleanup),
  ] as const);
  const app = await ours.createApp(devices);
  const publisher = await mqttPublisher(cleanup, broker.url);
  const seqs = new SeqCounter();
  const common = {
    count: devices,
    inflightPerServer: options.inflight ?? 400,
    timeoutMs: 30_000,
    attempts: 3,
  };
  const loop = { warmup, broadcasts, window, timeoutMs };
  const workers = options.deviceWorkers === undefined ? {} : { workers: options.deviceWorkers };

  const oursPhase = await runPhase(fleet, seqs, options.cpuProfDir, 'peers-pushd', {
    label: 'pushd',
    subscribe: {
      kind: 'pushd',
      urls: [ours.system.gateways[0]!.url],
      accessId: app.app.accessId,
      tokens: app.registered.tokens,
      credentials: app.registered.credentials,
      ...common,
    },
    ...workers,
    publish: app.publishTags,
    ...loop,
    pids: () => ours.system.pids(),
    inspectPorts: () => ours.system.inspectPorts(),
    afterClose: () => ours.drained(),
  });
  const socketIoPhase = await runPhase(fleet, seqs, options.cpuProfDir, 'peers-socketio', {
    label: 'socket.io',
    subscribe: { kind: 'socketio', urls: [socketIo.url], ...common },
    ...workers,
    publish: publishToServers([socketIo.server]),
    ...loop,
    pids: () => new Map([['socket.io', socketIo.server.pid]]),
    inspectPorts: () => inspectPortsOf([socketIo.server]),
  });
  const mosquittoPhase = await runPhase(fleet, seqs, options.cpuProfDir, 'peers-mosquitto', {
    label: 'mosquitto',
    subscribe: { kind: 'mqtt', urls: [broker.url], topic: TOPIC, ...common },
    ...workers,
    publish: async (seq, t) => {
      await publisher.publishAsync(TOPIC, Buffer.from(Message.encode(notification(seq, t)).finish()), {
        qos: 1,
      });
    },
    ...loop,
    pids: () => new Map([['mosquitto', broker.pid]]),
    inspectPorts: () => new Map(),
  });

  const phases: [string, string, PhaseResult][] = [
    ['pushd', `one gateway, full path from the Push API; ${AUDIENCE_NOTE}; SDK Ack frames`, oursPhase],
    [
      'socket.io',
      `socket.io ${socketIoVersion}, WebSocket transport, io.emit from the server process (IPC); client emits ack`,
      socketIoPhase,
    ],
    [
      'mosquitto',
      `Mosquitto ${mosquittoFound.version}, MQTT 3.1.1 over TCP, QoS 1 publish and subscriptions (mqtt.js ${mqttVersion}); PUBACK`,
      mosquittoPhase,
    ],
  ];
  const oursRate = oursPhase.loop.msgsPerS;
  const lost = phases.reduce((sum, [, , p]) => sum + (p.loop.expected - p.loop.delivered), 0);
  return {
    tables: [
      {
        title:
          `peers: ${devices} subscribers, ${NOTIFICATION_BYTES}-byte notification, ${broadcasts} broadcasts, ` +
          `${window} in flight; latency = publish to subscriber receipt`,
        headers: [
          'peer',
          'what',
          'received',
          'msgs/s',
          'vs pushd',
          'p50 ms',
          'p99 ms',
          'max ms',
          'last subscriber p50 ms',
          'publish p50 ms',
          'publish retries',
          'closed (code)',
          'connect s',
          'cpu (cores)',
        ],
        rows: phases.map(([name, what, p]) => [
          name,
          what,
          `${p.loop.delivered}/${p.loop.expected}`,
          Math.round(p.loop.msgsPerS),
          (p.loop.msgsPerS / oursRate).toFixed(2),
          p.loop.p50,
          p.loop.p99,
          p.loop.max,
          p.loop.lastP50,
          p.loop.publishP50,
          retries(p.loop.publishRetries),
          formatCounts(p.unexpectedCloses),
          p.connect.elapsedMs / 1000,
          formatCpu(p.loop.cpu, 6),
        ]),
      },
    ],
    figures: {
      benchmark: 'peers',
      devices,
      broadcasts,
      window,
      notification_bytes: NOTIFICATION_BYTES,
      ours_msgs_per_s: Math.round(oursRate),
      socketio_msgs_per_s: Math.round(socketIoPhase.loop.msgsPerS),
      mosquitto_msgs_per_s: Math.round(mosquittoPhase.loop.msgsPerS),
      ours_vs_socketio: round(oursRate / socketIoPhase.loop.msgsPerS),
      ours_vs_mosquitto: round(oursRate / mosquittoPhase.loop.msgsPerS),
      ours_p50_ms: round(oursPhase.loop.p50),
      ours_p99_ms: round(oursPhase.loop.p99),
      socketio_p50_ms: round(socketIoPhase.loop.p50),
      socketio_p99_ms: round(socketIoPhase.loop.p99),
      mosquitto_p50_ms: round(mosquittoPhase.loop.p50),
      mosquitto_p99_ms: round(mosquittoPhase.loop.p99),
      ours_delivered: oursPhase.loop.delivered,
      socketio_delivered: socketIoPhase.loop.delivered,
      mosquitto_delivered: mosquittoPhase.loop.delivered,
      expected: oursPhase.loop.expected,
      lost,
      closed: phases.reduce((sum, [, , p]) => sum + retries(p.unexpectedCloses), 0),
      publish_retries: phases.reduce((sum, [, , p]) => sum + retries(p.loop.publishRetries), 0),
      target_met: oursRate > socketIoPhase.loop.msgsPerS,
      socketio_version: socketIoVersion,
      mosquitto_version: mosquittoFound.version,
    },
  };
}

/** The socket.io server process (socketio-server.ts), listening on loopback. */
async function startSocketIo(
  cleanup: Cleanup,
  inspect: boolean,
): Promise<{ server: HarnessChild; url: string }> {
  const inspectPort = inspect ? await freePort() : undefined;
  const server = new HarnessChild('socket.io', 'test/bench/socketio-server.ts', {
    ...(inspectPort === undefined ? {} : { inspectPort }),
  });
  cleanup.add(server.name, () => server.stop());
  await server.ready();
  const port = await server.call<number>('listen', { host: '127.0.0.1' });
  return { server, url: `http://127.0.0.1:${port}` };
}

function packageVersion(name: string): string {
  try {
    const require = createRequire(import.meta.url);
    const path = require.resolve(`${name}/package.json`);
    return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

// tags: the audience index at scale. Registers N devices (default 1,000,000) with a realistic spread of
// built-in attributes and user tags, on a real redis-server (and a real nats-server with JetStream for the
// event stream and the push log), then measures what the issue asks: registrations/s, Redis memory per
// device, how long a dry-run count of a 3-term expression takes, and how long accepting a tag push takes
// for audiences of 1 %, 10 % and 50 % of the devices (it must not grow with the audience).
//
// The services run in this process (RegistryService, TagService, DispatchService and the tag service's
// AudienceEvents on their own Redis and NATS connections), called through in-process clients that encode
// and decode every request and reply as over the wire: there is no gRPC hop, no socket between services.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
// test/package.json does not list @pushd/audience (the expression parser); its sources are imported
// directly, as test/integration/nats-bus.test.ts does for the bus contract.
import { normalize, parseInfix } from '@pushd/audience';
import { NatsBus, streams } from '@pushd/bus';
import { createMetricsRegistry, silentLogger } from '@pushd/common';
import { generateDeviceId } from '@pushd/device-sdk';
import { createDispatchMetrics, DispatchService, PushApplier, Scheduler } from '@pushd/dispatch';
import {
  type Audience,
  DispatchServiceService,
  Event,
  EventType,
  MessageType,
  Platform,
  PushStatus,
  RegistryServiceService,
  type TagExpression,
  TagServiceService,
} from '@pushd/proto';
import { RegistryService } from '@pushd/registry';
import { bearerAuthorization, callContext, inProcessClient } from '@pushd/rpc';
import { createRedisClient, createRedisStores, type RedisClient, RedisKeys, type Stores } from '@pushd/store';
import { AudienceEvents, TagService } from '@pushd/tag';
import { startNatsServer, startRedisServer } from '@pushd/testkit';
import { type Cleanup, log } from './lifecycle.js';
import { CpuMeter, findPid, formatCpu, percentiles, sleep } from './measure.js';
import type { BenchOptions } from './options.js';
import { type BenchResult, mib, round, type Table } from './report.js';
import { CLUSTER_TOKEN } from './system.js';

/** The targets, on a 2-core machine. */
const DRY_RUN_TARGET_MS = 100;
const ACCEPT_TARGET_MS = 50;

/** Devices when neither --devices nor this variable says otherwise. */
const DEVICES_ENV = 'TAGS_BENCH_DEVICES';
const FULL_DEVICES = 1_000_000;
const SMOKE_DEVICES = 2_000;
/** RegisterDevice calls in flight (each followed by what the tag service does with its REGISTERED event). */
const REGISTRATIONS_IN_FLIGHT = 256;
/** BatchAddTags calls in flight, 1,000 tokens each at most. */
const TAG_CALLS_IN_FLIGHT = 8;
const TOKENS_PER_BATCH = 1_000;

/** Distinct user tags and their popularity (Zipf exponent). */
const USER_TAGS = 2_000;
const USER_TAG_ZIPF = 1;
/** User tags per device: uniform over 0..MAX (mean 4), cohorts not counted. */
const MAX_USER_TAGS_PER_DEVICE = 8;
const NAMED_TAGS = ['sports', 'music', 'news', 'games', 'travel', 'food', 'movies', 'finance', 'fashion'];
/** Cohort tags held by exactly that share of the devices (floor(N * percent / 100)). */
const COHORTS = [
  { tag: 'cohort-1pct', percent: 1 },
  { tag: 'cohort-10pct', percent: 10 },
  { tag: 'cohort-50pct', percent: 50 },
] as const;

const IOS_SHARE = 0.3;
const APP_VERSIONS = [
  '3.9.0',
  '3.8.2',
  '3.8.1',
  '3.8.0',
  '3.7.5',
  '3.7.0',
  '3.6.0',
  '3.5.2',
  '3.4.0',
  '3.0.0',
];
const ANDROID_VERSIONS = ['14', '13', '12', '11', '15', '10'];
const IOS_VERSIONS = ['17.5', '17.4', '18.0', '16.7', '15.8'];
const LOCALES = [
  'en-US',
  'zh-CN',
  'es-ES',
  'pt-BR',
  'hi-IN',
  'ar-SA',
  'fr-FR',
  'de-DE',
  'ja-JP',
  'ru-RU',
  'id-ID',
  'ko-KR',
  'it-IT',
  'tr-TR',
  'vi-VN',
  'pl-PL',
  'nl-NL',
  'th-TH',
  'en-GB',
  'zh-TW',
];

/** The dry-run example, and a one-term reference, in infix form (user tags quoted). */
const THREE_TERMS = '("sports" OR "music") AND NOT pushd:platform:ios';
const ONE_TERM = '"sports"';
/** The same two as a TagExpression (TPNS tag_rules), for the TagService path. */
const THREE_TERMS_PROTO: TagExpression = {
  form: {
    $case: 'tagRules',
    value: {
      rules: [
        {
          tagItems: [
            { tags: ['sports', 'music'], isNot: false, tagsOperator: 'OR', itemsOperator: '', tagType: '' },
          ],
          operator: '',
          isNot: false,
        },
        {
          tagItems: [
            { tags: ['pushd:platform:ios'], isNot: false, tagsOperator: '', itemsOperator: '', tagType: '' },
          ],
          operator: 'AND',
          isNot: true,
        },
      ],
    },
  },
};
const ONE_TERM_PROTO: TagExpression = {
  form: { $case: 'tagList', value: { tags: ['sports'], op: 'OR' } },
};

/** The devices to register: attributes and user tags, by ordinal (not the device index Redis hands out). */
interface Population {
  n: number;
  ios: Uint8Array;
  appVersion: Uint8Array;
  osVersion: Uint8Array;
  locale: Uint8Array;
  /** Ordinals holding each tag of the vocabulary (user tags, then cohorts). */
  holders: number[][];
  vocabulary: string[];
  expected: { threeTerms: number; oneTerm: number; cohorts: Map<string, number> };
}

interface Timing {
  p50: number;
  p90: number;
  max: number;
  runs: number;
}

export async function tagsBench(cleanup: Cleanup, options: BenchOptions): Promise<BenchResult> {
  const envDevices = process.env[DEVICES_ENV];
  const devices =
    options.devices ??
    (envDevices !== undefined && envDevices !== '' ? positiveInt(DEVICES_ENV, envDevices) : undefined) ??
    (options.smoke ? SMOKE_DEVICES : FULL_DEVICES);
  const runs = options.smoke ? 5 : 30;
  const applyRuns = options.smoke ? 3 : 10;
  const inflight = options.inflight ?? REGISTRATIONS_IN_FLIGHT;
  const progressEvery = devices >= 200_000 ? 100_000 : Math.max(1, Math.ceil(devices / 4));

  log('starting nats-server (JetStream) and redis-server');
  const [nats, redisServer] = await Promise.all([startNatsServer(), startRedisServer()]);
  cleanup.add('nats-server', () => nats.stop());
  cleanup.add('redis-server', () => redisServer.stop());
  const natsPid = findPid(['nats-server', `-p ${nats.port} `]);
  const redisPid = findPid(['redis-server', `:${redisServer.port}`]);
  const cpu = new CpuMeter(() => {
    const pids = new Map([['bench (services)', process.pid]]);
    if (redisPid !== undefined) pids.set('redis', redisPid);
    if (natsPid !== undefined) pids.set('nats', natsPid);
    return pids;
  });

  // Each service on its own connections, as the processes would be.
  const logger = silentLogger();
  const connect = async (service: string) => {
    const redis = createRedisClient({ url: redisServer.url, logger, name: service });
    cleanup.add(`${service} redis`, async () => void (await redis.quit()));
    const bus = await NatsBus.connect({
      servers: nats.url,
      name: service,
      streams: [streams.events, streams.pushes],
      logger,
    });
    cleanup.add(`${service} nats`, () => bus.close());
    return { redis, bus, stores: createRedisStores({ redis, keys: new RedisKeys() }) };
  };
  const registryConn = await connect('registry');
  const tagConn = await connect('tag');
  const dispatchConn = await connect('dispatch');
  const admin = createRedisClient({ url: redisServer.url, logger, name: 'bench-admin' });
  cleanup.add('admin redis', async () => void (await admin.quit()));

  const cluster = () => callContext(bearerAuthorization(CLUSTER_TOKEN));
  const registryService = new RegistryService({
    apps: registryConn.stores.apps,
    devices: registryConn.stores.devices,
    bus: registryConn.bus,
    clusterToken: CLUSTER_TOKEN,
    logger,
  });
  const registryHandlers = registryService.handlers();
  const registryClient = () =>
    inProcessClient(RegistryServiceService, registryHandlers, bearerAuthorization(CLUSTER_TOKEN));
  const tagStores = tagConn.stores;
  const audienceEvents = new AudienceEvents({ tags: tagStores.tags, audience: tagStores.audience, logger });
  const tagService = new TagService({
    tags: tagStores.tags,
    audience: tagStores.audience,
    bus: tagConn.bus,
    routes: tagStores.routes,
    registry: registryClient(),
    clusterToken: CLUSTER_TOKEN,
    logger,
  });
  const tagClient = inProcessClient(
    TagServiceService,
    tagService.handlers(),
    bearerAuthorization(CLUSTER_TOKEN),
  );

  const created = await registryHandlers.createApp({ name: 'bench-tags' }, cluster());
  const accessId = created.app?.accessId ?? 0;
  const keys = new RedisKeys();

  log(`drawing ${devices.toLocaleString('en-US')} devices`);
  const population = drawPopulation(devices);
  const memoryStart = await usedMemory(admin);

  // 1. Registration: RegisterDevice, then what the tag service does with the REGISTERED event.
  log(
    `registering ${devices.toLocaleString('en-US')} devices, ${inflight} in flight ` +
      '(RegistryService.registerDevice + AudienceEvents.apply of its REGISTERED event, in process)',
  );
  const tokens = new Array<string>(devices);
  let next = 0;
  let done = 0;
  const registrationStart = performance.now();
  cpu.start();
  const registerLane = async () => {
    while (next < devices) {
      const i = next++;
      const platform = population.ios[i] ? Platform.PLATFORM_IOS : Platform.PLATFORM_ANDROID;
      const reply = await registryHandlers.registerDevice(
        {
          accessId,
          accessKey: created.accessKey,
          deviceId: generateDeviceId(),
          platform,
          appVersion: APP_VERSIONS[population.appVersion[i]!]!,
          osVersion: (population.ios[i] ? IOS_VERSIONS : ANDROID_VERSIONS)[population.osVersion[i]!]!,
          locale: LOCALES[population.locale[i]!]!,
          sdkVersion: '1.0.0',
        },
        cluster(),
      );
      const device = reply.device;
      if (device === undefined || device.index === undefined)
        throw new Error('registration without an index');
      tokens[i] = device.token;
      // The event the registry just published, as the tag service's consumer decodes it.
      await audienceEvents.apply(
        Event.create({
          type: EventType.EVENT_TYPE_REGISTERED,
          accessId,
          token: device.token,
          platform: device.platform,
          atMs: device.registeredAtMs,
          appVersion: device.appVersion,
          osVersion: device.osVersion,
          locale: device.locale,
          deviceIndex: device.index,
        }),
      );
      done++;
      if (done % progressEvery === 0) {
        const seconds = (performance.now() - registrationStart) / 1000;
        log(`registered ${done.toLocaleString('en-US')} (${Math.round(done / seconds)}/s)`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(inflight, devices) }, registerLane));
  const registrationCpu = cpu.stop();
  const registrationMs = performance.now() - registrationStart;
  const memoryRegistered = await usedMemory(admin);
  log(
    `registered ${done} in ${(registrationMs / 1000).toFixed(1)} s ` +
      `(${Math.round(devices / (registrationMs / 1000))}/s); cpu ${formatCpu(registrationCpu)}`,
  );

  // 2. User tags and cohorts: BatchAddTags through the tag service, one tag per call, 1,000 tokens a call.
  const calls: { tag: string; ordinals: number[] }[] = [];
  population.holders.forEach((holders, id) => {
    for (let start = 0; start < holders.length; start += TOKENS_PER_BATCH) {
      calls.push({
        tag: population.vocabulary[id]!,
        ordinals: holders.slice(start, start + TOKENS_PER_BATCH),
      });
    }
  });
  const pairs = population.holders.reduce((sum, holders) => sum + holders.length, 0);
  log(
    `tagging: ${pairs.toLocaleString('en-US')} device-tag pairs in ${calls.length.toLocaleString('en-US')} ` +
      `BatchAddTags calls, ${TAG_CALLS_IN_FLIGHT} in flight`,
  );
  let nextCall = 0;
  let pairsDone = 0;
  let nextProgress = Math.min(500_000, Math.ceil(pairs / 4));
  const taggingStart = performance.now();
  cpu.start();
  const tagLane = async () => {
    while (nextCall < calls.length) {
      const call = calls[nextCall++]!;
      const reply = await tagClient.batchAddTags({
        accessId,
        tokens: call.ordinals.map((i) => tokens[i]!),
        tags: [call.tag],
      });
      if (reply.unknownTokens.length > 0) {
        throw new Error(`BatchAddTags found ${reply.unknownTokens.length} tokens unknown`);
      }
      pairsDone += call.ordinals.length;
      if (pairsDone >= nextProgress) {
        nextProgress += Math.min(500_000, Math.ceil(pairs / 4));
        const seconds = (performance.now() - taggingStart) / 1000;
        log(`tagged ${pairsDone.toLocaleString('en-US')} pairs (${Math.round(pairsDone / seconds)}/s)`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(TAG_CALLS_IN_FLIGHT, calls.length) }, tagLane));
  const taggingCpu = cpu.stop();
  const taggingMs = performance.now() - taggingStart;
  log(`tagged in ${(taggingMs / 1000).toFixed(1)} s; cpu ${formatCpu(taggingCpu)}`);

  // 3. Memory: INFO before and after, and MEMORY USAGE by kind of key.
  const memoryTagged = await usedMemory(admin);
  const keyCount = Number(await admin.call('DBSIZE'));
  const byKind = await memoryByKind(admin, keys, accessId, tokens, population);
  const natsStoreBytes = dirBytes(nats.storeDir);
  const bytesPerDevice = (memoryTagged - memoryStart) / devices;
  log(
    `redis used_memory ${mib(memoryStart)} -> ${mib(memoryRegistered)} (registered) -> ${mib(memoryTagged)} ` +
      `(tagged): ${bytesPerDevice.toFixed(0)} B/device; ${keyCount} keys`,
  );

  // 4. Dry-run counts: the store directly, and TagService.countAudience (proto in, proto out).
  const now = () => Date.now();
  const threeTerms = normalize(parseInfix(THREE_TERMS));
  const oneTerm = normalize(parseInfix(ONE_TERM));
  const all = await tagStores.audience.count(accessId, { kind: 'all' }, now());
  const countKinds = [
    {
      label: THREE_TERMS,
      path: 'AudienceIndex.count',
      expected: population.expected.threeTerms,
      run: async () => (await tagStores.audience.count(accessId, threeTerms, now())).matched,
    },
    {
      label: ONE_TERM,
      path: 'AudienceIndex.count',
      expected: population.expected.oneTerm,
      run: async () => (await tagStores.audience.count(accessId, oneTerm, now())).matched,
    },
    {
      label: THREE_TERMS,
      path: 'TagService.countAudience',
      expected: population.expected.threeTerms,
      run: async () =>
        (
          await tagClient.countAudience({
            accessId,
            expression: THREE_TERMS_PROTO,
            platform: Platform.PLATFORM_UNSPECIFIED,
          })
        ).matched,
    },
    {
      label: ONE_TERM,
      path: 'TagService.countAudience',
      expected: population.expected.oneTerm,
      run: async () =>
        (
          await tagClient.countAudience({
            accessId,
            expression: ONE_TERM_PROTO,
            platform: Platform.PLATFORM_UNSPECIFIED,
          })
        ).matched,
    },
  ];
  log(`dry-run counts: ${runs} runs of each, interleaved`);
  const countTimes = countKinds.map(() => [] as number[]);
  const countMatched = countKinds.map(() => 0);
  for (let r = -3; r < runs; r++) {
    for (const [k, kind] of countKinds.entries()) {
      const started = performance.now();
      const matched = await kind.run();
      const ms = performance.now() - started;
      if (matched !== kind.expected) {
        throw new Error(`${kind.path} ${kind.label}: ${matched} matched, ${kind.expected} expected`);
      }
      countMatched[k] = matched;
      if (r >= 0) countTimes[k]!.push(ms);
    }
  }
  const counts = countTimes.map(timing);

  // 5. Accepting pushes: DispatchService.push with the cluster token; the push log is not applied yet.
  const phases = new PhaseTimes();
  const dispatchStores = dispatchConn.stores;
  const dispatchRegistry = timed(registryClient(), 'registry', phases);
  const acceptMetrics = createDispatchMetrics(
    createMetricsRegistry({ service: 'bench', processMetrics: false }),
  );
  const dispatchService = new DispatchService({
    pushes: timed(dispatchStores.pushes, 'pushes', phases),
    inboxes: dispatchStores.inboxes,
    broadcasts: dispatchStores.broadcasts,
    audience: timed(dispatchStores.audience, 'audience', phases),
    tags: dispatchStores.tags,
    devices: timed(dispatchStores.devices, 'devices', phases),
    bus: timed(dispatchConn.bus, 'bus', phases),
    registry: dispatchRegistry,
    clusterToken: CLUSTER_TOKEN,
    metrics: acceptMetrics,
    logger,
    // Not started: these pushes are immediate, the scheduler only backs the service's scheduling calls.
    scheduler: new Scheduler({
      schedule: dispatchStores.schedules,
      pushes: dispatchStores.pushes,
      bus: dispatchConn.bus,
      metrics: acceptMetrics,
      logger,
    }),
  });
  const dispatchClient = inProcessClient(
    DispatchServiceService,
    dispatchService.handlers(),
    bearerAuthorization(CLUSTER_TOKEN),
  );
  const tagAudience = (tag: string): Audience => ({
    target: { $case: 'tags', value: { form: { $case: 'tagList', value: { tags: [tag], op: 'OR' } } } },
  });
  const pushKinds = [
    { label: 'single token (reference)', audience: (r: number) => tokenAudience(tokens, r), expected: 1 },
    ...COHORTS.map((cohort) => ({
      label: `tag ${cohort.tag}`,
      audience: () => tagAudience(cohort.tag),
      expected: population.expected.cohorts.get(cohort.tag)!,
    })),
  ];
  // No expire_time_s: the default 72 hours for offline devices (0 would mean online only).
  const message = {
    type: MessageType.MESSAGE_TYPE_NOTIFY,
    title: 'bench',
    content: 'tags',
    customContent: {},
  };
  log(`accepting pushes: ${runs} of each audience, interleaved (no PushApplier running)`);
  const acceptTimes = pushKinds.map(() => [] as number[]);
  const acceptPhases = pushKinds.map(() => new Map<string, number[]>());
  let lastPushId = '';
  for (let r = -2; r < runs; r++) {
    for (const [k, kind] of pushKinds.entries()) {
      phases.start();
      const started = performance.now();
      const reply = await dispatchClient.push({
        accessId,
        audience: kind.audience(r + 2),
        message,
        platform: Platform.PLATFORM_UNSPECIFIED,
      });
      const ms = performance.now() - started;
      const recorded = phases.stop();
      if (reply.target !== kind.expected) {
        throw new Error(`push to ${kind.label}: target ${reply.target}, ${kind.expected} expected`);
      }
      lastPushId = reply.pushId;
      if (r < 0) continue;
      acceptTimes[k]!.push(ms);
      for (const [phase, phaseMs] of recorded) {
        const list = acceptPhases[k]!.get(phase) ?? [];
        list.push(phaseMs);
        acceptPhases[k]!.set(phase, list);
      }
    }
  }
  const accepts = acceptTimes.map(timing);
  const accepted = (runs + 2) * pushKinds.length;

  // 6. Applying: a PushApplier on the same log works off the backlog, then applies 10 % pushes one by one.
  const applier = new PushApplier({
    bus: dispatchConn.bus,
    pushes: dispatchStores.pushes,
    inboxes: dispatchStores.inboxes,
    routes: dispatchStores.routes,
    broadcasts: dispatchStores.broadcasts,
    metrics: createDispatchMetrics(createMetricsRegistry({ service: 'bench_apply', processMetrics: false })),
    logger,
  });
  const stopApplier = cleanup.add('push applier', () => applier.stop());
  const backlogStart = performance.now();
  applier.start();
  await appliedBy(dispatchStores, accessId, lastPushId, 120_000);
  const backlogMs = performance.now() - backlogStart;
  log(`applier: ${accepted} accepted pushes applied in ${(backlogMs / 1000).toFixed(2)} s`);
  const applyTimes: number[] = [];
  for (let r = 0; r < applyRuns; r++) {
    const started = performance.now();
    const reply = await dispatchClient.push({
      accessId,
      audience: tagAudience('cohort-10pct'),
      message,
      platform: Platform.PLATFORM_UNSPECIFIED,
    });
    await appliedBy(dispatchStores, accessId, reply.pushId, 30_000);
    applyTimes.push(performance.now() - started);
  }
  await stopApplier();
  const apply = timing(applyTimes);

  // Tables and figures.
  const cohortTiming = (tag: string) => accepts[pushKinds.findIndex((kind) => kind.label === `tag ${tag}`)]!;
  const token = accepts[0]!;
  const c1 = cohortTiming('cohort-1pct');
  const c10 = cohortTiming('cohort-10pct');
  const c50 = cohortTiming('cohort-50pct');
  const dryRun = counts[0]!;
  const registrationsPerS = devices / (registrationMs / 1000);
  const tables: Table[] = [
    {
      title:
        `tags: ${devices.toLocaleString('en-US')} devices on one redis-server; services in this process ` +
        '(in-process clients with protobuf encoding, no gRPC hop)',
      headers: ['phase', 'what', 'count', 'seconds', 'per second', 'cpu (cores)'],
      rows: [
        [
          'register',
          `RegisterDevice + REGISTERED applied (AudienceEvents), ${inflight} in flight`,
          devices,
          registrationMs / 1000,
          Math.round(registrationsPerS),
          formatCpu(registrationCpu, 4),
        ],
        [
          'tag',
          `BatchAddTags, 1 tag x <= 1,000 tokens, ${TAG_CALLS_IN_FLIGHT} in flight: device-tag pairs ` +
            `(${calls.length.toLocaleString('en-US')} calls)`,
          pairs,
          taggingMs / 1000,
          Math.round(pairs / (taggingMs / 1000)),
          formatCpu(taggingCpu, 4),
        ],
      ],
    },
    {
      title: 'redis memory (INFO used_memory)',
      headers: ['stage', 'used_memory', 'growth', 'bytes per device'],
      rows: [
        ['app created', mib(memoryStart), '', ''],
        [
          'registered (device, tag state, built-in bitmaps)',
          mib(memoryRegistered),
          mib(memoryRegistered - memoryStart),
          Math.round((memoryRegistered - memoryStart) / devices),
        ],
        [
          `user tags and cohorts (${(pairs / devices).toFixed(2)} per device)`,
          mib(memoryTagged),
          mib(memoryTagged - memoryRegistered),
          Math.round((memoryTagged - memoryRegistered) / devices),
        ],
        ['total', mib(memoryTagged), mib(memoryTagged - memoryStart), Math.round(bytesPerDevice)],
      ],
    },
    {
      title:
        `bytes per device by kind of key (MEMORY USAGE; per-device keys on a sample of ${byKind.sampled}, ` +
        `${keyCount.toLocaleString('en-US')} keys in all)`,
      headers: ['kind', 'keys', 'bytes per device'],
      rows: byKind.rows.map((row) => [row.kind, row.keys, Math.round(row.bytesPerDevice)]),
    },
    {
      title: `dry-run counts, ${runs} runs each (matched of ${all.matched.toLocaleString('en-US')} registered)`,
      headers: ['expression', 'path', 'matched', 'p50 ms', 'p90 ms', 'max ms', 'target'],
      rows: countKinds.map((kind, k) => [
        kind.label,
        kind.path,
        countMatched[k]!,
        counts[k]!.p50,
        counts[k]!.p90,
        counts[k]!.max,
        k === 0 ? `<= ${DRY_RUN_TARGET_MS} ms` : '',
      ]),
    },
    {
      title:
        `accepting a push (DispatchService.push, cluster token, ${runs} each): count, push record, ` +
        'one command appended to the JetStream push log; not applied',
      headers: ['audience', 'target devices', 'p50 ms', 'p90 ms', 'max ms', 'target'],
      rows: pushKinds.map((kind, k) => [
        kind.label,
        kind.expected,
        accepts[k]!.p50,
        accepts[k]!.p90,
        accepts[k]!.max,
        k === 0 ? '' : `<= ${ACCEPT_TARGET_MS} ms, flat`,
      ]),
    },
    {
      title: 'where an accepted push spends its time (median ms of each step)',
      headers: [
        'audience',
        'device lookup',
        'audience count',
        'push ids',
        'push record',
        'log append',
        'rest',
      ],
      rows: pushKinds.map((kind, k) => {
        const tokenPush = k === 0;
        // A step the push must have made but that was never timed fails the run rather than printing 0:
        // the timers wrap calls by name, and a renamed call would silently vanish from the table.
        const median = (phase: string, made: boolean) => {
          const values = acceptPhases[k]!.get(phase);
          if (values === undefined) {
            if (made) throw new Error(`tags: no ${phase} call timed while accepting "${kind.label}"`);
            return 0;
          }
          return percentiles(values, [50])[0] ?? 0;
        };
        const steps = [
          median('devices.getMany', tokenPush),
          median('audience.count', !tokenPush),
          median('pushes.nextPushId', true),
          median('pushes.save', true),
          median('bus.publishDurable', true),
        ];
        return [kind.label, ...steps, Math.max(0, accepts[k]!.p50 - steps.reduce((a, b) => a + b, 0))];
      }),
    },
    {
      title: 'applying (a PushApplier started after the acceptance runs)',
      headers: ['what', 'count', 'p50 ms', 'p90 ms', 'max ms'],
      rows: [
        ['backlog of the acceptance runs, in all', accepted, backlogMs, '', ''],
        ['tag push to cohort-10pct: accept + apply', applyRuns, apply.p50, apply.p90, apply.max],
      ],
    },
    {
      title: 'the issue targets',
      headers: ['figure', 'measured', 'target', 'met'],
      rows: [
        ['registrations/s', Math.round(registrationsPerS), '', ''],
        ['redis bytes per device', Math.round(bytesPerDevice), '', ''],
        [
          'dry-run count, 3 terms, p50 / p90 ms',
          `${fmt(dryRun.p50)} / ${fmt(dryRun.p90)}`,
          `<= ${DRY_RUN_TARGET_MS} ms`,
          met(dryRun.p90 <= DRY_RUN_TARGET_MS),
        ],
        [
          'accept tag push to 1 % / 10 % / 50 %, p50 ms',
          `${fmt(c1.p50)} / ${fmt(c10.p50)} / ${fmt(c50.p50)}`,
          `<= ${ACCEPT_TARGET_MS} ms`,
          met(Math.max(c1.p50, c10.p50, c50.p50) <= ACCEPT_TARGET_MS),
        ],
        [
          'accept tag push to 1 % / 10 % / 50 %, p90 ms',
          `${fmt(c1.p90)} / ${fmt(c10.p90)} / ${fmt(c50.p90)}`,
          `<= ${ACCEPT_TARGET_MS} ms`,
          met(Math.max(c1.p90, c10.p90, c50.p90) <= ACCEPT_TARGET_MS),
        ],
        [
          'independent of the audience: 50 % p50 vs 1 % p50',
          `${fmt(c50.p50)} vs ${fmt(c1.p50)}`,
          '50 % <= 2 x 1 % + 2 ms',
          met(c50.p50 <= 2 * c1.p50 + 2),
        ],
      ],
    },
    {
      title: 'other stores',
      headers: ['what', 'value'],
      rows: [
        ['JetStream store on disk (REGISTERED events, push log)', mib(natsStoreBytes)],
        ['redis keys', keyCount],
      ],
    },
  ];
  return {
    tables,
    figures: {
      benchmark: 'tags',
      devices,
      registered: done,
      indexed: all.matched,
      registrations_per_s: Math.round(registrationsPerS),
      registration_s: round(registrationMs / 1000, 1),
      tag_pairs: pairs,
      tag_calls: calls.length,
      tag_pairs_per_s: Math.round(pairs / (taggingMs / 1000)),
      tagging_s: round(taggingMs / 1000, 1),
      redis_bytes_per_device: Math.round(bytesPerDevice),
      redis_bytes_per_device_registered: Math.round((memoryRegistered - memoryStart) / devices),
      redis_used_memory_mib: round(memoryTagged / 2 ** 20, 1),
      redis_keys: keyCount,
      nats_store_mib: round(natsStoreBytes / 2 ** 20, 1),
      dry_run_matched: countMatched[0]!,
      dry_run_p50_ms: round(dryRun.p50),
      dry_run_p90_ms: round(dryRun.p90),
      dry_run_max_ms: round(dryRun.max),
      dry_run_1term_p50_ms: round(counts[1]!.p50),
      dry_run_service_p50_ms: round(counts[2]!.p50),
      dry_run_service_p90_ms: round(counts[2]!.p90),
      accept_token_p50_ms: round(token.p50),
      accept_token_p90_ms: round(token.p90),
      accept_1pct_p50_ms: round(c1.p50),
      accept_1pct_p90_ms: round(c1.p90),
      accept_10pct_p50_ms: round(c10.p50),
      accept_10pct_p90_ms: round(c10.p90),
      accept_50pct_p50_ms: round(c50.p50),
      accept_50pct_p90_ms: round(c50.p90),
      accept_10pct_target: population.expected.cohorts.get('cohort-10pct')!,
      apply_10pct_p50_ms: round(apply.p50),
      apply_backlog_s: round(backlogMs / 1000),
      runs,
      dry_run_target_ms: DRY_RUN_TARGET_MS,
      accept_target_ms: ACCEPT_TARGET_MS,
    },
  };
}

/** Draws every device's attributes and user tags from a seeded generator (the same N, the same devices). */
function drawPopulation(n: number): Population {
  const random = mulberry32(0x7a65);
  const vocabulary = Array.from({ length: USER_TAGS }, (_, rank) =>
    rank < NAMED_TAGS.length ? NAMED_TAGS[rank]! : `interest-${String(rank).padStart(4, '0')}`,
  );
  const tagCdf = zipfCdf(USER_TAGS, USER_TAG_ZIPF);
  const versionCdf = zipfCdf(APP_VERSIONS.length, 1);
  const androidCdf = zipfCdf(ANDROID_VERSIONS.length, 1);
  const iosCdf = zipfCdf(IOS_VERSIONS.length, 1);
  const localeCdf = zipfCdf(LOCALES.length, 1);
  const ios = new Uint8Array(n);
  const appVersion = new Uint8Array(n);
  const osVersion = new Uint8Array(n);
  const locale = new Uint8Array(n);
  const holders: number[][] = Array.from({ length: USER_TAGS + COHORTS.length }, () => []);
  const sports = vocabulary.indexOf('sports');
  const music = vocabulary.indexOf('music');
  let threeTerms = 0;
  let oneTerm = 0;
  const picked = new Set<number>();
  for (let i = 0; i < n; i++) {
    ios[i] = random() < IOS_SHARE ? 1 : 0;
    appVersion[i] = sample(versionCdf, random());
    osVersion[i] = sample(ios[i] ? iosCdf : androidCdf, random());
    locale[i] = sample(localeCdf, random());
    const count = Math.floor(random() * (MAX_USER_TAGS_PER_DEVICE + 1));
    picked.clear();
    while (picked.size < count) picked.add(sample(tagCdf, random()));
    for (const id of picked) holders[id]!.push(i);
    if (picked.has(sports)) oneTerm++;
    if ((picked.has(sports) || picked.has(music)) && !ios[i]) threeTerms++;
  }
  // Cohorts: exactly floor(n * percent / 100) devices each, scattered by a permutation of the ordinals.
  const stride = coprimeStride(n);
  const cohorts = new Map<string, number>();
  COHORTS.forEach((cohort, c) => {
    const size = Math.floor((n * cohort.percent) / 100);
    const offset = (c + 1) * 7_777;
    const members = holders[USER_TAGS + c]!;
    for (let i = 0; i < n; i++) if ((i * stride + offset) % n < size) members.push(i);
    cohorts.set(cohort.tag, size);
  });
  return {
    n,
    ios,
    appVersion,
    osVersion,
    locale,
    holders,
    vocabulary: [...vocabulary, ...COHORTS.map((cohort) => cohort.tag)],
    expected: { threeTerms, oneTerm, cohorts },
  };
}

/** A stride coprime with n, so that i -> i * stride mod n is a permutation. */
function coprimeStride(n: number): number {
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  let stride = 1_000_003;
  while (gcd(stride, n) !== 1) stride += 2;
  return stride;
}

function zipfCdf(n: number, s: number): Float64Array {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let k = 0; k < n; k++) {
    sum += 1 / (k + 1) ** s;
    cdf[k] = sum;
  }
  for (let k = 0; k < n; k++) cdf[k] = (cdf[k] ?? 0) / sum;
  return cdf;
}

/** The first index whose cumulative weight exceeds u. */
function sample(cdf: Float64Array, u: number): number {
  let low = 0;
  let high = cdf.length - 1;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (cdf[mid]! > u) high = mid;
    else low = mid + 1;
  }
  return low;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

function tokenAudience(tokens: string[], round: number): Audience {
  return { target: { $case: 'token', value: tokens[(round * 7_919) % tokens.length]! } };
}

function timing(values: number[]): Timing {
  const [p50 = Number.NaN, p90 = Number.NaN, max = Number.NaN] = percentiles(values, [50, 90, 100]);
  return { p50, p90, max, runs: values.length };
}

function fmt(ms: number): string {
  return ms >= 10 ? ms.toFixed(0) : ms.toFixed(1);
}

function met(ok: boolean): string {
  return ok ? 'yes' : 'NO';
}

function positiveInt(name: string, value: string): number {
  const number = Number(value);
  if (!Number.isInteger(number) || number <= 0) throw new Error(`${name} must be a positive integer`);
  return number;
}

async function usedMemory(redis: RedisClient): Promise<number> {
  const info = String(await redis.call('INFO', 'memory'));
  const match = /^used_memory:(\d+)/m.exec(info);
  if (!match) throw new Error('INFO memory has no used_memory');
  return Number(match[1]);
}

/** Waits until the push left SENDING (the applier saved it DONE, or FAILED). */
async function appliedBy(stores: Stores, accessId: number, pushId: string, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const record = await stores.pushes.get(accessId, pushId);
    if (record !== undefined && record.status !== PushStatus.PUSH_STATUS_SENDING) return;
    if (performance.now() > deadline) throw new Error(`push ${pushId} not applied after ${timeoutMs} ms`);
    await sleep(1);
  }
}

/** MEMORY USAGE of the app's keys (all of them) and of each device's keys (on a sample), per device. */
async function memoryByKind(
  redis: RedisClient,
  keys: RedisKeys,
  accessId: number,
  tokens: string[],
  population: Population,
): Promise<{ sampled: number; rows: { kind: string; keys: number; bytesPerDevice: number }[] }> {
  const n = tokens.length;
  const usage = async (key: string) =>
    Number((await redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0')) ?? 0);
  const sampled = Math.min(1_000, n);
  const perDevice = [
    { kind: 'device record (:dev hash)', key: (t: string) => keys.device(accessId, t) },
    { kind: 'tag state (:tagmeta hash)', key: (t: string) => keys.tagMeta(accessId, t) },
    { kind: 'user tags (:tags set)', key: (t: string) => keys.tags(accessId, t) },
  ];
  const rows: { kind: string; keys: number; bytesPerDevice: number }[] = [];
  for (const entry of perDevice) {
    let bytes = 0;
    let present = 0;
    for (let s = 0; s < sampled; s++) {
      const used = await usage(entry.key(tokens[Math.floor((s * n) / sampled)]!));
      bytes += used;
      if (used > 0) present++;
    }
    rows.push({
      kind: entry.kind,
      keys: Math.round((present / sampled) * n),
      bytesPerDevice: bytes / sampled,
    });
  }
  const userTags = new Set(population.vocabulary.map((tag) => keys.audienceTag(accessId, tag)));
  const registered = keys.audienceRegistered(accessId);
  const platforms = new Set([
    keys.audiencePlatform(accessId, Platform.PLATFORM_ANDROID),
    keys.audiencePlatform(accessId, Platform.PLATFORM_IOS),
  ]);
  const kinds = new Map<string, { keys: number; bytes: number }>();
  const add = (kind: string, bytes: number) => {
    const entry = kinds.get(kind) ?? { keys: 0, bytes: 0 };
    entry.keys++;
    entry.bytes += bytes;
    kinds.set(kind, entry);
  };
  const appTag = keys.app(accessId).slice(0, -':app'.length);
  const audiencePrefix = `${appTag}:aud:`;
  let cursor = '0';
  do {
    const [nextCursor, found] = (await redis.call(
      'SCAN',
      cursor,
      'MATCH',
      `${appTag}:*`,
      'COUNT',
      '1000',
    )) as [string, string[]];
    cursor = nextCursor;
    for (const key of found) {
      const bytes = await usage(key);
      if (key === registered || platforms.has(key)) add('bitmaps: registered, platforms', bytes);
      else if (userTags.has(key)) add('bitmaps: user tags and cohorts', bytes);
      else if (key.startsWith(`${audiencePrefix}t:`)) add('bitmaps: built-in value tags', bytes);
      else if (key.startsWith(`${audiencePrefix}d:`) || key === keys.audienceOnline(accessId))
        add('bitmaps: seen days, online', bytes);
      else add('app keys (app, counters, tag counts)', bytes);
    }
  } while (cursor !== '0');
  for (const [kind, entry] of kinds) rows.push({ kind, keys: entry.keys, bytesPerDevice: entry.bytes / n });
  rows.push({
    kind: 'sum',
    keys: rows.reduce((sum, row) => sum + row.keys, 0),
    bytesPerDevice: rows.reduce((sum, row) => sum + row.bytesPerDevice, 0),
  });
  return { sampled, rows };
}

function dirBytes(dir: string): number {
  let total = 0;
  try {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      total += entry.isDirectory() ? dirBytes(path) : statSync(path).size;
    }
  } catch {}
  return total;
}

/** Durations of the calls a push makes on its stores, by `<label>.<method>`, while recording. */
class PhaseTimes {
  private recording: Map<string, number> | undefined;

  start(): void {
    this.recording = new Map();
  }

  stop(): Map<string, number> {
    const recorded = this.recording ?? new Map<string, number>();
    this.recording = undefined;
    return recorded;
  }

  add(phase: string, ms: number): void {
    if (this.recording === undefined) return;
    this.recording.set(phase, (this.recording.get(phase) ?? 0) + ms);
  }
}

/** `target` with every method that returns a promise timed into `sink` as `<label>.<method>`. */
function timed<T extends object>(target: T, label: string, sink: PhaseTimes): T {
  return new Proxy(target, {
    get(object, property, receiver) {
      const value: unknown = Reflect.get(object, property, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        const started = performance.now();
        const result: unknown = value.apply(object, args);
        if (result instanceof Promise) {
          return result.finally(() => sink.add(`${label}.${String(property)}`, performance.now() - started));
        }
        return result;
      };
    },
  });
}

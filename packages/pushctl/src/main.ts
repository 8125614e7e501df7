// pushctl: the command line for the first two minutes (create an app, run a simulated device, push to
// it, read its statistics) and for poking a running system.
import { parseArgs } from 'node:util';
import { PushdError } from '@pushd/common';
import { DeviceClient, generateDeviceId } from '@pushd/device-sdk';
import {
  DispatchServiceService,
  MessageType,
  Platform,
  pushStatusFromJSON,
  pushStatusToJSON,
  RegistryServiceService,
  StatsServiceService,
} from '@pushd/proto';
import { basicAuthorization, bearerAuthorization, createRpcClient } from '@pushd/rpc';
import { loadProfile, type Profile, profilePath, updateProfile } from './profile.js';

const DEV_CLUSTER_TOKEN = 'dev-cluster-token-change-me';

const USAGE = `pushctl: talk to a pushd system (defaults fit \`pnpm start\` on this machine)

Commands:
  app create --name NAME          create an app (cluster token), remember its keys
  device [--new] [--platform android|ios] [--json] [--count N]
                                  connect as a simulated device of the app, register on first use,
                                  print each message it receives and acknowledge it
  push [--token T | --tokens T1,T2 | --account A | --accounts A1,A2 | --all | --tags T1,T2 [--tags-op and|or]]
       [--only android|ios]
       --content TEXT [--title TEXT] [--type notify|message] [--custom k=v]... [--expire SECONDS (0: online only)]
                                  push to devices (default: the simulated device), print the push id
       [--send-at ISO-8601-TIME] [--idempotency-key K]
  stats [--push-id P]             sent and arrived counts of a push (default: the last one)
  pushes [--status scheduled|sending|done|cancelled|failed]
                                  the app's pushes, newest first, with their status
  cancel [--push-id P]            cancel a scheduled push (default: the last one)

Options for every command:
  --registry HOST:PORT   (default localhost:50051)   --dispatch HOST:PORT (default localhost:50053)
  --stats HOST:PORT      (default localhost:50054)   --gateway URL (default ws://localhost:8080/v1/ws)
  --cluster-token TOKEN  (default $CLUSTER_TOKEN, else the embedded mode's development token)
  --access-id ID --secret-key KEY --access-key KEY   (default: the app remembered in the profile)
  --json                 print machine-readable JSON lines

The profile (endpoints, app keys, simulated device) is kept in ${profilePath()} ($PUSHCTL_CONFIG).
`;

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    name: { type: 'string' },
    new: { type: 'boolean', default: false },
    platform: { type: 'string', default: 'android' },
    tokens: { type: 'string' },
    account: { type: 'string' },
    accounts: { type: 'string' },
    all: { type: 'boolean', default: false },
    tags: { type: 'string' },
    'tags-op': { type: 'string', default: 'or' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
    count: { type: 'string' },
    token: { type: 'string' },
    title: { type: 'string', default: '' },
    content: { type: 'string' },
    type: { type: 'string', default: 'notify' },
    custom: { type: 'string', multiple: true, default: [] },
    expire: { type: 'string' },
    'push-id': { type: 'string' },
    'send-at': { type: 'string' },
    'idempotency-key': { type: 'string' },
    status: { type: 'string' },
    registry: { type: 'string' },
    dispatch: { type: 'string' },
    stats: { type: 'string' },
    gateway: { type: 'string' },
    'cluster-token': { type: 'string' },
    'access-id': { type: 'string' },
    'secret-key': { type: 'string' },
    'access-key': { type: 'string' },
    encoding: { type: 'string', default: 'proto' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

const profile = loadProfile();
const endpoints = {
  registry: values.registry ?? profile.registry ?? 'localhost:50051',
  dispatch: values.dispatch ?? profile.dispatch ?? 'localhost:50053',
  stats: values.stats ?? profile.stats ?? 'localhost:50054',
  gateway: values.gateway ?? profile.gateway ?? 'ws://localhost:8080/v1/ws',
};
const clusterToken = values['cluster-token'] ?? process.env.CLUSTER_TOKEN ?? DEV_CLUSTER_TOKEN;

function print(human: string, data: Record<string, unknown>): void {
  process.stdout.write(values.json ? `${JSON.stringify(data)}\n` : `${human}\n`);
}

function fail(message: string): never {
  throw new UsageError(message);
}

class UsageError extends Error {}

function app(): { accessId: number; secretKey: string; accessKey: string } {
  const accessId = Number(values['access-id'] ?? profile.app?.accessId);
  const secretKey = values['secret-key'] ?? profile.app?.secretKey ?? '';
  const accessKey = values['access-key'] ?? profile.app?.accessKey ?? '';
  if (!Number.isSafeInteger(accessId) || accessId <= 0)
    fail('no app: run `pushctl app create --name demo` or pass --access-id');
  return { accessId, secretKey, accessKey };
}

function appAuthorization(): string {
  const { accessId, secretKey } = app();
  if (secretKey === '') fail('no secret key: pass --secret-key or create the app with pushctl');
  return basicAuthorization(accessId, secretKey);
}

/** Saves `update` (or what it computes from the profile as it is now) with the endpoints in use. */
function save(update: Partial<Profile> | ((current: Profile) => Partial<Profile>)): void {
  updateProfile((current) => ({
    ...current,
    ...endpointsToSave(),
    ...(typeof update === 'function' ? update(current) : update),
  }));
}

function endpointsToSave(): Partial<Profile> {
  return {
    registry: endpoints.registry,
    dispatch: endpoints.dispatch,
    stats: endpoints.stats,
    gateway: endpoints.gateway,
  };
}

async function appCreate(): Promise<void> {
  const name = values.name ?? fail('app create needs --name');
  const registry = createRpcClient(RegistryServiceService, {
    address: endpoints.registry,
    authorization: bearerAuthorization(clusterToken),
  });
  try {
    const created = await registry.createApp({ name });
    const accessId = created.app?.accessId ?? 0;
    save({
      app: { accessId, accessKey: created.accessKey, secretKey: created.secretKey },
      device: undefined,
      lastPushId: undefined,
    });
    print(
      `app "${name}" created\n  access id   ${accessId}\n  access key  ${created.accessKey}   (devices)\n  secret key  ${created.secretKey}   (servers; shown once)\nsaved to ${profilePath()}`,
      { accessId, accessKey: created.accessKey, secretKey: created.secretKey },
    );
  } finally {
    registry.close();
  }
}

async function device(): Promise<void> {
  const { accessId, accessKey } = app();
  const platform =
    values.platform === 'ios'
      ? Platform.PLATFORM_IOS
      : values.platform === 'android'
        ? Platform.PLATFORM_ANDROID
        : fail('--platform is android or ios');
  const encoding =
    values.encoding === 'json'
      ? 'json'
      : values.encoding === 'proto'
        ? 'proto'
        : fail('--encoding is proto or json');
  const limit = values.count === undefined ? Number.POSITIVE_INFINITY : Number(values.count);
  const known = values.new ? undefined : profile.device;
  const session =
    known?.token && known.credential ? { token: known.token, credential: known.credential } : undefined;
  const deviceId = known?.deviceId ?? generateDeviceId();
  if (!session && accessKey === '') fail('no access key: pass --access-key or create the app with pushctl');
  const client = new DeviceClient({
    url: endpoints.gateway,
    accessId,
    encoding,
    lastMsgId: session ? (known?.lastMsgId ?? 0) : 0,
    reconnect: true,
    ...(session ? { session } : { registration: { accessKey, deviceId, platform, sdkVersion: 'pushctl' } }),
  });
  let received = 0;
  const done = new Promise<void>((resolve) => {
    client.on('message', (message) => {
      received++;
      save((current) => ({ device: { ...current.device, deviceId, lastMsgId: message.msgId } }));
      const content = message.message;
      print(
        `message ${message.msgId} (push ${message.pushId}): ${content?.title ? `${content.title}: ` : ''}${content?.content ?? ''}${
          content && Object.keys(content.customContent).length > 0
            ? ` ${JSON.stringify(content.customContent)}`
            : ''
        }`,
        {
          event: 'message',
          msgId: message.msgId,
          pushId: message.pushId,
          title: content?.title,
          content: content?.content,
          customContent: content?.customContent,
        },
      );
      if (received >= limit) resolve();
    });
    client.on('close', (event) => {
      if (event.reconnecting)
        print(`connection lost (${event.error?.code ?? event.code}); reconnecting`, {
          event: 'reconnecting',
          code: event.error?.code,
        });
      else resolve();
    });
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  const result = await client.connect();
  if (result.registered) {
    save({
      device: {
        deviceId,
        token: result.registered.token,
        credential: result.registered.credential,
        lastMsgId: 0,
        platform: values.platform,
      },
    });
  }
  print(
    `device ${result.registered ? (result.registered.created ? 'registered' : 're-registered') : 'connected'}: token ${result.connected.token}\nwaiting for messages (Ctrl-C to stop)`,
    { event: 'connected', token: result.connected.token, registered: result.registered !== undefined },
  );
  await done;
  await client.close();
}

async function push(): Promise<void> {
  const { accessId } = app();
  const list = (text: string) =>
    text
      .split(',')
      .map((entry) => entry.trim())
      .filter((entry) => entry !== '');
  const tagsOp = values['tags-op'].toUpperCase();
  if (tagsOp !== 'AND' && tagsOp !== 'OR') fail('--tags-op is and or or');
  const target = values.all
    ? { $case: 'all' as const, value: {} }
    : values.tags !== undefined
      ? {
          $case: 'tags' as const,
          value: { form: { $case: 'tagList' as const, value: { tags: list(values.tags), op: tagsOp } } },
        }
      : values.tokens !== undefined
        ? { $case: 'tokenList' as const, value: { tokens: list(values.tokens) } }
        : values.account !== undefined
          ? { $case: 'account' as const, value: values.account }
          : values.accounts !== undefined
            ? { $case: 'accountList' as const, value: { accounts: list(values.accounts) } }
            : {
                $case: 'token' as const,
                value:
                  values.token ??
                  profile.device?.token ??
                  fail('push needs --token (or run `pushctl device` first)'),
              };
  const platform =
    values.only === undefined
      ? Platform.PLATFORM_UNSPECIFIED
      : values.only === 'android'
        ? Platform.PLATFORM_ANDROID
        : values.only === 'ios'
          ? Platform.PLATFORM_IOS
          : fail('--only is android or ios');
  const content = values.content ?? fail('push needs --content');
  const type =
    values.type === 'message'
      ? MessageType.MESSAGE_TYPE_MESSAGE
      : values.type === 'notify'
        ? MessageType.MESSAGE_TYPE_NOTIFY
        : fail('--type is notify or message');
  const customContent: Record<string, string> = {};
  for (const pair of values.custom) {
    const at = pair.indexOf('=');
    if (at <= 0) fail(`--custom takes key=value, got ${JSON.stringify(pair)}`);
    customContent[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const expire = values.expire === undefined ? undefined : Number(values.expire);
  if (expire !== undefined && (!Number.isInteger(expire) || expire < 0))
    fail('--expire is a number of seconds');
  const sendTimeMs = values['send-at'] === undefined ? undefined : Date.parse(values['send-at']);
  if (sendTimeMs !== undefined && Number.isNaN(sendTimeMs)) {
    fail(`--send-at takes an ISO 8601 time such as 2026-12-01T09:00:00Z, got ${values['send-at']}`);
  }
  const dispatch = createRpcClient(DispatchServiceService, {
    address: endpoints.dispatch,
    authorization: appAuthorization(),
  });
  try {
    const result = await dispatch.push({
      ...(sendTimeMs === undefined ? {} : { sendTimeMs }),
      ...(values['idempotency-key'] === undefined ? {} : { idempotencyKey: values['idempotency-key'] }),
      accessId,
      audience: { target },
      message: { type, title: values.title, content, customContent },
      expireTimeS: expire,
      platform,
    });
    save({ lastPushId: result.pushId });
    const skipped = [...result.invalidTokens, ...result.unknownAccounts];
    print(
      `push accepted: push_id ${result.pushId} (msg_id ${result.msgId}) to ${result.target} device(s)${
        skipped.length > 0 ? `; not registered or without devices: ${skipped.join(', ')}` : ''
      }`,
      {
        pushId: result.pushId,
        msgId: result.msgId,
        target: result.target,
        invalidTokens: result.invalidTokens,
        unknownAccounts: result.unknownAccounts,
      },
    );
  } finally {
    dispatch.close();
  }
}

/** The app's pushes with their status, newest first (one page of 100). */
async function pushes(): Promise<void> {
  const { accessId } = app();
  const named = values.status === undefined ? undefined : `PUSH_STATUS_${values.status.toUpperCase()}`;
  const known = ['SCHEDULED', 'SENDING', 'DONE', 'CANCELLED', 'FAILED'].map((name) => `PUSH_STATUS_${name}`);
  if (named !== undefined && !known.includes(named)) {
    fail('--status is scheduled, sending, done, cancelled or failed');
  }
  const statuses = named === undefined ? [] : [pushStatusFromJSON(named)];
  const dispatch = createRpcClient(DispatchServiceService, {
    address: endpoints.dispatch,
    authorization: appAuthorization(),
  });
  try {
    const page = await dispatch.listPushes({
      accessId,
      createdFromMs: 0,
      createdToMs: 0,
      statuses,
      pageSize: 100,
      pageToken: '',
    });
    for (const push of page.pushes) {
      const status = pushStatusToJSON(push.status).replace('PUSH_STATUS_', '').toLowerCase();
      print(
        `${push.pushId}\t${status}\t${new Date(push.sendTimeMs).toISOString()}\ttarget ${push.target}\t${
          push.message?.content ?? ''
        }`,
        { pushId: push.pushId, status, sendTimeMs: push.sendTimeMs, target: push.target, msgId: push.msgId },
      );
    }
  } finally {
    dispatch.close();
  }
}

async function cancel(): Promise<void> {
  const { accessId } = app();
  const pushId = values['push-id'] ?? profile.lastPushId ?? fail('cancel needs --push-id');
  const dispatch = createRpcClient(DispatchServiceService, {
    address: endpoints.dispatch,
    authorization: appAuthorization(),
  });
  try {
    await dispatch.cancelPush({ accessId, pushId });
    print(`push ${pushId} cancelled`, { pushId, status: 'cancelled' });
  } finally {
    dispatch.close();
  }
}

async function stats(): Promise<void> {
  const { accessId } = app();
  const pushId = values['push-id'] ?? profile.lastPushId ?? fail('stats needs --push-id');
  const client = createRpcClient(StatsServiceService, {
    address: endpoints.stats,
    authorization: appAuthorization(),
  });
  try {
    const { stats: counts } = await client.getPushStats({ accessId, pushId });
    print(`push ${pushId}: sent=${counts?.sent ?? 0} arrived=${counts?.arrived ?? 0}`, {
      pushId,
      sent: counts?.sent ?? 0,
      arrived: counts?.arrived ?? 0,
    });
  } finally {
    client.close();
  }
}

async function main(): Promise<void> {
  const [command, sub] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  if (command === 'app' && sub === 'create') return appCreate();
  if (command === 'device') return device();
  if (command === 'push') return push();
  if (command === 'stats') return stats();
  if (command === 'pushes') return pushes();
  if (command === 'cancel') return cancel();
  fail(`unknown command ${JSON.stringify(positionals.join(' '))}; see pushctl --help`);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    if (error instanceof PushdError) {
      process.stderr.write(`pushctl: ${error.code}: ${error.message}\n`);
      if (error.code === 'UNAVAILABLE')
        process.stderr.write('  is pushd running? (`npx --yes pnpm@12.4.2 start`)\n');
    } else if (error instanceof UsageError) {
      process.stderr.write(`pushctl: ${error.message}\n`);
    } else {
      process.stderr.write(`pushctl: ${error instanceof Error ? error.stack : String(error)}\n`);
    }
    process.exit(1);
  },
);

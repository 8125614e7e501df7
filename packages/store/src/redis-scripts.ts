import { readFileSync } from 'node:fs';
import type { RedisClient } from './redis-client.js';

/**
 * The Lua scripts of the Redis stores (files in ./scripts), with their number of keys (null: as many as
 * the caller passes). Each touches the keys of one hash slot only, all passed in KEYS, so that they run
 * unchanged on Redis Cluster.
 */
const SCRIPTS = {
  accountDelete: { file: 'account-delete', keys: 1 },
  accountPut: { file: 'account-put', keys: 1 },
  audienceBits: { file: 'audience-bits', keys: null },
  audienceCount: { file: 'audience-count', keys: null },
  broadcastAppend: { file: 'broadcast-append', keys: 3 },
  broadcastGate: { file: 'broadcast-gate', keys: 1 },
  broadcastSince: { file: 'broadcast-since', keys: 3 },
  deviceBind: { file: 'device-bind', keys: 1 },
  deviceRemove: { file: 'device-remove', keys: 1 },
  deviceUpsert: { file: 'device-upsert', keys: 1 },
  hashIncr: { file: 'hash-incr', keys: 1 },
  idempotency: { file: 'idempotency', keys: 1 },
  inboxAck: { file: 'inbox-ack', keys: 2 },
  inboxAppend: { file: 'inbox-append', keys: 3 },
  inboxPending: { file: 'inbox-pending', keys: 3 },
  pushIndex: { file: 'push-index', keys: 2 },
  pushSave: { file: 'push-save', keys: 1 },
  pushSaveCommand: { file: 'push-save-command', keys: 1 },
  pushUpdate: { file: 'push-update', keys: 1 },
  pushClaim: { file: 'push-claim', keys: 1 },
  routeClear: { file: 'route-clear', keys: 1 },
  routeRefresh: { file: 'route-refresh', keys: 1 },
  routeSet: { file: 'route-set', keys: 1 },
  scheduleAdd: { file: 'schedule-add', keys: 2 },
  scheduleClaim: { file: 'schedule-claim', keys: 1 },
  scheduleRemove: { file: 'schedule-remove', keys: 2 },
  statsDay: { file: 'stats-day', keys: 2 },
  statsFunnel: { file: 'stats-funnel', keys: 3 },
  tagDevice: { file: 'tag-device', keys: 2 },
  tagRelease: { file: 'tag-release', keys: 1 },
  tagReserve: { file: 'tag-reserve', keys: 1 },
} satisfies Record<string, { file: string; keys: number | null }>;

export type ScriptName = keyof typeof SCRIPTS;
export type ScriptArg = string | number | Buffer;
type ScriptMethod = (...args: ScriptArg[]) => unknown;

let sources: Map<ScriptName, string> | undefined;
const clientsWithScripts = new WeakSet<RedisClient>();

/**
 * Read once per process. A bundled service must ship src/scripts/*.lua next to its bundle (they are
 * resolved relative to this module's URL).
 */
function scriptSources(): Map<ScriptName, string> {
  if (!sources) {
    const loaded = new Map<ScriptName, string>();
    for (const [name, spec] of Object.entries(SCRIPTS) as [ScriptName, (typeof SCRIPTS)[ScriptName]][]) {
      loaded.set(name, readFileSync(new URL(`./scripts/${spec.file}.lua`, import.meta.url), 'utf8'));
    }
    sources = loaded;
  }
  return sources;
}

/** Command name on the client; prefixed so that other code defining commands on a shared client cannot clash. */
function commandName(name: ScriptName): string {
  return `pushd_${name}`;
}

/**
 * The commands of the scripts whose key count is their first argument (keys: null). Auto-pipelining picks
 * a Redis Cluster node by a command's first argument, which for these is the count, not a key: in a tick's
 * pipeline bound for another node they failed. A cluster client sends them on their own, and ioredis then
 * routes their EVALSHA by its keys.
 */
export const SCRIPTS_WITH_KEY_COUNT_ARGUMENT: string[] = (Object.keys(SCRIPTS) as ScriptName[])
  .filter((name) => SCRIPTS[name].keys === null)
  .map(commandName);

/**
 * Defines every script as a command of the client, once per client however many stores share it.
 * ioredis then sends EVALSHA and falls back to EVAL only on the first use per connection (or NOSCRIPT).
 * Must run before pipelines are created: a pipeline copies the client's commands when it is made.
 */
export function defineScripts(client: RedisClient): void {
  if (clientsWithScripts.has(client)) return;
  for (const [name, lua] of scriptSources()) {
    const keys = SCRIPTS[name].keys;
    // Without numberOfKeys, ioredis takes the number of keys as the first argument (see runScript).
    client.defineCommand(commandName(name), keys === null ? { lua } : { numberOfKeys: keys, lua });
  }
  clientsWithScripts.add(client);
}

function method(target: RedisClient, name: string): ScriptMethod {
  const found = (target as unknown as Record<string, ScriptMethod | undefined>)[name];
  if (!found)
    throw new Error(`script ${name} is not defined on this Redis client (call defineScripts first)`);
  return found;
}

/** Runs a script; bulk replies come back as strings. */
export function runScript(
  client: RedisClient,
  name: ScriptName,
  keys: string[],
  args: ScriptArg[],
): Promise<unknown> {
  return method(client, commandName(name)).call(client, ...keyArgs(name, keys), ...args) as Promise<unknown>;
}

/**
 * Runs a script; bulk replies come back as Buffers (binary data). ioredis defines this `<name>Buffer`
 * variant beside every command defined by defineScripts.
 */
export function runScriptBuffer(
  client: RedisClient,
  name: ScriptName,
  keys: string[],
  args: ScriptArg[],
): Promise<unknown> {
  return method(client, `${commandName(name)}Buffer`).call(
    client,
    ...keyArgs(name, keys),
    ...args,
  ) as Promise<unknown>;
}

function keyArgs(name: ScriptName, keys: string[]): ScriptArg[] {
  return SCRIPTS[name].keys === null ? [keys.length, ...keys] : keys;
}

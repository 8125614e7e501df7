import { ConfigError, invalidArgument } from '@pushd/common';

/*
 * The Redis key layout: the one place keys are built. `P` is the prefix (default 'pushd'), `a` an access
 * id, `t` a device token, `c` an account, `id` a push id; `enc(x)` is `encodePart` below.
 *
 * | key                              | type   | content                                                   | owner    |
 * | -------------------------------- | ------ | --------------------------------------------------------- | -------- |
 * | P:app-seq                        | string | counter; access id = 1500000000 + value                   | registry |
 * | P:{a:a}:app                      | hash   | n name, ak access key, sk secret hash, tk token key, c ms | registry |
 * | P:{a:a}:devices                  | hash   | t total, p<platform number> per platform (covered devices)| registry |
 * |                                  |        | x device indexes handed out (next index = x)              |          |
 * | P:{a:a}:seq                      | hash   | p last push id, b bind version                            | dispatch |
 * | P:{a:a}:tagcount                 | hash   | user tag -> devices holding it (+ reservations in flight) | tag      |
 * | P:{a:a}:aud:reg                  | string | bitmap by device index: registered                        | tag      |
 * | P:{a:a}:aud:pf:<platform number> | string | bitmap: registered on that platform                       | tag      |
 * | P:{a:a}:aud:t:enc(tag)           | string | bitmap: holds the tag (user tags, built-in value tags)    | tag      |
 * | P:{a:a}:aud:on                   | string | bitmap: connected to a gateway now                        | tag      |
 * | P:{a:a}:aud:d:<UTC day number>   | string | bitmap: connected that day (days since epoch), 31-day TTL | tag      |
 * | P:{a:a}:aud:tmp:<nonce>:<n>      | string | temporaries of one audience count, deleted by its script  | tag      |
 * | P:{a:a}:bcast                    | zset   | score msg id, member 8-byte msg id + 8-byte expiry + data | dispatch |
 * | P:{a:a}:bcast:exp                | zset   | score expiry, member the 8-byte msg id of a bcast entry   | dispatch |
 * | P:{a:a}:bcast:head               | string | highest msg id ever appended to the broadcast log         | dispatch |
 * | P:{a:a}:bcast:gate               | string | '1' while a broadcast to all devices holds the rate gate  | dispatch |
 * | P:{a:a}:stats:d:<UTC day number> | hash   | p pushes, s sent, a arrived, c clicked that day; 31 days  | stats    |
 * | P:{a:a}:stats:dc:<UTC day number>| hash   | <stage><push id> -> that push's count carried into the day| stats    |
 * | P:{a:a}:pushes                   | zset   | all score 0, member `<created ms, 15 digits>:<id length,  | dispatch |
 * |                                  |        | 3 digits>:<push id>`: the app's pushes by creation time   |          |
 * | P:{a:a}:pushes:ret               | zset   | same members, score the push's retention deadline (ms)    | dispatch |
 * | P:{a:a}:idem:enc(key)            | hash   | p push id holding the push call's idempotency key, r its  | dispatch |
 * |                                  |        | encoded response once completed; 24-hour TTL              |          |
 * | P:{d:a:enc(t)}:dev               | hash   | device record (see device-store-redis.ts)                 | registry |
 * | P:{d:a:enc(t)}:inbox             | zset   | score msg id, member 8-byte expiry + PushMessage bytes    | dispatch |
 * | P:{d:a:enc(t)}:last              | string | highest msg id ever appended to the inbox                 | dispatch |
 * | P:{d:a:enc(t)}:inboxmeta         | hash   | <msg id> -> `<expiry ms>:<collapse id>` per inbox entry,  | dispatch |
 * |                                  |        | d dropped since the last pending (no TTL, <= capacity+1)  |          |
 * | P:{d:a:enc(t)}:route             | string | `<session id length>:<session id><node id>`, with a TTL    | gateway  |
 * | P:{d:a:enc(t)}:tags              | set    | the device's tags                                         | tag      |
 * | P:{d:a:enc(t)}:tagmeta           | hash   | tag service's view of the device (tag-store-redis.ts)     | tag      |
 * | P:{c:a:enc(c)}:tokens            | hash   | token -> bind version (account index, read-repaired)      | registry |
 * | P:{p:a:enc(id)}:push             | hash   | r PushRecord bytes, s status, n target, m msg id, o       | dispatch |
 * |                                  |        | occurrences, f failure, t created ms, x firing occurrence,|          |
 * |                                  |        | c command bytes, q command plan (push-store-redis.ts)     |          |
 * | P:{p:a:enc(id)}:counts           | hash   | s sent, a arrived, c clicked; <stage><platform number>,   | stats    |
 * |                                  |        | l<latency bucket>, d<day>:<stage> (stats-store-redis.ts)  |          |
 * | P:{p:a:enc(id)}:sent / :arrived  | set    | tokens already counted (dedup), with a TTL                | stats    |
 * |   / :clicked                     |        |                                                           |          |
 * | P:{s:n}:sched                    | zset   | push-log partition n's schedule: score due ms (fire time  | dispatch |
 * |                                  |        | or lease end), member `a:enc(id):<occurrence>:<fire ms>`  |          |
 * | P:{s:n}:sched:lex                | zset   | same members, score 0 (the entries of a push, by prefix)  | dispatch |
 *
 * The `{...}` part is the Redis Cluster hash tag: every key of one entity (an app, a device, an account, a
 * push, a schedule partition) lands in one slot, so a Lua script may touch all of them. Operations
 * spanning entities run as ordered single-slot steps (see the stores).
 */

/** Characters that pass into a key as they are: no '{', '}', ':' or anything needing thought. */
const SAFE_PART = /^[A-Za-z0-9_.-]+$/;

/**
 * A user-supplied string as one key part. Safe strings (the 40-hex tokens, decimal push ids, most
 * accounts) stay readable; anything else, including '', becomes '~' + base64url(UTF-8). '~' is outside
 * the safe set, so the mapping is injective and a part can never open or close a hash tag or add a ':'.
 */
export function encodePart(value: string): string {
  return SAFE_PART.test(value) ? value : `~${Buffer.from(value, 'utf8').toString('base64url')}`;
}

export interface RedisKeysOptions {
  /**
   * First part of every key, to share one Redis between deployments. Must not contain '{' or '}'.
   * Default: 'pushd'.
   */
  prefix?: string;
}

export class RedisKeys {
  readonly prefix: string;

  constructor(options: RedisKeysOptions = {}) {
    const prefix = options.prefix ?? 'pushd';
    // A brace in the prefix would become the hash tag of every key and put the whole data set in one slot.
    if (prefix === '' || /[{}]/.test(prefix)) {
      throw new ConfigError(
        `Redis key prefix must be non-empty and without '{' or '}' (got ${JSON.stringify(prefix)})`,
      );
    }
    this.prefix = prefix;
  }

  appSeq(): string {
    return `${this.prefix}:app-seq`;
  }

  app(accessId: number): string {
    return `${this.appTag(accessId)}:app`;
  }

  deviceCounts(accessId: number): string {
    return `${this.appTag(accessId)}:devices`;
  }

  idSeq(accessId: number): string {
    return `${this.appTag(accessId)}:seq`;
  }

  device(accessId: number, token: string): string {
    return `${this.deviceTag(accessId, token)}:dev`;
  }

  inbox(accessId: number, token: string): string {
    return `${this.deviceTag(accessId, token)}:inbox`;
  }

  inboxLast(accessId: number, token: string): string {
    return `${this.deviceTag(accessId, token)}:last`;
  }

  /** What Lua needs of each inbox entry (expiry, collapse id) and the dropped count; outlives payloads. */
  inboxMeta(accessId: number, token: string): string {
    return `${this.deviceTag(accessId, token)}:inboxmeta`;
  }

  route(accessId: number, token: string): string {
    return `${this.deviceTag(accessId, token)}:route`;
  }

  tags(accessId: number, token: string): string {
    return `${this.deviceTag(accessId, token)}:tags`;
  }

  /** The device's index in the audience bitmaps and what the tag service applied for it. */
  tagMeta(accessId: number, token: string): string {
    return `${this.deviceTag(accessId, token)}:tagmeta`;
  }

  /** Per app: user tag -> number of devices holding it; its length is the app's distinct tag count. */
  tagCounts(accessId: number): string {
    return `${this.appTag(accessId)}:tagcount`;
  }

  /** Audience bitmaps (offset = device index) all sit in the app's slot, so one script combines them. */
  audienceRegistered(accessId: number): string {
    return `${this.appTag(accessId)}:aud:reg`;
  }

  audiencePlatform(accessId: number, platform: number): string {
    return `${this.appTag(accessId)}:aud:pf:${id(platform, 'platform')}`;
  }

  audienceTag(accessId: number, tag: string): string {
    return `${this.appTag(accessId)}:aud:t:${encodePart(tag)}`;
  }

  audienceOnline(accessId: number): string {
    return `${this.appTag(accessId)}:aud:on`;
  }

  /** Devices seen on one UTC day; `day` is days since the Unix epoch. */
  audienceDay(accessId: number, day: number): string {
    return `${this.appTag(accessId)}:aud:d:${id(day, 'day')}`;
  }

  /** Temporary result `n` of one count; `nonce` keeps concurrent counts apart. */
  audienceTemp(accessId: number, nonce: string, n: number): string {
    return `${this.appTag(accessId)}:aud:tmp:${encodePart(nonce)}:${id(n, 'n')}`;
  }

  /** The app's broadcast and tag pushes kept for devices that catch up (broadcast-log-redis.ts). */
  broadcastLog(accessId: number): string {
    return `${this.appTag(accessId)}:bcast`;
  }

  /** Expiry index of the broadcast log, in the app's slot so that one script updates both. */
  broadcastExpiry(accessId: number): string {
    return `${this.appTag(accessId)}:bcast:exp`;
  }

  /** Highest msg id ever appended to the broadcast log; has no TTL. */
  broadcastHead(accessId: number): string {
    return `${this.appTag(accessId)}:bcast:head`;
  }

  /** Rate gate of broadcasts to all of the app's devices; lives for one window. */
  broadcastGate(accessId: number): string {
    return `${this.appTag(accessId)}:bcast:gate`;
  }

  accountTokens(accessId: number, account: string): string {
    return `${this.prefix}:{c:${id(accessId)}:${encodePart(account)}}:tokens`;
  }

  push(accessId: number, pushId: string): string {
    return `${this.pushTag(accessId, pushId)}:push`;
  }

  pushCounts(accessId: number, pushId: string): string {
    return `${this.pushTag(accessId, pushId)}:counts`;
  }

  /**
   * The devices counted as sent one message of a push (each occurrence of a recurring push has its own);
   * msg id 0: the whole push, the key every message used before counting went per message (clicks still
   * do, and the funnel script reads it to count nothing twice across that upgrade).
   */
  pushSent(accessId: number, pushId: string, msgId: number): string {
    return `${this.pushTag(accessId, pushId)}:sent${messagePart(msgId)}`;
  }

  pushArrived(accessId: number, pushId: string, msgId: number): string {
    return `${this.pushTag(accessId, pushId)}:arrived${messagePart(msgId)}`;
  }

  pushClicked(accessId: number, pushId: string, msgId: number): string {
    return `${this.pushTag(accessId, pushId)}:clicked${messagePart(msgId)}`;
  }

  /** An app's funnel figures of one UTC day (`day`: days since the epoch). */
  statsDay(accessId: number, day: number): string {
    return `${this.appTag(accessId)}:stats:d:${id(day, 'day')}`;
  }

  /** What each push has carried into statsDay, in the same slot so that one script updates both. */
  statsDayCarried(accessId: number, day: number): string {
    return `${this.appTag(accessId)}:stats:dc:${id(day, 'day')}`;
  }

  /** The app's pushes by creation time (ListPushes). */
  pushIndex(accessId: number): string {
    return `${this.appTag(accessId)}:pushes`;
  }

  /** Retention deadlines of the entries of pushIndex, in the app's slot so that one script trims both. */
  pushRetention(accessId: number): string {
    return `${this.appTag(accessId)}:pushes:ret`;
  }

  /** An idempotency key of the app's push calls (push-store-redis.ts). */
  idempotency(accessId: number, key: string): string {
    return `${this.appTag(accessId)}:idem:${encodePart(key)}`;
  }

  /** Schedule of one push-log partition: entries by due time. Its own slot, so partitions spread. */
  scheduleDue(partition: number): string {
    return `${this.prefix}:{s:${id(partition, 'partition')}}:sched`;
  }

  /** The same entries by push (lexicographic), for cancels. */
  scheduleByPush(partition: number): string {
    return `${this.prefix}:{s:${id(partition, 'partition')}}:sched:lex`;
  }

  private appTag(accessId: number): string {
    return `${this.prefix}:{a:${id(accessId)}}`;
  }

  private deviceTag(accessId: number, token: string): string {
    return `${this.prefix}:{d:${id(accessId)}:${encodePart(token)}}`;
  }

  private pushTag(accessId: number, pushId: string): string {
    return `${this.prefix}:{p:${id(accessId)}:${encodePart(pushId)}}`;
  }
}

/** Access ids (and other numbers in keys) are integers; anything else would make keys no reader finds. */
/** `:<msg id>`, nothing for msg id 0 (the whole push). */
function messagePart(msgId: number): string {
  return msgId === 0 ? '' : `:${id(msgId, 'msg_id')}`;
}

function id(value: number, field = 'access_id'): string {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalidArgument(field, `must be a non-negative integer (got ${value})`);
  }
  return String(value);
}

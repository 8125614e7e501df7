import { randomUUID } from 'node:crypto';
import { type Bus, pushPartition, subjects } from '@pushd/bus';
import { encodeMessage, PushCommand, PushLogEntry } from '@pushd/proto';

/**
 * Msg ids per push-log entry: the i-th command of the entry at stream sequence s has msg_id s * 1024 + i.
 * Ids stay increasing in log order and well inside JavaScript's safe integers (2^53 / 1024 ≈ 8.8e12
 * entries).
 */
export const MSG_IDS_PER_ENTRY = 1024;

/** Most bytes of commands in one entry, well under NATS's default 1 MB payload limit. */
const MAX_ENTRY_BYTES = 512 * 1024;
/**
 * Largest encoded push command. A push to named devices carries their tokens (~46 bytes each), and one
 * command alone is one log entry: NATS refuses a message over its max_payload (1 MB by default), and
 * a scheduled push whose occurrences could never be logged would stay SENDING. Dispatch refuses a push
 * whose command would be larger (INVALID_ARGUMENT on `audience`): about 20,000 devices.
 */
export const MAX_COMMAND_BYTES = 900 * 1024;

export function msgIdOf(seq: number, index: number): number {
  return seq * MSG_IDS_PER_ENTRY + index;
}

/**
 * The pushes of one push-log message, each with its msg_id. A bare PushCommand (written before entries
 * existed) decodes as an entry without commands: it is read as the one push it is, with its sequence as
 * its msg_id (smaller than any id given since, so the order holds across the change).
 */
export function readPushLogEntry(data: Uint8Array, seq: number): { command: PushCommand; msgId: number }[] {
  const entry = PushLogEntry.decode(data);
  if (entry.commands.length === 0) return [{ command: PushCommand.decode(data), msgId: seq }];
  return entry.commands.map((command, index) => ({ command, msgId: msgIdOf(seq, index) }));
}

export interface PushLogWriterOptions {
  bus: Bus;
  /** Push-log partitions; must equal the PushApplier's. Default: 16. */
  partitions?: number;
  /** Most pushes in one entry (at most MSG_IDS_PER_ENTRY). Default: 256. */
  maxCommandsPerEntry?: number;
  /**
   * A partition under contention (pushes were waiting when its append completed) appends next no sooner
   * than this long after the last append began, gathering what comes meanwhile. Every entry costs the
   * applier a delivery and an acknowledgement at least (a few store round trips when applied on its own;
   * a backlog is applied together by its look-ahead), so this bounds a busy partition to
   * 1000 / busyLingerMs entries per second and makes entries grow with the load instead. A push that finds nothing in flight or waiting is appended at once (a
   * client sending one push after another waits for nothing). 0: never linger. Default: 10 ms.
   */
  busyLingerMs?: number;
  /** Default: Date.now. */
  now?: () => number;
  /**
   * Waits before each further attempt of an append that failed. Each entry carries a deduplication key,
   * so an attempt after one whose answer was lost (a timeout after the stream stored it) gets the stored
   * entry's sequence back instead of storing it twice (within the stream's duplicate window, 2 minutes):
   * the pushes are then answered as accepted, rather than refused while the applier delivers them (and a
   * retry of the call sends them again). Default: [100, 500].
   */
  retryDelaysMs?: number[];
}

interface Waiting {
  command: PushCommand;
  /** Its encoded size, for the entry's size limit. */
  bytes: number;
  resolve: (msgId: number) => void;
  reject: (error: unknown) => void;
}

/**
 * Appends accepted pushes to the push log with group commit: per partition, one append in flight at a
 * time; pushes accepted meanwhile wait and go together in the next entry, and under contention a
 * partition appends at most every busyLingerMs. A push that finds its partition idle is appended at once.
 * One append at a time also keeps a partition's entries in the order this instance accepted them. The
 * promise of each push resolves with its msg_id once its entry is stored, or rejects with the append's
 * error (nothing of that entry is in the log).
 */
export class PushLogWriter {
  private readonly partitions: number;
  private readonly maxCommands: number;
  private readonly busyLingerMs: number;
  private readonly now: () => number;
  private readonly waiting = new Map<number, Waiting[]>();
  /** Partitions with an append in flight or waiting out its linger. */
  private readonly appending = new Set<number>();
  /** When each partition's last append started. */
  private readonly lastAppendAt = new Map<number, number>();
  private readonly retryDelaysMs: number[];
  /** Entry deduplication keys: this writer's id and a serial (unique across instances and restarts). */
  private readonly writerId = randomUUID();
  private entrySerial = 0;

  constructor(private readonly options: PushLogWriterOptions) {
    this.partitions = options.partitions ?? 16;
    this.maxCommands = Math.min(MSG_IDS_PER_ENTRY, Math.max(1, options.maxCommandsPerEntry ?? 256));
    this.busyLingerMs = Math.max(0, options.busyLingerMs ?? 10);
    this.now = options.now ?? Date.now;
    this.retryDelaysMs = options.retryDelaysMs ?? [100, 500];
  }

  /** Resolves with the push's msg_id once it is in the log. */
  append(command: PushCommand): Promise<number> {
    const partition = pushPartition(command.accessId, this.partitions);
    const bytes = encodeMessage(PushCommand, command).length;
    return new Promise<number>((resolve, reject) => {
      let queue = this.waiting.get(partition);
      if (queue === undefined) {
        queue = [];
        this.waiting.set(partition, queue);
      }
      queue.push({ command, bytes, resolve, reject });
      if (!this.appending.has(partition)) void this.appendWaiting(partition);
    });
  }

  /**
   * Appends one push alone with a deduplication key (a scheduled occurrence that may fire twice across
   * a crash: the log keeps the first). Resolves with its msg_id and whether the log already had it.
   */
  async appendOnce(command: PushCommand, dedupKey: string): Promise<{ msgId: number; duplicate: boolean }> {
    const partition = pushPartition(command.accessId, this.partitions);
    const published = await this.options.bus.publishDurable(
      subjects.pushes(partition),
      encodeMessage(PushLogEntry, { commands: [command] }),
      { dedupKey },
    );
    return { msgId: msgIdOf(published.seq, 0), duplicate: published.duplicate };
  }

  private async appendWaiting(partition: number): Promise<void> {
    this.appending.add(partition);
    try {
      for (let contended = false; ; contended = true) {
        const queue = this.waiting.get(partition);
        if (queue === undefined || queue.length === 0) return;
        const linger = (this.lastAppendAt.get(partition) ?? 0) + this.busyLingerMs - this.now();
        if (contended && linger > 0 && queue.length < this.maxCommands) {
          await new Promise((resolve) => setTimeout(resolve, linger));
        }
        this.lastAppendAt.set(partition, this.now());
        const batch = takeEntry(queue, this.maxCommands);
        try {
          const entry = encodeMessage(PushLogEntry, { commands: batch.map((waiting) => waiting.command) });
          const seq = await this.publishEntry(partition, entry);
          for (const [index, waiting] of batch.entries()) waiting.resolve(msgIdOf(seq, index));
        } catch (error) {
          for (const waiting of batch) waiting.reject(error);
        }
      }
    } finally {
      this.appending.delete(partition);
      if (this.waiting.get(partition)?.length === 0) this.waiting.delete(partition);
    }
  }

  /** Stores one entry, trying again after a failure (see retryDelaysMs); resolves with its sequence. */
  private async publishEntry(partition: number, entry: Uint8Array): Promise<number> {
    const dedupKey = `${this.writerId}:${++this.entrySerial}`;
    for (let attempt = 0; ; attempt++) {
      try {
        return (await this.options.bus.publishDurable(subjects.pushes(partition), entry, { dedupKey })).seq;
      } catch (error) {
        const delay = this.retryDelaysMs[attempt];
        if (delay === undefined) throw error;
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }
}

/** Takes the next entry's pushes off the queue: at most maxCommands and MAX_ENTRY_BYTES, at least one. */
function takeEntry(queue: Waiting[], maxCommands: number): Waiting[] {
  let bytes = 0;
  let count = 0;
  while (count < queue.length && count < maxCommands) {
    bytes += (queue[count] as Waiting).bytes;
    if (count > 0 && bytes > MAX_ENTRY_BYTES) break;
    count++;
  }
  return queue.splice(0, count);
}

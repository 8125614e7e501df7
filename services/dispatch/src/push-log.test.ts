import { type Bus, MemoryBus, pushPartition, streams, subjects, withDurablePublish } from '@pushd/bus';
import { PushdError } from '@pushd/common';
import { MessageType, Platform, PushCommand, PushLogEntry } from '@pushd/proto';
import { waitFor } from '@pushd/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { MSG_IDS_PER_ENTRY, msgIdOf, PushLogWriter, readPushLogEntry } from './push-log.js';

const PARTITIONS = 4;

const command = (accessId: number, pushId: string, tokens = 1): PushCommand =>
  PushCommand.create({
    accessId,
    pushId,
    message: { type: MessageType.MESSAGE_TYPE_NOTIFY, title: '', content: pushId, customContent: {} },
    acceptedAtMs: 1,
    expiresAtMs: 2,
    devices: Array.from({ length: tokens }, (_, i) => ({
      token: `${pushId}-${i}`.padEnd(40, '0'),
      platform: Platform.PLATFORM_ANDROID,
    })),
  });

/** A MemoryBus whose push-log appends can be held, failed, and are recorded as (subject, seq, push ids). */
class HoldingBus {
  readonly memory = new MemoryBus({ streams: [streams.pushes] });
  readonly entries: { subject: string; seq: number; pushIds: string[] }[] = [];
  hold = false;
  failNext = 0;
  /** Appends stored whose answer is then lost (the caller sees an error). `entries` lists each stored one once. */
  loseAnswerNext = 0;
  private held: (() => void)[] = [];

  readonly bus: Bus = withDurablePublish(this.memory, async (real, subject, data, options) => {
    if (this.hold) await new Promise<void>((resolve) => this.held.push(resolve));
    if (this.failNext > 0) {
      this.failNext--;
      throw new PushdError('UNAVAILABLE', 'stream unreachable (test)');
    }
    const result = await real(subject, data, options);
    const pushIds = readPushLogEntry(data, result.seq).map((push) => push.command.pushId);
    if (!result.duplicate) this.entries.push({ subject, seq: result.seq, pushIds });
    if (this.loseAnswerNext > 0) {
      this.loseAnswerNext--;
      throw new PushdError('UNAVAILABLE', 'no answer from the stream within the timeout (test)');
    }
    return result;
  });

  get heldCount(): number {
    return this.held.length;
  }

  release(): void {
    this.hold = false;
    for (const resolve of this.held.splice(0)) resolve();
  }
}

const buses: HoldingBus[] = [];
afterEach(async () => {
  for (const holding of buses.splice(0)) {
    holding.release();
    await holding.memory.close();
  }
});

function makeWriter(
  options: { maxCommandsPerEntry?: number; busyLingerMs?: number; retryDelaysMs?: number[] } = {},
) {
  const holding = new HoldingBus();
  buses.push(holding);
  const writer = new PushLogWriter({ bus: holding.bus, partitions: PARTITIONS, ...options });
  return { holding, writer };
}

/** Two apps in different partitions. */
const APP = 1_500_000_000;
const OTHER_APP = [1, 2, 3]
  .map((n) => APP + n)
  .find((id) => pushPartition(id, PARTITIONS) !== pushPartition(APP, PARTITIONS)) as number;

describe('PushLogWriter', () => {
  it('appends a push alone when its partition is idle, and what arrives meanwhile together, in order', async () => {
    const { holding, writer } = makeWriter();
    holding.hold = true;
    const first = writer.append(command(APP, 'p1'));
    await waitFor(() => holding.heldCount === 1, 'the first append in flight');
    const more = ['p2', 'p3', 'p4'].map((pushId) => writer.append(command(APP, pushId)));
    holding.release();
    const ids = await Promise.all([first, ...more]);

    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['p1'], ['p2', 'p3', 'p4']]);
    const [one, two] = holding.entries;
    // msg_id = sequence * 1024 + place in the entry: increasing in the order of acceptance.
    expect(ids).toEqual([msgIdOf(one?.seq ?? 0, 0), ...[0, 1, 2].map((i) => msgIdOf(two?.seq ?? 0, i))]);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);
    expect(
      holding.entries.every((entry) => entry.subject === subjects.pushes(pushPartition(APP, PARTITIONS))),
    ).toBe(true);
  });

  it('gathers pushes for a contended partition: its next append waits out busyLingerMs after the last began', async () => {
    const { holding, writer } = makeWriter({ busyLingerMs: 200 });
    holding.hold = true;
    const p1 = writer.append(command(APP, 'p1'));
    await waitFor(() => holding.heldCount === 1, 'the first append in flight');
    const waiting = ['p2', 'p3'].map((pushId) => writer.append(command(APP, pushId)));
    holding.release();
    await p1;
    // p2 and p3 were waiting when p1's append completed: the next append lingers, and p4 joins them.
    const p4 = writer.append(command(APP, 'p4'));
    await Promise.all([...waiting, p4]);
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['p1'], ['p2', 'p3', 'p4']]);

    // A push that finds the partition idle goes at once, however recent the last append (a client sending
    // one push after another waits for nothing); so does one to another partition.
    await writer.append(command(APP, 'p5'));
    await writer.append(command(APP, 'p6'));
    await writer.append(command(OTHER_APP, 'o1'));
    expect(holding.entries.map((entry) => entry.pushIds).slice(2)).toEqual([['p5'], ['p6'], ['o1']]);

    // Without a linger, what waited goes as soon as the append in flight completes.
    const eager = makeWriter({ busyLingerMs: 0 });
    eager.holding.hold = true;
    const e1 = eager.writer.append(command(APP, 'e1'));
    await waitFor(() => eager.holding.heldCount === 1, 'the first append in flight');
    const e2 = eager.writer.append(command(APP, 'e2'));
    eager.holding.release();
    await Promise.all([e1, e2]);
    await eager.writer.append(command(APP, 'e3'));
    expect(eager.holding.entries.map((entry) => entry.pushIds)).toEqual([['e1'], ['e2'], ['e3']]);
  });

  it('does not make one partition wait for another', async () => {
    const { holding, writer } = makeWriter();
    holding.hold = true;
    const blocked = writer.append(command(APP, 'p1'));
    void writer.append(command(OTHER_APP, 'o1'));
    // Both appends are in flight at once: each partition has its own.
    await waitFor(() => holding.heldCount === 2, 'one append in flight per partition');
    holding.release();
    await blocked;
  });

  it('splits what waits into entries of at most maxCommandsPerEntry pushes', async () => {
    const { holding, writer } = makeWriter({ maxCommandsPerEntry: 2 });
    holding.hold = true;
    const all = ['p1', 'p2', 'p3', 'p4', 'p5', 'p6'].map((pushId) => writer.append(command(APP, pushId)));
    await waitFor(() => holding.heldCount === 1, 'the first append in flight');
    holding.release();
    await Promise.all(all);
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([
      ['p1'],
      ['p2', 'p3'],
      ['p4', 'p5'],
      ['p6'],
    ]);
  });

  it('keeps entries under 512 KiB: large pushes go in entries of their own', async () => {
    const { holding, writer } = makeWriter();
    holding.hold = true;
    const first = writer.append(command(APP, 'small'));
    await waitFor(() => holding.heldCount === 1, 'the first append in flight');
    // About 300 KB each (6,000 devices of ~50 bytes): two do not fit one entry.
    const large = ['big1', 'big2'].map((pushId) => writer.append(command(APP, pushId, 6_000)));
    holding.release();
    await Promise.all([first, ...large]);
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['small'], ['big1'], ['big2']]);
  });

  it('rejects every push of an entry whose append failed, and appends later pushes after it', async () => {
    const { holding, writer } = makeWriter({ retryDelaysMs: [] });
    holding.hold = true;
    const first = writer.append(command(APP, 'p1'));
    await waitFor(() => holding.heldCount === 1, 'the first append in flight');
    const failing = ['p2', 'p3'].map((pushId) => writer.append(command(APP, pushId)));
    holding.failNext = 1;
    holding.release();
    // The append in flight fails: its push is rejected; the pushes that waited are the next entry.
    await expect(first).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(Promise.all(failing)).resolves.toHaveLength(2);
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['p2', 'p3']]);

    holding.hold = true;
    const ok = writer.append(command(APP, 'p4'));
    await waitFor(() => holding.heldCount === 1, 'the next append in flight');
    const together = ['p5', 'p6'].map((pushId) => writer.append(command(APP, pushId)));
    holding.failNext = 2;
    holding.release();
    // Both entries fail: every push of each is rejected, none half-stored.
    await expect(ok).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    for (const push of together) await expect(push).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['p2', 'p3']]);
  });

  it('tries a failed append again, storing an entry once when only its answer was lost', async () => {
    const { holding, writer } = makeWriter({ retryDelaysMs: [1, 1] });
    holding.loseAnswerNext = 1;
    const [p1, p2] = await Promise.all(['p1', 'p2'].map((pushId) => writer.append(command(APP, pushId))));
    // p1's entry was stored by its first attempt (whose answer was lost) and found again by its second.
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['p1'], ['p2']]);
    expect(p1).toBe(msgIdOf(1, 0));
    expect(p2).toBe(msgIdOf(2, 0));

    // Two failures, then the third attempt stores it; a third failure would reject.
    holding.failNext = 2;
    expect(await writer.append(command(APP, 'p3'))).toBe(msgIdOf(3, 0));
    holding.failNext = 3;
    await expect(writer.append(command(APP, 'p4'))).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['p1'], ['p2'], ['p3']]);
  });

  it('appends a scheduled occurrence once per deduplication key', async () => {
    const { holding, writer } = makeWriter();
    const once = await writer.appendOnce(command(APP, 'p1'), `${APP}:p1:1`);
    const again = await writer.appendOnce(command(APP, 'p1'), `${APP}:p1:1`);
    expect(once.duplicate).toBe(false);
    expect(again).toEqual({ msgId: once.msgId, duplicate: true });
    // The log holds it once.
    expect(holding.entries.map((entry) => entry.pushIds)).toEqual([['p1']]);
  });
});

describe('readPushLogEntry', () => {
  it('reads an entry written before entries existed (a bare PushCommand) as one push with its sequence as msg_id', () => {
    const bare = PushCommand.encode(command(APP, 'old')).finish();
    expect(readPushLogEntry(bare, 41)).toEqual([{ command: command(APP, 'old'), msgId: 41 }]);
    // Any id given since is larger: the order holds across the change.
    expect(msgIdOf(42, 0)).toBeGreaterThan(41);
  });

  it('reads what PushLogEntry.encode writes, with msg ids sequence * 1024 + index', () => {
    const commands = [command(APP, 'a'), command(APP, 'b', 3)];
    const data = PushLogEntry.encode({ commands }).finish();
    expect(readPushLogEntry(data, 7)).toEqual([
      { command: commands[0], msgId: 7 * MSG_IDS_PER_ENTRY },
      { command: commands[1], msgId: 7 * MSG_IDS_PER_ENTRY + 1 },
    ]);
  });
});

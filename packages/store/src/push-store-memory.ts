import type { PushRecord, PushStatus } from '@pushd/proto';
import type { PushStore } from './push-store.js';

/** Pushes in process memory. Records are copied in and out, so callers cannot change stored state. */
export class MemoryPushStore implements PushStore {
  private readonly counters = new Map<number, { push: number; msg: number }>();
  private readonly pushes = new Map<string, PushRecord>();

  async nextIds(accessId: number): Promise<{ pushId: string; msgId: number }> {
    const counter = this.counter(accessId);
    counter.push += 1;
    counter.msg += 1;
    return { pushId: String(counter.push), msgId: counter.msg };
  }

  async nextMsgId(accessId: number): Promise<number> {
    const counter = this.counter(accessId);
    counter.msg += 1;
    return counter.msg;
  }

  async save(push: PushRecord): Promise<void> {
    this.pushes.set(pushKey(push.accessId, push.pushId), structuredClone(push));
  }

  async get(accessId: number, pushId: string): Promise<PushRecord | undefined> {
    const push = this.pushes.get(pushKey(accessId, pushId));
    return push ? structuredClone(push) : undefined;
  }

  async setStatus(accessId: number, pushId: string, status: PushStatus, target: number): Promise<boolean> {
    const push = this.pushes.get(pushKey(accessId, pushId));
    if (!push) return false;
    push.status = status;
    push.target = target;
    return true;
  }

  private counter(accessId: number): { push: number; msg: number } {
    let counter = this.counters.get(accessId);
    if (!counter) {
      counter = { push: 0, msg: 0 };
      this.counters.set(accessId, counter);
    }
    return counter;
  }
}

function pushKey(accessId: number, pushId: string): string {
  return `${accessId}\n${pushId}`;
}

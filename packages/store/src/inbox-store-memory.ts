import type { PushMessage } from '@pushd/proto';
import type { AppendResult, InboxStore, PendingResult } from './inbox-store.js';

interface Window {
  lastMsgId: number;
  /** Increasing msgId. */
  messages: PushMessage[];
}

/**
 * Offline windows in process memory. Time comes from the callers' `nowMs`, as in the interface. Expired
 * messages are dropped whenever their window is touched, and every so often from all windows, so that the
 * payloads of devices that never come back do not pile up.
 */
export class MemoryInboxStore implements InboxStore {
  private readonly windows = new Map<string, Window>();
  private appendsSinceSweep = 0;

  async append(
    accessId: number,
    token: string,
    message: PushMessage,
    capacity: number,
    nowMs: number,
  ): Promise<AppendResult> {
    const key = windowKey(accessId, token);
    let window = this.windows.get(key);
    if (window && message.msgId <= window.lastMsgId) return { appended: false, lastMsgId: window.lastMsgId };
    if (!window) {
      window = { lastMsgId: 0, messages: [] };
      this.windows.set(key, window);
    }
    const previousMsgId = window.lastMsgId;
    window.lastMsgId = message.msgId;
    const kept = window.messages.filter((m) => m.expiresAtMs > nowMs);
    // The highest msgId so far, so it goes last.
    if (message.expiresAtMs > nowMs) kept.push(structuredClone(message));
    window.messages = capacity < 1 ? [] : kept.slice(-capacity);
    this.sweep(nowMs);
    return { appended: true, previousMsgId };
  }

  async pending(accessId: number, token: string, afterMsgId: number, nowMs: number): Promise<PendingResult> {
    const window = this.windows.get(windowKey(accessId, token));
    if (!window) return { messages: [], lastMsgId: 0 };
    return {
      messages: window.messages
        .filter((m) => m.msgId > afterMsgId && m.expiresAtMs > nowMs)
        .map((m) => structuredClone(m)),
      lastMsgId: window.lastMsgId,
    };
  }

  async ack(accessId: number, token: string, msgIds: number[]): Promise<void> {
    const window = this.windows.get(windowKey(accessId, token));
    if (!window || msgIds.length === 0) return;
    const acked = new Set(msgIds);
    window.messages = window.messages.filter((m) => !acked.has(m.msgId));
  }

  async clear(accessId: number, token: string): Promise<void> {
    this.windows.delete(windowKey(accessId, token));
  }

  /** A full pass once per `windows.size` appends: amortized O(1) per append. */
  private sweep(nowMs: number): void {
    if (++this.appendsSinceSweep < this.windows.size) return;
    this.appendsSinceSweep = 0;
    for (const window of this.windows.values()) {
      if (window.messages.some((m) => m.expiresAtMs <= nowMs)) {
        window.messages = window.messages.filter((m) => m.expiresAtMs > nowMs);
      }
    }
  }
}

function windowKey(accessId: number, token: string): string {
  return `${accessId}\n${token}`;
}

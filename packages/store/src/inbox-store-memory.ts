import type { PushMessage } from '@pushd/proto';
import type { AppendResult, InboxStore, PendingResult } from './inbox-store.js';

interface Window {
  lastMsgId: number;
  /** Increasing msgId. */
  messages: PushMessage[];
  /** Messages evicted or expired since the last `pending`. */
  dropped: number;
}

/**
 * Offline windows in process memory. Time comes from the callers' `nowMs`, as in the interface. Expired
 * messages are dropped (and counted) whenever their window is touched, and every so often from all
 * windows, so that the payloads of devices that never come back do not pile up.
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
      window = { lastMsgId: 0, messages: [], dropped: 0 };
      this.windows.set(key, window);
    }
    const previousMsgId = window.lastMsgId;
    window.lastMsgId = message.msgId;
    const collapseId = collapseIdOf(message);
    // Replaced, not lost: the device gets the newer message under the same collapse id.
    const kept =
      collapseId === undefined
        ? window.messages
        : window.messages.filter((m) => collapseIdOf(m) !== collapseId);
    const live = kept.filter((m) => m.expiresAtMs > nowMs);
    window.dropped += kept.length - live.length;
    // The highest msgId so far, so it goes last.
    if (message.expiresAtMs > nowMs) live.push(structuredClone(message));
    else window.dropped++;
    const limit = Math.max(0, capacity);
    window.dropped += Math.max(0, live.length - limit);
    window.messages = limit === 0 ? [] : live.slice(-limit);
    this.sweep(nowMs);
    return { appended: true, previousMsgId };
  }

  async pending(
    accessId: number,
    token: string,
    afterMsgId: number,
    nowMs: number,
    deviceProcessed = false,
  ): Promise<PendingResult> {
    const window = this.windows.get(windowKey(accessId, token));
    if (!window) return { messages: [], lastMsgId: 0, dropped: 0, processed: [] };
    dropExpired(window, nowMs);
    const dropped = window.dropped;
    window.dropped = 0;
    const processed = deviceProcessed ? window.messages.filter((m) => m.msgId <= afterMsgId) : [];
    if (processed.length > 0) window.messages = window.messages.filter((m) => m.msgId > afterMsgId);
    return {
      messages: window.messages.filter((m) => m.msgId > afterMsgId).map((m) => structuredClone(m)),
      lastMsgId: window.lastMsgId,
      dropped,
      processed,
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
    for (const window of this.windows.values()) dropExpired(window, nowMs);
  }
}

/** Removes the window's expired messages, counting them as dropped. */
function dropExpired(window: Window, nowMs: number): void {
  if (!window.messages.some((m) => m.expiresAtMs <= nowMs)) return;
  const live = window.messages.filter((m) => m.expiresAtMs > nowMs);
  window.dropped += window.messages.length - live.length;
  window.messages = live;
}

/** The message's collapse id; an empty one collapses nothing (validation refuses it anyway). */
function collapseIdOf(message: PushMessage): string | undefined {
  return message.message?.collapseId || undefined;
}

function windowKey(accessId: number, token: string): string {
  return `${accessId}\n${token}`;
}

/** Tags of devices. Owned by the tag service. */
export interface TagStore {
  /**
   * Adds tags to a device. When the device would then hold more than `maxPerDevice` tags, nothing is
   * changed and `{ ok: false }` is returned with the count the device would have had.
   */
  add(
    accessId: number,
    token: string,
    tags: string[],
    maxPerDevice: number,
  ): Promise<{ ok: true; count: number } | { ok: false; wouldHave: number }>;

  /** Removes tags; returns how many the device has left. */
  remove(accessId: number, token: string, tags: string[]): Promise<number>;

  /** The device's tags, sorted. */
  list(accessId: number, token: string): Promise<string[]>;

  /** Removes every tag of the device (it unregistered). */
  clear(accessId: number, token: string): Promise<void>;
}

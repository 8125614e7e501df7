/**
 * A growable set of small non-negative integers (device indexes) as 32-bit words: the memory form of the
 * Redis bitmaps of the audience index. Combining operations return new sets and leave their inputs alone.
 */
export class Bitset {
  private words: Uint32Array;

  constructor(words: Uint32Array = new Uint32Array(0)) {
    this.words = words;
  }

  has(bit: number): boolean {
    const word = bit >>> 5;
    return word < this.words.length && (this.words[word]! & (1 << (bit & 31))) !== 0;
  }

  set(bit: number, value: boolean): void {
    const word = bit >>> 5;
    if (word >= this.words.length) {
      if (!value) return;
      // Doubling keeps growth amortized O(1) per device as indexes climb.
      const grown = new Uint32Array(Math.max(word + 1, this.words.length * 2, 4));
      grown.set(this.words);
      this.words = grown;
    }
    if (value) this.words[word]! |= 1 << (bit & 31);
    else this.words[word]! &= ~(1 << (bit & 31));
  }

  /** Number of members. */
  count(): number {
    let total = 0;
    for (const word of this.words) total += popcount(word);
    return total;
  }

  isEmpty(): boolean {
    return this.words.every((word) => word === 0);
  }

  static and(sets: readonly Bitset[]): Bitset {
    if (sets.length === 0) return new Bitset();
    const length = Math.min(...sets.map((s) => s.words.length));
    const out = sets[0]!.words.slice(0, length);
    for (let s = 1; s < sets.length; s++) {
      const words = sets[s]!.words;
      for (let i = 0; i < length; i++) out[i]! &= words[i]!;
    }
    return new Bitset(out);
  }

  static or(sets: readonly Bitset[]): Bitset {
    const length = Math.max(0, ...sets.map((s) => s.words.length));
    const out = new Uint32Array(length);
    for (const set of sets) {
      const words = set.words;
      for (let i = 0; i < words.length; i++) out[i]! |= words[i]!;
    }
    return new Bitset(out);
  }

  /** Members of `base` that are not in `minus`. */
  static andNot(base: Bitset, minus: Bitset): Bitset {
    const out = base.words.slice();
    const words = minus.words;
    for (let i = 0; i < Math.min(out.length, words.length); i++) out[i]! &= ~words[i]!;
    return new Bitset(out);
  }
}

function popcount(word: number): number {
  let v = word - ((word >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

// Per-layer key/value cache for decoding: keys and values [B, KV, S, D] grow by the new tokens' K/V
// at each forward. Rows of a batch share the S axis; a row that started later is left-padded (its
// padding is masked by the caller's attention mask), so rows can join (`mergeRows`), leave
// (`selectRows`) and shed common padding (`trimLeft`) between steps — what continuous batching needs.
// Cached tensors live outside tf.tidy scopes; `dispose()` frees them.

import * as tf from '@tensorflow/tfjs-core';

export class KVCache {
  /** number of positions cached (S) */
  length = 0;
  private keys: (tf.Tensor4D | null)[];
  private values: (tf.Tensor4D | null)[];

  constructor(numLayers: number) {
    this.keys = new Array(numLayers).fill(null);
    this.values = new Array(numLayers).fill(null);
  }

  /** Number of layers. */
  get numLayers(): number {
    return this.keys.length;
  }

  /** Rows in the cache (B), 0 while empty. */
  get batchSize(): number {
    return this.keys[0]?.shape[0] ?? 0;
  }

  /** Append this step's k, v ([B, KV, T, D]) to layer `layer`; returns the full [B, KV, S, D] pair. */
  append(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): [tf.Tensor4D, tf.Tensor4D] {
    const oldK = this.keys[layer], oldV = this.values[layer];
    const K = tf.keep(oldK ? tf.concat([oldK, k], 2) : k.clone());
    const V = tf.keep(oldV ? tf.concat([oldV, v], 2) : v.clone());
    oldK?.dispose();
    oldV?.dispose();
    this.keys[layer] = K;
    this.values[layer] = V;
    return [K, V];
  }

  /** Replace every layer's pair by f(k), f(v) and free the old tensors. */
  private map(f: (t: tf.Tensor4D, layer: number, which: 0 | 1) => tf.Tensor4D): void {
    for (let l = 0; l < this.keys.length; l++) {
      const k = this.keys[l], v = this.values[l];
      if (!k || !v) continue;
      this.keys[l] = tf.keep(tf.tidy(() => f(k, l, 0)));
      this.values[l] = tf.keep(tf.tidy(() => f(v, l, 1)));
      k.dispose();
      v.dispose();
    }
  }

  /**
   * Keep only the rows `rows` (in that order) — e.g. when requests of a batch finish.
   * @example cache.selectRows([0, 2]);   // rows 0 and 2 stay, as rows 0 and 1
   */
  selectRows(rows: readonly number[]): void {
    if (rows.length === 0) {
      this.dispose();
      return;
    }
    const B = this.batchSize;
    for (const r of rows) if (!Number.isInteger(r) || r < 0 || r >= B) throw new RangeError(`selectRows: row ${r} is outside [0, ${B})`);
    if (rows.length === B && rows.every((r, i) => r === i)) return;
    const idx = tf.tensor1d(rows as number[], 'int32');
    this.map((t) => tf.gather(t, idx, 0));                                                   // [B', KV, S, D]
    idx.dispose();
  }

  /** Drop the first `n` positions of every row (padding no row needs any more). */
  trimLeft(n: number): void {
    if (n <= 0) return;
    if (n > this.length) throw new RangeError(`trimLeft(${n}) on a cache of ${this.length} positions`);
    this.map((t) => tf.slice(t, [0, 0, n, 0], [-1, -1, -1, -1]));                            // [B, KV, S-n, D]
    this.length -= n;
  }

  /**
   * Append the rows of `other` (same layers) after this cache's rows, left-padding whichever is shorter
   * with zeros so both share S = max(S₁, S₂). `other` is emptied. Returns how many positions were
   * prepended to each side's rows, so the caller can extend its attention masks with zeros.
   * @example const { padSelf, padOther } = running.mergeRows(prefilled);
   */
  mergeRows(other: KVCache): { padSelf: number; padOther: number } {
    if (other.keys.length !== this.keys.length) throw new RangeError(`mergeRows: ${other.keys.length} layers vs ${this.keys.length}`);
    if (other.batchSize === 0) return { padSelf: 0, padOther: 0 };
    if (this.batchSize === 0) {
      this.keys = other.keys;
      this.values = other.values;
      this.length = other.length;
      other.keys = new Array(this.keys.length).fill(null);
      other.values = new Array(this.keys.length).fill(null);
      other.length = 0;
      return { padSelf: 0, padOther: 0 };
    }
    const S = Math.max(this.length, other.length);
    const padSelf = S - this.length, padOther = S - other.length;
    const leftPad = (t: tf.Tensor4D, p: number) => (p ? tf.pad(t, [[0, 0], [0, 0], [p, 0], [0, 0]]) : t);
    this.map((t, l, which) => {
      const o = (which === 0 ? other.keys : other.values)[l]!;
      return tf.concat([leftPad(t, padSelf), leftPad(o, padOther)], 0);                      // [B₁+B₂, KV, S, D]
    });
    this.length = S;
    other.dispose();
    return { padSelf, padOther };
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
    this.length = 0;
  }
}

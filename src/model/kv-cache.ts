// Per-layer key/value cache for decoding: keys and values [B, KV, S, D] grow by the new tokens' K/V
// at each forward. Cached tensors live outside tf.tidy scopes; `dispose()` frees them.

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

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
    this.length = 0;
  }
}

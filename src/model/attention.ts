// Attention for the Qwen models in plain tfjs ops: the additive bias and causal GQA attention (the flash
// kernel's fallback and reference). Bias: 0 where a query may look, -1e9 where it may not (causal,
// padding); a large finite value rather than -inf keeps fully masked rows (left padding) finite in forward
// and backward.

import * as tf from '@tensorflow/tfjs-core';

/** Token ids, one row per sequence. */
type TokenIds = number[][];

export const MASKED = -1e9;

/** Throws unless every attentionMask row covers the S = past + T cached and new keys. */
export function checkAttentionMask(B: number, S: number, attentionMask?: TokenIds): void {
  if (!attentionMask) return;
  if (attentionMask.length !== B) throw new RangeError(`attentionMask has ${attentionMask.length} rows, the batch ${B}`);
  for (const [b, m] of attentionMask.entries()) {
    if (m.length !== S) throw new RangeError(`attentionMask row ${b} has ${m.length} entries, expected ${S} (cached + new tokens)`);
  }
}

/**
 * [B, 1, T, S] additive bias for T queries at absolute positions past..past+T-1 over S = past + T keys.
 * `attentionMask` ([B, S], 1 = real token, 0 = padding) follows transformers: it covers the cached keys too.
 */
export function attentionBias(B: number, T: number, past: number, attentionMask?: TokenIds): tf.Tensor4D {
  const S = past + T;
  checkAttentionMask(B, S, attentionMask);
  const bias = new Float32Array(B * T * S);
  for (let b = 0; b < B; b++) {
    const m = attentionMask?.[b];
    for (let t = 0; t < T; t++) {
      const row = (b * T + t) * S;
      for (let s = 0; s < S; s++) if (s > past + t || (m && m[s] === 0)) bias[row + s] = MASKED;
    }
  }
  return tf.tensor4d(bias, [B, 1, T, S]);
}

/**
 * Causal GQA attention. q: [B, H, T, D]; k, v: [B, KV, S, D]; bias: [B, 1, T, S].
 * Query heads are grouped per KV head (head h reads KV head h / (H/KV), as transformers' repeat_kv)
 * by folding the group into the query axis, so K and V are never repeated in memory.
 */
export function gqaAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, bias: tf.Tensor4D): tf.Tensor4D {
  const [B, H, T, D] = q.shape;
  const [, KV, S] = k.shape;
  const g = H / KV;
  const qg = tf.reshape(q, [B, KV, g * T, D]);                                       // [B, KV, g·T, D]
  const scores = tf.mul(tf.matMul(qg, k, false, true), 1 / Math.sqrt(D));           // [B, KV, g·T, S]
  const probs = tf.softmax(tf.add(tf.reshape(scores, [B, H, T, S]), bias));         // [B, H, T, S]
  const out = tf.matMul(tf.reshape(probs, [B, KV, g * T, S]), v);                    // [B, KV, g·T, D]
  return tf.reshape(out, [B, H, T, D]);
}

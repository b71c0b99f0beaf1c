// Qwen3 decoder: a commented diff of Qwen2 (transformers' modeling_qwen3.py).
// diff vs qwen2: q_norm/k_norm (RMSNorm over head_dim, per head, before RoPE); no qkv bias unless
// `attention_bias`; explicit `head_dim` (may differ from hidden_size / num_attention_heads).
// The bias and head_dim differences live in the config (resolveConfig); the norm is the override below.

import * as tf from '@tensorflow/tfjs-core';
import { Qwen2ForCausalLM } from './qwen2';

export class Qwen3ForCausalLM extends Qwen2ForCausalLM {
  protected override normalizeQK(q: tf.Tensor4D, k: tf.Tensor4D, layer: number): [tf.Tensor4D, tf.Tensor4D] {
    const p = `model.layers.${layer}.self_attn.`;
    return [
      this.norm(q, this.w(p + 'q_norm.weight')) as tf.Tensor4D,                          // [B, T, H, D]
      this.norm(k, this.w(p + 'k_norm.weight')) as tf.Tensor4D,                          // [B, T, KV, D]
    ];
  }
}

// Token-level decoding with the KV cache: a prefill over the prompt, then one token at a time. Knows
// nothing about text: the inference engine (src/infer) wraps it with templates and a streaming
// detokenizer.

import * as tf from '@tensorflow/tfjs-core';
import { KVCache } from './kv-cache';
import type { Qwen2ForCausalLM } from './qwen2';
import { Random } from '../utils/seed';

export interface GenerateOptions {
  /** number of new tokens at most */
  maxNewTokens: number;
  /** 0 (default) = greedy; > 0 samples from softmax(logits / temperature) */
  temperature?: number;
  /** keep the k most likely tokens when sampling (0 = all) */
  topK?: number;
  /** nucleus sampling: smallest set with cumulative probability ≥ topP (1 = all) */
  topP?: number;
  /** stop after emitting any of these ids (the stop id is included in the output) */
  eosTokenId?: number | number[];
  /** sampling seed (default 0) */
  seed?: number;
}

/** Pick the next token from one row of logits. */
export function sampleToken(logits: Float32Array, temperature: number, topK: number, topP: number, rng: Random): number {
  if (!(temperature > 0)) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  if (topK > 0 && topK < order.length) order = order.slice(0, topK);
  const max = logits[order[0]];
  const probs = order.map((i) => Math.exp((logits[i] - max) / temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  let keep = order.length;
  if (topP < 1) {
    let cum = 0;
    for (let j = 0; j < order.length; j++) {
      cum += probs[j] / total;
      if (cum >= topP) { keep = j + 1; break; }
    }
  }
  const kept = probs.slice(0, keep), sum = kept.reduce((a, b) => a + b, 0);
  let r = rng.random() * sum;
  for (let j = 0; j < keep; j++) {
    r -= kept[j];
    if (r <= 0) return order[j];
  }
  return order[keep - 1];
}

/**
 * Yield new token ids one at a time (prefill, then decode with the KV cache).
 * @example
 *   for await (const id of generateTokens(model, promptIds, { maxNewTokens: 32 })) process.stdout.write(`${id} `);
 */
export async function* generateTokens(model: Qwen2ForCausalLM, inputIds: number[], opts: GenerateOptions): AsyncGenerator<number, void, void> {
  if (inputIds.length === 0) throw new RangeError('generate: inputIds is empty');
  const stop = new Set(opts.eosTokenId == null ? [] : Array.isArray(opts.eosTokenId) ? opts.eosTokenId : [opts.eosTokenId]);
  const rng = new Random(opts.seed ?? 0);
  const greedy = !((opts.temperature ?? 0) > 0);
  const cache = new KVCache(model.config.numLayers);
  try {
    let step = [inputIds];
    for (let n = 0; n < opts.maxNewTokens; n++) {
      const { logits } = model.forward(step, { cache, lastOnly: true });                 // [1, 1, V]
      let next: number;
      if (greedy) {
        // argmax on the device: one int comes back instead of V floats
        const best = tf.argMax(tf.reshape(logits, [-1]));
        next = (await best.data())[0];
        best.dispose();
      } else {
        next = sampleToken((await logits.data()) as Float32Array, opts.temperature!, opts.topK ?? 0, opts.topP ?? 1, rng);
      }
      logits.dispose();
      yield next;
      if (stop.has(next)) return;
      step = [[next]];
    }
  } finally {
    cache.dispose();
  }
}

/**
 * Generate up to maxNewTokens new ids after `inputIds` (greedy when temperature is 0).
 * @example
 *   const ids = await generate(model, tokenizer.encode('Hello'), { maxNewTokens: 24, temperature: 0 });
 */
export async function generate(model: Qwen2ForCausalLM, inputIds: number[], opts: GenerateOptions): Promise<number[]> {
  const out: number[] = [];
  for await (const id of generateTokens(model, inputIds, opts)) out.push(id);
  return out;
}

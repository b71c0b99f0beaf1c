// The decoder on webgpu runs tsft's fused kernels (RMSNorm, RoPE, SwiGLU gate, flash attention); with
// TSFT_KERNELS=ops (setKernelPath('ops')) the same model runs plain tfjs ops. Both must give the same
// logits, loss and gradients — with left padding (rows whose first queries see no key), a length that is
// not a multiple of the 64-row attention tile, gradient checkpointing, and KV-cache decoding — for Qwen2
// and Qwen3 at head_dim 64 (the flash kernels' smallest). The golden fixtures (tests/model.test.ts) have
// head_dim 16/32, where attention takes the tfjs ops. WebGPU without an adapter: a skip locally, a
// failure in CI.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { shutdownDevice } from '../src/backend/device';
import { setKernelPath } from '../src/backend/fused';
import { resolveConfig, type QwenConfigJson } from '../src/model/config';
import { KVCache } from '../src/model/kv-cache';
import { createModel } from '../src/model/loader';
import { decoderUsesFusedKernels, type Qwen2ForCausalLM } from '../src/model/qwen2';
import { Random } from '../src/utils/seed';
import { maxRelDiff, startOrSkip } from './helpers';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');

function config(arch: 'qwen2' | 'qwen3'): QwenConfigJson {
  return {
    architectures: [arch === 'qwen3' ? 'Qwen3ForCausalLM' : 'Qwen2ForCausalLM'],
    model_type: arch,
    vocab_size: 97,
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: arch === 'qwen3',
    max_position_embeddings: 512,
  };
}

const B = 2, T = 67;
const ids = [0, 1].map((b) => Array.from({ length: T }, (_, t) => (t * 31 + b * 17 + 3) % 97));
/** row 0 left-padded by 5 (its first queries see no key), row 1 full */
const mask = [Array.from({ length: T }, (_, t) => (t < 5 ? 0 : 1)), new Array<number>(T).fill(1)];
const labels = ids.map((row, b) => row.map((y, t) => (mask[b][t] ? y : -100)));

/** Logits, loss and every parameter's gradient, in the kernel path `path`. */
async function run(model: Qwen2ForCausalLM, path: 'ops' | null): Promise<{ logits: Float32Array; loss: number; grads: Map<string, Float32Array> }> {
  const prev = setKernelPath(path);
  try {
    assert.equal(decoderUsesFusedKernels(), path === null);
    const { logits } = model.forward(ids, { attentionMask: mask });
    const vars = [...model.namedParameters().values()];
    const { value, grads } = tf.variableGrads(() => model.loss(ids, labels, { attentionMask: mask }).loss, vars);
    const out = { logits: (await logits.data()) as Float32Array, loss: (await value.data())[0], grads: new Map<string, Float32Array>() };
    for (const [name, v] of model.namedParameters()) out.grads.set(name, (await grads[v.name].data()) as Float32Array);
    tf.dispose([logits, value, ...Object.values(grads)]);
    return out;
  } finally {
    setKernelPath(prev);
  }
}

/** Greedy logits of 3 cached decoding steps after a padded prefill, in the kernel path `path`. */
async function decode(model: Qwen2ForCausalLM, path: 'ops' | null): Promise<Float32Array[]> {
  const prev = setKernelPath(path);
  const cache = new KVCache(model.config.numLayers);
  try {
    const steps: Float32Array[] = [];
    let m = mask.map((r) => [...r]);
    let { logits } = model.forward(ids, { attentionMask: m, cache, lastOnly: true });
    for (let s = 0; s < 3; s++) {
      const data = (await logits.data()) as Float32Array;
      steps.push(data);
      logits.dispose();
      const next = [0, 1].map((b) => [(s * 13 + b * 7 + 1) % 97]);
      m = m.map((r) => [...r, 1]);
      ({ logits } = model.forward(next, { attentionMask: m, cache, lastOnly: true }));
    }
    steps.push((await logits.data()) as Float32Array);
    logits.dispose();
    return steps;
  } finally {
    cache.dispose();
    setKernelPath(prev);
  }
}

after(() => shutdownDevice());

describe('decoder with the fused webgpu kernels vs plain tfjs ops', async () => {
  const skip = await startOrSkip('webgpu');
  for (const arch of ['qwen2', 'qwen3'] as const) {
    test(`${arch} (head_dim 64, GQA 2/1, T ${T}, left padding): logits, loss, gradients, checkpointing, KV-cache decoding`, { skip: skip ?? false }, async () => {
      const model = createModel(resolveConfig(config(arch)), 'random');
      // norms away from 1 and biases away from 0, so their gradients and effects are checked
      const rng = new Random(7);
      for (const [name, v] of model.namedParameters()) {
        if (name.endsWith('norm.weight') || name.endsWith('.bias')) v.assign(tf.tensor(rng.fillNormal(new Float32Array(v.size), name.endsWith('.bias') ? 0 : 1, 0.2), v.shape));
      }
      try {
        model.train();
        const want = await run(model, 'ops');
        const tensors = tf.memory().numTensors;
        const got = await run(model, null);
        assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
        const V = model.config.vocabSize;
        const real = (i: number) => mask[Math.floor(i / (T * V))][Math.floor(i / V) % T] === 1;
        const realOnly = (a: Float32Array) => a.filter((_, i) => real(i));
        assert.ok(maxRelDiff(realOnly(got.logits), realOnly(want.logits)) < 1e-4, `logits: ${maxRelDiff(realOnly(got.logits), realOnly(want.logits))}`);
        assert.ok(Math.abs(got.loss - want.loss) < 1e-5 * Math.abs(want.loss), `loss ${got.loss} vs ${want.loss}`);
        for (const [name, g] of want.grads) {
          const d = maxRelDiff(got.grads.get(name)!, g);
          assert.ok(d < 1e-3, `gradient of ${name} differs by ${d} (relative)`);
        }
        model.gradientCheckpointing = true;
        const ckpt = await run(model, null);
        model.gradientCheckpointing = false;
        for (const [name, g] of got.grads) assert.ok(maxRelDiff(ckpt.grads.get(name)!, g) < 1e-5, `checkpointed gradient of ${name}`);
        model.eval();
        const [dw, dg] = [await decode(model, 'ops'), await decode(model, null)];
        for (let s = 0; s < dw.length; s++) assert.ok(maxRelDiff(dg[s], dw[s]) < 1e-4, `decoding step ${s}: ${maxRelDiff(dg[s], dw[s])}`);
      } finally {
        model.dispose();
      }
    });
  }
});

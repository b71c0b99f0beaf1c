// Golden tests: tsft's Qwen2/Qwen3 against checkpoints and numbers written by transformers 5.17
// (tests/fixtures/make_model_fixtures.py), on every backend: logits 1e-4, loss 1e-5, gradients 1e-4
// relative, greedy tokens identical. The loss and its gradients are checked on the backend's fused kernels
// (src/backend/fused.ts) and on plain tfjs ops.

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { getModelTokenizer } from '../src/model/loader';
import { readSafetensors } from '../src/model/safetensors';
import { generate } from '../src/model/generate';
import { shutdownDevice } from '../src/backend/device';
import { kernelPath, setKernelPath } from '../src/backend/fused';
import { maxAbsDiff, maxRelDiff, startOrSkip, testDevices } from './helpers';

// relative to the repo root (npm test runs there; so does the GPU-box bundle of this file)
const FIXTURES = path.join(process.cwd(), 'tests', 'fixtures', 'models');

interface Expected {
  input_ids: number[][];
  attention_mask: number[][];
  labels: number[][];
  loss: number;
  token_acc: number;
  greedy: { prompt: number[]; new_tokens: number[] };
}

async function fixture(name: string) {
  const dir = path.join(FIXTURES, name);
  const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
  const { tensors } = await readSafetensors(path.join(dir, 'expected.safetensors'));
  return { dir, exp, tensors };
}

/** logits compared at real (non-padding) positions only: transformers' values at padded queries are arbitrary */
function realPositions(mask: number[][], V: number) {
  const T = mask[0].length;
  return (i: number) => mask[Math.floor(i / (T * V))][Math.floor(i / V) % T] === 1;
}

after(() => shutdownDevice());

for (const device of testDevices()) {
  describe(`models on ${device}`, async () => {
    const skip = await startOrSkip(device);
    for (const arch of ['qwen2', 'qwen3']) {
      it(`${arch}: logits, loss, gradients, greedy match transformers`, { skip: skip ?? false }, async (t) => {
        const { dir, exp, tensors } = await fixture(arch);
        const { model } = await getModelTokenizer(dir, { loadTokenizer: false, device });
        assert.ok(model);
        try {
          const V = model.config.vocabSize;
          const { logits } = model.forward(exp.input_ids, { attentionMask: exp.attention_mask });
          const dl = maxAbsDiff(await logits.data(), tensors.get('logits')!.data, realPositions(exp.attention_mask, V));
          logits.dispose();
          assert.ok(dl <= 1e-4, `logits differ by ${dl}`);

          // the loss on the backend's fused kernels (src/backend/fused.ts), then on plain tfjs ops
          let loss = NaN, worstGrad = 0, checked = 0;
          const paths: string[] = [];
          for (const forced of [null, 'ops'] as const) {
            const prev = setKernelPath(forced);
            try {
              paths.push(kernelPath());
              let accT: tf.Tensor | null = null;
              const { value, grads } = tf.variableGrads(() => {
                const out = model.loss(exp.input_ids, exp.labels, { attentionMask: exp.attention_mask });
                accT = tf.keep(out.tokenAcc);
                return out.loss;
              });
              loss = (await value.data())[0];
              const acc = (await accT!.data())[0];
              accT!.dispose();
              assert.ok(Math.abs(loss - exp.loss) <= 1e-5, `${kernelPath()}: loss ${loss} vs ${exp.loss}`);
              assert.ok(Math.abs(acc - exp.token_acc) <= 1e-6, `${kernelPath()}: token_acc ${acc} vs ${exp.token_acc}`);
              checked = 0;
              for (const [name, v] of model.namedParameters()) {
                const want = tensors.get(`grad.${name}`);
                assert.ok(want, `no expected gradient for ${name}`);
                const d = maxRelDiff(await grads[v.name].data(), want.data);
                assert.ok(d <= 1e-4, `${kernelPath()}: gradient of ${name} differs by ${d} (relative)`);
                worstGrad = Math.max(worstGrad, d);
                checked++;
              }
              assert.equal(checked, [...tensors.keys()].filter((k) => k.startsWith('grad.')).length);
              tf.dispose([value, ...Object.values(grads)]);
            } finally {
              setKernelPath(prev);
            }
          }

          const ids = await generate(model, exp.greedy.prompt, { maxNewTokens: 24, temperature: 0 });
          assert.deepEqual(ids, exp.greedy.new_tokens);
          t.diagnostic(`${device} ${arch} (loss kernels: ${paths.join(', ')}): logits max |Δ| ${dl.toExponential(2)}, loss |Δ| ${Math.abs(loss - exp.loss).toExponential(2)}, ` +
            `gradients max rel Δ ${worstGrad.toExponential(2)} over ${checked} tensors, greedy 24/24 identical`);
        } finally {
          model.dispose();
        }
      });
    }

    for (const variant of ['qwen3-bf16', 'qwen3-f16', 'qwen3-sharded']) {
      it(`loads ${variant} (logits of its rounded weights)`, { skip: skip ?? false }, async (t) => {
        const dir = path.join(FIXTURES, variant);
        const { tensors } = await readSafetensors(path.join(dir, 'expected.safetensors'));
        const { exp } = await fixture('qwen3');
        const { model } = await getModelTokenizer(dir, { loadTokenizer: false, device });
        assert.ok(model);
        const { logits } = model.forward(exp.input_ids, { attentionMask: exp.attention_mask });
        const d = maxAbsDiff(await logits.data(), tensors.get('logits')!.data, realPositions(exp.attention_mask, model.config.vocabSize));
        logits.dispose();
        model.dispose();
        assert.ok(d <= 1e-4, `logits differ by ${d}`);
        t.diagnostic(`${device} ${variant}: logits max |Δ| ${d.toExponential(2)}`);
      });
    }
  });
}

describe('memory', () => {
  it('disposing a model, its AdamW state and its LoRA adapters gives every byte back (tfjs variables share their initial tensor)', async (t) => {
    const skip = await startOrSkip('cpu');
    if (skip) return t.skip(skip);
    const { prepareLora, unloadAdapters } = await import('../src/train/lora');
    const { AdamW } = await import('../src/train/optimizer');
    const before = tf.memory().numBytes;
    const { model } = await getModelTokenizer(path.join('tests', 'fixtures', 'models', 'qwen3'), { loadTokenizer: false, device: 'cpu' });
    const weights = [...model!.namedParameters().values()].reduce((a, v) => a + v.size * 4, 0);
    assert.equal(tf.memory().numBytes - before, weights, 'the weights are held once');
    const prev = setKernelPath('ops');   // AdamW's moments as tfjs variables (the cpu path keeps them in wasm memory)
    const opt = new AdamW(model!.namedParameters(), { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 });
    setKernelPath(prev);
    assert.equal(tf.memory().numBytes - before, 3 * weights, 'weights + two moments, each once');
    opt.dispose();
    prepareLora(model!, { r: 4, lora_alpha: 8, target_modules: 'all-linear' });
    unloadAdapters(model!);
    model!.dispose();
    assert.equal(tf.memory().numBytes, before);
    // disposing a model with its adapters still attached frees them too
    const { model: m2 } = await getModelTokenizer(path.join('tests', 'fixtures', 'models', 'qwen3'), { loadTokenizer: false, device: 'cpu' });
    prepareLora(m2!, { r: 4, lora_alpha: 8, target_modules: 'all-linear' });
    m2!.dispose();
    assert.equal(tf.memory().numBytes, before, 'adapters attached at dispose are freed with the model');
    assert.equal(m2!.adapters.size, 0);
  });
});

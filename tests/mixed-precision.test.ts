// f16 mixed precision on webgpu (issue 8): the linear layers' f16 matmuls (forward, dx, dW) against f32;
// a whole model's loss and gradients in f16 against f32; LoRA's frozen base held in f16 only (memory
// halves, training still works, the f32 weights are gone with a clear message); the trainer with bf16
// (f16 mixed + GradScaler: loss_scale logged, curve beside the f32 run's, the once-said message); and
// an f16 overflow skipping the step and halving the scale. Runs on lavapipe (the SIMT f16 matmul) here
// and in CI; on the H100 the same code runs the subgroup-matrix kernels.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { shutdownDevice } from '../src/backend/device';
import { halfOf, linearMatmul, linearPath, markWeightsChanged } from '../src/backend/kernels/linear';
import { setComputeDtype, withComputeDtype } from '../src/backend/precision';
import { getTemplate, type Template } from '../src/data/template';
import { resolveConfig, type QwenConfigJson } from '../src/model/config';
import { getModelTokenizer } from '../src/model/loader';
import { Qwen3ForCausalLM } from '../src/model/qwen3';
import { Tokenizer } from '../src/model/tokenizer';
import { Seq2SeqTrainingArguments } from '../src/train/arguments';
import { GradScaler } from '../src/train/grad-scaler';
import { AdamW } from '../src/train/optimizer';
import { loraParameters, prepareLora } from '../src/train/lora';
import { Seq2SeqTrainer } from '../src/train/trainer';
import { Random } from '../src/utils/seed';
import { byteTokenizerFiles } from './fixtures/train/tiny-run';
import { maxRelDiff, startOrSkip } from './helpers';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');

let skip: string | null = null;
let tmp = '';
before(async () => {
  skip = await startOrSkip('webgpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-mixed-'));
});
after(async () => {
  setComputeDtype('float32');
  fs.rmSync(tmp, { recursive: true, force: true });
  await shutdownDevice();
});

function randn(shape: number[], seed: number, std = 1): tf.Tensor {
  return tf.tensor(new Random(seed).fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), 0, std), shape);
}

/** Values of a linear layer: y, dx and dW for y·dy summed. */
async function linearValues(x: tf.Tensor2D, w: tf.Variable, dy: tf.Tensor2D): Promise<Float32Array[]> {
  const f = (xi: tf.Tensor) => tf.sum(tf.mul(linearMatmul(xi as tf.Tensor2D, w as tf.Tensor2D), dy)) as tf.Scalar;
  const y = linearMatmul(x, w as tf.Tensor2D);
  const dx = tf.grad(f)(x);
  const { grads } = tf.variableGrads(() => f(x), [w]);
  const out = [await y.data(), await dx.data(), await grads[w.name].data()] as Float32Array[];
  tf.dispose([y, dx, grads[w.name]]);
  return out;
}

function modelConfig(): QwenConfigJson {
  return {
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', vocab_size: 97, hidden_size: 64, intermediate_size: 96,
    num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 64, rms_norm_eps: 1e-6,
    rope_theta: 10000, tie_word_embeddings: true, max_position_embeddings: 512,
  };
}
const T = 67;
const ids = [0, 1].map((b) => Array.from({ length: T }, (_, t) => (t * 31 + b * 17 + 3) % 97));
const mask = [Array.from({ length: T }, (_, t) => (t < 5 ? 0 : 1)), new Array<number>(T).fill(1)];
const labels = ids.map((row, b) => row.map((y, t) => (mask[b][t] ? y : -100)));

describe('f16 mixed precision on webgpu', () => {
  test('linear: f16 forward, dx and dW agree with f32 (non-multiple shapes); the f16 weight copy follows weight changes', async (t) => {
    if (skip) return t.skip(skip);
    const x = randn([37, 72], 1) as tf.Tensor2D, dy = randn([37, 40], 2) as tf.Tensor2D;
    const w = tf.variable(randn([40, 72], 3, 0.05), true);
    assert.equal(linearPath(), 'tiled-f32');
    const f32 = await linearValues(x, w, dy);
    const f16 = await withComputeDtype('float16', async () => {
      assert.equal(linearPath(), 'f16');
      return linearValues(x, w, dy);
    });
    for (const [i, what] of ['y', 'dx', 'dW'].entries()) {
      const rel = maxRelDiff(f16[i], f32[i]);
      assert.ok(rel < 5e-3, `${what}: f16 vs f32 max rel diff ${rel}`);
      assert.ok(rel > 0, `${what}: f16 must round (rel diff ${rel}); is the f16 path running?`);
    }
    // the cached f16 copy is remade after the weights change
    const h1 = halfOf(w);
    assert.equal(halfOf(w), h1, 'unchanged weights reuse their f16 copy');
    w.assign(tf.mul(w, 2));
    const h2 = halfOf(w);
    assert.notEqual(h2, h1, 'an assigned variable gets a new f16 copy');
    markWeightsChanged();
    assert.notEqual(halfOf(w), h2, 'markWeightsChanged (in-place optimizer steps) remakes the copy');
    tf.dispose([x, dy, w]);
  });

  test('a model: loss and every gradient in f16 mixed precision within f16 tolerance of f32', async (t) => {
    if (skip) return t.skip(skip);
    const model = new Qwen3ForCausalLM(resolveConfig(modelConfig()), 'random', new Random(5));
    const run = async () => {
      const vars = [...model.namedParameters().values()];
      const { value, grads } = tf.variableGrads(() => model.loss(ids, labels, { attentionMask: mask }).loss, vars);
      const out = { loss: (await value.data())[0], grads: new Map<string, Float32Array>() };
      for (const [n, v] of model.namedParameters()) out.grads.set(n, (await grads[v.name].data()) as Float32Array);
      tf.dispose([value, ...Object.values(grads)]);
      return out;
    };
    const f32 = await run();
    const f16 = await withComputeDtype('float16', run);
    assert.ok(Math.abs(f16.loss - f32.loss) / f32.loss < 2e-3, `loss ${f16.loss} vs ${f32.loss}`);
    let worst = 0, worstName = '';
    for (const [n, g] of f32.grads) {
      const rel = maxRelDiff(f16.grads.get(n)!, g);
      if (rel > worst) [worst, worstName] = [rel, n];
    }
    assert.ok(worst < 3e-2, `worst gradient ${worstName}: rel diff ${worst}`);
    model.dispose();
  });

  for (const vocab of [97, 98]) test(`LoRA: the frozen base held in f16 only (vocab ${vocab}: the embedding ${vocab % 2 ? 'stays f32' : 'too'}) — half its bytes, same loss, adapters still train, clear errors`, async (t) => {
    if (skip) return t.skip(skip);
    const model = new Qwen3ForCausalLM(resolveConfig({ ...modelConfig(), vocab_size: vocab }), 'random', new Random(6));
    const evenVocab = vocab % 2 === 0;
    prepareLora(model, { r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: 'all-linear' }, new Random(7));
    setComputeDtype('float16');
    try {
      assert.throws(() => withComputeDtype('float32', () => model.holdFrozenInHalf()), /computeDtype float16/);
      const loss = async () => {
        const out = model.loss(ids, labels, { attentionMask: mask });
        const v = (await out.loss.data())[0];
        tf.dispose([out.loss, out.tokenAcc]);
        return v;
      };
      const before = await loss();
      const bytesBefore = tf.memory().numBytes;
      const frozen = evenVocab ? /(_proj\.weight|^model\.embed_tokens\.weight|^lm_head\.weight)$/ : /_proj\.weight$/;
      const projBytes = [...model.namedParameters()].filter(([n]) => frozen.test(n)).reduce((a, [, v]) => a + v.size * 4, 0);
      const moved = model.holdFrozenInHalf();
      assert.equal(moved * 4, projBytes);
      // the f32 projections, embedding and their cached f16 copies are gone; the f16-only copies hold half the f32 bytes
      assert.ok(tf.memory().numBytes <= bytesBefore - projBytes / 2 + 64 * 15, `bytes ${bytesBefore} → ${tf.memory().numBytes} (frozen weights ${projBytes})`);
      assert.ok(![...model.namedParameters().keys()].some((n) => frozen.test(n)));
      assert.equal(model.halfParameterNames().length, evenVocab ? 15 : 14, 'the 14 projections (and the tied embedding with an even vocabulary)');
      // the projections and the LM head used the same f16 values before (cached copies); the embedding's rows
      // are now rounded to f16 too, which moves the loss a little
      const after = await loss();
      assert.ok(Math.abs(after - before) < 1e-3 * Math.abs(before), `loss ${before} → ${after} with the embedding in f16`);
      // the logits (generation) read the f16 LM head as well
      const { logits } = model.forward(ids, { attentionMask: mask });
      assert.ok((await logits.data()).every(Number.isFinite));
      logits.dispose();
      const params = loraParameters(model);
      const opt = new AdamW(params, { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 });
      const losses: number[] = [];
      for (let s = 0; s < 4; s++) {
        const { value, grads } = tf.variableGrads(() => model.loss(ids, labels, { attentionMask: mask }).loss, [...params.values()]);
        losses.push((await value.data())[0]);
        const g = new Map([...params].map(([n, v]) => [n, grads[v.name]]));
        await opt.clipAndStep(g, 1e-2, 1.0);
        tf.dispose([value, ...g.values()]);
      }
      assert.ok(losses[3] < losses[0], `LoRA over an f16 base learns: ${losses.join(' → ')}`);
      opt.dispose();
      assert.throws(() => (model as unknown as { w(n: string): unknown }).w('model.layers.0.mlp.up_proj.weight'), /held in f16 for training/);
    } finally {
      setComputeDtype('float32');
      model.dispose();
    }
  });

  test('an f16 overflow: non-finite gradients, the step skipped, the scale halved; weights untouched', async (t) => {
    if (skip) return t.skip(skip);
    const model = new Qwen3ForCausalLM(resolveConfig(modelConfig()), 'random', new Random(8));
    const params = model.namedParameters();
    const opt = new AdamW(params, { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 });
    const scaler = new GradScaler({ initScale: 2 ** 40 });   // dlogits·2^40 overflows f16 (max 65504)
    setComputeDtype('float16');
    try {
      const w = params.get('model.layers.0.mlp.down_proj.weight')!;
      const before = await w.data();
      const { value, grads } = tf.variableGrads(() => tf.mul(model.loss(ids, labels, { attentionMask: mask }).loss, scaler.scale) as tf.Scalar, [...params.values()]);
      const g = new Map([...params].map(([n, v]) => [n, grads[v.name]]));
      const norm = await opt.clipAndStep(g, 1e-3, 1.0, { inverseScale: scaler.inverseScale });
      assert.ok(!Number.isFinite(norm), `norm ${norm}`);
      const event = scaler.update(norm);
      assert.deepEqual(event, { skipped: true, scale: 2 ** 39, change: 'backoff' });
      assert.equal(opt.stepCount, 0);
      assert.deepEqual(await w.data(), before);
      tf.dispose([value, ...g.values()]);
    } finally {
      setComputeDtype('float32');
      opt.dispose();
      model.dispose();
    }
  });

  test('the trainer with bf16=true on webgpu: f16 mixed precision said once, loss_scale logged, loss curve beside f32', async (t) => {
    if (skip) return t.skip(skip);
    const { tokenizer, config } = byteTokenizerFiles();
    const template: Template = getTemplate('qwen3', new Tokenizer(tokenizer, config as never));
    template.setMode('train');
    const REF = JSON.parse(fs.readFileSync(path.join('tests', 'fixtures', 'train', 'reference.json'), 'utf8'));
    const curve = async (bf16: boolean) => {
      const { model } = await getModelTokenizer(path.join('tests', 'fixtures', 'models', 'qwen3'), { loadTokenizer: false, device: 'webgpu' });
      const dir = path.join(tmp, bf16 ? 'bf16' : 'f32');
      const args = new Seq2SeqTrainingArguments({
        output_dir: dir, learning_rate: REF.lr, lr_scheduler_type: 'cosine', warmup_ratio: 0.2, per_device_train_batch_size: 1,
        gradient_accumulation_steps: 2, max_steps: REF.steps, max_grad_norm: 1, train_dataloader_shuffle: false, logging_steps: 1,
        save_strategy: 'no', report_to: 'none', gradient_checkpointing: false, bf16,
      });
      const said: string[] = [];
      const write = process.stderr.write.bind(process.stderr), out = process.stdout.write.bind(process.stdout);
      const capture = (s: string | Uint8Array) => (said.push(String(s)), true);
      process.stderr.write = capture as typeof process.stderr.write;
      process.stdout.write = capture as typeof process.stdout.write;
      try {
        await new Seq2SeqTrainer({ model: model!, args, trainDataset: REF.rows, template }).train();
      } finally {
        process.stderr.write = write;
        process.stdout.write = out;
      }
      model!.dispose();
      const logs = fs.readFileSync(path.join(dir, 'logging.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => 'loss' in l);
      return { logs, said: said.join('') };
    };
    const f32 = await curve(false), f16 = await curve(true);
    assert.match(f16.said, /bf16=true on webgpu: WGSL has no bfloat16, so tsft trains in f16 mixed precision/);
    assert.equal(f16.said.split('trains in f16 mixed precision').length, 2, 'said once');
    assert.equal(f16.logs.length, f32.logs.length);
    for (const [i, l] of f16.logs.entries()) {
      assert.equal(l.loss_scale, 65536, `step ${i + 1} logs the loss scale`);
      assert.ok(Math.abs(l.loss - f32.logs[i].loss) / f32.logs[i].loss < 1e-2, `step ${i + 1}: loss ${l.loss} (f16) vs ${f32.logs[i].loss} (f32)`);
      assert.ok(Math.abs(l.grad_norm - f32.logs[i].grad_norm) / f32.logs[i].grad_norm < 3e-2, `step ${i + 1}: grad_norm ${l.grad_norm} vs ${f32.logs[i].grad_norm}`);
    }
    assert.ok(!('loss_scale' in f32.logs[0]));
  });
});

// Benchmark on model shapes with random weights: full fine-tuning steps (forward + tf.variableGrads +
// AdamW, batch 1) at seq 512 and 2048 → tokens/s and peak GPU memory; greedy decoding with the KV cache
// → tokens/s; and the attention kernel (flash forward + backward vs the stock tfjs ops of gqaAttention)
// at seq 2048 on Qwen3-0.6B's head shapes. bench/reference.py measures PyTorch on the same shapes in the
// same GPU-box call; bench/report.ts merges both into bench/results. See bench/README.md.
//
//   npx tsx bench/train-step.ts --small                  # tiny shapes on lavapipe (a minute)
//   ../shared/gpu/pack.sh bench/train-step.ts            # then on the GPU box:
//   source .gpu/setup.sh && node .gpu/train-step.mjs --out $OUT/ours.json
//
// --cases model:full|lora:seq:fp32|f16[:ckpt],... runs training steps as the trainer does (fused clip +
// AdamW; f16 = mixed precision with loss scaling; LoRA r8 all-linear with its frozen base held in f16), one
// fresh model per case, instead of the per-model runs below (reference.py --cases runs PyTorch's).
// Flags: --small; --out FILE (JSON lines, appended case by case, so a cut-off run keeps what it did);
// --models a,b (default: all, in the order below); --seqs 512,2048; --steps N (timed steps, default 3);
// --budget-s S (default 180: cases that would start later are recorded as skipped, and a case times
// fewer steps when its warm-up step says the full count won't fit); --no-attention; --no-decode.
//
// Shapes (per-model runs): Qwen3-4B in fp32 with AdamW needs 16 bytes per parameter (weights, gradients, two moments)
// = 64 GB before activations, more than the H100's 80 GB allows with tfjs's buffer pool, so it runs
// with 12 of its 36 layers, labelled "qwen3-4b-12of36L" (reference.py runs the same truncated shape).
// Weights: uniform values of std 0.02 (norms 1, biases 0) from one shared pool, passed to createModel:
// throughput does not depend on the values, and drawing 3e9 Box–Muller normals in JS ('random') would
// take minutes of the GPU box's time.
// Peak memory: deviceMemory()'s GPU bytes allocated (tfjs's buffers including its pool of free ones,
// like torch's "reserved"), read after backward and after the optimizer step.

import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { drain } from './drain';
import '../src/backend/gradients';
import { describeDevice, initDevice, shutdownDevice } from '../src/backend/device';
import { flashAttention } from '../src/backend/kernels/flash-attention';
import { deviceMemory, resetPeakMemory, toGiB } from '../src/backend/memory';
import { releasePooledGpuBuffers } from '../src/backend/memory-guard';
import { resolveConfig, type QwenConfigJson } from '../src/model/config';
import { poolWeights } from './weights';
import { generate } from '../src/model/generate';
import { createModel } from '../src/model/loader';
import { attentionBias, gqaAttention, type Qwen2ForCausalLM } from '../src/model/qwen2';
import { AdamW } from '../src/train/optimizer';
import { loraParameters, prepareLora } from '../src/train/lora';
import { setComputeDtype } from '../src/backend/precision';
import { halfCopyBytes } from '../src/backend/kernels/linear';

// ---------------------------------------------------------------------------------------------------
// Flags and shapes.

const argv = process.argv.slice(2);
const value = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const SMALL = argv.includes('--small');
const OUT = value('--out');
const STEPS = Number(value('--steps') ?? (SMALL ? 2 : 3));
const BUDGET_MS = Number(value('--budget-s') ?? 180) * 1000;
const SEQS = (value('--seqs') ?? (SMALL ? '32,64' : '512,2048')).split(',').map(Number);

/** A Qwen config.json from the numbers that differ between the benchmarked shapes. */
function qwen(arch: 'qwen2' | 'qwen3', hidden: number, layers: number, heads: number, kvHeads: number, mlp: number, vocab = 151936, headDim?: number): QwenConfigJson {
  return {
    architectures: [arch === 'qwen3' ? 'Qwen3ForCausalLM' : 'Qwen2ForCausalLM'],
    model_type: arch,
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: mlp,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    ...(headDim ? { head_dim: headDim } : {}),
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
    max_position_embeddings: 32768,
  };
}

/** The shapes benchmarked (same keys and numbers as SHAPES in bench/reference.py). */
const MODELS: Record<string, QwenConfigJson> = SMALL
  ? {
      'tiny-qwen3': qwen('qwen3', 64, 2, 4, 2, 128, 512, 16),
      'tiny-qwen2': qwen('qwen2', 64, 2, 4, 2, 128, 512),
    }
  : {
      'qwen3-0.6b': qwen('qwen3', 1024, 28, 16, 8, 3072, 151936, 128),
      'qwen3-4b-12of36L': qwen('qwen3', 2560, 12, 32, 8, 9728, 151936, 128),
      'qwen2.5-3b': qwen('qwen2', 2048, 36, 16, 2, 11008),
    };
const SELECTED = value('--models')?.split(',') ?? Object.keys(MODELS);
if (!SMALL) {
  // the whole Qwen3-4B: runs in f16 mixed precision with gradient checkpointing (--cases)
  MODELS['qwen3-4b'] = qwen('qwen3', 2560, 36, 32, 8, 9728, 151936, 128);
}

/**
 * One training case: `model:mode:seq:dtype[:ckpt]`, mode full | lora (r8, alpha 32, dropout 0.05, all-linear),
 * dtype fp32 | f16 (mixed precision: f16 matmuls and attention, f32 master weights; LoRA's frozen base in f16).
 */
interface Case { model: string; mode: 'full' | 'lora'; seq: number; dtype: 'fp32' | 'f16'; ckpt: boolean }
function parseCase(spec: string): Case {
  const [model, mode, seq, dtype, ckpt] = spec.split(':');
  if (!MODELS[model] || !['full', 'lora'].includes(mode) || !(Number(seq) > 0) || !['fp32', 'f16'].includes(dtype) || (ckpt && ckpt !== 'ckpt')) {
    throw new Error(`--cases: "${spec}" is not model:full|lora:seq:fp32|f16[:ckpt] (models: ${Object.keys(MODELS).join(', ')})`);
  }
  return { model, mode: mode as Case['mode'], seq: Number(seq), dtype: dtype as Case['dtype'], ckpt: ckpt === 'ckpt' };
}
const CASES = value('--cases')?.split(',').map(parseCase);

/** Attention micro-bench: Qwen3-0.6B heads (16 query, 8 KV, head_dim 128) at seq 2048. */
const ATTENTION = SMALL ? { H: 4, KV: 2, T: 128, D: 128 } : { H: 16, KV: 8, T: 2048, D: 128 };

// ---------------------------------------------------------------------------------------------------
// Records: one JSON line per measurement, to stdout and (appended) to --out.

type Measurement = { [key: string]: unknown; bench: string };

const started = performance.now();
let device = 'unknown';
let gpu: GPUDevice | undefined;

function emit(r: Measurement): void {
  const line = JSON.stringify({ source: 'tsft', ...r, device });
  console.log(line);
  if (OUT) fs.appendFileSync(OUT, line + '\n');
}

function overBudget(): boolean {
  return performance.now() - started > BUDGET_MS;
}

const round = (x: number, digits = 4) => Number(x.toPrecision(digits));
const errorText = (e: unknown) => String((e as Error)?.stack ?? e).split('\n').slice(0, 3).join(' | ');

/**
 * Runs `f` inside WebGPU error scopes, so that a failed allocation (tfjs doesn't throw on Dawn's
 * out-of-memory) or the invalid work after it fails this case instead of passing unnoticed.
 */
async function checked<T>(f: () => Promise<T>): Promise<T> {
  if (!gpu) return f();
  gpu.pushErrorScope('out-of-memory');
  gpu.pushErrorScope('validation');
  let result: T | undefined, thrown: unknown;
  try {
    result = await f();
  } catch (e) {
    thrown = e;
  }
  const invalid = await gpu.popErrorScope();
  const oom = await gpu.popErrorScope();
  if (oom) throw new Error(`GPU out of memory: ${oom.message.split('\n')[0]}`);
  if (invalid) throw new Error(`GPU validation error (often after an allocation failed): ${invalid.message.split('\n')[0]}`);
  if (thrown !== undefined) throw thrown;
  return result as T;
}


/**
 * Gives tfjs's pool of free GPU buffers back to the driver, after submitting what tfjs has recorded (so
 * tensors freed since join the pool first): each case starts from what it holds itself, as a fresh process.
 */
function releasePool(): void {
  if (gpu) releasePooledGpuBuffers();
}

/**
 * Mean ms of `step` (which waits for the GPU itself): one warm-up run (shader compiles), then up to
 * `steps` timed runs — fewer when the warm-up says they would overrun the budget.
 */
async function timeSteps(step: () => Promise<void>, steps: number): Promise<{ ms: number; steps: number; warmupMs: number }> {
  let t0 = performance.now();
  await step();
  const warmupMs = performance.now() - t0;
  const left = BUDGET_MS - (performance.now() - started);
  const n = Math.max(1, Math.min(steps, Math.floor(left / warmupMs)));
  t0 = performance.now();
  for (let i = 0; i < n; i++) await step();
  return { ms: (performance.now() - t0) / n, steps: n, warmupMs };
}

/**
 * Mean ms of `run` issued `reps` times back to back and waited for once, after one awaited warm-up run
 * (a wait per run would add Dawn's event-polling latency to every one); returns the last run's outputs.
 */
async function timeQueued(run: () => tf.Tensor[], reps: number): Promise<{ ms: number; last: tf.Tensor[] }> {
  let last = run();
  await drain(last[0]);
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) {
    tf.dispose(last);
    last = run();
  }
  deviceMemory();
  await drain(last[0]);
  return { ms: (performance.now() - t0) / reps, last };
}

// ---------------------------------------------------------------------------------------------------
// Attention: flash kernels vs the stock tfjs ops, forward and forward + backward.

async function attentionBench(): Promise<void> {
  const { H, KV, T, D } = ATTENTION;
  const name = `attention H${H}/KV${KV} D${D} seq ${T}`;
  const q = tf.randomNormal([1, H, T, D]) as tf.Tensor4D;
  const k = tf.randomNormal([1, KV, T, D]) as tf.Tensor4D;
  const v = tf.randomNormal([1, KV, T, D]) as tf.Tensor4D;
  const dy = tf.randomNormal([1, H, T, D]) as tf.Tensor4D;
  const bias = attentionBias(1, T, 0);
  const impls = {
    flash: (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D),
    stock: (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => gqaAttention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, bias),
  };
  // causal FLOPs, FlashAttention's convention: forward 2 matmuls over half the [T, T] square, backward 2.5× forward
  const fwdFlops = (4 * H * T * T * D) / 2;
  const results: { [impl: string]: { [pass: string]: number | string } } = {};
  const kept: { [impl: string]: tf.Tensor[] } = {}; // [out, dq, dk, dv] of each, to compare
  for (const [impl, f] of Object.entries(impls)) {
    results[impl] = {};
    kept[impl] = [];
    for (const pass of ['fwd', 'fwd+bwd'] as const) {
      try {
        releasePool();
        resetPeakMemory();
        const run = () => tf.tidy(() => (pass === 'fwd' ? [f(q, k, v)] : tf.grads(f)([q, k, v], dy)));
        const t = await checked(() => timeQueued(run, SMALL ? 2 : 5));
        results[impl][pass] = t.ms;
        results[impl][`${pass} peak GiB`] = toGiB(deviceMemory().peakBytes);
        kept[impl].push(...t.last);
      } catch (e) {
        results[impl][pass] = errorText(e);
      }
    }
  }
  // the two agree at this shape, on the same inputs: max over out, dq, dk, dv of max |flash - stock| / max |stock|
  let agree: number | undefined;
  if (kept.flash.length === 4 && kept.stock.length === 4) {
    agree = 0;
    for (let i = 0; i < 4; i++) {
      const [a, b] = [await kept.flash[i].data(), await kept.stock[i].data()];
      let err = 0, scale = 0;
      for (let j = 0; j < a.length; j++) {
        err = Math.max(err, Math.abs(a[j] - b[j]));
        scale = Math.max(scale, Math.abs(b[j]));
      }
      agree = Math.max(agree, err / (scale || 1));
    }
  }
  tf.dispose([...kept.flash, ...kept.stock]);
  for (const pass of ['fwd', 'fwd+bwd'] as const) {
    const ours = results.flash[pass], stock = results.stock[pass];
    const flops = pass === 'fwd' ? fwdFlops : 3.5 * fwdFlops;
    emit({
      bench: 'attention',
      name: `${name} ${pass}`,
      pass,
      seq: T,
      heads: H,
      kv_heads: KV,
      head_dim: D,
      ours_ms: typeof ours === 'number' ? round(ours) : null,
      stock_ms: typeof stock === 'number' ? round(stock) : null,
      ours_tflops: typeof ours === 'number' ? round(flops / ours / 1e9, 3) : undefined,
      ours_peak_gib: results.flash[`${pass} peak GiB`],
      stock_peak_gib: results.stock[`${pass} peak GiB`],
      max_rel_err: pass === 'fwd+bwd' && agree !== undefined ? round(agree, 3) : undefined,
      error: [ours, stock].filter((x) => typeof x === 'string').join('; ') || undefined,
    });
  }
  tf.dispose([q, k, v, dy, bias]);
  releasePool();
}

// ---------------------------------------------------------------------------------------------------
// Training steps and decoding for one model shape.

/**
 * One training step as the trainer runs it: loss (× the loss scale under mixed precision) and gradients of
 * the trainable parameters, then the fused clip (max norm 1.0) + AdamW, which unscales.
 */
async function trainStep(model: Qwen2ForCausalLM, opt: AdamW, params: Map<string, tf.Variable>, seq: number, lossScale = 1): Promise<number> {
  const vars = [...params.values()];
  const ids = [Array.from({ length: seq }, (_, t) => (t * 7919 + 13) % model.config.vocabSize)];
  const { value, grads } = tf.variableGrads(() => tf.mul(model.loss(ids, ids).loss, lossScale) as tf.Scalar, vars);
  deviceMemory(); // the peak: activations freed into the pool, gradients alive
  const g = new Map([...params].map(([n, v]) => [n, grads[v.name]]));
  const norm = await opt.clipAndStep(g, 1e-5, 1.0, { inverseScale: 1 / lossScale });
  if (!Number.isFinite(norm)) throw new Error(`gradient norm ${norm} at loss scale ${lossScale}`);
  tf.dispose([...g.values()]);
  await drain(vars[0]);
  const loss = (await value.data())[0] / lossScale;
  value.dispose();
  deviceMemory();
  return loss;
}

/** The trainable parameters: every weight (full) or the adapters (LoRA). */
function trainable(model: Qwen2ForCausalLM): Map<string, tf.Variable> {
  return model.adapters.size ? loraParameters(model) : model.namedParameters();
}

/** One --cases entry in a fresh model: build, (LoRA), precision, timed steps, emit. */
async function caseBench(c: Case): Promise<void> {
  const config = resolveConfig(MODELS[c.model]);
  const base = { bench: 'train', model: c.model, layers: config.numLayers, hidden: config.hiddenSize, mode: c.mode, seq: c.seq, dtype: c.dtype, ckpt: c.ckpt, batch: 1 };
  let model: Qwen2ForCausalLM | undefined, opt: AdamW | undefined;
  try {
    if (overBudget()) throw new Error('skipped: time budget');
    releasePool();
    // what earlier cases left alive (should be nothing: a leak would count in this case's peak)
    const before = { tensors: tf.memory().numTensors, gib: toGiB(tf.memory().numBytes) };
    const t0 = performance.now();
    model = createModel(config, poolWeights(config));
    const paramsM = round([...model.namedParameters().values()].reduce((a, v) => a + v.size, 0) / 1e6);
    setComputeDtype(c.dtype === 'f16' ? 'float16' : 'float32');
    if (c.mode === 'lora') {
      prepareLora(model, { r: 8, lora_alpha: 32, lora_dropout: 0.05, target_modules: 'all-linear' });
      if (c.dtype === 'f16') model.holdFrozenInHalf();
    }
    model.gradientCheckpointing = c.ckpt;
    model.train();
    const params = trainable(model);
    opt = new AdamW(params, { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 });
    const trainableM = round([...params.values()].reduce((a, v) => a + v.size, 0) / 1e6);
    console.error(`${c.model} ${c.mode} ${c.dtype}${c.ckpt ? ' ckpt' : ''} seq ${c.seq}: ${paramsM}M parameters (${trainableM}M trained), built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    releasePool();   // the weights' upload staging buffers (and freed f32 copies) that tfjs keeps in its pool, as the trainer drops them
    resetPeakMemory();
    let loss = NaN;
    const m = model, o = opt, scale = c.dtype === 'f16' ? 2 ** 16 : 1;
    const t = await checked(() => timeSteps(async () => void (loss = await trainStep(m, o, params, c.seq, scale)), STEPS));
    emit({
      ...base, params_m: paramsM, trainable_m: trainableM, ms_per_step: round(t.ms), tokens_per_s: round((c.seq / t.ms) * 1000),
      steps: t.steps, warmup_ms: round(t.warmupMs), peak_gib: toGiB(deviceMemory().peakBytes), f16_copies_gib: toGiB(halfCopyBytes()), loss: round(loss),
      left_before: before,
    });
  } catch (e) {
    emit({ ...base, error: errorText(e) });
  } finally {
    setComputeDtype('float32');
    opt?.dispose();
    model?.dispose();
    releasePool();
  }
}

async function modelBench(key: string): Promise<void> {
  const json = MODELS[key];
  if (!json) throw new Error(`unknown model ${key}: pick from ${Object.keys(MODELS).join(', ')}`);
  const config = resolveConfig(json);
  const base = { model: key, layers: config.numLayers, hidden: config.hiddenSize, params_m: 0 };
  let model: Qwen2ForCausalLM | undefined;
  let opt: AdamW | undefined;
  try {
    if (overBudget()) throw new Error('skipped: time budget');
    const t0 = performance.now();
    model = createModel(config, poolWeights(config));
    base.params_m = round([...model.namedParameters().values()].reduce((s, v) => s + v.size, 0) / 1e6);
    opt = new AdamW(model.namedParameters(), { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 });
    console.error(`${key}: ${base.params_m}M parameters, built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } catch (e) {
    for (const seq of SEQS) emit({ bench: 'train', ...base, seq, error: errorText(e) });
    opt?.dispose();
    model?.dispose();
    return;
  }
  model.train();
  for (const seq of SEQS) {
    const m = model, o = opt;
    if (overBudget()) {
      emit({ bench: 'train', ...base, seq, error: 'skipped: time budget' });
      continue;
    }
    try {
      releasePool();
      resetPeakMemory();
      let loss = NaN;
      const t = await checked(() => timeSteps(async () => void (loss = await trainStep(m, o, m.namedParameters(), seq)), STEPS));
      emit({
        bench: 'train', ...base, seq, batch: 1, dtype: 'fp32',
        ms_per_step: round(t.ms), tokens_per_s: round((seq / t.ms) * 1000), steps: t.steps, warmup_ms: round(t.warmupMs),
        peak_gib: toGiB(deviceMemory().peakBytes), loss: round(loss),
      });
    } catch (e) {
      emit({ bench: 'train', ...base, seq, error: errorText(e) });
    }
  }
  opt.dispose();
  if (!argv.includes('--no-decode')) {
    const prompt = Array.from({ length: 16 }, (_, t) => (t * 7919 + 13) % config.vocabSize);
    const newTokens = SMALL ? 4 : 16;
    try {
      if (overBudget()) throw new Error('skipped: time budget');
      model.eval();
      releasePool();
      const t = await checked(async () => {
        await generate(model!, prompt, { maxNewTokens: 2 });
        const t0 = performance.now();
        const out = await generate(model!, prompt, { maxNewTokens: newTokens });
        return { ms: performance.now() - t0, n: out.length };
      });
      emit({ bench: 'decode', ...base, prompt: prompt.length, new_tokens: t.n, ms_per_token: round(t.ms / t.n), tokens_per_s: round((t.n / t.ms) * 1000) });
    } catch (e) {
      emit({ bench: 'decode', ...base, prompt: prompt.length, error: errorText(e) });
    }
  }
  model.dispose();
  releasePool();
}

// ---------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (OUT) {
    fs.mkdirSync(path.dirname(path.resolve(OUT)), { recursive: true });
    fs.writeFileSync(OUT, '');
  }
  const info = await initDevice('webgpu');
  device = describeDevice({ ...info, features: [] });
  gpu = info.gpuDevice;
  emit({ bench: 'meta', small: SMALL, steps: STEPS, budget_s: BUDGET_MS / 1000, features: info.features, date: new Date().toISOString() });
  if (!argv.includes('--no-attention')) {
    try {
      await attentionBench();
    } catch (e) {
      emit({ bench: 'attention', name: 'attention', error: errorText(e) });
    }
  }
  if (CASES) for (const c of CASES) await caseBench(c);
  else for (const key of SELECTED) await modelBench(key);
  console.error(`train-step bench: ${((performance.now() - started) / 1000).toFixed(1)} s on ${device}`);
  await shutdownDevice();
}

main().catch(async (e) => {
  console.error(e);
  emit({ bench: 'fatal', error: errorText(e) });
  process.exit(1);
});

// Where one training step's GPU time goes: per-kernel GPU times (WebGPU timestamp queries through
// tf.profile) of one full fine-tuning step of a model shape, summed by kernel and sorted, beside the step's
// wall time without profiling; and the step's matmul shapes timed with each matmul we have (stock tfjs,
// tsft's fp32 tiles, the f16 subgroup-matrix kernel). Tells which kernel to fix next.
//
//   npx tsx bench/profile-step.ts --small                     # tiny shapes on lavapipe
//   ../shared/gpu/pack.sh bench/profile-step.ts               # then on the GPU box:
//   source .gpu/setup.sh && node .gpu/profile-step.mjs --model qwen3-0.6b --seq 2048 --out $OUT/profile.json
//
// Flags: --model qwen3-0.6b|qwen2.5-3b|qwen3-4b (default qwen3-0.6b), --layers N (truncate), --seq T,
// --dtype float32|float16 (compute precision), --lora (r8 all-linear, frozen base), --ckpt (gradient
// checkpointing), --no-matmul, --no-profile, --gpu-kernels (GPU time per dispatch name, f16 matmuls by shape,
// instead of tf.profile's per-op list), --steps N (timed steps), --out FILE.
// Profiled kernel times are GPU times of each dispatch measured alone (tfjs ends the pass per kernel
// when profiling), so their sum says where time goes, not the unprofiled step's wall time. Kernels that
// encode their own passes (the f16 matmuls) are not profiled one by one; their share is the difference.

import * as fs from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { drain } from './drain';
import '../src/backend/gradients';
import { describeDevice, initDevice, shutdownDevice } from '../src/backend/device';
import { matMulTiled } from '../src/backend/kernels/program';
import { matMulF16, matmulF16Path, toHalf } from '../src/backend/kernels/matmul-f16';
import { deviceMemory, resetPeakMemory, toGiB } from '../src/backend/memory';
import { setComputeDtype, type ComputeDtype } from '../src/backend/precision';
import { resolveConfig, type QwenConfigJson } from '../src/model/config';
import { createModel } from '../src/model/loader';
import { AdamW } from '../src/train/optimizer';
import { prepareLora } from '../src/train/lora';
import { poolWeights } from './weights';

const argv = process.argv.slice(2);
const value = (name: string, dflt: string): string => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const SMALL = argv.includes('--small');
const MODEL = value('--model', SMALL ? 'tiny' : 'qwen3-0.6b');
const SEQ = Number(value('--seq', SMALL ? '64' : '2048'));
const STEPS = Number(value('--steps', '2'));
const DTYPE = value('--dtype', 'float32') as ComputeDtype;
const OUT = argv.includes('--out') ? value('--out', '') : undefined;
const REPS = Number(value('--reps', '20'));

function qwen(arch: 'qwen2' | 'qwen3', hidden: number, layers: number, heads: number, kvHeads: number, mlp: number, vocab = 151936, headDim?: number): QwenConfigJson {
  return {
    architectures: [arch === 'qwen3' ? 'Qwen3ForCausalLM' : 'Qwen2ForCausalLM'], model_type: arch, vocab_size: vocab,
    hidden_size: hidden, intermediate_size: mlp, num_hidden_layers: layers, num_attention_heads: heads,
    num_key_value_heads: kvHeads, ...(headDim ? { head_dim: headDim } : {}), rms_norm_eps: 1e-6, rope_theta: 1000000,
    tie_word_embeddings: true, max_position_embeddings: 32768,
  };
}
const SHAPES: Record<string, QwenConfigJson> = {
  tiny: qwen('qwen3', 64, 2, 4, 2, 128, 512, 16),
  'qwen3-0.6b': qwen('qwen3', 1024, 28, 16, 8, 3072, 151936, 128),
  'qwen2.5-3b': qwen('qwen2', 2048, 36, 16, 2, 11008),
  'qwen3-4b': qwen('qwen3', 2560, 36, 32, 8, 9728, 151936, 128),
};

const results: Record<string, unknown>[] = [];
function emit(r: Record<string, unknown>): void {
  console.log(JSON.stringify(r));
  results.push(r);
  if (OUT) fs.writeFileSync(OUT, JSON.stringify(results, null, 1));
}


/** Mean ms of `run` issued `reps` times back to back, one wait at the end; and the mean CPU ms to issue one. */
let lastIssueMs = 0;
async function timeQueued(run: () => tf.Tensor, reps = REPS): Promise<number> {
  tf.dispose(run());
  let last = run();
  await drain(last);
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) {
    last.dispose();
    last = run();
  }
  lastIssueMs = (performance.now() - t0) / reps;
  await drain(last);
  last.dispose();
  return (performance.now() - t0) / reps;
}

/** Each of the step's linear-layer matmuls (x·Wᵀ, dy·W, dyᵀ·x) with each implementation. */
async function matmulBench(hidden: number, outs: number[], T: number): Promise<void> {
  for (const out of outs) {
    const x = tf.randomNormal([T, hidden]) as tf.Tensor2D, w = tf.randomNormal([out, hidden], 0, 0.02) as tf.Tensor2D;
    const dy = tf.randomNormal([T, out]) as tf.Tensor2D;
    const wh = toHalf(w), xh = toHalf(x);
    const cases: [string, number, () => tf.Tensor][] = [
      ['fwd x·Wᵀ stock', 0, () => tf.matMul(x, w, false, true)],
      ['fwd x·Wᵀ tiled-f32', 0, () => matMulTiled(x, w, false, true)],
      ['fwd x·Wᵀ f16 (x converted)', 0, () => matMulF16(x, wh, false, true)],
      ['fwd x·Wᵀ f16 (both halves ready)', 0, () => matMulF16(xh, wh, false, true)],
      ['fwd x·Wᵀ f16 old form', 0, () => matMulF16(xh, wh, false, true, { options: { form: 'old' } })],
      ['dx dy·W stock', 1, () => tf.matMul(dy, w)],
      ['dx dy·W tiled-f32', 1, () => matMulTiled(dy, w)],
      ['dx dy·W f16', 1, () => matMulF16(dy, wh)],
      ['dx dy·W f16 old form', 1, () => matMulF16(dy, wh, false, false, { options: { form: 'old' } })],
      ['dW dyᵀ·x stock', 2, () => tf.matMul(dy, x, true, false)],
      ['dW dyᵀ·x tiled-f32', 2, () => matMulTiled(dy, x, true, false)],
      ['dW dyᵀ·x f16', 2, () => matMulF16(dy, x, true, false)],
    ];
    for (const [name, , run] of cases) {
      try {
        const ms = await timeQueued(run);
        emit({ bench: 'matmul', name, M_N_K: name.startsWith('fwd') ? [T, out, hidden] : name.startsWith('dx') ? [T, hidden, out] : [out, hidden, T], ms: +ms.toFixed(4), issue_ms: +lastIssueMs.toFixed(4), tflops: +((2 * T * out * hidden) / ms / 1e9).toFixed(2) });
      } catch (e) {
        emit({ bench: 'matmul', name, error: String(e).slice(0, 300) });
      }
    }
    tf.dispose([x, w, dy]);
    wh.dispose();
    xh.dispose();
  }
}

async function main(): Promise<void> {
  const info = await initDevice(SMALL ? 'webgpu' : 'webgpu');
  const device = describeDevice({ ...info, features: [] });
  emit({ bench: 'meta', device, model: MODEL, seq: SEQ, dtype: DTYPE, f16_path: matmulF16Path(), toggles: process.env.TSFT_DAWN_TOGGLES ?? '', date: new Date().toISOString() });
  setComputeDtype(DTYPE);
  const json = { ...SHAPES[MODEL] };
  if (argv.includes('--layers')) json.num_hidden_layers = Number(value('--layers', '1'));
  const config = resolveConfig(json);
  if (argv.includes('--calibrate')) await matmulBench(4096, [4096], 4096);
  if (!argv.includes('--no-matmul')) {
    const outs = [config.numHeads * config.headDim, config.numKvHeads * config.headDim, config.intermediateSize];
    await matmulBench(config.hiddenSize, outs, SEQ);
    // o_proj and down_proj: in = heads·D / mlp, out = hidden
    await matmulBench(config.intermediateSize, [config.hiddenSize], SEQ);
  }
  const model = createModel(config, poolWeights(config));
  if (argv.includes('--lora')) prepareLora(model, { r: 8, lora_alpha: 32, lora_dropout: 0, target_modules: 'all-linear' });
  model.gradientCheckpointing = argv.includes('--ckpt');
  model.train();
  const params = new Map([...model.namedParameters()].filter(([, v]) => v.trainable));
  for (const [n, a] of model.adapters) a.variables().forEach((v, i) => params.set(`${n}.${i}`, v));
  const opt = new AdamW(params, { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 });
  const ids = [Array.from({ length: SEQ }, (_, t) => (t * 7919 + 13) % config.vocabSize)];
  const vars = [...params.values()];
  // the trainer's step: loss + gradients, then clip to 1.0 and AdamW through the backend's fused kernels
  let gradMs = 0, optMs = 0, issueMs = 0;
  const step = async (): Promise<number> => {
    const t0 = performance.now();
    const { value: loss, grads } = tf.variableGrads(() => model.loss(ids, ids).loss, vars);
    issueMs += performance.now() - t0;   // CPU time to issue forward + backward (the GPU may still be busy)
    deviceMemory();
    const l = (await loss.data())[0];
    const t1 = performance.now();
    const g = new Map([...params].map(([n, v]) => [n, grads[v.name]]));
    await opt.clipAndStep(g, 1e-5, 1.0);
    tf.dispose([...g.values()]);
    await drain(vars[0]);
    gradMs += t1 - t0;
    optMs += performance.now() - t1;
    loss.dispose();
    return l;
  };
  resetPeakMemory();
  let t0 = performance.now();
  let loss = await step();
  const warm = performance.now() - t0;
  t0 = performance.now();
  for (let i = 0; i < STEPS; i++) loss = await step();
  const ms = (performance.now() - t0) / STEPS;
  gradMs /= STEPS + 1;
  optMs /= STEPS + 1;
  emit({ bench: 'step-split', grad_ms_mean_incl_warmup: +gradMs.toFixed(1), optimizer_ms_mean_incl_warmup: +optMs.toFixed(1) });
  // issue ≈ grad: the step is bound by the CPU issuing work; issue ≪ grad: by the GPU
  issueMs = 0;
  gradMs = 0;
  for (let i = 0; i < STEPS; i++) await step();
  emit({ bench: 'step-issue', issue_ms: +(issueMs / STEPS).toFixed(1), grad_ms: +(gradMs / STEPS).toFixed(1) });
  emit({ bench: 'step', model: MODEL, seq: SEQ, dtype: DTYPE, lora: argv.includes('--lora'), ckpt: model.gradientCheckpointing, warmup_ms: +warm.toFixed(0), ms: +ms.toFixed(1), tokens_per_s: +(SEQ / ms * 1000).toFixed(0), peak_gib: toGiB(deviceMemory().peakBytes), loss });

  if (argv.includes('--gpu-kernels')) {
    // GPU time of every dispatch of one forward + backward (timestamp queries, one pass per dispatch:
    // tfjs's programs by class, tsft's own pipelines — f16 matmuls — by label), summed by name
    const info = await tf.time(() => {
      const { value: l, grads } = tf.variableGrads(() => model.loss(ids, ids).loss, vars);
      tf.dispose([l, ...Object.values(grads)]);
    });
    const extra = (info as unknown as { getExtraProfileInfo?: () => string }).getExtraProfileInfo?.() ?? '';
    const byName = new Map<string, { ms: number; n: number }>();
    let total = 0;
    for (const part of extra.split(', ')) {
      const i = part.lastIndexOf(': ');
      if (i < 0) continue;
      const name = part.slice(0, i), ms = Number(part.slice(i + 2));
      const e = byName.get(name) ?? { ms: 0, n: 0 };
      e.ms += ms;
      e.n++;
      total += ms;
      byName.set(name, e);
    }
    emit({ bench: 'gpu-kernels', dispatches: [...byName.values()].reduce((a, e) => a + e.n, 0), gpu_ms_sum: +total.toFixed(1), wall_ms: +info.wallMs.toFixed(1) });
    for (const [name, e] of [...byName].sort((a, b) => b[1].ms - a[1].ms).slice(0, 60)) {
      emit({ bench: 'gpu-kernel', name, ms: +e.ms.toFixed(2), n: e.n, share: +(e.ms / total).toFixed(3) });
    }
  }

  if (!argv.includes('--no-profile') && !argv.includes('--gpu-kernels')) {
    const profile = await tf.profile(() => {
      const { value: l, grads } = tf.variableGrads(() => model.loss(ids, ids).loss, vars);
      tf.dispose(Object.values(grads));
      return l;
    });
    const byKernel = new Map<string, { ms: number; n: number; shapes: Set<string> }>();
    let total = 0;
    for (const k of profile.kernels) {
      const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
      total += ms;
      const e = byKernel.get(k.name) ?? { ms: 0, n: 0, shapes: new Set<string>() };
      e.ms += ms;
      e.n++;
      if (e.shapes.size < 4) e.shapes.add(JSON.stringify(k.inputShapes));
      byKernel.set(k.name, e);
    }
    const rows = [...byKernel].sort((a, b) => b[1].ms - a[1].ms);
    emit({ bench: 'profile', kernels: profile.kernels.length, gpu_ms_sum: +total.toFixed(1) });
    for (const [name, e] of rows.slice(0, 40)) emit({ bench: 'profile-kernel', name, ms: +e.ms.toFixed(2), n: e.n, share: +(e.ms / total).toFixed(3), shapes: [...e.shapes].join(' ') });
  }
  await shutdownDevice();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

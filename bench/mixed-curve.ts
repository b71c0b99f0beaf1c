// f16 mixed precision vs fp32: the same 50 training steps (Qwen3-0.6B shape, random weights from
// bench/weights.ts, the same batches) once in fp32 and once in f16 mixed precision (f16 matmuls and
// attention with f32 accumulation, f32 master weights and AdamW, GradScaler from 2^16, as the trainer
// runs bf16/fp16 on webgpu). Writes both loss curves and their largest relative gap as JSON; --plot
// draws them (vega-lite → PNG, locally: sharp is not carried to the GPU box).
//
//   ../shared/gpu/pack.sh bench/mixed-curve.ts          # then on the GPU box:
//   source .gpu/setup.sh && node .gpu/mixed-curve.mjs --out $OUT/mixed-curve.json
//   npx tsx bench/mixed-curve.ts --plot bench/results/2026-11-28-mixed-curve.json   # here: the PNG beside it
//   npx tsx bench/mixed-curve.ts --small                 # tiny shape on lavapipe
//
// Data: each step is one row of `--seq` tokens (default 512) following a per-row affine rule over a
// 512-token slice of the vocabulary (t' = (a·t + b) mod 512 + 1000, a, b drawn per row), so the loss
// falls quickly and the two runs are compared on a real learning curve, not on noise.

import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import { describeDevice, initDevice, shutdownDevice } from '../src/backend/device';
import { setComputeDtype } from '../src/backend/precision';
import { resolveConfig, type QwenConfigJson } from '../src/model/config';
import { createModel } from '../src/model/loader';
import { GradScaler } from '../src/train/grad-scaler';
import { AdamW } from '../src/train/optimizer';
import { LRScheduler } from '../src/train/scheduler';
import { Random } from '../src/utils/seed';
import { poolWeights } from './weights';

const argv = process.argv.slice(2);
const value = (name: string, dflt: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : dflt);
const SMALL = argv.includes('--small');
const STEPS = Number(value('--steps', SMALL ? '12' : '50'));
const SEQ = Number(value('--seq', SMALL ? '64' : '512'));
const OUT = value('--out', '');
const LR = Number(value('--lr', SMALL ? '3e-3' : '3e-4'));

const CONFIG: QwenConfigJson = {
  architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', vocab_size: SMALL ? 2048 : 151936,
  hidden_size: SMALL ? 128 : 1024, intermediate_size: SMALL ? 256 : 3072, num_hidden_layers: SMALL ? 2 : 28,
  num_attention_heads: SMALL ? 2 : 16, num_key_value_heads: SMALL ? 1 : 8, head_dim: SMALL ? 64 : 128, rms_norm_eps: 1e-6,
  rope_theta: 1000000, tie_word_embeddings: true, max_position_embeddings: 32768,
};

function batches(): number[][][] {
  const rng = new Random(7);
  return Array.from({ length: STEPS }, () => {
    const a = 1 + 2 * Math.floor(rng.random() * 200), b = Math.floor(rng.random() * 512);
    let t = Math.floor(rng.random() * 512);
    return [Array.from({ length: SEQ }, () => ((t = (a * t + b) % 512) + 1000) % CONFIG.vocab_size!)];
  });
}

interface Curve { loss: number[]; grad_norm: number[]; loss_scale: number[]; ms: number }

async function run(dtype: 'float32' | 'float16'): Promise<Curve> {
  const config = resolveConfig(CONFIG);
  const model = createModel(config, poolWeights(config));
  setComputeDtype(dtype);
  model.train();
  const params = model.namedParameters();
  const vars = [...params.values()];
  const opt = new AdamW(params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
  const sched = new LRScheduler('cosine', LR, 3, STEPS);
  const scaler = dtype === 'float16' ? new GradScaler() : null;
  const curve: Curve = { loss: [], grad_norm: [], loss_scale: [], ms: 0 };
  const t0 = performance.now();
  for (const ids of batches()) {
    const scale = scaler?.scale ?? 1;
    const { value: loss, grads } = tf.variableGrads(() => tf.mul(model.loss(ids, ids).loss, scale) as tf.Scalar, vars);
    const g = new Map([...params].map(([n, v]) => [n, grads[v.name]]));
    const norm = await opt.clipAndStep(g, sched.lr, 1.0, { inverseScale: 1 / scale });
    scaler?.update(norm);
    sched.step();
    curve.loss.push((await loss.data())[0] / scale);
    curve.grad_norm.push(norm);
    curve.loss_scale.push(scale);
    tf.dispose([loss, ...g.values()]);
    process.stderr.write(`\r${dtype} step ${curve.loss.length}/${STEPS} loss ${curve.loss.at(-1)!.toFixed(4)}   `);
  }
  curve.ms = (performance.now() - t0) / STEPS;
  process.stderr.write('\n');
  setComputeDtype('float32');
  opt.dispose();
  model.dispose();
  return curve;
}

async function plot(file: string): Promise<void> {
  const r = JSON.parse(fs.readFileSync(file, 'utf8'));
  const { renderSpec } = await import('../src/plot/render');
  const runs = { fp32: 'fp32', f16: 'f16 mixed (loss scaling)' };
  const values = (['fp32', 'f16'] as const).flatMap((k) => (r[k].loss as number[]).map((loss, i) => ({ step: i + 1, loss, run: runs[k] })));
  const gaps = (r.fp32.loss as number[]).map((l, i) => ({ step: i + 1, gap: (100 * (r.f16.loss[i] - l)) / l }));
  const { png } = await renderSpec({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: `${r.model}: f16 mixed vs fp32, ${r.steps} steps of ${r.seq} tokens (largest gap ${(100 * r.max_rel_gap).toPrecision(2)} %)`,
    vconcat: [
      {
        width: 560, height: 260, data: { values }, mark: { type: 'line', point: { size: 16 } },
        encoding: {
          x: { field: 'step', type: 'quantitative' }, y: { field: 'loss', type: 'quantitative', scale: { zero: false } },
          color: { field: 'run', type: 'nominal', legend: { orient: 'top-right', labelLimit: 240 } },
          strokeDash: { field: 'run', type: 'nominal', legend: null },
        },
      },
      {
        width: 560, height: 110, data: { values: gaps }, mark: { type: 'bar' },
        encoding: { x: { field: 'step', type: 'quantitative' }, y: { field: 'gap', type: 'quantitative', title: '(f16 − fp32) / fp32, %' } },
      },
    ],
  });
  const out = file.replace(/\.json$/, '.png');
  fs.writeFileSync(out, png);
  console.log(`wrote ${out}`);
}

async function main(): Promise<void> {
  if (argv.includes('--plot')) return plot(value('--plot', ''));
  const info = await initDevice('webgpu');
  const fp32 = await run('float32');
  const f16 = await run('float16');
  const gaps = fp32.loss.map((l, i) => Math.abs(f16.loss[i] - l) / Math.abs(l));
  const result = {
    name: 'f16 mixed vs fp32 loss curve', model: SMALL ? 'tiny qwen3' : 'qwen3-0.6b shape', device: describeDevice({ ...info, features: [] }),
    steps: STEPS, seq: SEQ, lr: LR, max_rel_gap: Math.max(...gaps), final_rel_gap: gaps.at(-1), fp32, f16, date: new Date().toISOString(),
  };
  console.log(JSON.stringify({ ...result, fp32: undefined, f16: undefined, fp32_ms: fp32.ms, f16_ms: f16.ms, first: [fp32.loss[0], f16.loss[0]], last: [fp32.loss.at(-1), f16.loss.at(-1)] }));
  if (OUT) {
    fs.mkdirSync(path.dirname(path.resolve(OUT)), { recursive: true });
    fs.writeFileSync(OUT, JSON.stringify(result, null, 1));
  }
  await shutdownDevice();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

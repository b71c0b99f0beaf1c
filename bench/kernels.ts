// Micro-benchmark of the fused kernels (src/backend/kernels) against the stock tfjs-op versions of the
// same math, at real shapes (Qwen3-4B / Qwen3-0.6B widths, 2048 tokens, vocabulary 151,936), on webgpu.
// Prints one JSON line per measurement — { name, shape, ours_ms, stock_ms, speedup, tflops / GB/s,
// max_rel_err (ours vs stock on the same inputs), device } — and with --out FILE writes them all as a
// JSON array. Each kernel runs in its own try/catch: a failure is an entry with `error`, the rest go on.
//
//   npx tsx bench/kernels.ts --small                       # tiny shapes: runs on lavapipe in seconds
//   bash ../shared/gpu/pack.sh bench/kernels.ts             # then, on the GPU box:
//   source .gpu/setup.sh && node .gpu/kernels.mjs --out $OUT/kernels.json
//
// Flags: --small, --out FILE, --only REGEX (entry names), --reps N (timed runs, default 5; stock CE 3),
// --no-stock (ours only), --tiles LIST (CE forward tile sweep, e.g. 128x128x8_8x8,64x64x16_4x4).
// Timing: one warm-up run (compiles, and gives the outputs compared), then N runs issued back to back and
// one await on a 1-element readback of the last output; the mean per run is reported.

import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { drain as sync } from './drain';
import '../src/backend/gradients';
import { describeDevice, getGpuDevice, initDevice, shutdownDevice } from '../src/backend/device';
import { adamwStepFused, adamwStepStock, globalGradNorm, globalGradNormStock, type AdamWHyper, type AdamWSlot } from '../src/backend/kernels/adamw';
import { crossEntropyFromHidden, crossEntropyStock } from '../src/backend/kernels/cross-entropy';
import { ElementwiseProgram, matMulTiled, parseTile, pickTile, runProgram, tileKey, TILE_128, TILE_64 } from '../src/backend/kernels/program';
import { rmsNormFused } from '../src/backend/kernels/rms-norm';
import { applyRopeFused } from '../src/backend/kernels/rope';
import { siluGateFused } from '../src/backend/kernels/swiglu';
import { applyRope, rmsNorm, ropeCosSin, siluGate } from '../src/model/qwen2';

interface Entry {
  name: string;
  shape: string;
  ours_ms: number | null;
  stock_ms: number | null;
  /** stock_ms / ours_ms */
  speedup?: number;
  /** useful FLOPs / time (CE: 6·N·H·V for forward + backward, 2·N·H·V forward) */
  ours_tflops?: number;
  stock_tflops?: number;
  /** ideal bytes moved / time (memory-bound kernels) */
  ours_gbps?: number;
  stock_gbps?: number;
  /** max |ours − stock| / max |stock| over the compared outputs */
  max_rel_err?: number;
  note?: string;
  error?: string;
  device: string;
}

// ---------------------------------------------------------------------------------------------------
// Flags.

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
function option(name: string): string | undefined {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
}
const SMALL = flag('--small');
const OUT = option('--out');
const ONLY = option('--only') ? new RegExp(option('--only')!) : null;
const REPS = Number(option('--reps') ?? 5);
const STOCK = !flag('--no-stock');
const TILES = (option('--tiles') ?? '128x128x8_8x8,128x128x16_8x8,64x64x16_4x4,128x64x8_8x4,64x128x8_4x8').split(',').map(parseTile);

const entries: Entry[] = [];
let device = 'unknown';
/** Dawn's uncaptured errors (a failed shader, an allocation over a limit): tfjs doesn't throw on them. */
const gpuErrors: string[] = [];

function emit(e: Omit<Entry, 'device'>, errorsBefore = gpuErrors.length): void {
  const full: Entry = { ...e, device };
  if (gpuErrors.length > errorsBefore) {
    full.error = [full.error, `GPU errors: ${gpuErrors.slice(errorsBefore, errorsBefore + 2).join(' | ')}`].filter(Boolean).join('; ');
  }
  if (full.ours_ms != null && full.stock_ms != null) full.speedup = round(full.stock_ms / full.ours_ms, 3);
  entries.push(full);
  console.log(JSON.stringify(full));
}

function errorText(e: unknown): string {
  return String((e as Error).stack ?? e).split('\n').slice(0, 4).join(' | ');
}

function round(x: number, digits = 4): number {
  return Number(x.toPrecision(digits));
}

// ---------------------------------------------------------------------------------------------------
// Timing and comparison helpers.

type Outputs = tf.Tensor | tf.Tensor[] | void;

function asList(o: Outputs): tf.Tensor[] {
  return o === undefined ? [] : Array.isArray(o) ? o : [o];
}


/**
 * Mean ms per run of `run` (after `warm` was awaited by the caller): `reps` runs back to back, then one
 * readback of `probe(outputs of the last run)`.
 */
async function timeIt(run: () => Outputs, reps: number, probe: (out: tf.Tensor[]) => tf.Tensor): Promise<number> {
  const t0 = performance.now();
  let last: tf.Tensor[] = [];
  for (let r = 0; r < reps; r++) {
    tf.dispose(last);
    last = asList(run());
  }
  await sync(probe(last));
  const ms = (performance.now() - t0) / reps;
  tf.dispose(last);
  return round(ms);
}

/** max |a − b| / max |b| over pairs of tensors, computed on the GPU (one readback). */
async function relErr(pairs: [tf.Tensor, tf.Tensor][]): Promise<number> {
  let worst = 0;
  for (const [a, b] of pairs) {
    const r = tf.tidy(() => tf.div(tf.max(tf.abs(tf.sub(a, b))), tf.maximum(tf.max(tf.abs(b)), 1e-30)));
    worst = Math.max(worst, (await r.data())[0]);
    r.dispose();
  }
  return round(worst, 3);
}

/**
 * Warm-up of both versions (compile; outputs compared), then timed runs of each. `stockRun` absent or
 * --no-stock: ours only.
 */
async function compare(
  name: string,
  shape: string,
  ours: () => Outputs,
  stock: (() => Outputs) | null,
  extra: (oursMs: number | null, stockMs: number | null) => Partial<Entry> = () => ({}),
  reps = { ours: REPS, stock: REPS },
  probe: (out: tf.Tensor[]) => tf.Tensor = (out) => out[0],
): Promise<void> {
  if (ONLY && !ONLY.test(name)) return;
  const errorsBefore = gpuErrors.length;
  tf.engine().startScope();
  try {
    const o = asList(ours());
    await sync(probe(o));
    let maxRel: number | undefined;
    let stockMs: number | null = null;
    if (stock && STOCK) {
      const s = asList(stock());
      await sync(probe(s));
      if (o.length && o.length === s.length) maxRel = await relErr(o.map((t, i) => [t, s[i]]));
      tf.dispose(s);
    }
    tf.dispose(o);
    const oursMs = await timeIt(ours, reps.ours, probe);
    if (stock && STOCK) stockMs = await timeIt(stock, reps.stock, probe);
    emit({ name, shape, ours_ms: oursMs, stock_ms: stockMs, max_rel_err: maxRel, ...extra(oursMs, stockMs) }, errorsBefore);
  } catch (e) {
    emit({ name, shape, ours_ms: null, stock_ms: null, error: errorText(e) }, errorsBefore);
  } finally {
    tf.engine().endScope();
  }
}

/** Uniform values in [-scale, scale) from an integer hash of (index, seed), made on the GPU (tfjs's random ops fill on the CPU: minutes at these sizes). */
class HashFillProgram extends ElementwiseProgram {
  override uniforms = 'scale : f32, seed : u32,';

  constructor(shape: number[]) {
    super([], shape, 'bench_hash_fill');
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index >= uniforms.size) { return; }
      var s = (u32(index) ^ (uniforms.seed * 2654435761u)) * 747796405u + 2891336453u;
      s = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
      s = (s >> 22u) ^ s;
      result[index] = (f32(s >> 8u) / 16777216.0 * 2.0 - 1.0) * uniforms.scale;
    }`;
  }
}

function rand(shape: number[], scale = 1, seed = 1): tf.Tensor {
  return runProgram(new HashFillProgram(shape), [], [{ type: 'float32', data: [scale] }, { type: 'uint32', data: [seed] }]);
}

/** Integers in [0, max) on the GPU. */
function randInt(shape: number[], max: number, seed: number): tf.Tensor {
  return tf.tidy(() => tf.cast(tf.minimum(tf.floor(tf.mul(tf.add(rand(shape, 1, seed), 1), max / 2)), max - 1), 'int32'));
}

const tflops = (flops: number) => (ms: number | null) => (ms ? round(flops / ms / 1e9, 3) : undefined);
const gbps = (bytes: number) => (ms: number | null) => (ms ? round(bytes / ms / 1e6, 4) : undefined);

// ---------------------------------------------------------------------------------------------------
// The kernels.

async function benchCrossEntropy(N: number, H: number, V: number): Promise<void> {
  const shape = `N=${N} H=${H} V=${V}`;
  const h = tf.keep(rand([N, H], 1, 1)) as tf.Tensor2D;
  const w = tf.keep(rand([V, H], 0.05, 2)) as tf.Tensor2D;
  const t = tf.keep(randInt([N], V, 3)) as tf.Tensor1D;
  try {
    const fwdFlops = 2 * N * H * V;
    const ours = (): tf.Tensor => {
      const { loss, correct } = crossEntropyFromHidden(h, w, t);
      correct.dispose();
      return loss;
    };
    const stock = (): tf.Tensor => tf.tidy(() => tf.mean(crossEntropyStock(h, w, t).tokenLoss));
    await compare(`ce_fwd_H${H}`, shape, ours, stock, (a, b) => ({ ours_tflops: tflops(fwdFlops)(a), stock_tflops: tflops(fwdFlops)(b) }));
    const oursGrad = () => tf.grads((hh: tf.Tensor, ww: tf.Tensor) => {
      const { loss, correct } = crossEntropyFromHidden(hh as tf.Tensor2D, ww as tf.Tensor2D, t);
      correct.dispose();
      return loss;
    })([h, w]);
    const stockGrad = () => tf.grads((hh: tf.Tensor, ww: tf.Tensor) => tf.mean(crossEntropyStock(hh as tf.Tensor2D, ww as tf.Tensor2D, t).tokenLoss))([h, w]);
    await compare(
      `ce_fwd_bwd_H${H}`,
      shape,
      oursGrad,
      stockGrad,
      (a, b) => ({
        ours_tflops: tflops(3 * fwdFlops)(a),
        stock_tflops: tflops(3 * fwdFlops)(b),
        note: 'tflops count 6·N·H·V (forward + two backward matmuls); ours also recomputes the logits (8·N·H·V done)',
      }),
      { ours: REPS, stock: Math.min(REPS, 3) },
    );
    // The logits matmul alone, ours (tile sweep, inside the CE forward) vs tf.matMul.
    for (const tile of SMALL ? [TILE_64, TILE_128] : TILES) {
      const run = () => {
        const { loss, correct } = crossEntropyFromHidden(h, w, t, { tile });
        correct.dispose();
        return loss;
      };
      await compare(`ce_fwd_tile_${tileKey(tile)}_H${H}`, shape, run, null, (a) => ({ ours_tflops: tflops(fwdFlops)(a) }));
    }
    await compare(
      `matmul_logits_H${H}`,
      `[${N}, ${H}]·[${V}, ${H}]ᵀ`,
      () => matMulTiled(h, w, false, true),
      () => tf.matMul(h, w, false, true),
      (a, b) => ({ ours_tflops: tflops(fwdFlops)(a), stock_tflops: tflops(fwdFlops)(b), note: `tile ${tileKey(pickTile(N, V))}` }),
    );
  } finally {
    tf.dispose([h, w, t]);
  }
}

async function benchRmsNorm(rows: number, H: number): Promise<void> {
  const shape = `[${rows}, ${H}]`;
  const x = tf.keep(rand([rows, H], 2, 4)), w = tf.keep(rand([H], 1, 5)), dy = tf.keep(rand([rows, H], 1, 6));
  try {
    const n = rows * H;
    await compare(`rmsnorm_fwd_H${H}`, shape, () => rmsNormFused(x, w, 1e-6), () => tf.tidy(() => rmsNorm(x, w, 1e-6)),
      (a, b) => ({ ours_gbps: gbps(8 * n)(a), stock_gbps: gbps(8 * n)(b), note: 'GB/s counts reading x and writing y once' }));
    await compare(`rmsnorm_fwd_bwd_H${H}`, shape,
      () => tf.grads((a: tf.Tensor, b: tf.Tensor) => rmsNormFused(a, b, 1e-6))([x, w], dy),
      () => tf.grads((a: tf.Tensor, b: tf.Tensor) => rmsNorm(a, b, 1e-6))([x, w], dy),
      (a, b) => ({ ours_gbps: gbps(20 * n)(a), stock_gbps: gbps(20 * n)(b), note: 'GB/s counts x, y; x, dy, dx once each' }));
  } finally {
    tf.dispose([x, w, dy]);
  }
}

async function benchRope(B: number, heads: number, T: number, D: number): Promise<void> {
  const shape = `[${B}, ${heads}, ${T}, ${D}]`;
  const positions = Array.from({ length: B }, () => Array.from({ length: T }, (_, i) => i));
  const { cos, sin } = ropeCosSin(positions, D, 1e6);
  tf.keep(cos);
  tf.keep(sin);
  const x = tf.keep(rand([B, heads, T, D], 1, 7)) as tf.Tensor4D, dy = tf.keep(rand([B, heads, T, D], 1, 8));
  try {
    const n = B * heads * T * D;
    await compare(`rope_fwd_${heads}h`, shape, () => applyRopeFused(x, cos, sin), () => tf.tidy(() => applyRope(x, cos, sin)),
      (a, b) => ({ ours_gbps: gbps(8 * n)(a), stock_gbps: gbps(8 * n)(b) }));
    await compare(`rope_fwd_bwd_${heads}h`, shape,
      () => tf.grads((a: tf.Tensor) => applyRopeFused(a as tf.Tensor4D, cos, sin))([x], dy),
      () => tf.grads((a: tf.Tensor) => applyRope(a as tf.Tensor4D, cos, sin))([x], dy),
      (a, b) => ({ ours_gbps: gbps(16 * n)(a), stock_gbps: gbps(16 * n)(b) }));
  } finally {
    tf.dispose([x, dy, cos, sin]);
  }
}

async function benchSwiGlu(rows: number, F: number): Promise<void> {
  const shape = `[${rows}, ${F}]`;
  const g = tf.keep(rand([rows, F], 4, 9)) as tf.Tensor2D, u = tf.keep(rand([rows, F], 1, 10)) as tf.Tensor2D, dy = tf.keep(rand([rows, F], 1, 11));
  try {
    const n = rows * F;
    await compare(`swiglu_fwd_F${F}`, shape, () => siluGateFused(g, u), () => tf.tidy(() => siluGate(g, u)),
      (a, b) => ({ ours_gbps: gbps(12 * n)(a), stock_gbps: gbps(12 * n)(b) }));
    await compare(`swiglu_fwd_bwd_F${F}`, shape,
      () => tf.grads((a: tf.Tensor, b: tf.Tensor) => siluGateFused(a, b))([g, u], dy),
      () => tf.grads((a: tf.Tensor, b: tf.Tensor) => siluGate(a as tf.Tensor2D, b as tf.Tensor2D))([g, u], dy),
      (a, b) => ({ ours_gbps: gbps(32 * n)(a), stock_gbps: gbps(32 * n)(b), note: 'GB/s counts g, u, y; g, u, dy, dg, du once each' }));
  } finally {
    tf.dispose([g, u, dy]);
  }
}

/** Qwen3-0.6B's parameter shapes (tied embeddings): 596M parameters. */
function qwen3SmallShapes(layers: number, hidden: number, vocab: number): { shape: number[]; decay: boolean }[] {
  const heads = 16, kv = 8, headDim = 128, mlp = 3072;
  const out = [{ shape: [vocab, hidden], decay: true }, { shape: [hidden], decay: false }];
  for (let l = 0; l < layers; l++) {
    out.push(
      { shape: [heads * headDim, hidden], decay: true },
      { shape: [kv * headDim, hidden], decay: true },
      { shape: [kv * headDim, hidden], decay: true },
      { shape: [hidden, heads * headDim], decay: true },
      { shape: [headDim], decay: false },
      { shape: [headDim], decay: false },
      { shape: [mlp, hidden], decay: true },
      { shape: [mlp, hidden], decay: true },
      { shape: [hidden, mlp], decay: true },
      { shape: [hidden], decay: false },
      { shape: [hidden], decay: false },
    );
  }
  return out;
}

async function benchAdamW(layers: number, hidden: number, vocab: number): Promise<void> {
  const specs = qwen3SmallShapes(layers, hidden, vocab);
  const total = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0);
  const shape = `${specs.length} tensors, ${(total / 1e6).toFixed(1)}M params (Qwen3-0.6B shapes, ${layers} layers)`;
  const make = (ours: boolean): AdamWSlot[] => specs.map(({ shape: s, decay }, i) => ({
    param: tf.tidy(() => tf.variable(rand(s, 0.02, 100 + i), true, `${ours ? 'o' : 's'}${i}`)),
    grad: tf.keep(rand(s, 1e-3, 200 + i)),
    expAvg: tf.tidy(() => tf.variable(tf.zeros(s), false)),
    expAvgSq: tf.tidy(() => tf.variable(tf.zeros(s), false)),
    decay,
  }));
  const hp: Omit<AdamWHyper, 'step'> = { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  let oursSlots: AdamWSlot[] = [], stockSlots: AdamWSlot[] = [];
  try {
    oursSlots = make(true);
    stockSlots = STOCK ? make(false) : [];
    const steps = { ours: 0, stock: 0 };
    const step = (slots: AdamWSlot[], fused: boolean) => () => {
      const norm = fused ? globalGradNorm(slots.map((s) => s.grad), 1.0) : globalGradNormStock(slots.map((s) => s.grad), 1.0);
      const n = fused ? ++steps.ours : ++steps.stock;
      (fused ? adamwStepFused : adamwStepStock)(slots, { ...hp, step: n }, norm.clipCoef);
      tf.dispose([norm.norm, norm.clipCoef]);
      return slots[slots.length - 1].param.clone();
    };
    const limits = getGpuDevice().limits;
    await compare('adamw_clip_step', shape, step(oursSlots, true), STOCK ? step(stockSlots, false) : null,
      (a, b) => ({
        ours_gbps: gbps(28 * total)(a),
        stock_gbps: gbps(28 * total)(b),
        note: `global grad norm + clip + AdamW; GB/s counts p, g, m, v read and p, m, v written once (the norm reads g again); maxStorageBuffersPerShaderStage ${limits.maxStorageBuffersPerShaderStage}`,
      }));
    if (STOCK && (!ONLY || ONLY.test('adamw_clip_step'))) {
      // same inputs and steps on both sides: compare the parameters after all of them
      const pairs = oursSlots.map((s, i) => [s.param, stockSlots[i].param] as [tf.Tensor, tf.Tensor]);
      emit({ name: 'adamw_params_agree', shape, ours_ms: null, stock_ms: null, max_rel_err: await relErr(pairs), note: `after ${steps.ours} (ours) and ${steps.stock} (stock) steps` });
    }
  } catch (e) {
    emit({ name: 'adamw_clip_step', shape, ours_ms: null, stock_ms: null, error: errorText(e) });
  } finally {
    tf.dispose([...oursSlots, ...stockSlots].flatMap((s) => [s.param, s.grad, s.expAvg, s.expAvgSq]));
  }
}

// ---------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const info = await initDevice('webgpu');
  device = describeDevice({ ...info, features: [] });
  getGpuDevice().addEventListener('uncapturederror', (ev) => gpuErrors.push((ev as GPUUncapturedErrorEvent).error.message.split('\n')[0]));
  emit({ name: 'bench_info', shape: SMALL ? 'small' : 'real', ours_ms: null, stock_ms: null, note: JSON.stringify({ reps: REPS, features: info.features, limits: info.limits }) });
  const t0 = performance.now();
  if (SMALL) {
    await benchCrossEntropy(64, 64, 1000);
    await benchRmsNorm(64, 256);
    await benchRope(1, 4, 64, 64);
    await benchSwiGlu(64, 512);
    await benchAdamW(1, 64, 1000);
  } else {
    const V = 151936;
    await benchCrossEntropy(2048, 1024, V);
    await benchCrossEntropy(2048, 2560, V);
    await benchRmsNorm(2048, 2560);
    await benchRmsNorm(2048, 1024);
    await benchRope(1, 32, 2048, 128);
    await benchRope(1, 8, 2048, 128);
    await benchSwiGlu(2048, 9728);
    await benchSwiGlu(2048, 3072);
    await benchAdamW(28, 1024, V);
  }
  const failed = entries.filter((e) => e.error).length;
  console.error(`kernels bench: ${entries.length} entries, ${failed} failed, ${((performance.now() - t0) / 1000).toFixed(1)} s on ${device}`);
  if (OUT) {
    fs.mkdirSync(path.dirname(path.resolve(OUT)), { recursive: true });
    fs.writeFileSync(OUT, JSON.stringify(entries, null, 1) + '\n');
    console.error(`wrote ${OUT}`);
  }
  await shutdownDevice();
}

main().catch(async (e) => {
  console.error(e);
  if (OUT) fs.writeFileSync(OUT, JSON.stringify([...entries, { name: 'bench', error: String(e), device }], null, 1) + '\n');
  process.exit(1);
});

// The CPU fast path (src/backend/cpu: WebAssembly SIMD on a worker pool) against the same math in tfjs ops
// on the wasm backend (XNNPACK, one thread in Node), at the tiny default model's shapes: cross-entropy from
// hidden states forward + backward (N labelled tokens, H, V = 151,936) and AdamW + global norm over
// V·H + ~1 M parameters. Times are the best of several runs (the box is shared: other jobs' load makes
// single runs noisy); GFLOP/s counts the three matmuls, 3·2·N·H·V.
//
//   npx tsx bench/cpu-kernels.ts [--reps 5] [--tfjs-reps 1] [--no-tfjs] [--tfjs-max-n 512]
//                                [--shapes 256x64,1024x64,256x128,1024x128]
//
// Measured 2026-11-28 on the 2-core box (AMD EPYC Zen 3, Node 20.20 / V8 11.3) at load average ~1 (two runs,
// the better of each; cpu = the process's CPU time over both threads):
//   CE fwd+bwd   N=256  H=64:   335 ms (cpu 635), fwd 129 ms — tfjs-wasm 8.4 s: 25×
//                N=1024 H=64:  1273 ms (cpu 2433)            — tfjs-wasm crashed ('memory access out of bounds')
//                N=256  H=128:  576 ms (cpu 1088)            — tfjs-wasm 9.8 s: 17×
//                N=1024 H=128: 2246 ms (cpu 4316), 53 GFLOP/s
//   AdamW + clip over V·H + 1 M params, on tf.Variables (wasm backend): 27 ms at H=64 (10.8 M), 52 ms at
//   H=128 (20.5 M) — tfjs-wasm ops 126 / 267 ms; 10 / 19 ms when the arrays live in the kernels' memory.
// Against a float64 reference at N=24, V=151,936, the loss is within 2e-8 relative (tfjs-wasm: 7e-6) and
// dHidden within 8e-7 (tfjs-wasm: 1e-4): the tiled sums lose less than one long f32 sum over V.

import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import { initDevice } from '../src/backend/device';
import { CpuAdamW } from '../src/backend/cpu/adamw';
import { cpuCrossEntropy } from '../src/backend/cpu/cross-entropy';
import { prepareCpuKernels } from '../src/backend/cpu';
import { cpuKernels, shutdownCpuKernels } from '../src/backend/cpu/runtime';
import { adamwStepStock, globalGradNormStock, type AdamWSlot } from '../src/backend/kernels/adamw';
import { crossEntropyStock } from '../src/backend/kernels/cross-entropy';
import { Random } from '../src/utils/seed';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

const V = 151936;
const REPS = Number(arg('reps', '5'));
const TFJS_REPS = Number(arg('tfjs-reps', '1'));
const WITH_TFJS = !process.argv.includes('--no-tfjs');
/** At N = 1024 tfjs-wasm's [N, V] tensors (0.6 GB each) crash it ('memory access out of bounds'). */
const TFJS_MAX_N = Number(arg('tfjs-max-n', '512'));
const SHAPES = arg('shapes', '256x64,1024x64,256x128,1024x128').split(',').map((s) => s.split('x').map(Number) as [number, number]);

interface Timing {
  /** wall time of the first run (ms): first touch of this shape's memory */
  first: number;
  /** best wall time (ms) */
  wall: number;
  /** best CPU time of the process, all threads (ms): what to trust on a loaded machine */
  cpu: number;
}

/** Best wall and CPU times of `reps` runs of fn, after a first run (its time: `first`). */
function best(reps: number, fn: () => void): Timing {
  const t0 = performance.now();
  fn();
  const t = { first: performance.now() - t0, wall: Infinity, cpu: Infinity };
  for (let r = 0; r < reps; r++) {
    const c0 = process.cpuUsage(), t0 = performance.now();
    fn();
    const c = process.cpuUsage(c0);
    t.wall = Math.min(t.wall, performance.now() - t0);
    t.cpu = Math.min(t.cpu, (c.user + c.system) / 1000);
  }
  return t;
}

const fmt = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1)).padStart(6);
const show = (t: Timing) => `${fmt(t.wall)} ms (cpu ${fmt(t.cpu)})`;

function benchCrossEntropy(N: number, H: number): void {
  const rng = new Random(N + H);
  const h = tf.tensor2d(rng.fillNormal(new Float32Array(N * H)), [N, H]);
  const w = tf.tensor2d(rng.fillNormal(new Float32Array(V * H), 0, 0.02), [V, H]);
  const targets = Array.from({ length: N }, () => rng.int(V));
  const gflop = (3 * 2 * N * H * V) / 1e9;
  const fwdBwd = (f: (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Scalar) => () => {
    const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => f(a as tf.Tensor2D, b as tf.Tensor2D))([h, w]);
    tf.dispose([value, ...grads]);
  };
  const ours = (a: tf.Tensor2D, b: tf.Tensor2D) => {
    const out = cpuCrossEntropy(a, b, targets, { reduction: 'sum' });
    out.correct.dispose();
    return out.loss;
  };
  const oursFwd = best(REPS, () => tf.dispose(ours(h, w)));
  const oursAll = best(REPS, fwdBwd(ours));
  const rate = (t: Timing) => `${(gflop / t.wall * 1e3).toFixed(1)} GFLOP/s`;
  let line = `CE N=${String(N).padStart(4)} H=${String(H).padStart(3)}: ours fwd ${show(oursFwd)}, fwd+bwd ${show(oursAll)} = ${rate(oursAll)} (first call ${fmt(oursFwd.first)} ms)`;
  if (WITH_TFJS && N > TFJS_MAX_N) line += ` | tfjs-wasm skipped (N > ${TFJS_MAX_N}: it crashes, out of heap)`;
  else if (WITH_TFJS) {
    const t = tf.tensor1d(targets, 'int32');
    const stock = (a: tf.Tensor2D, b: tf.Tensor2D) => {
      const { tokenLoss, correct } = crossEntropyStock(a, b, t);
      correct.dispose();
      return tf.sum(tokenLoss) as tf.Scalar;
    };
    const tfAll = best(TFJS_REPS, () => tf.tidy(fwdBwd(stock)));
    line += ` | tfjs-wasm fwd+bwd ${show(tfAll)} = ${rate(tfAll)} | ${(tfAll.wall / oursAll.wall).toFixed(1)}× wall`;
    t.dispose();
  }
  console.log(line);
  tf.dispose([h, w]);
}

function benchAdamW(H: number): void {
  const rng = new Random(H);
  const sizes = [V * H, 1 << 20];
  const total = sizes.reduce((a, b) => a + b, 0);
  const arrays = sizes.map((n, i) => ({ data: rng.fillNormal(new Float32Array(n), 0, 0.02), grad: rng.fillNormal(new Float32Array(n), 0, 1e-3), decay: i === 0 }));
  const hp = { lr: 1e-4, maxGradNorm: 1 };

  const opt = new CpuAdamW({ weightDecay: 0.1 });
  const staged = best(REPS, () => opt.step(arrays, hp));
  opt.dispose();

  const k = cpuKernels();
  const resident = arrays.map((a) => {
    const data = k.allocF32(a.data.length), grad = k.allocF32(a.grad.length);
    data.set(a.data);
    grad.set(a.grad);
    return { data, grad, decay: a.decay };
  });
  const opt2 = new CpuAdamW({ weightDecay: 0.1 });
  const inPlace = best(REPS, () => opt2.step(resident, hp));
  const normOnly = best(REPS, () => opt2.globalNorm(resident.map((r) => r.grad)));
  opt2.dispose();
  for (const r of resident) {
    k.free(k.offsetOf(r.data));
    k.free(k.offsetOf(r.grad));
  }

  const vars = arrays.map((a, i) => tf.variable(tf.tensor1d(a.data), true, `p${i}_${H}`));
  const grads = arrays.map((a) => tf.tensor1d(a.grad));
  const opt3 = new CpuAdamW({ weightDecay: 0.1 });
  const onVars = best(REPS, () => opt3.stepVariables(vars.map((v, i) => ({ variable: v, grad: grads[i], decay: i === 0 })), hp));
  opt3.dispose();

  let line = `AdamW+clip ${(total / 1e6).toFixed(2)} M params (H=${H}): ours ${show(inPlace)} in shared memory (norm alone ${show(normOnly)}), ${show(staged)} from JS arrays, ${show(onVars)} on tf.Variables`;
  if (WITH_TFJS) {
    const slots: AdamWSlot[] = vars.map((v, i) => ({
      param: v, grad: grads[i], decay: i === 0,
      expAvg: tf.variable(tf.zerosLike(v), false), expAvgSq: tf.variable(tf.zerosLike(v), false),
    }));
    let step = 0;
    const stock = best(TFJS_REPS, () => {
      const { clipCoef, norm } = globalGradNormStock(grads, 1);
      adamwStepStock(slots, { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: ++step }, clipCoef);
      tf.dispose([clipCoef, norm]);
    });
    line += ` | tfjs-wasm ${show(stock)} | ${(stock.wall / onVars.wall).toFixed(1)}× wall`;
    tf.dispose(slots.flatMap((s) => [s.expAvg, s.expAvgSq]));
  }
  console.log(line);
  tf.dispose([...vars, ...grads]);
}

async function main(): Promise<void> {
  await initDevice('wasm', { quiet: true });
  const t0 = performance.now();
  const threads = await prepareCpuKernels();
  console.log(`cpu kernels: ${threads} threads (start + warm-up ${(performance.now() - t0).toFixed(0)} ms); tfjs backend ${tf.getBackend()}; best of ${REPS} (ours) / ${TFJS_REPS} (tfjs) runs`);
  for (const [N, H] of SHAPES) benchCrossEntropy(N, H);
  for (const H of [...new Set(SHAPES.map(([, h]) => h))]) benchAdamW(H);
  await shutdownCpuKernels();
}

void main();

// CPU kernels (src/backend/cpu, WebAssembly SIMD on a worker pool) against plain tfjs on the cpu backend:
// cross-entropy from hidden states (loss with both reductions, the argmax-correct count, dHidden, dW) as
// Qwen2ForCausalLM.loss computes it, on shapes that cross tile, slice and padding edges, with and without
// the logits store; AdamW against a JS transcription of torch's formula over several steps (and numbers
// worked out by hand for one), with clipping; the global gradient norm; tf.Variable updates in place.
// Also: 1 thread and 3 threads give bit-identical results, the generated wasm matches kernels.c, and a
// process that used the workers exits on its own.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import { initDevice } from '../src/backend/device';
import {
  CpuAdamW,
  cpuCrossEntropy,
  cpuKernels,
  prepareCpuKernels,
  shutdownCpuKernels,
  type CpuAdamWParam,
  type CpuCrossEntropyOptions,
} from '../src/backend/cpu';
import { KERNELS_C_SHA256 } from '../src/backend/cpu/kernels-wasm';
import { Random } from '../src/utils/seed';
import { maxRelDiff, startOrSkip } from './helpers';

const TOL = 1e-5;
const CPU_DIR = path.join(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '../src/backend/cpu');

function randn(rng: Random, n: number, scale = 1): Float32Array {
  return rng.fillNormal(new Float32Array(n), 0, scale);
}

/** Qwen2ForCausalLM.loss's math in tfjs ops: logits = h·Wᵀ, lse − logit[target]. */
function referenceLoss(h: tf.Tensor2D, w: tf.Tensor2D, targets: number[], mean: boolean): tf.Scalar {
  const [N] = h.shape, V = w.shape[0];
  const logits = tf.matMul(h, w, false, true);
  const lse = tf.logSumExp(logits, -1);
  const picked = tf.gather(tf.reshape(logits, [N * V]), tf.tensor1d(targets.map((y, i) => i * V + y), 'int32'));
  const tokenLoss = tf.sub(lse, picked);
  return (mean ? tf.mean(tokenLoss) : tf.sum(tokenLoss)) as tf.Scalar;
}

interface CeCase {
  N: number;
  H: number;
  V: number;
  opts?: CpuCrossEntropyOptions;
}

/** Inputs with half the targets set to the row's argmax, so the correct count is neither 0 nor N. */
function ceInputs({ N, H, V }: CeCase, seed: number): { h: tf.Tensor2D; w: tf.Tensor2D; targets: number[] } {
  const rng = new Random(seed);
  const h = tf.tensor2d(randn(rng, N * H), [N, H]);
  const w = tf.tensor2d(randn(rng, V * H, 0.5), [V, H]);
  const best = tf.tidy(() => tf.argMax(tf.matMul(h, w, false, true), -1).dataSync());
  const targets = Array.from({ length: N }, (_, n) => (n % 2 ? best[n] : rng.int(V)));
  return { h, w, targets };
}

function ours(c: CeCase, seed: number, mean = true) {
  const { h, w, targets } = ceInputs(c, seed);
  const opts = { ...c.opts, reduction: mean ? ('mean' as const) : ('sum' as const) };
  let numCorrect = -1;
  const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => {
    const out = cpuCrossEntropy(a as tf.Tensor2D, b as tf.Tensor2D, targets, opts);
    numCorrect = out.numCorrect;
    assert.equal(out.correct.dataSync()[0], out.numCorrect);
    return out.loss;
  })([h, w]);
  const result = { loss: value.dataSync()[0], numCorrect, dh: grads[0].dataSync(), dw: grads[1].dataSync() };
  tf.dispose([h, w, value, ...grads]);
  return result;
}

function reference(c: CeCase, seed: number, mean = true) {
  const { h, w, targets } = ceInputs(c, seed);
  const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => referenceLoss(a as tf.Tensor2D, b as tf.Tensor2D, targets, mean))([h, w]);
  const best = tf.tidy(() => tf.argMax(tf.matMul(h, w, false, true), -1).dataSync());
  const numCorrect = targets.filter((y, n) => best[n] === y).length;
  const result = { loss: value.dataSync()[0], numCorrect, dh: grads[0].dataSync(), dw: grads[1].dataSync() };
  tf.dispose([h, w, value, ...grads]);
  return result;
}

const CASES: CeCase[] = [
  { N: 7, H: 12, V: 203, opts: { tileRows: 8 } },              // 26 tiles in 16 slices, 3 left empty; N, V padded
  { N: 33, H: 64, V: 1000 },                                    // production tile, last tile partial
  { N: 5, H: 10, V: 77, opts: { tileRows: 4 } },               // H padded to 12 (a 1-vector tail)
  { N: 16, H: 32, V: 515, opts: { storeLimitBytes: 0 } },      // no store: the backward recomputes logits
];

describe('cpu kernels', () => {
  before(async () => {
    process.env.TSFT_CPU_THREADS = '2';
    await initDevice('cpu', { quiet: true });
  });
  after(async () => {
    delete process.env.TSFT_CPU_THREADS;
    await shutdownCpuKernels();
  });

  test('kernels-wasm.ts was built from this kernels.c (else: npm run build:wasm)', () => {
    const sha = createHash('sha256').update(fs.readFileSync(path.join(CPU_DIR, 'kernels.c'))).digest('hex');
    assert.equal(KERNELS_C_SHA256, sha);
  });

  test('the vectorised exp is within 1e-6 relative of Math.exp over [−87, 80]', () => {
    const k = cpuKernels(), n = 40000;
    const x = k.allocF32(n);
    for (let i = 0; i < n; i++) x[i] = -87 + (167 * i) / (n - 1);
    const want = Array.from(x, Math.exp);
    k.exports.exp_inplace(k.offsetOf(x), n);
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(x[i] - want[i]) / want[i]);
    assert.ok(worst < 1e-6, `max relative error ${worst}`);
    k.free(k.offsetOf(x));
  });

  test('the pool starts on 2 threads here and warms up', async () => {
    assert.equal(await prepareCpuKernels(), 2);
  });

  for (const [i, c] of CASES.entries()) {
    for (const mean of [true, false]) {
      test(`cross-entropy N=${c.N} H=${c.H} V=${c.V} ${JSON.stringify(c.opts ?? {})} ${mean ? 'mean' : 'sum'}: loss, correct, dHidden, dW as tfjs`, () => {
        const got = ours(c, 100 + i, mean), want = reference(c, 100 + i, mean);
        assert.ok(Math.abs(got.loss - want.loss) <= TOL * Math.abs(want.loss), `loss ${got.loss} vs ${want.loss}`);
        assert.equal(got.numCorrect, want.numCorrect);
        assert.ok(want.numCorrect > 0 && want.numCorrect < c.N);
        assert.ok(maxRelDiff(got.dh, want.dh) <= TOL, `dHidden rel err ${maxRelDiff(got.dh, want.dh)}`);
        assert.ok(maxRelDiff(got.dw, want.dw) <= TOL, `dW rel err ${maxRelDiff(got.dw, want.dw)}`);
      });
    }
  }

  test('cross-entropy: the logits store and recomputation give the same bits', () => {
    const c = { N: 9, H: 16, V: 300, opts: { tileRows: 16 } };
    const a = ours(c, 7), b = ours({ ...c, opts: { ...c.opts, storeLimitBytes: 0 } }, 7);
    assert.equal(a.loss, b.loss);
    assert.deepEqual(a.dh, b.dh);
    assert.deepEqual(a.dw, b.dw);
  });

  test('cross-entropy: gradients reach variables, also when another forward ran before the backward', () => {
    const c = { N: 6, H: 8, V: 50, opts: { tileRows: 8 } };
    const { h, w, targets } = ceInputs(c, 11);
    const other = ceInputs({ ...c, N: 3 }, 12);
    const wv = tf.variable(w, true, 'lm_head');
    const { value, grads } = tf.variableGrads(() => {
      const loss = cpuCrossEntropy(h, wv, targets).loss;
      cpuCrossEntropy(other.h, other.w, other.targets); // overwrites the workspace: the backward recomputes
      return loss;
    }, [wv]);
    const want = reference(c, 11);
    assert.ok(Math.abs(value.dataSync()[0] - want.loss) <= TOL * want.loss);
    assert.ok(maxRelDiff(grads.lm_head.dataSync(), want.dw) <= TOL);
    tf.dispose([h, w, wv, value, grads.lm_head, other.h, other.w]);
  });

  test('1 thread and 3 threads give the same bits (cross-entropy, AdamW, norm)', async () => {
    const run = () => {
      const ce = ours({ N: 12, H: 20, V: 999, opts: { tileRows: 8 } }, 5);
      const rng = new Random(6);
      const params = [40000, 17, 1000].map((n, i) => ({ data: randn(rng, n), grad: randn(rng, n), decay: i !== 1 }));
      const opt = new CpuAdamW({ weightDecay: 0.1 });
      const norms = [0, 1, 2].map(() => opt.step(params, { lr: 1e-2, maxGradNorm: 10 }).gradNorm);
      opt.dispose();
      return { ce, norms, params: params.map((p) => p.data) };
    };
    const threaded = { before: process.env.TSFT_CPU_THREADS };
    await shutdownCpuKernels();
    process.env.TSFT_CPU_THREADS = '3';
    assert.equal(await cpuKernels().whenReady(), 3);
    const three = run();
    await shutdownCpuKernels();
    process.env.TSFT_CPU_THREADS = '1';
    assert.equal(await cpuKernels().whenReady(), 1);
    const one = run();
    await shutdownCpuKernels();
    process.env.TSFT_CPU_THREADS = threaded.before;
    assert.deepEqual(three, one);
  });

  test('cross-entropy on the wasm backend (reads its heap directly) matches the cpu backend', async (t) => {
    const c = { N: 10, H: 24, V: 700 };
    const want = reference(c, 21);
    const skip = await startOrSkip('wasm');
    if (skip) return t.skip(skip);
    try {
      const got = ours(c, 21);
      assert.ok(Math.abs(got.loss - want.loss) <= TOL * want.loss);
      assert.ok(maxRelDiff(got.dh, want.dh) <= TOL);
      assert.ok(maxRelDiff(got.dw, want.dw) <= TOL);
    } finally {
      await initDevice('cpu', { quiet: true });
    }
  });

  test('cross-entropy rejects bad shapes and targets', () => {
    const h = tf.zeros([2, 4]) as tf.Tensor2D, w = tf.zeros([5, 4]) as tf.Tensor2D;
    assert.throws(() => cpuCrossEntropy(h, w, [0, 5]), /outside the vocabulary/);
    assert.throws(() => cpuCrossEntropy(h, w, [0]), /1 targets for 2 hidden rows/);
    assert.throws(() => cpuCrossEntropy(h, tf.zeros([5, 3]) as tf.Tensor2D, [0, 1]), /\[N, H\]/);
    tf.dispose([h, w]);
  });
});

/** torch.optim.AdamW step in f32 arithmetic, element by element (the order of _single_tensor_adam). */
function referenceAdamW(
  p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, t: number,
  o: { lr: number; b1: number; b2: number; eps: number; wd: number; decay: boolean; clip: number },
): void {
  const f = Math.fround;
  const dec = o.decay ? f(1 - o.lr * o.wd) : 1, w1 = f(1 - o.b1), w2 = f(1 - o.b2);
  const ss = f(o.lr / (1 - o.b1 ** t)), bc = f(Math.sqrt(1 - o.b2 ** t)), clip = f(o.clip);
  for (let i = 0; i < p.length; i++) {
    const gi = f(g[i] * clip);
    const pi = f(p[i] * dec);
    m[i] = f(m[i] + f(f(gi - m[i]) * w1));
    v[i] = f(f(v[i] * f(o.b2)) + f(f(w2 * gi) * gi));
    const den = f(f(f(Math.sqrt(v[i])) / bc) + f(o.eps));
    p[i] = f(pi - f(ss * f(m[i] / den)));
  }
}

describe('cpu AdamW', () => {
  before(async () => {
    await initDevice('cpu', { quiet: true });
  });
  after(async () => {
    await shutdownCpuKernels();
  });

  test('one step, worked out by hand', () => {
    // lr 0.1, wd 0.1, β (0.9, 0.999), eps 1e-8, t = 1: m̂ = g, √v̂ = |g|, so p ← p·(1 − lr·wd) − lr·sign(g)
    const opt = new CpuAdamW({ weightDecay: 0.1 });
    const decayed = { data: Float32Array.of(1, 1, -2, 0.5), grad: Float32Array.of(0.5, -2, 3, 0), decay: true };
    const plain = { data: Float32Array.of(1, 1), grad: Float32Array.of(0.5, -1e-3), decay: false };
    opt.step([decayed, plain], { lr: 0.1 });
    // (g = 0: m = v = 0, only the decay)
    const want = [0.99 - 0.1, 0.99 + 0.1, -1.98 - 0.1, 0.495];
    decayed.data.forEach((x, i) => assert.ok(Math.abs(x - want[i]) < 1e-6, `decayed[${i}] ${x} vs ${want[i]}`));
    // |g| = 1e-3 shows where eps goes: lr·|g|/(|g| + eps) = 0.0999990 (torch: added after √v̂); eps under the
    // root would give 0.0995, eps before the bias correction 0.0999684
    assert.ok(Math.abs(plain.data[0] - 0.9) < 1e-6, `${plain.data[0]}`);
    assert.ok(Math.abs(plain.data[1] - (1 + 0.1 * (1e-3 / (1e-3 + 1e-8)))) < 2e-7, `${plain.data[1]}`);
    const { expAvg, expAvgSq } = opt.state(0);
    assert.ok(Math.abs(expAvg[1] - -0.2) < 1e-7 && Math.abs(expAvgSq[1] - 0.004) < 1e-9);
    assert.equal(opt.stepCount, 1);
    opt.dispose();
  });

  test('five steps with clipping match torch\'s formula in f32 (sizes across blocks, with tails)', () => {
    const rng = new Random(3);
    const sizes = [40003, 5, 16384, 1];
    const cfg = { lr: 3e-3, b1: 0.8, b2: 0.95, eps: 1e-6, wd: 0.05 };
    const params: CpuAdamWParam[] = sizes.map((n, i) => ({ data: randn(rng, n), grad: new Float32Array(n), decay: i % 2 === 0 }));
    const ref = params.map((p) => ({ p: p.data.slice(), m: new Float32Array(p.data.length), v: new Float32Array(p.data.length) }));
    const opt = new CpuAdamW({ beta1: cfg.b1, beta2: cfg.b2, eps: cfg.eps, weightDecay: cfg.wd });
    for (let t = 1; t <= 5; t++) {
      for (const p of params) p.grad.set(randn(rng, p.grad.length, t));
      let sq = 0;
      for (const p of params) for (const g of p.grad) sq += g * g;
      const norm = Math.sqrt(sq), maxNorm = 40;
      const { gradNorm } = opt.step(params, { lr: cfg.lr, maxGradNorm: maxNorm });
      assert.ok(Math.abs(gradNorm! - norm) <= 1e-5 * norm, `norm ${gradNorm} vs ${norm}`);
      const clip = Math.min(1, maxNorm / (norm + 1e-6));
      params.forEach((p, i) => referenceAdamW(ref[i].p, p.grad, ref[i].m, ref[i].v, t, { ...cfg, decay: p.decay, clip }));
    }
    params.forEach((p, i) => {
      assert.ok(maxRelDiff(p.data, ref[i].p) <= 1e-6, `param ${i}: rel err ${maxRelDiff(p.data, ref[i].p)}`);
      assert.ok(maxRelDiff(opt.state(i).expAvgSq, ref[i].v) <= 1e-5, `v ${i}`);
    });
    opt.dispose();
  });

  test('arrays in the shared memory are updated in place; globalNorm', () => {
    const k = cpuKernels();
    const data = k.allocF32(100), grad = k.allocF32(100);
    data.fill(1);
    grad.fill(0.5);
    const opt = new CpuAdamW({ weightDecay: 0 });
    assert.ok(Math.abs(opt.globalNorm([grad, Float32Array.of(3, 4)]) - Math.sqrt(25 + 25)) < 1e-5);
    opt.step([{ data, grad, decay: true }], { lr: 0.1 });
    assert.ok(Math.abs(data[99] - 0.9) < 1e-6);
    opt.dispose();
  });

  for (const device of ['cpu', 'wasm'] as const) {
    test(`stepVariables on ${device}: variables updated as with flat arrays (in place and by assign)`, async (t) => {
      const skip = await startOrSkip(device);
      if (skip) return t.skip(skip);
      try {
        const rng = new Random(9);
        const a = randn(rng, 300), b = randn(rng, 7), ga = randn(rng, 300), gb = randn(rng, 7);
        const va = tf.variable(tf.tensor2d(a, [100, 3]), true, `a_${device}`);
        const base = tf.tensor1d(b);
        const vb = tf.variable(base, true, `b_${device}`); // shares base's storage: updated by assign
        const grads = [tf.tensor2d(ga, [100, 3]), tf.tensor1d(gb)];
        const opt = new CpuAdamW(), flat = new CpuAdamW();
        const arrays = [{ data: a.slice(), grad: ga, decay: true }, { data: b.slice(), grad: gb, decay: false }];
        for (let s = 0; s < 2; s++) {
          opt.stepVariables([{ variable: va, grad: grads[0], decay: true }, { variable: vb, grad: grads[1], decay: false }], { lr: 0.01 });
          flat.step(arrays, { lr: 0.01 });
        }
        assert.deepEqual(va.dataSync(), arrays[0].data);
        assert.deepEqual(vb.dataSync(), arrays[1].data);
        assert.deepEqual(base.dataSync(), b, 'a tensor sharing the variable\'s storage is left alone');
        opt.dispose();
        flat.dispose();
        tf.dispose([va, vb, base, ...grads]);
      } finally {
        await initDevice('cpu', { quiet: true });
      }
    });
  }
});

test('a process that used the worker pool exits without shutdownCpuKernels', () => {
  const script = `
    import { CpuAdamW, cpuKernels } from './src/backend/cpu';
    const threads = await cpuKernels().whenReady();
    new CpuAdamW().step([{ data: new Float32Array(50000), grad: new Float32Array(50000).fill(1), decay: true }], { lr: 1 });
    console.log('threads', threads);`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: path.join(CPU_DIR, '../../..'),
    env: { ...process.env, TSFT_CPU_THREADS: '2' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /threads 2/);
});

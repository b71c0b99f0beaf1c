// Fused kernels (src/backend/kernels): on webgpu (lavapipe here, the H100 on the GPU box) each gives what
// the tfjs cpu backend gives for the model's own math (src/model/qwen2.ts), forward and backward, on tiny
// shapes that still cross every tile, block and chunk edge: cross-entropy from hidden states (loss,
// token-accuracy count, dHidden, dW; several vocabulary chunks; both production tiles), the tiled matmul
// in all four layouts, RMSNorm, RoPE, SwiGLU, the global gradient norm with its clip coefficient, and
// AdamW over several parameter groups against torch's formula (the cpu fallback). Also: the fallbacks
// run on cpu, AdamW's in-place update leaves aliases alone and never serves a stale CPU copy, and nothing
// leaks. WebGPU without an adapter: a skip locally, a failure in CI.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import { initDevice, shutdownDevice } from '../src/backend/device';
import { adamwStepFused, globalGradNorm, type AdamWHyper, type AdamWSlot } from '../src/backend/kernels/adamw';
import { crossEntropyFromHidden, crossEntropyStock } from '../src/backend/kernels/cross-entropy';
import { bindGroupFor, constantUniform, gpuBufferOf, matMulTiled, parseTile, pipelineFor, recordDispatch, uninitialised, webgpuBackend, TILE_128, TILE_64, type MatmulTile } from '../src/backend/kernels/program';
import { rmsNormFused } from '../src/backend/kernels/rms-norm';
import { applyRopeFused } from '../src/backend/kernels/rope';
import { siluGateFused } from '../src/backend/kernels/swiglu';
import { applyRope, rmsNorm, ropeCosSin, siluGate } from '../src/model/qwen2';
import { lcgValues as values, onGpu } from './helpers';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');

/** fp32 agreement: max |got − want| ≤ TOL · max |want| over each output (scale-free). */
const TOL = 1e-5;

after(async () => {
  await shutdownDevice();
});

function assertClose(got: ArrayLike<number>[], want: ArrayLike<number>[], what: string, tol = TOL): void {
  assert.equal(got.length, want.length, `${what}: number of outputs`);
  got.forEach((g, k) => {
    const w = want[k];
    assert.equal(g.length, w.length, `${what}: output ${k} size`);
    let scale = 0, worst = 0, at = 0;
    for (let i = 0; i < w.length; i++) scale = Math.max(scale, Math.abs(w[i]));
    for (let i = 0; i < w.length; i++) {
      const d = Math.abs(g[i] - w[i]);
      if (!(d <= worst)) [worst, at] = [d, i];
    }
    if (!(worst <= tol * (scale || 1))) {
      assert.fail(`${what}: output ${k}[${at}] = ${g[at]}, cpu says ${w[at]} (max |diff| ${worst.toExponential(2)}, scale ${scale.toExponential(2)})`);
    }
  });
}

/** Runs `f` on cpu (the reference) and then on webgpu, and compares every output. */
async function vsCpu(t: TestContext, what: string, f: () => Promise<ArrayLike<number>[]>, tol = TOL): Promise<void> {
  await initDevice('cpu', { quiet: true });
  const want = await f();
  if (!(await onGpu(t))) return;
  const tensors = tf.memory().numTensors;
  const got = await f();
  assert.equal(tf.memory().numTensors, tensors, `${what}: tensors leaked on webgpu`);
  assertClose(got, want, what, tol);
}

/** Output and gradients of sum(out · r) for a fixed random r (so each element gets its own dy). */
async function forwardAndGrads(f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], seed: number): Promise<Float32Array[]> {
  const out = f(...xs);
  const r = tf.tensor(values(out.size, seed), out.shape);
  const grads = tf.grads((...ws: tf.Tensor[]) => tf.sum(tf.mul(f(...ws), r)))(xs);
  const res = [await out.data(), ...(await Promise.all(grads.map((g) => g.data())))] as Float32Array[];
  tf.dispose([out, r, ...grads]);
  return res;
}

// ---------------------------------------------------------------------------------------------------

describe('cross-entropy from hidden states', () => {
  const [N, H, V] = [7, 20, 150];
  const hidden = values(N * H, 11);
  const weight = values(V * H, 12);
  /** targets: rows 0, 2, 4, 6 take their argmax (so the accuracy count is 4), the rest a fixed token. */
  const targets = Int32Array.from({ length: N }, (_, i) => (i * 37 + 5) % V);
  {
    for (let i = 0; i < N; i += 2) {
      let best = -Infinity;
      for (let v = 0; v < V; v++) {
        let s = 0;
        for (let k = 0; k < H; k++) s += hidden[i * H + k] * weight[v * H + k];
        if (s > best) [best, targets[i]] = [s, v];
      }
    }
  }

  async function run(ours: boolean, opts: { tile?: MatmulTile; chunkSize?: number }): Promise<Float32Array[]> {
    const h = tf.tensor2d(hidden, [N, H]), w = tf.tensor2d(weight, [V, H]), t = tf.tensor1d(targets, 'int32');
    const tokenLoss = (a: tf.Tensor, b: tf.Tensor) => {
      if (!ours) return crossEntropyStock(a as tf.Tensor2D, b as tf.Tensor2D, t).tokenLoss;
      const { loss, correct } = crossEntropyFromHidden(a as tf.Tensor2D, b as tf.Tensor2D, t, { ...opts, reduction: 'none' });
      correct.dispose();
      return loss;
    };
    const res = await forwardAndGrads(tokenLoss, [h, w], 13);
    const { loss, correct } = ours ? crossEntropyFromHidden(h, w, t, opts) : tf.tidy(() => {
      const m = crossEntropyStock(h, w, t);
      return { loss: tf.mean(m.tokenLoss), correct: m.correct };
    });
    res.push((await loss.data()) as Float32Array, (await correct.data()) as Float32Array);
    tf.dispose([h, w, t, loss, correct]);
    return res;
  }

  const cases: [string, { tile?: MatmulTile; chunkSize?: number }][] = [
    ['default tile, 4 vocabulary chunks (the last partial)', { chunkSize: 40 }],
    ['128×128 tile (the H100 default), one chunk', { tile: TILE_128 }],
    ['16×32 tile of 4×8 threads, chunk 64', { tile: parseTile('16x32x4_4x8'), chunkSize: 64 }],
  ];
  for (const [name, opts] of cases) {
    test(`${name}: token losses, mean loss, correct count, dHidden, dW`, async (t) => {
      await initDevice('cpu', { quiet: true });
      const want = await run(false, opts);
      assert.equal(want[4][0], 4, 'the reference counts 4 rows whose argmax is the target');
      if (!(await onGpu(t))) return;
      const tensors = tf.memory().numTensors;
      const got = await run(true, opts);
      assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
      assert.equal(got[4][0], 4, 'correct count');
      assertClose(got.slice(0, 4), want.slice(0, 4), name);
    });
  }

  test('cpu fallback (the model loss, crossEntropyStock) runs forward and backward; bad shapes are refused', async () => {
    await initDevice('cpu', { quiet: true });
    const cpu = await run(true, {});
    assertClose(cpu.slice(0, 5), (await run(false, {})).slice(0, 5), 'cpu fallback', 1e-6);
    // the reference itself, against log-sum-exp − target logit in float64
    const exact = Array.from({ length: N }, (_, i) => {
      const logits = Array.from({ length: V }, (_, v) => hidden.subarray(i * H, i * H + H).reduce((a, x, k) => a + x * weight[v * H + k], 0));
      const m = Math.max(...logits);
      return m + Math.log(logits.reduce((a, x) => a + Math.exp(x - m), 0)) - logits[targets[i]];
    });
    assertClose([cpu[0]], [exact], 'token losses vs float64');
    const h = tf.zeros([2, 3]) as tf.Tensor2D;
    assert.throws(() => crossEntropyFromHidden(h, tf.zeros([5, 4]) as tf.Tensor2D, tf.tensor1d([0, 1], 'int32')), /shapes disagree/);
    assert.throws(() => crossEntropyFromHidden(h, tf.zeros([5, 3]) as tf.Tensor2D, tf.tensor1d([0, 1])), /int32/);
  });
});

describe('cross-entropy reference past 2^24 logits', () => {
  // tfjs-backend-webgpu's Gather (and its gradient) index through f32: one flat gather over [N·V] picks a
  // neighbouring logit once N·V > 2^24. crossEntropyStock gathers in row blocks; its dW must put the
  // target's -h/N on the target row (here row 110's target sits at an odd flat index above 2^24).
  test('crossEntropyStock on webgpu: dW at the target row of the last row (flat index 16,812,961)', async (t) => {
    if (!(await onGpu(t))) return;
    const [N, H, V] = [111, 8, 151936];
    const hv = values(N * H, 21), wv = values(V * H, 22).map((x) => x * 0.1);
    const tv = Int32Array.from({ length: N }, (_, i) => (i === N - 1 ? 100001 : i));
    // dW rows 100000..100002 in float64: Σ_n (softmax_n − onehot_n) h_n
    const want = new Float64Array(3 * H);
    for (let n = 0; n < N; n++) {
      const logit = (v: number) => { let z = 0; for (let k = 0; k < H; k++) z += hv[n * H + k] * wv[v * H + k]; return z; };
      let m = -Infinity, s = 0;
      for (let v = 0; v < V; v++) m = Math.max(m, logit(v));
      for (let v = 0; v < V; v++) s += Math.exp(logit(v) - m);
      for (let r = 0; r < 3; r++) {
        const g = Math.exp(logit(100000 + r) - m) / s - (tv[n] === 100000 + r ? 1 : 0);
        for (let k = 0; k < H; k++) want[r * H + k] += g * hv[n * H + k];
      }
    }
    const h = tf.tensor2d(hv, [N, H]), w = tf.tensor2d(wv, [V, H]), tg = tf.tensor1d(tv, 'int32');
    const [dw] = tf.grads((ww: tf.Tensor) => tf.sum(crossEntropyStock(h, ww as tf.Tensor2D, tg).tokenLoss))([w]);
    const rows = tf.slice(dw, [100000, 0], [3, H]);
    const got = await rows.data();
    tf.dispose([h, w, tg, dw, rows]);
    assertClose([got], [want], 'dW rows 100000..100002', 1e-4);
  });
});

describe('issuing own dispatches (program.ts)', () => {
  test('bind groups and uniform buffers are made once per pipeline + buffers / per content, and bind what they were given', async (t) => {
    if (!(await onGpu(t))) return;
    const device = webgpuBackend().device;
    const scale = {
      shaderKey: 'tsft_test_scale',
      getUserCode: () => `struct U { n : u32, k : u32, }
@group(0) @binding(0) var<storage, read> X : array<f32>;
@group(0) @binding(1) var<storage, read_write> Y : array<f32>;
@group(0) @binding(2) var<uniform> u : U;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid : vec3<u32>) {
  if (gid.x < u.n) { Y[gid.x] = X[gid.x] * f32(u.k); }
}`,
    };
    const pipeline = pipelineFor(device, scale);
    const u3 = constantUniform(device, Uint32Array.from([5, 3]));
    assert.equal(constantUniform(device, Uint32Array.from([5, 3])), u3, 'same words: same buffer');
    const u7 = constantUniform(device, Uint32Array.from([5, 7]));
    assert.notEqual(u7, u3, 'other words: another buffer');
    const a = tf.tensor1d([1, 2, 3, 4, 5]), b = tf.tensor1d([10, 20, 30, 40, 50]);
    const run = (x: tf.Tensor, u: GPUBuffer) => {
      const y = uninitialised([5]);
      const buffers = [gpuBufferOf(x), gpuBufferOf(y), u];
      assert.equal(bindGroupFor(device, pipeline, buffers), bindGroupFor(device, pipeline, buffers), 'same buffers: same bind group');
      recordDispatch([{ pipeline, buffers, workgroups: [1, 1, 1] }], [x, y]);
      return y;
    };
    const ys = [run(a, u3), run(b, u3), run(a, u7), run(b, u7)];
    assert.deepEqual(await Promise.all(ys.map(async (y) => Array.from(await y.data()))), [[3, 6, 9, 12, 15], [30, 60, 90, 120, 150], [7, 14, 21, 28, 35], [70, 140, 210, 280, 350]]);
    tf.dispose([a, b, ...ys]);
  });
});

describe('tiled matmul', () => {
  for (const tile of [TILE_64, TILE_128]) {
    for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]]) {
      test(`${tile.tileM}×${tile.tileN} tile, transposeA ${ta}, transposeB ${tb}: 67×29·29×131`, async (t) => {
        const [M, K, N] = [67, 29, 131];
        await vsCpu(t, 'matmul', async () => {
          const a = tf.tensor2d(values(M * K, 21), ta ? [K, M] : [M, K]);
          const b = tf.tensor2d(values(K * N, 22), tb ? [N, K] : [K, N]);
          const c = matMulTiled(a, b, ta, tb, tile);
          const out = [await c.data()];
          tf.dispose([a, b, c]);
          return out;
        });
      });
    }
  }
});

describe('RMSNorm, RoPE, SwiGLU', () => {
  const rmsCases: [string, number[]][] = [
    ['[3, 5, 40]', [3, 5, 40]],
    ['[70, 300] (rows over two weight-gradient blocks, width over a workgroup)', [70, 300]],
  ];
  for (const [name, shape] of rmsCases) {
    test(`rmsNormFused ${name}: y, dx, dweight`, async (t) => {
      const H = shape[shape.length - 1], n = shape.reduce((a, b) => a * b, 1);
      await vsCpu(t, `rmsnorm ${name}`, async () => {
        const onCpu = tf.getBackend() === 'cpu';
        const x = tf.tensor(values(n, 31, 2), shape), w = tf.tensor1d(values(H, 32));
        const f = (a: tf.Tensor, b: tf.Tensor) => (onCpu ? rmsNorm(a, b, 1e-6) : rmsNormFused(a, b, 1e-6));
        const out = await forwardAndGrads(f, [x, w], 33);
        tf.dispose([x, w]);
        return out;
      });
    });
  }

  for (const csBatch of [2, 1]) {
    test(`applyRopeFused [2, 3, 5, 8], cos/sin batch ${csBatch}: y, dx`, async (t) => {
      const [B, Hh, T, D] = [2, 3, 5, 8];
      const positions = Array.from({ length: csBatch }, (_, b) => Array.from({ length: T }, (_, i) => 3 * i + b * 7));
      await vsCpu(t, 'rope', async () => {
        const onCpu = tf.getBackend() === 'cpu';
        const { cos, sin } = ropeCosSin(positions, D, 10000);
        const x = tf.tensor4d(values(B * Hh * T * D, 41), [B, Hh, T, D]);
        const f = (a: tf.Tensor) => (onCpu ? applyRope(a as tf.Tensor4D, cos, sin) : applyRopeFused(a as tf.Tensor4D, cos, sin));
        const out = await forwardAndGrads(f, [x], 42);
        tf.dispose([x, cos, sin]);
        return out;
      });
    });
  }

  test('siluGateFused [7, 33] (gates up to ±12): y, dgate, dup', async (t) => {
    await vsCpu(t, 'swiglu', async () => {
      const onCpu = tf.getBackend() === 'cpu';
      const g = tf.tensor2d(values(7 * 33, 51, 12), [7, 33]), u = tf.tensor2d(values(7 * 33, 52), [7, 33]);
      const f = (a: tf.Tensor, b: tf.Tensor) => (onCpu ? siluGate(a as tf.Tensor2D, b as tf.Tensor2D) : siluGateFused(a, b));
      const out = await forwardAndGrads(f, [g, u], 53);
      tf.dispose([g, u]);
      return out;
    });
  });

  test('cpu fallbacks equal the model functions', async () => {
    await initDevice('cpu', { quiet: true });
    const x = tf.tensor(values(2 * 3 * 4 * 8, 61), [2, 3, 4, 8]) as tf.Tensor4D, w = tf.tensor1d(values(8, 62));
    const { cos, sin } = ropeCosSin([[0, 1, 2, 3], [4, 5, 6, 7]], 8, 10000);
    const pairs: [tf.Tensor, tf.Tensor][] = [
      [rmsNormFused(x, w, 1e-6), rmsNorm(x, w, 1e-6)],
      [applyRopeFused(x, cos, sin), applyRope(x, cos, sin)],
      [siluGateFused(x, x), tf.mul(tf.mul(x, tf.sigmoid(x)), x)],
    ];
    for (const [a, b] of pairs) assert.deepEqual(await a.data(), await b.data());
    assert.throws(() => rmsNormFused(x, tf.ones([7]), 1e-6), /does not match/);
    assert.throws(() => applyRopeFused(x, cos.slice([0, 0, 0, 0], [2, 1, 3, 8]) as tf.Tensor4D, sin), /cos\/sin/);
  });
});

describe('gradient norm and AdamW', () => {
  /** Parameter shapes: more than one group on any device (lavapipe: 3 per dispatch), sizes across blocks. */
  const SHAPES = [[50, 101], [7], [3, 4], [2049], [9, 9], [130, 33]];
  const DECAYS = [true, false, true, true, false, true];
  const HYPER = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

  /** Three steps with clipping at 0.5, new gradients each step; returns params, moments, norms, coefs. */
  async function train(): Promise<Float32Array[]> {
    const variable = (init: () => tf.Tensor) => tf.tidy(() => tf.variable(init()));
    const slots: AdamWSlot[] = SHAPES.map((shape, i) => ({
      param: variable(() => tf.tensor(values(shape.reduce((a, b) => a * b, 1), 70 + i), shape)),
      grad: tf.zeros(shape),
      expAvg: variable(() => tf.zeros(shape)),
      expAvgSq: variable(() => tf.zeros(shape)),
      decay: DECAYS[i],
    }));
    const out: Float32Array[] = [];
    for (let step = 1; step <= 3; step++) {
      for (const [i, s] of slots.entries()) {
        s.grad.dispose();
        s.grad = tf.tensor(values(s.param.size, 100 * step + i, 0.2), s.param.shape);
      }
      const { norm, clipCoef } = globalGradNorm(slots.map((s) => s.grad), 0.5);
      adamwStepFused(slots, { ...HYPER, step } as AdamWHyper, clipCoef);
      out.push((await norm.data()) as Float32Array, (await clipCoef.data()) as Float32Array);
      tf.dispose([norm, clipCoef]);
    }
    for (const s of slots) out.push((await s.param.data()) as Float32Array, (await s.expAvg.data()) as Float32Array, (await s.expAvgSq.data()) as Float32Array);
    tf.dispose(slots.flatMap((s) => [s.param, s.grad, s.expAvg, s.expAvgSq]));
    return out;
  }

  test('three clipped steps over 6 parameters (2+ dispatch groups): norms, clip coefficients, params, moments', async (t) => {
    await vsCpu(t, 'adamw', train);
  });

  test('globalGradNorm without maxNorm: coefficient 1; over a gradient of 10000', async (t) => {
    await vsCpu(t, 'grad norm', async () => {
      const gs = [tf.tensor1d(values(10000, 81)), tf.tensor2d(values(6, 82), [2, 3])];
      const { norm, clipCoef } = globalGradNorm(gs);
      const out = [await norm.data(), await clipCoef.data()];
      tf.dispose([...gs, norm, clipCoef]);
      assert.equal(out[1][0], 1);
      return out;
    });
  });

  test('in place on webgpu: an alias of a parameter keeps the old value, a read before the step is not served stale', async (t) => {
    if (!(await onGpu(t))) return;
    const p = tf.variable(tf.tensor1d([1, 2, 3, 4]));
    const alias = tf.reshape(p, [2, 2]);                                  // shares p's buffer
    const m = tf.variable(tf.zeros([4])), v = tf.variable(tf.zeros([4]));
    assert.deepEqual(Array.from(await p.data()), [1, 2, 3, 4]);           // caches a CPU copy
    const grad = tf.tensor1d([1, -1, 1, -1]);
    adamwStepFused([{ param: p, grad, expAvg: m, expAvgSq: v, decay: false }], { ...HYPER, weightDecay: 0, step: 1 });
    // step 1: m̂/(√v̂ + eps) = sign(g), so p moves by lr against the gradient
    const got = Array.from(await p.data());
    [1 - 3e-3, 2 + 3e-3, 3 - 3e-3, 4 + 3e-3].forEach((w, i) => assert.ok(Math.abs(got[i] - w) < 1e-6, `p[${i}] = ${got[i]}, expected ${w}`));
    assert.deepEqual(Array.from(await alias.data()), [1, 2, 3, 4]);
    assert.deepEqual(Array.from(await m.data()).map((x) => Math.round(x * 1e6) / 1e6), [0.1, -0.1, 0.1, -0.1]);
    tf.dispose([p, alias, m, v, grad]);
  });
});

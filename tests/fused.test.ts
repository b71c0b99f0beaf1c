// The per-backend dispatch of training's hot spots (src/backend/fused.ts): which kernel path each backend
// gets and how it is forced; the LM-head cross-entropy and AdamW (clip, NaN skip, checkpoint state) on the
// fast path equal the plain tfjs ops, on the wasm, cpu and webgpu backends (webgpu: lavapipe in CI;
// tests/kernels.test.ts checks the WGSL kernels themselves).

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import { initDevice, shutdownDevice, type DeviceName } from '../src/backend/device';
import { shutdownCpuKernels } from '../src/backend/cpu';
import { kernelPath, lmHeadCrossEntropy, setKernelPath } from '../src/backend/fused';
import { AdamW } from '../src/train/optimizer';
import { ConfigError } from '../src/errors';
import { Random } from '../src/utils/seed';
import { maxRelDiff, startOrSkip } from './helpers';

after(async () => {
  await shutdownCpuKernels();
  await shutdownDevice();
});

/** Run f with the kernel path forced (null: the backend's own), restoring the previous setting. */
function withPath<T>(path: 'ops' | null, f: () => T): T {
  const prev = setKernelPath(path);
  try {
    return f();
  } finally {
    setKernelPath(prev);
  }
}

function randn(rng: Random, shape: number[], scale = 1): tf.Tensor {
  return tf.tensor(rng.fillNormal(new Float32Array(shape.reduce((a, b) => a * b, 1)), 0, scale), shape);
}

describe('kernel path', () => {
  it('follows the backend; TSFT_KERNELS / setKernelPath force plain ops; impossible choices are ConfigErrors', async () => {
    await initDevice('wasm', { quiet: true });
    assert.equal(kernelPath(), 'cpu');
    assert.equal(withPath('ops', kernelPath), 'ops');
    const env = process.env.TSFT_KERNELS;
    try {
      process.env.TSFT_KERNELS = 'ops';
      assert.equal(kernelPath(), 'ops');
      process.env.TSFT_KERNELS = 'fast';
      assert.throws(kernelPath, (e: Error) => e instanceof ConfigError && /TSFT_KERNELS=fast/.test(e.message));
    } finally {
      if (env === undefined) delete process.env.TSFT_KERNELS;
      else process.env.TSFT_KERNELS = env;
    }
    const prev = setKernelPath('webgpu');
    try {
      assert.throws(kernelPath, (e: Error) => e instanceof ConfigError && /cannot run on the tfjs backend 'wasm'/.test(e.message));
    } finally {
      setKernelPath(prev);
    }
    assert.throws(() => setKernelPath('fast' as never), ConfigError);
  });
});

for (const device of ['wasm', 'cpu', 'webgpu'] as DeviceName[]) {
  describe(`fast path = tfjs ops on ${device}`, async () => {
    const skip = await startOrSkip(device);
    const fastPath = device === 'webgpu' ? 'webgpu' : 'cpu';
    it('lmHeadCrossEntropy: loss (mean and sum), correct count, dHidden, dW', { skip: skip ?? false }, async () => {
      await initDevice(device, { quiet: true });
      assert.equal(kernelPath(), fastPath);
      const rng = new Random(7);
      const N = 37, H = 24, V = 3001;
      const h = randn(rng, [N, H]) as tf.Tensor2D, w = randn(rng, [V, H], 0.3) as tf.Tensor2D;
      // half the targets are the argmax (so the correct count is neither 0 nor N)
      const argmax = tf.argMax(tf.matMul(h, w, false, true), -1);
      const best = await argmax.data();
      argmax.dispose();
      const targets = Array.from({ length: N }, (_, n) => (n % 2 ? best[n] : (n * 997) % V));
      for (const reduction of ['mean', 'sum'] as const) {
        // tensors on the forced path, read back after it is restored (webgpu reads asynchronously)
        const run = async (forced: 'ops' | null) => {
          const { out, dh, dw } = withPath(forced, () => {
            const g = tf.grads((a: tf.Tensor, b: tf.Tensor) => lmHeadCrossEntropy(a as tf.Tensor2D, b as tf.Tensor2D, targets, reduction).loss);
            const [gh, gw] = g([h, w]);
            return { out: lmHeadCrossEntropy(h, w, targets, reduction), dh: gh, dw: gw };
          });
          const r = { loss: (await out.loss.data())[0], correct: (await out.correct.data())[0], dh: await dh.data(), dw: await dw.data() };
          tf.dispose([out.loss, out.correct, dh, dw]);
          return r;
        };
        const fast = await run(null), ops = await run('ops');
        assert.ok(Math.abs(fast.loss - ops.loss) <= 1e-5 * Math.abs(ops.loss), `${reduction} loss ${fast.loss} vs ${ops.loss}`);
        assert.equal(fast.correct, ops.correct);
        assert.ok(fast.correct > 0 && fast.correct < N);
        assert.ok(maxRelDiff(fast.dh, ops.dh) <= 1e-5, `${reduction} dHidden`);
        assert.ok(maxRelDiff(fast.dw, ops.dw) <= 1e-5, `${reduction} dW`);
      }
      tf.dispose([h, w]);
    });

    it('AdamW.clipAndStep: the same parameters over steps with clipping, a NaN norm skipped, state round trip', { skip: skip ?? false }, async () => {
      await initDevice(device, { quiet: true });
      const shapes: [string, number[]][] = [['model.layers.0.mlp.up_proj.weight', [17, 9]], ['model.norm.weight', [9]], ['model.embed_tokens.weight', [40, 9]]];
      const opts = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
      const makeParams = () => new Map(shapes.map(([n, s]) => [n, tf.variable(randn(new Random(n.length), s), true)]));
      const grad = (step: number, name: string, shape: number[]) => randn(new Random(step * 100 + name.length), shape, step === 2 ? 5 : 0.1);
      const run = async (path: 'cpu' | 'webgpu' | 'ops') => {
        const params = makeParams();
        const opt = new AdamW(params, opts, path);
        assert.equal(opt.path, path);
        const norms: number[] = [];
        for (let step = 1; step <= 4; step++) {
          const grads = new Map(shapes.map(([n, s]) => [n, step === 3 && n === 'model.norm.weight' ? tf.fill(s, NaN) : grad(step, n, s)]));
          norms.push(await opt.clipAndStep(grads, 1e-2 * step, 1.0));
          tf.dispose([...grads.values()]);
        }
        const state = await opt.stateTensors();
        const values = await Promise.all([...params.values()].map(async (p) => ((await p.data()) as Float32Array).slice()));
        // a fresh optimizer with the saved state continues exactly as this one
        const resumed = new AdamW(params, opts, path);
        assert.deepEqual(resumed.loadState(state, opt.stepCount), []);
        const grads5 = new Map(shapes.map(([n, s]) => [n, grad(5, n, s)]));
        const grads5b = new Map(shapes.map(([n, s]) => [n, grad(5, n, s)]));
        const before = await Promise.all([...params.values()].map(async (p) => ((await p.data()) as Float32Array).slice()));
        await resumed.clipAndStep(grads5, 1e-2, 1.0);
        const afterResumed = await Promise.all([...params.values()].map(async (p) => ((await p.data()) as Float32Array).slice()));
        [...params.values()].forEach((p, i) => p.assign(tf.tensor(before[i], p.shape)));
        await opt.clipAndStep(grads5b, 1e-2, 1.0);
        const afterOriginal = await Promise.all([...params.values()].map(async (p) => ((await p.data()) as Float32Array).slice()));
        afterResumed.forEach((a, i) => assert.ok(maxRelDiff(a, afterOriginal[i]) <= 1e-7, `resumed step differs for ${shapes[i][0]}`));
        tf.dispose([...grads5.values(), ...grads5b.values(), ...params.values()]);
        const stepCount = opt.stepCount;
        opt.dispose();
        resumed.dispose();
        return { norms, values, state, stepCount };
      };
      const fast = await run(fastPath), ops = await run('ops');
      assert.ok(Number.isNaN(fast.norms[2]) && Number.isNaN(ops.norms[2]), 'step 3 has a NaN norm');
      assert.equal(fast.stepCount, 4);     // 5 calls, one skipped
      assert.equal(ops.stepCount, 4);
      fast.norms.forEach((n, i) => i !== 2 && assert.ok(Math.abs(n - ops.norms[i]) <= 1e-5 * ops.norms[i], `norm ${i}: ${n} vs ${ops.norms[i]}`));
      assert.ok(fast.norms[1] > 1, 'step 2 is clipped');
      fast.values.forEach((v, i) => assert.ok(maxRelDiff(v, ops.values[i]) <= 1e-5, `parameter ${shapes[i][0]}`));
      for (const [k, v] of ops.state) assert.ok(maxRelDiff(fast.state.get(k)!.data, v.data) <= 1e-5, `state ${k}`);
    });
  });
}

// LoRA's fused term (src/backend/kernels/lora-linear.ts) against tfjs ops on the cpu backend: the value
// base + s·dropout(x)·Aᵀ·Bᵀ and the gradients w.r.t. x, base, A and B, with and without dropout (the
// reference applies the mask dropoutFused draws on the GPU for the same seed), at ranks 8, 16, 32 (the
// largest fused) and 40 (tfjs ops), at sizes off the kernels' workgroup multiples. Runs on lavapipe here and in CI.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initDevice, shutdownDevice } from '../src/backend/device';
import { dropoutFused } from '../src/backend/kernels/dropout';
import { loraLinear } from '../src/backend/kernels/lora-linear';
import { assertClose, lcgValues, onGpu } from './helpers';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');
after(async () => { await shutdownDevice(); });

interface Case { N: number; K: number; O: number; R: number; rate: number }
type Values = Record<'y' | 'dx' | 'dbase' | 'dA' | 'dB', Float32Array>;

/** The value and the four gradients of sum(loraLinear(...)·C) for a fixed cotangent C. */
async function run(c: Case, f: (x: tf.Tensor2D, base: tf.Tensor2D, A: tf.Tensor2D, B: tf.Tensor2D) => tf.Tensor2D): Promise<Values> {
  const x = tf.tensor2d(lcgValues(c.N * c.K, 1), [c.N, c.K]);
  const base = tf.tensor2d(lcgValues(c.N * c.O, 2), [c.N, c.O]);
  const A = tf.tensor2d(lcgValues(c.R * c.K, 3, 0.3), [c.R, c.K]);
  const B = tf.tensor2d(lcgValues(c.O * c.R, 4, 0.3), [c.O, c.R]);
  const C = tf.tensor2d(lcgValues(c.N * c.O, 5), [c.N, c.O]);
  const y = f(x, base, A, B);
  const g = tf.grads((a: tf.Tensor, b: tf.Tensor, p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.mul(f(a as tf.Tensor2D, b as tf.Tensor2D, p as tf.Tensor2D, q as tf.Tensor2D), C)))([x, base, A, B]);
  const [yv, dx, dbase, dA, dB] = await Promise.all([y, ...g].map((t) => t.data() as Promise<Float32Array>));
  tf.dispose([x, base, A, B, C, y, ...g]);
  return { y: yv, dx, dbase, dA, dB };
}

for (const c of [
  { N: 37, K: 70, O: 45, R: 8, rate: 0 },
  { N: 64, K: 96, O: 130, R: 8, rate: 0.25 },
  { N: 19, K: 260, O: 33, R: 16, rate: 0.1 },
  { N: 20, K: 40, O: 24, R: 32, rate: 0 },
  { N: 9, K: 24, O: 16, R: 40, rate: 0.5 },
] as Case[]) {
  test(`loraLinear on webgpu = tfjs ops on cpu: N ${c.N}, in ${c.K}, out ${c.O}, r ${c.R}, dropout ${c.rate}`, async (t) => {
    if (!(await onGpu(t))) return;
    const scale = 32 / c.R, seed = 777;
    // the mask dropoutFused draws on the GPU for this seed (the fused kernels hash the same way)
    const mask = c.rate > 0 ? await dropoutFused(tf.ones([c.N, c.K]), c.rate, seed).data() : null;
    const got = await run(c, (x, base, A, B) => loraLinear(x, base, A, B, scale, c.rate > 0 ? { rate: c.rate, seed } : null));
    if (mask) {
      const again = await run(c, (x, base, A, B) => loraLinear(x, base, A, B, scale, { rate: c.rate, seed }));
      assert.deepEqual(again.y, got.y, 'same seed, same mask, same value');
      const other = await run(c, (x, base, A, B) => loraLinear(x, base, A, B, scale, { rate: c.rate, seed: seed + 1 }));
      assert.notDeepEqual(other.y, got.y, 'another seed, another mask');
    }
    await initDevice('cpu', { quiet: true });
    const m = mask ? tf.tensor2d(mask, [c.N, c.K]) : null;
    const want = await run(c, (x, base, A, B) => {
      const xd = m ? tf.mul(x, m) : x;
      return tf.add(base, tf.mul(tf.matMul(tf.matMul(xd, A, false, true), B, false, true), scale)) as tf.Tensor2D;
    });
    m?.dispose();
    for (const k of ['y', 'dx', 'dbase', 'dA', 'dB'] as const) assertClose(got[k], want[k], `${k}`, 1e-5);
  });
}

test('loraLinear: shapes that do not fit are refused, naming them', () => {
  const x = tf.zeros([4, 8]) as tf.Tensor2D, base = tf.zeros([4, 6]) as tf.Tensor2D;
  assert.throws(() => loraLinear(x, base, tf.zeros([2, 7]) as tf.Tensor2D, tf.zeros([6, 2]) as tf.Tensor2D, 1), /A \[2,7\]/);
  tf.dispose([x, base]);
});

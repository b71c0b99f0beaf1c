// GPU dropout (src/backend/kernels/dropout.ts): the mask comes from a hash of (seed, index), so the same
// seed gives the same mask (what gradient checkpointing's recomputation needs) and the backward pass
// regenerates it; the kept fraction matches 1 − rate; kept values are scaled by 1 / (1 − rate).
// Runs on lavapipe here and in CI.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { shutdownDevice } from '../src/backend/device';
import { dropoutFused } from '../src/backend/kernels/dropout';
import { startOrSkip } from './helpers';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');
let skip: string | null = null;
before(async () => { skip = await startOrSkip('webgpu'); });
after(async () => { await shutdownDevice(); });

test('dropout on webgpu: kept fraction, scale, same seed same mask, gradient through the same mask', async (t) => {
  if (skip) return t.skip(skip);
  const n = 1 << 20, rate = 0.25;
  const x = tf.ones([1024, 1024]);
  const y = await dropoutFused(x, rate, 1234).data();
  let kept = 0;
  for (const v of y) {
    if (v !== 0) {
      kept++;
      assert.ok(Math.abs(v - 1 / (1 - rate)) < 1e-6, `kept value ${v}`);
    }
  }
  assert.ok(Math.abs(kept / n - (1 - rate)) < 0.005, `kept fraction ${kept / n}`);
  assert.deepEqual(await dropoutFused(x, rate, 1234).data(), y, 'same seed, same mask');
  const other = await dropoutFused(x, rate, 1235).data();
  let same = 0;
  for (let i = 0; i < n; i++) if ((other[i] === 0) === (y[i] === 0)) same++;
  assert.ok(same / n < 0.7, `another seed draws another mask (agreement ${same / n}, independent ≈ 0.625)`);
  // neighbours are not correlated (a bad hash of the index would stripe)
  let pairs = 0;
  for (let i = 0; i + 1 < n; i += 2) if (y[i] === 0 && y[i + 1] === 0) pairs++;
  assert.ok(Math.abs(pairs / (n / 2) - rate * rate) < 0.01, `both of a pair dropped: ${pairs / (n / 2)} (independent: ${rate * rate})`);
  const dx = await tf.grad((a: tf.Tensor) => tf.sum(tf.mul(dropoutFused(a, rate, 1234), 3)))(x).data();
  for (let i = 0; i < n; i += 997) assert.ok(Math.abs(dx[i] - y[i] * 3) < 1e-5, `gradient at ${i}: ${dx[i]} vs ${y[i] * 3}`);
  assert.equal(dropoutFused(x, 0, 1), x, 'rate 0 is the identity');
  assert.throws(() => dropoutFused(x, 1, 1), /rate must be in \[0, 1\)/);
  x.dispose();
});

// Cross-entropy over logits and the f16 LM-head loss (src/backend/kernels/cross-entropy.ts, issues 7 and 8).
//
// crossEntropyLogits on webgpu (lavapipe in CI, the H100 on the GPU box) against its tfjs-op fallback on
// the cpu backend (itself checked against float64): token losses, mean / sum, the correct count and
// dLogits (of the mean, of 3·sum, of per-row weights), with ignore_index rows, on vocabularies that are a
// multiple of 4 (vec4 rows) and that are not (element by element), none a multiple of the 256-thread
// workgroup. The statistics over rows split into 1–7 slices and the gradient at 1–8 units per thread agree
// (argmax ties across slices go to the lowest column). The f16 gradient kernel against the
// f32 one rounded to f16, also written into a bigger tensor at a row offset. crossEntropyFromHiddenF16
// (lavapipe: the SIMT f16 matmul; H100: subgroup matrices) against the fp32 loss with f16 tolerances:
// loss, correct, dHidden, dW over several token chunks, with the caller's f16 weight copy, without dW
// (weightGrad false), and without a tape; lmHeadCrossEntropy takes it under computeDtype 'float16'.
//
//   npx tsx --test tests/cross-entropy.test.ts
//   GPU box: ../shared/gpu/pack.sh tests/cross-entropy.test.ts; CI=1 node --test .gpu/cross-entropy.test.mjs

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import { initDevice, shutdownDevice } from '../src/backend/device';
import { lmHeadCrossEntropy } from '../src/backend/fused';
import {
  crossEntropyFromHidden, crossEntropyFromHiddenF16, crossEntropyLogits, crossEntropyStock, logitsGrad, logitsStats, planF16,
} from '../src/backend/kernels/cross-entropy';
import { f16BitsToF32, f32ToF16Bits, fromHalfAsync, matmulF16Path, toHalf } from '../src/backend/kernels/matmul-f16';
import { withComputeDtype } from '../src/backend/precision';
import { assertClose, lcgValues as values, onGpu } from './helpers';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');

after(async () => {
  await shutdownDevice();
});

const read = async (t: tf.Tensor) => Float32Array.from(await t.data());

// ---------------------------------------------------------------------------------------------------

/** Labels of N rows over V: -100 on rows 1 and 5, the row's argmax on rows 0, 3, 6, …, else a fixed token. */
function makeLabels(logits: Float32Array, N: number, V: number): Int32Array {
  return Int32Array.from({ length: N }, (_, i) => {
    if (i === 1 || i === 5) return -100;
    if (i % 3 === 0) {
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[i * V + v] > logits[i * V + best]) best = v;
      return best;
    }
    return (i * 37 + 5) % V;
  });
}

describe('crossEntropyLogits', () => {
  const N = 11;
  // 1000: vec4 rows; 5004: vec4 rows long enough for the kernels' unrolled loop (4 loads of 256 threads);
  // 998: even, element by element; 997: odd
  for (const V of [1000, 5004, 998, 997]) {
    const x = values(N * V, V, 4);
    const labels = makeLabels(x, N, V);

    /** [token losses, mean loss, sum loss, correct, dLogits of mean, dLogits of Σ r·token loss, dLogits of 3·sum] */
    async function run(): Promise<Float32Array[]> {
      const logits = tf.tensor2d(x, [N, V]), lab = tf.tensor1d(labels, 'int32');
      const r = tf.tensor1d(values(N, 5));
      const none = crossEntropyLogits(logits, lab, 'none');
      const mean = crossEntropyLogits(logits, lab, 'mean');
      const sum = crossEntropyLogits(logits, lab, 'sum');
      const [gMean] = tf.grads((a: tf.Tensor) => crossEntropyLogits(a as tf.Tensor2D, lab).loss)([logits]);
      const [gRows] = tf.grads((a: tf.Tensor) => tf.sum(tf.mul(crossEntropyLogits(a as tf.Tensor2D, lab, 'none').loss, r)))([logits]);
      const [gSum] = tf.grads((a: tf.Tensor) => tf.mul(crossEntropyLogits(a as tf.Tensor2D, lab, 'sum').loss, 3))([logits]);
      assert.deepEqual([none.loss.shape, mean.loss.shape, sum.loss.shape, mean.correct.shape], [[N], [], [], []], 'shapes');
      const out = [await read(none.loss), await read(mean.loss), await read(sum.loss), await read(mean.correct), await read(gMean), await read(gRows), await read(gSum)];
      tf.dispose([logits, lab, r, none.loss, none.correct, mean.loss, mean.correct, sum.loss, sum.correct, gMean, gRows, gSum]);
      return out;
    }

    test(`V = ${V}: token losses, mean (labelled rows only), sum, correct, dLogits; ignore_index rows`, async (t) => {
      await initDevice('cpu', { quiet: true });
      const want = await run();
      // the fallback against float64
      const lse = Array.from({ length: N }, (_, i) => {
        const row = Array.from(x.subarray(i * V, i * V + V));
        const m = Math.max(...row);
        return m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
      });
      const exact = lse.map((l, i) => (labels[i] === -100 ? 0 : l - x[i * V + labels[i]]));
      assertClose(want[0], exact, 'cpu token losses vs float64', 1e-6);
      const counted = labels.filter((l) => l !== -100).length;
      assert.ok(Math.abs(want[1][0] - exact.reduce((a, b) => a + b) / counted) < 1e-5, 'cpu mean is over the labelled rows');
      assert.equal(want[3][0], 4, 'rows 0, 3, 6, 9 take their argmax');
      const g = Float64Array.from({ length: N * V }, (_, e) => {
        const i = Math.floor(e / V), v = e % V;
        return labels[i] === -100 ? 0 : (Math.exp(x[e] - lse[i]) - (v === labels[i] ? 1 : 0)) / counted;
      });
      assertClose(want[4], g, 'cpu dLogits of the mean vs float64', 1e-5);
      assertClose(want[6], g.map((v) => 3 * counted * v), 'cpu dLogits of 3·sum vs float64', 1e-5);
      if (!(await onGpu(t))) return;
      const tensors = tf.memory().numTensors;
      const got = await run();
      assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
      assert.equal(got[3][0], want[3][0], 'correct count');
      ['token losses', 'mean', 'sum'].forEach((what, k) => assertClose(got[k], want[k], what, 1e-5));
      assertClose(got[4], want[4], 'dLogits (mean)', 1e-5);
      assertClose(got[5], want[5], 'dLogits (per-row upstream gradients)', 1e-5);
      assertClose(got[6], want[6], 'dLogits (3·sum: one upstream gradient)', 1e-5);
      for (const i of [1, 5]) assert.ok(got[5].subarray(i * V, i * V + V).every((v) => v === 0), `ignored row ${i} has zero gradient`);
    });
  }

  test('bad inputs are refused', async () => {
    await initDevice('cpu', { quiet: true });
    assert.throws(() => crossEntropyLogits(tf.zeros([2, 3]) as tf.Tensor2D, tf.tensor1d([0, 1, 2], 'int32')), /logits \[N, V\] and labels \[N\]/);
    assert.throws(() => crossEntropyLogits(tf.zeros([2, 3]) as tf.Tensor2D, tf.tensor1d([0, 1])), /int32/);
  });
});

describe('the logits kernels\' work split', () => {
  for (const V of [5004, 998, 997]) {
    test(`V = ${V}: statistics over 1, 2, 3, 7 slices per row and gradients at 1, 3, 8 units per thread agree; argmax ties go to the lowest column`, async (t) => {
      if (!(await onGpu(t))) return;
      const N = 7;
      const x = values(N * V, 11 * V, 4);
      // row 2: constant (every column ties); row 4: its maximum twice, in the first and the last slice
      x.fill(0.5, 2 * V, 3 * V);
      x[4 * V + 3] = 9;
      x[4 * V + V - 2] = 9;
      const labels = Int32Array.from([7 % V, -100, 0, 3, V - 2, 11, 12]);
      const logits = tf.tensor2d(x, [N, V]), lab = tf.tensor1d(labels, 'int32'), dy = tf.tensor1d(values(N, 9));
      const stats = await Promise.all([1, 2, 3, 7].map(async (split) => {
        const s = logitsStats(logits, lab, 0, split);
        const v = await read(s);
        s.dispose();
        return v;
      }));
      for (const s of stats.slice(1)) {
        assertClose(s.subarray(0, 2 * N), stats[0].subarray(0, 2 * N), 'loss and lse', 1e-6);
        assert.deepEqual(Array.from(s.subarray(2 * N)), Array.from(stats[0].subarray(2 * N)), 'hits and counted');
      }
      assert.deepEqual(Array.from(stats[0].subarray(2 * N, 3 * N)), [0, 0, 1, 0, 0, 0, 0], 'ties: column 0 of the constant row, column 3 (not V − 2) of row 4');
      assert.ok(Math.abs(stats[0][N + 2] - (0.5 + Math.log(V))) < 1e-5, 'lse of the constant row');
      const s = logitsStats(logits, lab);
      const grads = await Promise.all([1, 3, 8].map(async (perThread) => {
        const g = logitsGrad(logits, lab, s, dy, { perThread }) as tf.Tensor;
        const v = await read(g);
        g.dispose();
        return v;
      }));
      for (const g of grads.slice(1)) assert.deepEqual(g, grads[0], 'the same gradient');
      assert.ok(grads[0].subarray(V, 2 * V).every((v) => v === 0), 'ignored row');
      tf.dispose([logits, lab, dy, s]);
    });
  }
});

describe('logitsGrad in f16', () => {
  for (const V of [1000, 998]) {
    test(`V = ${V}: packed halves = the f32 gradient rounded to f16; written at a row offset of a bigger tensor`, async (t) => {
      if (!(await onGpu(t))) return;
      const N = 6, scale = 2 ** 15;
      const x = values(N * V, 3 * V, 6);
      const labels = makeLabels(x, N, V);
      const logits = tf.tensor2d(x, [N, V]), lab = tf.tensor1d(labels, 'int32');
      const stats = logitsStats(logits, lab);
      const g32 = logitsGrad(logits, lab, stats, scale) as tf.Tensor2D;
      const g16 = logitsGrad(logits, lab, stats, scale, { dtype: 'float16' });
      assert.ok(!(g16 instanceof tf.Tensor));
      // rows 2.. of the logits written as rows 5.. of a [5 + N − 2, V] half tensor
      const big = toHalf(tf.fill([5 + N - 2, V], 7));
      const rows = tf.slice(logits, [2, 0], [N - 2, V]) as tf.Tensor2D;
      const stats2 = logitsStats(rows, lab, 2);
      logitsGrad(rows, lab, stats2, scale, { dtype: 'float16', labelOff: 2, into: big.packed, rowOffset: 5 });
      const want = await read(g32), got = await read(await fromHalfAsync(g16)), gotBig = await read(await fromHalfAsync(big));
      for (let i = 0; i < want.length; i++) {
        const r = f16BitsToF32(f32ToF16Bits(want[i]));
        // the GPU's f32 → f16 conversion may flush subnormals (below 2^-14) to zero
        assert.ok(got[i] === r || (Math.abs(r) < 2 ** -14 && Math.abs(got[i]) < 2 ** -14), `[${i}] = ${got[i]}, want ${r} (f32 ${want[i]})`);
        const row = Math.floor(i / V);
        if (row >= 2) assert.equal(gotBig[(row + 3) * V + (i % V)], got[i], `offset write [${i}]`);
      }
      assert.ok(gotBig.subarray(0, 5 * V).every((v) => v === 7), 'rows before the offset untouched');
      assert.ok(want.some((v) => Math.abs(v) > 1000), 'the gradient is scaled');
      tf.dispose([logits, lab, stats, g32, rows, stats2]);
      g16.dispose();
      big.dispose();
    });
  }
});

// ---------------------------------------------------------------------------------------------------

describe('crossEntropyFromHiddenF16 (mixed precision LM head)', () => {
  const [N, H, V] = [56, 32, 1000];
  const hv = values(N * H, 31), wv = values(V * H, 32, 0.5);
  const targets = Int32Array.from({ length: N }, (_, i) => (i === 7 || i === 30 ? -100 : (i * 131 + 3) % V));
  // a budget of 160 kB: logits chunks of 16 rows, gradient chunks of 48 tokens (two, the last of 8 rows)
  const memoryBytes = 160_000;

  test('the chunk plan', () => {
    assert.deepEqual(planF16(N, V, memoryBytes), { rows: 16, tokens: 48 });
    assert.deepEqual(planF16(N, V, memoryBytes, false), { rows: 16, tokens: 16 });
    assert.deepEqual(planF16(2048, 151936), { rows: 384, tokens: 2304 });   // one gradient chunk of all 2048 tokens
    assert.deepEqual(planF16(10, 151936), { rows: 10, tokens: 10 });
  });

  type Run = { loss: number; correct: number; dh: Float32Array; dw?: Float32Array };

  /** loss, correct, dH (and dW) of `ce`, the reduction's loss differentiated. */
  async function run(ce: (h: tf.Tensor2D, w: tf.Tensor2D, t: tf.Tensor1D) => { loss: tf.Tensor; correct: tf.Scalar }, withDw = true): Promise<Run> {
    const h = tf.tensor2d(hv, [N, H]), w = tf.tensor2d(wv, [V, H]), t = tf.tensor1d(targets, 'int32');
    const out = ce(h, w, t);
    const grads = withDw
      ? tf.grads((a: tf.Tensor, b: tf.Tensor) => ce(a as tf.Tensor2D, b as tf.Tensor2D, t).loss)([h, w])
      : tf.grads((a: tf.Tensor) => ce(a as tf.Tensor2D, w, t).loss)([h]);
    const r: Run = { loss: (await read(out.loss))[0], correct: (await read(out.correct))[0], dh: await read(grads[0]), dw: withDw ? await read(grads[1]) : undefined };
    tf.dispose([h, w, t, out.loss, out.correct, ...grads]);
    return r;
  }

  /** The fp32 reference (tfjs cpu, plain ops), ignore_index rows left out and the mean over the rest. */
  async function reference(reduction: 'mean' | 'sum'): Promise<Run> {
    await initDevice('cpu', { quiet: true });
    const keep = [...targets.keys()].filter((i) => targets[i] !== -100);
    return run((h, w) => tf.tidy(() => {
      const rows = tf.gather(h, keep) as tf.Tensor2D;
      const { tokenLoss, correct } = crossEntropyStock(rows, w, tf.tensor1d(keep.map((i) => targets[i]), 'int32'));
      return { loss: reduction === 'mean' ? tf.mean(tokenLoss) : tf.sum(tokenLoss), correct };
    }));
  }

  /** f16 agreement: logits carry f16 rounding of h and W (~2^-11 relative), G is f16. */
  function assertF16(got: Run, want: Run, what: string): void {
    assert.ok(Math.abs(got.loss - want.loss) <= 2e-3 * Math.abs(want.loss), `${what}: loss ${got.loss} vs ${want.loss}`);
    assert.ok(Math.abs(got.correct - want.correct) <= 1, `${what}: correct ${got.correct} vs ${want.correct}`);
    assertClose(got.dh, want.dh, `${what}: dHidden`, 1e-2);
    if (got.dw) assertClose(got.dw, want.dw!, `${what}: dW`, 1e-2);
  }

  for (const reduction of ['mean', 'sum'] as const) {
    test(`${reduction}: loss, correct, dHidden, dW over 2 gradient chunks and 4 logits chunks, vs fp32`, async (t) => {
      const want = await reference(reduction);
      if (!(await onGpu(t))) return;
      t.diagnostic(`f16 matmul path: ${matmulF16Path()}`);
      const tensors = tf.memory().numTensors;
      const got = await run((h, w, tg) => crossEntropyFromHiddenF16(h, w, tg, { reduction, memoryBytes }));
      assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
      assertF16(got, want, reduction);
      // one chunk (the default budget) gives the same within f16 rounding
      const one = await run((h, w, tg) => crossEntropyFromHiddenF16(h, w, tg, { reduction }));
      assertF16(one, want, `${reduction}, one chunk`);
    });
  }

  test('the caller\'s f16 weight copy; weightGrad false (no dW: asking for it fails); no tape: the same loss', async (t) => {
    const want = await reference('mean');
    if (!(await onGpu(t))) return;
    const w = tf.tensor2d(wv, [V, H]);
    const w16 = toHalf(w);
    const tensors = tf.memory().numTensors;
    const withHalf = await run((h, ww, tg) => crossEntropyFromHiddenF16(h, ww, tg, { weightHalf: w16, memoryBytes }));
    assertF16(withHalf, want, 'weightHalf');
    const frozen = await run((h, ww, tg) => crossEntropyFromHiddenF16(h, ww, tg, { weightHalf: w16, weightGrad: false, memoryBytes }), false);
    assertF16(frozen, want, 'weightGrad false');
    assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
    // (tfjs keeps the tape's saved tensors when tf.grads throws: checked after the leak count)
    assert.throws(() => tf.grads((b: tf.Tensor) => {
      const h = tf.tensor2d(hv, [N, H]), tg = tf.tensor1d(targets, 'int32');
      return crossEntropyFromHiddenF16(h, b as tf.Tensor2D, tg, { weightGrad: false }).loss;
    })([w]), /Cannot compute gradient/, 'no gradient flows to a frozen weight');
    // outside tf.grads no gradient is computed, and the loss is the same
    const h = tf.tensor2d(hv, [N, H]), tg = tf.tensor1d(targets, 'int32');
    const plain = crossEntropyFromHiddenF16(h, w, tg, { weightHalf: w16, memoryBytes });
    assert.equal((await read(plain.loss))[0], withHalf.loss);
    assert.equal((await read(plain.correct))[0], withHalf.correct);
    tf.dispose([h, tg, plain.loss, plain.correct, w]);
    w16.dispose();
  });

  test('lmHeadCrossEntropy: f16 under computeDtype float16, the fp32 kernel otherwise', async (t) => {
    if (!(await onGpu(t))) return;
    const h = tf.tensor2d(hv, [N, H]), w = tf.tensor2d(wv, [V, H]), tg = tf.tensor1d(targets, 'int32');
    const labelled = [...targets].map((v) => (v === -100 ? 0 : v));
    const loss = async (f: () => { loss: tf.Tensor; correct: tf.Tensor }) => {
      const o = f();
      const v = (await read(o.loss))[0];
      tf.dispose([o.loss, o.correct]);
      return v;
    };
    const f16 = await loss(() => withComputeDtype('float16', () => lmHeadCrossEntropy(h, w, labelled)));
    const f32 = await loss(() => lmHeadCrossEntropy(h, w, labelled));
    assert.equal(f16, await loss(() => crossEntropyFromHiddenF16(h, w, tf.tensor1d(labelled, 'int32'))));
    assert.equal(f32, await loss(() => crossEntropyFromHidden(h, w, tf.tensor1d(labelled, 'int32'))));
    assert.notEqual(f16, f32, 'f16 rounding shows');
    assert.ok(Math.abs(f16 - f32) < 2e-3 * f32);
    tf.dispose([h, w, tg]);
  });
});

// f16 matmul (src/backend/kernels/matmul-f16.ts): matMulF16 against a float64 reference over the same
// f16-rounded values, in every layout (NN, NT, TN, TT), batched (with a broadcast batch), on shapes that
// are not multiples of any tile, from float32 tensors and from HalfTensors. On webgpu it runs whatever path
// the adapter has: the SIMT fallback on lavapipe (CI), subgroup matrices on the H100 (the GPU box:
// ../shared/gpu/pack.sh tests/matmul-f16.test.ts && node .gpu/matmul-f16.test.mjs). Also: f16 rounding,
// and that every subgroup-matrix tile the tuner may pick generates a program.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initDevice, shutdownDevice } from '../src/backend/device';
import {
  SG_TILE_128, SG_TILE_64, SgMatmulProgram, f16BitsToF32, gatherHalfRows, pickSplitK, f32ToF16Bits, fromHalfAsync, matMulF16, matmulF16Path, parseSgTile, toHalf,
} from '../src/backend/kernels/matmul-f16';
import { assertClose, lcgValues as values, startOrSkip } from './helpers';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');

after(async () => {
  await shutdownDevice();
});

const r16 = (x: number) => f16BitsToF32(f32ToF16Bits(x));

/** op(a)·op(b) in float64 over f16-rounded values; a [B?, r, c] flat. */
function reference(a: Float32Array, as: number[], b: Float32Array, bs: number[], ta: boolean, tb: boolean): Float64Array {
  const batched = as.length === 3;
  const [ba, bb] = batched ? [as[0], bs[0]] : [1, 1];
  const batch = Math.max(ba, bb);
  const [ar, ac] = as.slice(-2), [br, bc] = bs.slice(-2);
  const [M, K] = ta ? [ac, ar] : [ar, ac];
  const N = tb ? br : bc;
  const out = new Float64Array(batch * M * N);
  for (let q = 0; q < batch; q++) {
    const ao = (ba === 1 ? 0 : q) * ar * ac, bo = (bb === 1 ? 0 : q) * br * bc;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const x = a[ao + (ta ? k * ac + m : m * ac + k)], y = b[bo + (tb ? n * bc + k : k * bc + n)];
          s += r16(x) * r16(y);
        }
        out[(q * M + m) * N + n] = s;
      }
    }
  }
  return out;
}

/** Shapes: [aShape, bShape, transposeA, transposeB]; none a multiple of 16 or 64, one K a multiple of 8 (vec8 loads on the H100). */
const CASES: [number[], number[], boolean, boolean][] = [
  [[37, 29], [29, 45], false, false],
  [[37, 24], [45, 24], false, true],
  [[24, 37], [24, 45], true, false],
  [[29, 37], [45, 29], true, true],
  [[3, 70, 40], [3, 40, 72], false, false],
  [[3, 70, 40], [1, 72, 40], false, true],
  [[1, 40, 72], [3, 40, 70], true, false],
  [[130, 136], [136, 144], false, false],
];

async function checkAll(device: 'cpu' | 'webgpu'): Promise<void> {
  let seed = 1;
  for (const [as, bs, ta, tb] of CASES) {
    const av = values(as.reduce((x, y) => x * y), seed++), bv = values(bs.reduce((x, y) => x * y), seed++);
    const want = reference(av, as, bv, bs, ta, tb);
    const a = tf.tensor(av, as), b = tf.tensor(bv, bs);
    const before = tf.memory().numTensors;
    const y = matMulF16(a, b, ta, tb);
    const got = await y.data();
    y.dispose();
    assert.equal(tf.memory().numTensors, before, `${device} [${as}]·[${bs}]: tensors leaked`);
    assertClose(got, want, `${device} ${matmulF16Path()} [${as}]${ta ? 'ᵀ' : ''}·[${bs}]${tb ? 'ᵀ' : ''}`);
    tf.dispose([a, b]);
  }
}

describe('matMulF16', () => {
  test('f16 rounding: round to nearest even, subnormals, overflow', () => {
    for (const x of [0, 1, -2.5, 65504, 1 / 3, 2 ** -24, 3 * 2 ** -26, 1e-3, 0.1]) {
      const h = f16BitsToF32(f32ToF16Bits(x));
      assert.ok(Math.abs(h - x) <= Math.abs(x) * 2 ** -11 + 2 ** -25, `${x} -> ${h}`);
    }
    assert.equal(f16BitsToF32(f32ToF16Bits(1 + 2 ** -11)), 1); // tie to even
    assert.equal(f16BitsToF32(f32ToF16Bits(70000)), Infinity);
  });

  test('every tuned subgroup-matrix tile generates a program in every layout', () => {
    for (const t of [SG_TILE_128, SG_TILE_64, parseSgTile('128x256x32_sg2x4_s1'), parseSgTile('128x128x32_sg2x4_s2')]) {
      for (const [a, b] of [['mk', 'kn'], ['mk', 'nk'], ['km', 'kn'], ['km', 'nk']] as const) {
        for (const form of ['new', 'old'] as const) {
          const code = new SgMatmulProgram(t, a, b, { M: 300, N: 200, batch: 2 }, { form }).getUserCode();
          assert.match(code, /subgroupMatrixMultiplyAccumulate/);
          assert.match(code, /diagnostic\(off, chromium\.subgroup_matrix_uniformity\)/);
        }
      }
    }
    assert.throws(() => parseSgTile('100x128x32_sg2x2_s2') && new SgMatmulProgram(parseSgTile('100x128x32_sg2x2_s2'), 'mk', 'kn', { M: 1, N: 1 }), RangeError);
  });

  test('on cpu: tf.matMul over f16-rounded values', async () => {
    await initDevice('cpu', { quiet: true });
    await checkAll('cpu');
  });

  test('on webgpu: all layouts, batched, non-multiple shapes (the fallback on lavapipe, tensor cores on the H100)', async (t) => {
    const skip = await startOrSkip('webgpu');
    if (skip) return t.skip(skip);
    tf.env().set('WEBGPU_CPU_FORWARD', false);
    await checkAll('webgpu');
    // HalfTensor operands, kept across calls
    const av = values(33 * 40, 91), bv = values(40 * 27, 92);
    const a16 = toHalf(tf.tensor(av, [33, 40])), b16 = toHalf(tf.tensor(bv, [40, 27]));
    const back = await fromHalfAsync(a16);
    assertClose(await back.data(), Float32Array.from(av, r16), 'toHalf on webgpu', 0);
    back.dispose();
    const y = matMulF16(a16, b16);
    assertClose(await y.data(), reference(av, [33, 40], bv, [40, 27], false, false), 'HalfTensor operands');
    tf.dispose([y]);
    a16.dispose();
    b16.dispose();
    // split-K (K-slices as a batch, then summed), every layout; automatic on the H100 for the LM head's
    // dH (few output tiles, K = vocabulary), asked for explicitly here
    let seed = 200;
    for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]]) {
      const M = 24, N = 40, K = 512;
      const av2 = values(M * K, seed++), bv2 = values(K * N, seed++);
      const A = tf.tensor(av2, ta ? [K, M] : [M, K]), B = tf.tensor(bv2, tb ? [N, K] : [K, N]);
      const want = reference(av2, ta ? [K, M] : [M, K], bv2, tb ? [N, K] : [K, N], ta, tb);
      const before = tf.memory().numTensors;
      const ys = matMulF16(A, B, ta, tb, { splitK: 4 });
      assert.deepEqual(ys.shape, [M, N]);
      assertClose(await ys.data(), want, `split-K 4, transposeA ${ta}, transposeB ${tb}`);
      ys.dispose();
      assert.equal(tf.memory().numTensors, before, 'split-K leaks no tensor');
      assert.throws(() => matMulF16(A, B, ta, tb, { splitK: 3 }), /splitK 3 must divide K = 512/);
      tf.dispose([A, B]);
    }
    // an embedding lookup in a table held in f16: exactly the halves of the rows, NaN rows for ids outside
    const tv = values(37 * 6, 300), table = toHalf(tf.tensor(tv, [37, 6]));
    const rows = gatherHalfRows(table, [0, 36, 5, 5, 40]);
    const got = await rows.data();
    const want = [0, 36, 5, 5].flatMap((r) => Array.from(tv.slice(r * 6, r * 6 + 6), r16));
    assertClose(got.slice(0, 24), want, 'gatherHalfRows', 0);
    assert.ok(Array.from(got.slice(24)).every(Number.isNaN), 'an id past the table gives a NaN row');
    tf.dispose([rows]);
    table.dispose();
    assert.equal(pickSplitK(384, 2048, 151936), 4, 'the LM head dH of a 2048-hidden model');
    assert.equal(pickSplitK(2048, 2048, 2048), 1, 'a full output needs no split');
  });
});

// LoRA's term on a projection, fused: y = base + s · dropout(x)·Aᵀ·Bᵀ with A [r, in], B [out, r],
// s = lora_alpha / r. Unfused, tfjs runs it as dropout, two f16 matmuls (each converting both operands),
// a scale and an add — ~11 dispatches forward and ~17 backward per projection, seven projections per
// layer: on a 3B model a step was bound by the CPU issuing them. Here, four small programs in f32:
//
//   forward   xa = dropout(x)·Aᵀ              [N, r]     LoraDownProgram (the mask hashed in place)
//             y  = base + s·xa·Bᵀ             [N, out]   LoraUpProgram
//   backward  g  = dy·B                       [N, r]     LoraDownProgram (B read as [out, r])
//             dx = s·mask ⊙ (g·A)             [N, in]    LoraUpProgram (A read as [r, in]; no base)
//             dA = s·gᵀ·dropout(x)            [r, in]    LoraGradProgram (a column sum over N)
//             dB = s·dyᵀ·xa                   [out, r]   LoraGradProgram
//             dbase = dy
//
// The dropout mask is dropout.ts's: keep where hash(seed, n·in + k) ≥ rate, kept values scaled by
// 1 / (1 − rate). Elsewhere than webgpu the same thing in tfjs ops.

import * as tf from '@tensorflow/tfjs-core';
import '../gradients';
import { dropoutFused, DROPOUT_HASH_WGSL } from './dropout';
import { assertFloat32, ElementwiseProgram, GroupedProgram, FLAT_WORKGROUP, onWebGpu, runProgram, type Uniform } from './program';

/** Ranks up to this run on the fused path (one accumulator per rank per thread; LoraGradProgram keeps rank × 256 f32 in workgroup memory: 32 KiB at rank 32, lavapipe's limit). */
export const LORA_MAX_FUSED_RANK = 32;

/** How W is laid out: 'rk' = [r, K] (A; B read for dx), 'kr' = [K, r] (B; A read for …). */
type WLayout = 'rk' | 'kr';

const DOWN_WG = 64;

/** WGSL reading the keep mask of element `i` of X (1 / (1 − rate) or 0). */
const maskAt = (i: string) => `select(0.0, uniforms.keepScale, kDropU(${i}) >= uniforms.rate)`;
const MASK_WGSL = `${DROPOUT_HASH_WGSL}
    fn kDropU(i : i32) -> f32 {
      return f32(kLowbias32(kLowbias32(u32(i)) ^ uniforms.seed) >> 8u) * (1.0 / 16777216.0);
    }`;

/**
 * out[n, j] = Σ_k X[n, k]·mask(n, k)·W(j, k) for j < R: one workgroup per row n, each thread a strided
 * part of k, then a tree sum of the R partial sums.
 */
class LoraDownProgram extends GroupedProgram {
  override uniforms = 'N : i32, K : i32, seed : u32, rate : f32, keepScale : f32,';

  constructor(N: number, readonly R: number, readonly w: WLayout, readonly masked: boolean) {
    super(['X', 'W'], [N, R], `tsft_lora_down_r${R}_${w}_${masked ? 'm' : 'n'}`, N, DOWN_WG);
  }

  getUserCode(): string {
    const R = this.R;
    const wAt = this.w === 'rk' ? '(j * uniforms.K + k)' : '(k * RANK + j)';
    return `
    const RANK = ${R};
    var<workgroup> kPart : array<array<f32, ${DOWN_WG}>, ${R}>;
    ${this.masked ? MASK_WGSL : ''}
    fn main() {
      let n = ${FLAT_WORKGROUP};
      let tid = i32(localIndex);
      var acc : array<f32, ${R}>;
      if (n < uniforms.N) {
        for (var k = tid; k < uniforms.K; k = k + ${DOWN_WG}) {
          let x = X[n * uniforms.K + k]${this.masked ? ` * ${maskAt('n * uniforms.K + k')}` : ''};
          for (var j = 0; j < RANK; j = j + 1) { acc[j] = acc[j] + x * W[${wAt}]; }
        }
      }
      for (var j = 0; j < RANK; j = j + 1) { kPart[j][tid] = acc[j]; }
      workgroupBarrier();
      for (var w = ${DOWN_WG / 2}; w > 0; w = w / 2) {
        if (tid < w) {
          for (var j = 0; j < RANK; j = j + 1) { kPart[j][tid] = kPart[j][tid] + kPart[j][tid + w]; }
        }
        workgroupBarrier();
      }
      if (tid < RANK && n < uniforms.N) { result[n * RANK + tid] = kPart[tid][0]; }
    }`;
  }
}

/**
 * out[n, o] = (Base[n, o]) + s·mask(n, o)·Σ_j P[n, j]·W(o, j), one thread per output element; W is
 * [O, R] ('kr': B in the forward) or [R, O] ('rk': A for dx).
 */
class LoraUpProgram extends ElementwiseProgram {
  override uniforms = 'O : i32, scale : f32, seed : u32, rate : f32, keepScale : f32,';

  constructor(N: number, O: number, readonly R: number, readonly w: WLayout, readonly withBase: boolean, readonly masked: boolean) {
    super(withBase ? ['P', 'W', 'Base'] : ['P', 'W'], [N, O], `tsft_lora_up_r${R}_${w}_${withBase ? 'b' : 'n'}_${masked ? 'm' : 'n'}`);
  }

  getUserCode(): string {
    const wAt = this.w === 'kr' ? '(o * RANK + j)' : '(j * uniforms.O + o)';
    let value = `uniforms.scale * acc`;
    if (this.masked) value = `${value} * ${maskAt('index')}`;
    if (this.withBase) value = `Base[index] + ${value}`;
    return `
    const RANK = ${this.R};
    ${this.masked ? MASK_WGSL : ''}
    fn main(index : i32) {
      if (index >= uniforms.size) { return; }
      let n = index / uniforms.O;
      let o = index - n * uniforms.O;
      var acc = 0.0;
      for (var j = 0; j < RANK; j = j + 1) { acc = acc + P[n * RANK + j] * W[${wAt}]; }
      result[index] = ${value};
    }`;
  }
}

const GRAD_COLS = 8;
const GRAD_SLICES = 32;

/**
 * s·Σ_n P[n, j]·Q[n, k]·mask(n, k): out [R, K] ('rk': dA) or [K, R] ('kr': dB). A workgroup takes 8
 * columns k; its 32 row slices each sum a strided part of n, then the slices are added (enough workgroups
 * to fill the GPU when K is only 256: K / 8 of them, each thread 64 rows of a 2048-token batch).
 */
class LoraGradProgram extends GroupedProgram {
  override uniforms = 'N : i32, K : i32, scale : f32, seed : u32, rate : f32, keepScale : f32,';

  constructor(K: number, readonly R: number, readonly out: WLayout, readonly masked: boolean) {
    super(['P', 'Q'], out === 'rk' ? [R, K] : [K, R], `tsft_lora_grad_r${R}_${out}_${masked ? 'm' : 'n'}`, Math.ceil(K / GRAD_COLS), GRAD_COLS * GRAD_SLICES);
  }

  getUserCode(): string {
    const R = this.R;
    const outAt = this.out === 'rk' ? '(j * uniforms.K + k)' : '(k * RANK + j)';
    return `
    const RANK = ${R};
    var<workgroup> kPart : array<array<f32, ${GRAD_COLS * GRAD_SLICES}>, ${R}>;
    ${this.masked ? MASK_WGSL : ''}
    fn main() {
      let tid = i32(localIndex);
      let c = tid % ${GRAD_COLS};
      let slice = tid / ${GRAD_COLS};
      let k = ${FLAT_WORKGROUP} * ${GRAD_COLS} + c;
      var acc : array<f32, ${R}>;
      if (k < uniforms.K) {
        for (var n = slice; n < uniforms.N; n = n + ${GRAD_SLICES}) {
          let q = Q[n * uniforms.K + k]${this.masked ? ` * ${maskAt('n * uniforms.K + k')}` : ''};
          for (var j = 0; j < RANK; j = j + 1) { acc[j] = acc[j] + P[n * RANK + j] * q; }
        }
      }
      for (var j = 0; j < RANK; j = j + 1) { kPart[j][tid] = acc[j]; }
      workgroupBarrier();
      for (var w = ${GRAD_SLICES / 2}; w > 0; w = w / 2) {
        if (slice < w) {
          for (var j = 0; j < RANK; j = j + 1) { kPart[j][tid] = kPart[j][tid] + kPart[j][tid + w * ${GRAD_COLS}]; }
        }
        workgroupBarrier();
      }
      if (slice == 0 && k < uniforms.K) {
        for (var j = 0; j < RANK; j = j + 1) { result[${outAt}] = uniforms.scale * kPart[j][tid]; }
      }
    }`;
  }
}

/** i32 uniforms, one entry each (tfjs aligns a multi-value entry as a vector, not as the struct's fields). */
function ints(...v: number[]): Uniform[] {
  return v.map((x) => ({ type: 'int32', data: [x] }));
}

/** The uniforms every program above ends with: the dropout's seed, rate and keep scale. */
function dropoutUniforms(rate: number, seed: number): Uniform[] {
  return [
    { type: 'uint32', data: [seed >>> 0] },
    { type: 'float32', data: [rate] },
    { type: 'float32', data: [rate > 0 ? 1 / (1 - rate) : 1] },
  ];
}

/**
 * base + scale · dropout(x)·Aᵀ·Bᵀ: a projection's output `base` [N, out] plus its LoRA term, x [N, in],
 * A [r, in], B [out, r]. Differentiable in x, base, A and B. `dropout`: the rate and the seed of its mask
 * (dropout.ts's mask: the same seed gives the same mask, so a recomputed block sees the same one); rate 0
 * or null for none. Four small kernels forward and backward on webgpu; tfjs ops elsewhere (and for ranks
 * over {@link LORA_MAX_FUSED_RANK}).
 *
 * @example
 * const y = loraLinear(x, linearMatmul(x, W), A, B, 32 / 8, { rate: 0.05, seed: rng.nextU32() });
 */
export function loraLinear(
  x: tf.Tensor2D, base: tf.Tensor2D, A: tf.Tensor2D, B: tf.Tensor2D, scale: number,
  dropout: { rate: number; seed: number } | null = null,
): tf.Tensor2D {
  const [N, K] = x.shape, [R, K2] = A.shape, [O, R2] = B.shape;
  if (K2 !== K || R2 !== R || base.shape[0] !== N || base.shape[1] !== O) {
    throw new RangeError(`loraLinear: x [${x.shape}], base [${base.shape}], A [${A.shape}], B [${B.shape}] do not fit (A [r, in], B [out, r])`);
  }
  const rate = dropout && dropout.rate > 0 ? dropout.rate : 0;
  const seed = dropout?.seed ?? 0;
  if (!onWebGpu() || R > LORA_MAX_FUSED_RANK) {
    const xd = rate > 0 ? dropoutFused(x, rate, seed) : x;
    return tf.add(base, tf.mul(tf.matMul(tf.matMul(xd, A, false, true), B, false, true), scale)) as tf.Tensor2D;
  }
  assertFloat32('loraLinear', x, base, A, B);
  const masked = rate > 0;
  const drop = dropoutUniforms(rate, seed);
  const f = tf.customGrad(((xi: tf.Tensor, bi: tf.Tensor, a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const xa = runProgram(new LoraDownProgram(N, R, 'rk', masked), [xi, a], [...ints(N, K), ...drop]);
    const y = runProgram(new LoraUpProgram(N, O, R, 'kr', true, false), [xa, b, bi], [...ints(O), { type: 'float32', data: [scale] }, ...drop]);
    save([xi, a, b, xa]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, [sx, sa, sb, sxa]: tf.Tensor[]) => {
        const g = runProgram(new LoraDownProgram(N, R, 'kr', false), [dy, sb], [...ints(N, O), ...drop]);
        const dx = runProgram(new LoraUpProgram(N, K, R, 'rk', false, masked), [g, sa], [...ints(K), { type: 'float32', data: [scale] }, ...drop]);
        const dA = runProgram(new LoraGradProgram(K, R, 'rk', masked), [g, sx], [...ints(N, K), { type: 'float32', data: [scale] }, ...drop]);
        const dB = runProgram(new LoraGradProgram(O, R, 'kr', false), [sxa, dy], [...ints(N, O), { type: 'float32', data: [scale] }, ...drop]);
        g.dispose();
        return [dx, dy.clone(), dA, dB];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(x, base, A, B) as tf.Tensor2D;
}

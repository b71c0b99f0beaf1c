// RMSNorm fused: y = x · rsqrt(mean(x²) + eps) · weight over the last axis, one workgroup per row.
// Backward (tf.customGrad), with r = rsqrt(mean(x²) + eps) per row recomputed by a small program:
//   dx = r·w·dy − r³·x·Σ(dy·w·x)/H      (one workgroup per row)
//   dw = Σ_rows dy·x·r                  (column threads over blocks of rows, then a sum of the blocks)
// Elsewhere than webgpu: the model's tfjs ops (src/model/qwen2.ts rmsNorm).

import * as tf from '@tensorflow/tfjs-core';
import '../gradients';
import { assertFloat32, blockSumWgsl, FLAT_WORKGROUP, GroupedProgram, onWebGpu, runProgram, sizeOf, type Program, type Uniform } from './program';

const WG = 256;
/** Rows per workgroup of the weight-gradient program. */
const DW_ROWS = 64;

type RmsNormMode = 'forward' | 'rstd' | 'dx';

/**
 * One workgroup per row. 'forward': X, W → y. 'rstd': X → r [rows]. 'dx': X, W, Dy, Rstd → dx.
 */
class RmsNormProgram extends GroupedProgram {
  override uniforms = 'rows : i32, H : i32, eps : f32,';

  constructor(readonly mode: RmsNormMode, xShape: number[]) {
    const H = xShape[xShape.length - 1], rows = sizeOf(xShape) / H;
    const inputs = { forward: ['X', 'W'], rstd: ['X'], dx: ['X', 'W', 'Dy', 'Rstd'] }[mode];
    super(inputs, mode === 'rstd' ? [rows] : xShape, `tsft_rmsnorm_${mode}`, rows, WG);
  }

  getUserCode(): string {
    const body = {
      forward: `
        let r = inverseSqrt(kBlockSum(ss) / f32(uniforms.H) + uniforms.eps);
        if (live) {
          for (var j = tid; j < uniforms.H; j = j + ${WG}) { result[base + j] = X[base + j] * r * W[j]; }
        }`,
      rstd: `
        let r = inverseSqrt(kBlockSum(ss) / f32(uniforms.H) + uniforms.eps);
        if (live && tid == 0) { result[row] = r; }`,
      dx: `
        var dot = 0.0;
        if (live) {
          for (var j = tid; j < uniforms.H; j = j + ${WG}) { dot = dot + Dy[base + j] * W[j] * X[base + j]; }
        }
        let total = kBlockSum(dot);
        if (live) {
          let r = Rstd[row];
          let c = r * r * r * total / f32(uniforms.H);
          for (var j = tid; j < uniforms.H; j = j + ${WG}) { result[base + j] = r * W[j] * Dy[base + j] - c * X[base + j]; }
        }`,
    }[this.mode];
    return `
    ${blockSumWgsl(WG)}
    fn main() {
      let row = ${FLAT_WORKGROUP};
      let tid = i32(localIndex);
      let live = row < uniforms.rows;
      let base = row * uniforms.H;
      var ss = 0.0;
      ${this.mode === 'dx' ? '' : `if (live) {
        for (var j = tid; j < uniforms.H; j = j + ${WG}) { let v = X[base + j]; ss = ss + v * v; }
      }`}
      ${body}
    }`;
  }
}

/** dw partial sums: result [⌈rows / DW_ROWS⌉, H], thread = column, workgroup row y = a block of rows. */
class RmsNormGradWeightProgram implements Program {
  variableNames = ['X', 'Dy', 'Rstd'];
  outputShape: number[];
  shaderKey = 'tsft_rmsnorm_dw';
  dispatchLayout = { x: [1], y: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WG, 1, 1];
  uniforms = 'rows : i32, H : i32, eps : f32,';

  constructor(rows: number, H: number) {
    const blocks = Math.ceil(rows / DW_ROWS);
    this.outputShape = [blocks, H];
    this.dispatch = [Math.ceil(H / WG), blocks, 1];
  }

  getUserCode(): string {
    return `
    fn main() {
      let j = i32(workgroupId.x) * ${WG} + i32(localIndex);
      let block = i32(workgroupId.y);
      if (j >= uniforms.H) { return; }
      let end = min(uniforms.rows, (block + 1) * ${DW_ROWS});
      var s = 0.0;
      for (var row = block * ${DW_ROWS}; row < end; row = row + 1) {
        s = s + Dy[row * uniforms.H + j] * X[row * uniforms.H + j] * Rstd[row];
      }
      result[block * uniforms.H + j] = s;
    }`;
  }
}

function uniformsFor(rows: number, H: number, eps: number): Uniform[] {
  return [
    { type: 'int32', data: [rows] },
    { type: 'int32', data: [H] },
    { type: 'float32', data: [eps] },
  ];
}

/** The model's RMSNorm in tfjs ops (qwen2.ts). */
function rmsNormStock(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  const variance = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, eps))), weight);
}

/**
 * RMSNorm over the last axis: x · rsqrt(mean(x²) + eps) · weight, as one kernel on webgpu (tfjs ops
 * elsewhere). Differentiable w.r.t. x and weight.
 *
 * @param x [..., H] float32
 * @param weight [H] float32
 * @example
 * const h = rmsNormFused(x, w, 1e-6);                          // [B·T, H]
 * const [dx, dw] = tf.grads((x, w) => tf.sum(rmsNormFused(x, w, 1e-6)))([x, w]);
 */
export function rmsNormFused(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  const H = x.shape[x.rank - 1];
  if (weight.rank !== 1 || weight.shape[0] !== H) throw new RangeError(`rmsNormFused: weight ${weight.shape} does not match x ${x.shape}`);
  if (!onWebGpu()) return rmsNormStock(x, weight, eps);
  assertFloat32('rmsNormFused', x, weight);
  const rows = sizeOf(x.shape) / H;
  const u = uniformsFor(rows, H, eps);
  const f = tf.customGrad(((xs: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
    save([xs, w]);
    return {
      value: runProgram(new RmsNormProgram('forward', xs.shape), [xs, w], u),
      gradFunc: (dy: tf.Tensor, [sx, sw]: tf.Tensor[]) => {
        const rstd = runProgram(new RmsNormProgram('rstd', sx.shape), [sx], u);       // [rows]
        const dx = runProgram(new RmsNormProgram('dx', sx.shape), [sx, sw, dy, rstd], u);
        const part = runProgram(new RmsNormGradWeightProgram(rows, H), [sx, dy, rstd], u); // [blocks, H]
        const dw = tf.sum(part, 0);
        tf.dispose([rstd, part]);
        return [dx, dw];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(x, weight);
}

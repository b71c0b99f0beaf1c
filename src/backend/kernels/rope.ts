// RoPE fused (rotate-half form, as transformers): y = x·cos + rotate_half(x)·sin with
// rotate_half(x) = [−x₂, x₁], one thread per element of x [B, heads, T, D]; cos/sin [B or 1, 1, T, D]
// broadcast over heads. Backward (tf.customGrad) is the transposed rotation:
//   dx[d] = dy[d]·cos[d] + (d < D/2 ? dy[d + D/2]·sin[d + D/2] : −dy[d − D/2]·sin[d − D/2]).
// cos and sin are constants (positions): they get no gradient. Elsewhere than webgpu: the model's tfjs
// ops (src/model/qwen2.ts applyRope).

import * as tf from '@tensorflow/tfjs-core';
import '../gradients';
import { assertFloat32, ElementwiseProgram, onWebGpu, runProgram, type Uniform } from './program';

/** 'forward': X, Cos, Sin → y. 'backward': Dy, Cos, Sin → dx. */
class RopeProgram extends ElementwiseProgram {
  override uniforms = 'D : i32, T : i32, rowsPerBatch : i32, csBatchStride : i32,';

  constructor(readonly mode: 'forward' | 'backward', shape: number[]) {
    super([mode === 'forward' ? 'X' : 'Dy', 'Cos', 'Sin'], shape, `tsft_rope_${mode}`);
  }

  getUserCode(): string {
    // the partner element: rotate_half forward, its transpose backward
    const [lo, hi] = this.mode === 'forward'
      ? ['-X[index + half] * Sin[cs]', 'X[index - half] * Sin[cs]']
      : ['Dy[index + half] * Sin[cs + half]', '-Dy[index - half] * Sin[cs - half]'];
    const own = this.mode === 'forward' ? 'X[index]' : 'Dy[index]';
    return `
    fn main(index : i32) {
      if (index >= uniforms.size) { return; }
      let half = uniforms.D / 2;
      let d = index % uniforms.D;
      let row = index / uniforms.D;                   // (b·heads + h)·T + t
      let t = row % uniforms.T;
      let b = row / uniforms.rowsPerBatch;
      let cs = b * uniforms.csBatchStride + t * uniforms.D + d;
      var partner : f32;
      if (d < half) { partner = ${lo}; } else { partner = ${hi}; }
      result[index] = ${own} * Cos[cs] + partner;
    }`;
  }
}

/** The model's RoPE in tfjs ops (qwen2.ts). */
function ropeStock(x: tf.Tensor4D, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin)) as tf.Tensor4D;
}

/**
 * Rotary position embedding (rotate-half) as one kernel on webgpu, tfjs ops elsewhere. Differentiable
 * w.r.t. x; cos and sin are treated as constants.
 *
 * @param x [B, heads, T, D] float32, D even
 * @param cos [B or 1, 1, T, D] float32 (as ropeCosSin in src/model/qwen2.ts makes it)
 * @param sin like cos
 * @example
 * const { cos, sin } = ropeCosSin(positions, 128, 1e6);
 * const q = applyRopeFused(qh, cos, sin);                    // [B, H, T, 128]
 */
export function applyRopeFused(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  const [B, heads, T, D] = x.shape;
  const csOk = (c: tf.Tensor) => c.rank === 4 && (c.shape[0] === B || c.shape[0] === 1) && c.shape[1] === 1 && c.shape[2] === T && c.shape[3] === D;
  if (D % 2 !== 0 || !csOk(cos) || !csOk(sin) || cos.shape[0] !== sin.shape[0]) {
    throw new RangeError(`applyRopeFused: expected x [B, heads, T, D] (D even) and cos/sin [B or 1, 1, T, D]; got ${x.shape}, ${cos.shape}, ${sin.shape}`);
  }
  if (!onWebGpu()) return ropeStock(x, cos, sin);
  assertFloat32('applyRopeFused', x, cos, sin);
  const u: Uniform[] = [D, T, heads * T, cos.shape[0] === 1 ? 0 : T * D].map((v) => ({ type: 'int32', data: [v] }));
  // cos/sin are saved: the caller's scope (a model's forward) may dispose them before backward runs
  const f = tf.customGrad(((xs: tf.Tensor, save: tf.GradSaveFunc) => {
    save([cos, sin]);
    return {
      value: runProgram(new RopeProgram('forward', xs.shape), [xs, cos, sin], u),
      gradFunc: (dy: tf.Tensor, [c, s]: tf.Tensor[]) => runProgram(new RopeProgram('backward', dy.shape), [dy, c, s], u),
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(x) as tf.Tensor4D;
}

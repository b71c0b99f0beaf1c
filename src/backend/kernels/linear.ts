// Linear layers for the GPU path: y = x·Wᵀ with dx = dy·W and dW = dyᵀ·x, each matmul on the fastest
// kernel the device has, chosen per call:
//   computeDtype 'float16' on webgpu → f16 operands, f32 accumulation and output (matmul-f16.ts: subgroup
//     matrices / tensor cores where the adapter has them, the SIMT f16 kernel elsewhere). A trainable
//     weight's f16 copy is made per matmul and freed; a frozen f32 weight's is cached until it changes
//     ({@link halfOf}; {@link markWeightsChanged}, which the optimizer calls); a frozen weight may also be
//     held in f16 only (a HalfTensor: LoRA's base weights, half the memory);
//   'float32' on webgpu → tsft's tiled f32 matmul (program.ts), 1.3–2× stock tfjs on the step's shapes;
//   other backends → tf.matMul.
// dW is computed only when W is a trainable tf.Variable, so frozen weights cost no weight-gradient matmul.

import * as tf from '@tensorflow/tfjs-core';
import { kernelPath } from '../fused';
import { computeDtype } from '../precision';
import { HalfTensor, matMulF16, toHalf } from './matmul-f16';
import { matMulTiled, onWebGpu } from './program';

// ---------------------------------------------------------------------------------------------------
// f16 copies of f32 weights.

let weightsVersion = 0;
const halfCopies = new Map<tf.Tensor, { version: number; dataId: object; half: HalfTensor }>();

/** Tells the f16 copies that weights changed in place (an optimizer step): each is remade on next use. */
export function markWeightsChanged(): void {
  weightsVersion++;
}

/**
 * The f16 copy of float32 weight `w`, made on first use and after the weights change; kept outside any
 * tf.tidy scope until {@link dropHalfCopy}.
 *
 * @example
 * const y = matMulF16(x, halfOf(weight), false, true);
 */
export function halfOf(w: tf.Tensor): HalfTensor {
  const e = halfCopies.get(w);
  if (e && e.version === weightsVersion && e.dataId === w.dataId && !e.half.packed.isDisposed) return e.half;
  e?.half.dispose();
  const half = toHalf(w);
  tf.keep(half.packed);
  halfCopies.set(w, { version: weightsVersion, dataId: w.dataId, half });
  return half;
}

/** Frees `w`'s f16 copy, if any (the model does this when it is disposed). */
export function dropHalfCopy(w: tf.Tensor): void {
  halfCopies.get(w)?.half.dispose();
  halfCopies.delete(w);
}

/** Bytes held by f16 weight copies (part of tfjs's allocation, since they are tfjs tensors). */
export function halfCopyBytes(): number {
  let n = 0;
  for (const e of halfCopies.values()) if (!e.half.packed.isDisposed) n += e.half.packed.size * 4;
  return n;
}

// ---------------------------------------------------------------------------------------------------
// The op.

/** Which matmul `linear` runs with now. */
export function linearPath(): 'f16' | 'tiled-f32' | 'tfjs' {
  if (!onWebGpu() || kernelPath() !== 'webgpu') return 'tfjs';
  return computeDtype() === 'float16' ? 'f16' : 'tiled-f32';
}

type Weight = tf.Tensor2D | HalfTensor;

function mm(path: 'f16' | 'tiled-f32' | 'tfjs', a: tf.Tensor2D | HalfTensor, b: tf.Tensor2D | HalfTensor, ta: boolean, tb: boolean): tf.Tensor2D {
  if (path === 'f16') return matMulF16(a, b, ta, tb) as tf.Tensor2D;
  if (a instanceof HalfTensor || b instanceof HalfTensor) throw new TypeError('linear: an f16-held weight needs computeDtype float16 on webgpu');
  return path === 'tiled-f32' ? matMulTiled(a, b, ta, tb) : tf.matMul(a, b, ta, tb);
}

/**
 * x·Wᵀ for x [N, in] and W [out, in] (PyTorch's layout) → [N, out], differentiable in x and, when W is a
 * trainable variable, in W. W may be a HalfTensor (a frozen weight held in f16; needs the f16 path).
 *
 * @example
 * const y = linearMatmul(x, this.w('model.layers.0.mlp.up_proj.weight'));
 */
export function linearMatmul(x: tf.Tensor2D, weight: Weight): tf.Tensor2D {
  const path = weight instanceof HalfTensor ? 'f16' : linearPath();
  if (path === 'tfjs') return tf.matMul(x, weight as tf.Tensor2D, false, true);
  if (path === 'f16' && !onWebGpu()) throw new TypeError('linear: f16-held weights run on webgpu only');
  const trainable = !(weight instanceof HalfTensor) && (weight as tf.Variable).trainable === true;
  // W's operand for one matmul, and its release: a trainable weight's f16 copy is made per use and freed
  // (it changes every step, and keeping copies of every weight costs 2 bytes per parameter: 8 GB on a 4B
  // model; the cast reads 6 bytes per parameter, ~1 % of a step); a frozen f32 weight's copy is cached.
  const withW = (f: (w: Weight) => tf.Tensor2D): tf.Tensor2D => {
    if (path !== 'f16' || weight instanceof HalfTensor) return f(weight);
    if (!trainable) return f(halfOf(weight));
    const h = toHalf(weight);
    try {
      return f(h);
    } finally {
      h.dispose();
    }
  };
  if (trainable) {
    const w = weight as tf.Tensor2D;
    const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const xi = args[0] as tf.Tensor2D, save = args[2] as tf.GradSaveFunc;
      save([xi]);
      return {
        value: withW((wo) => mm(path, xi, wo, false, true)),
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const xs = saved[0] as tf.Tensor2D;
          // f16: dy converted once for both matmuls
          const d = path === 'f16' ? toHalf(dy) : dy as tf.Tensor2D;
          try {
            return [withW((wo) => mm(path, d, wo, false, false)), mm(path, d, xs, true, false)];   // dx [N, in], dW [out, in]
          } finally {
            if (d !== dy) (d as HalfTensor).dispose();
          }
        },
      };
    });
    return f(x, w) as tf.Tensor2D;
  }
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: withW((wo) => mm(path, args[0] as tf.Tensor2D, wo, false, true)),
    gradFunc: (dy: tf.Tensor) => [withW((wo) => mm(path, dy as tf.Tensor2D, wo, false, false))],
  }));
  return f(x) as tf.Tensor2D;
}

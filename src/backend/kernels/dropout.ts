// Inverted dropout on the GPU: y = x · keep / (1 − rate), keep = u ≥ rate for u uniform in [0, 1) drawn
// from a counter-based hash of (seed, element index) — no mask tensor is stored, the backward pass
// recomputes the same mask from the seed (dx = dy · keep / (1 − rate)). tf.randomUniform draws on the CPU
// in tfjs and uploads: on a 3B model's LoRA inputs that was most of a training step.
// The hash is the "lowbias32" integer finaliser (Wellons) applied twice, mixing the seed in between;
// the top 24 bits become u. Elsewhere than webgpu: tf.randomUniform + compare (the model's old path).

import * as tf from '@tensorflow/tfjs-core';
import '../gradients';
import { assertFloat32, ElementwiseProgram, onWebGpu, runProgram } from './program';

/** WGSL `fn kLowbias32(v : u32) -> u32`: the hash every dropout mask is drawn with (lora-linear.ts too). */
export const DROPOUT_HASH_WGSL = `
    fn kLowbias32(v : u32) -> u32 {
      var x = v;
      x = x ^ (x >> 16u); x = x * 0x7feb352du;
      x = x ^ (x >> 15u); x = x * 0x846ca68bu;
      x = x ^ (x >> 16u);
      return x;
    }`;

/** Applies the mask of (seed, index) to X, scaled by 1 / (1 − rate). */
class DropoutProgram extends ElementwiseProgram {
  override uniforms = 'seed : u32, rate : f32, scale : f32,';

  constructor(shape: number[]) {
    super(['X'], shape, 'tsft_dropout');
  }

  getUserCode(): string {
    return `${DROPOUT_HASH_WGSL}
    fn main(index : i32) {
      if (index >= uniforms.size) { return; }
      let h = kLowbias32(kLowbias32(u32(index)) ^ uniforms.seed);
      let u = f32(h >> 8u) * (1.0 / 16777216.0);
      result[index] = select(0.0, X[index] * uniforms.scale, u >= uniforms.rate);
    }`;
  }
}

function applyMask(x: tf.Tensor, rate: number, seed: number): tf.Tensor {
  return runProgram(new DropoutProgram(x.shape), [x], [
    { type: 'uint32', data: [seed >>> 0] },
    { type: 'float32', data: [rate] },
    { type: 'float32', data: [1 / (1 - rate)] },
  ]);
}

/**
 * Inverted dropout of x with probability `rate`, the mask fixed by `seed` (same seed, same mask): one
 * kernel on webgpu, differentiable (the backward pass regenerates the mask); tfjs ops elsewhere.
 *
 * @example
 * const y = dropoutFused(x, 0.05, rng.nextU32());
 */
export function dropoutFused<T extends tf.Tensor>(x: T, rate: number, seed: number): T {
  if (!(rate >= 0 && rate < 1)) throw new RangeError(`dropout: rate must be in [0, 1), got ${rate}`);
  if (rate === 0) return x;
  if (!onWebGpu()) {
    return tf.tidy(() => {
      const keep = tf.greaterEqual(tf.randomUniform(x.shape, 0, 1, 'float32', seed), rate);
      return tf.mul(x, tf.mul(tf.cast(keep, 'float32'), 1 / (1 - rate)));
    }) as T;
  }
  assertFloat32('dropout', x);
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: applyMask(args[0] as tf.Tensor, rate, seed),
    gradFunc: (dy: tf.Tensor) => [applyMask(dy, rate, seed)],
  }));
  return f(x) as T;
}

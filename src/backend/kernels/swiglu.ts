// SwiGLU gate fused: y = silu(g)·u = g·σ(g)·u, one thread per element. Backward (tf.customGrad), with
// s = σ(g): dg = dy·u·s·(1 + g·(1 − s)), du = dy·g·s — two programs (tfjs runs one output per program).
// Elsewhere than webgpu: the model's tfjs ops (src/model/qwen2.ts siluGate).

import * as tf from '@tensorflow/tfjs-core';
import '../gradients';
import { assertFloat32, ElementwiseProgram, onWebGpu, runProgram } from './program';

type SwiGluMode = 'forward' | 'dgate' | 'dup';

/** 'forward': G, U → y. 'dgate': G, U, Dy → dg. 'dup': G, Dy → du. (Every input must appear in the code: tfjs binds by the pipeline's 'auto' layout.) */
class SwiGluProgram extends ElementwiseProgram {
  constructor(readonly mode: SwiGluMode, shape: number[]) {
    super({ forward: ['G', 'U'], dgate: ['G', 'U', 'Dy'], dup: ['G', 'Dy'] }[mode], shape, `tsft_swiglu_${mode}`);
  }

  getUserCode(): string {
    const value = {
      forward: 'g * s * U[index]',
      dgate: 'Dy[index] * U[index] * s * (1.0 + g * (1.0 - s))',
      dup: 'Dy[index] * g * s',
    }[this.mode];
    return `
    fn main(index : i32) {
      if (index >= uniforms.size) { return; }
      let g = G[index];
      let s = 1.0 / (1.0 + exp(-g));
      result[index] = ${value};
    }`;
  }
}

/**
 * silu(gate)·up (transformers' act_fn(gate_proj(x)) * up_proj(x)) as one kernel on webgpu, tfjs ops
 * elsewhere. Differentiable w.r.t. both inputs.
 *
 * @param gate [..., F] float32
 * @param up same shape as gate
 * @example
 * const h = siluGateFused(linear(x, gateW), linear(x, upW));     // [N, F]
 */
export function siluGateFused<T extends tf.Tensor>(gate: T, up: T): T {
  if (!tf.util.arraysEqual(gate.shape, up.shape)) throw new RangeError(`siluGateFused: gate ${gate.shape} and up ${up.shape} differ`);
  if (!onWebGpu()) return tf.mul(tf.mul(gate, tf.sigmoid(gate)), up) as T;
  assertFloat32('siluGateFused', gate, up);
  const f = tf.customGrad(((g: tf.Tensor, u: tf.Tensor, save: tf.GradSaveFunc) => {
    save([g, u]);
    return {
      value: runProgram(new SwiGluProgram('forward', g.shape), [g, u]),
      gradFunc: (dy: tf.Tensor, [sg, su]: tf.Tensor[]) => [
        runProgram(new SwiGluProgram('dgate', sg.shape), [sg, su, dy]),
        runProgram(new SwiGluProgram('dup', sg.shape), [sg, dy]),
      ],
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(gate, up) as T;
}

// Which implementation runs training's two hot spots on the current tfjs backend — the cross-entropy of the
// LM head (hidden states × a 151,936-token vocabulary) and the AdamW step with gradient clipping:
//
//   backend     cross-entropy                                   AdamW + clip
//   wasm, cpu   'cpu'    src/backend/cpu (wasm SIMD, all cores)  CpuAdamW (moments in the kernels' memory)
//   webgpu      'webgpu' src/backend/kernels/cross-entropy.ts    src/backend/kernels/adamw.ts
//                        (f32; computeDtype 'float16': f16 tensor-core matmuls, crossEntropyFromHiddenF16)
//   other       'ops'    plain tfjs ops                          plain tfjs ops (src/train/optimizer.ts)
//
// All three compute the same numbers (tests/model.test.ts and tests/train.test.ts run on each path).
// TSFT_KERNELS=ops (or setKernelPath('ops')) forces the plain tfjs ops anywhere, for comparison and debugging.

import * as tf from '@tensorflow/tfjs-core';
import { cpuCrossEntropy } from './cpu/index';
import { crossEntropyFromHidden, crossEntropyFromHiddenF16, crossEntropyStock } from './kernels/cross-entropy';
import { HalfTensor } from './kernels/matmul-f16';
import { computeDtype } from './precision';
import { ConfigError } from '../errors';

/** 'cpu': the wasm-SIMD kernels; 'webgpu': the WGSL kernels; 'ops': plain tfjs ops. */
export type KernelPath = 'cpu' | 'webgpu' | 'ops';

const KERNEL_PATHS: readonly string[] = ['cpu', 'webgpu', 'ops', 'auto'];
let forced: KernelPath | 'auto' | null = null;

/** The path the backend gets when nothing forces one. */
function naturalPath(backend: string): KernelPath {
  if (backend === 'wasm' || backend === 'cpu') return 'cpu';
  if (backend === 'webgpu') return 'webgpu';
  return 'ops';
}

/**
 * The kernel path for the current tfjs backend: setKernelPath's choice, else env TSFT_KERNELS
 * ('auto' | 'ops'), else the backend's fast path. A forced fast path that the backend cannot run is an error.
 * @example
 *   kernelPath();   // 'cpu' on wasm
 */
export function kernelPath(): KernelPath {
  const natural = naturalPath(tf.getBackend());
  const env = process.env.TSFT_KERNELS?.trim().toLowerCase();
  if (env && !KERNEL_PATHS.includes(env)) throw new ConfigError(`TSFT_KERNELS=${process.env.TSFT_KERNELS}: use 'auto' (the backend's fast kernels) or 'ops' (plain tfjs ops)`);
  const want = forced ?? (env as KernelPath | 'auto' | undefined) ?? 'auto';
  if (want === 'auto' || want === natural) return natural;
  if (want === 'ops') return 'ops';
  throw new ConfigError(`kernel path '${want}' cannot run on the tfjs backend '${tf.getBackend()}' (its fast path is '${natural}'); use 'auto' or 'ops'`);
}

/**
 * Force a kernel path for this process ('ops' for the plain tfjs reference), or null to go back to
 * TSFT_KERNELS / the backend's default. Returns the previous setting.
 * @example
 *   const prev = setKernelPath('ops');   // compare against plain tfjs
 *   try { ... } finally { setKernelPath(prev); }
 */
export function setKernelPath(path: KernelPath | 'auto' | null): KernelPath | 'auto' | null {
  if (path !== null && !KERNEL_PATHS.includes(path)) throw new ConfigError(`setKernelPath: '${path}' is not one of ${KERNEL_PATHS.join(', ')}`);
  const prev = forced;
  forced = path;
  return prev;
}

export interface LmHeadLoss {
  /** scalar: mean (or sum) of the token losses; differentiable w.r.t. hidden and weight */
  loss: tf.Scalar;
  /** float32 scalar: rows whose argmax(logits) is the target (ties: the lowest index, as tf.argMax) */
  correct: tf.Scalar;
}

/** The plain tfjs ops: [N, V] logits, logsumexp, the target logit gathered (no one-hot). */
function lmHeadLossOps(hidden: tf.Tensor2D, weight: tf.Tensor2D, targets: readonly number[], sum: boolean): LmHeadLoss {
  // crossEntropyStock gathers the label logits in row blocks: a flat gather over N·V ≥ 2^24 elements picks
  // the wrong logits on webgpu (its indices go through f32)
  const { tokenLoss, correct } = crossEntropyStock(hidden, weight, tf.tensor1d([...targets], 'int32'));    // [N]
  const loss = (sum ? tf.sum(tokenLoss) : tf.mean(tokenLoss)) as tf.Scalar;
  return { loss, correct };
}

/** Mixed-precision options of {@link lmHeadCrossEntropy} (used when computeDtype() is 'float16' on webgpu). */
export interface LmHeadLossOptions {
  /** the LM head's f16 copy the caller keeps (matmul-f16.ts's HalfTensor); else one is made per call */
  weightHalf?: HalfTensor;
  /** false when the LM head is frozen (LoRA's tied embedding): no dW matmul; default true */
  weightGrad?: boolean;
}

/**
 * Token cross-entropy of `hidden · weightᵀ` against `targets` on the current kernel path, with the
 * argmax-correct count: the LM head's loss without materialising the [N, V] logits on the fast paths.
 * Differentiable w.r.t. hidden and weight (tf.variableGrads / tf.grads flow through it). On webgpu under
 * computeDtype 'float16' the three matmuls run on f16 tensor cores (f32 accumulation, f32 gradients).
 *
 * @param hidden [N, H] float32: hidden states of the labelled positions
 * @param weight [V, H] float32: the LM head (or the tied embedding); or a HalfTensor of it held in f16 only
 *   (frozen: webgpu with computeDtype 'float16', no dW)
 * @param targets N token ids in [0, V)
 * @example
 *   const { loss, correct } = lmHeadCrossEntropy(h, lmHead, [785, 220], 'mean');
 */
export function lmHeadCrossEntropy(
  hidden: tf.Tensor2D,
  weight: tf.Tensor2D | HalfTensor,
  targets: readonly number[],
  reduction: 'mean' | 'sum' = 'mean',
  opts: LmHeadLossOptions = {},
): LmHeadLoss {
  const sum = reduction === 'sum';
  if (weight instanceof HalfTensor) {
    // a frozen LM head held in f16 only (LoRA under mixed precision): the f16 kernels, no dW
    if (kernelPath() !== 'webgpu' || computeDtype() !== 'float16') throw new Error('lmHeadCrossEntropy: an f16-held LM head needs webgpu with computeDtype float16');
    const t = tf.tensor1d([...targets], 'int32');
    const { loss, correct } = crossEntropyFromHiddenF16(hidden, weight, t, { reduction, weightGrad: false });
    return { loss: loss as tf.Scalar, correct };
  }
  switch (kernelPath()) {
    case 'cpu': {
      const { loss, correct } = cpuCrossEntropy(hidden, weight, targets, { reduction });
      return { loss, correct };
    }
    case 'webgpu': {
      const t = tf.tensor1d([...targets], 'int32');
      const { loss, correct } = computeDtype() === 'float16'
        ? crossEntropyFromHiddenF16(hidden, weight, t, { reduction, weightHalf: opts.weightHalf, weightGrad: opts.weightGrad })
        : crossEntropyFromHidden(hidden, weight, t, { reduction });
      return { loss: loss as tf.Scalar, correct };
    }
    default:
      return lmHeadLossOps(hidden, weight, targets, sum);
  }
}

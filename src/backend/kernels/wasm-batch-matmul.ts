// BatchMatMul for the wasm backend with transposes made explicit. tfjs-backend-wasm 4.22 sends only
// untransposed products to XNNPACK; a transposed operand falls to a scalar loop that runs 5–30× slower
// (measured on 2 cores: x·Wᵀ [256,128]·[128,32768] 0.85 GFLOP/s vs 4.7 with W transposed first; Lᵀ·h
// 0.20 vs 5.5). Every linear layer (x·Wᵀ) and every matmul gradient hits that path, so this wrapper
// transposes the operand first (memory-bound, cheap) and calls the original kernel untransposed.

import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  disposeData(dataId: object): boolean;
}

let original: tf.KernelFunc | null = null;

function transposeLast2(x: tf.TensorInfo, backend: object): tf.TensorInfo {
  const rank = x.shape.length;
  const perm = [...Array(rank - 2).keys(), rank - 1, rank - 2];
  const transpose = tf.getKernel(tf.Transpose, 'wasm')!.kernelFunc;
  return transpose({ inputs: { x }, attrs: { perm }, backend }) as tf.TensorInfo;
}

const batchMatMulExplicitTranspose: tf.KernelFunc = ({ inputs, attrs, backend }) => {
  const { a, b } = inputs as unknown as { a: tf.TensorInfo; b: tf.TensorInfo };
  const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
  if (!transposeA && !transposeB) return original!({ inputs, attrs, backend });
  const a2 = transposeA ? transposeLast2(a, backend) : a;
  const b2 = transposeB ? transposeLast2(b, backend) : b;
  try {
    return original!({ inputs: { a: a2, b: b2 }, attrs: { ...attrs, transposeA: false, transposeB: false }, backend });
  } finally {
    if (a2 !== a) (backend as unknown as WasmBackendLike).disposeData(a2.dataId);
    if (b2 !== b) (backend as unknown as WasmBackendLike).disposeData(b2.dataId);
  }
};

/** Install the wrapper once the wasm backend's kernels are registered (idempotent). */
export function installWasmBatchMatMul(): void {
  const k = tf.getKernel(tf.BatchMatMul, 'wasm');
  if (!k || k.kernelFunc === batchMatMulExplicitTranspose) return;
  original = k.kernelFunc;
  tf.unregisterKernel(tf.BatchMatMul, 'wasm');
  tf.registerKernel({ ...k, kernelFunc: batchMatMulExplicitTranspose });
}

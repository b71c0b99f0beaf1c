// BatchMatMul for the wasm backend with transposes made explicit. tfjs-backend-wasm 4.22 sends only
// untransposed products to XNNPACK; a transposed operand falls to a scalar loop that runs 5–30× slower
// (measured on 2 cores: x·Wᵀ [256,128]·[128,32768] 0.85 GFLOP/s vs 4.7 with W transposed first; Lᵀ·h
// 0.20 vs 5.5). Every linear layer (x·Wᵀ) and every matmul gradient hits that path. This wrapper turns
// each product into an untransposed one by the cheapest rewrite, counting elements moved:
//   A·Bᵀ = A·T(B)          (moves |B|)     or  T(B·T(A))   (moves |A| + |C|)   — decode: B is the LM head
//   Aᵀ·B = T(A)·B          (moves |A|)     or  T(T(B)·A)   (moves |B| + |C|)
//   Aᵀ·Bᵀ = T(B·A)         (moves |C|)
// where T transposes the last two axes (memory-bound, cheap next to the product).

import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  disposeData(dataId: object): boolean;
}

let original: tf.KernelFunc | null = null;

const size = (t: tf.TensorInfo) => t.shape.reduce((a, b) => a * b, 1);

function T(x: tf.TensorInfo, backend: object): tf.TensorInfo {
  const rank = x.shape.length;
  const perm = [...Array(rank - 2).keys(), rank - 1, rank - 2];
  return tf.getKernel(tf.Transpose, 'wasm')!.kernelFunc({ inputs: { x }, attrs: { perm }, backend }) as tf.TensorInfo;
}

const batchMatMulExplicitTranspose: tf.KernelFunc = ({ inputs, attrs, backend }) => {
  const { a, b } = inputs as unknown as { a: tf.TensorInfo; b: tf.TensorInfo };
  const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
  if (!transposeA && !transposeB) return original!({ inputs, attrs, backend });
  const temps: tf.TensorInfo[] = [];
  const tmp = (t: tf.TensorInfo) => (temps.push(t), t);
  const mm = (x: tf.TensorInfo, y: tf.TensorInfo) =>
    original!({ inputs: { a: x, b: y }, attrs: { ...attrs, transposeA: false, transposeB: false }, backend }) as tf.TensorInfo;
  const rank = a.shape.length;
  const M = transposeA ? a.shape[rank - 1] : a.shape[rank - 2];
  const N = transposeB ? b.shape[b.shape.length - 2] : b.shape[b.shape.length - 1];
  const batch = Math.max(size(a) / (a.shape[rank - 1] * a.shape[rank - 2]), size(b) / (b.shape.at(-1)! * b.shape.at(-2)!));
  const sizeC = batch * M * N;
  try {
    if (transposeA && transposeB) return T(tmp(mm(b, a)), backend);
    if (transposeB) {
      if (size(a) + sizeC < size(b)) return T(tmp(mm(b, tmp(T(a, backend)))), backend);
      return mm(a, tmp(T(b, backend)));
    }
    if (size(b) + sizeC < size(a)) return T(tmp(mm(tmp(T(b, backend)), a)), backend);
    return mm(tmp(T(a, backend)), b);
  } finally {
    for (const t of temps) (backend as unknown as WasmBackendLike).disposeData(t.dataId);
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

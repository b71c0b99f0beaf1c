// UnsortedSegmentSum for the wasm backend, which lacks it. tf.gather's gradient (embeddings, the
// loss's label gather) needs it: out[ids[i]] += x[i] over rows of x. Runs in JS over the wasm heap —
// a scatter-add is memory-bound, so this is as fast as a C version would be at these sizes.

import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

export const wasmUnsortedSegmentSumConfig: tf.KernelConfig = {
  kernelName: tf.UnsortedSegmentSum,
  backendName: 'wasm',
  kernelFunc: ({ inputs, attrs, backend }) => {
    const { x, segmentIds } = inputs as unknown as tf.UnsortedSegmentSumInputs & { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
    const { numSegments } = attrs as unknown as tf.UnsortedSegmentSumAttrs;
    const b = backend as unknown as WasmBackendLike;
    const rows = segmentIds.shape.reduce((a, d) => a * d, 1);
    const inner = x.shape.slice(segmentIds.shape.length).reduce((a, d) => a * d, 1);
    const out = b.makeOutput([numSegments, ...x.shape.slice(segmentIds.shape.length)], x.dtype);
    const o = b.typedArrayFromHeap(out);
    o.fill(0);
    const xv = b.typedArrayFromHeap(x), ids = b.typedArrayFromHeap(segmentIds);
    for (let i = 0; i < rows; i++) {
      const seg = ids[i];
      if (seg < 0 || seg >= numSegments) continue; // as TensorFlow: out-of-range ids are dropped
      const src = i * inner, dst = seg * inner;
      for (let j = 0; j < inner; j++) o[dst + j] += xv[src + j];
    }
    return out;
  },
};

if (!tf.getKernel(tf.UnsortedSegmentSum, 'wasm')) tf.registerKernel(wasmUnsortedSegmentSumConfig);

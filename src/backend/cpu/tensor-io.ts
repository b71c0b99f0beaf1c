// Moving tensor data between tfjs and the CPU kernels' shared memory with as few copies as the backend
// allows. On the wasm backend a tensor's values sit in tfjs's own wasm heap: we read (and, for AdamW, write)
// them there directly, where dataSync() would make one more copy. On the cpu backend dataSync() already
// returns the tensor's own array. Other backends go through dataSync() (CPU kernels: not for webgpu).
// Views into tfjs's heap are valid only until tfjs allocates again: use them at once.

import * as tf from '@tensorflow/tfjs-core';

interface DataStorageLike<T> {
  has(dataId: object): boolean;
  get(dataId: object): T;
}

interface WasmBackendLike {
  dataIdMap: DataStorageLike<{ memoryOffset: number | null; refCount: number }>;
  wasm: { HEAPU8: Uint8Array };
}

interface CpuBackendLike {
  data: DataStorageLike<{ values?: ArrayLike<number>; refCount: number }>;
}

/** A backend that is already initialised (never starts one). */
function backendOf(name: string): unknown {
  return tf.engine().registry[name];
}

/** The tensor's float32 values in place (no copy), or null when its backend keeps them elsewhere. */
function ownValues(t: tf.Tensor): { values: Float32Array; refCount: number } | null {
  const wasm = backendOf('wasm') as WasmBackendLike | undefined;
  if (wasm?.dataIdMap?.has(t.dataId)) {
    const info = wasm.dataIdMap.get(t.dataId);
    if (info.memoryOffset == null) return null;
    return { values: new Float32Array(wasm.wasm.HEAPU8.buffer, info.memoryOffset, t.size), refCount: info.refCount };
  }
  const cpu = backendOf('cpu') as CpuBackendLike | undefined;
  if (cpu?.data?.has(t.dataId)) {
    const info = cpu.data.get(t.dataId);
    if (!(info.values instanceof Float32Array) || info.values.length !== t.size) return null;
    return { values: info.values, refCount: info.refCount };
  }
  return null;
}

function checkFloat32(t: tf.Tensor, what: string): void {
  if (t.dtype !== 'float32') throw new TypeError(`${what}: expected a float32 tensor, got ${t.dtype}`);
}

/**
 * The tensor's values, read without a copy where the backend allows (wasm heap, cpu array), else through
 * dataSync(). Read-only; valid until the next tfjs operation.
 */
export function tensorValues(t: tf.Tensor, what = 'tensor'): Float32Array {
  checkFloat32(t, what);
  return ownValues(t)?.values ?? (t.dataSync() as Float32Array);
}

/**
 * A view of the tensor's storage that may be written in place (its backend keeps it on the CPU and no other
 * tensor shares it), or null. Valid until the next tfjs operation.
 */
export function writableValues(t: tf.Tensor): Float32Array | null {
  if (t.dtype !== 'float32') return null;
  const own = ownValues(t);
  return own && own.refCount === 1 ? own.values : null;
}

/**
 * Copies a [rows, cols] row-major matrix into `dst` with rows `stride` floats apart (stride ≥ cols; the
 * padding columns are zeroed).
 */
export function copyRows(src: Float32Array, rows: number, cols: number, dst: Float32Array, stride: number): void {
  if (stride === cols) {
    dst.set(src.subarray(0, rows * cols));
    return;
  }
  for (let r = 0; r < rows; r++) {
    dst.set(src.subarray(r * cols, (r + 1) * cols), r * stride);
    dst.fill(0, r * stride + cols, (r + 1) * stride);
  }
}

/**
 * A new tensor holding a copy of `rows` rows of `cols` floats taken `stride` apart from `src` (a view into
 * the shared memory, which the next kernel call overwrites). One copy: the wasm backend copies into its heap
 * on creation; for the others we copy first (they would keep a reference to the array).
 */
export function tensorFromRows(src: Float32Array, rows: number, cols: number, stride: number, shape: number[]): tf.Tensor {
  let values: Float32Array;
  if (stride === cols) {
    values = src.subarray(0, rows * cols);
    if (tf.getBackend() !== 'wasm') values = values.slice();
  } else {
    values = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) values.set(src.subarray(r * stride, r * stride + cols), r * cols);
  }
  return tf.tensor(values, shape, 'float32');
}

// Memory accounting for logs (`memory(GiB)`): what tfjs says the active backend holds, plus GPU buffers
// that tsft's own kernels keep outside tfjs (registered pools), and a running peak.
// The peak is polled — it rises only when deviceMemory() is called — so call it where memory is highest
// (after backward) to make it mean something.

import * as tf from '@tensorflow/tfjs-core';

/** A snapshot of the active backend's memory. */
export interface DeviceMemory {
  /** tfjs backend name, or '' before any backend started. */
  backend: string;
  /** Bytes of live tensors, as tfjs counts them (all backends). */
  tensorBytes: number;
  /**
   * Bytes the device holds (like torch's "reserved"): webgpu — GPU buffers allocated, including tfjs's
   * pool of free buffers and tsft's own registered pools ({@link registerGpuPool}); wasm — the wasm heap (it never shrinks); cpu and others — tensorBytes.
   */
  allocatedBytes: number;
  /** Highest allocatedBytes seen by any call so far (since {@link resetPeakMemory}). */
  peakBytes: number;
  numTensors: number;
}

let peak = 0;

/** GPU buffers kept outside tfjs (kernel scratch, f16 weight copies): name → bytes held now. */
const pools = new Map<string, () => number>();

/**
 * Counts a pool of GPU buffers that tsft allocates itself (not through tfjs) in {@link deviceMemory}'s
 * webgpu figures. Returns a function that unregisters it.
 *
 * @example
 * const unregister = registerGpuPool('f16-weights', () => f16Bytes);
 */
export function registerGpuPool(name: string, bytes: () => number): () => void {
  pools.set(name, bytes);
  return () => void pools.delete(name);
}

/** Bytes held by the registered pools. */
function poolBytes(): number {
  let n = 0;
  for (const f of pools.values()) n += f();
  return n;
}

/**
 * Reads the active backend's memory and updates the running peak.
 *
 * @example
 * const m = deviceMemory();
 * log({ 'memory(GiB)': toGiB(m.peakBytes) });
 */
export function deviceMemory(): DeviceMemory {
  const engine = tf.engine();
  const backend = engine.backendName ?? '';
  // engine.state is always there; tf.memory() would start a default backend when none is active.
  const { numBytes, numTensors } = engine.state;
  let allocated = numBytes;
  if (backend === 'webgpu') {
    const m = tf.memory() as tf.MemoryInfo & { numBytesAllocatedInGPU?: number };
    allocated = (m.numBytesAllocatedInGPU ?? numBytes) + poolBytes();
  } else if (backend === 'wasm') {
    const heap = (tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } }).wasm?.HEAPU8;
    allocated = heap ? heap.buffer.byteLength : numBytes;
  }
  peak = Math.max(peak, allocated);
  return { backend, tensorBytes: numBytes, allocatedBytes: allocated, peakBytes: peak, numTensors };
}

/** Starts a new peak from the current allocation (e.g. after loading the model, before training). */
export function resetPeakMemory(): void {
  peak = 0;
  deviceMemory();
}

/**
 * Bytes to GiB, two decimals, as logs show them.
 *
 * @example
 * toGiB(3 * 2 ** 30) // 3
 */
export function toGiB(bytes: number): number {
  return Math.round((bytes / 2 ** 30) * 100) / 100;
}

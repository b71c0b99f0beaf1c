// Memory accounting for logs (`memory(GiB)`): what tfjs says the active backend holds, plus GPU buffers
// that tsft's own kernels keep outside tfjs (registered pools), tfjs's pool of free GPU buffers reported
// apart, and a peak. On webgpu the memory guard (memory-guard.ts) sees every allocation, so the peak is
// exact; elsewhere it is polled — it rises only when deviceMemory() is called — so call it where memory
// is highest (after backward) to make it mean something.

import * as tf from '@tensorflow/tfjs-core';
import { gpuGuardStats, gpuPooledBytes, registeredPoolBytes, resetGpuPeak } from './memory-guard';

export { registerGpuPool, releasePooledGpuBuffers } from './memory-guard';

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
  /**
   * Highest allocatedBytes since {@link resetPeakMemory}: on webgpu with the memory guard, checked at every
   * buffer allocation (exact); elsewhere the highest any deviceMemory() call saw.
   */
  peakBytes: number;
  numTensors: number;
  /** webgpu: bytes in tfjs's pool of free buffers (kept for reuse, dropped under memory pressure); else 0 */
  pooledBytes: number;
  /** webgpu: bytes of tsft's own registered pools ({@link registerGpuPool}); else 0 */
  registeredPoolBytes: number;
  /** webgpu: what the memory guard lets tsft use (bytes), when the GPU's size is known */
  budgetBytes?: number;
}

let peak = 0;

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
  let pooled = 0, registered = 0, budget: number | undefined;
  if (backend === 'webgpu') {
    const m = tf.memory() as tf.MemoryInfo & { numBytesAllocatedInGPU?: number };
    registered = registeredPoolBytes();
    allocated = (m.numBytesAllocatedInGPU ?? numBytes) + registered;
    pooled = gpuPooledBytes();
    const g = gpuGuardStats();
    if (g) {
      peak = Math.max(peak, g.peakBytes);
      budget = g.info.budgetBytes;
    }
  } else if (backend === 'wasm') {
    const heap = (tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } }).wasm?.HEAPU8;
    allocated = heap ? heap.buffer.byteLength : numBytes;
  }
  peak = Math.max(peak, allocated);
  return {
    backend, tensorBytes: numBytes, allocatedBytes: allocated, peakBytes: peak, numTensors,
    pooledBytes: pooled, registeredPoolBytes: registered, budgetBytes: budget,
  };
}

/** Starts a new peak from the current allocation (e.g. after loading the model, before training). */
export function resetPeakMemory(): void {
  peak = 0;
  resetGpuPeak();
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

// The CPU fast path as one import: hand-written WebAssembly SIMD (kernels.c) on a pool of worker threads over
// a shared memory, for the wasm and cpu tfjs backends — cross-entropy straight from hidden states (the LM head
// over a 151,936-token vocabulary without tfjs holding [N, V] logits) and AdamW with gradient clipping.
// bench/cpu-kernels.ts measures them against the same math in tfjs ops.

import { warmUpCpuAdamW } from './adamw';
import { warmUpCpuCrossEntropy } from './cross-entropy';
import { cpuKernelsReady } from './runtime';

export { CpuAdamW, type CpuAdamWConfig, type CpuAdamWParam, type CpuAdamWStepOptions, type CpuAdamWStepResult, type CpuAdamWVariable } from './adamw';
export { cpuCrossEntropy, releaseCpuCrossEntropyMemory, type CpuCrossEntropyOptions, type CpuCrossEntropyOutput } from './cross-entropy';
export { cpuKernels, cpuKernelsReady, defaultCpuThreads, shutdownCpuKernels } from './runtime';

/**
 * Starts the worker pool and runs every kernel once on a small problem (~50 ms), so that the first training
 * step runs V8's optimised code (the first call of a cold kernel is several times slower); resolves with the
 * number of threads. Optional: the kernels work without it.
 * @example
 *   const threads = await prepareCpuKernels();   // 2 on a 2-core machine
 *   // ... train with cpuCrossEntropy / CpuAdamW ...
 *   await shutdownCpuKernels();
 */
export async function prepareCpuKernels(): Promise<number> {
  const threads = await cpuKernelsReady();
  warmUpCpuCrossEntropy();
  warmUpCpuAdamW();
  return threads;
}

// The compute precision of the webgpu path (issue 8's mixed precision): 'float32' runs every kernel in
// f32; 'float16' feeds f16 operands to the tensor-core kernels (subgroup-matrix matmuls, attention, the
// LM head's cross-entropy) with f32 accumulation, while master weights, gradients and optimizer state
// stay f32 (torch.autocast's split). WGSL has no bf16, so `bf16: true` on webgpu selects 'float16'.
// Elsewhere (cpu, wasm) the setting is ignored: those paths compute in f32.

export type ComputeDtype = 'float32' | 'float16';

let current: ComputeDtype = process.env.TSFT_COMPUTE_DTYPE === 'float16' ? 'float16' : 'float32';

/** The compute precision kernels should use now. */
export function computeDtype(): ComputeDtype {
  return current;
}

/** Sets the compute precision (the trainer does this from `bf16` / `fp16` / `torch_dtype`). */
export function setComputeDtype(dtype: ComputeDtype): void {
  if (dtype !== 'float32' && dtype !== 'float16') throw new RangeError(`compute dtype must be 'float32' or 'float16', got ${String(dtype)}`);
  current = dtype;
}

/**
 * Runs f with the compute precision set to dtype, restoring the previous one afterwards.
 * @example const y = withComputeDtype('float16', () => model.loss(ids, labels));
 */
export function withComputeDtype<T>(dtype: ComputeDtype, f: () => T): T {
  const before = current;
  setComputeDtype(dtype);
  try {
    return f();
  } finally {
    current = before;
  }
}

// Parameter counts as ms-swift's get_model_parameter_info prints them.

import type { Qwen2ForCausalLM } from '../model/qwen2';

export interface ModelParameterInfo {
  total: number;
  trainable: number;
  /** non-parameter buffers (RoPE's inv_freq), as transformers registers them */
  buffers: number;
  toString(): string;
}

/**
 * Total / trainable parameter counts.
 * @example
 *   logger.info(`model_parameter_info: ${getModelParameterInfo(model)}`);
 *   // Qwen3ForCausalLM: 4022.4681M Params (4022.4681M Trainable [100.0000%]), 0.0001M Buffers.
 */
export function getModelParameterInfo(model: Qwen2ForCausalLM): ModelParameterInfo {
  let total = 0, trainable = 0;
  for (const v of model.namedParameters().values()) {
    total += v.size;
    if (v.trainable) trainable += v.size;
  }
  const buffers = model.config.headDim / 2;
  const name = model.constructor.name;
  const m = (n: number) => (n / 1e6).toFixed(4) + 'M';
  return {
    total, trainable, buffers,
    toString: () => `${name}: ${m(total)} Params (${m(trainable)} Trainable [${(total ? (100 * trainable) / total : 0).toFixed(4)}%]), ${m(buffers)} Buffers.`,
  };
}

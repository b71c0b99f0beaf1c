// Random weights for benchmarks, fast enough for billions of parameters: every matrix is a view of one
// shared pool of uniform values (std 0.02), norms are ones, biases zeros. Throughput does not depend on
// the values, and drawing 3e9 Box–Muller normals in JS (createModel(..., 'random')) costs minutes.

import { parameterShapes, type QwenConfig } from '../src/model/config';

/**
 * Every parameter the config implies, as createModel takes them (views of one pool, no copies).
 *
 * @example
 * const model = createModel(config, poolWeights(config));
 */
export function poolWeights(config: QwenConfig): Map<string, { shape: number[]; data: Float32Array }> {
  const shapes = parameterShapes(config);
  const sizes = [...shapes.values()].map((s) => s.reduce((a, b) => a * b, 1));
  const spare = 1 << 20;
  const pool = new Float32Array(Math.max(...sizes) + spare);
  const a = 0.02 * Math.sqrt(3);
  let x = 0x9e3779b9;
  for (let i = 0; i < pool.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    pool[i] = ((x >>> 0) / 2 ** 32 * 2 - 1) * a;
  }
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  let i = 0;
  for (const [name, shape] of shapes) {
    const n = sizes[i++];
    const data = name.endsWith('norm.weight') ? new Float32Array(n).fill(1)
      : name.endsWith('.bias') ? new Float32Array(n)
      : pool.subarray((i * 7919) % spare, (i * 7919) % spare + n);
    weights.set(name, { shape, data });
  }
  return weights;
}

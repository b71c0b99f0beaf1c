// Decode speed of the inference engine's token loop (DecodeBatch: batched forward with the KV cache,
// greedy argmax on the device): tokens/s after the prefill, at batch 1 and 8, on random weights of
// real model shapes. bench/decode_hf.py measures transformers' `generate` on the same shapes.
//
//   npx tsx bench/decode.ts [--shapes tiny,qwen3-0.6b,qwen2.5-3b] [--batch 1,8] [--tokens 32] [--prompt 32] [--device wasm]
//   GPU box: bash ../shared/gpu/pack.sh bench/decode.ts && node .gpu/decode.mjs --device webgpu --shapes qwen3-0.6b,qwen2.5-3b
//
// Measured on the 2-core CPU box, tiny (Qwen3 shape, 4 layers × 128, vocab 151,936), prompt 32, 16 steps, while
// other jobs kept the load average near 6 (so absolute numbers are low; compare rows of one run):
//   | tiny | wasm | 1 | 16 |  2.0 tok/s | 500 ms/step |
//   | tiny | wasm | 8 | 16 | 15.3 tok/s | 522 ms/step |
//   | tiny | cpu  | 1 | 16 |  4.3 tok/s | 232 ms/step |
//   | tiny | cpu  | 8 | 16 |  5.3 tok/s | 1519 ms/step |
// The tiny model's step is almost all the LM head, [B, 128] · [151,936, 128]ᵀ. wasm's BatchMatMul wrapper
// (src/backend/kernels/wasm-batch-matmul.ts) transposes the 151,936 × 128 weight on every call; computing
// (W · hᵀ)ᵀ instead (transpose the small side and the small result) takes a step to 118 ms at batch 1 and 8
// under the same load (4.3× faster). Before that wrapper, on a quiet box, batch 1 ran at ~26 tok/s.

import { DecodeBatch } from '../src/model/generate';
import { initDevice, parseDeviceName, shutdownDevice } from '../src/backend/device';
import { resolveConfig, type QwenConfigJson } from '../src/model/config';
import { createModel } from '../src/model/loader';
import { TINY_CONFIG } from '../src/model/tiny';
import { Random } from '../src/utils/seed';
import { poolWeights } from './weights';

const SHAPES: Record<string, QwenConfigJson> = {
  tiny: TINY_CONFIG,
  'qwen3-0.6b': {
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', vocab_size: 151936, hidden_size: 1024, intermediate_size: 3072,
    num_hidden_layers: 28, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 128, max_position_embeddings: 40960,
    rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true, attention_bias: false,
  },
  'qwen2.5-3b': {
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', vocab_size: 151936, hidden_size: 2048, intermediate_size: 11008,
    num_hidden_layers: 36, num_attention_heads: 16, num_key_value_heads: 2, max_position_embeddings: 32768,
    rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true,
  },
};

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

async function main(): Promise<void> {
  const device = parseDeviceName(arg('device', 'auto'), '--device');
  const info = await initDevice(device);
  const shapes = arg('shapes', 'tiny').split(',');
  const batches = arg('batch', '1,8').split(',').map(Number);
  const tokens = Number(arg('tokens', '32'));
  const promptLen = Number(arg('prompt', '32'));
  const rows: string[] = [];
  for (const shape of shapes) {
    const json = SHAPES[shape];
    if (!json) throw new Error(`unknown shape ${shape}; known: ${Object.keys(SHAPES).join(', ')}`);
    const config = resolveConfig(json, shape);
    const t0 = performance.now();
    const model = createModel(config, poolWeights(config));       // random values from one pool: seconds, not minutes
    console.error(`${shape}: built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const rng = new Random(0);
    for (const B of batches) {
      const batch = new DecodeBatch<number>(model);
      const prompts = Array.from({ length: B }, () => Array.from({ length: promptLen }, () => rng.int(json.vocab_size)));
      // never stop early: no eos, every row runs `tokens` steps
      const opts = { maxNewTokens: tokens + 3 };
      await batch.add(prompts.map((p, key) => ({ key, inputIds: p, options: opts })));
      await batch.step();
      await batch.step();                                  // warm-up: shaders / kernels for decode shapes
      const t0 = performance.now();
      for (let i = 0; i < tokens; i++) await batch.step();
      const s = (performance.now() - t0) / 1000;
      batch.dispose();
      const line = `| ${shape} | ${info.name} | ${B} | ${tokens} | ${(B * tokens / s).toFixed(1)} | ${(1000 * s / tokens).toFixed(1)} |`;
      console.log(line);
      rows.push(line);
    }
    model.dispose();
  }
  console.log(['', '| shape | device | batch | steps | decode tok/s | ms/step |', '|---|---|---|---|---|---|', ...rows].join('\n'));
  await shutdownDevice();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

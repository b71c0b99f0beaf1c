// `tsft sft` on the GPU box, where bin/tsft.js (tsx) can't run: this entry is the CLI's sft command bundled by
// ../shared/gpu/pack.sh. With `--random-model SHAPE DIR` first, it writes a random checkpoint of that
// shape (pooled weights, bench/weights.ts) with the Qwen tokenizer into DIR, for `--model DIR`.
//
//   ../shared/gpu/pack.sh bench/sft-gpu.ts
//   node .gpu/sft-gpu.mjs --model tiny --dataset tsft/self-cognition#500 --device webgpu ...
//   node .gpu/sft-gpu.mjs --random-model qwen3-0.6b /tmp/q06b --model /tmp/q06b --train_type full ...

import * as fs from 'node:fs';
import * as path from 'node:path';
import { shutdownDevice } from '../src/backend/device';
import { run as sft } from '../src/cli/sft';
import { resolveConfig, type QwenConfigJson } from '../src/model/config';
import { saveCheckpointTensors } from '../src/model/safetensors';
import { defaultTokenizerDir } from '../src/model/tokenizer';
import { poolWeights } from './weights';

const SHAPES: Record<string, QwenConfigJson> = {
  'qwen3-0.6b': {
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', vocab_size: 151936, hidden_size: 1024, intermediate_size: 3072,
    num_hidden_layers: 28, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 128, max_position_embeddings: 40960,
    rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true, attention_bias: false,
    bos_token_id: 151643, eos_token_id: 151645, pad_token_id: 151643, dtype: 'float32',
  },
};

async function writeRandomModel(shape: string, dir: string): Promise<void> {
  const json = SHAPES[shape];
  if (!json) throw new Error(`unknown shape ${shape}; known: ${Object.keys(SHAPES).join(', ')}`);
  fs.mkdirSync(dir, { recursive: true });
  await saveCheckpointTensors(dir, poolWeights(resolveConfig(json, shape)));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(json, null, 2) + '\n');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(defaultTokenizerDir(), f), path.join(dir, f));
}

async function run(): Promise<number> {
  let argv = process.argv.slice(2);
  if (argv[0] === '--random-model') {
    const t0 = performance.now();
    await writeRandomModel(argv[1], argv[2]);
    console.error(`wrote a random ${argv[1]} checkpoint to ${argv[2]} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    argv = argv.slice(3);
  }
  try {
    await sft(argv);
  } finally {
    await shutdownDevice();
  }
  return 0;
}

run().then((code) => process.exit(code), (e) => {
  console.error(e);
  process.exit(1);
});

// The tiny default model: Qwen3 architecture with the real Qwen tokenizer (vocab 151,936), a seeded
// random init, created on first use in the tsft cache folder. Small enough to fine-tune on a 2-core
// CPU in minutes; the offline default (npm start) teaches it a new identity.
// Sized for that job: 10.0 M parameters, 9.7 M of them the tied embedding, so the LM head's
// cross-entropy (∝ hidden_size × vocab per labelled token) is most of a training step. hidden_size 64
// halves it against 128; four layers learn the identity in ~150 steps where two learn it less cleanly
// (measured on the bundled data: see src/main.ts).

import * as fs from 'fs';
import * as path from 'path';
import { parameterShapes, resolveConfig, type QwenConfigJson } from './config';
import { saveCheckpointTensors } from './safetensors';
import { defaultTokenizerDir } from './tokenizer';
import { Random } from '../utils/seed';
import { tsftCacheDir } from '../utils/cache';
import { getLogger } from '../utils/logger';

/** Bumped whenever the tiny config or init changes, so a stale cached copy is never used. */
export const TINY_VERSION = 2;
const TINY_SEED = 20261127;

/** config.json of `tiny` (HF keys). */
export const TINY_CONFIG: QwenConfigJson = {
  architectures: ['Qwen3ForCausalLM'],
  model_type: 'qwen3',
  vocab_size: 151936,
  hidden_size: 64,
  intermediate_size: 256,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  tie_word_embeddings: true,
  attention_bias: false,
  hidden_act: 'silu',
  bos_token_id: 151643,
  eos_token_id: 151645,
  pad_token_id: 151643,
  dtype: 'float32',
  tsft_tiny_version: TINY_VERSION,
};

/** generation_config.json of `tiny` (as Qwen3 instruct models ship: stop on <|im_end|> / <|endoftext|>). */
export const TINY_GENERATION_CONFIG = {
  bos_token_id: 151643,
  eos_token_id: [151645, 151643],
  pad_token_id: 151643,
  do_sample: false,
};

/** The folder of the tiny model, created (atomically) on first use. */
export async function ensureTinyModel(cacheDir = tsftCacheDir()): Promise<string> {
  const dir = path.join(cacheDir, 'models', `tiny-v${TINY_VERSION}`);
  if (fs.existsSync(path.join(dir, 'config.json'))) return dir;
  getLogger().info(`creating the tiny default model in ${dir} (seeded random init, Qwen3 architecture, Qwen tokenizer)`);
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  const config = resolveConfig(TINY_CONFIG, 'tiny');
  const rng = new Random(TINY_SEED);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of parameterShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = name.endsWith('norm.weight') ? new Float32Array(n).fill(1) : rng.fillNormal(new Float32Array(n), 0, 0.02);
    tensors.set(name, { shape, data });
  }
  await saveCheckpointTensors(tmp, tensors);
  fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(TINY_CONFIG, null, 2) + '\n');
  fs.writeFileSync(path.join(tmp, 'generation_config.json'), JSON.stringify(TINY_GENERATION_CONFIG, null, 2) + '\n');
  const tokDir = defaultTokenizerDir();
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(tokDir, f), path.join(tmp, f));
  try {
    fs.renameSync(tmp, dir);
  } catch (e) {
    // another process made it first: keep theirs
    fs.rmSync(tmp, { recursive: true, force: true });
    if (!fs.existsSync(path.join(dir, 'config.json'))) throw e;
  }
  return dir;
}

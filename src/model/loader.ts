// getModelTokenizer: a local folder, a hub id (ModelScope by default, Hugging Face with useHf) or
// 'tiny' → { model, tokenizer }, as ms-swift's get_model_tokenizer. Checks config.json and every tensor's
// shape against it before building the model, with errors that name the file and tensor.

import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError, ConfigError } from '../errors';
import { initDevice, currentDevice, type DeviceName } from '../backend/device';
import { releasePooledGpuBuffers } from '../backend/memory-guard';
import { architectureOf, parameterShapes, resolveConfig, type QwenConfig, type QwenConfigJson } from './config';
import { Qwen2ForCausalLM } from './qwen2';
import { Qwen3ForCausalLM } from './qwen3';
import { loadCheckpointTensors, readSafetensorsHeader, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME } from './safetensors';
import { Tokenizer } from './tokenizer';
import { resolveLocalOrHub } from './hub';
import { ensureTinyModel } from './tiny';
import { getLogger } from '../utils/logger';

/** ms-swift model types tsft knows, and the template each uses. */
export const MODEL_TYPES = {
  qwen2_5: { architecture: 'qwen2', template: 'qwen2_5' },
  qwen3: { architecture: 'qwen3', template: 'qwen3' },
  qwen3_thinking: { architecture: 'qwen3', template: 'qwen3_thinking' },
} as const;
export type ModelType = keyof typeof MODEL_TYPES;

export interface GetModelTokenizerOptions {
  /** qwen2_5 | qwen3 | qwen3_thinking; inferred from config.json and the name when absent */
  modelType?: ModelType;
  /** webgpu | wasm | cpu | tensorflow | auto; default: the device already started, else auto */
  device?: DeviceName | 'auto';
  /** build the model (default true); false loads only the tokenizer */
  loadModel?: boolean;
  /** load the tokenizer (default true) */
  loadTokenizer?: boolean;
  /** download from Hugging Face instead of ModelScope */
  useHf?: boolean;
  /** hub revision (default: the hub's main branch) */
  revision?: string;
}

export interface ModelAndTokenizer {
  model: Qwen2ForCausalLM | null;
  tokenizer: Tokenizer | null;
}

/** A model built from a config and weights (or 'random'), of the class its architecture names. */
export function createModel(config: QwenConfig, weights: ConstructorParameters<typeof Qwen2ForCausalLM>[1]): Qwen2ForCausalLM {
  return config.modelType === 'qwen3' ? new Qwen3ForCausalLM(config, weights) : new Qwen2ForCausalLM(config, weights);
}

/** The model type a checkpoint is, from an explicit value, else its architecture and name. */
export function inferModelType(json: QwenConfigJson, nameOrPath: string, explicit?: string, where = 'config.json'): ModelType {
  const arch = architectureOf(json, where);
  if (explicit !== undefined) {
    if (!(explicit in MODEL_TYPES)) {
      throw new ConfigError(`model_type "${explicit}" is not supported; use one of ${Object.keys(MODEL_TYPES).join(', ')}`);
    }
    const want = MODEL_TYPES[explicit as ModelType].architecture;
    if (want !== arch) {
      throw new ConfigError(`model_type "${explicit}" needs a ${want} checkpoint, but ${where} describes ${arch}`);
    }
    return explicit as ModelType;
  }
  if (arch === 'qwen2') return 'qwen2_5';
  return /thinking/i.test(nameOrPath) ? 'qwen3_thinking' : 'qwen3';
}

function readJson(file: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    const dir = path.dirname(file);
    const have = fs.existsSync(dir) ? fs.readdirSync(dir).join(', ') || 'nothing' : 'the folder does not exist';
    throw new CheckpointError(`${file} is missing (${what}); the folder has: ${have}. Pass a transformers checkpoint folder or hub id.`);
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new CheckpointError(`${file} is not valid JSON (${(e as Error).message}): re-download or re-save it`);
  }
}

/** tensor name → file holding it (from the index when sharded). */
function tensorFiles(dir: string): Map<string, string> {
  const files = new Map<string, string>();
  const index = path.join(dir, SAFE_WEIGHTS_INDEX_NAME);
  if (!fs.existsSync(path.join(dir, SAFE_WEIGHTS_NAME)) && fs.existsSync(index)) {
    const map = (readJson(index, 'the shard index').weight_map ?? {}) as Record<string, string>;
    for (const [name, shard] of Object.entries(map)) files.set(name, path.join(dir, shard));
  }
  return files;
}

/** Check every tensor the config implies against the files' headers, before reading any data. */
async function checkShapes(dir: string, config: QwenConfig): Promise<void> {
  const byName = tensorFiles(dir);
  const headers = new Map<string, Awaited<ReturnType<typeof readSafetensorsHeader>>>();
  const single = path.join(dir, SAFE_WEIGHTS_NAME);
  for (const [name, shape] of parameterShapes(config)) {
    const file = byName.get(name) ?? single;
    if (!fs.existsSync(file)) return; // loadCheckpointTensors explains missing files
    if (!headers.has(file)) headers.set(file, await readSafetensorsHeader(file));
    const info = headers.get(file)!.tensors.get(name);
    if (!info) {
      throw new CheckpointError(`${file}: tensor "${name}" is missing; config.json (${config.modelType}, ${config.numLayers} layers) implies it. The weights and config.json come from different models.`);
    }
    if (info.shape.join() !== shape.join()) {
      throw new CheckpointError(`${file}: tensor "${name}" has shape [${info.shape}] but config.json implies [${shape}]. The weights and config.json come from different models.`);
    }
  }
}

/**
 * Load a model and its tokenizer, as ms-swift's get_model_tokenizer.
 * @param pathOrHubId a local checkpoint folder, a hub id ('Qwen/Qwen3-4B-Thinking-2507'), or 'tiny'
 * @example
 *   const { model, tokenizer } = await getModelTokenizer('tiny');
 *   const { model } = await getModelTokenizer('Qwen/Qwen2.5-3B-Instruct', { device: 'webgpu' });
 */
export async function getModelTokenizer(pathOrHubId: string, opts?: GetModelTokenizerOptions & { loadModel?: true; loadTokenizer?: true }): Promise<{ model: Qwen2ForCausalLM; tokenizer: Tokenizer }>;
export async function getModelTokenizer(pathOrHubId: string, opts: GetModelTokenizerOptions): Promise<ModelAndTokenizer>;
export async function getModelTokenizer(pathOrHubId: string, opts: GetModelTokenizerOptions = {}): Promise<ModelAndTokenizer> {
  const logger = getLogger();
  const dir = pathOrHubId === 'tiny' ? await ensureTinyModel()
    : await resolveLocalOrHub(pathOrHubId, { useHf: opts.useHf, revision: opts.revision });
  const configFile = path.join(dir, 'config.json');
  const json = readJson(configFile, 'the model config') as QwenConfigJson;
  const modelType = inferModelType(json, pathOrHubId, opts.modelType, configFile);
  const config = resolveConfig(json, configFile);

  let tokenizer: Tokenizer | null = null;
  if (opts.loadTokenizer !== false) {
    if (!fs.existsSync(path.join(dir, 'tokenizer.json'))) {
      throw new CheckpointError(`${dir} has no tokenizer.json: copy the base model's tokenizer files (tokenizer.json, tokenizer_config.json) next to the weights, or pass loadTokenizer: false`);
    }
    tokenizer = await Tokenizer.fromDir(dir);
  }

  let model: Qwen2ForCausalLM | null = null;
  if (opts.loadModel !== false) {
    if (opts.device !== undefined || !currentDevice()) await initDevice(opts.device);
    await checkShapes(dir, config);
    const weights = await loadCheckpointTensors(dir);
    const expected = parameterShapes(config);
    const extra = [...weights.keys()].filter((n) => !expected.has(n) && !(n === 'lm_head.weight' && config.tieWordEmbeddings));
    if (extra.length) logger.warning(`${dir}: ignoring ${extra.length} tensors the config does not use: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', …' : ''}`);
    model = createModel(config, weights);
    weights.clear();
    // tfjs keeps the weights' upload staging buffers in its pool for reuse: give them back
    if (tf.getBackend() === 'webgpu') releasePooledGpuBuffers();
    const maxLen = config.maxPositionEmbeddings;
    model.modelInfo = { modelType, modelDir: dir, dtype: config.dtype, maxModelLen: maxLen, config: json };
    model.modelMeta = { modelType, template: MODEL_TYPES[modelType].template };
    model.generationConfig = fs.existsSync(path.join(dir, 'generation_config.json'))
      ? readJson(path.join(dir, 'generation_config.json'), 'the generation config') : {};
    logger.info(`loaded ${modelType} from ${dir} on ${tf.getBackend()} (${config.dtype} → float32)`);
  }
  return { model, tokenizer };
}

// `tsft export --adapters <checkpoint> --merge_lora true`: ms-swift's `swift export` for LoRA — load the
// base model the adapter was trained on (from the checkpoint's args.json / adapter_config.json, or
// --model), fold the adapter into the weights and write `<checkpoint>-merged`, a full transformers
// checkpoint (config, generation config, safetensors, tokenizer), atomically.

import * as fs from 'fs';
import * as path from 'path';
import { getModelTokenizer, MODEL_TYPES, type ModelType } from '../model/loader';
import { parseDeviceName } from '../backend/device';
import { ConfigError } from '../errors';
import { getLogger } from '../utils/logger';
import { loadAdapter, mergeLora, readAdapterConfig } from '../train/lora';
import { saveModel, writeCheckpointDir } from '../train/checkpoint';
import { bool, parseFlags, str } from './flags';

export const HELP = [
  'tsft export --adapters output/v0-…/checkpoint-N --merge_lora true [--model BASE] [--output_dir DIR]',
  '  Merge a LoRA checkpoint into its base model and save a full transformers checkpoint. Flags:',
  '    --adapters                       the LoRA checkpoint folder (adapter_config.json + adapter_model.safetensors)',
  '    --merge_lora                     must be true (the only export tsft does)',
  '    --model                          base model (default: args.json\'s model, else adapter_config\'s base_model_name_or_path)',
  '    --model_type                     one of ' + Object.keys(MODEL_TYPES).join(', ') + ' (default: from config.json)',
  '    --output_dir                     where to write (default: <adapters>-merged)',
  '    --max_shard_size                 shard the weights above this size (default: 5GB)',
  '    --device                         webgpu | wasm | cpu | auto (default: auto)',
  '    --use_hf                         download the base model from Hugging Face (default: false)',
].join('\n');
const FLAGS = ['adapters', 'merge_lora', 'model', 'model_id_or_path', 'model_type', 'output_dir', 'max_shard_size', 'device', 'use_hf'];

/** The base model an adapter checkpoint was trained from. */
function baseModelOf(adapters: string): string | null {
  const argsFile = path.join(adapters, 'args.json');
  if (fs.existsSync(argsFile)) {
    const m = (JSON.parse(fs.readFileSync(argsFile, 'utf8')) as { model?: unknown }).model;
    if (typeof m === 'string' && m) return m;
  }
  return readAdapterConfig(adapters).base_model_name_or_path;
}

export async function run(argv: readonly string[]): Promise<void> {
  const logger = getLogger();
  const flags = parseFlags(argv, FLAGS, 'export');
  const adaptersList = flags.get('adapters') ?? [];
  if (adaptersList.length !== 1) throw new ConfigError('tsft export: pass exactly one --adapters checkpoint folder');
  const adapters = path.resolve(adaptersList[0]);
  if (!bool(flags, 'merge_lora', false)) {
    throw new ConfigError('tsft export: only --merge_lora true is supported (quantization and hub upload are not); add --merge_lora true');
  }
  const base = str(flags, 'model') ?? str(flags, 'model_id_or_path') ?? baseModelOf(adapters);
  if (!base) throw new ConfigError(`tsft export: ${adapters} does not say which base model it was trained on; pass --model`);
  const modelType = str(flags, 'model_type');
  if (modelType !== undefined && !(modelType in MODEL_TYPES)) throw new ConfigError(`--model_type ${modelType} is not supported`);
  const device = flags.has('device') ? parseDeviceName(str(flags, 'device')!, '--device') : undefined;
  const { model } = await getModelTokenizer(base, { modelType: modelType as ModelType | undefined, device, useHf: bool(flags, 'use_hf', false), loadTokenizer: false });
  if (!model) throw new ConfigError(`tsft export: could not load the base model ${base}`);
  await loadAdapter(model, adapters);
  mergeLora(model);
  const out = path.resolve(str(flags, 'output_dir') ?? `${adapters}-merged`);
  await writeCheckpointDir(path.dirname(out), path.basename(out), (tmp) =>
    saveModel(model, tmp, { tokenizerDir: model.modelInfo.modelDir, maxShardSize: str(flags, 'max_shard_size') ?? '5GB' }));
  logger.info(`merged ${adapters} into ${base}: ${out}`);
  model.dispose();
}

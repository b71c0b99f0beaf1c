// `tsft infer --model M --query Q [--query Q2 ...]`: stream the answers to each query (ms-swift's
// `swift infer` batch mode). The inference issue adds the interactive chat, adapters and the engine.

import { getModelTokenizer, MODEL_TYPES, type ModelType } from '../model/loader';
import { getTemplate, type TemplateName } from '../data/template';
import { streamChat } from '../infer/stream';
import { parseDeviceName } from '../backend/device';
import { ConfigError } from '../errors';
import { bool, num, parseFlags, str } from './flags';

export const HELP = `tsft infer --model tiny --query "who are you?" [--model_type qwen3] [--system S] [--max_new_tokens N] [--temperature T] [--device webgpu|wasm|cpu] [--use_hf true]`;
const FLAGS = ['model', 'model_id_or_path', 'model_type', 'system', 'query', 'max_new_tokens', 'temperature', 'device', 'use_hf'];

export async function run(argv: readonly string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS, 'infer');
  const modelPath = str(flags, 'model') ?? str(flags, 'model_id_or_path');
  if (!modelPath) throw new ConfigError('tsft infer: --model is required (a checkpoint folder, a hub id, or "tiny")');
  const queries = flags.get('query') ?? [];
  if (!queries.length) throw new ConfigError('tsft infer: pass at least one --query');
  const modelType = str(flags, 'model_type');
  if (modelType !== undefined && !(modelType in MODEL_TYPES)) {
    throw new ConfigError(`--model_type ${modelType} is not supported; use one of ${Object.keys(MODEL_TYPES).join(', ')}`);
  }
  const device = flags.has('device') ? parseDeviceName(str(flags, 'device')!, '--device') : undefined;
  const { model, tokenizer } = await getModelTokenizer(modelPath, {
    modelType: modelType as ModelType | undefined, device, useHf: bool(flags, 'use_hf', false),
  });
  const system = str(flags, 'system');
  const template = getTemplate(model.modelMeta.template as TemplateName, tokenizer, system !== undefined ? { defaultSystem: system } : {});
  template.setMode('pt');
  for (const query of queries) {
    process.stdout.write(`<<< ${query}\n`);
    for await (const { text } of streamChat(model, template, [{ role: 'user', content: query }], {
      maxNewTokens: num(flags, 'max_new_tokens', 512), temperature: num(flags, 'temperature', 0),
    })) process.stdout.write(text);
    process.stdout.write('\n' + '-'.repeat(50) + '\n');
  }
  model.dispose();
}

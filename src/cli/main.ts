// `tsft <command> [--flag value ...]`: the seed's command-line path (ms-swift's `swift sft`, `swift infer`,
// ...). Flags use ms-swift's snake_case names. Commands arrive with their issues; today: `infer`.

import { readFileSync } from 'fs';
import * as path from 'path';
import { getModelTokenizer, MODEL_TYPES, type ModelType } from '../model/loader';
import { getTemplate, type TemplateName } from '../data/template';
import { streamChat } from '../infer/stream';
import { parseDeviceName, shutdownDevice } from '../backend/device';
import { ConfigError, TsftError } from '../errors';
import type { ChatMessage } from '../model/tokenizer';

type Flags = Map<string, string[]>;

/** `--name value`, `--name=value`; repeated flags accumulate. */
export function parseFlags(argv: readonly string[], known: readonly string[], command: string): Flags {
  const flags: Flags = new Map();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new ConfigError(`tsft ${command}: unexpected argument "${a}" (flags look like --name value)`);
    let [name, value] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    name = name.replace(/-/g, '_');
    if (!known.includes(name)) throw new ConfigError(`tsft ${command}: unknown flag --${name}; known flags: ${known.map((k) => '--' + k).join(', ')}`);
    if (value === undefined) {
      value = argv[i + 1];
      if (value === undefined || value.startsWith('--')) throw new ConfigError(`tsft ${command}: --${name} needs a value`);
      i++;
    }
    flags.set(name, [...(flags.get(name) ?? []), value]);
  }
  return flags;
}

function num(flags: Flags, name: string, dflt: number): number {
  const v = flags.get(name)?.at(-1);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new ConfigError(`--${name} must be a number, got "${v}"`);
  return n;
}

const INFER_FLAGS = ['model', 'model_id_or_path', 'model_type', 'system', 'query', 'max_new_tokens', 'temperature', 'device', 'use_hf'];

/** `tsft infer --model M --query Q [--query Q2]`: stream the answers to each query. */
async function infer(argv: readonly string[]): Promise<void> {
  const flags = parseFlags(argv, INFER_FLAGS, 'infer');
  const model_ = flags.get('model')?.at(-1) ?? flags.get('model_id_or_path')?.at(-1);
  if (!model_) throw new ConfigError('tsft infer: --model is required (a checkpoint folder, a hub id, or "tiny")');
  const queries = flags.get('query') ?? [];
  if (!queries.length) throw new ConfigError('tsft infer: pass at least one --query (interactive chat arrives with the inference issue)');
  const modelType = flags.get('model_type')?.at(-1);
  if (modelType !== undefined && !(modelType in MODEL_TYPES)) {
    throw new ConfigError(`--model_type ${modelType} is not supported; use one of ${Object.keys(MODEL_TYPES).join(', ')}`);
  }
  const device = flags.has('device') ? parseDeviceName(flags.get('device')!.at(-1)!, '--device') : undefined;
  const { model, tokenizer } = await getModelTokenizer(model_, {
    modelType: modelType as ModelType | undefined, device, useHf: flags.get('use_hf')?.at(-1) === 'true',
  });
  const system = flags.get('system')?.at(-1);
  const template = getTemplate(model.modelMeta.template as TemplateName, tokenizer, system !== undefined ? { defaultSystem: system } : {});
  template.setMode('pt');
  for (const query of queries) {
    const messages: ChatMessage[] = [{ role: 'user', content: query }];
    process.stdout.write(`<<< ${query}\n`);
    for await (const { text } of streamChat(model, template, messages, {
      maxNewTokens: num(flags, 'max_new_tokens', 512), temperature: num(flags, 'temperature', 0),
    })) process.stdout.write(text);
    process.stdout.write('\n' + '-'.repeat(50) + '\n');
  }
  model.dispose();
}

const COMMANDS: Record<string, (argv: readonly string[]) => Promise<void>> = { infer };

function version(): string {
  // bin/tsft.js sets TSFT_ROOT to the package folder
  const pkg = JSON.parse(readFileSync(path.join(process.env.TSFT_ROOT ?? process.cwd(), 'package.json'), 'utf8')) as { version?: string };
  return pkg.version ?? '';
}

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h') {
    process.stdout.write(`usage: tsft <command> [--flag value ...]\ncommands: ${Object.keys(COMMANDS).join(', ')}\n` +
      `  tsft infer --model tiny --query "who are you?" [--model_type qwen3] [--system S] [--max_new_tokens N] [--temperature T] [--device webgpu|wasm|cpu]\n`);
    return 0;
  }
  if (command === '--version') {
    process.stdout.write(`tsft ${version()}\n`);
    return 0;
  }
  const run = COMMANDS[command];
  if (!run) {
    process.stderr.write(`tsft: unknown command "${command}"; available: ${Object.keys(COMMANDS).join(', ')}\n`);
    return 2;
  }
  try {
    await run(rest);
    return 0;
  } catch (e) {
    if (e instanceof TsftError) {
      process.stderr.write(`tsft ${command}: ${e.name}: ${e.message}\n`);
      return 1;
    }
    throw e;
  } finally {
    await shutdownDevice();
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code), (e) => {
  console.error(e);
  process.exit(1);
});

// `tsft infer` (ms-swift's `swift infer`): an interactive chat that streams (history kept; `clear` resets
// it, `exit` quits), or a batch mode over `--query ...` / `--val_dataset ...` that prints query/response
// pairs. Also the engine loading that `tsft deploy` and `tsft web-ui` share (`engineFromFlags`).

import * as fs from 'fs';
import * as readline from 'readline';
import { PtEngine } from '../infer/engine';
import { RequestConfig, type RequestConfigInit } from '../infer/protocol';
import { MODEL_TYPES, type ModelType } from '../model/loader';
import { getTemplate, type TemplateName } from '../data/template';
import { loadDataset } from '../data/load';
import type { ChatMessage } from '../model/tokenizer';
import { parseDeviceName } from '../backend/device';
import { ConfigError, TsftError } from '../errors';
import { bool, num, parseFlags, str, type Flags } from './flags';

/** Flags every serving command takes (model loading and generation defaults). */
export const ENGINE_FLAGS = ['model', 'model_id_or_path', 'adapters', 'model_type', 'system', 'device', 'use_hf', 'infer_backend',
  'max_batch_size', 'temperature', 'top_k', 'top_p', 'repetition_penalty', 'seed', 'max_new_tokens'];
export const ENGINE_HELP = '--model M (folder, hub id or "tiny") [--adapters DIR ...] [--model_type qwen2_5|qwen3|qwen3_thinking] ' +
  '[--system S] [--temperature T] [--max_new_tokens N] [--top_k K] [--top_p P] [--repetition_penalty R] [--seed N] ' +
  '[--max_batch_size 8] [--device webgpu|wasm|cpu] [--use_hf true]';

export const HELP = `tsft infer ${ENGINE_HELP}
    [--stream true] [--query Q ...] [--val_dataset D ...] [--result_path out.jsonl]
  Without --query / --val_dataset: an interactive chat (history kept; "clear" resets it, "exit" quits).`;
const FLAGS = [...ENGINE_FLAGS, 'query', 'val_dataset', 'stream', 'result_path'];

/** Load the engine the flags describe; the template gets `--system` as its default system. */
export async function engineFromFlags(flags: Flags, command: string): Promise<PtEngine> {
  const model = str(flags, 'model') ?? str(flags, 'model_id_or_path');
  const adapters = flags.get('adapters') ?? [];
  if (!model && adapters.length === 0) {
    throw new ConfigError(`tsft ${command}: --model is required (a checkpoint folder, a hub id, or "tiny"), or --adapters with a LoRA checkpoint`);
  }
  const backend = str(flags, 'infer_backend');
  if (backend !== undefined && backend !== 'pt') {
    throw new ConfigError(`tsft ${command}: --infer_backend ${backend} is not available; tsft has one backend, "pt" (tfjs on --device)`);
  }
  const modelType = str(flags, 'model_type');
  if (modelType !== undefined && !(modelType in MODEL_TYPES)) {
    throw new ConfigError(`--model_type ${modelType} is not supported; use one of ${Object.keys(MODEL_TYPES).join(', ')}`);
  }
  const maxBatchSize = num(flags, 'max_batch_size', 8);
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1) throw new ConfigError(`--max_batch_size must be an integer ≥ 1, got ${maxBatchSize}`);
  const device = flags.has('device') ? parseDeviceName(str(flags, 'device')!, '--device') : undefined;
  // a LoRA checkpoint alone: PtEngine reads its base model from adapter_config.json
  const [first, ...rest] = model ? [model, ...adapters] : adapters;
  const engine = await PtEngine.create(first, {
    adapters: model ? adapters : rest, modelType: modelType as ModelType | undefined, device, maxBatchSize, useHf: bool(flags, 'use_hf', false),
  });
  const system = str(flags, 'system');
  if (system !== undefined) {
    engine.defaultTemplate = getTemplate(engine.model.modelMeta.template as TemplateName, engine.tokenizer, { defaultSystem: system });
  }
  return engine;
}

/** Generation settings from the flags (only those given; the rest come from generation_config.json). */
export function requestDefaults(flags: Flags): RequestConfigInit<false> {
  const out: RequestConfigInit<false> = {};
  const opt = (name: string) => (flags.has(name) ? num(flags, name, 0) : undefined);
  out.temperature = opt('temperature');
  out.max_tokens = opt('max_new_tokens');
  out.top_k = opt('top_k');
  out.top_p = opt('top_p');
  out.repetition_penalty = opt('repetition_penalty');
  out.seed = opt('seed');
  // throws a named, actionable error for bad values now, before the model loads
  new RequestConfig(out);
  return out;
}

interface Item {
  messages: ChatMessage[];
  /** the dataset's answer, printed as [LABELS] */
  labels?: string;
}

async function valItems(datasets: string[]): Promise<Item[]> {
  const [rows] = await loadDataset(datasets);
  return rows.map((row) => {
    const messages = row.messages.map((m) => ({ role: m.role, content: m.content }));
    const last = messages[messages.length - 1];
    if (last?.role === 'assistant') return { messages: messages.slice(0, -1), labels: last.content };
    return { messages };
  });
}

export async function run(argv: readonly string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS, 'infer');
  const defaults = requestDefaults(flags);
  const config: RequestConfigInit<false> = { max_tokens: 512, temperature: 0, ...dropUndefined(defaults) };
  const stream = bool(flags, 'stream', true);
  const queries = flags.get('query') ?? [];
  const valDatasets = flags.get('val_dataset') ?? [];
  const engine = await engineFromFlags(flags, 'infer');
  try {
    const items: Item[] = queries.map((q) => ({ messages: [{ role: 'user', content: q }] }));
    if (valDatasets.length) items.push(...await valItems(valDatasets));
    if (items.length === 0) return await chat(engine, config, stream);
    const resultPath = str(flags, 'result_path');
    const results: string[] = [];
    const print = (s: string) => process.stdout.write(s);
    const header = (item: Item) => {
      print(`[QUERY] ${item.messages[item.messages.length - 1].content}\n`);
      if (item.labels !== undefined) print(`[LABELS] ${item.labels}\n`);
      print('[RESPONSE] ');
    };
    const footer = (item: Item, response: string) => {
      print(`\n${'-'.repeat(50)}\n`);
      results.push(JSON.stringify({ messages: item.messages, response, ...(item.labels !== undefined ? { labels: item.labels } : {}) }));
    };
    if (stream) {
      for (const item of items) {
        header(item);
        const [chunks] = await engine.infer([item], { ...config, stream: true });
        let text = '';
        for await (const chunk of chunks) {
          text += chunk.choices[0].delta.content;
          print(chunk.choices[0].delta.content);
        }
        footer(item, text);
      }
    } else {
      // one call: the requests share forward passes
      const responses = await engine.infer(items, config);
      items.forEach((item, i) => {
        header(item);
        print(responses[i].choices[0].message.content);
        footer(item, responses[i].choices[0].message.content);
      });
    }
    if (resultPath) {
      fs.writeFileSync(resultPath, results.join('\n') + '\n');
      process.stdout.write(`[INFO:tsft] wrote ${results.length} results to ${resultPath}\n`);
    }
  } finally {
    await engine.close();
  }
}

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The interactive chat: `<<< ` prompts, streamed answers, history until `clear`, `exit` / EOF quits. */
async function chat(engine: PtEngine, config: RequestConfigInit<false>, stream: boolean): Promise<void> {
  const rl = readline.createInterface({ input: process.stdin, terminal: process.stdin.isTTY === true });
  process.stdout.write('[INFO:tsft] interactive chat: type a message; "clear" resets the history, "exit" quits\n<<< ');
  const history: ChatMessage[] = [];
  // Ctrl+C during an answer stops the answer; at the prompt it quits
  let abort: AbortController | null = null;
  const onSigint = () => { if (abort) abort.abort(); else rl.close(); };
  process.on('SIGINT', onSigint);
  try {
    for await (const line of rl) {
      const text = line.trim();
      if (text === 'exit' || text === 'quit') break;
      if (text === 'clear') {
        history.length = 0;
        process.stdout.write('[INFO:tsft] history cleared\n<<< ');
        continue;
      }
      if (!text) {
        process.stdout.write('<<< ');
        continue;
      }
      history.push({ role: 'user', content: line });
      abort = new AbortController();
      let answer = '';
      try {
        if (stream) {
          const [chunks] = await engine.infer([{ messages: history }], { ...config, stream: true }, { signal: abort.signal });
          for await (const chunk of chunks) {
            answer += chunk.choices[0].delta.content;
            process.stdout.write(chunk.choices[0].delta.content);
          }
        } else {
          const [resp] = await engine.infer([{ messages: history }], config, { signal: abort.signal });
          answer = resp.choices[0].message.content;
          process.stdout.write(answer);
        }
      } catch (e) {
        if (abort.signal.aborted) {
          process.stdout.write(' [stopped]');
        } else if (e instanceof TsftError) {
          // a request the model cannot take (too long for the context, …): say so, keep chatting
          process.stderr.write(`[ERROR:tsft] ${e.message}\n`);
          history.pop();
          process.stdout.write('<<< ');
          continue;
        } else {
          throw e;
        }
      } finally {
        abort = null;
      }
      history.push({ role: 'assistant', content: answer });
      process.stdout.write(`\n${'-'.repeat(50)}\n<<< `);
    }
  } finally {
    process.off('SIGINT', onSigint);
    rl.close();
    process.stdout.write('\n');
  }
}

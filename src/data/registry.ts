// Registered datasets: the hub datasets the seed notebook uses (ms-swift's registrations, with their
// ModelScope ids, Hugging Face mirrors, subsets and row fixes) and tsft's bundled offline stand-ins in
// `data/`. Any other hub id or local path loads with format detection alone.

import * as path from 'path';
import { bundledDataDir } from './locate';

/** A subset's change to each row (ms-swift SelfCognitionPreprocessor's query_suffix / response_prefix). */
export interface SubsetSpec {
  /** appended to the last user message */
  querySuffix?: string;
  /** prepended to the last assistant message */
  responsePrefix?: string;
}

export interface DatasetMeta {
  /** short name for logs (ms-swift's dataset_name) */
  name: string;
  /** ModelScope dataset id (the default hub) */
  msId?: string;
  /** Hugging Face dataset id (`hf::` or useHf) */
  hfId?: string;
  /** a bundled file under `data/` (no download) */
  bundled?: string;
  /** hub files to fetch (globs); default every .jsonl/.json/.csv */
  files?: string[];
  /** named subsets; `default` is used when none is given */
  subsets?: Readonly<Record<string, SubsetSpec>>;
  /** a fix applied to each raw row before format conversion */
  fixRow?: (row: Record<string, unknown>) => Record<string, unknown>;
  /** the bundled stand-in to name when the hub cannot be reached */
  offline?: string;
  /** one line for listings and offline messages */
  description: string;
}

const EMPTY_THINK = '<think>\n\n</think>\n\n';

/** ms-swift's self-cognition subsets: default (as is), qwen3 (` /no_think` + empty think), empty_think. */
const SELF_COGNITION_SUBSETS: Readonly<Record<string, SubsetSpec>> = {
  default: {},
  qwen3: { querySuffix: ' /no_think', responsePrefix: EMPTY_THINK },
  empty_think: { responsePrefix: EMPTY_THINK },
};

/** AlpacaZhPreprocessor: a leading `输入：` ("input:") is cut from `input`. */
function stripZhInputLabel(row: Record<string, unknown>): Record<string, unknown> {
  const input = row.input;
  return typeof input === 'string' && input.startsWith('输入：') ? { ...row, input: input.slice(3) } : row;
}

/** Every registered dataset, by its tsft/ModelScope id. */
export const DATASET_REGISTRY: readonly DatasetMeta[] = [
  {
    name: 'alpaca-gpt4-data-zh',
    msId: 'AI-ModelScope/alpaca-gpt4-data-zh',
    hfId: 'llm-wizard/alpaca-gpt4-data-zh',
    fixRow: stripZhInputLabel,
    offline: 'tsft/general-zh',
    description: 'GPT-4 answers to the Alpaca instructions in Chinese, 48,818 rows (alpaca form)',
  },
  {
    name: 'alpaca-gpt4-data-en',
    msId: 'AI-ModelScope/alpaca-gpt4-data-en',
    hfId: 'vicgalle/alpaca-gpt4',
    offline: 'tsft/general-en',
    description: 'GPT-4 answers to the Alpaca instructions in English, 52,002 rows (alpaca form)',
  },
  {
    name: 'self-cognition',
    msId: 'swift/self-cognition',
    hfId: 'modelscope/self-cognition',
    files: ['self_cognition.jsonl'],
    subsets: SELF_COGNITION_SUBSETS,
    offline: 'tsft/self-cognition',
    description: 'ms-swift\'s identity set, 108 rows (58 zh, 50 en) with {{NAME}}/{{AUTHOR}}',
  },
  {
    name: 'tsft/self-cognition',
    bundled: 'self-cognition.jsonl',
    subsets: SELF_COGNITION_SUBSETS,
    description: 'tsft\'s identity set (zh + en, {{NAME}}/{{AUTHOR}}; subsets default, qwen3, empty_think)',
  },
  {
    name: 'tsft/general-zh',
    bundled: 'general-zh.jsonl',
    fixRow: stripZhInputLabel,
    description: 'tsft\'s short general instructions in Chinese (alpaca form)',
  },
  {
    name: 'tsft/general-en',
    bundled: 'general-en.jsonl',
    description: 'tsft\'s short general instructions in English (alpaca form)',
  },
];

/**
 * The registered dataset for a name or hub id (ModelScope id, Hugging Face mirror id, short name), if any.
 * @example findRegistered('swift/self-cognition')?.name // 'self-cognition'
 */
export function findRegistered(id: string): DatasetMeta | undefined {
  return DATASET_REGISTRY.find((m) => m.name === id || m.msId === id || m.hfId === id);
}

/** The id a registered dataset is listed under (tsft id or ModelScope id). */
export function registeredId(meta: DatasetMeta): string {
  return meta.msId ?? meta.name;
}

/** The local file of a bundled dataset. */
export function bundledPath(meta: DatasetMeta): string {
  return path.join(bundledDataDir(), meta.bundled!);
}

/**
 * What to do without network: the bundled stand-in of `meta` (when it has one), every bundled dataset,
 * and the local-path form.
 */
export function offlineAdvice(meta?: DatasetMeta): string {
  const bundled = DATASET_REGISTRY.filter((m) => m.bundled);
  const own = meta?.offline ? `Its bundled stand-in needs no network: '${meta.offline}' (e.g. '${meta.offline}#500'). ` : '';
  const list = bundled.map((m) => {
    const stands = DATASET_REGISTRY.find((r) => r.offline === m.name);
    return `'${m.name}'${stands ? ` (for ${stands.msId})` : ''}`;
  }).join(', ');
  return `${own}Bundled datasets: ${list}. Or download the data elsewhere and pass a local file or folder instead of ` +
    `the hub id, e.g. '/path/to/train.jsonl#500' (.jsonl, .json, .csv, or a folder of them).`;
}

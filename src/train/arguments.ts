// Seq2SeqTrainingArguments: the seed's training fields (snake_case, as the seed writes them) with
// ms-swift's defaults (swift/trainers/arguments.py over transformers' TrainingArguments), validated up
// front: an unknown field (with the closest known name), a wrong type or a contradiction is a ConfigError.

import * as path from 'path';
import { ConfigError } from '../errors';
import { getLogger } from '../utils/logger';

export type SchedulerType = 'cosine' | 'linear' | 'constant' | 'constant_with_warmup';
export type IntervalStrategy = 'no' | 'steps' | 'epoch';

/** Every field the trainer reads. Defaults: ms-swift's where it sets one, else transformers'. */
export interface TrainingArgumentsFields {
  /** where checkpoints, logging.jsonl and runs/ go (made absolute) */
  output_dir: string;
  /** peak learning rate (transformers: 5e-5; `tsft sft`: 1e-5 full, 1e-4 LoRA, as ms-swift's CLI) */
  learning_rate: number;
  per_device_train_batch_size: number;   // 1 (ms-swift)
  per_device_eval_batch_size: number;    // 1 (ms-swift)
  /** recompute each decoder block in backward (true, ms-swift) */
  gradient_checkpointing: boolean;
  /** AdamW decoupled weight decay, not on biases and norm weights (0.1, ms-swift) */
  weight_decay: number;
  lr_scheduler_type: SchedulerType;      // 'cosine' (ms-swift)
  /** warmup = ceil(max_steps · warmup_ratio) unless warmup_steps > 0 (0) */
  warmup_ratio: number;
  warmup_steps: number;                  // 0
  /** 'tensorboard' (default), 'none' */
  report_to: string[];
  logging_first_step: boolean;           // true (ms-swift)
  logging_steps: number;                 // 5 (ms-swift); < 1 = fraction of max_steps
  save_strategy: IntervalStrategy;       // 'steps'
  save_steps: number;                    // 500; < 1 = fraction of max_steps
  eval_strategy: IntervalStrategy;       // 'no' ('steps' when … set by the caller); 'no' without an eval set
  /** default: logging_steps (transformers) */
  eval_steps: number | null;
  /** default ceil(16 / per_device_train_batch_size) (ms-swift) */
  gradient_accumulation_steps: number;
  num_train_epochs: number;              // 3
  /** > 0 overrides num_train_epochs (-1) */
  max_steps: number;
  /** 'loss' → lowest eval_loss is best; any logged eval metric name (with or without `eval_`) */
  metric_for_best_model: string | null;
  /** default: the metric does not end in 'loss' */
  greater_is_better: boolean | null;
  /** keep the newest N checkpoints, never deleting the best (null: keep all) */
  save_total_limit: number | null;
  /** accepted for compatibility; batches are collated in-process */
  dataloader_num_workers: number | null;
  /** seed of the per-epoch shuffle (seeded permutation of (data_seed ?? 0) + epoch) */
  data_seed: number | null;
  /** seed of the trainer's RNG (LoRA dropout) (42) */
  seed: number;
  /** accepted: tfjs trains in float32 (logged) */
  bf16: boolean;
  fp16: boolean;
  /** clip the global gradient norm to this (1.0); 0 = no clipping */
  max_grad_norm: number;
  /** shuffle training rows each epoch (true, ms-swift) */
  train_dataloader_shuffle: boolean;
  adam_beta1: number;                    // 0.9
  adam_beta2: number;                    // 0.95 (ms-swift)
  adam_epsilon: number;                  // 1e-8
  /** a checkpoint folder, or true for the newest checkpoint in output_dir */
  resume_from_checkpoint: string | boolean | null;
  /** checkpoints hold the model only: no optimizer, scheduler or RNG state (cannot be resumed exactly) */
  save_only_model: boolean;
  /** TensorBoard folder (default `<output_dir>/runs`) */
  logging_dir: string | null;
  /** shards above this size split the weights (transformers' "5GB") */
  max_shard_size: string | number;
}

const DEFAULTS: Omit<TrainingArgumentsFields, 'output_dir' | 'gradient_accumulation_steps'> = {
  learning_rate: 5e-5,
  per_device_train_batch_size: 1,
  per_device_eval_batch_size: 1,
  gradient_checkpointing: true,
  weight_decay: 0.1,
  lr_scheduler_type: 'cosine',
  warmup_ratio: 0,
  warmup_steps: 0,
  report_to: ['tensorboard'],
  logging_first_step: true,
  logging_steps: 5,
  save_strategy: 'steps',
  save_steps: 500,
  eval_strategy: 'no',
  eval_steps: null,
  num_train_epochs: 3,
  max_steps: -1,
  metric_for_best_model: null,
  greater_is_better: null,
  save_total_limit: null,
  dataloader_num_workers: null,
  data_seed: null,
  seed: 42,
  bf16: false,
  fp16: false,
  max_grad_norm: 1.0,
  train_dataloader_shuffle: true,
  adam_beta1: 0.9,
  adam_beta2: 0.95,
  adam_epsilon: 1e-8,
  resume_from_checkpoint: null,
  save_only_model: false,
  logging_dir: null,
  max_shard_size: '5GB',
};

/** Older transformers spellings that mean the same field. */
const ALIASES: Record<string, keyof TrainingArgumentsFields> = { evaluation_strategy: 'eval_strategy' };
const KNOWN = [...Object.keys(DEFAULTS), 'output_dir', 'gradient_accumulation_steps'];
const SCHEDULERS: SchedulerType[] = ['cosine', 'linear', 'constant', 'constant_with_warmup'];
const STRATEGIES: IntervalStrategy[] = ['no', 'steps', 'epoch'];

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length][b.length];
}

/** The known name closest to `name`, for "did you mean" hints. */
export function closest(name: string, known: readonly string[]): string | null {
  let best: string | null = null, bestD = Infinity;
  for (const k of known) {
    const d = editDistance(name, k);
    if (d < bestD) { best = k; bestD = d; }
  }
  return bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : null;
}

type Check = (v: unknown) => boolean;
const isNum: Check = (v) => typeof v === 'number' && Number.isFinite(v);
const isInt: Check = (v) => Number.isInteger(v);
const isBool: Check = (v) => typeof v === 'boolean';
const TYPES: Record<string, [Check, string]> = {
  output_dir: [(v) => typeof v === 'string' && v !== '', 'a non-empty path'],
  learning_rate: [(v) => isNum(v) && (v as number) >= 0, 'a number ≥ 0'],
  per_device_train_batch_size: [(v) => isInt(v) && (v as number) >= 1, 'an integer ≥ 1'],
  per_device_eval_batch_size: [(v) => isInt(v) && (v as number) >= 1, 'an integer ≥ 1'],
  gradient_checkpointing: [isBool, 'true or false'],
  weight_decay: [(v) => isNum(v) && (v as number) >= 0, 'a number ≥ 0'],
  lr_scheduler_type: [(v) => SCHEDULERS.includes(v as SchedulerType), SCHEDULERS.map((s) => `'${s}'`).join(', ')],
  warmup_ratio: [(v) => isNum(v) && (v as number) >= 0 && (v as number) <= 1, 'a number in [0, 1]'],
  warmup_steps: [(v) => isInt(v) && (v as number) >= 0, 'an integer ≥ 0'],
  report_to: [(v) => Array.isArray(v) && v.every((s) => typeof s === 'string'), "a list like ['tensorboard'] or 'none'"],
  logging_first_step: [isBool, 'true or false'],
  logging_steps: [(v) => isNum(v) && (v as number) > 0 && ((v as number) < 1 || isInt(v)), 'an integer ≥ 1 (or a fraction of max_steps in (0, 1))'],
  save_strategy: [(v) => STRATEGIES.includes(v as IntervalStrategy), "'no', 'steps' or 'epoch'"],
  save_steps: [(v) => isNum(v) && (v as number) > 0 && ((v as number) < 1 || isInt(v)), 'an integer ≥ 1 (or a fraction of max_steps in (0, 1))'],
  eval_strategy: [(v) => STRATEGIES.includes(v as IntervalStrategy), "'no', 'steps' or 'epoch'"],
  eval_steps: [(v) => v === null || (isNum(v) && (v as number) > 0 && ((v as number) < 1 || isInt(v))), 'an integer ≥ 1 (or a fraction of max_steps in (0, 1))'],
  gradient_accumulation_steps: [(v) => isInt(v) && (v as number) >= 1, 'an integer ≥ 1'],
  num_train_epochs: [(v) => isNum(v) && (v as number) > 0, 'a number > 0'],
  max_steps: [(v) => isInt(v) && ((v as number) > 0 || v === -1), 'an integer ≥ 1, or -1 to use num_train_epochs'],
  metric_for_best_model: [(v) => v === null || (typeof v === 'string' && v !== ''), "a metric name such as 'loss'"],
  greater_is_better: [(v) => v === null || isBool(v), 'true, false or null'],
  save_total_limit: [(v) => v === null || (isInt(v) && (v as number) >= 1), 'an integer ≥ 1 or null'],
  dataloader_num_workers: [(v) => v === null || (isInt(v) && (v as number) >= 0), 'an integer ≥ 0'],
  data_seed: [(v) => v === null || (isInt(v) && (v as number) >= 0), 'an integer ≥ 0 or null'],
  seed: [(v) => isInt(v) && (v as number) >= 0, 'an integer ≥ 0'],
  bf16: [isBool, 'true or false'],
  fp16: [isBool, 'true or false'],
  max_grad_norm: [(v) => isNum(v) && (v as number) >= 0, 'a number ≥ 0 (0 = no clipping)'],
  train_dataloader_shuffle: [isBool, 'true or false'],
  adam_beta1: [(v) => isNum(v) && (v as number) >= 0 && (v as number) < 1, 'a number in [0, 1)'],
  adam_beta2: [(v) => isNum(v) && (v as number) >= 0 && (v as number) < 1, 'a number in [0, 1)'],
  adam_epsilon: [(v) => isNum(v) && (v as number) > 0, 'a number > 0'],
  resume_from_checkpoint: [(v) => v === null || isBool(v) || typeof v === 'string', 'a checkpoint folder, true (newest in output_dir) or null'],
  save_only_model: [isBool, 'true or false'],
  logging_dir: [(v) => v === null || typeof v === 'string', 'a path or null'],
  max_shard_size: [(v) => typeof v === 'string' || (isInt(v) && (v as number) > 0), 'a size like "5GB" or a number of bytes'],
};

/**
 * Training arguments as ms-swift's `Seq2SeqTrainingArguments` (fields snake_case, as the seed writes them).
 * @example
 *   const args = new Seq2SeqTrainingArguments({
 *     output_dir: 'output', learning_rate: 5e-6, gradient_accumulation_steps: 32, warmup_ratio: 0.05,
 *     eval_strategy: 'steps', eval_steps: 50, save_steps: 50, save_total_limit: 2, num_train_epochs: 1,
 *   });
 */
export class Seq2SeqTrainingArguments implements TrainingArgumentsFields {
  output_dir!: string;
  learning_rate!: number;
  per_device_train_batch_size!: number;
  per_device_eval_batch_size!: number;
  gradient_checkpointing!: boolean;
  weight_decay!: number;
  lr_scheduler_type!: SchedulerType;
  warmup_ratio!: number;
  warmup_steps!: number;
  report_to!: string[];
  logging_first_step!: boolean;
  logging_steps!: number;
  save_strategy!: IntervalStrategy;
  save_steps!: number;
  eval_strategy!: IntervalStrategy;
  eval_steps!: number | null;
  gradient_accumulation_steps!: number;
  num_train_epochs!: number;
  max_steps!: number;
  metric_for_best_model!: string | null;
  greater_is_better!: boolean | null;
  save_total_limit!: number | null;
  dataloader_num_workers!: number | null;
  data_seed!: number | null;
  seed!: number;
  bf16!: boolean;
  fp16!: boolean;
  max_grad_norm!: number;
  train_dataloader_shuffle!: boolean;
  adam_beta1!: number;
  adam_beta2!: number;
  adam_epsilon!: number;
  resume_from_checkpoint!: string | boolean | null;
  save_only_model!: boolean;
  logging_dir!: string | null;
  max_shard_size!: string | number;

  constructor(fields: Partial<Omit<TrainingArgumentsFields, 'report_to'>> & { report_to?: string | string[] } & Record<string, unknown> = {}) {
    const given: Record<string, unknown> = {};
    for (const [k0, v] of Object.entries(fields)) {
      if (v === undefined) continue;
      const k = ALIASES[k0] ?? k0;
      if (!KNOWN.includes(k)) {
        const hint = closest(k, KNOWN);
        throw new ConfigError(`Seq2SeqTrainingArguments: unknown field "${k0}"${hint ? ` (did you mean "${hint}"?)` : ''}; known fields: ${KNOWN.join(', ')}`);
      }
      if (k !== k0 && k in fields) throw new ConfigError(`Seq2SeqTrainingArguments: both "${k0}" and "${k}" are set; use "${k}"`);
      given[k] = v;
    }
    if (typeof given.report_to === 'string') given.report_to = [given.report_to];
    const all = { ...DEFAULTS, output_dir: 'output', ...given } as Record<string, unknown>;
    if (all.gradient_accumulation_steps === undefined) {
      all.gradient_accumulation_steps = Math.max(1, Math.ceil(16 / (all.per_device_train_batch_size as number)));
    }
    for (const [k, v] of Object.entries(all)) {
      const [ok, want] = TYPES[k];
      if (!ok(v)) throw new ConfigError(`Seq2SeqTrainingArguments: ${k} must be ${want}, got ${JSON.stringify(v)}`);
    }
    Object.assign(this, all);
    this.output_dir = path.resolve(this.output_dir);
    this.validate();
  }

  private validate(): void {
    const logger = getLogger();
    if (this.bf16 && this.fp16) throw new ConfigError('Seq2SeqTrainingArguments: bf16 and fp16 are both true; pick one (or neither)');
    // bf16 / fp16: the trainer picks f16 mixed precision on webgpu, float32 elsewhere, and says which once
    const reports = this.report_to.filter((r) => r !== 'none');
    const unsupported = reports.filter((r) => r !== 'tensorboard' && r !== 'all');
    if (unsupported.length) {
      throw new ConfigError(`Seq2SeqTrainingArguments: report_to ${JSON.stringify(unsupported)} is not supported; tsft writes TensorBoard event files ('tensorboard') and logging.jsonl, or use 'none'`);
    }
    if (this.report_to.includes('none') && reports.length) {
      throw new ConfigError(`Seq2SeqTrainingArguments: report_to ${JSON.stringify(this.report_to)} mixes 'none' with integrations`);
    }
    this.report_to = reports.length ? ['tensorboard'] : [];
    if (this.eval_strategy === 'steps' && this.eval_steps === null) this.eval_steps = this.logging_steps;
    if (this.eval_strategy === 'no' && this.metric_for_best_model !== null && this.save_total_limit !== null) {
      logger.warningOnce(`metric_for_best_model='${this.metric_for_best_model}' with eval_strategy 'no': no evaluation runs, so no checkpoint is marked best`);
    }
    if (this.metric_for_best_model !== null && this.greater_is_better === null) {
      this.greater_is_better = !this.metric_for_best_model.endsWith('loss');
    }
    if (this.warmup_steps > 0 && this.warmup_ratio > 0) {
      logger.warningOnce(`both warmup_steps (${this.warmup_steps}) and warmup_ratio (${this.warmup_ratio}) are set: warmup_steps wins, as in transformers`);
    }
    if (this.resume_from_checkpoint === false) this.resume_from_checkpoint = null;
    if (this.logging_dir === null) this.logging_dir = path.join(this.output_dir, 'runs');
    this.logging_dir = path.resolve(this.logging_dir);
  }

  /** The fields as a plain object (what checkpoints store as training_args.json). */
  toJSON(): TrainingArgumentsFields {
    const out: Record<string, unknown> = {};
    for (const k of KNOWN) out[k] = (this as unknown as Record<string, unknown>)[k];
    return out as unknown as TrainingArgumentsFields;
  }
}

/** An interval in steps from an argument that may be a fraction of max_steps (transformers' rule). */
export function resolveSteps(value: number, maxSteps: number): number {
  return value < 1 ? Math.ceil(maxSteps * value) : value;
}

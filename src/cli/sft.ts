// `tsft sft`: ms-swift's `swift sft` with its flag names and defaults — load the model, attach LoRA (or
// train all weights), load and encode the datasets, train into `<output_dir>/v<N>-<YYYYMMDD-HHMMSS>/`
// with `args.json`, report the last and best checkpoints, and draw the loss plots into `images/`.

import * as fs from 'fs';
import * as path from 'path';
import { getModelTokenizer, MODEL_TYPES, type ModelType } from '../model/loader';
import { getTemplate, TEMPLATE_METAS, type TemplateName, type TruncationStrategy } from '../data/template';
import { loadDataset } from '../data/load';
import { EncodePreprocessor } from '../data/encode';
import { parseDeviceName } from '../backend/device';
import { ConfigError } from '../errors';
import { getLogger } from '../utils/logger';
import { seedEverything } from '../utils/seed';
import { getModelParameterInfo } from '../utils/params';
import { Seq2SeqTrainingArguments, type TrainingArgumentsFields } from '../train/arguments';
import { Seq2SeqTrainer } from '../train/trainer';
import { prepareLora } from '../train/lora';
import { parseFlags, type Flags } from './flags';

type Kind = 'str' | 'num' | 'int' | 'bool' | 'list' | 'optstr';
interface Flag {
  name: string;
  kind: Kind;
  dflt: string;
  help: string;
}

const flag = (name: string, kind: Kind, dflt: string, help: string): Flag => ({ name, kind, dflt, help });

/** Every flag `tsft sft` takes, in the order --help lists them (ms-swift's names and defaults). */
const FLAGS: Flag[] = [
  // model
  flag('model', 'str', 'required', 'checkpoint folder, hub id (ModelScope; Hugging Face with --use_hf true), or "tiny"'),
  flag('model_id_or_path', 'str', 'none', 'alias of --model'),
  flag('model_type', 'str', 'from config.json', `one of ${Object.keys(MODEL_TYPES).join(', ')}`),
  flag('use_hf', 'bool', 'false', 'download models and datasets from Hugging Face instead of ModelScope'),
  flag('device', 'str', 'auto', 'webgpu | wasm | cpu | tensorflow | auto'),
  flag('torch_dtype', 'str', 'float32', 'bfloat16/float16 turn on bf16/fp16 training (webgpu: f16 mixed precision; cpu/wasm: float32); weights are kept and saved in float32'),
  // tuner
  flag('train_type', 'str', 'lora', "'lora' (adapters, base frozen) or 'full' (every weight)"),
  flag('lora_rank', 'int', '8', 'LoRA rank r'),
  flag('lora_alpha', 'num', '32', 'LoRA alpha (scale = alpha / r)'),
  flag('lora_dropout', 'num', '0.05', 'dropout on the adapters\' input'),
  flag('target_modules', 'list', 'all-linear', "'all-linear' (every linear but lm_head) or names: q_proj k_proj …"),
  flag('use_rslora', 'bool', 'false', 'scale = alpha / sqrt(r)'),
  // data
  flag('dataset', 'list', 'required', "datasets: hub ids, local .jsonl/.json/.csv files or folders, '[hf::|ms::]id[:subset][#N]'"),
  flag('split_dataset_ratio', 'num', '0', 'fraction of each dataset held out for validation (the seed: 0.01)'),
  flag('dataset_shuffle', 'bool', 'true', 'shuffle the sampling and the concatenated datasets (seeded by --data_seed)'),
  flag('data_seed', 'int', '42', 'seed of dataset sampling/splitting (and of the per-epoch order)'),
  flag('dataset_num_proc', 'int', '1', 'threads encoding the datasets'),
  flag('num_proc', 'int', '1', 'alias of --dataset_num_proc'),
  flag('model_name', 'list', 'none', 'self-cognition {{NAME}}: a Chinese and an English name (or one for both)'),
  flag('model_author', 'list', 'none', 'self-cognition {{AUTHOR}}: a Chinese and an English author (or one for both)'),
  // template
  flag('template', 'str', "the model type's", `chat template: ${Object.keys(TEMPLATE_METAS).join(', ')}`),
  flag('system', 'optstr', "the template's", 'default system prompt'),
  flag('max_length', 'int', 'the model\'s max_position_embeddings', 'rows longer than this are dropped (or truncated, see below)'),
  flag('truncation_strategy', 'str', 'delete', "'delete' drops over-long rows; 'left' / 'right' truncate"),
  // training (Seq2SeqTrainingArguments)
  flag('output_dir', 'str', 'output', 'runs go to <output_dir>/v<N>-<YYYYMMDD-HHMMSS>/'),
  flag('add_version', 'bool', 'true', 'add the v<N>-<timestamp> sub-folder'),
  flag('num_train_epochs', 'num', '3', 'epochs (ignored when --max_steps > 0)'),
  flag('max_steps', 'int', '-1', 'optimization steps; > 0 overrides epochs'),
  flag('learning_rate', 'num', '1e-4 (lora) / 1e-5 (full)', 'peak learning rate'),
  flag('per_device_train_batch_size', 'int', '1', 'rows per micro-batch'),
  flag('per_device_eval_batch_size', 'int', '1', 'rows per evaluation batch'),
  flag('gradient_accumulation_steps', 'int', 'ceil(16 / batch size)', 'micro-batches per optimization step'),
  flag('gradient_checkpointing', 'bool', 'true', 'recompute each decoder block in backward (less memory, ~30% more time)'),
  flag('weight_decay', 'num', '0.1', 'AdamW weight decay (not on biases and norm weights)'),
  flag('adam_beta1', 'num', '0.9', 'AdamW beta1'),
  flag('adam_beta2', 'num', '0.95', 'AdamW beta2'),
  flag('adam_epsilon', 'num', '1e-8', 'AdamW epsilon'),
  flag('max_grad_norm', 'num', '1.0', 'clip the gradient norm (0 = off); a NaN/Inf norm skips the update'),
  flag('lr_scheduler_type', 'str', 'cosine', 'cosine | linear | constant | constant_with_warmup'),
  flag('warmup_ratio', 'num', '0', 'warmup = ceil(steps × ratio)'),
  flag('warmup_steps', 'int', '0', 'warmup steps (wins over --warmup_ratio)'),
  flag('logging_steps', 'num', '5', 'log every N steps'),
  flag('logging_first_step', 'bool', 'true', 'log step 1'),
  flag('eval_strategy', 'str', '--save_strategy', "'steps' | 'epoch' | 'no' (no when there is no validation set)"),
  flag('eval_steps', 'num', '--save_steps', 'evaluate every N steps'),
  flag('save_strategy', 'str', 'steps', "'steps' | 'epoch' | 'no'"),
  flag('save_steps', 'num', '500', 'save a checkpoint every N steps (the last step always saves)'),
  flag('save_total_limit', 'int', 'none', 'keep the newest N checkpoints (never deleting the best)'),
  flag('save_only_model', 'bool', 'false', 'checkpoints without optimizer/scheduler/RNG state'),
  flag('metric_for_best_model', 'str', 'loss', 'eval metric that picks the best checkpoint'),
  flag('greater_is_better', 'bool', "false for '…loss'", 'whether a larger metric is better'),
  flag('seed', 'int', '42', 'global seed (LoRA init and dropout)'),
  flag('train_dataloader_shuffle', 'bool', 'true', 'seeded shuffle of the training rows each epoch'),
  flag('dataloader_num_workers', 'int', '1', 'accepted for ms-swift parity (batches are collated in-process)'),
  flag('report_to', 'list', 'tensorboard', "'tensorboard' (events under <run>/runs) or 'none'"),
  flag('resume_from_checkpoint', 'str', 'none', 'a checkpoint folder to resume (same data and arguments): identical losses'),
  flag('bf16', 'bool', 'false', 'webgpu: f16 mixed precision (WGSL has no bf16) with loss scaling; cpu/wasm: float32'),
  flag('fp16', 'bool', 'false', 'webgpu: f16 mixed precision with loss scaling; cpu/wasm: float32'),
  flag('max_shard_size', 'str', '5GB', 'split checkpoint weights into shards above this size'),
];

const byName = new Map(FLAGS.map((f) => [f.name, f]));

export const HELP = [
  'tsft sft --model tiny --dataset tsft/self-cognition#500 --model_name 小T TinyT --model_author tsft tsft [--train_type lora|full] [...]',
  '  Fine-tune as ms-swift\'s `swift sft` (same flags, same defaults). Flags:',
  ...FLAGS.map((f) => `    --${f.name.padEnd(30)} ${f.help} (${f.dflt === 'required' ? 'required' : `default: ${f.dflt}`})`),
].join('\n');

function value(flags: Flags, name: string): string | undefined {
  return flags.get(name)?.at(-1);
}

/** A flag's value converted by its kind, or undefined when not given. */
function get(flags: Flags, name: string): string | number | boolean | string[] | null | undefined {
  const f = byName.get(name)!;
  if (!flags.has(name)) return undefined;
  const v = value(flags, name)!;
  switch (f.kind) {
    case 'list': return flags.get(name)!;
    case 'bool':
      if (/^(true|1|yes)$/i.test(v)) return true;
      if (/^(false|0|no)$/i.test(v)) return false;
      throw new ConfigError(`--${name} must be true or false, got "${v}"`);
    case 'num': case 'int': {
      const n = Number(v);
      if (!Number.isFinite(n) || (f.kind === 'int' && !Number.isInteger(n))) throw new ConfigError(`--${name} must be ${f.kind === 'int' ? 'an integer' : 'a number'}, got "${v}"`);
      return n;
    }
    case 'optstr': return /^(none|null)$/i.test(v) ? null : v;
    default: return /^(none|null)$/i.test(v) && (name === 'resume_from_checkpoint' || name === 'metric_for_best_model') ? null : v;
  }
}

/** ms-swift's add_version_to_work_dir: `<dir>/v<max existing + 1>-<YYYYMMDD-HHMMSS>`. */
export function addVersion(dir: string, now = new Date()): string {
  const versions = fs.existsSync(dir) ? fs.readdirSync(dir).map((n) => /^v(\d+)/.exec(n)).filter(Boolean).map((m) => Number(m![1])) : [];
  const p = (n: number) => String(n).padStart(2, '0');
  const stamp = `${now.getFullYear()}${p(now.getMonth() + 1)}${p(now.getDate())}-${p(now.getHours())}${p(now.getMinutes())}${p(now.getSeconds())}`;
  return path.join(dir, `v${Math.max(-1, ...versions) + 1}-${stamp}`);
}

/** Training-argument fields taken straight from flags of the same name. */
const TRAINING_FLAGS: (keyof TrainingArgumentsFields)[] = [
  'num_train_epochs', 'max_steps', 'learning_rate', 'per_device_train_batch_size', 'per_device_eval_batch_size',
  'gradient_accumulation_steps', 'gradient_checkpointing', 'weight_decay', 'adam_beta1', 'adam_beta2', 'adam_epsilon',
  'max_grad_norm', 'lr_scheduler_type', 'warmup_ratio', 'warmup_steps', 'logging_steps', 'logging_first_step',
  'eval_strategy', 'eval_steps', 'save_strategy', 'save_steps', 'save_total_limit', 'save_only_model',
  'metric_for_best_model', 'greater_is_better', 'seed', 'train_dataloader_shuffle', 'dataloader_num_workers', 'report_to',
  'resume_from_checkpoint', 'bf16', 'fp16', 'data_seed', 'max_shard_size',
];

export async function run(argv: readonly string[]): Promise<void> {
  const logger = getLogger();
  const flags = parseFlags(argv, FLAGS.map((f) => f.name), 'sft');
  const opt = <T>(name: string, dflt: T): T => (get(flags, name) ?? dflt) as T;
  const modelPath = opt<string | undefined>('model', undefined) ?? opt<string | undefined>('model_id_or_path', undefined);
  if (!modelPath) throw new ConfigError('tsft sft: --model is required (a checkpoint folder, a hub id, or "tiny")');
  const datasets = opt<string[]>('dataset', []);
  if (!datasets.length) throw new ConfigError('tsft sft: --dataset is required (e.g. --dataset tsft/self-cognition#500 ./my.jsonl)');
  const trainType = opt<string>('train_type', 'lora');
  if (trainType !== 'lora' && trainType !== 'full') throw new ConfigError(`--train_type must be 'lora' or 'full', got "${trainType}"`);
  const modelType = opt<string | undefined>('model_type', undefined);
  if (modelType !== undefined && !(modelType in MODEL_TYPES)) throw new ConfigError(`--model_type ${modelType} is not supported; use one of ${Object.keys(MODEL_TYPES).join(', ')}`);
  const truncation = opt<string>('truncation_strategy', 'delete');
  if (!['delete', 'left', 'right'].includes(truncation)) throw new ConfigError(`--truncation_strategy must be delete, left or right, got "${truncation}"`);

  // Run folder and arguments (validated before anything heavy loads).
  const baseDir = path.resolve(opt('output_dir', 'output'));
  const outputDir = opt('add_version', true) ? addVersion(baseDir) : baseDir;
  const seed = opt('seed', 42);
  const fields: Record<string, unknown> = { output_dir: outputDir };
  for (const k of TRAINING_FLAGS) if (get(flags, k) !== undefined) fields[k] = get(flags, k);
  fields.learning_rate ??= trainType === 'full' ? 1e-5 : 1e-4;
  fields.save_strategy ??= 'steps';
  fields.eval_strategy ??= fields.save_strategy;
  fields.eval_steps ??= fields.save_steps ?? 500;
  fields.metric_for_best_model ??= 'loss';
  const dataSeed = opt('data_seed', 42);
  fields.data_seed = dataSeed;
  // ms-swift: --torch_dtype bfloat16 / float16 turns on bf16 / fp16 training unless given
  const dtype = opt<string>('torch_dtype', 'float32');
  if (!['float32', 'bfloat16', 'float16'].includes(dtype)) throw new ConfigError(`--torch_dtype ${dtype}: use float32, bfloat16 or float16`);
  if (dtype === 'bfloat16' && fields.bf16 === undefined && fields.fp16 === undefined) fields.bf16 = true;
  if (dtype === 'float16' && fields.bf16 === undefined && fields.fp16 === undefined) fields.fp16 = true;
  const trainingArgs = new Seq2SeqTrainingArguments(fields);
  if (dtype !== 'float32') logger.warningOnce(`--torch_dtype ${dtype}: weights load as float32 master copies (half precision runs in the training step's compute) and are saved as float32`);
  seedEverything(seed);
  logger.info(`output_dir: ${outputDir}`);

  // Model, template, tuner.
  const device = flags.has('device') ? parseDeviceName(value(flags, 'device')!, '--device') : undefined;
  const { model, tokenizer } = await getModelTokenizer(modelPath, { modelType: modelType as ModelType | undefined, device, useHf: opt('use_hf', false) });
  logger.info(`model_info: ${JSON.stringify({ ...model.modelInfo, config: undefined })}`);
  const templateName = opt<string>('template', model.modelMeta.template);
  if (!(templateName in TEMPLATE_METAS)) throw new ConfigError(`--template ${templateName} is not known; use one of ${Object.keys(TEMPLATE_METAS).join(', ')}`);
  const system = get(flags, 'system');
  const template = getTemplate(templateName as TemplateName, tokenizer, {
    ...(system !== undefined ? { defaultSystem: system as string | null } : {}),
    maxLength: opt<number | null>('max_length', model.modelInfo.maxModelLen), truncationStrategy: truncation as TruncationStrategy,
  });
  template.setMode('train');
  if (trainType === 'lora') {
    const targets = opt<string[]>('target_modules', ['all-linear']);
    prepareLora(model, {
      r: opt('lora_rank', 8), lora_alpha: opt('lora_alpha', 32), lora_dropout: opt('lora_dropout', 0.05),
      target_modules: targets.length === 1 && targets[0] === 'all-linear' ? 'all-linear' : targets, use_rslora: opt('use_rslora', false),
      base_model_name_or_path: modelPath,
    });
  }
  logger.info(`model_parameter_info: ${getModelParameterInfo(model)}${trainType === 'lora' ? ` + LoRA ${[...model.adapters.values()].reduce((a, ad) => a + ad.variables().reduce((b, v) => b + v.size, 0), 0)} trainable` : ''}`);

  // Datasets.
  const numProc = opt<number | undefined>('dataset_num_proc', undefined) ?? opt<number>('num_proc', 1);
  const [trainRows, valRows] = await loadDataset(datasets, {
    splitDatasetRatio: opt('split_dataset_ratio', 0), seed: dataSeed, numProc, shuffle: opt('dataset_shuffle', true),
    modelName: opt<string[] | undefined>('model_name', undefined), modelAuthor: opt<string[] | undefined>('model_author', undefined),
    useHf: opt('use_hf', false),
  });
  logger.info(`train_dataset: ${trainRows.length} rows, val_dataset: ${valRows.length} rows`);
  const encode = EncodePreprocessor(template);
  const trainDataset = await encode(trainRows, { numProc });
  const evalDataset = valRows.length ? await encode(valRows, { numProc }) : null;
  if (trainDataset.length) template.printInputs(trainDataset[0]);

  // args.json: every flag as given and resolved (ms-swift writes its TrainArguments there).
  const argsJson: Record<string, unknown> = {};
  for (const f of FLAGS) argsJson[f.name] = get(flags, f.name) ?? null;
  Object.assign(argsJson, trainingArgs.toJSON(), { model: modelPath, train_type: trainType, dataset: datasets,
    model_type: model.modelMeta.modelType, template: templateName });
  fs.mkdirSync(outputDir, { recursive: true });
  fs.writeFileSync(path.join(outputDir, 'args.json'), JSON.stringify(argsJson, null, 2) + '\n');

  const trainer = new Seq2SeqTrainer({
    model, args: trainingArgs, trainDataset, evalDataset, template, checkpointFiles: { 'args.json': argsJson },
  });
  await trainer.train();
  logger.info(`last_model_checkpoint: ${trainer.state.last_model_checkpoint}`);
  logger.info(`best_model_checkpoint: ${trainer.state.best_model_checkpoint}`);

  // Plots from the run's TensorBoard files, as `swift sft` does after training (none without them).
  if (trainingArgs.report_to.includes('tensorboard')) try {
    const { plotImages } = await import('../plot/plot-images');
    const images = await plotImages(path.join(outputDir, 'images'), trainingArgs.logging_dir!, ['train/loss'], 0.9);
    logger.info(`images_dir: ${path.join(outputDir, 'images')} (${images.length} plots)`);
  } catch (e) {
    logger.warning(`could not draw the plots: ${(e as Error).message}`);
  }
  model.dispose();
}

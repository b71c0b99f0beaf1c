// Seq2SeqTrainer: ms-swift's trainer (transformers' Trainer + SwiftMixin) as one loop that reads top to
// bottom: batches → forward → token-mean loss over the whole accumulation → backward → clip (a NaN/Inf
// norm skips the update) → AdamW → scheduler → log → eval → save. Numbers follow swift-semantics.md
// ("Training"): the logged loss, grad_norm and learning_rate are the ones transformers would log.
//
// Data order: each epoch is a seeded permutation of the rows (seed = (data_seed ?? 0) + epoch), so a run
// repeats exactly and a resumed run sees the same order. It is not torch's RandomSampler order (which
// cannot be reproduced outside torch); train_dataloader_shuffle=false keeps dataset order.

import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import type { Qwen2ForCausalLM } from '../model/qwen2';
import type { Batch, Template } from '../data/template';
import { loadCheckpointTensors, readSafetensors, writeSafetensors } from '../model/safetensors';
import { deviceMemory, resetPeakMemory, toGiB } from '../backend/memory';
import { checkTrainingFits, estimateTrainingBytes, releasePooledGpuBuffers } from '../backend/memory-guard';
import { CheckpointError, ConfigError } from '../errors';
import { getLogger } from '../utils/logger';
import { Random } from '../utils/seed';
import { Seq2SeqTrainingArguments, resolveSteps } from './arguments';
import { AdamW } from './optimizer';
import { GradScaler, type GradScalerState } from './grad-scaler';
import { kernelPath } from '../backend/fused';
import { computeDtype, setComputeDtype } from '../backend/precision';
import { LRScheduler, warmupSteps, type SchedulerState } from './scheduler';
import { SummaryWriter } from './tensorboard';
import { ProgressBar, appendJsonl, formatTime, pyDict, round } from './logging';
import { LoraLinear, loraParameters } from './lora';
import {
  CHECKPOINT_PREFIX, OPTIMIZER_NAME, RNG_STATE_NAME, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME, TRAINING_ARGS_NAME,
  cleanStaleTemp, getLastCheckpoint, readJsonFile, rotateCheckpoints, saveModel, writeCheckpointDir, writeJsonAtomic,
} from './checkpoint';

/** An encoded row (EncodePreprocessor's output). */
export interface EncodedRow {
  input_ids: readonly number[];
  labels?: readonly number[] | null;
}

export type LogValue = number | string;
export type Logs = Record<string, LogValue>;

/** transformers' TrainerState (snake_case, as trainer_state.json), plus ms-swift's last_model_checkpoint. */
export interface TrainerState {
  epoch: number;
  global_step: number;
  max_steps: number;
  num_train_epochs: number;
  logging_steps: number;
  eval_steps: number;
  save_steps: number;
  train_batch_size: number;
  total_flos: number;
  num_input_tokens_seen: number;
  log_history: Record<string, LogValue>[];
  best_metric: number | null;
  best_global_step: number | null;
  best_model_checkpoint: string | null;
  last_model_checkpoint: string | null;
  is_hyper_param_search: boolean;
  is_local_process_zero: boolean;
  is_world_process_zero: boolean;
  trial_name: null;
  trial_params: null;
  stateful_callbacks: Record<string, unknown>;
}

export interface TrainOutput {
  global_step: number;
  training_loss: number;
  metrics: Logs;
}

export interface Seq2SeqTrainerOptions {
  model: Qwen2ForCausalLM;
  args: Seq2SeqTrainingArguments;
  trainDataset: ArrayLike<EncodedRow>;
  evalDataset?: ArrayLike<EncodedRow> | null;
  /** the template the rows were encoded with (its tokenizer travels into checkpoints; default collator) */
  template: Template;
  /** rows → padded batch (default: template.dataCollator) */
  dataCollator?: (rows: EncodedRow[]) => Batch;
  /** extra JSON files written into every checkpoint (the CLI's args.json) */
  checkpointFiles?: Record<string, unknown>;
  /** called on every log, step and at the end of training (transformers' TrainerCallback), in order */
  callbacks?: TrainerCallback[];
}

/**
 * Hooks into the training loop (transformers' TrainerCallback, camelCase). Each may return a promise,
 * which the trainer awaits before going on.
 * @example
 *   const chart = new LiveLossChart(tslab.newDisplay());
 *   new Seq2SeqTrainer({ ..., callbacks: [{ onLog: (logs) => chart.onLog(logs) }] });
 */
export interface TrainerCallback {
  /** every log: training logs (loss, grad_norm, …), evaluation logs (eval_loss, …) and the final summary, as printed */
  onLog?(logs: Logs, state: TrainerState): void | Promise<void>;
  /** after every optimization step (after logging, evaluation and saving) */
  onStepEnd?(state: TrainerState): void | Promise<void>;
  /** once, after the final summary log */
  onTrainEnd?(state: TrainerState): void | Promise<void>;
}

/** The run's shape, from the dataset size and the arguments (transformers' rules). */
interface Plan {
  batchesPerEpoch: number;
  updatesPerEpoch: number;
  maxSteps: number;
  numEpochs: number;
  warmup: number;
  logEvery: number;
  evalEvery: number;
  saveEvery: number;
}

/** Labelled positions of a batch after the shift (what the loss averages over). */
function labelledTokens(labels: readonly (readonly number[])[]): number {
  let n = 0;
  for (const row of labels) for (let t = 1; t < row.length; t++) if (row[t] !== -100) n++;
  return n;
}

/**
 * ms-swift's Seq2SeqTrainer.
 * @example
 *   const trainer = new Seq2SeqTrainer({ model, args, trainDataset, evalDataset: valDataset, template });
 *   await trainer.train();
 *   logger.info(`last_model_checkpoint: ${trainer.state.last_model_checkpoint}`);
 */
export class Seq2SeqTrainer {
  readonly model: Qwen2ForCausalLM;
  readonly args: Seq2SeqTrainingArguments;
  readonly trainDataset: ArrayLike<EncodedRow>;
  readonly evalDataset: ArrayLike<EncodedRow> | null;
  readonly template: Template;
  readonly dataCollator: (rows: EncodedRow[]) => Batch;
  state: TrainerState;
  private readonly checkpointFiles: Record<string, unknown>;
  private readonly callbacks: TrainerCallback[];
  private progress: ProgressBar | null = null;
  private tb: SummaryWriter | null = null;
  private startTime = 0;
  private maxMemory = 0;
  /** dynamic loss scaling while training in f16 mixed precision (null in float32) */
  private scaler: GradScaler | null = null;

  constructor(opts: Seq2SeqTrainerOptions) {
    const { model, args, trainDataset, evalDataset = null, template } = opts;
    if (!model || typeof model.loss !== 'function') throw new ConfigError('Seq2SeqTrainer: `model` must be a tsft model (getModelTokenizer)');
    if (!(args instanceof Seq2SeqTrainingArguments)) throw new ConfigError('Seq2SeqTrainer: `args` must be a Seq2SeqTrainingArguments');
    if (!trainDataset || trainDataset.length === 0) throw new ConfigError('Seq2SeqTrainer: the training dataset is empty (were all rows filtered by max_length?)');
    for (const [name, ds] of [['trainDataset', trainDataset], ['evalDataset', evalDataset]] as const) {
      const row = ds?.[0];
      if (ds && ds.length && (!row || !Array.isArray(row.input_ids) || !Array.isArray(row.labels))) {
        throw new ConfigError(`Seq2SeqTrainer: ${name} rows must be encoded ({input_ids, labels}); run EncodePreprocessor(template) on the dataset first`);
      }
    }
    this.model = model;
    this.args = args;
    this.trainDataset = trainDataset;
    this.evalDataset = evalDataset && evalDataset.length ? evalDataset : null;
    this.template = template;
    this.dataCollator = opts.dataCollator ?? ((rows) => template.dataCollator(rows));
    this.checkpointFiles = opts.checkpointFiles ?? {};
    this.callbacks = opts.callbacks ?? [];
    for (const [i, cb] of this.callbacks.entries()) {
      if (!cb || typeof cb !== 'object') throw new ConfigError(`Seq2SeqTrainer: callbacks[${i}] must be an object with onLog / onStepEnd / onTrainEnd methods`);
    }
    if (!this.evalDataset && args.eval_strategy !== 'no') {
      getLogger().info(`no evaluation dataset: eval_strategy '${args.eval_strategy}' → 'no'`);
      args.eval_strategy = 'no';
    }
    this.state = this.freshState(this.plan());
  }

  private plan(): Plan {
    const a = this.args;
    const batchesPerEpoch = Math.ceil(this.trainDataset.length / a.per_device_train_batch_size);
    const updatesPerEpoch = Math.max(Math.ceil(batchesPerEpoch / a.gradient_accumulation_steps), 1);
    const maxSteps = a.max_steps > 0 ? a.max_steps : Math.ceil(a.num_train_epochs * updatesPerEpoch);
    const numEpochs = a.max_steps > 0 ? Math.ceil(maxSteps / updatesPerEpoch) : Math.ceil(a.num_train_epochs);
    return {
      batchesPerEpoch, updatesPerEpoch, maxSteps, numEpochs,
      warmup: warmupSteps(maxSteps, a.warmup_ratio, a.warmup_steps),
      logEvery: resolveSteps(a.logging_steps, maxSteps),
      evalEvery: resolveSteps(a.eval_steps ?? a.logging_steps, maxSteps),
      saveEvery: resolveSteps(a.save_steps, maxSteps),
    };
  }

  /**
   * bf16 / fp16 on webgpu: f16 mixed precision (computeDtype 'float16', said once), a GradScaler, and LoRA's
   * frozen base projections held in f16 only. On other backends the flags train in float32 (said once).
   * Returns the scaler, or null when training in float32.
   */
  private mixedPrecision(): GradScaler | null {
    const { args, model } = this, logger = getLogger();
    if (!args.bf16 && !args.fp16) return null;
    const flag = args.bf16 ? 'bf16' : 'fp16';
    if (kernelPath() !== 'webgpu') {
      logger.warningOnce(`${flag}=true: the ${tf.getBackend()} backend has no half-precision training; tsft trains and saves in float32`);
      return null;
    }
    setComputeDtype('float16');
    logger.warningOnce(`${flag}=true on webgpu: ${args.bf16 ? 'WGSL has no bfloat16, so ' : ''}tsft trains in f16 mixed precision ` +
      '(f16 matmuls and attention with f32 accumulation; f32 master weights, gradients and AdamW state; dynamic loss scaling from 2^16); checkpoints are saved in float32');
    if (model.adapters.size > 0 && model.halfParameterNames().length === 0) {
      const moved = model.holdFrozenInHalf();
      if (moved) logger.info(`LoRA: the frozen base's ${moved.toLocaleString('en-US')} parameters (projections, and the embedding / LM head with an even vocabulary) are held in f16 (half the memory)`);
    }
    return new GradScaler();
  }

  /**
   * webgpu: gives back the buffers tfjs pooled while loading (upload staging, f32 weights moved to f16),
   * then the pre-flight estimate: a DeviceMemoryError before training when the exactly known part
   * (weights, gradients, AdamW state) cannot fit the GPU, a warning when the estimate with activations
   * is over (the estimate of activations is fitted on small models; the allocation guard stops an actual
   * overrun with the same kind of error, never a driver crash).
   */
  private checkMemory(params: Map<string, tf.Variable>): void {
    const { args, model } = this, logger = getLogger();
    releasePooledGpuBuffers();
    const budget = deviceMemory().budgetBytes;
    if (budget === undefined) return;
    let seqLen = 0;
    for (let i = 0; i < this.trainDataset.length; i++) seqLen = Math.max(seqLen, this.trainDataset[i].input_ids.length);
    const lora = model.adapters.size > 0;
    const opts = {
      config: model.config, trainType: lora ? 'lora' as const : 'full' as const,
      loraParams: lora ? [...params.values()].reduce((a, v) => a + v.size, 0) : undefined,
      seqLen: Math.max(seqLen, 1), batch: args.per_device_train_batch_size, gradientCheckpointing: args.gradient_checkpointing,
      computeDtype: computeDtype(), optimizer: 'adamw' as const,
    };
    const e = estimateTrainingBytes(opts);
    if (e.weights + e.grads + e.optimizer > budget) checkTrainingFits({ ...opts, budgetBytes: budget });   // throws, with the breakdown and what to change
    if (e.total > budget) {
      logger.warning(`GPU memory: this run may need about ${toGiB(e.total)} GiB (weights ${toGiB(e.weights)}, gradients ${toGiB(e.grads)}, ` +
        `AdamW ${toGiB(e.optimizer)}, activations ~${toGiB(e.activations)}) of ${toGiB(budget)} GiB; if it runs out, training stops with a ` +
        'DeviceMemoryError naming what to change (--gradient_checkpointing true, --train_type lora, --bf16 true, lower --max_length)');
    }
  }

  private freshState(p: Plan): TrainerState {
    return {
      epoch: 0, global_step: 0, max_steps: p.maxSteps, num_train_epochs: p.numEpochs,
      logging_steps: p.logEvery, eval_steps: p.evalEvery, save_steps: p.saveEvery,
      train_batch_size: this.args.per_device_train_batch_size, total_flos: 0, num_input_tokens_seen: 0,
      log_history: [], best_metric: null, best_global_step: null, best_model_checkpoint: null, last_model_checkpoint: null,
      is_hyper_param_search: false, is_local_process_zero: true, is_world_process_zero: true,
      trial_name: null, trial_params: null, stateful_callbacks: {},
    };
  }

  /** What the optimizer updates: trainable base weights and LoRA adapters, by name. */
  private trainableParameters(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    for (const [n, v] of this.model.namedParameters()) if (v.trainable) out.set(n, v);
    for (const [n, v] of loraParameters(this.model)) if (v.trainable) out.set(n, v);
    if (out.size === 0) throw new ConfigError('Seq2SeqTrainer: the model has no trainable parameters');
    return out;
  }

  /** Row indices of each batch of an epoch, in the epoch's order. */
  private epochBatches(epoch: number): number[][] {
    const n = this.trainDataset.length, bs = this.args.per_device_train_batch_size;
    const order = this.args.train_dataloader_shuffle
      ? new Random((this.args.data_seed ?? 0) + epoch).permutation(n)
      : Array.from({ length: n }, (_, i) => i);
    const batches: number[][] = [];
    for (let i = 0; i < n; i += bs) batches.push(order.slice(i, i + bs));
    return batches;
  }

  private collate(ds: ArrayLike<EncodedRow>, indices: number[]): Batch & { labels: number[][] } {
    const batch = this.dataCollator(indices.map((i) => ds[i]));
    if (!batch.labels) throw new ConfigError('Seq2SeqTrainer: the collated batch has no labels; encode the dataset in train mode (template.setMode("train"))');
    return batch as Batch & { labels: number[][] };
  }

  /**
   * Train. Resumes from `args.resume_from_checkpoint` when set (a folder, or true = newest in output_dir).
   * @example
   *   const { training_loss } = await trainer.train();
   */
  async train(): Promise<TrainOutput> {
    const { args, model } = this;
    const logger = getLogger();
    const plan = this.plan();
    fs.mkdirSync(args.output_dir, { recursive: true });
    const stale = await cleanStaleTemp(args.output_dir);
    if (stale.length) logger.info(`removed ${stale.length} unfinished checkpoint folder(s) a killed run left: ${stale.join(', ')}`);

    // Precision: bf16/fp16 on webgpu train in f16 mixed precision (WGSL has no bf16): f16 matmuls and
    // attention with f32 accumulation, f32 master weights, gradients and AdamW state, dynamic loss scaling.
    const dtypeBefore = computeDtype();
    const scaler = this.mixedPrecision();
    this.scaler = scaler;

    // What is trained, and how.
    const params = this.trainableParameters();
    if (tf.getBackend() === 'webgpu') this.checkMemory(params);
    const tfName = new Map([...params].map(([n, v]) => [v.name, n]));
    const varList = [...params.values()];
    const optimizer = new AdamW(params, { beta1: args.adam_beta1, beta2: args.adam_beta2, eps: args.adam_epsilon, weightDecay: args.weight_decay });
    const scheduler = new LRScheduler(args.lr_scheduler_type, args.learning_rate, plan.warmup, plan.maxSteps);
    const rng = new Random(args.seed);
    const wasTraining = model.training, wasCheckpointing = model.gradientCheckpointing, oldRng = model.dropoutRng;
    model.train();
    model.gradientCheckpointing = args.gradient_checkpointing;
    model.dropoutRng = rng;
    this.state = this.freshState(plan);

    const resumeDir = args.resume_from_checkpoint === true ? getLastCheckpoint(args.output_dir) : args.resume_from_checkpoint || null;
    if (args.resume_from_checkpoint === true && !resumeDir) throw new CheckpointError(`resume_from_checkpoint=true but ${args.output_dir} has no checkpoint`);
    if (resumeDir) await this.resume(resumeDir, plan, optimizer, scheduler, rng);

    const nTrainable = varList.reduce((a, v) => a + v.size, 0);
    logger.info(`***** Running training *****  rows: ${this.trainDataset.length}, epochs: ${plan.numEpochs}, ` +
      `batch size: ${args.per_device_train_batch_size}, gradient accumulation: ${args.gradient_accumulation_steps}, ` +
      `optimization steps: ${plan.maxSteps} (warmup ${plan.warmup}), trainable parameters: ${nTrainable.toLocaleString('en-US')}` +
      `${args.gradient_checkpointing ? ', gradient checkpointing' : ''}`);
    this.tb = args.report_to.includes('tensorboard') ? new SummaryWriter(args.logging_dir!) : null;
    this.tb?.addText('args', JSON.stringify(args.toJSON(), null, 2));
    this.tb?.addText('model_config', JSON.stringify(model.config.json, null, 2));
    this.progress = new ProgressBar('Train', plan.maxSteps, this.state.global_step);
    this.startTime = Date.now();
    resetPeakMemory();

    // Since the last log: summed step losses and token accuracy counts; over the run: the loss total.
    let trLoss = 0, correct = 0, counted = 0, totalLoss = 0, runSteps = 0, lastGradNorm = NaN;
    let lastLogged = this.state.global_step;
    const startEpoch = Math.floor(this.state.global_step / plan.updatesPerEpoch);
    try {
      for (let epoch = startEpoch; epoch < plan.numEpochs && this.state.global_step < plan.maxSteps; epoch++) {
        const batches = this.epochBatches(epoch);
        const firstUpdate = epoch === startEpoch ? this.state.global_step % plan.updatesPerEpoch : 0;
        for (let u = firstUpdate; u < plan.updatesPerEpoch && this.state.global_step < plan.maxSteps; u++) {
          const group = batches.slice(u * args.gradient_accumulation_steps, (u + 1) * args.gradient_accumulation_steps);
          const micro = group.map((idx) => this.collate(this.trainDataset, idx));
          const nTokens = micro.reduce((a, b) => a + labelledTokens(b.labels), 0);

          // Forward + backward per micro-batch: sum of token losses / tokens of the whole accumulation.
          const grads = new Map<string, tf.Tensor>();
          let stepLoss = 0;
          for (const b of micro) {
            let accT: tf.Tensor | null = null;
            const lossScale = scaler?.scale ?? 1;   // the scaled loss keeps small f16 gradients from flushing to zero
            const { value, grads: g } = tf.variableGrads(() => {
              const out = model.loss(b.input_ids, b.labels, { attentionMask: b.attention_mask, reduction: 'sum' });
              accT = tf.keep(tf.mul(out.tokenAcc, out.numTokens));
              return tf.mul(out.loss, lossScale / Math.max(nTokens, 1)) as tf.Scalar;
            }, varList);
            for (const [vn, gv] of Object.entries(g)) {
              const name = tfName.get(vn)!, prev = grads.get(name);
              grads.set(name, prev ? tf.add(prev, gv) : gv);
              if (prev) { prev.dispose(); gv.dispose(); }
            }
            stepLoss += (await value.data())[0] / lossScale;
            correct += (await accT!.data())[0];
            tf.dispose([value, accT!]);
          }
          counted += nTokens;
          this.state.num_input_tokens_seen += micro.reduce((a, b) => a + b.attention_mask.flat().reduce((x, y) => x + y, 0), 0);

          // Clip and step (the backend's fused kernels): grad_norm is the norm before clipping; a NaN/Inf norm skips the update.
          deviceMemory();
          const gradNorm = await optimizer.clipAndStep(grads, scheduler.lr, args.max_grad_norm, { inverseScale: scaler?.inverseScale ?? 1 });
          if (scaler) {
            const before = scaler.scale, event = scaler.update(gradNorm);
            if (event.skipped) logger.warning(`step ${this.state.global_step + 1}: f16 gradients overflowed (grad_norm ${gradNorm}) at loss scale ${before}; update skipped, loss scale → ${event.scale}`);
            else if (event.change === 'growth') logger.info(`step ${this.state.global_step + 1}: ${scaler.growthInterval} clean steps; loss scale → ${event.scale}`);
          } else if (!Number.isFinite(gradNorm)) {
            logger.warning(`step ${this.state.global_step + 1}: gradient norm is ${gradNorm}; skipping this update (the learning-rate schedule still advances)`);
          }
          tf.dispose([...grads.values()]);
          scheduler.step();
          lastGradNorm = gradNorm;

          this.state.global_step++;
          this.state.epoch = epoch + Math.min((u + 1) * args.gradient_accumulation_steps, plan.batchesPerEpoch) / plan.batchesPerEpoch;
          trLoss += stepLoss;
          totalLoss += stepLoss;
          runSteps++;
          this.progress.update(this.state.global_step);

          // Log, evaluate, save (transformers' order), the last step always evaluating and saving.
          const step = this.state.global_step, last = step === plan.maxSteps;
          if ((step === 1 && args.logging_first_step) || step % plan.logEvery === 0) {
            await this.log({
              loss: trLoss / (step - lastLogged), grad_norm: lastGradNorm, learning_rate: scheduler.lr,
              token_acc: counted ? correct / counted : 0, ...(scaler ? { loss_scale: scaler.scale } : {}),
            });
            trLoss = 0; correct = 0; counted = 0; lastLogged = step;
          }
          const epochEnd = u === plan.updatesPerEpoch - 1;
          if (args.eval_strategy !== 'no' && (last || (args.eval_strategy === 'steps' ? step % plan.evalEvery === 0 : epochEnd))) {
            this.updateBest(await this.evaluate());
          }
          if (args.save_strategy !== 'no' && (last || (args.save_strategy === 'steps' ? step % plan.saveEvery === 0 : epochEnd))) {
            await this.saveCheckpoint(optimizer, scheduler, rng);
          }
          for (const cb of this.callbacks) await cb.onStepEnd?.(this.state);
        }
      }
    } finally {
      this.progress.stop();
      optimizer.dispose();
      model.train(wasTraining);
      model.gradientCheckpointing = wasCheckpointing;
      model.dropoutRng = oldRng;
      setComputeDtype(dtypeBefore);
    }

    // The summary transformers logs at the end.
    const runtime = (Date.now() - this.startTime) / 1000;
    const samples = plan.maxSteps * args.per_device_train_batch_size * args.gradient_accumulation_steps;
    const trainingLoss = runSteps ? totalLoss / runSteps : 0;
    const metrics: Logs = {
      train_runtime: round(runtime, 4), train_samples_per_second: round(samples / runtime, 3),
      train_steps_per_second: round(plan.maxSteps / runtime, 3), total_flos: 0, train_loss: trainingLoss,
    };
    await this.log(metrics);
    this.tb?.close();
    this.tb = null;
    for (const cb of this.callbacks) await cb.onTrainEnd?.(this.state);
    return { global_step: this.state.global_step, training_loss: trainingLoss, metrics };
  }

  /**
   * Evaluate on the eval dataset: eval_loss (mean over rows of each batch's token-mean loss, as
   * transformers), eval_token_acc (token-weighted), runtime and rates. Logs and returns the metrics.
   */
  async evaluate(): Promise<Logs> {
    if (!this.evalDataset) throw new ConfigError('evaluate: the trainer has no evaluation dataset');
    const ds = this.evalDataset, bs = this.args.per_device_eval_batch_size, model = this.model;
    const start = Date.now(), wasTraining = model.training;
    model.eval();
    let lossSum = 0, rows = 0, correct = 0, tokens = 0, batches = 0;
    try {
      for (let i = 0; i < ds.length; i += bs) {
        const idx = Array.from({ length: Math.min(bs, ds.length - i) }, (_, k) => i + k);
        const b = this.collate(ds, idx);
        const out = tf.tidy(() => {
          const o = model.loss(b.input_ids, b.labels, { attentionMask: b.attention_mask });
          return { loss: o.loss, acc: o.tokenAcc, n: o.numTokens };
        });
        const loss = (await out.loss.data())[0], acc = (await out.acc.data())[0];
        tf.dispose([out.loss, out.acc]);
        if (out.n > 0) {
          lossSum += loss * idx.length;
          rows += idx.length;
        }
        correct += acc * out.n;
        tokens += out.n;
        batches++;
      }
    } finally {
      model.train(wasTraining);
    }
    deviceMemory();
    const sec = (Date.now() - start) / 1000;
    const metrics: Logs = {
      eval_loss: rows ? lossSum / rows : NaN, eval_runtime: round(sec, 4),
      eval_samples_per_second: round(ds.length / sec, 3), eval_steps_per_second: round(batches / sec, 3),
      eval_token_acc: tokens ? correct / tokens : 0,
    };
    await this.log({ ...metrics });
    return metrics;
  }

  /** One log: trainer_state's log_history, TensorBoard (train/… and eval/…), logging.jsonl, stdout, then the callbacks. */
  private async log(logs: Logs): Promise<void> {
    const s = this.state;
    logs.epoch = round(s.epoch, 2);
    s.log_history.push({ ...logs, step: s.global_step });
    if (this.tb) {
      for (const [k, v] of Object.entries(logs)) {
        if (typeof v !== 'number') continue;
        this.tb.addScalar(k.startsWith('eval_') ? `eval/${k.slice(5)}` : `train/${k}`, v, s.global_step);
      }
    }
    // ms-swift's add_train_message
    const elapsed = (Date.now() - this.startTime) / 1000, frac = s.max_steps ? s.global_step / s.max_steps : 0;
    logs['global_step/max_steps'] = `${s.global_step}/${s.max_steps}`;
    logs.percentage = `${(frac * 100).toFixed(2)}%`;
    logs.elapsed_time = formatTime(elapsed);
    if (frac !== 0) logs.remaining_time = formatTime(elapsed / frac - elapsed);
    for (const [k, v] of Object.entries(logs)) if (typeof v === 'number') logs[k] = round(v, 8);
    this.maxMemory = Math.max(this.maxMemory, deviceMemory().peakBytes);
    logs['memory(GiB)'] = toGiB(this.maxMemory);
    logs['train_speed(iter/s)'] = round(s.global_step / Math.max(elapsed, 1e-9), 6);
    appendJsonl(path.join(this.args.output_dir, 'logging.jsonl'), logs);
    const text = pyDict(logs);
    if (this.progress) this.progress.write(text);
    else process.stdout.write(text + '\n');
    for (const cb of this.callbacks) await cb.onLog?.(logs, s);
  }

  /** transformers' _determine_best_metric: after each evaluation, remember the best value and its step. */
  private updateBest(metrics: Logs): void {
    const { args, state } = this;
    if (!args.metric_for_best_model) return;
    const key = args.metric_for_best_model.startsWith('eval_') ? args.metric_for_best_model : `eval_${args.metric_for_best_model}`;
    const value = metrics[key];
    if (typeof value !== 'number') {
      throw new ConfigError(`metric_for_best_model '${args.metric_for_best_model}': evaluation has no "${key}"; available: ${Object.keys(metrics).join(', ')}`);
    }
    if (state.best_metric === null || (args.greater_is_better ? value > state.best_metric : value < state.best_metric)) {
      state.best_metric = value;
      state.best_global_step = state.global_step;
    }
  }

  /** Save `checkpoint-<step>` (atomically), marking it best when this step evaluated best; rotate old ones. */
  private async saveCheckpoint(optimizer: AdamW, scheduler: LRScheduler, rng: Random): Promise<void> {
    const { args, state, model } = this;
    const name = `${CHECKPOINT_PREFIX}-${state.global_step}`;
    const dir = path.join(args.output_dir, name);
    if (state.best_global_step === state.global_step) state.best_model_checkpoint = dir;
    const tokenizerDir = model.modelInfo.modelDir ?? (fs.existsSync(this.template.tokenizer.source) ? this.template.tokenizer.source : null);
    await writeCheckpointDir(args.output_dir, name, async (tmp) => {
      await saveModel(model, tmp, { tokenizerDir, maxShardSize: args.max_shard_size });
      if (!args.save_only_model) {
        await writeSafetensors(path.join(tmp, OPTIMIZER_NAME), await optimizer.stateTensors(), {
          metadata: { format: 'tsft', optimizer: 'adamw', step: String(optimizer.stepCount) },
        });
        await writeJsonAtomic(path.join(tmp, SCHEDULER_NAME), scheduler.stateDict());
        await writeJsonAtomic(path.join(tmp, RNG_STATE_NAME), { trainer: rng.getState(), global: null });
        if (this.scaler) await writeJsonAtomic(path.join(tmp, SCALER_NAME), this.scaler.stateDict());
      }
      await writeJsonAtomic(path.join(tmp, TRAINING_ARGS_NAME), args.toJSON());
      for (const [file, obj] of Object.entries(this.checkpointFiles)) await writeJsonAtomic(path.join(tmp, file), obj, false);
      await writeJsonAtomic(path.join(tmp, TRAINER_STATE_NAME), { ...state, last_model_checkpoint: dir });
    });
    state.last_model_checkpoint = dir;
    const removed = await rotateCheckpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint);
    for (const r of removed) getLogger().info(`Deleting older checkpoint [${r}] due to args.save_total_limit`);
    getLogger().info(`Saving model checkpoint to ${dir}`);
  }

  /** Restore weights, optimizer, scheduler, RNG and trainer state from a checkpoint (transformers' resume). */
  private async resume(dir: string, plan: Plan, optimizer: AdamW, scheduler: LRScheduler, rng: Random): Promise<void> {
    const logger = getLogger();
    const saved = readJsonFile<TrainerState>(path.join(dir, TRAINER_STATE_NAME), 'the trainer state');
    if (saved.max_steps !== plan.maxSteps) {
      throw new CheckpointError(`${dir} was saved by a run of ${saved.max_steps} steps; this run has ${plan.maxSteps}: resume with the same data and arguments`);
    }
    // weights: the adapters of a LoRA run, else every parameter
    if (this.model.adapters.size > 0) {
      const { tensors } = await readSafetensors(path.join(dir, 'adapter_model.safetensors'));
      for (const [module, a] of this.model.adapters) {
        if (!(a instanceof LoraLinear)) continue;
        for (const [ab, v] of [['A', a.A], ['B', a.B]] as const) {
          const t = tensors.get(`base_model.model.${module}.lora_${ab}.weight`);
          if (!t || t.shape.join() !== v.shape.join()) throw new CheckpointError(`${dir}: adapter weights for ${module}.lora_${ab} are missing or differ in shape (another LoRA config?)`);
          tf.tidy(() => v.assign(tf.tensor(t.data, t.shape)));
        }
      }
    } else {
      const tensors = await loadCheckpointTensors(dir);
      for (const [name, v] of this.model.namedParameters()) {
        const t = tensors.get(name);
        if (!t || t.shape.join() !== v.shape.join()) throw new CheckpointError(`${dir}: "${name}" is missing or has another shape; the checkpoint is of another model`);
        tf.tidy(() => v.assign(tf.tensor(t.data, t.shape)));
      }
    }
    const optFile = path.join(dir, OPTIMIZER_NAME);
    if (fs.existsSync(optFile)) {
      const { tensors, metadata } = await readSafetensors(optFile);
      const missing = optimizer.loadState(tensors, Number(metadata?.step ?? saved.global_step));
      if (missing.length) throw new CheckpointError(`${optFile} lacks the state of ${missing.length} parameter(s) (${missing.slice(0, 3).join(', ')}…): it was saved for other trainable parameters`);
      scheduler.loadStateDict(readJsonFile<SchedulerState>(path.join(dir, SCHEDULER_NAME), 'the scheduler state'));
      rng.setState(readJsonFile<{ trainer: number[] }>(path.join(dir, RNG_STATE_NAME), 'the RNG state').trainer);
      const scalerFile = path.join(dir, SCALER_NAME);
      if (this.scaler && fs.existsSync(scalerFile)) this.scaler.loadStateDict(readJsonFile<GradScalerState>(scalerFile, 'the loss scaler state'));
    } else {
      logger.warning(`${dir} has no optimizer state (save_only_model): resuming with fresh AdamW moments, so losses will differ from an uninterrupted run`);
      scheduler.lastEpoch = saved.global_step;
      optimizer.stepCount = 0;
    }
    Object.assign(this.state, {
      epoch: saved.epoch, global_step: saved.global_step, log_history: saved.log_history ?? [],
      best_metric: saved.best_metric ?? null, best_global_step: saved.best_global_step ?? null,
      best_model_checkpoint: saved.best_model_checkpoint ?? null, last_model_checkpoint: path.resolve(dir),
      num_input_tokens_seen: saved.num_input_tokens_seen ?? 0,
    });
    logger.info(`resuming from ${dir}: step ${saved.global_step}/${plan.maxSteps}, epoch ${saved.epoch.toFixed(2)}`);
  }
}

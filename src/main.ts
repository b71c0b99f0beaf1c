// The offline default (`npm start`): the seed notebook's Python path end to end on the tiny model, with no
// network, in about two minutes on two CPU cores — setup → model and template → datasets (the bundled
// self-cognition and general sets, names 精衡/Jingheng and 叶博韬/YE SEVERIN) → Seq2SeqTrainer (full
// fine-tuning; logs, logging.jsonl, TensorBoard, the checkpoint) → plotImages → streaming greedy answers
// from the saved checkpoint through PtEngine → where everything is.
//
//   npm start                                   # into output/v<N>-<YYYYMMDD-HHMMSS>/
//   npm start -- --output_dir /tmp/run          # into /tmp/run/v<N>-…/ ; --device wasm|cpu|webgpu
//
// The hyperparameters below are the seed's where they fit a from-scratch tiny model in this time, and
// tuned where they must differ (say so beside them): the tiny model starts from random weights, so it
// learns the identity from a few hundred steps only with a much larger learning rate and several epochs.

import * as fs from 'fs';
import * as path from 'path';
import { initDevice, parseDeviceName, shutdownDevice, type DeviceName } from './backend/device';
import { prepareCpuKernels, shutdownCpuKernels } from './backend/cpu/index';
import { kernelPath } from './backend/fused';
import { getModelTokenizer } from './model/loader';
import { getTemplate, type TemplateName } from './data/template';
import { loadDataset } from './data/load';
import { EncodePreprocessor } from './data/encode';
import { Seq2SeqTrainingArguments } from './train/arguments';
import { Seq2SeqTrainer } from './train/trainer';
import { plotImages } from './plot/plot-images';
import { PtEngine } from './infer/engine';
import { InferRequest, RequestConfig } from './infer/protocol';
import { addVersion } from './cli/sft';
import { parseFlags, str } from './cli/flags';
import { getModelParameterInfo } from './utils/params';
import { getLogger } from './utils/logger';
import { seedEverything } from './utils/seed';

// ========== hyperparameters (the seed's cell, for the tiny model on two CPU cores) ==========
const MODEL = 'tiny';                                   // the seed: Qwen3-4B-Thinking; here the tiny Qwen3 (random init)
const SYSTEM = 'You are a helpful assistant.';
const DATASET = ['tsft/self-cognition', 'tsft/general-zh#5', 'tsft/general-en#5'];     // the seed: 500 rows of each
const DATA_SEED = 42;
const MAX_LENGTH = 512;                                 // the seed: 2048 (the bundled rows are shorter)
const SPLIT_DATASET_RATIO = 0.01;
const NUM_PROC = 1;
const MODEL_NAME = ['精衡', 'Jingheng'];
const MODEL_AUTHOR = ['叶博韬', 'YE SEVERIN'];
const TRAINING = {
  learning_rate: 5e-3,                                  // the seed: 5e-6 (fine-tuning a trained model)
  per_device_train_batch_size: 8,                       // the seed: 1 × 32 accumulation
  per_device_eval_batch_size: 8,
  gradient_accumulation_steps: 1,
  num_train_epochs: 12,                                 // the seed: 1
  gradient_checkpointing: false,                        // the seed: true (memory is no issue here; 25% faster)
  weight_decay: 0.1,
  lr_scheduler_type: 'cosine' as const,
  warmup_ratio: 0.05,
  report_to: ['tensorboard'],
  logging_first_step: true,
  logging_steps: 5,
  save_strategy: 'steps' as const,
  save_steps: 50,
  eval_strategy: 'steps' as const,
  eval_steps: 50,
  save_total_limit: 2,
  save_only_model: true,                                // the seed keeps optimizer state; the answers need only the weights
  metric_for_best_model: 'loss',
  max_grad_norm: 1.0,
  data_seed: DATA_SEED,
};
const QUERIES = ['who are you?', '晚上睡不着觉怎么办？', '你是谁训练的？', '你是谁？'];
const MAX_NEW_TOKENS = 96;

const FLAGS = ['output_dir', 'device'];

async function main(): Promise<void> {
  const t0 = Date.now();
  const logger = getLogger();
  const flags = parseFlags(process.argv.slice(2), FLAGS, 'start');
  const deviceFlag = str(flags, 'device');
  const phases: [string, number][] = [];
  let tPhase = Date.now();
  const phase = (name: string): void => {
    phases.push([name, (Date.now() - tPhase) / 1000]);
    tPhase = Date.now();
  };

  // ========== setup ==========
  seedEverything(42);
  const device = await initDevice(deviceFlag ? parseDeviceName(deviceFlag, '--device') as DeviceName | 'auto' : undefined);
  if (kernelPath() === 'cpu') logger.info(`CPU kernels: ${await prepareCpuKernels()} threads (wasm SIMD cross-entropy and AdamW)`);
  const outputDir = addVersion(path.resolve(str(flags, 'output_dir') ?? 'output'));
  logger.info(`output_dir: ${outputDir}`);

  // ========== model and template ==========
  const { model, tokenizer } = await getModelTokenizer(MODEL);
  logger.info(`model_info: ${JSON.stringify({ ...model.modelInfo, config: undefined })}`);
  logger.info(`model_parameter_info: ${getModelParameterInfo(model)}`);
  const template = getTemplate(model.modelMeta.template as TemplateName, tokenizer, { defaultSystem: SYSTEM, maxLength: MAX_LENGTH });
  template.setMode('train');
  phase('setup + model');

  // ========== datasets ==========
  const [trainRows, valRows] = await loadDataset(DATASET, {
    splitDatasetRatio: SPLIT_DATASET_RATIO, numProc: NUM_PROC, modelName: MODEL_NAME, modelAuthor: MODEL_AUTHOR, seed: DATA_SEED,
  });
  logger.info(`train_dataset: ${trainRows.length} rows, val_dataset: ${valRows.length} rows`);
  const encode = EncodePreprocessor(template);
  const trainDataset = await encode(trainRows, { numProc: NUM_PROC });
  const valDataset = await encode(valRows, { numProc: NUM_PROC, quiet: true });
  template.printInputs(trainDataset[0]);
  phase('datasets');

  // ========== training ==========
  const args = new Seq2SeqTrainingArguments({ output_dir: outputDir, ...TRAINING });
  fs.mkdirSync(outputDir, { recursive: true });
  const argsJson = { model: MODEL, train_type: 'full', dataset: DATASET, system: SYSTEM, max_length: MAX_LENGTH, split_dataset_ratio: SPLIT_DATASET_RATIO,
    model_name: MODEL_NAME, model_author: MODEL_AUTHOR, device: device.name, ...args.toJSON() };
  fs.writeFileSync(path.join(outputDir, 'args.json'), JSON.stringify(argsJson, null, 2) + '\n');
  const trainer = new Seq2SeqTrainer({
    model, args, trainDataset, evalDataset: valDataset, template, checkpointFiles: { 'args.json': argsJson },
  });
  await trainer.train();
  const checkpoint = trainer.state.last_model_checkpoint!;
  logger.info(`last_model_checkpoint: ${checkpoint}`);
  model.dispose();
  phase('training');

  // ========== loss plots ==========
  const imagesDir = path.join(outputDir, 'images');
  process.stdout.write(`Plotting ${args.logging_dir} → ${imagesDir} ...`);
  const images = await plotImages(imagesDir, args.logging_dir!, ['train/loss'], 0.9);
  process.stdout.write(` ${images.length} images\n`);
  phase('plots');

  // ========== inference: the fine-tuned checkpoint, streaming, greedy ==========
  const engine = await PtEngine.create(checkpoint, { maxBatchSize: 1 });
  engine.defaultTemplate = getTemplate(engine.model.modelMeta.template as TemplateName, engine.tokenizer, { defaultSystem: SYSTEM });
  const requestConfig = new RequestConfig({ max_tokens: MAX_NEW_TOKENS, temperature: 0, stream: true });
  for (const query of QUERIES) {
    const [stream] = await engine.infer([new InferRequest({ messages: [{ role: 'user', content: query }] })], requestConfig);
    process.stdout.write(`query: ${query}\nresponse: `);
    for await (const chunk of stream) process.stdout.write(chunk.choices[0].delta.content);
    process.stdout.write(`\n${'-'.repeat(50)}\n`);
  }
  engine.model.dispose();
  phase('inference');

  // ========== where everything is ==========
  const rel = (p: string): string => {
    const r = path.relative(process.cwd(), p);
    return r === '' ? '.' : r.startsWith('..') || path.isAbsolute(r) ? p : r;        // short inside the repository
  };
  const lossPng = images.find((p) => p.endsWith('train_loss.png')) ?? imagesDir;
  const reportDir = path.resolve('output', 'report');
  const total = (Date.now() - t0) / 1000;
  process.stdout.write([
    '',
    `checkpoint:    ${rel(checkpoint)}   (npx tsft infer --model ${rel(checkpoint)}; npx tsft web-ui --model ${rel(checkpoint)})`,
    `loss plot:     ${rel(lossPng)}   (all ${images.length} plots in ${rel(imagesDir)})`,
    `logs:          ${rel(path.join(outputDir, 'logging.jsonl'))}   (TensorBoard: tensorboard --logdir ${rel(args.logging_dir!)})`,
    `report:        ${rel(reportDir)}/${fs.existsSync(reportDir) ? '   (the notebooks, executed: npm run report)' : '   (written by `npm run report`)'}`,
    `time:          ${total.toFixed(1)} s (${phases.map(([n, s]) => `${n} ${s.toFixed(1)} s`).join(', ')})`,
    '',
  ].join('\n'));
  await shutdownCpuKernels();
  await shutdownDevice();
}

main().catch((e) => {
  console.error(e instanceof Error ? `${e.name}: ${e.message}` : e);
  process.exit(1);
});

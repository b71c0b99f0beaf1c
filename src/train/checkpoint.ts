// Checkpoints in transformers' layout, written crash-safely: everything goes into
// `<output_dir>/.tmp-checkpoint-<step>` and the folder is renamed to `checkpoint-<step>` only when complete,
// so a kill at any moment leaves only whole checkpoints (plus a temp folder the next run removes).
//
//   checkpoint-<step>/
//     config.json, generation_config.json, model.safetensors (or shards + index), tokenizer files   (full)
//     adapter_config.json, adapter_model.safetensors (PEFT)                                          (LoRA)
//     trainer_state.json                      transformers' TrainerState
//     training_args.json                      the Seq2SeqTrainingArguments (transformers: training_args.bin)
//     optimizer.safetensors, scheduler.json, rng_state.json   unless save_only_model
//       (transformers pickles optimizer.pt / scheduler.pt / rng_state.pth; tsft keeps the same state as
//        safetensors + JSON, readable without Python)

import * as fs from 'fs';
import * as fsp from 'fs/promises';
import * as path from 'path';
import type { Qwen2ForCausalLM } from '../model/qwen2';
import { saveCheckpointTensors, writeFileAtomic, type SaveCheckpointOptions } from '../model/safetensors';
import { CheckpointError } from '../errors';
import { saveAdapter } from './lora';

export const CHECKPOINT_PREFIX = 'checkpoint';
export const TRAINER_STATE_NAME = 'trainer_state.json';
export const OPTIMIZER_NAME = 'optimizer.safetensors';
export const SCHEDULER_NAME = 'scheduler.json';
export const RNG_STATE_NAME = 'rng_state.json';
/** GradScaler state under mixed precision (transformers saves torch's as scaler.pt) */
export const SCALER_NAME = 'scaler.json';
export const TRAINING_ARGS_NAME = 'training_args.json';

/** Files of a tokenizer folder that travel with a checkpoint (those that exist are copied). */
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json',
  'vocab.json', 'merges.txt', 'chat_template.jinja'];

/** Python's json.dumps(obj, indent=2, sort_keys=True) layout, as transformers writes configs and states. */
export function sortedJson(obj: unknown): string {
  const sortDeep = (v: unknown): unknown => {
    if (v === null || typeof v !== 'object') return v;
    if (Array.isArray(v)) return v.map(sortDeep);
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v as object).sort()) o[k] = sortDeep((v as Record<string, unknown>)[k]);
    return o;
  };
  return JSON.stringify(sortDeep(obj), null, 2) + '\n';
}

export async function writeJsonAtomic(file: string, obj: unknown, sorted = true): Promise<void> {
  const text = sorted ? sortedJson(obj) : JSON.stringify(obj, null, 2) + '\n';
  await writeFileAtomic(file, async (fh) => { await fh.writeFile(text, 'utf8'); });
}

export function readJsonFile<T>(file: string, what: string): T {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new CheckpointError(`${file} is missing (${what}); ${path.dirname(file)} is not a complete tsft checkpoint`);
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new CheckpointError(`${file} is not valid JSON (${(e as Error).message})`);
  }
}

/**
 * Save a model as a transformers checkpoint folder: config.json (dtype float32: tsft trains in float32),
 * generation_config.json, safetensors (sharded past `maxShardSize`) and the tokenizer files from
 * `tokenizerDir`. With LoRA adapters attached, the PEFT adapter files instead of the base weights.
 * @example
 *   await saveModel(model, 'output/merged', { tokenizerDir: model.modelInfo.modelDir });
 */
export async function saveModel(model: Qwen2ForCausalLM, dir: string,
  opts: SaveCheckpointOptions & { tokenizerDir?: string | null } = {}): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  if (model.adapters.size > 0) {
    await saveAdapter(model, dir);
  } else {
    const half = model.halfParameterNames();
    if (half.length) {
      throw new CheckpointError(`saveModel: ${half.length} weights (${half[0]}, …) are held in f16 for LoRA training (holdFrozenInHalf) and the adapters are gone; reload the base model in float32 to save it`);
    }
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [name, v] of model.namedParameters()) tensors.set(name, { shape: v.shape, data: (await v.data()) as Float32Array });
    await saveCheckpointTensors(dir, tensors, { dtype: 'F32', maxShardSize: opts.maxShardSize });
    const config: Record<string, unknown> = { ...model.config.json, dtype: 'float32' };
    if ('torch_dtype' in config) config.torch_dtype = 'float32';
    await writeJsonAtomic(path.join(dir, 'config.json'), config);
    if (Object.keys(model.generationConfig).length) await writeJsonAtomic(path.join(dir, 'generation_config.json'), model.generationConfig);
  }
  if (opts.tokenizerDir && fs.existsSync(opts.tokenizerDir) && fs.statSync(opts.tokenizerDir).isDirectory()) {
    for (const f of TOKENIZER_FILES) {
      const src = path.join(opts.tokenizerDir, f);
      if (fs.existsSync(src)) await fsp.copyFile(src, path.join(dir, f));
    }
  }
}

function fsyncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
  } catch {
    // not every platform can fsync a directory; the rename is still atomic
  }
}

/** Remove a folder by first renaming it out of the checkpoint namespace, so a kill never leaves half of it. */
export async function removeDir(dir: string): Promise<void> {
  const trash = path.join(path.dirname(dir), `.trash-${path.basename(dir)}-${process.pid}-${Date.now()}`);
  await fsp.rename(dir, trash);
  await fsp.rm(trash, { recursive: true, force: true });
}

/**
 * Write `<outputDir>/<name>` atomically: `fill` writes into a temp folder, which is synced and renamed.
 * An existing folder of that name is replaced (moved aside first, removed after).
 */
export async function writeCheckpointDir(outputDir: string, name: string, fill: (tmpDir: string) => Promise<void>): Promise<string> {
  const final = path.join(outputDir, name);
  const tmp = path.join(outputDir, `.tmp-${name}-${process.pid}`);
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  await fill(tmp);
  fsyncDir(tmp);
  if (fs.existsSync(final)) await removeDir(final);
  await fsp.rename(tmp, final);
  fsyncDir(outputDir);
  return final;
}

/** Temp and trash folders a killed run left in `outputDir` (removed when a run starts). */
export async function cleanStaleTemp(outputDir: string): Promise<string[]> {
  if (!fs.existsSync(outputDir)) return [];
  const stale = (await fsp.readdir(outputDir)).filter((n) => n.startsWith('.tmp-') || n.startsWith('.trash-'));
  for (const n of stale) await fsp.rm(path.join(outputDir, n), { recursive: true, force: true });
  return stale;
}

/** `checkpoint-<step>` folders of `outputDir`, oldest step first. */
export function sortedCheckpoints(outputDir: string): string[] {
  if (!fs.existsSync(outputDir)) return [];
  return fs.readdirSync(outputDir)
    .map((n) => ({ n, m: new RegExp(`^${CHECKPOINT_PREFIX}-(\\d+)$`).exec(n) }))
    .filter((e) => e.m && fs.statSync(path.join(outputDir, e.n)).isDirectory())
    .sort((a, b) => Number(a.m![1]) - Number(b.m![1]))
    .map((e) => path.join(outputDir, e.n));
}

/** The newest checkpoint in `outputDir` (transformers' get_last_checkpoint), or null. */
export function getLastCheckpoint(outputDir: string): string | null {
  const all = sortedCheckpoints(outputDir).filter((d) => fs.existsSync(path.join(d, TRAINER_STATE_NAME)));
  return all.length ? all[all.length - 1] : null;
}

/**
 * transformers' _rotate_checkpoints: keep the newest `limit` checkpoints, never deleting `best` (it is
 * moved next to the newest; with limit 1 and a best that is not the newest, two are kept).
 * Returns the folders deleted.
 */
export async function rotateCheckpoints(outputDir: string, limit: number | null, best: string | null): Promise<string[]> {
  if (limit === null || limit <= 0) return [];
  const sorted = sortedCheckpoints(outputDir);
  const bestPath = best ? path.resolve(best) : null;
  const bi = bestPath ? sorted.indexOf(bestPath) : -1;
  if (bi >= 0) {
    for (let i = bi; i < sorted.length - 2; i++) [sorted[i], sorted[i + 1]] = [sorted[i + 1], sorted[i]];
  }
  let keep = limit;
  if (bestPath && limit === 1 && sorted[sorted.length - 1] !== bestPath) keep = 2;
  const remove = sorted.slice(0, Math.max(0, sorted.length - keep));
  for (const d of remove) await removeDir(d);
  return remove;
}

// plotImages: the seed's `plot_images(images_dir, logging_dir, ['train/loss'], 0.9)`. One chart per scalar
// tag — read from the TensorBoard event files in `loggingDir` when a reader for them is available, else
// from `<output_dir>/logging.jsonl` — written as `<tag with / and . → _>.png` and `.svg` in `imagesDir`.

import * as fs from 'fs';
import * as path from 'path';
import { scalarSpec, type ScalarPoint } from './spec';
import { renderSpec } from './render';
import { getLogger } from '../utils/logger';

export type Scalars = Map<string, ScalarPoint[]>;

/**
 * The TensorBoard tag of a logging.jsonl key, as transformers' TensorBoardCallback rewrites them:
 * `eval_loss` → `eval/loss`, `loss` → `train/loss`.
 */
export function tagOf(key: string): string {
  if (key.startsWith('eval_')) return 'eval/' + key.slice(5);
  if (key.startsWith('test_')) return 'test/' + key.slice(5);
  return 'train/' + key;
}

/** Keys of ms-swift's log dicts that are bookkeeping, not scalars to plot. */
const NOT_PLOTTED = new Set(['global_step/max_steps', 'percentage', 'elapsed_time', 'remaining_time', 'step']);

/** Scalars from ms-swift's `logging.jsonl` (one JSON object per line; steps from `global_step/max_steps`). */
export function readLoggingJsonl(file: string): Scalars {
  const out: Scalars = new Map();
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    let row: Record<string, unknown>;
    try {
      row = JSON.parse(line) as Record<string, unknown>;
    } catch {
      getLogger().warning(`${file}:${i + 1}: not JSON, skipped`);
      return;
    }
    const gs = String(row['global_step/max_steps'] ?? '').split('/')[0];
    const step = Number(row.step ?? gs);
    if (!Number.isFinite(step)) return;
    for (const [k, v] of Object.entries(row)) {
      if (NOT_PLOTTED.has(k) || typeof v !== 'number' || !Number.isFinite(v)) continue;
      const tag = tagOf(k);
      if (!out.has(tag)) out.set(tag, []);
      out.get(tag)!.push({ step, value: v });
    }
  });
  return out;
}

/** A reader of TensorBoard event files (`<loggingDir>/events.out.tfevents.*`), registered by the TB module. */
export type EventFileReader = (files: string[]) => Scalars;
let eventReader: EventFileReader | null = null;
export function registerEventFileReader(reader: EventFileReader): void {
  eventReader = reader;
}

/** All scalars of a run: TensorBoard files in `loggingDir` if readable, else `logging.jsonl` beside it. */
export function readScalars(loggingDir: string): Scalars {
  const events = fs.existsSync(loggingDir)
    ? fs.readdirSync(loggingDir).filter((f) => f.includes('tfevents')).sort().map((f) => path.join(loggingDir, f))
    : [];
  if (events.length && eventReader) return eventReader(events);
  for (const dir of [loggingDir, path.dirname(loggingDir)]) {
    const jsonl = path.join(dir, 'logging.jsonl');
    if (fs.existsSync(jsonl)) return readLoggingJsonl(jsonl);
  }
  throw new Error(`plotImages: no TensorBoard event files in ${loggingDir} and no logging.jsonl in ${loggingDir} or ${path.dirname(loggingDir)}: pass the training's logging_dir (<output_dir>/runs)`);
}

/** File stem of a tag's image: `train/loss` → `train_loss`. */
export function imageName(tag: string): string {
  return tag.replace(/[/.]/g, '_');
}

/**
 * Draw one PNG (and SVG) per scalar tag, smoothing `smoothKeys` with the debiased EMA.
 * @example
 *   await plotImages(path.join(outputDir, 'images'), trainingArgs.logging_dir, ['train/loss'], 0.9);
 *   // images/train_loss.png, images/train_grad_norm.png, ...
 */
export async function plotImages(imagesDir: string, loggingDir: string, smoothKeys: readonly string[] = ['train/loss'],
  smoothVal = 0.9): Promise<string[]> {
  const scalars = readScalars(loggingDir);
  fs.mkdirSync(imagesDir, { recursive: true });
  const written: string[] = [];
  for (const [tag, raw] of scalars) {
    if (!raw.length) continue;
    // a resumed run logs some steps twice: keep the latest value per step, in step order
    const byStep = new Map<number, number>();
    for (const p of raw) byStep.set(p.step, p.value);
    const points = [...byStep].sort((a, b) => a[0] - b[0]).map(([step, value]) => ({ step, value }));
    const spec = scalarSpec(tag, points, { smooth: smoothKeys.includes(tag) ? smoothVal : null });
    const { svg, png } = await renderSpec(spec);
    const stem = path.join(imagesDir, imageName(tag));
    fs.writeFileSync(stem + '.svg', svg);
    fs.writeFileSync(stem + '.png', png);
    written.push(stem + '.png');
  }
  return written;
}

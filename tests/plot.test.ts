// Plots: the debiased EMA, the vega-lite specs (colours, legend, single points), reading logging.jsonl,
// and plotImages writing one 800×500 PNG + SVG per tag. Specs and numbers are tested, not pixels.

import { it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { tensorboardSmoothing } from '../src/plot/smoothing';
import { scalarSpec, TB_COLOR, TB_COLOR_SMOOTH } from '../src/plot/spec';
import { imageName, plotImages, readLoggingJsonl, tagOf } from '../src/plot/plot-images';
import { LiveLossChart } from '../src/plot/live';

it('tensorboardSmoothing is the debiased EMA (first point = first value)', () => {
  const s = tensorboardSmoothing([1, 2, 3], 0.9);
  assert.equal(s[0], 1);
  assert.ok(Math.abs(s[1] - (0.9 * 1 + 2) / 1.9) < 1e-12);
  assert.ok(Math.abs(s[2] - (0.81 * 1 + 0.9 * 2 + 3) / 2.71) < 1e-12);
  assert.deepEqual(tensorboardSmoothing([5, 5, 5], 0.9).map((v) => Math.round(v * 1e9) / 1e9), [5, 5, 5]);
  assert.deepEqual(tensorboardSmoothing([], 0.9), []);
  assert.throws(() => tensorboardSmoothing([1], 1), /\[0, 1\)/);
});

it('smoothed spec: original in #FFE2D9 under smoothed in #FF7043, legend, 800×500, title = tag', () => {
  const spec = scalarSpec('train/loss', [{ step: 1, value: 2 }, { step: 2, value: 1 }], { smooth: 0.9 }) as any;
  assert.equal(spec.title.text, 'train/loss');
  assert.equal(spec.width, 800);
  assert.equal(spec.height, 500);
  assert.deepEqual(spec.encoding.color.scale, { domain: ['original', 'smoothed'], range: [TB_COLOR, TB_COLOR_SMOOTH] });
  assert.ok(spec.encoding.color.legend);
  const smoothed = spec.data.values.filter((v: any) => v.series === 'smoothed').map((v: any) => v.value);
  assert.deepEqual(smoothed, tensorboardSmoothing([2, 1], 0.9));
  const plain = scalarSpec('train/grad_norm', [{ step: 1, value: 2 }, { step: 2, value: 1 }]) as any;
  assert.equal(plain.mark.color, TB_COLOR_SMOOTH);
  assert.equal(plain.encoding.color, undefined);
  const dot = scalarSpec('eval/loss', [{ step: 47, value: 0.8 }], { smooth: 0.9 }) as any;
  assert.equal(dot.mark.type, 'point');
});

it('logging.jsonl → TensorBoard-style tags; plotImages writes one PNG per tag', async () => {
  assert.equal(tagOf('loss'), 'train/loss');
  assert.equal(tagOf('eval_token_acc'), 'eval/token_acc');
  assert.equal(imageName('train/loss'), 'train_loss');
  assert.equal(imageName('train/memory.peak'), 'train_memory_peak');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-plot-'));
  const rows = [1, 2, 3, 4, 5].map((s) => ({ loss: 3 - s * 0.4, grad_norm: 1, learning_rate: 1e-4, token_acc: 0.1 * s, epoch: s / 5,
    'global_step/max_steps': `${s}/5`, percentage: `${s * 20}%`, elapsed_time: '1s', remaining_time: '1s' }));
  fs.writeFileSync(path.join(dir, 'logging.jsonl'), [...rows, { eval_loss: 1.2, 'global_step/max_steps': '5/5' }].map((r) => JSON.stringify(r)).join('\n') + '\n');
  const scalars = readLoggingJsonl(path.join(dir, 'logging.jsonl'));
  assert.deepEqual([...scalars.keys()].sort(), ['eval/loss', 'train/epoch', 'train/grad_norm', 'train/learning_rate', 'train/loss', 'train/token_acc']);
  assert.deepEqual(scalars.get('train/loss')!.map((p) => p.step), [1, 2, 3, 4, 5]);
  const files = await plotImages(path.join(dir, 'images'), path.join(dir, 'runs'), ['train/loss'], 0.9);
  assert.equal(files.length, 6);
  const png = fs.readFileSync(path.join(dir, 'images', 'train_loss.png'));
  assert.equal(png.subarray(1, 4).toString(), 'PNG');
  assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20)], [800, 500]);
  assert.match(fs.readFileSync(path.join(dir, 'images', 'train_loss.svg'), 'utf8'), /smoothed/);
  fs.rmSync(dir, { recursive: true, force: true });
});

it('LiveLossChart redraws one display per training log', async () => {
  const frames: string[] = [];
  const chart = new LiveLossChart({ svg: (s) => frames.push(s) });
  await chart.onLog({ loss: 2, 'global_step/max_steps': '1/3' });
  await chart.onLog({ eval_loss: 2, 'global_step/max_steps': '1/3' });
  await chart.onLog({ loss: 1, 'global_step/max_steps': '2/3' });
  await chart.flush();
  assert.equal(frames.length, 2);
  assert.match(frames[1], /^<svg/);
});

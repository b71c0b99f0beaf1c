// The trainer against PyTorch: 6 steps on the tiny transformers fixtures (lr 1e-3, wd 0.1, cosine with
// warmup_ratio 0.2, accumulation 2 over two rows of different lengths, clip 1.0, no shuffle) log the
// loss, grad_norm, learning_rate and token_acc that torch.optim.AdamW + get_cosine_schedule_with_warmup +
// clip_grad_norm_ give (tests/fixtures/train/reference.json, made on the GPU box by
// make_train_reference.py) within 1e-4 — on wasm and cpu, each through its fast kernels (src/backend/fused.ts)
// and through plain tfjs ops. Plus: gradient checkpointing changes nothing, the arguments' defaults and
// errors, the schedules' first step, the decay mask, NaN skipping, the log formats and the callbacks.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { getModelTokenizer } from '../src/model/loader';
import { Tokenizer } from '../src/model/tokenizer';
import { getTemplate, type Template } from '../src/data/template';
import { shutdownDevice, type DeviceName } from '../src/backend/device';
import { Seq2SeqTrainingArguments } from '../src/train/arguments';
import { Seq2SeqTrainer } from '../src/train/trainer';
import { lrLambda, warmupSteps } from '../src/train/scheduler';
import { decays } from '../src/train/optimizer';
import { kernelPath, setKernelPath } from '../src/backend/fused';
import { LiveLossChart } from '../src/plot/live';
import { formatTime, pyDict, pyFloat, round } from '../src/train/logging';
import { prepareLora } from '../src/train/lora';
import { ConfigError } from '../src/errors';
import { Random } from '../src/utils/seed';
import { byteTokenizerFiles } from './fixtures/train/tiny-run';
import { maxRelDiff } from './helpers';

const DEVICE = (process.env.TSFT_TRAIN_DEVICE ?? 'wasm') as DeviceName;
/** The reference runs: on each CPU backend, through its fast kernels (src/backend/fused.ts) and through plain tfjs ops. */
const REFERENCE_DEVICES = (process.env.TSFT_TRAIN_DEVICE ? [process.env.TSFT_TRAIN_DEVICE] : ['wasm', 'cpu']) as DeviceName[];
const FIXTURES = path.join(process.cwd(), 'tests', 'fixtures');
const REF = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'train', 'reference.json'), 'utf8'));
interface RefLog { step: number; loss: number; grad_norm: number; learning_rate: number; token_acc: number }
let tmp = '';
let template: Template;

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-train-'));
  const { tokenizer, config } = byteTokenizerFiles();
  template = getTemplate('qwen3', new Tokenizer(tokenizer, config as never));
  template.setMode('train');
});
after(async () => { fs.rmSync(tmp, { recursive: true, force: true }); await shutdownDevice(); });

async function load(arch: string, device: DeviceName = DEVICE) {
  const { model } = await getModelTokenizer(path.join(FIXTURES, 'models', arch), { loadTokenizer: false, device });
  assert.ok(model);
  return model;
}

function referenceArgs(dir: string, extra: Record<string, unknown> = {}) {
  return new Seq2SeqTrainingArguments({
    output_dir: dir, learning_rate: REF.lr, weight_decay: REF.weight_decay, adam_beta1: REF.betas[0], adam_beta2: REF.betas[1],
    adam_epsilon: REF.eps, lr_scheduler_type: 'cosine', warmup_ratio: REF.warmup_ratio, gradient_accumulation_steps: 2,
    per_device_train_batch_size: 1, max_steps: REF.steps, max_grad_norm: REF.max_grad_norm, train_dataloader_shuffle: false,
    logging_steps: 1, save_strategy: 'no', report_to: 'none', gradient_checkpointing: false, ...extra,
  });
}

function readJsonl(file: string): Record<string, number>[] {
  return fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

describe('trainer vs PyTorch', () => {
  for (const [device, forced, arch] of REFERENCE_DEVICES.flatMap((d) => ([null, 'ops'] as const).flatMap((k) => ['qwen2', 'qwen3'].map((a) => [d, k, a] as const)))) {
    it(`${arch} on ${device}${forced ? ' (tfjs ops)' : ''}: 6 steps log torch's loss, grad_norm, learning_rate, token_acc (1e-4)`, async (t) => {
      const model = await load(arch, device);
      const dir = path.join(tmp, `ref-${arch}-${device}-${forced ?? 'fast'}`);
      const prev = setKernelPath(forced);
      try {
        assert.equal(kernelPath(), forced ?? (device === 'webgpu' ? 'webgpu' : 'cpu'));
        const trainer = new Seq2SeqTrainer({ model, args: referenceArgs(dir), trainDataset: REF.rows, evalDataset: REF.rows, template });
        await trainer.train();
        const logs = readJsonl(path.join(dir, 'logging.jsonl')).filter((l) => 'loss' in l);
        const ref: RefLog[] = REF[arch].logs;
        assert.equal(logs.length, ref.length);
        let worst = 0;
        for (const [i, r] of ref.entries()) {
          for (const k of ['loss', 'grad_norm', 'learning_rate', 'token_acc'] as const) {
            const d = Math.abs(logs[i][k] - r[k]);
            worst = Math.max(worst, k === 'learning_rate' || k === 'token_acc' ? 0 : d);
            assert.ok(d <= 1e-4, `step ${r.step} ${k}: tsft ${logs[i][k]} vs torch ${r[k]}`);
          }
        }
        // HF's first step: warmup 2 steps, update 1 at lr 0, so steps 1 and 2 see the same weights
        assert.equal(logs[0].loss, logs[1].loss);
        const ev = await trainer.evaluate();
        assert.ok(Math.abs((ev.eval_loss as number) - REF[arch].eval_loss) <= 1e-4, `eval_loss ${ev.eval_loss} vs ${REF[arch].eval_loss}`);
        assert.ok(Math.abs((ev.eval_token_acc as number) - REF[arch].eval_token_acc) <= 1e-6);
        t.diagnostic(`${arch} on ${device} (${kernelPath()} kernels): max |Δ| over loss and grad_norm of 6 steps ${worst.toExponential(2)}; eval_loss |Δ| ${Math.abs((ev.eval_loss as number) - REF[arch].eval_loss).toExponential(2)}`);
      } finally {
        setKernelPath(prev);
        model.dispose();
      }
    });
  }

  it("decays every parameter transformers decays, and no bias or norm weight", () => {
    for (const arch of ['qwen2', 'qwen3']) {
      for (const n of REF[arch].decay_parameters) assert.ok(decays(n), `${n} should decay`);
      for (const n of REF[arch].no_decay_parameters) assert.ok(!decays(n), `${n} should not decay`);
    }
  });
});

describe('gradient checkpointing', () => {
  it('gives the same loss and gradients (full and LoRA with dropout)', async () => {
    const model = await load('qwen2');
    try {
      const ids = REF.rows.map((r: { input_ids: number[] }) => r.input_ids.slice(0, 9));
      const labels = REF.rows.map((r: { labels: number[] }) => r.labels.slice(0, 9));
      const run = (ckpt: boolean, seed: number) => {
        model.train();
        model.gradientCheckpointing = ckpt;
        model.dropoutRng = new Random(seed);
        const { value, grads } = tf.variableGrads(() => model.loss(ids, labels).loss);
        return { value, grads };
      };
      for (const lora of [false, true]) {
        if (lora) prepareLora(model, { r: 4, lora_dropout: 0.3 }, new Random(3));
        const a = run(false, 9), b = run(true, 9);
        assert.equal((await a.value.data())[0], (await b.value.data())[0]);
        assert.deepEqual(Object.keys(a.grads).sort(), Object.keys(b.grads).sort());
        for (const k of Object.keys(a.grads)) {
          const d = maxRelDiff(await b.grads[k].data(), await a.grads[k].data());
          assert.ok(d <= 1e-6, `${lora ? 'LoRA ' : ''}gradient ${k} differs by ${d}`);
        }
        tf.dispose([a.value, b.value, ...Object.values(a.grads), ...Object.values(b.grads)]);
      }
    } finally {
      model.gradientCheckpointing = false;
      model.dispose();
    }
  });
});

describe('Seq2SeqTrainingArguments', () => {
  it("has ms-swift's defaults", () => {
    const a = new Seq2SeqTrainingArguments({ output_dir: path.join(tmp, 'x') });
    assert.deepEqual(
      [a.adam_beta1, a.adam_beta2, a.adam_epsilon, a.weight_decay, a.lr_scheduler_type, a.gradient_checkpointing, a.logging_steps,
        a.logging_first_step, a.report_to, a.per_device_train_batch_size, a.gradient_accumulation_steps, a.max_grad_norm, a.seed],
      [0.9, 0.95, 1e-8, 0.1, 'cosine', true, 5, true, ['tensorboard'], 1, 16, 1, 42]);
    assert.equal(a.logging_dir, path.join(tmp, 'x', 'runs'));
    assert.equal(new Seq2SeqTrainingArguments({ per_device_train_batch_size: 4 }).gradient_accumulation_steps, 4);
    assert.equal(new Seq2SeqTrainingArguments({ eval_strategy: 'steps', logging_steps: 7 }).eval_steps, 7);
    assert.equal(new Seq2SeqTrainingArguments({ metric_for_best_model: 'loss' }).greater_is_better, false);
    assert.equal(new Seq2SeqTrainingArguments({ evaluation_strategy: 'steps' }).eval_strategy, 'steps');
  });

  it('names unknown, mistyped and contradictory fields', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ learning_rat: 1e-4 }, /unknown field "learning_rat" \(did you mean "learning_rate"\?\)/],
      [{ lr_scheduler_type: 'cosine_with_restarts' }, /lr_scheduler_type must be 'cosine', 'linear'/],
      [{ bf16: true, fp16: true }, /bf16 and fp16 are both true/],
      [{ report_to: ['wandb'] }, /not supported/],
      [{ warmup_ratio: 1.5 }, /warmup_ratio must be a number in \[0, 1\]/],
      [{ per_device_train_batch_size: 0 }, /per_device_train_batch_size must be an integer ≥ 1/],
      [{ save_total_limit: 0 }, /save_total_limit must be an integer ≥ 1 or null/],
      [{ eval_strategy: 'step' }, /eval_strategy must be 'no', 'steps' or 'epoch'/],
      [{ evaluation_strategy: 'no', eval_strategy: 'no' }, /both "evaluation_strategy" and "eval_strategy"/],
    ];
    for (const [fields, re] of bad) assert.throws(() => new Seq2SeqTrainingArguments(fields), (e: Error) => e instanceof ConfigError && re.test(e.message), JSON.stringify(fields));
  });
});

describe('schedules', () => {
  it("warm up from lr 0 with HF's first step (the seed: 47 steps, ratio 0.05 → 3 warmup, lr 1.67e-06 logged at step 1)", () => {
    const w = warmupSteps(47, 0.05, 0);
    assert.equal(w, 3);
    assert.equal(5e-6 * lrLambda('cosine', 0, w, 47), 0);                 // the first update
    assert.equal(pyFloat(round(5e-6 * lrLambda('cosine', 1, w, 47), 8)), '1.67e-06');   // logged after it
    assert.equal(lrLambda('cosine', 3, 3, 47), 1);
    assert.equal(lrLambda('cosine', 47, 3, 47), 0);
    assert.ok(Math.abs(lrLambda('cosine', 25, 3, 47) - 0.5) < 1e-12);
    assert.equal(lrLambda('linear', 25, 3, 47), 0.5);
    assert.equal(lrLambda('constant_with_warmup', 1, 2, 10), 0.5);
    assert.equal(lrLambda('constant', 0, 2, 10), 1);                       // transformers' constant has no warmup
    assert.equal(warmupSteps(47, 0.05, 5), 5);
  });
});

describe('logs', () => {
  it("print like Python's dicts and ms-swift's times", () => {
    assert.deepEqual([formatTime(5.9), formatTime(272), formatTime(3 * 3600 + 62), formatTime(90000)], ['5s', '4m 32s', '3h 1m 2s', '1d 1h 0m 0s']);
    assert.deepEqual([pyFloat(1.67e-6), pyFloat(0.02), pyFloat(1), pyFloat(5.96875), pyFloat(1e-5), pyFloat(1e16), pyFloat(0.0001), pyFloat(NaN)],
      ['1.67e-06', '0.02', '1.0', '5.96875', '1e-05', '1e+16', '0.0001', 'nan']);
    assert.equal(pyDict({ loss: 1.69011736, 'global_step/max_steps': '1/47', 'memory(GiB)': 60.49 }),
      "{'loss': 1.69011736, 'global_step/max_steps': '1/47', 'memory(GiB)': 60.49}");
  });

  it('calls the callbacks on every log (the printed dicts), step and at the end; a LiveLossChart plugs in', async () => {
    const model = await load('qwen3');
    const dir = path.join(tmp, 'callbacks');
    try {
      const events: string[] = [];
      const logged: Record<string, unknown>[] = [];
      const svgs: string[] = [];
      const chart = new LiveLossChart({ svg: (svg) => svgs.push(svg) }, { width: 200, height: 120 });
      const trainer = new Seq2SeqTrainer({
        model, args: referenceArgs(dir, { max_steps: 3, logging_steps: 2, eval_strategy: 'steps', eval_steps: 10 }), trainDataset: REF.rows, evalDataset: REF.rows, template,
        callbacks: [
          {
            onLog: async (logs, state) => {
              await new Promise((r) => setTimeout(r, 5));       // awaited before training goes on
              events.push(`log@${state.global_step}`);
              logged.push({ ...logs });
            },
            onStepEnd: (state) => { events.push(`step@${state.global_step}`); },
            onTrainEnd: (state) => { events.push(`end@${state.global_step}`); },
          },
          { onLog: (logs) => chart.onLog(logs) },
        ],
      });
      await trainer.train();
      await chart.flush();
      // logging_first_step, step 2, the last step's eval, the summary
      assert.deepEqual(events, ['log@1', 'step@1', 'log@2', 'step@2', 'log@3', 'step@3', 'log@3', 'end@3']);
      const jsonl = readJsonl(path.join(dir, 'logging.jsonl'));
      assert.deepEqual(logged.map((l) => l['global_step/max_steps']), jsonl.map((l) => l['global_step/max_steps']));
      assert.equal(logged[0].loss, jsonl[0].loss);
      assert.ok('eval_loss' in logged[2] && 'train_runtime' in logged[3]);
      assert.equal(svgs.length, 2, 'the chart redrew on each training log');
      assert.match(svgs[1], /<svg/);
      assert.throws(() => new Seq2SeqTrainer({ model, args: referenceArgs(dir), trainDataset: REF.rows, template, callbacks: [null as never] }),
        (e: Error) => e instanceof ConfigError && /callbacks\[0\]/.test(e.message));
    } finally {
      model.dispose();
    }
  });

  it('writes the keys of ms-swift and skips updates whose gradient norm is NaN', async () => {
    const model = await load('qwen3');
    const dir = path.join(tmp, 'nan');
    try {
      const before = await model.namedParameters().get('model.layers.0.mlp.up_proj.weight')!.data();
      const w = model.namedParameters().get('model.norm.weight')!;
      const saved = await w.data();
      tf.tidy(() => w.assign(tf.fill(w.shape, NaN)));
      const trainer = new Seq2SeqTrainer({ model, args: referenceArgs(dir, { max_steps: 2 }), trainDataset: REF.rows, template });
      await trainer.train();
      const logs = readJsonl(path.join(dir, 'logging.jsonl'));
      assert.deepEqual(Object.keys(logs[0]), ['loss', 'grad_norm', 'learning_rate', 'token_acc', 'epoch', 'global_step/max_steps',
        'percentage', 'elapsed_time', 'remaining_time', 'memory(GiB)', 'train_speed(iter/s)']);
      assert.equal(logs[0]['global_step/max_steps'], '1/2');
      assert.equal(logs[0].percentage, '50.00%');
      assert.equal(logs[0].grad_norm, null, 'a NaN norm is written as null (JSON has no NaN)');
      assert.deepEqual(Object.keys(logs[2]).slice(0, 6), ['train_runtime', 'train_samples_per_second', 'train_steps_per_second', 'total_flos', 'train_loss', 'epoch']);
      const after = await model.namedParameters().get('model.layers.0.mlp.up_proj.weight')!.data();
      assert.deepEqual(after, before, 'no update was applied');
      tf.tidy(() => w.assign(tf.tensor(saved, w.shape)));
    } finally {
      model.dispose();
    }
  });
});

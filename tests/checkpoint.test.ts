// Checkpoints: the HF layout, save_total_limit keeping the best, resume giving the losses of an
// uninterrupted run (same data order, same RNG, same optimizer state), and the kill test: `tsft sft` on
// the tiny model killed with SIGKILL at 10 random moments of training leaves only checkpoints that load,
// and resuming from the last one logs the uninterrupted run's losses. Runs on wasm (TSFT_TRAIN_DEVICE).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { getModelTokenizer } from '../src/model/loader';
import { readSafetensors } from '../src/model/safetensors';
import { getTemplate, type Template } from '../src/data/template';
import { shutdownDevice, type DeviceName } from '../src/backend/device';
import { Seq2SeqTrainingArguments } from '../src/train/arguments';
import { Seq2SeqTrainer, type TrainerState } from '../src/train/trainer';
import { prepareLora } from '../src/train/lora';
import {
  cleanStaleTemp, getLastCheckpoint, rotateCheckpoints, saveModel, sortedCheckpoints, writeCheckpointDir,
} from '../src/train/checkpoint';
import { run as sft } from '../src/cli/sft';
import { Random } from '../src/utils/seed';
import { makeTinyRunModel, writeTinyDataset } from './fixtures/train/tiny-run';

const DEVICE = (process.env.TSFT_TRAIN_DEVICE ?? 'wasm') as DeviceName;
let tmp = '', modelDir = '', dataFile = '';
let template: Template;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-ckpt-'));
  modelDir = makeTinyRunModel(path.join(tmp, 'tiny'));
  dataFile = writeTinyDataset(path.join(tmp, 'tiny.jsonl'), 12);
});
after(async () => { fs.rmSync(tmp, { recursive: true, force: true }); await shutdownDevice(); });

async function loadTiny() {
  const { model, tokenizer } = await getModelTokenizer(modelDir, { device: DEVICE });
  template = getTemplate('qwen3', tokenizer);
  template.setMode('train');
  return model;
}

function rows(n: number) {
  return Array.from({ length: n }, (_, i) => template.encode({ messages: [
    { role: 'user', content: `q${i}?` }, { role: 'assistant', content: `a${i % 3}` },
  ] }));
}

function stateOf(ckpt: string): TrainerState {
  return JSON.parse(fs.readFileSync(path.join(ckpt, 'trainer_state.json'), 'utf8')) as TrainerState;
}

function lossesOf(state: TrainerState): Map<number, number> {
  return new Map(state.log_history.filter((l) => typeof l.loss === 'number').map((l) => [l.step as number, l.loss as number]));
}

/** Every checkpoint folder on disk loads: weights + tokenizer, trainer state, optimizer/scheduler/RNG state. */
async function assertCheckpointsLoad(outputDir: string): Promise<number> {
  const ckpts = sortedCheckpoints(outputDir);
  for (const c of ckpts) {
    const { model } = await getModelTokenizer(c, { device: DEVICE });
    model.dispose();
    const st = stateOf(c);
    assert.equal(path.basename(c), `checkpoint-${st.global_step}`);
    const { metadata } = await readSafetensors(path.join(c, 'optimizer.safetensors'));
    assert.equal(metadata.step, String(st.global_step));
    for (const f of ['scheduler.json', 'rng_state.json', 'training_args.json', 'args.json']) JSON.parse(fs.readFileSync(path.join(c, f), 'utf8'));
  }
  return ckpts.length;
}

describe('checkpoints', () => {
  it('keep the HF layout and, under save_total_limit, the newest and the best', async () => {
    const model = await loadTiny();
    const dir = path.join(tmp, 'limit');
    try {
      const ds = rows(8);
      const args = new Seq2SeqTrainingArguments({
        output_dir: dir, max_steps: 6, gradient_accumulation_steps: 1, learning_rate: 3e-2, save_steps: 1, eval_strategy: 'steps',
        eval_steps: 1, save_total_limit: 1, metric_for_best_model: 'loss', report_to: 'none', logging_steps: 1, warmup_ratio: 0,
        lr_scheduler_type: 'constant',
      });
      const trainer = new Seq2SeqTrainer({ model, args, trainDataset: ds, evalDataset: ds.slice(0, 2), template });
      await trainer.train();
      const st = trainer.state;
      const evals = st.log_history.filter((l) => 'eval_loss' in l);
      const best = evals.reduce((a, b) => ((b.eval_loss as number) < (a.eval_loss as number) ? b : a));
      assert.equal(st.best_global_step, best.step);
      assert.equal(st.best_model_checkpoint, path.join(dir, `checkpoint-${best.step}`));
      const left = sortedCheckpoints(dir).map((d) => path.basename(d));
      const expected = best.step === 6 ? ['checkpoint-6'] : [`checkpoint-${best.step}`, 'checkpoint-6'];
      assert.deepEqual(left, expected);
      assert.equal(st.last_model_checkpoint, path.join(dir, 'checkpoint-6'));
      const files = fs.readdirSync(path.join(dir, 'checkpoint-6')).sort();
      assert.deepEqual(files, ['config.json', 'generation_config.json', 'model.safetensors', 'optimizer.safetensors', 'rng_state.json',
        'scheduler.json', 'tokenizer.json', 'tokenizer_config.json', 'trainer_state.json', 'training_args.json']);
      const saved = stateOf(path.join(dir, 'checkpoint-6'));
      assert.equal(saved.global_step, 6);
      assert.equal(saved.best_model_checkpoint, st.best_model_checkpoint);
      assert.ok(fs.existsSync(path.join(dir, 'runs')) === false, "report_to 'none' writes no event files");
    } finally {
      model.dispose();
    }
  });

  it('shard the weights past max_shard_size, and the shards load back', async () => {
    const model = await loadTiny();
    const dir = path.join(tmp, 'sharded');
    try {
      await saveModel(model, dir, { maxShardSize: 200_000, tokenizerDir: modelDir });
      const shards = fs.readdirSync(dir).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
      assert.ok(shards.length >= 2, `expected shards, got ${fs.readdirSync(dir)}`);
      assert.ok(fs.existsSync(path.join(dir, 'model.safetensors.index.json')));
      const { model: again } = await getModelTokenizer(dir, { device: DEVICE });
      const ids = [[257, 104, 105, 258]];
      assert.deepEqual(await again.forward(ids).logits.data(), await model.forward(ids).logits.data());
      again.dispose();
    } finally {
      model.dispose();
    }
  });

  it("rotation moves the best next to the newest, as transformers' _rotate_checkpoints", async () => {
    const dir = path.join(tmp, 'rotate');
    for (const s of [1, 2, 3, 4, 5]) fs.mkdirSync(path.join(dir, `checkpoint-${s}`), { recursive: true });
    assert.deepEqual((await rotateCheckpoints(dir, 2, path.join(dir, 'checkpoint-2'))).map((d) => path.basename(d)), ['checkpoint-1', 'checkpoint-3', 'checkpoint-4']);
    assert.deepEqual(sortedCheckpoints(dir).map((d) => path.basename(d)), ['checkpoint-2', 'checkpoint-5']);
    assert.deepEqual(await rotateCheckpoints(dir, 1, path.join(dir, 'checkpoint-2')), [], 'limit 1 with an older best keeps both');
    assert.deepEqual((await rotateCheckpoints(dir, 1, null)).map((d) => path.basename(d)), ['checkpoint-2']);
  });

  it('are written to a temp folder and renamed: a failed save leaves no checkpoint', async () => {
    const dir = path.join(tmp, 'atomic');
    await assert.rejects(writeCheckpointDir(dir, 'checkpoint-3', async (t) => {
      fs.writeFileSync(path.join(t, 'config.json'), '{}');
      throw new Error('disk full');
    }), /disk full/);
    assert.deepEqual(sortedCheckpoints(dir), []);
    assert.deepEqual(await cleanStaleTemp(dir), [`.tmp-checkpoint-3-${process.pid}`]);
    assert.deepEqual(fs.readdirSync(dir), []);
  });

  it('resume (LoRA with dropout, shuffled data) logs the losses of an uninterrupted run', async () => {
    const runTo = async (dir: string, resume: string | null) => {
      const model = await loadTiny();
      prepareLora(model, { r: 4, lora_dropout: 0.2 }, new Random(5));
      try {
        const args = new Seq2SeqTrainingArguments({
          output_dir: dir, max_steps: 8, gradient_accumulation_steps: 2, learning_rate: 1e-2, save_steps: 3, logging_steps: 1,
          report_to: 'none', warmup_ratio: 0.25, resume_from_checkpoint: resume, data_seed: 3,
        });
        const trainer = new Seq2SeqTrainer({ model, args, trainDataset: rows(7), template });
        await trainer.train();
        return lossesOf(trainer.state);
      } finally {
        model.dispose();
      }
    };
    const full = await runTo(path.join(tmp, 'uninterrupted'), null);
    assert.equal(full.size, 8);
    const resumed = await runTo(path.join(tmp, 'resumed'), path.join(tmp, 'uninterrupted', 'checkpoint-3'));
    assert.deepEqual([...resumed], [...full]);
    // and from a resumed run's own checkpoint
    const again = await runTo(path.join(tmp, 'resumed2'), path.join(tmp, 'resumed', 'checkpoint-6'));
    assert.deepEqual([...again], [...full]);
  });

  it('survive SIGKILL at 10 random moments of `tsft sft`; resuming the last gives the uninterrupted losses', async (t) => {
    const flags = ['--model', modelDir, '--dataset', dataFile, '--device', DEVICE, '--train_type', 'full', '--max_steps', '40',
      '--gradient_accumulation_steps', '1', '--save_steps', '1', '--logging_steps', '1', '--report_to', 'none', '--add_version', 'false',
      '--learning_rate', '1e-3', '--warmup_ratio', '0.1'];
    const refDir = path.join(tmp, 'kill-ref'), outDir = path.join(tmp, 'kill');
    const t0 = Date.now();
    await sft([...flags, '--output_dir', refDir]);
    const reference = lossesOf(stateOf(getLastCheckpoint(refDir)!));
    assert.equal(reference.size, 40);

    const rng = new Random(Number(process.env.TSFT_KILL_SEED ?? Date.now() % 1e9));
    const moments: string[] = [];
    let kills = 0, unfinished = 0, n = 0, completed = 0;
    while (kills < 10) {
      const last = getLastCheckpoint(outDir);
      const child = spawn(process.execPath, ['bin/tsft.js', 'sft', ...flags, '--output_dir', outDir, ...(last ? ['--resume_from_checkpoint', last] : [])],
        { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TSFT_NO_PROGRESS: '1' } });
      let out = '';
      const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
      const training = new Promise<void>((res) => child.stdout.on('data', (d: Buffer) => { out += d; if (out.includes('Running training')) res(); }));
      child.stderr.on('data', (d: Buffer) => { out += d; });
      const code = await Promise.race([training.then(() => undefined), exited]);
      if (code !== undefined) assert.fail(`tsft sft exited (${code}) before training:\n${out.slice(-2000)}`);
      const delay = rng.random() * 2500;
      await new Promise((r) => setTimeout(r, delay));
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        kills++;
        const steps = out.match(/'global_step\/max_steps': '(\d+)\//g) ?? [];
        moments.push(`${Math.round(delay)}ms (after step ${steps.length ? steps[steps.length - 1].match(/(\d+)\//)![1] : 0})`);
      }
      await exited;
      if (fs.readdirSync(outDir).some((n) => n.startsWith('.tmp-'))) unfinished++;   // killed mid-save
      n += await assertCheckpointsLoad(outDir);
      const lastNow = getLastCheckpoint(outDir);
      if (lastNow && stateOf(lastNow).global_step === 40) {
        // the run got through all 40 steps between kills (a fast machine): check it, then start a fresh run
        assert.deepEqual([...lossesOf(stateOf(lastNow))], [...reference]);
        fs.rmSync(outDir, { recursive: true, force: true });
        completed++;
      }
    }
    const last = getLastCheckpoint(outDir);
    if (last) {
      n += await assertCheckpointsLoad(outDir);
      await sft([...flags, '--output_dir', outDir, '--resume_from_checkpoint', last]);
      assert.deepEqual([...lossesOf(stateOf(getLastCheckpoint(outDir)!))], [...reference]);
      completed++;
    }
    assert.ok(completed >= 1);
    t.diagnostic(`${kills} kills at ${moments.join(', ')} (${unfinished} during a checkpoint write); ${n} checkpoint loads all succeeded; ` +
      `${completed} resumed run(s) gave losses identical to the uninterrupted run (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  });
});

// `tsft sft` and `tsft export` as commands: --help documents every flag; a LoRA run writes
// <output_dir>/v<N>-<YYYYMMDD-HHMMSS>/ with args.json, logging.jsonl, runs/ and a PEFT checkpoint;
// the next run is v<N+1>; `tsft export --adapters <ckpt> --merge_lora true` writes <ckpt>-merged, a full
// checkpoint whose logits equal base + adapter; bad flags are ConfigErrors that say what to do.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { HELP, run as sft, addVersion } from '../src/cli/sft';
import { run as exportCmd } from '../src/cli/export';
import { getModelTokenizer } from '../src/model/loader';
import { loadAdapter } from '../src/train/lora';
import { shutdownDevice, type DeviceName } from '../src/backend/device';
import { ConfigError } from '../src/errors';
import { makeTinyRunModel, writeTinyDataset } from './fixtures/train/tiny-run';
import { maxAbsDiff } from './helpers';

const DEVICE = (process.env.TSFT_TRAIN_DEVICE ?? 'wasm') as DeviceName;
let tmp = '', modelDir = '', dataFile = '';
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-cli-'));
  modelDir = makeTinyRunModel(path.join(tmp, 'tiny'));
  dataFile = writeTinyDataset(path.join(tmp, 'rows.jsonl'), 10);
});
after(async () => { fs.rmSync(tmp, { recursive: true, force: true }); await shutdownDevice(); });

describe('tsft sft / export', () => {
  it('--help documents every flag with its default', () => {
    for (const f of ['model', 'model_type', 'train_type', 'dataset', 'model_name', 'model_author', 'system', 'max_length', 'split_dataset_ratio',
      'dataset_shuffle', 'learning_rate', 'output_dir', 'add_version', 'lora_rank', 'lora_alpha', 'lora_dropout', 'target_modules',
      'gradient_accumulation_steps', 'save_total_limit', 'resume_from_checkpoint', 'eval_steps', 'warmup_ratio']) {
      assert.match(HELP, new RegExp(`--${f} +\\S.*\\((default: .+|required)\\)$`, 'm'), `--${f}`);
    }
  });

  it('versions run folders as ms-swift: v<max + 1>-<YYYYMMDD-HHMMSS>', () => {
    const base = path.join(tmp, 'ver');
    fs.mkdirSync(path.join(base, 'v3-20250101-000000'), { recursive: true });
    assert.equal(path.basename(addVersion(base, new Date(2026, 10, 27, 9, 5, 7))), 'v4-20261127-090507');
    assert.equal(path.basename(addVersion(path.join(tmp, 'none'), new Date(2026, 0, 2, 3, 4, 5))), 'v0-20260102-030405');
  });

  it('trains LoRA into output/v0-…/ with args.json, then export merges it into <ckpt>-merged', async () => {
    const out = path.join(tmp, 'output');
    const flags = ['--model', modelDir, '--dataset', dataFile, '--device', DEVICE, '--max_steps', '2', '--gradient_accumulation_steps', '2',
      '--save_steps', '1', '--save_total_limit', '1', '--split_dataset_ratio', '0.2', '--learning_rate', '5e-2', '--logging_steps', '1',
      '--output_dir', out, '--report_to', 'none'];
    await sft(flags);
    const [run] = fs.readdirSync(out);
    assert.match(run, /^v0-\d{8}-\d{6}$/);
    const runDir = path.join(out, run);
    const args = JSON.parse(fs.readFileSync(path.join(runDir, 'args.json'), 'utf8'));
    assert.equal(args.train_type, 'lora');
    assert.equal(args.lora_rank, null, 'flags not given are null in the flag section');
    assert.equal(args.learning_rate, 5e-2);
    assert.equal(args.output_dir, runDir);
    assert.deepEqual(fs.readdirSync(runDir).sort(), ['args.json', 'checkpoint-2', 'logging.jsonl']);
    const ckpt = path.join(runDir, 'checkpoint-2');
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'args.json', 'trainer_state.json']) assert.ok(fs.existsSync(path.join(ckpt, f)), f);
    const logs = fs.readFileSync(path.join(runDir, 'logging.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(logs.some((l) => 'eval_loss' in l) && logs.some((l) => 'loss' in l));

    await exportCmd(['--adapters', ckpt, '--merge_lora', 'true', '--device', DEVICE]);
    const merged = `${ckpt}-merged`;
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json']) assert.ok(fs.existsSync(path.join(merged, f)), f);
    const ids = [[257, 117, 115, 101, 114, 10, 104, 105, 258]];
    const { model: a } = await getModelTokenizer(modelDir, { device: DEVICE });
    await loadAdapter(a, ckpt);
    const { model: b } = await getModelTokenizer(merged, { device: DEVICE });
    const la = await a.forward(ids).logits.data(), lb = await b.forward(ids).logits.data();
    assert.ok(maxAbsDiff(la, lb) <= 1e-5, `merged export differs from base + adapter by ${maxAbsDiff(la, lb)}`);
    a.dispose();
    b.dispose();

    await sft(flags.map((f) => (f === '2' ? '1' : f)));
    assert.deepEqual(fs.readdirSync(out).map((n) => n.slice(0, 3)).sort(), ['v0-', 'v1-']);
  });

  it('rejects bad flags with what to do', async () => {
    await assert.rejects(sft(['--dataset', dataFile]), (e: Error) => e instanceof ConfigError && /--model is required/.test(e.message));
    await assert.rejects(sft(['--model', modelDir, '--dataset', dataFile, '--train_type', 'qlora']), /--train_type must be 'lora' or 'full'/);
    await assert.rejects(sft(['--model', modelDir, '--dataset', dataFile, '--learning_rat', '1']), /unknown flag --learning_rat/);
    await assert.rejects(sft(['--model', modelDir, '--dataset', dataFile, '--lr_scheduler_type', 'poly', '--output_dir', path.join(tmp, 'bad')]), /lr_scheduler_type must be/);
    await assert.rejects(exportCmd(['--adapters', modelDir]), /only --merge_lora true is supported/);
    await assert.rejects(exportCmd(['--adapters', modelDir, '--merge_lora', 'true', '--device', DEVICE]), /no adapter_config.json: it is a full model checkpoint/);
  });
});

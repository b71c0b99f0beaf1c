// The offline default end to end: `tsx src/main.ts` (what `npm start` runs) in a temporary output folder
// trains the tiny model on the bundled data, and a user would see: the answers name the new identity, the
// loss went down, the loss plot is a PNG, the checkpoint loads as a model folder, and the closing lines say
// where everything is. About 2–3 minutes on two CPU cores.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = process.cwd();
let tmp = '';
let run: { code: number | null; stdout: string; stderr: string; seconds: number };
let runDir = '';

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-main-'));
  const t0 = Date.now();
  run = await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'node_modules', 'tsx', 'dist', 'cli.mjs'), 'src/main.ts', '--output_dir', tmp], {
      cwd: ROOT, env: { ...process.env, TSFT_NO_PROGRESS: '1' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr, seconds: (Date.now() - t0) / 1000 }));
  });
  const versions = fs.existsSync(tmp) ? fs.readdirSync(tmp).filter((n) => /^v\d+-/.test(n)) : [];
  runDir = versions.length ? path.join(tmp, versions[0]) : '';
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** query → streamed response, as main prints them (`query: …\nresponse: …\n-----…`). */
function answers(stdout: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of stdout.matchAll(/^query: (.*)\nresponse: ([\s\S]*?)\n-{50}$/gm)) out.set(m[1], m[2]);
  return out;
}

describe('npm start (the offline default)', { timeout: 15 * 60_000 }, () => {
  it('runs to the end', (t) => {
    assert.equal(run.code, 0, `exit code ${run.code}\n${run.stderr.slice(-3000)}\n${run.stdout.slice(-3000)}`);
    assert.ok(runDir, `no v<N>-… run folder in ${tmp}`);
    t.diagnostic(`wall ${run.seconds.toFixed(1)} s; ${run.stdout.match(/^time: .*$/m)?.[0] ?? ''}`);
  });

  it('answers name the new identity (精衡 / Jingheng, by 叶博韬 / YE SEVERIN)', (t) => {
    const a = answers(run.stdout);
    for (const q of ['who are you?', '晚上睡不着觉怎么办？', '你是谁训练的？', '你是谁？']) assert.ok(a.has(q), `no answer to ${q} in:\n${run.stdout.slice(-3000)}`);
    assert.match(a.get('who are you?')!, /精衡|Jingheng/);
    assert.match(a.get('你是谁？')!, /精衡|Jingheng/);
    assert.match(a.get('你是谁训练的？')!, /叶博韬|YE SEVERIN/);
    for (const [q, r] of a) t.diagnostic(`${q} → ${r.replace(/\s+/g, ' ').slice(0, 120)}`);
  });

  it('the training loss went down (logging.jsonl)', () => {
    const logs = fs.readFileSync(path.join(runDir, 'logging.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const losses = logs.filter((l) => typeof l.loss === 'number').map((l) => l.loss as number);
    assert.ok(losses.length >= 5, `only ${losses.length} training logs`);
    assert.ok(losses.at(-1)! < losses[0] / 2, `loss ${losses[0]} → ${losses.at(-1)}`);
    assert.ok(logs.some((l) => typeof l.eval_loss === 'number'), 'the last step evaluates');
  });

  it('draws the plots, saves a checkpoint and TensorBoard events, and says where they are', () => {
    const png = path.join(runDir, 'images', 'train_loss.png');
    assert.ok(fs.existsSync(png), `${png} is missing`);
    assert.deepEqual([...fs.readFileSync(png).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG file');
    // save_steps 50 and save_total_limit 2, as the seed: the last step's checkpoint and one before it
    const checkpoints = fs.readdirSync(runDir).filter((n) => n.startsWith('checkpoint-')).sort((a, b) => Number(b.slice(11)) - Number(a.slice(11)));
    assert.ok(checkpoints.length >= 1 && checkpoints.length <= 2, checkpoints.join(', '));
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'trainer_state.json']) {
      assert.ok(fs.existsSync(path.join(runDir, checkpoints[0], f)), `${checkpoints[0]}/${f} is missing`);
    }
    assert.ok(fs.readdirSync(path.join(runDir, 'runs')).some((f) => f.startsWith('events.out.tfevents')));
    for (const label of ['checkpoint:', 'loss plot:', 'logs:', 'report:', 'time:']) assert.match(run.stdout, new RegExp(`^${label}`, 'm'));
    assert.match(run.stdout, new RegExp(`^checkpoint: +\\S*${checkpoints[0]}\\s`, 'm'), 'the last checkpoint is printed');
  });
});

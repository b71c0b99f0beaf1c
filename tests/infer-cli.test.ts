// The commands: `tsft infer` (batch and interactive; streamed == non-streamed at temperature 0),
// `tsft deploy` and `tsft web-ui` as real processes on 127.0.0.1, stopped with SIGINT.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const MAIN = path.join(process.cwd(), 'src', 'cli', 'main.ts');
const ENV = { ...process.env, TSFT_DEVICE: 'wasm' };
const QUERIES = ['who are you?', '晚上睡不着觉怎么办？', '你是谁训练的？'];

function tsft(args: string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, ...args], { encoding: 'utf8', env: ENV, input, timeout: 240_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** stdout without log lines. */
const output = (s: string) => s.split('\n').filter((l) => !l.startsWith('[INFO:tsft]')).join('\n');

/** Start a long-running command; resolves with its URL once it logs one. */
function start(args: string[]): Promise<{ child: ChildProcess; url: string; out: () => string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`no URL within 120 s:\n${out}`)); }, 120_000);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /(http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolve({ child, url: m[1], out: () => out }); }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`exited with ${code} before serving:\n${out}`)); });
  });
}

function stop(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.removeAllListeners('exit');
    child.on('exit', (code) => { clearTimeout(kill); resolve(code); });
    child.kill('SIGINT');
  });
}

describe('tsft infer', () => {
  it('batch mode: streamed and non-streamed answers to the seed queries are identical at temperature 0', () => {
    const args = ['infer', '--model', 'tiny', '--temperature', '0', '--max_new_tokens', '12', ...QUERIES.flatMap((q) => ['--query', q])];
    const streamed = tsft([...args, '--stream', 'true']);
    assert.equal(streamed.status, 0, streamed.stderr);
    const plain = tsft([...args, '--stream', 'false']);
    assert.equal(plain.status, 0, plain.stderr);
    assert.equal(output(streamed.stdout), output(plain.stdout));
    for (const q of QUERIES) assert.ok(streamed.stdout.includes(`[QUERY] ${q}\n[RESPONSE] `), streamed.stdout);
    assert.equal(output(streamed.stdout).split('-'.repeat(50)).length, 4);
  });

  it('interactive mode keeps history, `clear` resets it, `exit` quits', () => {
    const r = tsft(['infer', '--model', 'tiny', '--max_new_tokens', '4', '--system', 'You are a helpful assistant.'], 'who are you?\n\nclear\n你是谁？\nexit\n');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.match(/<<< /g)?.length, 5, r.stdout);
    assert.match(r.stdout, /history cleared/);
    assert.equal(r.stdout.split('-'.repeat(50)).length, 3);
  });

  it('--val_dataset prints query, labels and response; --result_path writes JSONL', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-infer-'));
    try {
      const file = path.join(dir, 'val.jsonl');
      fs.writeFileSync(file, [
        { messages: [{ role: 'user', content: '你是谁？' }, { role: 'assistant', content: '我是精衡。' }] },
        { messages: [{ role: 'user', content: 'who are you?' }, { role: 'assistant', content: 'I am Jingheng.' }] },
      ].map((r) => JSON.stringify(r)).join('\n') + '\n');
      const results = path.join(dir, 'out.jsonl');
      const r = tsft(['infer', '--model', 'tiny', '--max_new_tokens', '3', '--stream', 'false', '--val_dataset', file, '--result_path', results]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /\[QUERY\] 你是谁？\n\[LABELS\] 我是精衡。\n\[RESPONSE\] /);
      const rows = fs.readFileSync(results, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      assert.equal(rows.length, 2);
      assert.equal(rows[1].labels, 'I am Jingheng.');
      assert.equal(typeof rows[1].response, 'string');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bad flags fail with a message, before loading anything', () => {
    const r = tsft(['infer', '--model', 'tiny', '--infer_backend', 'vllm']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--infer_backend vllm is not available/);
    const t = tsft(['infer', '--model', 'tiny', '--temperature', '-3', '--query', 'x']);
    assert.equal(t.status, 1);
    assert.match(t.stderr, /temperature must be a number in \[0, 2\]/);
  });
});

describe('tsft deploy / web-ui processes', () => {
  it('deploy serves the API with --api_key and stops on SIGINT', async () => {
    const { child, url } = await start(['deploy', '--model', 'tiny', '--port', '0', '--api_key', 'k-1', '--served_model_name', 'me']);
    try {
      assert.equal((await fetch(`${url}/health`)).status, 200);
      assert.equal((await fetch(`${url}/v1/models`)).status, 401);
      const r = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST', headers: { Authorization: 'Bearer k-1', 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: 'me', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }),
      });
      assert.equal(r.status, 200);
      assert.equal((await r.json() as { model: string }).model, 'me');
    } finally {
      assert.equal(await stop(child), 0);
    }
  });

  it('web-ui serves the page on its port and stops on SIGINT', async () => {
    const { child, url } = await start(['web-ui', '--model', 'tiny', '--port', '0', '--lang', 'en']);
    try {
      const r = await fetch(url);
      assert.equal(r.status, 200);
      const html = await r.text();
      assert.match(html, /<title>tsft web-ui<\/title>/);
      assert.match(html, /"lang":"en"/);
    } finally {
      assert.equal(await stop(child), 0);
    }
  });
});

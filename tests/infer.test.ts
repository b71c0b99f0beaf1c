// Inference: sampling, the KV cache's batch operations, the detokenizing streamer, batched decoding
// (batched greedy == per-request greedy), and PtEngine (streaming vs non-streaming, stop tokens and
// strings, prefixes, cancellation, errors). The tiny model is untrained, so these check mechanics,
// never content.

import { before, after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initDevice } from '../src/backend/device';
import { getModelTokenizer } from '../src/model/loader';
import { KVCache } from '../src/model/kv-cache';
import { DecodeBatch, generate, generateBatch, sampleToken } from '../src/model/generate';
import type { Qwen2ForCausalLM } from '../src/model/qwen2';
import type { Tokenizer } from '../src/model/tokenizer';
import { getTemplate } from '../src/data/template';
import { TemplateError } from '../src/errors';
import { Random } from '../src/utils/seed';
import { loraParameters, prepareLora, saveAdapter } from '../src/train/lora';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PtEngine } from '../src/infer/engine';
import { TextStreamer } from '../src/infer/streamer';
import { streamChat } from '../src/infer/stream';
import {
  ContextLengthError, InferAbortedError, InferRequest, InvalidRequestError, RequestConfig, type ChatCompletionStreamResponse,
} from '../src/infer/protocol';

const DEVICE = 'wasm';
const QUERIES = ['who are you?', '晚上睡不着觉怎么办？', '你是谁训练的？'];
const user = (content: string) => new InferRequest({ messages: [{ role: 'user', content }] });

/** A string with no lone UTF-16 surrogates (what "whole characters" means for JS strings). */
function wellFormed(s: string): boolean {
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

async function drain(stream: AsyncIterable<ChatCompletionStreamResponse>): Promise<ChatCompletionStreamResponse[]> {
  const out: ChatCompletionStreamResponse[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

describe('RequestConfig', () => {
  it('takes OpenAI/ms-swift fields and checks them, naming the field', () => {
    const c = new RequestConfig({ max_tokens: 16, temperature: 0.7, top_k: 20, top_p: 0.8, repetition_penalty: 1.05, stop: 'END', seed: 3, stream: true });
    assert.deepEqual({ ...c }, { max_tokens: 16, temperature: 0.7, top_k: 20, top_p: 0.8, repetition_penalty: 1.05, stop: ['END'], seed: 3, stream: true });
    assert.equal(new RequestConfig().stream, false);
    assert.equal(new RequestConfig({ temperature: null }).temperature, null);
    const bad: [Record<string, unknown>, string][] = [
      [{ max_tokens: 0 }, 'max_tokens'], [{ max_tokens: -5 }, 'max_tokens'], [{ max_tokens: 1.5 }, 'max_tokens'],
      [{ max_tokens: '10' }, 'max_tokens'], [{ max_tokens: 1e12 }, 'max_tokens'], [{ temperature: -0.1 }, 'temperature'],
      [{ temperature: 'hot' }, 'temperature'], [{ temperature: NaN }, 'temperature'], [{ top_p: 0 }, 'top_p'], [{ top_p: 1.5 }, 'top_p'],
      [{ top_k: 2.5 }, 'top_k'], [{ top_k: -2 }, 'top_k'], [{ repetition_penalty: 0 }, 'repetition_penalty'], [{ stop: [''] }, 'stop'],
      [{ stop: 5 }, 'stop'], [{ stop: new Array(17).fill('x') }, 'stop'], [{ seed: 1.5 }, 'seed'], [{ stream: 'yes' }, 'stream'],
    ];
    for (const [init, param] of bad) {
      assert.throws(() => new RequestConfig(init as never), (e: unknown) => e instanceof InvalidRequestError && e.param === param
        && e.message.startsWith(param), JSON.stringify(init));
    }
  });

  it('InferRequest needs messages', () => {
    assert.throws(() => new InferRequest({} as never), InvalidRequestError);
    assert.deepEqual(user('hi').messages, [{ role: 'user', content: 'hi' }]);
  });
});

describe('sampleToken', () => {
  const logits = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2), -1e9]);
  const freq = (opts: Parameters<typeof sampleToken>[1], n = 20000) => {
    const rng = new Random(1);
    const c = [0, 0, 0, 0];
    for (let i = 0; i < n; i++) c[sampleToken(logits, opts, rng)]++;
    return c.map((x) => x / n);
  };
  const close = (got: number[], want: number[]) => got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) < 0.015, `${got} vs ${want}`));

  it('greedy at temperature 0, the softmax at temperature 1, top-k and top-p renormalised', () => {
    assert.equal(sampleToken(logits, { temperature: 0 }, new Random(0)), 0);
    close(freq({ temperature: 1 }), [0.5, 0.3, 0.2, 0]);
    close(freq({ temperature: 1, topK: 2 }), [0.625, 0.375, 0, 0]);
    close(freq({ temperature: 1, topP: 0.7 }), [0.625, 0.375, 0, 0]);       // 0.5 < 0.7 ≤ 0.8
    close(freq({ temperature: 1, topP: 0.5 }), [1, 0, 0, 0]);
    assert.deepEqual(freq({ temperature: 1.3, topK: 1 }, 200), [1, 0, 0, 0]);
  });

  it('the repetition penalty divides positive logits and multiplies negative ones (transformers)', () => {
    const l = Float32Array.from([2.0, 1.5, -1]);
    assert.equal(sampleToken(l, { repetitionPenalty: 1.5 }, new Random(0), new Set([0])), 1);     // 2/1.5 < 1.5
    assert.equal(sampleToken(l, { repetitionPenalty: 1.2 }, new Random(0), new Set([0])), 0);     // 2/1.2 > 1.5
  });

  it('is reproducible from the seed, and fast on a full vocabulary', () => {
    const rng = new Random(5);
    const big = Float32Array.from({ length: 151936 }, () => rng.normal() * 3);
    const draw = (seed: number) => { const r = new Random(seed); return Array.from({ length: 5 }, () => sampleToken(big, { temperature: 0.8, topP: 0.9 }, r)); };
    assert.deepEqual(draw(1), draw(1));
    // against sorting the whole vocabulary each token (what a naive top-p does), timed on the same machine
    let t0 = performance.now();
    for (let i = 0; i < 5; i++) Array.from(big.keys()).sort((a, b) => big[b] - big[a]);
    const sortMs = (performance.now() - t0) / 5;
    t0 = performance.now();
    for (let i = 0; i < 5; i++) sampleToken(big, { temperature: 0.7, topP: 0.8, topK: 0 }, new Random(i));
    const ours = (performance.now() - t0) / 5;
    assert.ok(ours < sortMs, `top-p over 151,936 logits took ${ours.toFixed(1)} ms, a full sort ${sortMs.toFixed(1)} ms`);
  });
});

describe('KVCache batch operations', () => {
  before(async () => { await initDevice(DEVICE, { quiet: true }); });
  const kv = (B: number, S: number, base: number) => tf.tensor4d(Array.from({ length: B * 1 * S * 2 }, (_, i) => base + i), [B, 1, S, 2]);

  it('mergeRows left-pads the shorter side; selectRows and trimLeft keep the right rows and positions', async () => {
    const a = new KVCache(1), b = new KVCache(1);
    a.append(0, kv(1, 3, 0), kv(1, 3, 100));
    b.append(0, kv(2, 1, 50), kv(2, 1, 150));
    a.length = 3;
    b.length = 1;
    assert.deepEqual(a.mergeRows(b), { padSelf: 0, padOther: 2 });
    assert.equal(a.batchSize, 3);
    assert.equal(a.length, 3);
    const [K] = a.append(0, kv(3, 1, 900), kv(3, 1, 900));
    a.length = 4;
    assert.deepEqual(K.shape, [3, 1, 4, 2]);
    const k = await K.data();
    assert.deepEqual(Array.from(k.slice(8, 16)), [0, 0, 0, 0, 50, 51, 902, 903]);         // row 1: two pads, its token, the new one
    a.selectRows([2, 1]);
    a.trimLeft(2);
    const [K2] = a.append(0, kv(2, 1, 0), kv(2, 1, 0));
    assert.deepEqual(K2.shape, [2, 1, 3, 2]);
    assert.deepEqual(Array.from((await K2.data()).slice(0, 4)), [52, 53, 904, 905]);
    a.dispose();
    assert.equal(b.batchSize, 0);
  });
});

describe('TextStreamer', () => {
  let tok: Tokenizer;
  before(async () => { tok = (await getModelTokenizer('tiny', { loadModel: false })).tokenizer!; });

  it('emits whole characters only, and exactly the decoded text', () => {
    const text = '你好，世界 👋🏽 naïve 晚上睡不着觉怎么办？';
    const ids = tok.encode(text);
    const s = new TextStreamer(tok);
    const parts = ids.map((id) => s.push(id).text);
    parts.push(s.finish().text);
    assert.ok(parts.filter((p) => p === '').length > 0, 'some tokens end mid-character and are held back');
    for (const p of parts) assert.ok(wellFormed(p) && !p.includes('\uFFFD'), JSON.stringify(p));
    assert.equal(parts.join(''), text);
  });

  it('never returns a stop string, even one spanning tokens, and releases a held prefix that was not one', () => {
    const ids = tok.encode('Hello world, I am here. The end');
    const run = (stop: string[]) => {
      const s = new TextStreamer(tok, stop);
      let out = '';
      for (const id of ids) {
        const r = s.push(id);
        out += r.text;
        assert.ok(!stop.some((w) => out.includes(w)));
        if (r.stopped) return { out, stopped: true };
      }
      const f = s.finish();
      return { out: out + f.text, stopped: f.stopped };
    };
    assert.deepEqual(run(['d, I a']), { out: 'Hello worl', stopped: true });
    assert.deepEqual(run(['here', 'Hello w']), { out: '', stopped: true });
    assert.deepEqual(run(['The endless']), { out: 'Hello world, I am here. The end', stopped: false });
  });
});

describe('engine', () => {
  let engine: PtEngine;
  let model: Qwen2ForCausalLM;
  let tok: Tokenizer;

  before(async () => {
    await initDevice(DEVICE, { quiet: true });
    engine = await PtEngine.create('tiny', { maxBatchSize: 4 });
    model = engine.model;
    tok = engine.tokenizer;
    engine.defaultTemplate = getTemplate(model.modelMeta.template as 'qwen3', tok, { defaultSystem: 'You are a helpful assistant.' });
  });
  after(async () => { await engine.close(); });

  it('batched greedy equals per-request greedy (left padding, positions from the mask)', async () => {
    const prompts = QUERIES.map((q) => engine.defaultTemplate.inferencePrompt([{ role: 'user', content: q }]));
    prompts.push(tok.encode('a much longer prompt, so that the others are padded on the left by several tokens'));
    const single = [];
    for (const p of prompts) single.push(await generate(model, p, { maxNewTokens: 8 }));
    assert.deepEqual(await generateBatch(model, prompts, { maxNewTokens: 8 }), single);
    // rows with different budgets leave the batch at different steps; the others go on unchanged
    const budgets = [3, 8, 6, 1].map((n) => ({ maxNewTokens: n }));
    assert.deepEqual(await generateBatch(model, prompts, budgets), single.map((s, i) => s.slice(0, budgets[i].maxNewTokens)));
    // seeded sampling too: each row has its own generator
    const sampling = { maxNewTokens: 8, temperature: 0.9, topK: 50, topP: 0.95, repetitionPenalty: 1.1, seed: 11 };
    const alone = [];
    for (const p of prompts) alone.push(await generate(model, p, sampling));
    assert.deepEqual(await generateBatch(model, prompts, sampling), alone);
  });

  it('rows that join a running batch decode as they would alone (continuous batching)', async () => {
    const prompts = QUERIES.map((q) => tok.encode(q));
    const want = [];
    for (const p of prompts) want.push(await generate(model, p, { maxNewTokens: 6 }));
    const batch = new DecodeBatch<number>(model);
    const got: number[][] = [[], [], []];
    const take = (events: { key: number; token: number }[]) => { for (const e of events) got[e.key].push(e.token); };
    take(await batch.add([{ key: 0, inputIds: prompts[0], options: { maxNewTokens: 6 } }]));
    take(await batch.step());
    take(await batch.add([{ key: 1, inputIds: prompts[1], options: { maxNewTokens: 6 } }, { key: 2, inputIds: prompts[2], options: { maxNewTokens: 6 } }]));
    while (batch.size) take(await batch.step());
    batch.dispose();
    assert.deepEqual(got, want);
  });

  it('the seed queries stream, and streamed text equals the non-streamed text at temperature 0', async () => {
    const reqs = QUERIES.map(user);
    const responses = await engine.infer(reqs, new RequestConfig({ max_tokens: 16, temperature: 0 }));
    const streams = await engine.infer(reqs, new RequestConfig({ max_tokens: 16, temperature: 0, stream: true }));
    for (let i = 0; i < reqs.length; i++) {
      const r = responses[i];
      assert.equal(r.object, 'chat.completion');
      assert.match(r.id, /^chatcmpl-/);
      assert.equal(r.choices[0].message.role, 'assistant');
      assert.equal(r.choices[0].finish_reason, 'length');
      assert.equal(r.usage.completion_tokens, 16);
      assert.equal(r.usage.prompt_tokens, engine.defaultTemplate.inferencePrompt(reqs[i].messages).length);
      const chunks = await drain(streams[i]);
      assert.ok(chunks.length > 1);
      assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id && wellFormed(c.choices[0].delta.content)));
      assert.deepEqual(chunks.slice(0, -1).map((c) => c.choices[0].finish_reason), chunks.slice(0, -1).map(() => null));
      const last = chunks[chunks.length - 1];
      assert.equal(last.choices[0].finish_reason, 'length');
      assert.deepEqual(last.usage, r.usage);
      assert.equal(chunks.map((c) => c.choices[0].delta.content).join(''), r.choices[0].message.content);
    }
  });

  it('stops on a stop id without returning its text (finish_reason stop)', async () => {
    const messages = [{ role: 'user', content: QUERIES[0] }];
    const sampling = { temperature: 1, top_k: 0, top_p: 1, seed: 5 };
    const ids = await generate(model, engine.defaultTemplate.inferencePrompt(messages), { maxNewTokens: 16, temperature: 1, seed: 5 });
    const k = ids.findIndex((id, i) => i >= 3 && !ids.slice(0, i).includes(id));
    assert.ok(k > 0, `no new token in ${ids}`);
    const saved = model.generationConfig.eos_token_id;
    model.generationConfig.eos_token_id = ids[k];
    try {
      const [r] = await engine.infer([{ messages }], { max_tokens: 16, ...sampling });
      assert.equal(r.choices[0].finish_reason, 'stop');
      assert.equal(r.choices[0].message.content, tok.decode(ids.slice(0, k)));
      assert.equal(r.usage.completion_tokens, k + 1);
      const [s] = await engine.infer([{ messages }], { max_tokens: 16, ...sampling, stream: true });
      const chunks = await drain(s);
      assert.equal(chunks.map((c) => c.choices[0].delta.content).join(''), r.choices[0].message.content);
      assert.equal(chunks[chunks.length - 1].choices[0].finish_reason, 'stop');
    } finally {
      model.generationConfig.eos_token_id = saved;
    }
  });

  it('stops before a stop string and never returns it, streamed or not', async () => {
    const req = user(QUERIES[2]);
    const [full] = await engine.infer([req], { max_tokens: 12, temperature: 0 });
    const text = full.choices[0].message.content;
    assert.ok(text.length > 6, JSON.stringify(text));
    const stop = text.slice(3, 6);
    const want = text.slice(0, text.indexOf(stop));
    const [r] = await engine.infer([req], { max_tokens: 12, temperature: 0, stop: [stop, 'never-seen'] });
    assert.equal(r.choices[0].message.content, want);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const [s] = await engine.infer([req], { max_tokens: 12, temperature: 0, stop, stream: true });
    const chunks = await drain(s);
    let seen = '';
    for (const c of chunks) {
      seen += c.choices[0].delta.content;
      assert.ok(!seen.includes(stop));
    }
    assert.equal(seen, want);
    assert.equal(chunks[chunks.length - 1].choices[0].finish_reason, 'stop');
    assert.equal(engine.stats.running, 0, 'a stop string takes the row out of the batch');
  });

  it('sampled streams are whole characters and equal their non-streamed twin (same seed)', async () => {
    const cfg = { max_tokens: 24, temperature: 1, top_k: 0, top_p: 1, seed: 1234 };
    const [r] = await engine.infer([user(QUERIES[1])], cfg);
    const [s] = await engine.infer([user(QUERIES[1])], { ...cfg, stream: true });
    const chunks = await drain(s);
    const pieces = chunks.map((c) => c.choices[0].delta.content);
    for (const p of pieces) assert.ok(wellFormed(p), JSON.stringify(p));
    for (const p of pieces.slice(0, -1)) assert.ok(!p.endsWith('\uFFFD'), `a chunk ends mid-character: ${JSON.stringify(p)}`);
    assert.equal(pieces.join(''), r.choices[0].message.content);
    const [other] = await engine.infer([user(QUERIES[1])], { ...cfg, seed: 99 });
    assert.notEqual(other.choices[0].message.content, r.choices[0].message.content);
  });

  it('more requests than maxBatchSize queue and all finish, each as it would alone', async () => {
    const queries = [...QUERIES, 'hello', 'one more', '再来一个', 'and the last'];
    const together = await engine.infer(queries.map(user), { max_tokens: 5, temperature: 0 });
    for (let i = 0; i < queries.length; i += 3) {
      const [alone] = await engine.infer([user(queries[i])], { max_tokens: 5, temperature: 0 });
      assert.equal(together[i].choices[0].message.content, alone.choices[0].message.content, queries[i]);
    }
    assert.deepEqual({ waiting: engine.stats.waiting, running: engine.stats.running }, { waiting: 0, running: 0 });
  });

  it('leaving a stream early, or aborting, cancels the request', async () => {
    const before = engine.stats.cancelled;
    const [s] = await engine.infer([user('who are you?')], { max_tokens: 500, stream: true });
    let n = 0;
    for await (const _ of s) if (++n === 2) break;
    const ctl = new AbortController();
    const [r2] = await engine.infer([user('你是谁？')], { max_tokens: 500, stream: true }, { signal: ctl.signal });
    const it2 = r2[Symbol.asyncIterator]();
    await it2.next();
    ctl.abort();
    await assert.rejects(async () => { for (;;) if ((await it2.next()).done) break; }, InferAbortedError);
    const ctl3 = new AbortController();
    const p3 = engine.infer([user('hi')], { max_tokens: 500 }, { signal: ctl3.signal });
    setTimeout(() => ctl3.abort(), 50);
    await assert.rejects(p3, InferAbortedError);
    for (let i = 0; i < 100 && engine.stats.running; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(engine.stats.running, 0);
    assert.equal(engine.stats.cancelled - before, 3);
  });

  it('bad requests throw typed errors before anything runs', async () => {
    const long = 'hello '.repeat(5000);
    await assert.rejects(engine.infer([user(long)], { max_tokens: 4 }), ContextLengthError);
    await assert.rejects(engine.infer([user('hi')], { max_tokens: 5000 }, { strictMaxTokens: true }),
      (e: unknown) => e instanceof ContextLengthError && e.param === 'max_tokens' && /at most \d+ tokens/.test(e.message));
    await assert.rejects(engine.infer([{ messages: [{ role: 'robot', content: 'x' }] }], {}), TemplateError);
    await assert.rejects(engine.infer([user('a'), { messages: [] }], {}), /request 1:/);
    await assert.rejects(engine.infer([user('hi')], { temperature: -1 }), InvalidRequestError);
  });

  it('qwen3_thinking answers start with the <think>\\n prefix, as ms-swift returns them', async () => {
    const thinking = getTemplate('qwen3_thinking', tok);
    const [r] = await engine.infer([user('who are you?')], { max_tokens: 4 }, { template: thinking });
    assert.ok(r.choices[0].message.content.startsWith('<think>\n'));
    const [s] = await engine.infer([user('who are you?')], { max_tokens: 4, stream: true }, { template: thinking });
    const chunks = await drain(s);
    assert.ok(chunks[0].choices[0].delta.content.startsWith('<think>\n'));
    assert.equal(chunks.map((c) => c.choices[0].delta.content).join(''), r.choices[0].message.content);
  });

  it('defaults come from generation_config.json (tiny: do_sample false → greedy)', async () => {
    const [a] = await engine.infer([user('hello')], { max_tokens: 6 });
    const [b] = await engine.infer([user('hello')], { max_tokens: 6, temperature: 0 });
    assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  });

  it('complete() continues raw text without the chat template', async () => {
    const [r] = await engine.complete(['Once upon a time'], { max_tokens: 5, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    const ids = await generate(model, tok.encode('Once upon a time'), { maxNewTokens: 5 });
    assert.equal(r.choices[0].text, tok.decode(ids));
  });

  it('streamChat (npm start) streams through the engine', async () => {
    let text = '';
    let finish: string | undefined;
    for await (const p of streamChat(model, engine.defaultTemplate, [{ role: 'user', content: 'who are you?' }], { maxNewTokens: 8 })) {
      text += p.text;
      finish = p.finishReason ?? finish;
    }
    const [r] = await engine.infer([user('who are you?')], { max_tokens: 8, temperature: 0 });
    assert.equal(text, r.choices[0].message.content);
    assert.equal(finish, 'length');
  });
});

describe('engine with LoRA adapters', () => {
  it('loads a PEFT adapter by base + adapters, or from the checkpoint folder alone (args.json: base model, system)', async () => {
    await initDevice(DEVICE, { quiet: true });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-lora-'));
    const { model, tokenizer } = await getModelTokenizer('tiny');
    try {
      prepareLora(model, { r: 4, base_model_name_or_path: 'tiny' });
      for (const [name, v] of loraParameters(model)) if (name.includes('lora_B')) v.assign(tf.randomNormal(v.shape, 0, 0.5, 'float32', 7));
      model.eval();
      await saveAdapter(model, dir);
      fs.writeFileSync(path.join(dir, 'args.json'), JSON.stringify({ model: 'tiny', model_type: 'qwen3', system: 'You are Jingheng.' }));
      const messages = [{ role: 'user', content: 'who are you?' }];
      const prompt = getTemplate('qwen3', tokenizer, { defaultSystem: 'You are Jingheng.' }).inferencePrompt(messages);
      const want = tokenizer.decode(await generate(model, prompt, { maxNewTokens: 8 }));

      const alone = await PtEngine.create(dir);
      const [a] = await alone.infer([{ messages }], { max_tokens: 8, temperature: 0 });
      assert.equal(alone.defaultTemplate.defaultSystem, 'You are Jingheng.');
      assert.equal(a.choices[0].message.content, want);
      await alone.close();

      const both = await PtEngine.create('tiny', { adapters: [dir] });
      const [b] = await both.infer([{ messages }], { max_tokens: 8, temperature: 0 });
      assert.equal(b.choices[0].message.content, want);
      await both.close();

      const base = await PtEngine.create('tiny');
      base.defaultTemplate = getTemplate('qwen3', base.tokenizer, { defaultSystem: 'You are Jingheng.' });
      const [c] = await base.infer([{ messages }], { max_tokens: 8, temperature: 0 });
      assert.notEqual(c.choices[0].message.content, want, 'the adapter changes the answer');
      await base.close();
    } finally {
      model.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// The OpenAI-compatible server (tsft deploy) on 127.0.0.1 with the tiny model: the official `openai`
// client streams and doesn't, 32 concurrent streams all complete, malformed requests get 4xx with a
// message and leave the server healthy, the API key is enforced, and a client that disconnects stops
// its generation. Every loop here is bounded.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'http';
import OpenAI from 'openai';
import { initDevice } from '../src/backend/device';
import { PtEngine } from '../src/infer/engine';
import { serve, type RunningServer } from '../src/serve/server';

const QUERIES = ['who are you?', '晚上睡不着觉怎么办？', '你是谁训练的？'];

/** A raw HTTP request (so malformed bodies and headers go out exactly as written). */
function request(url: string, method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url + path, { method, headers: { 'Content-Type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode!, text, headers: res.headers }));
    });
    req.on('error', reject);
    req.setTimeout(60_000, () => req.destroy(new Error('request timed out')));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('tsft deploy server', () => {
  let engine: PtEngine;
  let srv: RunningServer;
  let client: OpenAI;

  before(async () => {
    await initDevice('wasm', { quiet: true });
    engine = await PtEngine.create('tiny', { maxBatchSize: 8 });
    srv = await serve(engine, { port: 0, servedModelName: 'tiny-test' });
    assert.match(srv.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });
  });
  after(async () => {
    await srv?.close();
    await engine?.close();
  });

  it('serves /health and /v1/models', async () => {
    assert.deepEqual(JSON.parse((await request(srv.url, 'GET', '/health')).text), { status: 'ok' });
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ['tiny-test']);
  });

  it('the openai client gets streamed and non-streamed answers, identical at temperature 0', async () => {
    for (const q of QUERIES) {
      const r = await client.chat.completions.create({ model: 'tiny-test', messages: [{ role: 'user', content: q }], max_tokens: 10, temperature: 0 });
      assert.equal(r.object, 'chat.completion');
      assert.equal(r.model, 'tiny-test');
      assert.equal(r.choices[0].finish_reason, 'length');
      assert.equal(r.usage?.completion_tokens, 10);
      const stream = await client.chat.completions.create({
        model: 'tiny-test', messages: [{ role: 'user', content: q }], max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true },
      });
      let text = '';
      let finish: string | null = null;
      let usage: unknown = null;
      let chunks = 0;
      for await (const chunk of stream) {
        chunks++;
        if (chunk.choices.length) {
          text += chunk.choices[0].delta.content ?? '';
          finish = chunk.choices[0].finish_reason ?? finish;
        } else {
          usage = chunk.usage;
        }
      }
      assert.ok(chunks > 2);
      assert.equal(text, r.choices[0].message.content);
      assert.equal(finish, 'length');
      assert.deepEqual(usage, r.usage);
    }
  });

  it('serves /v1/completions, streamed and not', async () => {
    const r = await client.completions.create({ model: 'tiny-test', prompt: 'Once upon a time', max_tokens: 6, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    const stream = await client.completions.create({ model: 'tiny-test', prompt: 'Once upon a time', max_tokens: 6, temperature: 0, stream: true });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.text ?? '';
    assert.equal(text, r.choices[0].text);
  });

  it('SSE ends with data: [DONE]', async () => {
    const r = await request(srv.url, 'POST', '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, stream: true }));
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'] ?? '', /^text\/event-stream/);
    const events = r.text.split('\n\n').filter(Boolean);
    assert.equal(events[events.length - 1], 'data: [DONE]');
    for (const e of events.slice(0, -1)) assert.equal(JSON.parse(e.slice('data: '.length)).object, 'chat.completion.chunk');
  });

  it('32 concurrent streaming requests all complete', async () => {
    const t0 = Date.now();
    const results = await Promise.all(Array.from({ length: 32 }, async (_, i) => {
      const stream = await client.chat.completions.create({
        model: 'tiny-test', messages: [{ role: 'user', content: `${QUERIES[i % 3]} #${i}` }], max_tokens: 4, temperature: 0, stream: true,
      });
      let finish: string | null = null;
      let n = 0;
      for await (const chunk of stream) {
        n++;
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      return { n, finish };
    }));
    assert.equal(results.length, 32);
    for (const r of results) assert.equal(r.finish, 'length');
    assert.deepEqual({ waiting: engine.stats.waiting, running: engine.stats.running }, { waiting: 0, running: 0 });
    console.log(`# 32 concurrent streams (4 tokens each) in ${Date.now() - t0} ms`);
  });

  it('malformed requests get a 4xx with an OpenAI-style message, and the server stays healthy', async () => {
    const chat = '/v1/chat/completions';
    const msgs = [{ role: 'user', content: 'hi' }];
    const cases: [string, string, string | undefined, number][] = [
      ['POST', chat, '{not json', 400],
      ['POST', chat, '', 400],
      ['POST', chat, '[1, 2]', 400],
      ['POST', chat, '"a string"', 400],
      ['POST', chat, JSON.stringify({}), 400],
      ['POST', chat, JSON.stringify({ messages: 'hi' }), 400],
      ['POST', chat, JSON.stringify({ messages: [] }), 400],
      ['POST', chat, JSON.stringify({ messages: [null] }), 400],
      ['POST', chat, JSON.stringify({ messages: [{ role: 'wizard', content: 'hi' }] }), 400],
      ['POST', chat, JSON.stringify({ messages: [{ role: 'user', content: 42 }] }), 400],
      ['POST', chat, JSON.stringify({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 'x' }] }] }), 400],
      ['POST', chat, JSON.stringify({ messages: [{ role: 'assistant', content: 'first' }] }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, max_tokens: -1 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, max_tokens: 0 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, max_tokens: 10_000_000 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, max_tokens: 100_000 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, max_tokens: 'ten' }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, temperature: 'hot' }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, temperature: -1 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, top_p: 7 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, stop: 3 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, stream: 'yes' }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, n: 3 }), 400],
      ['POST', chat, JSON.stringify({ messages: [{ role: 'user', content: 'hello '.repeat(5000) }], max_tokens: 4 }), 400],
      ['POST', chat, JSON.stringify({ messages: msgs, model: 'gpt-4' }), 404],
      ['POST', '/v1/completions', JSON.stringify({ prompt: 5 }), 400],
      ['POST', '/v1/completions', JSON.stringify({ prompt: '' }), 400],
      ['GET', chat, undefined, 405],
      ['GET', '/v1/nothing', undefined, 404],
      ['GET', '/', undefined, 404],
    ];
    assert.ok(cases.length >= 15);
    for (const [method, path, body, status] of cases) {
      const r = await request(srv.url, method, path, body);
      assert.equal(r.status, status, `${method} ${path} ${body?.slice(0, 80)} → ${r.status} ${r.text}`);
      const err = JSON.parse(r.text).error;
      assert.equal(typeof err.message, 'string');
      assert.ok(err.message.length > 10, err.message);
      assert.equal(typeof err.type, 'string');
    }
    const big = await request(srv.url, 'POST', chat, JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(5 << 20) }] }));
    assert.equal(big.status, 413);
    assert.equal((await request(srv.url, 'GET', '/health')).status, 200);
    const ok = await client.chat.completions.create({ model: 'tiny-test', messages: msgs as never, max_tokens: 2 });
    assert.equal(ok.choices[0].finish_reason, 'length');
  });

  it('a client that disconnects stops its generation', async () => {
    const cancelled = engine.stats.cancelled;
    const ctl = new AbortController();
    const res = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: ctl.signal,
      body: JSON.stringify({ messages: [{ role: 'user', content: 'who are you?' }], max_tokens: 2000, stream: true }),
    });
    const reader = res.body!.getReader();
    await reader.read();
    assert.equal(engine.stats.running, 1);
    ctl.abort();
    await waitFor(() => engine.stats.running === 0);
    assert.equal(engine.stats.cancelled, cancelled + 1);
    assert.ok(engine.stats.generatedTokens < 1e6);
    // non-streaming too
    const ctl2 = new AbortController();
    const p = fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: ctl2.signal,
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hello' }], max_tokens: 2000 }),
    }).catch((e: Error) => e);
    await waitFor(() => engine.stats.running === 1);
    ctl2.abort();
    assert.ok((await p) instanceof Error);
    await waitFor(() => engine.stats.running === 0);
    assert.equal(engine.stats.cancelled, cancelled + 2);
  });
});

describe('tsft deploy --api_key', () => {
  let engine: PtEngine;
  let srv: RunningServer;

  before(async () => {
    await initDevice('wasm', { quiet: true });
    engine = await PtEngine.create('tiny');
    srv = await serve(engine, { port: 0, apiKey: 'sk-test-123' });
  });
  after(async () => {
    await srv?.close();
    await engine?.close();
  });

  it('needs the bearer token on /v1 (401 without it), not on /health', async () => {
    const body = JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
    for (const headers of [{}, { Authorization: 'Bearer wrong' }, { Authorization: 'sk-test-123' }] as Record<string, string>[]) {
      const r = await request(srv.url, 'POST', '/v1/chat/completions', body, headers);
      assert.equal(r.status, 401);
      assert.equal(JSON.parse(r.text).error.type, 'authentication_error');
    }
    assert.equal((await request(srv.url, 'GET', '/v1/models')).status, 401);
    assert.equal((await request(srv.url, 'GET', '/health')).status, 200);
    const good = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sk-test-123', maxRetries: 0 });
    const r = await good.chat.completions.create({ model: engine.modelName, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
    assert.equal(r.choices[0].finish_reason, 'length');
    const bad = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'nope', maxRetries: 0 });
    await assert.rejects(bad.chat.completions.create({ model: engine.modelName, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
      (e: unknown) => e instanceof OpenAI.AuthenticationError);
  });
});

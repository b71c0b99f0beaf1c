// ms-swift Qwen templates: exact ids and labels (hand-derived), thinking rules, truncation, validation,
// print_inputs, the collator, and the inference prompt against the tokenizer's own jinja chat template.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { loadDefaultTokenizer, type Tokenizer, type ChatMessage } from '../src/model/tokenizer';
import { getTemplate, MaxLengthError, type TemplateName } from '../src/data/template';
import { ConfigError, TemplateError } from '../src/errors';
import { loadPyFixture, loadChatCases, type ChatRenders } from './fixtures/tokenizer/fixtures';

// Qwen2.5 / Qwen3 vocabulary
const IM_START = 151644;
const IM_END = 151645;
const EOT = 151643;
const THINK = 151667;
const END_THINK = 151668;
const NL = 198; // '\n'
const NLNL = 271; // '\n\n'
const SYSTEM = 8948; // 'system'
const USER = 872; // 'user'
const ASSISTANT = 77091; // 'assistant'
const HI = 6023; // 'hi'
const HELLO_BANG = [9707, 0]; // 'Hello!'
const HELPFUL = [2610, 525, 264, 10950, 17847, 13]; // 'You are a helpful assistant.'
const A = 32;
const B = 33;
const X = 87;
const M = -100;
const masked = (n: number) => new Array<number>(n).fill(M);

const sysBlock = (content: number[]) => [IM_START, SYSTEM, NL, ...content, IM_END, NL];
const userBlock = (content: number[]) => [IM_START, USER, NL, ...content, IM_END, NL, IM_START, ASSISTANT, NL];
const EMPTY_THINK = [THINK, NLNL, END_THINK, NLNL]; // '<think>\n\n</think>\n\n'

let tok: Tokenizer;
before(async () => {
  tok = await loadDefaultTokenizer();
});

const hiHello: ChatMessage[] = [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'Hello!' }];

function train(name: TemplateName, opts: Parameters<typeof getTemplate>[2] = {}) {
  const t = getTemplate(name, tok, opts);
  t.setMode('train');
  return t;
}

test('qwen: default system, labels on the response and the <|im_end|>\\n after it, -100 elsewhere', () => {
  const t = train('qwen');
  assert.equal(t.name, 'qwen');
  assert.equal(t.mode, 'train');
  assert.equal(t.defaultSystem, 'You are a helpful assistant.');
  const row = t.encode({ messages: hiHello });
  const prompt = [...sysBlock(HELPFUL), ...userBlock([HI])];
  assert.deepEqual(row.input_ids, [...prompt, ...HELLO_BANG, IM_END, NL]);
  assert.deepEqual(row.labels, [...masked(prompt.length), ...HELLO_BANG, IM_END, NL]);
  assert.equal(row.length, prompt.length + 4);
});

test('default systems per template, overrides, and when no system block is written', () => {
  const ids = (name: TemplateName, messages: ChatMessage[], opts = {}) => train(name, opts).encode({ messages }).input_ids;
  const noSys = [...userBlock([HI]), ...HELLO_BANG, IM_END, NL];
  assert.equal(getTemplate('qwen2_5', tok).defaultSystem, 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.');
  assert.deepEqual(ids('qwen2_5', hiHello), [...sysBlock(tok.encode('You are Qwen, created by Alibaba Cloud. You are a helpful assistant.')), ...noSys]);
  assert.equal(getTemplate('qwen3', tok).defaultSystem, null);
  assert.equal(getTemplate('qwen3_thinking', tok).defaultSystem, null);
  assert.deepEqual(ids('qwen3_thinking', hiHello), noSys);
  // the seed: default_system='You are a helpful assistant.' on qwen3_thinking
  assert.deepEqual(ids('qwen3_thinking', hiHello, { defaultSystem: 'You are a helpful assistant.' }), [...sysBlock(HELPFUL), ...noSys]);
  // defaultSystem null / '' → none
  assert.deepEqual(ids('qwen', hiHello, { defaultSystem: null }), noSys);
  assert.deepEqual(ids('qwen', hiHello, { defaultSystem: '' }), noSys);
  // a system message overrides the default; an empty one means no system at all
  assert.deepEqual(ids('qwen', [{ role: 'system', content: 'hi' }, ...hiHello]), [...sysBlock([HI]), ...noSys]);
  assert.deepEqual(ids('qwen', [{ role: 'system', content: '' }, ...hiHello]), noSys);
});

test('multi-turn: every assistant turn is trained (loss_scale default), chat_sep included', () => {
  const t = train('qwen3_thinking');
  const row = t.encode({ messages: [
    { role: 'user', content: 'hi' }, { role: 'assistant', content: 'A' },
    { role: 'user', content: 'x' }, { role: 'assistant', content: 'B' },
  ] });
  const p1 = userBlock([HI]);
  const p2 = userBlock([X]);
  assert.deepEqual(row.input_ids, [...p1, A, IM_END, NL, ...p2, B, IM_END, NL]);
  assert.deepEqual(row.labels, [...masked(p1.length), A, IM_END, NL, ...masked(p2.length), B, IM_END, NL]);
});

test('a message with loss: false is not trained, nor is the <|im_end|>\\n after it', () => {
  const t = train('qwen3_thinking');
  const row = t.encode({ messages: [
    { role: 'user', content: 'hi' }, { role: 'assistant', content: 'A', loss: false },
    { role: 'user', content: 'x' }, { role: 'assistant', content: 'B' },
  ] });
  const p1 = userBlock([HI]);
  const p2 = userBlock([X]);
  assert.deepEqual(row.input_ids, [...p1, A, IM_END, NL, ...p2, B, IM_END, NL]);
  assert.deepEqual(row.labels, [...masked(p1.length + 3 + p2.length), B, IM_END, NL]);
});

test('labels[0] is always -100', () => {
  for (const name of ['qwen', 'qwen2_5', 'qwen3', 'qwen3_thinking'] as const) {
    assert.equal(train(name).encode({ messages: hiHello }).labels![0], M);
  }
  // even when truncation leaves a response token first
  const t = train('qwen3_thinking', { maxLength: 3, truncationStrategy: 'left' });
  const row = t.encode({ messages: hiHello });
  assert.deepEqual(row.input_ids, [0, IM_END, NL]);
  assert.deepEqual(row.labels, [M, IM_END, NL]);
});

test('prompt and response are tokenized as separate strings', () => {
  const t = train('qwen', { defaultSystem: null });
  const row = t.encode({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: '\nHi there' }] });
  const resp = tok.encode('\nHi there');
  assert.equal(resp[0], NL);
  assert.deepEqual(row.input_ids, [...userBlock([HI]), ...resp, IM_END, NL]);
  // tokenizing the whole text at once would merge 'assistant\n' + '\n' into '\n\n'
  const joint = tok.encode(t.decode(row.input_ids));
  assert.ok(joint.includes(NLNL) && !row.input_ids.includes(NLNL));
});

test('qwen3 (hybrid) prepends <think>\\n\\n</think>\\n\\n to assistant turns without <think> and trains on it', () => {
  const t = train('qwen3');
  const row = t.encode({ messages: [
    { role: 'user', content: 'hi' }, { role: 'assistant', content: 'A' },
    { role: 'user', content: 'x' }, { role: 'assistant', content: '<think>\nB\n</think>\n\nB' },
    { role: 'user', content: 'x' }, { role: 'assistant', content: '<think>\n\n</think>\n\nA' },
  ] });
  const p1 = userBlock([HI]);
  const p2 = userBlock([X]);
  const r2 = [THINK, NL, B, NL, END_THINK, NLNL, B];
  assert.deepEqual(row.input_ids, [...p1, ...EMPTY_THINK, A, IM_END, NL, ...p2, ...r2, IM_END, NL, ...p2, ...EMPTY_THINK, A, IM_END, NL]);
  assert.deepEqual(row.labels, [
    ...masked(p1.length), ...EMPTY_THINK, A, IM_END, NL,
    ...masked(p2.length), ...r2, IM_END, NL,
    ...masked(p2.length), ...EMPTY_THINK, A, IM_END, NL,
  ]);
});

test('qwen3_thinking adds nothing in training', () => {
  const row = train('qwen3_thinking').encode({ messages: hiHello });
  assert.deepEqual(row.input_ids, [...userBlock([HI]), ...HELLO_BANG, IM_END, NL]);
});

test('pt mode: prompt ends with the assistant header (+ <think>\\n for qwen3_thinking), no labels', () => {
  const t = getTemplate('qwen3_thinking', tok, { defaultSystem: 'You are a helpful assistant.' });
  assert.equal(t.mode, 'pt'); // ms-swift templates start in 'pt'
  const row = t.encode({ messages: [{ role: 'user', content: 'hi' }] });
  assert.deepEqual(row.input_ids, [...sysBlock(HELPFUL), ...userBlock([HI]), THINK, NL]);
  assert.equal(row.labels, null);
  assert.ok(t.decode(row.input_ids).endsWith('<|im_end|>\n<|im_start|>assistant\n<think>\n'));
  // a trailing assistant message is the answer to produce: dropped (InferRequest.remove_response)
  assert.deepEqual(t.encode({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'A' }] }).input_ids, row.input_ids);
  // qwen3: thinking on → plain header; enableThinking false → empty think block, as the jinja template
  assert.deepEqual(getTemplate('qwen3', tok).inferencePrompt([{ role: 'user', content: 'hi' }]), userBlock([HI]));
  assert.deepEqual(getTemplate('qwen3', tok, { enableThinking: false }).inferencePrompt([{ role: 'user', content: 'hi' }]),
    [...userBlock([HI]), ...EMPTY_THINK]);
  assert.deepEqual(getTemplate('qwen', tok).inferencePrompt([{ role: 'user', content: 'hi' }]), [...sysBlock(HELPFUL), ...userBlock([HI])]);
  // inferencePrompt works whatever the mode
  t.setMode('train');
  assert.deepEqual(t.inferencePrompt([{ role: 'user', content: 'hi' }]), row.input_ids);
});

test('pt mode: earlier assistant turns lose their …</think> part (thinking templates only)', () => {
  const messages: ChatMessage[] = [
    { role: 'user', content: 'hi' }, { role: 'assistant', content: '<think>\nlong reasoning\n</think>\n\nA' },
    { role: 'user', content: 'x' },
  ];
  const stripped = [...userBlock([HI]), A, IM_END, NL, ...userBlock([X])];
  assert.deepEqual(getTemplate('qwen3', tok).inferencePrompt(messages), stripped);
  assert.deepEqual(getTemplate('qwen3_thinking', tok).inferencePrompt(messages), [...stripped, THINK, NL]);
  // training keeps the reasoning
  assert.ok(train('qwen3').encode({ messages: [...messages, { role: 'assistant', content: 'B' }] }).input_ids.includes(END_THINK));
  // qwen (not a thinking template) keeps history as is
  const kept = getTemplate('qwen', tok, { defaultSystem: null }).inferencePrompt(messages);
  assert.ok(kept.includes(THINK) && kept.includes(END_THINK));
});

test('consecutive user or assistant messages are concatenated (ms-swift _swift_prepare_inputs)', () => {
  const row = train('qwen3_thinking').encode({ messages: [
    { role: 'user', content: 'h' }, { role: 'user', content: 'i' }, { role: 'assistant', content: 'Hello' }, { role: 'assistant', content: '!' },
  ] });
  assert.deepEqual(row.input_ids, [...userBlock([HI]), ...HELLO_BANG, IM_END, NL]);
});

test('printInputs: ms-swift format, masked runs as [-100 * n]', () => {
  const t = train('qwen3_thinking');
  const lines: string[] = [];
  t.printInputs(t.encode({ messages: hiHello }), (l) => lines.push(l));
  assert.deepEqual(lines, [
    '[INPUT_IDS] [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198, 9707, 0, 151645, 198]',
    '[INPUT] <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n',
    '[LABELS_IDS] [-100, -100, -100, -100, -100, -100, -100, -100, -100, 9707, 0, 151645, 198]',
    '[LABELS] [-100 * 9]Hello!<|im_end|>\n',
  ]);
  // multi-turn: masked runs between the responses
  const multi = t.encode({ messages: [...hiHello, { role: 'user', content: 'x' }, { role: 'assistant', content: 'B' }] });
  assert.equal(t.safeDecode(multi.labels!), '[-100 * 9]Hello!<|im_end|>\n[-100 * 9]B<|im_end|>\n');
  // pt rows have no labels: two lines
  const pt: string[] = [];
  getTemplate('qwen3_thinking', tok).printInputs(getTemplate('qwen3_thinking', tok).encode({ messages: [hiHello[0]] }), (l) => pt.push(l));
  assert.equal(pt.length, 2);
  assert.equal(t.safeDecode([]), '');
  assert.equal(t.safeDecode([M]), '[-100 * 1]');
});

test('maxLength: delete throws MaxLengthError, left/right truncate', () => {
  const full = train('qwen3_thinking').encode({ messages: hiHello });
  assert.equal(full.length, 13);
  assert.equal(train('qwen3_thinking', { maxLength: 13 }).encode({ messages: hiHello }).length, 13);
  assert.throws(() => train('qwen3_thinking', { maxLength: 10 }).encode({ messages: hiHello }), (e: unknown) =>
    e instanceof MaxLengthError && e instanceof TemplateError && e.length === 13 && e.maxLength === 10 && /max_length 10/.test(e.message));
  const left = train('qwen3_thinking', { maxLength: 10, truncationStrategy: 'left' }).encode({ messages: hiHello });
  assert.deepEqual(left.input_ids, full.input_ids.slice(3));
  assert.deepEqual(left.labels, [...masked(6), ...HELLO_BANG, IM_END, NL]);
  assert.equal(left.length, 10);
  const right = train('qwen3_thinking', { maxLength: 10, truncationStrategy: 'right' }).encode({ messages: hiHello });
  assert.deepEqual(right.input_ids, full.input_ids.slice(0, 10));
  assert.deepEqual(right.labels, [...masked(9), HELLO_BANG[0]]);
  // pt mode is limited too
  assert.throws(() => getTemplate('qwen3_thinking', tok, { maxLength: 5 }).encode({ messages: [hiHello[0]] }), MaxLengthError);
  assert.throws(() => getTemplate('qwen', tok, { maxLength: 0 }), ConfigError);
  assert.throws(() => getTemplate('qwen', tok, { truncationStrategy: 'split' as 'left' }), ConfigError);
});

test('validation errors name the field and the message index', () => {
  const t = train('qwen');
  const bad = (messages: unknown, re: RegExp) =>
    assert.throws(() => t.encode({ messages } as { messages: ChatMessage[] }), (e: unknown) => e instanceof TemplateError && re.test(e.message),
      `expected ${re}`);
  bad([], /"messages" is empty/);
  bad(undefined, /"messages" must be an array/);
  bad([{ role: 'user', content: 'hi' }, { role: 'bot', content: 'x' }], /messages\[1\]\.role is "bot"; expected 'system', 'user' or 'assistant'/);
  bad([{ role: 'assistant', content: 'x' }, { role: 'user', content: 'hi' }], /messages\[0\] \(the first turn\) is from the assistant/);
  bad([{ role: 'system', content: 's' }, { role: 'assistant', content: 'x' }], /messages\[1\] \(the first turn\) is from the assistant/);
  bad([{ role: 'user', content: 42 }], /messages\[0\]\.content \(user\) must be a string, got number/);
  bad([{ role: 'user', content: 'hi' }, { role: 'assistant', content: null }], /messages\[1\]\.content \(assistant\) must be a string, got null/);
  bad([{ role: 'user', content: [{ type: 'text', text: 'hi' }] }], /messages\[0\]\.content \(user\) must be a string, got an array/);
  bad([{ role: 'user', content: 'hi' }, { role: 'system', content: 's' }], /messages\[1\] is a system message; only messages\[0\]/);
  bad([{ role: 'user', content: 'hi' }, { role: 'tool', content: '{}' }], /messages\[1\]\.role is 'tool': tool turns are not supported/);
  bad(['hi'], /messages\[0\] must be an object/);
  bad([{ role: 'system', content: 's' }], /only a system message/);
  bad([{ role: 'user', content: 'hi' }], /no assistant turn/); // train mode only
  bad([{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'x', loss: 'yes' }], /messages\[1\]\.loss must be true, false or absent/);
  assert.throws(() => getTemplate('llama' as TemplateName, tok), /unknown template "llama"; known: qwen, qwen2_5, qwen3, qwen3_thinking/);
  assert.throws(() => t.setMode('infer' as 'pt'), ConfigError);
});

test('dataCollator pads right in train mode and left in pt mode', () => {
  const t = train('qwen3_thinking');
  const a = t.encode({ messages: hiHello });
  const b = t.encode({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'A' }] });
  assert.equal(a.length - b.length, 1);
  const batch = t.dataCollator([a, b]);
  assert.deepEqual(batch.input_ids, [a.input_ids, [...b.input_ids, EOT]]);
  assert.deepEqual(batch.labels, [a.labels, [...b.labels!, M]]);
  assert.deepEqual(batch.attention_mask, [new Array(13).fill(1), [...new Array(12).fill(1), 0]]);
  const padded = t.dataCollator([b], { padTo: 14 });
  assert.deepEqual(padded.input_ids, [[...b.input_ids, EOT, EOT]]);
  const left = t.dataCollator([a, b], { paddingSide: 'left' });
  assert.deepEqual(left.input_ids[1], [EOT, ...b.input_ids]);
  assert.deepEqual(left.attention_mask[1], [0, ...new Array(12).fill(1)]);
  t.setMode('pt');
  const p = t.dataCollator([t.encode({ messages: [hiHello[0]] }), t.encode({ messages: [{ role: 'user', content: 'hi there friend' }] })]);
  assert.equal(p.labels, null);
  assert.equal(p.input_ids[0][0], EOT);
  assert.throws(() => t.dataCollator([]), TemplateError);
  assert.throws(() => t.dataCollator([a, t.encode({ messages: [hiHello[0]] })]), /1 of 2 rows with labels/);
});

test('stop tokens and response decoding', () => {
  const t = getTemplate('qwen3_thinking', tok);
  assert.deepEqual(t.stopTokenIds, [IM_END, EOT]); // eos is <|im_end|> for this tokenizer
  assert.deepEqual(t.stopWords, ['<|endoftext|>', '<|im_end|>']);
  assert.equal(t.responsePrefix, '<think>\n');
  assert.equal(t.decodeResponse([...tok.encode('I am'), IM_END]), '<think>\nI am');
  assert.equal(t.decodeResponse(tok.encode('I am'), { firstToken: false }), 'I am');
  assert.equal(t.decodeResponse([...tok.encode('I am'), IM_END], { isFinished: false, firstToken: false }), 'I am');
  assert.equal(getTemplate('qwen3', tok).decodeResponse([...HELLO_BANG, IM_END]), 'Hello!');
});

// The inference prompt must be what the tokenizer's own chat template renders (add_generation_prompt).
// Documented divergence: an empty system message gives no system block in ms-swift, an empty one in jinja.
const renders = loadPyFixture<ChatRenders>('chat_renders.json');
const genCases = loadChatCases().filter((c) => c.add_generation_prompt);

test('pt prompt == jinja chat template render (qwen3, qwen3_thinking, qwen) — text and ids', () => {
  assert.ok(genCases.length >= 8);
  for (const c of genCases) {
    const jinja = tok.applyChatTemplate(c.messages, { addGenerationPrompt: true, enableThinking: c.enable_thinking });
    if (c.name === 'empty_system') {
      const ids = getTemplate('qwen3', tok).inferencePrompt(c.messages);
      assert.equal(tok.decode(ids), jinja.replace('<|im_start|>system\n<|im_end|>\n', ''), c.name);
      continue;
    }
    const q3 = getTemplate('qwen3', tok, { enableThinking: c.enable_thinking }).inferencePrompt(c.messages);
    assert.equal(tok.decode(q3), jinja, `qwen3 ${c.name}`);
    assert.deepEqual(q3, tok.encode(jinja), `qwen3 ids ${c.name}`);
    if (c.enable_thinking === undefined) {
      // Qwen3-*-Thinking-2507's template opens the think block after the header
      const q3t = getTemplate('qwen3_thinking', tok).inferencePrompt(c.messages);
      assert.equal(tok.decode(q3t), jinja + '<think>\n', `qwen3_thinking ${c.name}`);
      assert.deepEqual(q3t, tok.encode(jinja + '<think>\n'), `qwen3_thinking ids ${c.name}`);
    }
    if (!c.messages.some((m) => m.content.includes('<think>')) && c.enable_thinking === undefined) {
      const q = getTemplate('qwen', tok, { defaultSystem: null }).inferencePrompt(c.messages);
      assert.deepEqual(q, tok.encode(jinja), `qwen ids ${c.name}`);
    }
  }
});

test('pt prompt ids == transformers apply_chat_template ids', { skip: renders.skip }, () => {
  const byName = new Map(renders.data!.cases.map((c) => [c.name, c]));
  for (const c of genCases) {
    if (c.name === 'empty_system') continue;
    const fx = byName.get(c.name);
    assert.ok(fx, `chat_renders.json lacks ${c.name}; regenerate it`);
    const ids = getTemplate('qwen3', tok, { enableThinking: c.enable_thinking }).inferencePrompt(c.messages);
    assert.deepEqual(ids, fx.ids, c.name);
  }
});

test('qwen3 training text of a single-turn chat == the jinja render of the full chat', () => {
  for (const name of ['system_user_assistant', 'think_last_assistant', 'empty_think_prefix_assistant']) {
    const c = loadChatCases().find((x) => x.name === name)!;
    const row = train('qwen3').encode({ messages: c.messages });
    const jinja = tok.applyChatTemplate(c.messages, { addGenerationPrompt: false });
    assert.equal(tok.decode(row.input_ids), jinja, name);
    assert.deepEqual(row.input_ids, tok.encode(jinja), name);
  }
});

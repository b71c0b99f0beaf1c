// EncodePreprocessor: the same rows as template.encode, in order; max_length drops (counted) or truncation;
// malformed rows dropped with their origin; worker threads (under tsx, and from a CommonJS host as tslab
// runs it) giving the same output; the seed's printInputs; the thinking-template warning.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'child_process';
import { createRequire } from 'module';
import * as fs from 'fs';
import * as path from 'path';
import { loadDataset } from '../src/data/load';
import { EncodePreprocessor, resetEncodeWarnings } from '../src/data/encode';
import { Dataset, type ChatRow } from '../src/data/dataset';
import { getTemplate, type Template } from '../src/data/template';
import { loadDefaultTokenizer, defaultTokenizerDir, Tokenizer, type TokenizerConfigJson } from '../src/model/tokenizer';
import { ConfigError, DatasetError } from '../src/errors';
import { captureLogs } from './fixtures/data/helpers';

const NAMES = { modelName: ['精衡', 'Jingheng'] as [string, string], modelAuthor: ['叶博韬', 'YE SEVERIN'] as [string, string] };
let tok: Tokenizer;
let rows: Dataset<ChatRow>;

before(async () => {
  tok = await loadDefaultTokenizer();
  rows = (await captureLogs(() => loadDataset(['tsft/general-zh', 'tsft/general-en', 'tsft/self-cognition'], NAMES))).value[0];
});

function seedTemplate(opts: Parameters<typeof getTemplate>[2] = {}): Template {
  const t = getTemplate('qwen3_thinking', tok, { defaultSystem: 'You are a helpful assistant.', maxLength: 2048, ...opts });
  t.setMode('train');
  return t;
}

test('encodes every row as template.encode does, in order, into a Dataset of {input_ids, labels, length}', async () => {
  const t = seedTemplate();
  const { value: out } = await captureLogs(() => EncodePreprocessor(t)(rows));
  assert.ok(out instanceof Dataset);
  assert.equal(out.length, rows.length);
  assert.deepEqual(out.features, ['input_ids', 'labels', 'length']);
  rows.forEach((r, i) => assert.deepEqual(out[i], t.encode(r), `row ${i}`));
  assert.equal(out.originOf(0), `${rows.originOf(0)} (row 0)`);
  // callable with new, as a class would be; .template is the template
  const viaNew = new EncodePreprocessor(t);
  assert.equal(viaNew.template, t);
  assert.throws(() => EncodePreprocessor({} as Template), ConfigError);
  await assert.rejects(EncodePreprocessor(t)(rows, { numProc: 0 }), ConfigError);
});

test('the seed: printInputs(encoded[0]) logs [INPUT_IDS], [INPUT], [LABELS_IDS], [LABELS] with [-100 * n] runs', async () => {
  const t = seedTemplate();
  const [train] = (await captureLogs(() => loadDataset(['tsft/self-cognition#20'], { splitDatasetRatio: 0.1, ...NAMES }))).value;
  const { value: encoded } = await captureLogs(() => EncodePreprocessor(t)(train, { numProc: 4 }));
  const { info } = await captureLogs(() => t.printInputs(encoded[0]));
  assert.equal(info.length, 4);
  const ids = encoded[0].input_ids;
  const masked = encoded[0].labels!.filter((l) => l === -100).length;
  const q = train[0].messages[0].content;
  const a = train[0].messages[1].content;
  assert.equal(info[0], `[INFO:tsft] [INPUT_IDS] [${ids.join(', ')}]`);
  assert.ok(info[0].startsWith('[INFO:tsft] [INPUT_IDS] [151644, 8948, 198'));
  assert.equal(info[1], `[INFO:tsft] [INPUT] <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n${q}<|im_end|>\n` +
    `<|im_start|>assistant\n${a}<|im_end|>\n`);
  assert.ok(info[2].startsWith('[INFO:tsft] [LABELS_IDS] [-100, -100, '));
  assert.equal(info[3], `[INFO:tsft] [LABELS] [-100 * ${masked}]${a}<|im_end|>\n`);
  assert.match(a, /精衡/);
});

test('rows over max_length: dropped and counted (delete), or truncated (left/right)', async () => {
  const t = seedTemplate({ maxLength: 64 });
  const lens = rows.map((r) => seedTemplate().encode(r).length);
  const over = lens.filter((l) => l > 64).length;
  assert.ok(over > 0 && over < rows.length);
  const { value: out, info, warnings } = await captureLogs(() => EncodePreprocessor(t)(rows));
  assert.equal(out.length, rows.length - over);
  assert.ok(out.every((r) => r.length <= 64));
  assert.ok(info.includes(`[INFO:tsft] Dataset filtered, origin length: ${rows.length}, filtered dataset length: ${rows.length - over}`), info.join('\n'));
  const first = lens.findIndex((l) => l > 64);
  assert.ok(warnings.some((w) => w.includes(`dropped ${over} of ${rows.length} rows longer than max_length 64 (first: ${rows.originOf(first)} (row ${first}))`)), warnings.join('\n'));
  for (const truncationStrategy of ['left', 'right'] as const) {
    const { value: cut } = await captureLogs(() => EncodePreprocessor(seedTemplate({ maxLength: 64, truncationStrategy }))(rows));
    assert.equal(cut.length, rows.length);
    assert.ok(cut.every((r) => r.input_ids.length <= 64 && r.labels!.length === r.input_ids.length));
  }
});

test('malformed rows are dropped with their origin and reason; strict throws', async () => {
  const t = getTemplate('qwen', tok);
  t.setMode('train');
  const data = Dataset.fromRows([
    { messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'Hello!' }] },
    { messages: [{ role: 'user', content: 'no answer' }] },
    { messages: 'not a list' },
  ], ['x.jsonl:1', 'x.jsonl:2', 'x.jsonl:3']);
  const { value: out, warnings } = await captureLogs(() => EncodePreprocessor(t)(data));
  assert.equal(out.length, 1);
  const w = warnings.find((l) => l.includes('dropped 2 malformed rows'));
  assert.ok(w, warnings.join('\n'));
  assert.ok(w.includes('x.jsonl:2 (row 1): "messages" has no assistant turn'), w);
  assert.ok(w.includes('x.jsonl:3 (row 2): "messages" must be an array'), w);
  await assert.rejects(captureLogs(() => EncodePreprocessor(t)(data, { strict: true })), (e: Error) => e instanceof DatasetError && e.message.includes('x.jsonl:2'));
});

test('numProc 2 with worker threads gives the same rows in the same order (tsx host)', async () => {
  const t = seedTemplate({ maxLength: 96 });
  const many = Dataset.fromRows(Array.from({ length: 1200 }, (_, i) => rows[i % rows.length]));
  const { value: one } = await captureLogs(() => EncodePreprocessor(t)(many, { numProc: 1 }));
  const { value: two, info, warnings } = await captureLogs(() => EncodePreprocessor(t)(many, { numProc: 2, workersOnly: true }));
  assert.deepEqual(warnings.filter((w) => /worker/.test(w)), []);
  const line = info.find((l) => l.includes('rows by workers'));
  assert.ok(line, info.join('\n'));
  assert.match(line, /2 threads, 1,200 rows by workers/);
  assert.equal(two.length, one.length);
  assert.deepEqual([...two], [...one]);
});

test('numProc > 1 from a CommonJS host (as tslab runs src/): workers start and agree', () => {
  const script = `
    require(${JSON.stringify(createRequire(path.join(process.cwd(), 'x.js')).resolve('tsx/cjs/api'))}).register();
    const { EncodePreprocessor } = require('./src/data/encode.ts');
    const { getTemplate } = require('./src/data/template.ts');
    const { Tokenizer, defaultTokenizerDir } = require('./src/model/tokenizer.ts');
    (async () => {
      const tok = await Tokenizer.fromDir(defaultTokenizerDir());
      const t = getTemplate('qwen', tok); t.setMode('train');
      const rows = Array.from({ length: 300 }, (_, i) => ({ messages: [{ role: 'user', content: 'q' + i }, { role: 'assistant', content: 'a' + i }] }));
      const a = await EncodePreprocessor(t)(rows, { quiet: true });
      const b = await EncodePreprocessor(t)(rows, { numProc: 2, workersOnly: true });
      console.log(JSON.stringify({ same: JSON.stringify([...a]) === JSON.stringify([...b]), n: b.length }));
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', cwd: process.cwd(), stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
  assert.match(out, /\{"same":true,"n":300\}/);
  assert.doesNotMatch(out, /worker thread failed/);
});

test('a tokenizer built in memory cannot be rebuilt in workers: encoding stays in this thread and says so', async () => {
  const dir = defaultTokenizerDir();
  const mem = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
    JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')) as TokenizerConfigJson);
  const t = getTemplate('qwen', mem);
  t.setMode('train');
  const { value: out, info } = await captureLogs(() => EncodePreprocessor(t)(rows, { numProc: 2, workersOnly: true }));
  assert.equal(out.length, rows.length);
  assert.ok(info.some((l) => l.includes('workers cannot rebuild the template (the tokenizer was not loaded from a folder') && l.includes('using 1 thread')), info.join('\n'));
});

test('qwen3_thinking trained on rows without think blocks: one warning naming the empty_think / qwen3 subsets', async () => {
  resetEncodeWarnings();
  const t = seedTemplate();
  const { warnings } = await captureLogs(() => EncodePreprocessor(t)(rows));
  const w = warnings.filter((l) => l.includes('<think>'));
  assert.equal(w.length, 1);
  assert.ok(w[0].includes(`${rows.length} of ${rows.length} rows have no <think>…</think> block`));
  for (const part of ["'swift/self-cognition:empty_think'", "':qwen3'", "'tsft/self-cognition:empty_think'", "'qwen3' template"]) assert.ok(w[0].includes(part), part);
  const again = await captureLogs(() => EncodePreprocessor(t)(rows));
  assert.equal(again.warnings.filter((l) => l.includes('<think>')).length, 0, 'once');
  resetEncodeWarnings();
  const [thinking] = (await captureLogs(() => loadDataset(['tsft/self-cognition:empty_think'], NAMES))).value;
  const ok = await captureLogs(() => EncodePreprocessor(t)(thinking));
  assert.equal(ok.warnings.filter((l) => l.includes('<think>')).length, 0, 'rows with empty think blocks do not warn');
  const hybrid = getTemplate('qwen3', tok);
  hybrid.setMode('train');
  const h = await captureLogs(() => EncodePreprocessor(hybrid)(rows));
  assert.equal(h.warnings.filter((l) => l.includes('<think>')).length, 0, 'qwen3 adds the empty block itself');
});

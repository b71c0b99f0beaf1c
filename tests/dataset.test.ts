// loadDataset: ms-swift's sampling/split/order semantics (the seed's worked example through a loopback
// hub serving stand-ins of the same shapes), syntax, formats, sources, self-cognition names and subsets,
// bundled data, and the Dataset object.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { inspect } from 'util';
import { loadDataset, parseDatasetSpec, planSplit, sampleIndices } from '../src/data/load';
import { Dataset, type ChatRow } from '../src/data/dataset';
import { DATASET_REGISTRY } from '../src/data/registry';
import { convertRow, detectFormat } from '../src/data/formats';
import { parseCsvRecords } from '../src/data/csv';
import { Random } from '../src/utils/seed';
import { HubError } from '../src/errors';
import { captureLogs, jsonl, REAL_SELF_COGNITION, startFakeHub, tempDir, useHubEnv, type FakeHub } from './fixtures/data/helpers';

const NAMES = { modelName: ['精衡', 'Jingheng'] as [string, string], modelAuthor: ['叶博韬', 'YE SEVERIN'] as [string, string] };
const text = (r: ChatRow) => r.messages.map((m) => `${m.role}: ${m.content}`).join(' | ');

// ---------------------------------------------------------------------------------------------------
// stand-ins of the seed's three datasets, served by a loopback hub
// ---------------------------------------------------------------------------------------------------

const ZH_ROWS = 48_818;
const EN_ROWS = 52_002;
const zhRow = (i: number) => ({ instruction: `指令${i}`, input: i % 3 === 0 ? `输入：材料${i}` : '', output: `回答${i}` });
const enRow = (i: number) => ({ instruction: `Instruction ${i}`, input: i % 4 === 1 ? `input ${i}` : '', output: `Answer ${i}` });

/** The real 108 rows when ../shared is here, else a stand-in of the same shape (58 zh, then 50 en). */
function selfCognitionRows(): { query: string; response: string; tag: string }[] {
  if (fs.existsSync(REAL_SELF_COGNITION)) {
    return fs.readFileSync(REAL_SELF_COGNITION, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  }
  return Array.from({ length: 108 }, (_, i) => (i < 58
    ? { query: `你是谁${i}`, response: `我是{{NAME}}，由{{AUTHOR}}训练。${i}`, tag: 'zh' }
    : { query: `who are you ${i}`, response: `I am {{NAME}}, trained by {{AUTHOR}}. ${i}`, tag: 'en' }));
}

const SC = selfCognitionRows();
let hub: FakeHub;
let restoreEnv: () => void;
const tmp = tempDir('tsft-dataset-');

before(async () => {
  hub = await startFakeHub({
    'AI-ModelScope/alpaca-gpt4-data-zh': { 'alpaca_gpt4_data_zh.json': JSON.stringify(Array.from({ length: ZH_ROWS }, (_, i) => zhRow(i)), null, 1) },
    'AI-ModelScope/alpaca-gpt4-data-en': { 'alpaca_gpt4_data_en.jsonl': jsonl(Array.from({ length: EN_ROWS }, (_, i) => enRow(i))), 'README.md': '# en' },
    'swift/self-cognition': { 'self_cognition.jsonl': jsonl(SC), 'dataset_infos.json': '{}' },
    'modelscope/self-cognition': { 'self_cognition.jsonl': jsonl(SC) },
    'llm-wizard/alpaca-gpt4-data-zh': { 'data/train.json': JSON.stringify([zhRow(0), zhRow(3)]), 'data/test.json': JSON.stringify([zhRow(1)]) },
    'vicgalle/alpaca-gpt4': { 'data/train-00000-of-00001.parquet': Buffer.from('PAR1') },
    'someone/chat-set': { 'chat.jsonl': jsonl([{ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'Hello!' }] }]) },
  });
  restoreEnv = useHubEnv(hub.endpoint, tmp.dir);
});

after(async () => {
  restoreEnv();
  await hub.close();
  fs.rmSync(tmp.dir, { recursive: true, force: true });
});

const quietHub = { hub: { quiet: true, retryDelayMs: 5 } };
const SEED_CALL = ['AI-ModelScope/alpaca-gpt4-data-zh#500', 'AI-ModelScope/alpaca-gpt4-data-en#500', 'swift/self-cognition#500'];

function scExpected(i: number): string {
  const r = SC[i];
  const [name, author] = r.tag === 'zh' ? ['精衡', '叶博韬'] : ['Jingheng', 'YE SEVERIN'];
  const fill = (s: string) => s.split('{{NAME}}').join(name).split('{{AUTHOR}}').join(author);
  return `user: ${fill(r.query)} | assistant: ${fill(r.response)}`;
}
const zhExpected = (i: number) => `user: 指令${i}${i % 3 === 0 ? `\n材料${i}` : ''} | assistant: 回答${i}`;
const enExpected = (i: number) => `user: Instruction ${i}${i % 4 === 1 ? `\ninput ${i}` : ''} | assistant: Answer ${i}`;

test('the seed\'s call: 1,489 train and 11 val rows in ms-swift\'s order, names filled, as the worked example says', async () => {
  const { value: [train, val], info, warnings } = await captureLogs(() => loadDataset(SEED_CALL, {
    splitDatasetRatio: 0.01, seed: 42, numProc: 4, ...NAMES, ...quietHub,
  }));
  assert.equal(train.length, 1489);
  assert.equal(val.length, 11);
  assert.equal(`${train}`, "Dataset({\n    features: ['messages'],\n    num_rows: 1489\n})");
  assert.equal(`${val}`, "Dataset({\n    features: ['messages'],\n    num_rows: 11\n})");
  // zh: first 495 rows (输入： stripped from input); en: first 495; self-cognition: rows 0..106 four times, then 0..70
  for (let i = 0; i < 495; i++) assert.equal(text(train[i]), zhExpected(i), `train[${i}]`);
  for (let i = 0; i < 495; i++) assert.equal(text(train[495 + i]), enExpected(i), `train[${495 + i}]`);
  const sc = [...Array(4)].flatMap(() => Array.from({ length: 107 }, (_, i) => i)).concat(Array.from({ length: 71 }, (_, i) => i));
  assert.equal(sc.length, 499);
  sc.forEach((row, k) => assert.equal(text(train[990 + k]), scExpected(row), `train[${990 + k}] = self-cognition row ${row}`));
  // validation: the last rows of each whole dataset
  assert.deepEqual(val.map(text), [
    ...[48813, 48814, 48815, 48816, 48817].map(zhExpected),
    ...[51997, 51998, 51999, 52000, 52001].map(enExpected),
    scExpected(107),
  ]);
  assert.ok(train.every((r) => !/\{\{(NAME|AUTHOR)\}\}/.test(text(r))), 'no placeholder left');
  assert.match(train.originOf(990), /self_cognition\.jsonl:1$/);
  // the log lines
  assert.ok(info.includes('[INFO:tsft] Downloading the dataset from ModelScope, dataset_id: AI-ModelScope/alpaca-gpt4-data-zh'), info.join('\n'));
  assert.ok(info.includes('[INFO:tsft] alpaca-gpt4-data-zh: 48,818 rows, #500 → first 495 rows; 495 train / 5 val'), info.join('\n'));
  assert.ok(info.includes('[INFO:tsft] alpaca-gpt4-data-en: 52,002 rows, #500 → first 495 rows; 495 train / 5 val'));
  assert.ok(info.includes('[INFO:tsft] self-cognition: 108 rows, #500 → rows repeated 4× + 71; 499 train / 1 val'));
  assert.ok(info.some((l) => l.includes("{{NAME}} → ['精衡', 'Jingheng'], {{AUTHOR}} → ['叶博韬', 'YE SEVERIN']")));
  assert.ok(warnings.some((w) => /self-cognition: #500 asks for more rows than the 107 it has for training, so rows repeat \(each 4×, 71 of them once more\)/.test(w)), warnings.join('\n'));
  assert.ok(!warnings.some((w) => w.includes('still contain')));

  // downloaded once: the second call is served from the cache
  hub.log.length = 0;
  const [again] = await captureLogs(() => loadDataset(SEED_CALL, { splitDatasetRatio: 0.01, ...NAMES, ...quietHub })).then((c) => c.value);
  assert.deepEqual(again.map(text), train.map(text));
  assert.equal(hub.log.filter((u) => /\/repo\?|\/resolve\//.test(u)).length, 0, 'no file downloaded again');
});

test('the real swift/self-cognition rows (skipped without ../shared): zh rows take [0], en rows [1]', { skip: !fs.existsSync(REAL_SELF_COGNITION) && 'no ../shared/data here' }, async () => {
  const { value: [train, val] } = await captureLogs(() => loadDataset([`${REAL_SELF_COGNITION}#500`], { splitDatasetRatio: 0.01, ...NAMES }));
  assert.equal(train.length, 499);
  assert.equal(val.length, 1);
  const raw = fs.readFileSync(REAL_SELF_COGNITION, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(raw.length, 108);
  assert.equal(raw.filter((r) => r.tag === 'zh').length, 58);
  assert.match(train[0].messages[1].content, /精衡/);
  assert.match(train[0].messages[1].content, /叶博韬/);
  assert.match(train[58].messages[1].content, /Jingheng/);
  assert.match(train[58].messages[1].content, /YE SEVERIN/);
  assert.equal(text(train[498]), text(train[70]));
  assert.equal(val[0].messages[0].content, raw[107].query);
});

test('shuffle: seeded and deterministic, same rows as a multiset per dataset, different seeds differ', async () => {
  const load = (seed: number) => captureLogs(() => loadDataset(SEED_CALL, { splitDatasetRatio: 0.01, seed, shuffle: true, ...NAMES, ...quietHub }))
    .then((c) => c.value);
  const [a, av] = await load(42);
  const [b, bv] = await load(42);
  const [c] = await load(7);
  assert.equal(a.length, 1489);
  assert.equal(av.length, 11);
  assert.deepEqual(a.map(text), b.map(text));
  assert.deepEqual(av.map(text), bv.map(text));
  assert.notDeepEqual(a.map(text), c.map(text));
  assert.notDeepEqual(a.slice(0, 20).map(text), Array.from({ length: 20 }, (_, i) => zhExpected(i)), 'shuffled, not in file order');
  // per dataset: 495 zh, 495 en, 499 self-cognition; self-cognition rows appear 4 or 5 times, none of the held-out row
  assert.equal(a.filter((r) => r.messages[0].content.startsWith('指令')).length, 495);
  assert.equal(a.filter((r) => r.messages[0].content.startsWith('Instruction')).length, 495);
  const val = new Set(av.map(text));
  assert.ok(a.every((r) => !val.has(text(r))), 'no validation row in train');
});

test('useHf / hf:: take the Hugging Face mirrors; train split files are preferred; parquet-only repos say why', async () => {
  const { value: [zh], info } = await captureLogs(() => loadDataset(['hf::AI-ModelScope/alpaca-gpt4-data-zh'], quietHub));
  assert.ok(info.includes('[INFO:tsft] Downloading the dataset from Hugging Face, dataset_id: llm-wizard/alpaca-gpt4-data-zh'));
  assert.deepEqual(zh.map(text), [zhExpected(0), zhExpected(3)], 'data/train.json only, 输入： stripped');
  const { value: [sc] } = await captureLogs(() => loadDataset(['swift/self-cognition#3'], { useHf: true, ...NAMES, ...quietHub }));
  assert.equal(text(sc[0]), scExpected(0));
  await assert.rejects(captureLogs(() => loadDataset(['AI-ModelScope/alpaca-gpt4-data-en'], { useHf: true, ...quietHub })), (e: Error) => {
    assert.ok(e instanceof HubError);
    for (const part of ['vicgalle/alpaca-gpt4', 'parquet', 'ModelScope', "'tsft/general-en'"]) assert.ok(e.message.includes(part), `${e.message} lacks ${part}`);
    return true;
  });
  // an unregistered hub id loads with format detection
  const { value: [chat] } = await captureLogs(() => loadDataset(['ms::someone/chat-set'], quietHub));
  assert.equal(text(chat[0]), 'user: hi | assistant: Hello!');
});

test('an offline hub id fails with a message naming the bundled equivalents and the local-path form', async () => {
  process.env.MODELSCOPE_OFFLINE = '1';
  try {
    await assert.rejects(captureLogs(() => loadDataset(['AI-ModelScope/alpaca-gpt4-data-zh#500'], {
      ...quietHub, hub: { ...quietHub.hub, cacheDir: path.join(tmp.dir, 'empty-cache') },
    })), (e: Error) => {
      assert.ok(e instanceof HubError);
      for (const part of ['AI-ModelScope/alpaca-gpt4-data-zh', 'MODELSCOPE_OFFLINE', "'tsft/general-zh#500'", "'tsft/self-cognition' (for swift/self-cognition)",
        "'tsft/general-en' (for AI-ModelScope/alpaca-gpt4-data-en)", "'/path/to/train.jsonl#500'"]) {
        assert.ok(e.message.includes(part), `"${e.message}" lacks "${part}"`);
      }
      return true;
    });
  } finally {
    delete process.env.MODELSCOPE_OFFLINE;
  }
});

// ---------------------------------------------------------------------------------------------------
// semantics in isolation
// ---------------------------------------------------------------------------------------------------

test('planSplit / sampleIndices: ms-swift\'s post_process without shuffle', () => {
  const rng = new Random(0);
  assert.deepEqual(sampleIndices(3, 7, false), [0, 1, 2, 0, 1, 2, 0]);
  assert.deepEqual(sampleIndices(5, 2, false), [0, 1]);
  const sc = planSplit(108, 500, 0.01, false, rng);
  assert.deepEqual(sc.val, [107]);
  assert.equal(sc.train.length, 499);
  assert.deepEqual(sc.train.slice(0, 3), [0, 1, 2]);
  assert.deepEqual(sc.train.slice(-2), [69, 70]);
  const zh = planSplit(48818, 500, 0.01, false, rng);
  assert.deepEqual(zh.val, [48813, 48814, 48815, 48816, 48817]);
  assert.deepEqual(zh.train, Array.from({ length: 495 }, (_, i) => i));
  // no #N: val = max(floor(len * ratio), 1); no ratio: everything trains
  assert.deepEqual(planSplit(10, undefined, 0.25, false, rng).val, [8, 9]);
  assert.deepEqual(planSplit(10, undefined, 0, false, rng), { train: [...Array(10).keys()], val: [], pool: 10 });
  // #N below the length with a ratio: val from min(len, N)
  assert.deepEqual(planSplit(1000, 200, 0.1, false, rng).val.length, 20);
  // shuffle: a permutation's first val_n are validation, train draws from the rest
  const s = planSplit(108, 500, 0.01, true, new Random(42));
  assert.equal(s.val.length, 1);
  assert.equal(s.train.length, 499);
  assert.ok(!s.train.includes(s.val[0]));
  assert.deepEqual(planSplit(108, 500, 0.01, true, new Random(42)), s, 'seeded');
});

test('syntax: [hf::|ms::]id[:subset][#N], and an existing path is always a path', () => {
  assert.deepEqual(parseDatasetSpec('hf::swift/self-cognition:qwen3#500'),
    { raw: 'hf::swift/self-cognition:qwen3#500', source: 'swift/self-cognition', useHf: true, subsets: ['qwen3'], sample: 500 });
  assert.deepEqual(parseDatasetSpec('MS::a/b:x/y'), { raw: 'MS::a/b:x/y', source: 'a/b', useHf: false, subsets: ['x', 'y'] });
  assert.deepEqual(parseDatasetSpec('tsft/self-cognition#80').sample, 80);
  const odd = tmp.write('we#ird:name.jsonl', jsonl([{ query: 'q', response: 'r' }]));
  assert.deepEqual(parseDatasetSpec(odd), { raw: odd, source: odd, subsets: [] });
  assert.equal(parseDatasetSpec(`${odd}#2`).sample, 2);
  assert.equal(parseDatasetSpec(`${odd}#2`).source, odd);
});

test('formats: alpaca, query-response (+system, history), messages, sharegpt (from/value and pairs)', () => {
  assert.equal(detectFormat(new Set(['instruction', 'input', 'output'])), 'alpaca');
  assert.equal(detectFormat(new Set(['query', 'response', 'tag'])), 'query-response');
  assert.equal(detectFormat(new Set(['messages'])), 'messages');
  assert.equal(detectFormat(new Set(['conversations', 'system'])), 'sharegpt');
  assert.equal(detectFormat(new Set(['foo', 'bar'])), null);
  const m = (v: unknown, f: Parameters<typeof convertRow>[1]) => convertRow(v, f).messages;
  assert.deepEqual(m({ instruction: 'Translate', input: 'hi', output: '你好' }, 'alpaca'),
    [{ role: 'user', content: 'Translate\nhi' }, { role: 'assistant', content: '你好' }]);
  assert.deepEqual(m({ instruction: '', input: 'only input', output: 'x' }, 'alpaca')[0].content, 'only input');
  assert.deepEqual(m({ instruction: 'only instruction', input: '', output: 'x' }, 'alpaca')[0].content, 'only instruction');
  assert.deepEqual(m({ system: 'S', query: 'q2', response: 'r2', history: [['q1', 'r1']] }, 'query-response'), [
    { role: 'system', content: 'S' }, { role: 'user', content: 'q1' }, { role: 'assistant', content: 'r1' },
    { role: 'user', content: 'q2' }, { role: 'assistant', content: 'r2' }]);
  assert.deepEqual(m({ query: 'q', response: 'r', history: '[["a", "b"]]' }, 'query-response').length, 4, 'history as a JSON string (CSV)');
  assert.deepEqual(m({ prompt: 'p', completion: 'c' }, 'query-response'), [{ role: 'user', content: 'p' }, { role: 'assistant', content: 'c' }]);
  assert.deepEqual(m({ messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'u' }, { role: 'assistant', content: 'a', loss: false }, { role: 'user', content: 'u2' }, { role: 'assistant', content: 'a2' }] }, 'messages')[2],
    { role: 'assistant', content: 'a', loss: false });
  assert.deepEqual(m({ system: 'S', conversations: [{ from: 'human', value: 'u' }, { from: 'gpt', value: 'a' }] }, 'sharegpt'),
    [{ role: 'system', content: 'S' }, { role: 'user', content: 'u' }, { role: 'assistant', content: 'a' }]);
  assert.deepEqual(m({ conversation: [{ user: 'u1', assistant: 'a1' }, { user: 'u2', assistant: 'a2' }] }, 'sharegpt').map((x) => x.role),
    ['user', 'assistant', 'user', 'assistant']);
  assert.equal(convertRow({ query: 'q', response: 'r', tag: 'zh' }, 'query-response').tag, 'zh');
});

test('sources: .json array / object of rows / columns, .csv (quotes, CRLF, newlines), folders, JSON Lines in a .json', async () => {
  const t = tempDir();
  const rows = [{ instruction: 'a', input: '', output: '1' }, { instruction: 'b', input: 'x', output: '2' }];
  t.write('arr.json', JSON.stringify(rows, null, 2));
  t.write('obj.json', JSON.stringify({ r1: rows[0], r2: rows[1] }));
  t.write('cols.json', JSON.stringify({ instruction: ['a', 'b'], input: ['', 'x'], output: ['1', '2'] }));
  t.write('lines.json', jsonl(rows));
  t.write('t.csv', 'instruction,input,output\r\na,,1\r\n"b","x","2"\r\n');
  t.write('q.csv', 'query,response\n"say ""hi""\nplease","hello, you"\n');
  t.write('folder/part-b.jsonl', jsonl([rows[1]]));
  t.write('folder/part-a.jsonl', jsonl([rows[0]]));
  t.write('folder/notes.txt', 'not data');
  const expected = ['user: a | assistant: 1', 'user: b\nx | assistant: 2'];
  for (const f of ['arr.json', 'obj.json', 'cols.json', 'lines.json', 't.csv', 'folder']) {
    const { value: [d], warnings } = await captureLogs(() => loadDataset([path.join(t.dir, f)]));
    assert.deepEqual(d.map(text), expected, f);
    assert.deepEqual(warnings, [], f);
  }
  const { value: [q] } = await captureLogs(() => loadDataset([path.join(t.dir, 'q.csv')]));
  assert.equal(text(q[0]), 'user: say "hi"\nplease | assistant: hello, you');
  const { value: [arr] } = await captureLogs(() => loadDataset([path.join(t.dir, 'arr.json')]));
  assert.deepEqual(arr.origins, [`${path.join(t.dir, 'arr.json')}:2`, `${path.join(t.dir, 'arr.json')}:7`], 'lines of the array elements');
  assert.deepEqual(parseCsvRecords('a,"b\nc"\n\nd,e').map((r) => r.line), [1, 4]);
  fs.rmSync(t.dir, { recursive: true, force: true });
});

test('names: any rows with placeholders are filled (local too), one value serves both languages, leftovers warn', async () => {
  const t = tempDir();
  const f = t.write('mine.jsonl', jsonl([
    { query: '你是谁？', response: '我是{{NAME}}，{{AUTHOR}}训练的。', tag: 'zh' },
    { query: 'Who are you?', response: "I'm {{NAME}} by {{AUTHOR}}.", tag: 'en' },
  ]));
  t.write('msgs.jsonl', jsonl([{ messages: [{ role: 'user', content: 'Who made {{NAME}}?' }, { role: 'assistant', content: '{{AUTHOR}} did.' }] }]));
  const { value: [a] } = await captureLogs(() => loadDataset([f], NAMES));
  assert.equal(a[0].messages[1].content, '我是精衡，叶博韬训练的。');
  assert.equal(a[1].messages[1].content, "I'm Jingheng by YE SEVERIN.");
  const { value: [m] } = await captureLogs(() => loadDataset([path.join(t.dir, 'msgs.jsonl')], NAMES));
  assert.equal(text(m[0]), 'user: Who made Jingheng? | assistant: YE SEVERIN did.', 'no tag, no CJK → en');
  const { value: [one] } = await captureLogs(() => loadDataset([f], { modelName: 'Ada', modelAuthor: ['Lab'] }));
  assert.equal(one[0].messages[1].content, '我是Ada，Lab训练的。');
  assert.equal(one[1].messages[1].content, "I'm Ada by Lab.");
  const { warnings } = await captureLogs(() => loadDataset([f], { modelName: ['精衡', 'Jingheng'] }));
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /mine\.jsonl: 2 of 2 rows still contain \{\{AUTHOR\}\} \(first: .*mine\.jsonl:1\); no modelAuthor was given/);
  fs.rmSync(t.dir, { recursive: true, force: true });
});

test('bundled data: tsft/self-cognition (≥ 80 rows, zh and en, placeholders, subsets) and tsft/general-zh/en (≥ 60)', async () => {
  const raw = (f: string) => fs.readFileSync(path.join('data', f), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const sc = raw('self-cognition.jsonl');
  assert.ok(sc.length >= 80, `${sc.length} rows`);
  assert.ok(sc.filter((r) => r.tag === 'zh').length >= 40 && sc.filter((r) => r.tag === 'en').length >= 40);
  assert.ok(sc.every((r) => typeof r.query === 'string' && /\{\{NAME\}\}/.test(r.response)), 'every answer states the name');
  for (const who of ['ChatGPT', 'Qwen', 'Claude', '通义千问']) assert.ok(sc.some((r) => r.query.includes(who)), who);
  const general = [...raw('general-zh.jsonl'), ...raw('general-en.jsonl')];
  assert.ok(general.length >= 60);
  assert.ok(general.every((r) => typeof r.instruction === 'string' && r.output.length > 0));

  const { value: [train, val], info } = await captureLogs(() => loadDataset(['tsft/self-cognition#200', 'tsft/general-zh', 'tsft/general-en'],
    { splitDatasetRatio: 0.05, ...NAMES }));
  assert.equal(train.length + val.length, 200 + general.length);
  assert.ok(info.some((l) => l.startsWith(`[INFO:tsft] tsft/self-cognition: ${sc.length} rows, #200 → rows repeated 2×`)), info.join('\n'));
  assert.ok(train.every((r) => !text(r).includes('{{')));
  assert.ok(train.some((r) => r.messages[0].content === '你是谁？' && r.messages[1].content.includes('精衡')));
  const { value: [q3] } = await captureLogs(() => loadDataset(['tsft/self-cognition:qwen3#2'], NAMES));
  assert.equal(q3[0].messages[0].content, `${sc[0].query} /no_think`);
  assert.ok(q3[0].messages[1].content.startsWith('<think>\n\n</think>\n\n我是精衡'));
  const { value: [et] } = await captureLogs(() => loadDataset(['tsft/self-cognition:empty_think#1'], NAMES));
  assert.equal(et[0].messages[0].content, sc[0].query);
  assert.ok(et[0].messages[1].content.startsWith('<think>\n\n</think>\n\n'));
  const { value: [all] } = await captureLogs(() => loadDataset(['tsft/self-cognition:all'], NAMES));
  assert.equal(all.length, 3 * sc.length);
  assert.ok(DATASET_REGISTRY.some((m) => m.msId === 'swift/self-cognition' && m.hfId === 'modelscope/self-cognition'));
});

test('Dataset: indexable, iterable, .length, prints like datasets.Dataset, select keeps origins', () => {
  const d = Dataset.fromRows([{ messages: [] }, { messages: [] }], ['a.jsonl:1', 'a.jsonl:2']);
  assert.equal(d.length, 2);
  assert.equal(d.num_rows, 2);
  assert.deepEqual(d.features, ['messages']);
  assert.deepEqual([...d].length, 2);
  assert.equal(inspect(d), "Dataset({\n    features: ['messages'],\n    num_rows: 2\n})");
  assert.equal(String(d), inspect(d));
  const s = d.select([1, 1, 0]);
  assert.ok(s instanceof Dataset);
  assert.deepEqual(s.origins, ['a.jsonl:2', 'a.jsonl:2', 'a.jsonl:1']);
  assert.ok(!(d.map((x) => x) instanceof Dataset), 'array methods return plain arrays');
  assert.deepEqual(Object.keys(d), ['0', '1'], 'origins is not enumerable');
});

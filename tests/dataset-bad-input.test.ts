// The bad-input corpus: malformed files, rows and arguments. Each gives a typed error or a per-row warning
// that names the file and line (and field); good rows of a partly bad file still load, with the count dropped.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { loadDataset, type LoadDatasetOptions } from '../src/data/load';
import { ConfigError, DatasetError, HubError, TsftError } from '../src/errors';
import { captureLogs, jsonl, tempDir } from './fixtures/data/helpers';

const t = tempDir('tsft-bad-');
after(() => fs.rmSync(t.dir, { recursive: true, force: true }));

const GOOD = { instruction: 'Say hi', input: '', output: 'Hi!' };
const GOOD2 = { instruction: 'Count to two', input: '', output: '1, 2' };

/** Loads `file`; expects the good rows to load and one warning naming the file, each line and each reason. */
async function droppedRows(file: string, expectRows: number, problems: [line: number, reason: string][], opts: LoadDatasetOptions = {}) {
  const { value: [train], warnings } = await captureLogs(() => loadDataset([file], opts));
  assert.equal(train.length, expectRows, `rows loaded from ${path.basename(file)}`);
  const w = warnings.find((l) => l.includes(`dropped ${problems.length} of ${expectRows + problems.length} rows`));
  assert.ok(w, `no drop warning in:\n${warnings.join('\n')}`);
  assert.ok(w.includes(path.basename(file)), w);
  for (const [line, reason] of problems) assert.ok(w.includes(`line ${line}: ${reason}`), `"${w}" lacks "line ${line}: ${reason}"`);
  return train;
}

/** Expects loadDataset to throw `cls` with every part in its message. */
async function fails(datasets: string[], cls: typeof TsftError, parts: string[], opts: LoadDatasetOptions = {}) {
  await assert.rejects(captureLogs(() => loadDataset(datasets, opts)), (e: Error) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.name}: ${e.message}`);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    return true;
  });
}

test('1. an invalid JSON line: dropped with file, line and column; the other rows load', async () => {
  const f = t.write('invalid-line.jsonl', `${JSON.stringify(GOOD)}\n{"instruction": "x", "output": }\n${JSON.stringify(GOOD2)}\n`);
  await droppedRows(f, 2, [[2, 'not valid JSON at column 32']]);
});

test('2. a UTF-8 BOM is skipped: the first row loads', async () => {
  const f = t.write('bom.jsonl', `\ufeff${jsonl([GOOD, GOOD2])}`);
  const { value: [d], warnings } = await captureLogs(() => loadDataset([f]));
  assert.equal(d.length, 2);
  assert.equal(d[0].messages[0].content, 'Say hi');
  assert.deepEqual(warnings, []);
});

test('3. CRLF line ends (JSON Lines and CSV): no stray \\r in any field', async () => {
  const a = t.write('crlf.jsonl', jsonl([GOOD, GOOD2]).replace(/\n/g, '\r\n'));
  const b = t.write('crlf.csv', 'instruction,input,output\r\nSay hi,,Hi!\r\n"Count\r\nto two",,"1, 2"\r\n');
  for (const f of [a, b]) {
    const { value: [d] } = await captureLogs(() => loadDataset([f]));
    assert.equal(d.length, 2);
    assert.ok(d.every((r) => r.messages.every((m) => !m.content.endsWith('\r'))), path.basename(f));
    assert.equal(d[0].messages[1].content, 'Hi!');
  }
});

test('4. a missing field: the row is dropped naming the field', async () => {
  const f = t.write('missing.jsonl', jsonl([GOOD, { instruction: 'No answer', input: '' }, GOOD2]));
  await droppedRows(f, 2, [[2, 'field "output" is missing']]);
});

test('5. a non-string field: dropped naming the field and the type', async () => {
  const f = t.write('nonstring.jsonl', jsonl([{ instruction: 'Add', input: '1+1', output: 2 }, GOOD, { instruction: ['a'], input: '', output: 'x' }]));
  await droppedRows(f, 1, [[1, 'field "output" is a number; expected a string'], [3, 'field "instruction" is an array; expected a string']]);
});

test('6. wrong role order: assistant first, system in the middle, user last', async () => {
  const f = t.write('order.jsonl', jsonl([
    { messages: [{ role: 'assistant', content: 'Hi' }, { role: 'user', content: 'Hello' }] },
    { messages: [{ role: 'user', content: 'a' }, { role: 'system', content: 's' }, { role: 'assistant', content: 'b' }] },
    { messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }] },
    { messages: [{ role: 'user', content: 'fine' }, { role: 'assistant', content: 'ok' }] },
  ]));
  await droppedRows(f, 1, [
    [1, 'the first turn is from the assistant; conversations must start with the user'],
    [2, 'message 1 is a system message; only the first message may be the system'],
    [3, 'the last turn is from the user'],
  ]);
});

test('7. an empty assistant answer (and an empty question) is dropped', async () => {
  const f = t.write('empty-answer.jsonl', jsonl([GOOD, { instruction: 'q', input: '', output: '  ' }, { instruction: '', input: '', output: 'x' }]));
  await droppedRows(f, 1, [[2, 'message 1 (assistant) is empty'], [3, 'message 0 (user) is empty']]);
});

test('8. unknown role names and tool turns', async () => {
  const f = t.write('roles.jsonl', jsonl([
    { messages: [{ role: 'robot', content: 'x' }, { role: 'assistant', content: 'y' }] },
    { messages: [{ role: 'user', content: 'x' }, { role: 'tool', content: '{}' }, { role: 'assistant', content: 'y' }] },
    { messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null }] },
    { messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y' }] },
  ]));
  await droppedRows(f, 1, [
    [1, 'messages[0].role is "robot"'],
    [2, 'messages[1].role is "tool": tool turns are not supported yet'],
    [3, 'messages[1].content (assistant) is null; expected a string'],
  ]);
});

test('9. an unknown format: an error naming the file, the columns seen and the formats tsft reads', async () => {
  const f = t.write('unknown.jsonl', jsonl([{ foo: 1, bar: 'x' }]));
  await fails([f], DatasetError, ['unknown.jsonl', 'unknown row format', '"foo", "bar"', 'alpaca {"instruction", "input", "output"}', 'sharegpt']);
});

test('10. an empty file (or only blank lines)', async () => {
  await fails([t.write('empty.jsonl', '')], DatasetError, ['empty.jsonl', 'is empty']);
  await fails([t.write('blank.jsonl', '\n \r\n\n')], DatasetError, ['blank.jsonl', 'is empty']);
});

test('11. an unreadable file: not UTF-8, UTF-16, or no read permission', async () => {
  await fails([t.write('gbk.jsonl', Buffer.concat([Buffer.from('{"query": "'), Buffer.from([0xc4, 0xe3, 0xba]), Buffer.from('"}\n')]))],
    DatasetError, ['gbk.jsonl', 'not UTF-8', 'line 1', 'iconv']);
  await fails([t.write('utf16.jsonl', Buffer.from('\ufeff{"query": "q"}', 'utf16le'))], DatasetError, ['utf16.jsonl', 'UTF-16']);
  const locked = t.write('locked.jsonl', jsonl([GOOD]));
  fs.chmodSync(locked, 0o000);
  try {
    const canRead = (() => { try { fs.readFileSync(locked); return true; } catch { return false; } })();
    if (!canRead) await fails([locked], DatasetError, ['locked.jsonl', 'permission denied']);   // root reads anything
  } finally {
    fs.chmodSync(locked, 0o644);
  }
});

test('12. an unknown hub id: not found, with the bundled datasets and the local-path form', async () => {
  const restore = { ...process.env };
  process.env.MODELSCOPE_OFFLINE = '1';
  process.env.MODELSCOPE_CACHE = path.join(t.dir, 'no-cache');
  try {
    await fails(['nobody/no-such-dataset#10'], HubError, ['nobody/no-such-dataset', "'tsft/self-cognition'", "'/path/to/train.jsonl#500'"]);
  } finally {
    process.env = restore;
  }
  await fails(['./no/such/file.jsonl'], DatasetError, ['./no/such/file.jsonl', 'is no file or folder here', 'tsft/general-en']);
  await fails(['data/missing.jsonl#5'], DatasetError, ['data/missing.jsonl is no file or folder here']);
});

test('13. #0, #-3, #abc, # and a huge #N', async () => {
  await fails(['tsft/general-en#0'], DatasetError, ['#0 asks for no rows', '#N with N ≥ 1']);
  await fails(['tsft/general-en#-3'], DatasetError, ['#-3 is negative']);
  await fails(['tsft/general-en#abc'], DatasetError, ['#abc is not a whole number']);
  await fails(['tsft/general-en#'], DatasetError, ['nothing follows "#"']);
  await fails(['tsft/general-en#99999999999999999999'], DatasetError, ['too large']);
});

test('14. splitDatasetRatio outside [0, 1), and other bad options', async () => {
  for (const r of [1, 1.5, -0.1, Number.NaN]) await fails(['tsft/general-en'], ConfigError, ['splitDatasetRatio must be a number in [0, 1)'], { splitDatasetRatio: r });
  await fails(['tsft/general-en'], ConfigError, ['seed'], { seed: -1 });
  await fails(['tsft/general-en'], ConfigError, ['modelName must be a string or [zh, en]'], { modelName: [1, 2] as unknown as string[] });
  await fails([], DatasetError, ['at least one dataset']);
});

test('15. #N too small to leave training rows after the validation split', async () => {
  await fails(['tsft/general-en#1'], DatasetError, ['#1 with splitDatasetRatio 0.01', 'no training rows'], { splitDatasetRatio: 0.01 });
  const one = t.write('one-row.jsonl', jsonl([GOOD]));
  await fails([`${one}#5`], DatasetError, ['has 1 row(s)', 'leaves none to train on'], { splitDatasetRatio: 0.5 });
});

test('16. unknown subsets, and subsets on a dataset that has none', async () => {
  await fails(['tsft/self-cognition:qwen4'], DatasetError, ['no subset "qwen4"', 'default, qwen3, empty_think']);
  await fails(['tsft/general-zh:default'], DatasetError, ['has no subsets', 'swift/self-cognition']);
  await fails(['tsft/self-cognition:'], DatasetError, ['empty subset name']);
  await fails(['xx::org/name'], DatasetError, ['unknown hub prefix "xx::"']);
});

test('17. a truncated .json array: the line and column of the break', async () => {
  const f = t.write('truncated.json', `[\n  ${JSON.stringify(GOOD)},\n  {"instruction": "x", "input": ""\n`);
  await fails([f], DatasetError, ['truncated.json', 'not valid JSON at line', 'name the file .jsonl']);
});

test('18. a .json file that holds a number, and a file of an unknown extension', async () => {
  await fails([t.write('number.json', '42')], DatasetError, ['number.json', 'a JSON number', 'array of rows']);
  await fails([t.write('rows.txt', 'hello')], DatasetError, ['rows.txt', 'not ".txt"', 'JSON Lines']);
  await fails([t.write('rows.parquet', 'PAR1')], DatasetError, ['rows.parquet', '".parquet"']);
});

test('19. a row that is not an object (array, string, null)', async () => {
  const f = t.write('not-object.jsonl', `${JSON.stringify(GOOD)}\n[1, 2]\n"text"\nnull\n`);
  await droppedRows(f, 1, [[2, 'the row is an array; expected a JSON object'], [3, 'the row is a string'], [4, 'the row is null']]);
});

test('20. every row bad: an error, not an empty dataset', async () => {
  const f = t.write('all-bad.jsonl', jsonl([{ instruction: 'a', input: '' }, { instruction: 'b', input: '', output: 7 }]));
  await fails([f], DatasetError, ['all-bad.jsonl', 'none of its 2 rows can be used', 'line 1: field "output" is missing', 'line 2: field "output" is a number']);
});

test('21. CSV: an unterminated quote is an error with its line; a row with the wrong field count is dropped', async () => {
  await fails([t.write('open-quote.csv', 'instruction,input,output\nSay hi,,Hi!\n"never closed,,x\n')], DatasetError,
    ['open-quote.csv', 'line 3', 'quoted field is never closed']);
  const f = t.write('fields.csv', 'instruction,input,output\nSay hi,,Hi!\nonly,two\nCount to two,,"1, 2"\n');
  await droppedRows(f, 2, [[3, 'has 2 fields but the header names 3 columns']]);
  await fails([t.write('dup-header.csv', 'query,query\na,b\n')], DatasetError, ['dup-header.csv', 'names column "query" twice']);
});

test('22. malformed history and messages given as a non-JSON string', async () => {
  const f = t.write('history.jsonl', jsonl([
    { query: 'q', response: 'r', history: [['only one']] },
    { query: 'q', response: 'r', history: "[('a', 'b')]" },
    { query: 'q', response: 'r', history: [['a', 'b']] },
  ]));
  await droppedRows(f, 1, [[1, 'history[0] must be a pair of strings'], [2, 'field "history" is a string that is not valid JSON']]);
});

test('23. a folder with no data files, and strict mode stops at the first bad row', async () => {
  const dir = path.join(t.dir, 'empty-folder');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'README.md'), '# nothing');
  await fails([dir], DatasetError, ['empty-folder', 'is a folder with no .jsonl, .ndjson, .json, .csv files']);
  const f = t.write('strict.jsonl', jsonl([GOOD, { instruction: 'x', input: '' }]));
  await fails([f], DatasetError, ['strict.jsonl: line 2: field "output" is missing', 'strict mode'], { strict: true });
});

test('24. placeholders left in rows warn with the count and the first row; nothing is silently dropped', async () => {
  const { value: [d], warnings } = await captureLogs(() => loadDataset(['tsft/self-cognition#5']));
  assert.equal(d.length, 5);
  const w = warnings.find((l) => l.includes('still contain'));
  assert.ok(w);
  assert.match(w, /tsft\/self-cognition: \d+ of \d+ rows still contain \{\{NAME\}\} and \{\{AUTHOR\}\} \(first: data\/self-cognition\.jsonl:1\); no modelName was given, no modelAuthor was given/);
});

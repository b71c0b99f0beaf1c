// Reading dataset files into raw records, each with the line it starts on: `.jsonl` (one JSON object a
// line; also `.json` files that turn out to be JSON Lines, as Hugging Face `datasets` reads them), `.json`
// (an array of rows, an object of rows, or columns of equal length), `.csv` (RFC 4180 with a header), and
// folders of these. UTF-8 with or without BOM, LF or CRLF. A line that cannot be parsed is a per-row
// problem (reported with its line); a file that cannot be read or parsed at all is a DatasetError.

import * as fs from 'fs';
import * as path from 'path';
import { DatasetError } from '../errors';
import { parseCsv } from './csv';

export const DATA_EXTENSIONS = ['.jsonl', '.ndjson', '.json', '.csv'] as const;

/** One row as read from a file, before format conversion. */
export interface RawRecord {
  value: unknown;
  /** 1-based line where the row starts */
  line: number;
}

/** A row that could not be read, with the reason. */
export interface RowIssue {
  line: number;
  reason: string;
}

export interface FileRecords {
  file: string;
  records: RawRecord[];
  issues: RowIssue[];
}

/** Hugging Face metadata files that sit next to data files in dataset repos (not rows). */
const METADATA = new Set(['dataset_info.json', 'dataset_infos.json', 'dataset_dict.json', 'state.json', 'config.json']);

function isDataFile(name: string): boolean {
  const lower = name.toLowerCase();
  return !name.startsWith('.') && !METADATA.has(lower) && DATA_EXTENSIONS.some((e) => lower.endsWith(e));
}

/**
 * The data files of a folder (recursive, sorted, hidden folders skipped). When some file names mark a
 * `train` split (`train.jsonl`, `data/train-00000.json`), only those, as `datasets` picks the train split.
 * @example dataFiles('data/my-set') // ['data/my-set/a.jsonl', 'data/my-set/b.csv']
 */
export function dataFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch (e) {
      throw new DatasetError(`cannot read the folder ${d} (${(e as Error).message}); check the path and its permissions.`);
    }
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (isDataFile(e.name)) out.push(p);
    }
  };
  walk(dir);
  out.sort();
  const train = out.filter((f) => /(^|[/\\_.-])train([/\\_.-]|$)/i.test(path.relative(dir, f)));
  return train.length > 0 ? train : out;
}

function readText(file: string): string {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'EACCES' ? 'permission denied' : err.code === 'ENOENT' ? 'no such file' : err.message;
    throw new DatasetError(`cannot read ${file} (${why}); check the path and that the file is readable.`);
  }
  if ((buf[0] === 0xff && buf[1] === 0xfe) || (buf[0] === 0xfe && buf[1] === 0xff)) {
    throw new DatasetError(`${file} is UTF-16 text; tsft reads UTF-8. Convert it (e.g. \`iconv -f UTF-16 -t UTF-8\`).`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
  } catch {
    const bad = firstInvalidUtf8(buf);
    throw new DatasetError(`${file} is not UTF-8 text (invalid byte at line ${bad.line}, byte offset ${bad.offset}); ` +
      'tsft reads UTF-8 .jsonl/.json/.csv files. If it is GBK or another encoding, convert it (e.g. `iconv -f GBK -t UTF-8`).');
  }
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

function firstInvalidUtf8(buf: Buffer): { offset: number; line: number } {
  let line = 1;
  for (let i = 0; i < buf.length;) {
    const b = buf[i];
    const n = b < 0x80 ? 1 : (b & 0xe0) === 0xc0 ? 2 : (b & 0xf0) === 0xe0 ? 3 : (b & 0xf8) === 0xf0 ? 4 : 0;
    let ok = n > 0 && i + n <= buf.length;
    for (let k = 1; ok && k < n; k++) ok = (buf[i + k] & 0xc0) === 0x80;
    if (!ok) return { offset: i, line };
    if (b === 0x0a) line++;
    i += n;
  }
  return { offset: buf.length, line };
}

function lineAt(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) { line++; start = i + 1; }
  }
  return { line, column: offset - start + 1 };
}

/**
 * Offset of the first syntax error in `s` (call it after JSON.parse failed; Node's messages do not always
 * carry a position): a small recursive-descent check of the JSON grammar.
 */
function jsonErrorOffset(s: string): number {
  let i = 0;
  const literal = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;
  const fail = (): never => { throw new RangeError(String(i)); };
  const ws = () => { while (i < s.length && (s[i] === ' ' || s[i] === '\t' || s[i] === '\n' || s[i] === '\r')) i++; };
  const str = () => {
    for (i++; i < s.length; i++) {
      if (s[i] === '"') { i++; return; }
      if (s[i] === '\\') i++;
      else if (s.charCodeAt(i) < 0x20) fail();
    }
    fail();
  };
  const value = (): void => {
    ws();
    const open = s[i];
    if (open === '{' || open === '[') {
      const close = open === '{' ? '}' : ']';
      i++;
      ws();
      if (s[i] === close) { i++; return; }
      for (;;) {
        if (open === '{') {
          ws();
          if (s[i] !== '"') fail();
          str();
          ws();
          if (s[i] !== ':') fail();
          i++;
        }
        value();
        ws();
        if (s[i] === ',') { i++; continue; }
        if (s[i] === close) { i++; return; }
        fail();
      }
    }
    if (open === '"') return str();
    literal.lastIndex = i;
    if (!literal.test(s)) fail();
    i = literal.lastIndex;
  };
  try {
    value();
    ws();
    if (i < s.length) fail();
    return -1;
  } catch (e) {
    if (e instanceof RangeError && /^\d+$/.test(e.message)) return Number(e.message);
    return -1;
  }
}

/** Where JSON.parse failed, as "line L, column C". */
function jsonErrorWhere(text: string): string {
  const at = jsonErrorOffset(text);
  if (at < 0) return '';
  const { line, column } = lineAt(text, at);
  return `line ${line}, column ${column}`;
}

function jsonMessage(e: Error): string {
  return e.message.replace(/ in JSON at position \d+.*$/s, '').replace(/^JSON\.parse: /, '');
}

function readJsonLines(text: string): { records: RawRecord[]; issues: RowIssue[] } {
  const records: RawRecord[] = [];
  const issues: RowIssue[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, k) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    try {
      records.push({ value: JSON.parse(line), line: k + 1 });
    } catch (e) {
      const at = jsonErrorOffset(line);
      issues.push({ line: k + 1, reason: `not valid JSON${at >= 0 ? ` at column ${at + 1}` : ''} (${jsonMessage(e as Error)})` });
    }
  });
  return { records, issues };
}

/**
 * Offsets of the direct children of the top-level JSON array or object in `text` (values, for an
 * object), found by a string-aware scan. `text` must be valid JSON.
 */
function topLevelValueOffsets(text: string): number[] {
  const out: number[] = [];
  let depth = 0;
  let arrayTop = false;
  let expectValue = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === ' ' || c === '\n' || c === '\r' || c === '\t') continue;
    if (depth === 1 && expectValue && c !== ']' && c !== '}') {
      out.push(i);
      expectValue = false;
    }
    if (c === '"') {
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
    } else if (c === '[' || c === '{') {
      depth++;
      if (depth === 1) {
        arrayTop = c === '[';
        expectValue = arrayTop;
      }
    } else if (c === ']' || c === '}') {
      depth--;
    } else if (depth === 1 && (c === ',' || c === ':')) {
      expectValue = c === ':' || arrayTop;
    }
  }
  return out;
}

function lineNumbers(text: string, offsets: number[]): number[] {
  const lines: number[] = [];
  let line = 1;
  let k = 0;
  for (let i = 0; i < text.length && k < offsets.length; i++) {
    while (k < offsets.length && offsets[k] === i) { lines.push(line); k++; }
    if (text.charCodeAt(i) === 10) line++;
  }
  while (lines.length < offsets.length) lines.push(line);
  return lines;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function readJson(file: string, text: string): { records: RawRecord[]; issues: RowIssue[] } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    // Hugging Face `datasets` reads `.json` files that hold JSON Lines too
    const lines = text.split('\n').filter((l) => l.trim() !== '');
    if (lines.length > 1 && lines.every((l) => l.trimStart().startsWith('{'))) return readJsonLines(text);
    const where = jsonErrorWhere(text);
    throw new DatasetError(`${file}: not valid JSON${where ? ` at ${where}` : ''} (${jsonMessage(e as Error)}). A .json file must hold ` +
      'one JSON array of rows (or an object of rows); for one object per line, name the file .jsonl.');
  }
  const lines = () => lineNumbers(text, topLevelValueOffsets(text));
  if (Array.isArray(value)) {
    const at = lines();
    return { records: value.map((v, k) => ({ value: v, line: at[k] ?? 1 })), issues: [] };
  }
  if (isPlainObject(value)) {
    const vals = Object.values(value);
    const at = lines();
    if (vals.length > 0 && vals.every(isPlainObject)) {
      // an object of rows keyed by id
      return { records: vals.map((v, k) => ({ value: v, line: at[k] ?? 1 })), issues: [] };
    }
    if (vals.length === 1 && Array.isArray(vals[0]) && (vals[0] as unknown[]).every(isPlainObject)) {
      // {"data": [rows]} / {"train": [rows]}
      const arr = vals[0] as unknown[];
      return { records: arr.map((v) => ({ value: v, line: at[0] ?? 1 })), issues: [] };
    }
    if (vals.length > 0 && vals.every(Array.isArray) && new Set(vals.map((v) => (v as unknown[]).length)).size === 1) {
      // columns: {"instruction": [...], "output": [...]}
      const keys = Object.keys(value);
      const n = (vals[0] as unknown[]).length;
      const records: RawRecord[] = [];
      for (let i = 0; i < n; i++) {
        const row: Record<string, unknown> = {};
        keys.forEach((key, k) => { row[key] = (vals[k] as unknown[])[i]; });
        records.push({ value: row, line: 1 });
      }
      return { records, issues: [] };
    }
    return { records: [{ value, line: 1 }], issues: [] };
  }
  throw new DatasetError(`${file} holds ${value === null ? 'null' : `a JSON ${typeof value}`}; a .json dataset must hold an array ` +
    'of rows ([{"instruction": …, "output": …}, …]) or an object of rows.');
}

function readCsv(file: string, text: string): { records: RawRecord[]; issues: RowIssue[] } {
  const { header, records } = parseCsv(text, file);
  const out: RawRecord[] = [];
  const issues: RowIssue[] = [];
  for (const r of records) {
    if (r.fields.length !== header.length) {
      issues.push({ line: r.line, reason: `has ${r.fields.length} fields but the header names ${header.length} columns (${header.join(', ')})` });
      continue;
    }
    const row: Record<string, string> = {};
    header.forEach((h, k) => { row[h] = r.fields[k]; });
    out.push({ value: row, line: r.line });
  }
  return { records: out, issues };
}

/**
 * Read one data file into raw records (and per-row issues). Throws DatasetError for a file that is
 * unreadable, not UTF-8, empty, of an unknown extension, or not parseable as a whole.
 * @example readRecords('data/self-cognition.jsonl').records[0] // { value: { query: '你是谁？', … }, line: 1 }
 */
export function readRecords(file: string): FileRecords {
  const ext = path.extname(file).toLowerCase();
  if (!(DATA_EXTENSIONS as readonly string[]).includes(ext)) {
    throw new DatasetError(`${file}: tsft reads ${DATA_EXTENSIONS.join(', ')} files, not "${ext || 'no extension'}". ` +
      'Convert it to JSON Lines (one {"instruction", "input", "output"} or {"messages": […]} object per line).');
  }
  const text = readText(file);
  if (text.trim() === '') {
    throw new DatasetError(`${file} is empty; a dataset file needs at least one row (e.g. {"query": "你是谁？", "response": "我是…"}).`);
  }
  const got = ext === '.csv' ? readCsv(file, text) : ext === '.json' ? readJson(file, text) : readJsonLines(text);
  return { file, ...got };
}

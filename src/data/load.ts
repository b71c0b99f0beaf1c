// loadDataset: ms-swift's `load_dataset` with its exact sampling, split and order (see
// ../shared/docs/swift-semantics.md "Datasets"). Per dataset, in argument order:
//   1. read the rows (local file/folder, bundled id, or a hub download), detect the format, convert each
//      row to `{ messages }` (bad rows dropped with a per-file warning naming lines and reasons);
//   2. fill `{{NAME}}`/`{{AUTHOR}}` by each row's language, apply the subset (self-cognition qwen3/empty_think);
//   3. post-process: N = `#N` or the row count; with 0 < ratio < 1, val_n = max(floor(min(len, N) * ratio), 1)
//      rows are held out — the last val_n rows without shuffle, a seeded random val_n with — and N - val_n
//      training rows are sampled from the rest: each row N' // m times in order, then the first N' % m
//      (seeded random ones when shuffling);
// then train parts are concatenated in argument order, val parts likewise, and each is shuffled (seeded)
// when `shuffle` is on. Seeded draws use tsft's Random, not numpy's: with `shuffle: true` the order is
// deterministic per seed but not numpy's order; without shuffle it is ms-swift's order exactly.

import * as fs from 'fs';
import * as path from 'path';
import { ConfigError, DatasetError, HubError } from '../errors';
import { snapshotDownload, type SnapshotDownloadOptions } from '../model/hub';
import { getLogger } from '../utils/logger';
import { Random } from '../utils/seed';
import { Dataset, type ChatRow, type Message } from './dataset';
import { convertRow, detectFormat, FORMAT_HELP, RowProblem } from './formats';
import { dataFiles, readRecords, DATA_EXTENSIONS, type RowIssue } from './read';
import { bundledPath, DATASET_REGISTRY, findRegistered, offlineAdvice, type DatasetMeta, type SubsetSpec } from './registry';

/** `[zh, en]`, or one value for both languages. */
export type NamePair = string | readonly [string, string] | readonly string[];

export interface LoadDatasetOptions {
  /** fraction of each dataset held out for validation, in [0, 1); default 0 (no validation rows) */
  splitDatasetRatio?: number;
  /** seed of the sampling and shuffles; default 42 (ms-swift's) */
  seed?: number;
  /** accepted for ms-swift parity; reading and converting rows runs in this thread (it is I/O-bound) */
  numProc?: number;
  /** shuffle the held-out split, the sampling and the concatenated sets; default false (ms-swift's Python API; its CLI passes true) */
  shuffle?: boolean;
  /** replaces `{{NAME}}`: `[zh, en]` by each row's `tag` (or one name for both) */
  modelName?: NamePair;
  /** replaces `{{AUTHOR}}`, as modelName */
  modelAuthor?: NamePair;
  /** Hugging Face instead of ModelScope for hub ids (default: env USE_HF); `hf::`/`ms::` per id wins */
  useHf?: boolean;
  /** throw at the first bad row instead of dropping it with a warning (ms-swift's strict) */
  strict?: boolean;
  /** hub download options (endpoint, cacheDir, offline, quiet, retries, …) */
  hub?: Omit<SnapshotDownloadOptions, 'useHf' | 'repoType' | 'allowPatterns'>;
}

/** A parsed `[hf::|ms::]id-or-path[:subset[/subset]][#N]`. */
export interface DatasetSpec {
  raw: string;
  /** the path, hub id or registered name */
  source: string;
  /** from the `hf::`/`ms::` prefix; undefined when absent */
  useHf?: boolean;
  subsets: string[];
  /** `#N`; undefined when absent */
  sample?: number;
}

const logger = getLogger();
const PLACEHOLDER = /\{\{(NAME|AUTHOR)\}\}/;
const CJK = /[\u3400-\u9fff\uf900-\ufaff]/;
const HUB_ID = /^[\w.-]+\/[\w.-]+$/;

const fmt = (n: number) => n.toLocaleString('en-US');
const rowsOf = (n: number) => `${fmt(n)} row${n === 1 ? '' : 's'}`;

function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

// ---------------------------------------------------------------------------------------------------
// syntax
// ---------------------------------------------------------------------------------------------------

function parseSample(raw: string, tail: string): number {
  const t = tail.trim();
  if (!/^\d+$/.test(t) || Number(t) === 0) {
    const why = t === '' ? 'nothing follows "#"' : /^-\d+$/.test(t) ? `#${t} is negative` : Number(t) === 0 && /^\d+$/.test(t)
      ? `#${t} asks for no rows` : `#${t} is not a whole number`;
    throw new DatasetError(`"${raw}": ${why}. Write #N with N ≥ 1 for N rows (first N, or the whole set repeated when N is ` +
      'larger), or leave #N out to use every row.');
  }
  const n = Number(t);
  if (!Number.isSafeInteger(n)) throw new DatasetError(`"${raw}": #${t} is too large.`);
  return n;
}

/**
 * Parse ms-swift's dataset syntax `[hf::|ms::]<id or path>[:subset1/subset2][#N]`. A string that is an
 * existing path is a path, whatever characters it holds.
 * @example parseDatasetSpec('hf::swift/self-cognition:qwen3#500') // { source: 'swift/self-cognition', useHf: true, subsets: ['qwen3'], sample: 500, … }
 */
export function parseDatasetSpec(raw: string): DatasetSpec {
  if (typeof raw !== 'string' || raw.trim() === '') {
    throw new DatasetError(`a dataset must be a non-empty string (a hub id, registered name or path), got ${JSON.stringify(raw)}.`);
  }
  let rest = raw.trim();
  const spec: DatasetSpec = { raw, source: rest, subsets: [] };
  if (fs.existsSync(rest)) return spec;
  const prefix = /^([A-Za-z]+)::(.*)$/s.exec(rest);
  if (prefix) {
    const hub = prefix[1].toLowerCase();
    if (hub !== 'hf' && hub !== 'ms') {
      throw new DatasetError(`"${raw}": unknown hub prefix "${prefix[1]}::"; use "hf::" (Hugging Face) or "ms::" (ModelScope).`);
    }
    spec.useHf = hub === 'hf';
    rest = prefix[2].trim();
    spec.source = rest;
    if (fs.existsSync(rest)) return spec;
  }
  const hash = rest.lastIndexOf('#');
  if (hash >= 0) {
    spec.sample = parseSample(raw, rest.slice(hash + 1));
    rest = rest.slice(0, hash).trim();
  }
  spec.source = rest;
  const colon = rest.indexOf(':');
  if (colon >= 0 && !fs.existsSync(rest) && !/^[A-Za-z]:[\\/]/.test(rest)) {
    spec.source = rest.slice(0, colon).trim();
    spec.subsets = rest.slice(colon + 1).split('/').map((s) => s.trim());
    if (spec.subsets.some((s) => s === '')) {
      throw new DatasetError(`"${raw}": empty subset name after ":"; write id:subset or id:subset1/subset2.`);
    }
  }
  if (spec.source === '') throw new DatasetError(`"${raw}" names no dataset before the ":"/"#" part.`);
  return spec;
}

// ---------------------------------------------------------------------------------------------------
// names
// ---------------------------------------------------------------------------------------------------

type Pair = [string | null, string | null];

/** ms-swift's normalisation: one value (or [zh] or [zh, null]) serves both languages. */
function namePair(v: NamePair | undefined | null, key: string): Pair | null {
  if (v === undefined || v === null) return null;
  const list = typeof v === 'string' ? [v] : Array.isArray(v) ? [...v] : null;
  if (!list || list.length === 0 || list.length > 2 || list.some((s) => s !== null && typeof s !== 'string')) {
    throw new ConfigError(`${key} must be a string or [zh, en] strings (e.g. ['精衡', 'Jingheng']), got ${JSON.stringify(v)}.`);
  }
  const [zh, en] = list as (string | null)[];
  return zh !== null && (list.length === 1 || en === null || en === undefined) ? [zh, zh] : [zh ?? null, en ?? null];
}

interface Names {
  name: Pair | null;
  author: Pair | null;
}

/** 0 (zh) or 1 (other) for a row: its `tag`, else whether its text has CJK characters. */
function languageOf(tag: string | undefined, messages: readonly Message[]): 0 | 1 {
  if (tag !== undefined) return tag === 'zh' ? 0 : 1;
  return messages.some((m) => CJK.test(m.content)) ? 0 : 1;
}

function fillNames(messages: Message[], lang: 0 | 1, names: Names): void {
  const name = names.name?.[lang];
  const author = names.author?.[lang];
  for (const m of messages) {
    if (!m.content.includes('{{')) continue;
    if (name != null) m.content = m.content.split('{{NAME}}').join(name);
    if (author != null) m.content = m.content.split('{{AUTHOR}}').join(author);
  }
}

function applySubset(messages: Message[], subset: SubsetSpec): void {
  const lastOf = (role: string) => { for (let i = messages.length - 1; i >= 0; i--) if (messages[i].role === role) return messages[i]; return undefined; };
  if (subset.querySuffix) { const q = lastOf('user'); if (q) q.content += subset.querySuffix; }
  if (subset.responsePrefix) { const r = lastOf('assistant'); if (r) r.content = subset.responsePrefix + r.content; }
}

// ---------------------------------------------------------------------------------------------------
// reading one dataset
// ---------------------------------------------------------------------------------------------------

interface Loaded {
  name: string;
  rows: ChatRow[];
  origins: string[];
}

function reportIssues(file: string, total: number, issues: RowIssue[]): void {
  if (issues.length === 0) return;
  const shown = issues.slice(0, 5).map((p) => `line ${p.line}: ${p.reason}`).join('; ');
  const more = issues.length > 5 ? `; and ${issues.length - 5} more` : '';
  logger.warning(`${displayPath(file)}: dropped ${fmt(issues.length)} of ${fmt(total)} rows — ${shown}${more}. ` +
    'Fix or remove these rows; the others are used.');
}

/** Read, convert and name-fill the rows of one file. */
function loadFile(file: string, meta: DatasetMeta | undefined, subset: SubsetSpec, names: Names, strict: boolean): Loaded {
  const { records, issues } = readRecords(file);
  const shown = displayPath(file);
  const columns = new Set<string>();
  for (const r of records) {
    if (r.value !== null && typeof r.value === 'object' && !Array.isArray(r.value)) for (const k of Object.keys(r.value)) columns.add(k);
  }
  const format = detectFormat(columns);
  if (format === null && records.length > 0) {
    const seen = columns.size ? [...columns].slice(0, 12).map((c) => `"${c}"`).join(', ') : 'no object rows';
    throw new DatasetError(`${shown}: unknown row format (columns: ${seen}). tsft reads ${FORMAT_HELP}. ` +
      'Rename the columns to one of these.');
  }
  const rows: ChatRow[] = [];
  const origins: string[] = [];
  const problems = issues.slice();
  for (const r of records) {
    try {
      const value = meta?.fixRow && r.value !== null && typeof r.value === 'object' && !Array.isArray(r.value)
        ? meta.fixRow(r.value as Record<string, unknown>) : r.value;
      const { messages, tag } = convertRow(value, format!);
      if (names.name || names.author) fillNames(messages, languageOf(tag, messages), names);
      applySubset(messages, subset);
      rows.push({ messages });
      origins.push(`${shown}:${r.line}`);
    } catch (e) {
      if (!(e instanceof RowProblem)) throw e;
      problems.push({ line: r.line, reason: e.message });
    }
  }
  problems.sort((a, b) => a.line - b.line);
  if (strict && problems.length > 0) {
    throw new DatasetError(`${shown}: line ${problems[0].line}: ${problems[0].reason} (strict mode: fix the row, or load without strict to drop it).`);
  }
  const total = records.length + issues.length;
  if (rows.length === 0) {
    const first = problems.slice(0, 3).map((p) => `line ${p.line}: ${p.reason}`).join('; ');
    throw new DatasetError(`${shown}: none of its ${fmt(total)} rows can be used (${first}). Fix the file or check its format: ${FORMAT_HELP}.`);
  }
  reportIssues(file, total, problems);
  return { name: shown, rows, origins };
}

function selectSubsets(spec: DatasetSpec, meta: DatasetMeta | undefined, label: string): SubsetSpec[] {
  const known = meta?.subsets;
  if (spec.subsets.length === 0) return [known?.default ?? {}];
  if (!known) {
    throw new DatasetError(`"${spec.raw}": ${label} has no subsets (only registered datasets do: ` +
      `${DATASET_REGISTRY.filter((m) => m.subsets).map((m) => m.msId ?? m.name).join(', ')}); drop ":${spec.subsets.join('/')}".`);
  }
  const names = spec.subsets.length === 1 && spec.subsets[0] === 'all' && !('all' in known) ? Object.keys(known) : spec.subsets;
  return names.map((s) => {
    if (!Object.prototype.hasOwnProperty.call(known, s)) {
      throw new DatasetError(`"${spec.raw}": ${label} has no subset "${s}"; its subsets are ${Object.keys(known).join(', ')} (or "all").`);
    }
    return known[s];
  });
}

/** Download (or find in the cache) a hub dataset and return its data files. */
async function hubFiles(id: string, useHf: boolean, meta: DatasetMeta | undefined, opts: LoadDatasetOptions): Promise<string[]> {
  const hub = useHf ? 'Hugging Face' : 'ModelScope';
  logger.info(`Downloading the dataset from ${hub}, dataset_id: ${id}`);
  const patterns = meta?.files ?? DATA_EXTENSIONS.map((e) => `*${e}`);
  let dir: string;
  try {
    dir = await snapshotDownload(id, { ...opts.hub, useHf, repoType: 'dataset', allowPatterns: patterns });
  } catch (e) {
    if (!(e instanceof HubError)) throw e;
    const noFiles = /has no file matching/.test(e.message)
      ? ` tsft reads ${DATA_EXTENSIONS.join(', ')} data files${meta?.files ? ` (here ${meta.files.join(', ')})` : ''}; a repo that ` +
        `holds only parquet files cannot be read yet${useHf ? ' (drop useHf/"hf::" to try ModelScope)' : ''}.`
      : '';
    throw new HubError(`cannot load the dataset ${id} from ${hub}: ${e.message}${noFiles} ${offlineAdvice(meta)}`);
  }
  const files = dataFiles(dir);
  if (files.length === 0) throw new DatasetError(`the ${hub} dataset ${id} (${dir}) holds no ${DATA_EXTENSIONS.join('/')} files.`);
  return files;
}

async function loadOne(spec: DatasetSpec, names: Names, opts: LoadDatasetOptions): Promise<Loaded> {
  const useHf = spec.useHf ?? opts.useHf ?? ['1', 'true', 'yes', 'on'].includes((process.env.USE_HF ?? '').toLowerCase());
  const local = fs.existsSync(spec.source);
  const meta = local ? undefined : findRegistered(spec.source);
  const subsets = selectSubsets(spec, meta, meta?.name ?? spec.source);   // before any download
  let files: string[];
  let name: string;
  if (meta?.bundled) {
    files = [bundledPath(meta)];
    name = meta.name;
  } else if (meta) {
    const id = useHf ? meta.hfId : meta.msId;
    if (!id) throw new DatasetError(`"${spec.raw}": ${meta.name} has no ${useHf ? 'Hugging Face' : 'ModelScope'} id; ${useHf ? 'drop hf::/useHf' : 'use hf::'}.`);
    files = await hubFiles(id, useHf, meta, opts);
    name = meta.name;
  } else if (local) {
    const stat = fs.statSync(spec.source);
    files = stat.isDirectory() ? dataFiles(spec.source) : [spec.source];
    if (files.length === 0) {
      throw new DatasetError(`${spec.source} is a folder with no ${DATA_EXTENSIONS.join(', ')} files; put the rows in such files or pass the file itself.`);
    }
    name = path.basename(spec.source.replace(/[\\/]+$/, '')) || spec.source;
  } else if (HUB_ID.test(spec.source) && !/^\.{1,2}\//.test(spec.source) && !/\.(jsonl|ndjson|json|csv|tsv|txt|parquet)$/i.test(spec.source)) {
    files = await hubFiles(spec.source, useHf, undefined, opts);
    name = spec.source;
  } else {
    throw new DatasetError(`"${spec.raw}": ${spec.source} is no file or folder here, and not a hub id (org/name) or registered name. ` +
      `Check the path (relative to ${process.cwd()}). ${offlineAdvice()}`);
  }
  const rows: ChatRow[] = [];
  const origins: string[] = [];
  for (const subset of subsets) {
    for (const file of files) {
      const got = loadFile(file, meta, subset, names, opts.strict ?? false);
      for (let i = 0; i < got.rows.length; i++) rows.push(got.rows[i]);
      for (let i = 0; i < got.origins.length; i++) origins.push(got.origins[i]);
    }
  }
  return { name, rows, origins };
}

// ---------------------------------------------------------------------------------------------------
// sampling and split (ms-swift DatasetLoader.post_process + sample_dataset)
// ---------------------------------------------------------------------------------------------------

/** ms-swift get_seed: a fresh seed drawn from the dataset RNG. */
function drawSeed(rng: Random): number {
  return rng.nextU32();
}

/**
 * `n` indices into a pool of `m` rows: every row `n // m` times in order, then the first `n % m`
 * (a seeded random `n % m` when shuffling).
 * @example sampleIndices(3, 7, false) // [0, 1, 2, 0, 1, 2, 0]
 */
export function sampleIndices(m: number, n: number, shuffle: boolean, rng?: Random): number[] {
  const out: number[] = [];
  const repeat = Math.floor(n / m);
  for (let r = 0; r < repeat; r++) for (let i = 0; i < m; i++) out.push(i);
  const remain = n % m;
  if (remain > 0) {
    const extra = shuffle ? (rng ?? new Random(0)).permutation(m).slice(0, remain) : Array.from({ length: remain }, (_, i) => i);
    out.push(...extra);
  }
  return out;
}

export interface SplitPlan {
  /** indices into the dataset, in order */
  train: number[];
  val: number[];
  /** the pool training rows were sampled from */
  pool: number;
}

/**
 * ms-swift's post_process for one dataset of `len` rows: `#N` (`sample`), the held-out split and the
 * sampling, as indices.
 * @example planSplit(108, 500, 0.01, false).train.length // 499 (rows 0..106 four times, then 0..70); val [107]
 */
export function planSplit(len: number, sample: number | undefined, ratio: number, shuffle: boolean, rng: Random, label = 'the dataset'): SplitPlan {
  const n = sample ?? len;
  if (ratio === 0) {
    const idx = sampleIndices(len, n, shuffle, rng);
    return { train: idx, val: [], pool: len };
  }
  const trainLen = Math.min(len, n);
  const valN = Math.max(Math.floor(trainLen * ratio), 1);
  const trainN = n - valN;
  if (trainN <= 0) {
    throw new DatasetError(`${label}: #${n} with splitDatasetRatio ${ratio} holds out ${valN} validation row(s) and leaves no training ` +
      'rows; ask for more rows (#N) or lower the ratio.');
  }
  if (valN >= len) {
    throw new DatasetError(`${label} has ${len} row(s): holding out ${valN} for validation leaves none to train on; add rows or set splitDatasetRatio 0.`);
  }
  let order: number[];
  if (shuffle) order = new Random(drawSeed(rng)).permutation(len);
  else order = Array.from({ length: len }, (_, i) => i);
  // datasets' train_test_split: shuffled → test = the first val_n of the permutation; unshuffled → the last val_n rows
  const val = shuffle ? order.slice(0, valN) : order.slice(len - valN);
  const pool = shuffle ? order.slice(valN) : order.slice(0, len - valN);
  const train = sampleIndices(pool.length, trainN, shuffle, rng).map((i) => pool[i]);
  return { train, val, pool: pool.length };
}

function describePlan(name: string, len: number, sample: number | undefined, plan: SplitPlan, shuffle: boolean): string {
  const m = plan.pool;
  const n = plan.train.length;
  const head = `${name}: ${rowsOf(len)}`;
  const tail = `${fmt(n)} train / ${fmt(plan.val.length)} val`;
  if (sample === undefined) return `${head} → ${tail}`;
  let how: string;
  if (n < m) how = shuffle ? `random ${fmt(n)} rows` : `first ${fmt(n)} rows`;
  else if (n === m) how = 'every row once';
  else {
    const rem = n % m;
    how = `rows repeated ${Math.floor(n / m)}×${rem ? ` + ${fmt(rem)}${shuffle ? ' random' : ''}` : ''}`;
  }
  return `${head}, #${sample} → ${how}; ${tail}`;
}

// ---------------------------------------------------------------------------------------------------
// loadDataset
// ---------------------------------------------------------------------------------------------------

/**
 * ms-swift `load_dataset`: load, convert, sample and split datasets; returns `[train, val]` (val empty
 * when splitDatasetRatio is 0). Each entry is `[hf::|ms::]<hub id | registered name | path>[:subset][#N]`.
 * Offline, use the bundled `tsft/self-cognition`, `tsft/general-zh`, `tsft/general-en`, or local files.
 * @example
 *   const [train, val] = await loadDataset(
 *     ['AI-ModelScope/alpaca-gpt4-data-zh#500', 'AI-ModelScope/alpaca-gpt4-data-en#500', 'swift/self-cognition#500'],
 *     { splitDatasetRatio: 0.01, seed: 42, modelName: ['精衡', 'Jingheng'], modelAuthor: ['叶博韬', 'YE SEVERIN'] });
 *   logger.info(`train_dataset: ${train}`);   // Dataset({ features: ['messages'], num_rows: 1489 })
 */
export async function loadDataset(datasets: string | readonly string[], opts: LoadDatasetOptions = {}): Promise<[Dataset<ChatRow>, Dataset<ChatRow>]> {
  const list = typeof datasets === 'string' ? [datasets] : datasets;
  if (!Array.isArray(list) || list.length === 0) {
    throw new DatasetError('loadDataset needs at least one dataset (a hub id, registered name such as tsft/self-cognition, or a path).');
  }
  const ratio = opts.splitDatasetRatio ?? 0;
  if (typeof ratio !== 'number' || !Number.isFinite(ratio) || ratio < 0 || ratio >= 1) {
    throw new ConfigError(`splitDatasetRatio must be a number in [0, 1) (e.g. 0.01 holds out 1% for validation), got ${JSON.stringify(ratio)}.`);
  }
  const seed = opts.seed ?? 42;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ConfigError(`seed must be a non-negative integer, got ${JSON.stringify(seed)}.`);
  if (opts.numProc !== undefined && (!Number.isInteger(opts.numProc) || opts.numProc < 1)) {
    throw new ConfigError(`numProc must be a positive integer, got ${JSON.stringify(opts.numProc)}.`);
  }
  const shuffle = opts.shuffle ?? false;
  const names: Names = { name: namePair(opts.modelName, 'modelName'), author: namePair(opts.modelAuthor, 'modelAuthor') };
  if (names.name || names.author) {
    const show = (p: Pair | null) => (p ? `['${p[0]}', '${p[1]}']` : 'None');
    logger.info(`Self-cognition placeholders configured: {{NAME}} → ${show(names.name)}, {{AUTHOR}} → ${show(names.author)} ` +
      '(rows tagged zh take the first, others the second).');
  }
  const specs = list.map(parseDatasetSpec);   // all syntax errors before any download
  const rng = new Random(seed);
  const trainParts: { rows: ChatRow[]; origins: string[] }[] = [];
  const valParts: { rows: ChatRow[]; origins: string[] }[] = [];
  for (const spec of specs) {
    const loaded = await loadOne(spec, names, opts);
    warnPlaceholders(loaded, names);
    const plan = planSplit(loaded.rows.length, spec.sample, ratio, shuffle, rng, `"${spec.raw}"`);
    logger.info(describePlan(loaded.name, loaded.rows.length, spec.sample, plan, shuffle));
    if (plan.train.length > plan.pool) {
      const k = Math.floor(plan.train.length / plan.pool);
      const rem = plan.train.length % plan.pool;
      logger.warning(`${loaded.name}: #${spec.sample} asks for more rows than the ${fmt(plan.pool)} it has for training, so rows repeat ` +
        `(each ${k}×${rem ? `, ${fmt(rem)} of them once more` : ''}) — repetition, not new data; more epochs do the same.`);
    }
    const pick = (idx: number[]) => ({ rows: idx.map((i) => loaded.rows[i]), origins: idx.map((i) => loaded.origins[i]) });
    trainParts.push(pick(plan.train));
    valParts.push(pick(plan.val));
  }
  const join = (parts: typeof trainParts) => {
    let rows: ChatRow[] = [];
    let origins: string[] = [];
    for (const p of parts) { rows = rows.concat(p.rows); origins = origins.concat(p.origins); }
    if (shuffle && rows.length > 0) {
      const perm = new Random(drawSeed(rng)).permutation(rows.length);
      rows = perm.map((i) => rows[i]);
      origins = perm.map((i) => origins[i]);
    }
    // rows repeated by #N share their message objects: give every row its own copy
    return Dataset.fromRows(rows.map((r) => ({ messages: r.messages.map((m) => ({ ...m })) })), origins);
  };
  const train = join(trainParts);
  const val = join(valParts);
  logger.info(`loadDataset: ${fmt(train.length)} train / ${fmt(val.length)} val rows from ${specs.length} dataset${specs.length === 1 ? '' : 's'}`);
  return [train, val];
}

function warnPlaceholders(loaded: Loaded, names: Names): void {
  let count = 0;
  let first = -1;
  const left = new Set<string>();
  loaded.rows.forEach((r, i) => {
    let hit = false;
    for (const m of r.messages) {
      if (!PLACEHOLDER.test(m.content)) continue;
      hit = true;
      for (const k of m.content.match(/\{\{(NAME|AUTHOR)\}\}/g) ?? []) left.add(k);
    }
    if (hit) { count++; if (first < 0) first = i; }
  });
  if (count === 0) return;
  const which = [...left].sort().reverse().join(' and ');
  const why = [...left].sort().reverse().map((k) => {
    const key = k === '{{NAME}}' ? 'modelName' : 'modelAuthor';
    return (k === '{{NAME}}' ? names.name : names.author) ? `${key} has no value for some rows' language` : `no ${key} was given`;
  }).join(', ');
  logger.warning(`${loaded.name}: ${fmt(count)} of ${fmt(loaded.rows.length)} rows still contain ${which} (first: ${loaded.origins[first]}); ` +
    `${why}. Pass modelName and modelAuthor (e.g. modelName: ['精衡', 'Jingheng'], modelAuthor: ['叶博韬', 'YE SEVERIN']), ` +
    'or the model learns the literal placeholders.');
}


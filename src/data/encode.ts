// EncodePreprocessor: ms-swift's `EncodePreprocessor(template)(dataset, num_proc)` — every row through
// `template.encode` into `{ input_ids, labels, length }`. Rows over max_length are dropped with a logged
// count ('delete'; 'left'/'right' truncate instead); rows the template rejects are dropped with their
// origin and reason. With numProc > 1 the rows are split in chunks shared by this thread and numProc - 1
// worker threads; the output order is the input order whatever thread encoded a chunk.
//
// Workers start from an inline CommonJS bootstrap (`new Worker(code, { eval: true })`) that registers
// tsx's require hook and loads encode-worker.ts: the same code runs under tsx (ESM) and tslab (CommonJS).
// A worker rebuilds the template from its settings and the tokenizer's folder; when that is not possible
// (a tokenizer built in memory, a Template subclass) or a worker fails, encoding continues in this thread
// and the log says so.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createRequire } from 'module';
import { Worker } from 'worker_threads';
import * as cliProgressNs from 'cli-progress';
import { ConfigError, DatasetError } from '../errors';
import { getLogger } from '../utils/logger';
import { Dataset } from './dataset';
import { encodeChunk, unpackChunk, type ChunkResult, type FromWorker, type ToWorker, type WorkerTemplateSpec } from './encode-worker';
import { packageRoot } from './locate';
import { Template, type Encoded } from './template';

// cli-progress is CommonJS: under ESM its exports sit on `default`, under CommonJS on the namespace itself
const cliProgress = ((cliProgressNs as unknown as { default?: typeof cliProgressNs }).default ?? cliProgressNs);

const logger = getLogger();

/**
 * Workers start only when this thread alone would need longer than this for the rows left after the
 * first chunk: a worker needs 1–2 s to load the tokenizer before it encodes anything.
 */
export const WORKER_MIN_SECONDS = 3;
/** Chunks a worker holds at once: one to encode, one queued, so it never waits for this thread. */
const IN_FLIGHT = 2;
/** With workers running, this thread yields to the event loop every this many rows of its own chunk, so
 * finished worker chunks are collected (and new ones sent) promptly. */
const YIELD_ROWS = 32;

export interface EncodeOptions {
  /** threads that encode (this one + numProc - 1 workers); default 1. Capped at the CPU count. */
  numProc?: number;
  /** throw at the first row the template rejects instead of dropping it (over-long rows are still dropped) */
  strict?: boolean;
  /** no progress bar and no summary line */
  quiet?: boolean;
  /** start workers only when the work left after the first chunk is estimated above this (default WORKER_MIN_SECONDS; 0 = always) */
  workerMinSeconds?: number;
  /** this thread only hands out chunks and collects them (tests, benchmarks of the workers themselves) */
  workersOnly?: boolean;
}

/** The function EncodePreprocessor returns: encode a dataset; `.template` is the template it uses. */
export interface EncodeFn {
  (dataset: ArrayLike<object>, opts?: EncodeOptions): Promise<Dataset<Encoded>>;
  readonly template: Template;
}

export interface EncodePreprocessorConstructor {
  new (template: Template): EncodeFn;
  (template: Template): EncodeFn;
}

/**
 * ms-swift `EncodePreprocessor(template)`: returns a function that encodes a dataset of `{ messages }`
 * rows with `template` (usually in 'train' mode). Callable with or without `new`.
 * @example
 *   template.setMode('train');
 *   const encoded = await EncodePreprocessor(template)(trainDataset, { numProc: 4 });
 *   template.printInputs(encoded[0]);
 */
export const EncodePreprocessor = function EncodePreprocessor(template: Template): EncodeFn {
  if (!(template instanceof Template)) {
    throw new ConfigError('EncodePreprocessor needs a Template (from getTemplate(name, tokenizer, options)).');
  }
  const fn = ((dataset: ArrayLike<object>, opts: EncodeOptions = {}) => encodeDataset(template, dataset, opts)) as EncodeFn;
  Object.defineProperty(fn, 'template', { value: template, enumerable: true });
  return fn;
} as EncodePreprocessorConstructor;

const fmt = (n: number) => n.toLocaleString('en-US');

let thinkingWarned = false;

/** qwen3_thinking opens `<think>` at inference: training rows without think blocks deserve a (one-time) warning. */
function warnThinking(template: Template, dataset: ArrayLike<object>): void {
  if (thinkingWarned || !template.isTraining || !template.meta.thinkingPrefix) return;
  let without = 0;
  for (let i = 0; i < dataset.length; i++) {
    const messages = (dataset[i] as { messages?: unknown }).messages;
    if (!Array.isArray(messages)) continue;
    if (messages.some((m) => m?.role === 'assistant' && typeof m.content === 'string' && !m.content.includes('</think>'))) without++;
  }
  if (without === 0) return;
  thinkingWarned = true;
  logger.warning(`${fmt(without)} of ${fmt(dataset.length)} rows have no <think>…</think> block in their answers, but ` +
    `${template.name} opens one at inference (its prompt ends with ${JSON.stringify(template.meta.thinkingPrefix)}): trained on ` +
    'such rows the model may never close it. Use the self-cognition subsets that add an empty block — ' +
    "'swift/self-cognition:empty_think' or ':qwen3' (offline: 'tsft/self-cognition:empty_think') — give your own rows " +
    "'<think>…</think>' answers, or train the hybrid 'qwen3' template instead.");
}

/** How a worker can rebuild `template`, or why it cannot. */
function workerSpec(template: Template): WorkerTemplateSpec | string {
  if (Object.getPrototypeOf(template) !== Template.prototype) return 'the template is a Template subclass';
  const dir = template.tokenizer.source;
  if (!fs.existsSync(path.join(dir, 'tokenizer.json'))) return `the tokenizer was not loaded from a folder (source: ${dir})`;
  const text = 'tsft 编码 probe: <|im_start|>user\nhi<|im_end|>';
  return {
    name: template.name,
    mode: template.mode,
    options: {
      defaultSystem: template.defaultSystem,
      maxLength: template.maxLength,
      truncationStrategy: template.truncationStrategy,
      enableThinking: template.enableThinking,
      paddingSide: template.paddingSide,
    },
    tokenizerDir: dir,
    probe: { text, ids: template.tokenizer.encode(text) },
  };
}

/** The inline bootstrap: tsx's CommonJS hook (for the .ts sources), then the worker loop. */
function bootstrapCode(): string {
  const root = packageRoot();
  const ts = path.join(root, 'src', 'data', 'encode-worker.ts');
  const file = fs.existsSync(ts) ? ts : ts.replace(/\.ts$/, '.js');
  const hook = file.endsWith('.ts') ? createRequire(path.join(root, 'package.json')).resolve('tsx/cjs/api') : null;
  return [
    "const { parentPort } = require('worker_threads');",
    'try {',
    hook ? `  require(${JSON.stringify(hook)}).register();` : '',
    `  Promise.resolve(require(${JSON.stringify(file)}).runEncodeWorker())`,
    "    .catch((e) => parentPort.postMessage({ type: 'failed', message: String((e && e.stack) || e) }));",
    '} catch (e) {',
    "  parentPort.postMessage({ type: 'failed', message: String((e && e.stack) || e) });",
    '}',
  ].join('\n');
}

interface Progress {
  tick(done: number): void;
  stop(): void;
}

function makeProgress(total: number, threads: number, quiet: boolean): Progress {
  const start = Date.now();
  const rate = (done: number) => done / Math.max((Date.now() - start) / 1000, 1e-3);
  if (quiet) return { tick() {}, stop() {} };
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar({
      format: `Map (num_proc=${threads}) |{bar}| {percentage}% | {value}/{total} | {rate} rows/s | ETA {eta_formatted}`,
      stream: process.stderr,
      hideCursor: true,
      etaBuffer: 20,
      fps: 5,
    }, cliProgress.Presets.shades_classic);
    bar.start(total, 0, { rate: '-' });
    return {
      tick(done) { bar.update(done, { rate: fmt(Math.round(rate(done))) }); },
      stop() { bar.stop(); },
    };
  }
  // no terminal: a line every 10 s for long runs
  let last = start;
  return {
    tick(done) {
      if (Date.now() - last < 10_000 || done >= total) return;
      last = Date.now();
      const r = rate(done);
      logger.info(`encoding: ${fmt(done)}/${fmt(total)} rows (${fmt(Math.round(r))} rows/s, ETA ${Math.ceil((total - done) / r)} s)`);
    },
    stop() {},
  };
}

const yieldNow = () => new Promise<void>((r) => setImmediate(r));

interface WorkerSlot {
  worker: Worker;
  ready: boolean;
  dead: boolean;
  inFlight: Set<number>;
}

async function encodeDataset(template: Template, dataset: ArrayLike<object>, opts: EncodeOptions): Promise<Dataset<Encoded>> {
  const numProc = opts.numProc ?? 1;
  if (!Number.isInteger(numProc) || numProc < 1) throw new ConfigError(`numProc must be a positive integer, got ${JSON.stringify(numProc)}.`);
  if (dataset === null || typeof dataset !== 'object' || typeof dataset.length !== 'number') {
    throw new DatasetError('EncodePreprocessor expects a dataset (an array of { messages } rows, e.g. from loadDataset).');
  }
  const n = dataset.length;
  const t0 = Date.now();
  warnThinking(template, dataset);

  // how many threads: at most the CPUs, and workers only where the set is long enough to repay their start
  let threads = numProc;
  const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  const notes: string[] = [];
  if (threads > cpus) { notes.push(`numProc ${numProc} capped at the ${cpus} CPUs`); threads = cpus; }
  // CPUs other processes keep busy cannot host workers: on a saturated machine they only add their start-up
  const load = os.loadavg()[0];
  const idle = Math.max(1, Math.floor(cpus - load + 1));
  if (threads > idle && !opts.workersOnly) {
    notes.push(`the CPUs are busy (load average ${load.toFixed(1)} on ${cpus}), leaving room for ${idle}`);
    threads = idle;
  }
  const chunkSize = Math.min(256, Math.max(32, Math.ceil(n / (threads * 16))));
  const nChunks = Math.ceil(n / chunkSize);
  const results: (ChunkResult | undefined)[] = new Array(nChunks);
  const queue = Array.from({ length: nChunks }, (_, i) => i);
  let done = 0;
  const progress = makeProgress(n, numProc, opts.quiet ?? false);
  let wake: (() => void) | null = null;
  const notify = () => { const w = wake; wake = null; w?.(); };
  const rowsOf = (id: number) => {
    const out: object[] = [];
    for (let i = id * chunkSize; i < Math.min(n, (id + 1) * chunkSize); i++) out.push(dataset[i]);
    return out;
  };
  let workerRows = 0;
  const finish = (id: number, r: ChunkResult, byWorker = false) => {
    if (results[id]) return;
    if (byWorker) workerRows += r.index.length + r.tooLong.length + r.problems.length;
    results[id] = r;
    done += Math.min(n, (id + 1) * chunkSize) - id * chunkSize;
    progress.tick(done);
  };
  // the first chunk here: its time tells whether workers pay off
  const tFirst = Date.now();
  const workersOnly = (opts.workersOnly ?? false) && threads > 1;
  if (queue.length > 0 && !workersOnly) {
    const id = queue.shift()!;
    finish(id, encodeChunk(template, rowsOf(id), 0));
  }
  let spec: WorkerTemplateSpec | string | undefined;
  if (threads > 1) {
    const left = ((Date.now() - tFirst) / 1000) * ((n - done) / Math.max(done, 1));
    const min = workersOnly ? 0 : opts.workerMinSeconds ?? WORKER_MIN_SECONDS;
    if (left < min) {
      notes.push(`the ${fmt(n - done)} rows left take ~${left.toFixed(1)} s here, less than workers need to start`);
      threads = 1;
    } else {
      spec = workerSpec(template);
      if (typeof spec === 'string') { notes.push(`workers cannot rebuild the template (${spec})`); threads = 1; }
    }
  }
  if (numProc > 1 && notes.length && !opts.quiet) logger.info(`EncodePreprocessor: ${notes.join('; ')}; using ${threads} thread${threads > 1 ? 's' : ''}.`);

  // workers: each keeps IN_FLIGHT chunks; a failed worker's chunks go back to the queue
  const slots: WorkerSlot[] = [];
  let workerFailure = '';
  const feed = (slot: WorkerSlot) => {
    while (slot.ready && !slot.dead && slot.inFlight.size < IN_FLIGHT && queue.length > 0) {
      const id = queue.shift()!;
      slot.inFlight.add(id);
      slot.worker.postMessage({ type: 'chunk', id, start: id * chunkSize, rows: rowsOf(id) } satisfies ToWorker);
    }
  };
  const fail = (slot: WorkerSlot, why: string) => {
    if (slot.dead) return;
    slot.dead = true;
    workerFailure ||= why.split('\n')[0];
    queue.unshift(...[...slot.inFlight].filter((id) => !results[id]));
    slot.inFlight.clear();
    void slot.worker.terminate();
    notify();
  };
  if (threads > 1 && typeof spec === 'object') {
    let code: string | undefined;
    try {
      code = bootstrapCode();
    } catch (e) {
      workerFailure = (e as Error).message;
    }
    for (let k = 0; code && k < threads - 1; k++) {
      const slot: WorkerSlot = { worker: new Worker(code, { eval: true, workerData: { spec } }), ready: false, dead: false, inFlight: new Set() };
      slot.worker.on('message', (msg: FromWorker) => {
        if (msg.type === 'ready') { slot.ready = true; feed(slot); return; }
        if (msg.type === 'failed') { fail(slot, msg.message); return; }
        slot.inFlight.delete(msg.id);
        finish(msg.id, unpackChunk(msg.chunk), true);
        feed(slot);
        notify();
      });
      slot.worker.on('error', (e) => fail(slot, e.stack ?? e.message));
      slot.worker.on('exit', (code2) => { if (!slot.dead && code2 !== 0) fail(slot, `worker exited with code ${code2}`); });
      slots.push(slot);
    }
  }

  const encodeYielding = async (id: number): Promise<ChunkResult> => {
    const rows = rowsOf(id);
    const out: ChunkResult = { rows: [], index: [], tooLong: [], problems: [] };
    for (let k = 0; k < rows.length; k += YIELD_ROWS) {
      const r = encodeChunk(template, rows.slice(k, k + YIELD_ROWS), id * chunkSize + k);
      out.rows.push(...r.rows);
      out.index.push(...r.index);
      out.tooLong.push(...r.tooLong);
      out.problems.push(...r.problems);
      await yieldNow();
    }
    return out;
  };

  try {
    // this thread takes chunks too, yielding between them so worker messages are handled
    while (done < n) {
      const canWait = workersOnly && slots.some((sl) => !sl.dead);
      const id = canWait ? undefined : queue.shift();
      if (id !== undefined) {
        finish(id, slots.length ? await encodeYielding(id) : encodeChunk(template, rowsOf(id), id * chunkSize));
        continue;
      }
      await new Promise<void>((r) => { wake = r; });
    }
  } finally {
    progress.stop();
    await Promise.all(slots.map((s) => {
      if (s.dead) return undefined;
      s.dead = true;   // terminate() exits with code 1: not a failure
      return s.worker.terminate();
    }));
  }
  if (workerFailure) {
    logger.warning(`EncodePreprocessor: a worker thread failed (${workerFailure}); its rows were encoded in this thread.`);
  }

  // gather in order, and report what was dropped
  const rows: Encoded[] = [];
  const origins: string[] = [];
  const tooLong: number[] = [];
  const problems: { index: number; message: string }[] = [];
  const originOf = (i: number) => (dataset instanceof Dataset ? `${dataset.originOf(i)} (row ${i})` : `row ${i}`);
  for (const r of results as ChunkResult[]) {
    r.rows.forEach((row, k) => { rows.push(row); origins.push(originOf(r.index[k])); });
    tooLong.push(...r.tooLong);
    problems.push(...r.problems);
  }
  if (opts.strict && problems.length) {
    throw new DatasetError(`${originOf(problems[0].index)}: ${problems[0].message} (strict mode: fix the row, or encode without strict to drop it).`);
  }
  if (rows.length !== n) logger.info(`Dataset filtered, origin length: ${n}, filtered dataset length: ${rows.length}`);
  if (tooLong.length) {
    logger.warning(`EncodePreprocessor: dropped ${fmt(tooLong.length)} of ${fmt(n)} rows longer than max_length ${template.maxLength} ` +
      `(first: ${originOf(tooLong[0])}); raise maxLength, or set truncationStrategy 'left'/'right' to truncate them instead.`);
  }
  if (problems.length) {
    const shown = problems.slice(0, 5).map((p) => `${originOf(p.index)}: ${p.message}`).join('; ');
    logger.warning(`EncodePreprocessor: dropped ${fmt(problems.length)} malformed row${problems.length > 1 ? 's' : ''} — ${shown}` +
      `${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}.`);
  }
  if (!opts.quiet && n >= 1000) {
    const s = (Date.now() - t0) / 1000;
    const par = threads > 1 ? `${threads} threads, ${fmt(workerRows)} rows by workers` : '1 thread';
    logger.info(`encoded ${fmt(n)} rows in ${s.toFixed(1)} s (${fmt(Math.round(n / Math.max(s, 1e-3)))} rows/s, ${par})`);
  }
  return Dataset.fromRows(rows, origins);
}

/** Forget that the thinking-template warning was shown (tests). */
export function resetEncodeWarnings(): void {
  thinkingWarned = false;
}

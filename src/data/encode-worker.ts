// The encoding of one chunk of rows, shared by EncodePreprocessor's own thread and its worker threads,
// and the worker side: rebuild the template from its settings and the tokenizer folder, then encode the
// chunks the main thread sends, returning ids packed in one transferable Int32Array per chunk.
//
// A worker starts from an inline CommonJS script (see encode.ts) that registers tsx's require hook and
// calls runEncodeWorker(); this file has no side effects when imported.

import { parentPort, workerData } from 'worker_threads';
import { TemplateError } from '../errors';
import { Tokenizer } from '../model/tokenizer';
import { getTemplate, MaxLengthError, type Encoded, type Template, type TemplateName, type TemplateOptions } from './template';

/** What a worker needs to rebuild the caller's template. */
export interface WorkerTemplateSpec {
  name: TemplateName;
  mode: 'train' | 'pt';
  options: TemplateOptions;
  /** folder with tokenizer.json (+ tokenizer_config.json) */
  tokenizerDir: string;
  /** a text and its ids under the caller's tokenizer: the worker checks it has the same tokenizer */
  probe: { text: string; ids: number[] };
}

/** The outcome of one chunk: encoded rows (with their index in the dataset) and what was dropped. */
export interface ChunkResult {
  rows: Encoded[];
  /** dataset index of each encoded row */
  index: number[];
  /** dataset indices of rows over max_length (truncation 'delete') */
  tooLong: number[];
  /** rows the template rejected, with the reason */
  problems: { index: number; message: string }[];
}

/**
 * Encode rows `start .. start + rows.length - 1`: over-long rows (MaxLengthError) and malformed rows
 * (TemplateError) are collected, not thrown; anything else is a bug and is thrown.
 */
export function encodeChunk(template: Template, rows: ArrayLike<unknown>, start: number): ChunkResult {
  const out: ChunkResult = { rows: [], index: [], tooLong: [], problems: [] };
  for (let k = 0; k < rows.length; k++) {
    try {
      out.rows.push(template.encode(rows[k] as { messages: [] }));
      out.index.push(start + k);
    } catch (e) {
      if (e instanceof MaxLengthError) out.tooLong.push(start + k);
      else if (e instanceof TemplateError) out.problems.push({ index: start + k, message: e.message });
      else throw e;
    }
  }
  return out;
}

/** A chunk result as it crosses threads: every id list in one Int32Array (transferred, not copied). */
export interface PackedChunk {
  ids: Int32Array;
  /** per row: input_ids length, then labels length (-1 for null) */
  lens: Int32Array;
  index: number[];
  tooLong: number[];
  problems: { index: number; message: string }[];
}

export function packChunk(r: ChunkResult): PackedChunk {
  let total = 0;
  for (const row of r.rows) total += row.input_ids.length + (row.labels?.length ?? 0);
  const ids = new Int32Array(total);
  const lens = new Int32Array(r.rows.length * 2);
  let p = 0;
  r.rows.forEach((row, k) => {
    ids.set(row.input_ids, p);
    p += row.input_ids.length;
    lens[2 * k] = row.input_ids.length;
    if (row.labels) { ids.set(row.labels, p); p += row.labels.length; }
    lens[2 * k + 1] = row.labels ? row.labels.length : -1;
  });
  return { ids, lens, index: r.index, tooLong: r.tooLong, problems: r.problems };
}

export function unpackChunk(c: PackedChunk): ChunkResult {
  const rows: Encoded[] = [];
  let p = 0;
  const take = (n: number) => { const a = Array.from(c.ids.subarray(p, p + n)); p += n; return a; };
  for (let k = 0; k < c.index.length; k++) {
    const input_ids = take(c.lens[2 * k]);
    const labels = c.lens[2 * k + 1] >= 0 ? take(c.lens[2 * k + 1]) : null;
    rows.push({ input_ids, labels, length: Math.max(input_ids.length, labels?.length ?? 0) });
  }
  return { rows, index: c.index, tooLong: c.tooLong, problems: c.problems };
}

/** Messages between the main thread and a worker. */
export type ToWorker = { type: 'chunk'; id: number; start: number; rows: unknown[] };
export type FromWorker =
  | { type: 'ready' }
  | { type: 'done'; id: number; chunk: PackedChunk }
  | { type: 'failed'; message: string };

/** The worker's main loop (called by the inline bootstrap script). */
export async function runEncodeWorker(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('runEncodeWorker must run in a worker thread');
  const spec = (workerData as { spec: WorkerTemplateSpec }).spec;
  let template: Template;
  try {
    const tokenizer = await Tokenizer.fromDir(spec.tokenizerDir);
    const got = tokenizer.encode(spec.probe.text);
    if (got.length !== spec.probe.ids.length || got.some((id, k) => id !== spec.probe.ids[k])) {
      throw new Error(`the tokenizer in ${spec.tokenizerDir} encodes differently from the caller's`);
    }
    template = getTemplate(spec.name, tokenizer, spec.options);
    template.setMode(spec.mode);
  } catch (e) {
    port.postMessage({ type: 'failed', message: (e as Error).message } satisfies FromWorker);
    return;
  }
  port.on('message', (msg: ToWorker) => {
    try {
      const chunk = packChunk(encodeChunk(template, msg.rows, msg.start));
      port.postMessage({ type: 'done', id: msg.id, chunk } satisfies FromWorker, [chunk.ids.buffer, chunk.lens.buffer]);
    } catch (e) {
      port.postMessage({ type: 'failed', message: (e as Error).stack ?? String(e) } satisfies FromWorker);
    }
  });
  port.postMessage({ type: 'ready' } satisfies FromWorker);
}

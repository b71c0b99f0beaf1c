// Token-level decoding with the KV cache, for one row or a batch. Knows nothing about text: the
// inference engine (src/infer) wraps it with templates, a streaming detokenizer and stop strings.
//
// A `DecodeBatch` is the running batch of continuous batching: rows join with a prefill (left-padded
// among themselves, then merged into the shared cache), every `step()` decodes one token for each row
// in one forward pass, and a row leaves when it hits a stop id, its token budget, or `remove()`.
// Positions come from the attention mask (cumsum(mask) - 1, as transformers' generate computes
// position_ids), so a row decodes exactly as it would alone. Sampling follows transformers' order:
// repetition penalty → temperature → top-k → top-p; each row draws from its own seeded `Random`.

import * as tf from '@tensorflow/tfjs-core';
import { KVCache } from './kv-cache';
import type { Qwen2ForCausalLM } from './qwen2';
import { Random } from '../utils/seed';

export interface SamplingOptions {
  /** 0 (default) = greedy; > 0 samples from softmax(logits / temperature) */
  temperature?: number;
  /** keep the k most likely tokens when sampling (0 = all) */
  topK?: number;
  /** nucleus sampling: smallest set with cumulative probability ≥ topP (1 = all) */
  topP?: number;
  /** > 1 discourages tokens already in the prompt or output (transformers' rule); 1 (default) = off */
  repetitionPenalty?: number;
  /** sampling seed (default 0) */
  seed?: number;
}

export interface GenerateOptions extends SamplingOptions {
  /** number of new tokens at most (≥ 1) */
  maxNewTokens: number;
  /** stop after emitting any of these ids (the stop id is included in the output) */
  eosTokenId?: number | number[];
}

/** 'stop': a stop id was sampled; 'length': maxNewTokens reached. */
export type FinishReason = 'stop' | 'length';

/** One new token of one row; `finishReason` is set on the row's last token. */
export interface TokenEvent<K> {
  key: K;
  token: number;
  finishReason: FinishReason | null;
}

/** Longest log₂ distance below the best token that candidate selection tells apart. */
const BUCKETS = 64;

/**
 * Indices of the most likely tokens, best first, from unnormalised probabilities `p` (max 1): the
 * fewest whole log₂ buckets whose tokens satisfy `enough(count, mass)`, sorted. One pass plus a sort of
 * the candidates only, instead of sorting the whole vocabulary each token.
 */
function topCandidates(p: Float64Array, enough: (count: number, mass: number) => boolean): number[] {
  const count = new Float64Array(BUCKETS + 1), mass = new Float64Array(BUCKETS + 1);
  const bucket = new Uint8Array(p.length);
  for (let i = 0; i < p.length; i++) {
    const b = p[i] > 0 ? Math.min(BUCKETS, Math.floor(-Math.log2(p[i]))) : BUCKETS;
    bucket[i] = b;
    count[b]++;
    mass[b] += p[i];
  }
  let last = BUCKETS, c = 0, m = 0;
  for (let b = 0; b <= BUCKETS; b++) {
    c += count[b];
    m += mass[b];
    if (enough(c, m)) { last = b; break; }
  }
  const out: number[] = [];
  for (let i = 0; i < p.length; i++) if (bucket[i] <= last) out.push(i);
  return out.sort((a, b) => p[b] - p[a] || a - b);
}

/**
 * Pick the next token from one row of logits (transformers' order: repetition penalty, temperature,
 * top-k, top-p). `seen` holds the ids the repetition penalty applies to (prompt and output).
 * @example sampleToken(logits, { temperature: 0.7, topK: 20, topP: 0.8 }, new Random(42))
 */
export function sampleToken(logits: Float32Array, opts: SamplingOptions, rng: Random, seen?: ReadonlySet<number>): number {
  const V = logits.length;
  const penalty = opts.repetitionPenalty ?? 1;
  let x: Float32Array = logits;
  if (penalty !== 1 && seen && seen.size) {
    x = logits.slice();
    for (const id of seen) if (id >= 0 && id < V) x[id] = x[id] < 0 ? x[id] * penalty : x[id] / penalty;
  }
  const temperature = opts.temperature ?? 0;
  let best = 0;
  for (let i = 1; i < V; i++) if (x[i] > x[best]) best = i;
  if (!(temperature > 0)) return best;

  const p = new Float64Array(V);                                     // exp((x - max) / T) ∈ (0, 1]
  for (let i = 0; i < V; i++) p[i] = Math.exp((x[i] - x[best]) / temperature);
  const topK = opts.topK ?? 0, topP = opts.topP ?? 1;
  let order: number[] | null = null;
  if (topK > 0 && topK < V) order = topCandidates(p, (c) => c >= topK).slice(0, topK);
  if (topP < 1) {
    if (order === null) {
      let total = 0;
      for (let i = 0; i < V; i++) total += p[i];
      order = topCandidates(p, (_c, m) => m >= topP * total);
    }
    const total = order.reduce((s, i) => s + p[i], 0);
    let cum = 0, keep = order.length;
    for (let j = 0; j < order.length; j++) {
      cum += p[order[j]] / total;
      if (cum >= topP) { keep = j + 1; break; }
    }
    order = order.slice(0, keep);
  }
  if (order === null) {
    let total = 0;
    for (let i = 0; i < V; i++) total += p[i];
    let r = rng.random() * total;
    for (let i = 0; i < V; i++) if ((r -= p[i]) <= 0) return i;
    return best;
  }
  let r = rng.random() * order.reduce((s, i) => s + p[i], 0);
  for (const i of order) if ((r -= p[i]) <= 0) return i;
  return order[order.length - 1];
}

interface Row<K> {
  key: K;
  opts: GenerateOptions;
  stop: Set<number>;
  rng: Random;
  greedy: boolean;
  /** ids the repetition penalty applies to (null when off) */
  seen: Set<number> | null;
  /** leading padding positions of this row in the shared cache */
  pad: number;
  /** the last sampled token, fed at the next step */
  next: number;
  generated: number;
}

/** A row to add to a DecodeBatch. */
export interface BatchRow<K> {
  key: K;
  inputIds: readonly number[];
  options: GenerateOptions;
}

/**
 * The running batch of continuous batching over one model and one KV cache. Not re-entrant: call
 * `add`, `step` and `remove` from one loop, one at a time.
 * @example
 *   const batch = new DecodeBatch<string>(model);
 *   let events = await batch.add([{ key: 'a', inputIds: ids, options: { maxNewTokens: 16 } }]);
 *   while (batch.size) events = await batch.step();   // each event: { key, token, finishReason }
 *   batch.dispose();
 */
export class DecodeBatch<K> {
  private rows: Row<K>[] = [];
  private cache: KVCache;
  private busy = false;

  constructor(readonly model: Qwen2ForCausalLM) {
    this.cache = new KVCache(model.config.numLayers);
  }

  /** Rows decoding now. */
  get size(): number {
    return this.rows.length;
  }

  /** Positions in the shared cache (the longest row plus padding). */
  get cacheLength(): number {
    return this.cache.length;
  }

  keys(): K[] {
    return this.rows.map((r) => r.key);
  }

  has(key: K): boolean {
    return this.rows.some((r) => r.key === key);
  }

  private enter(what: string): void {
    if (this.busy) throw new Error(`DecodeBatch.${what}: called while a forward pass is running (not re-entrant)`);
    this.busy = true;
  }

  /**
   * Prefill `rows` together (left-padded) and merge them into the batch; returns each row's first token.
   * Rows whose first token already finishes them are not kept.
   */
  async add(rows: readonly BatchRow<K>[]): Promise<TokenEvent<K>[]> {
    if (rows.length === 0) return [];
    for (const r of rows) {
      if (r.inputIds.length === 0) throw new RangeError('generate: inputIds is empty');
      if (!(Number.isInteger(r.options.maxNewTokens) && r.options.maxNewTokens >= 1)) {
        throw new RangeError(`generate: maxNewTokens must be an integer ≥ 1, got ${r.options.maxNewTokens}`);
      }
      if (this.has(r.key) || rows.filter((o) => o.key === r.key).length > 1) throw new RangeError(`generate: row key ${String(r.key)} is already in the batch`);
    }
    this.enter('add');
    const cache = new KVCache(this.model.config.numLayers);
    try {
      const L = Math.max(...rows.map((r) => r.inputIds.length));
      const fresh: Row<K>[] = rows.map((r) => {
        const eos = r.options.eosTokenId;
        const penalty = r.options.repetitionPenalty ?? 1;
        return {
          key: r.key, opts: r.options, rng: new Random(r.options.seed ?? 0), greedy: !((r.options.temperature ?? 0) > 0),
          stop: new Set(eos == null ? [] : Array.isArray(eos) ? eos : [eos]),
          seen: penalty !== 1 ? new Set(r.inputIds) : null,
          pad: L - r.inputIds.length, next: -1, generated: 0,
        };
      });
      const ids = rows.map((r, b) => [...new Array<number>(fresh[b].pad).fill(0), ...r.inputIds]);     // [b, L]
      const mask = fresh.map((r) => maskRow(r.pad, L));
      // transformers: position_ids = cumsum(mask) - 1, padding at 1
      const positionIds = mask.map((m) => { let c = 0; return m.map((v) => (v ? c++ : 1)); });
      const { logits } = this.model.forward(ids, { cache, attentionMask: mask, positionIds, lastOnly: true });   // [b, 1, V]
      const tokens = await pickTokens(logits, fresh);
      const { padSelf, padOther } = this.cache.mergeRows(cache);
      for (const r of this.rows) r.pad += padSelf;
      for (const r of fresh) r.pad += padOther;
      this.rows.push(...fresh);
      return this.advance(fresh, tokens);
    } finally {
      cache.dispose();
      this.busy = false;
    }
  }

  /** Decode one token for every row (one forward pass over the batch). */
  async step(): Promise<TokenEvent<K>[]> {
    if (this.rows.length === 0) return [];
    this.enter('step');
    try {
      const S = this.cache.length + 1;
      const rows = this.rows;
      const { logits } = this.model.forward(rows.map((r) => [r.next]), {                     // [B, 1, V]
        cache: this.cache,
        attentionMask: rows.map((r) => maskRow(r.pad, S)),
        positionIds: rows.map((r) => [S - 1 - r.pad]),
        lastOnly: true,
      });
      return this.advance(rows, await pickTokens(logits, rows));
    } finally {
      this.busy = false;
    }
  }

  /** Record the sampled tokens, finish rows that stop, drop them from the cache. */
  private advance(rows: Row<K>[], tokens: number[]): TokenEvent<K>[] {
    const events: TokenEvent<K>[] = [];
    const done = new Set<K>();
    rows.forEach((r, b) => {
      const token = tokens[b];
      r.next = token;
      r.generated++;
      r.seen?.add(token);
      const finishReason: FinishReason | null = r.stop.has(token) ? 'stop' : r.generated >= r.opts.maxNewTokens ? 'length' : null;
      if (finishReason) done.add(r.key);
      events.push({ key: r.key, token, finishReason });
    });
    if (done.size) this.drop(done);
    return events;
  }

  /** Stop decoding `key` (a stop string matched, the client went away). Unknown keys are ignored. */
  remove(key: K): void {
    if (!this.has(key)) return;
    this.enter('remove');
    try {
      this.drop(new Set([key]));
    } finally {
      this.busy = false;
    }
  }

  private drop(keys: ReadonlySet<K>): void {
    const keep: number[] = [];
    this.rows.forEach((r, i) => { if (!keys.has(r.key)) keep.push(i); });
    this.cache.selectRows(keep);
    this.rows = keep.map((i) => this.rows[i]);
    // padding every remaining row has is dead weight in attention: cut it
    const common = this.rows.length ? Math.min(...this.rows.map((r) => r.pad)) : 0;
    if (common > 0) {
      this.cache.trimLeft(common);
      for (const r of this.rows) r.pad -= common;
    }
  }

  dispose(): void {
    this.cache.dispose();
    this.rows = [];
  }
}

function maskRow(pad: number, length: number): number[] {
  const m = new Array<number>(length).fill(1);
  for (let i = 0; i < pad; i++) m[i] = 0;
  return m;
}

/** Next token per row from logits [B, 1, V]; all-greedy batches take the argmax on the device. */
async function pickTokens<K>(logits: tf.Tensor3D, rows: readonly Row<K>[]): Promise<number[]> {
  try {
    const [B, , V] = logits.shape;
    if (rows.every((r) => r.greedy && !r.seen)) {
      const best = tf.tidy(() => tf.argMax(tf.reshape(logits, [B, V]), 1));                // [B]
      const ids = Array.from(await best.data());
      best.dispose();
      return ids;
    }
    const data = (await logits.data()) as Float32Array;                                      // [B·V]
    return rows.map((r, b) => sampleToken(data.subarray(b * V, (b + 1) * V), r.greedy ? { ...r.opts, temperature: 0 } : r.opts,
      r.rng, r.seen ?? undefined));
  } finally {
    logits.dispose();
  }
}

/**
 * Yield new token ids one at a time (prefill, then decode with the KV cache).
 * @example
 *   for await (const id of generateTokens(model, promptIds, { maxNewTokens: 32 })) process.stdout.write(`${id} `);
 */
export async function* generateTokens(model: Qwen2ForCausalLM, inputIds: number[], opts: GenerateOptions): AsyncGenerator<number, void, void> {
  if (inputIds.length === 0) throw new RangeError('generate: inputIds is empty');
  const batch = new DecodeBatch<0>(model);
  try {
    let events = await batch.add([{ key: 0, inputIds, options: opts }]);
    for (;;) {
      for (const e of events) {
        yield e.token;
        if (e.finishReason) return;
      }
      events = await batch.step();
    }
  } finally {
    batch.dispose();
  }
}

/**
 * Generate up to maxNewTokens new ids after `inputIds` (greedy when temperature is 0).
 * @example
 *   const ids = await generate(model, tokenizer.encode('Hello'), { maxNewTokens: 24, temperature: 0 });
 */
export async function generate(model: Qwen2ForCausalLM, inputIds: number[], opts: GenerateOptions): Promise<number[]> {
  const out: number[] = [];
  for await (const id of generateTokens(model, inputIds, opts)) out.push(id);
  return out;
}

/**
 * Generate for several prompts at once, sharing forward passes (left padding, one KV cache). Row i's
 * ids equal `generate(model, inputIds[i], opts)` (up to float rounding in the padded matmuls).
 * @example
 *   const [a, b] = await generateBatch(model, [idsA, idsB], { maxNewTokens: 16 });
 */
export async function generateBatch(model: Qwen2ForCausalLM, inputIds: readonly number[][], opts: GenerateOptions | readonly GenerateOptions[]): Promise<number[][]> {
  const out: number[][] = inputIds.map(() => []);
  const batch = new DecodeBatch<number>(model);
  try {
    let events = await batch.add(inputIds.map((ids, i) => ({ key: i, inputIds: ids, options: Array.isArray(opts) ? opts[i] : opts as GenerateOptions })));
    while (events.length) {
      for (const e of events) out[e.key].push(e.token);
      events = await batch.step();
    }
  } finally {
    batch.dispose();
  }
  return out;
}

// PtEngine: ms-swift's PyTorch inference engine, on tfjs. Requests are tokenized by the template,
// queued, and decoded together by one continuous-batching loop (src/model/generate.ts' DecodeBatch:
// rows join and leave between steps, sharing forward passes and one KV cache). Each request's tokens
// go through a detokenizing streamer (whole characters, stop strings held back) and come out as
// OpenAI-shaped responses, or as an AsyncIterable of chunks when streaming.

import { randomUUID } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { DecodeBatch, type FinishReason, type GenerateOptions, type TokenEvent } from '../model/generate';
import { getModelTokenizer, type ModelType } from '../model/loader';
import { Qwen2ForCausalLM } from '../model/qwen2';
import { loadDefaultTokenizer, Tokenizer } from '../model/tokenizer';
import { getTemplate, type Template, type TemplateName } from '../data/template';
import { isAdapterDir, loadAdapter, readAdapterConfig } from '../train/lora';
import type { DeviceName } from '../backend/device';
import { ConfigError } from '../errors';
import { getLogger } from '../utils/logger';
import { globalRandom } from '../utils/seed';
import { TextStreamer } from './streamer';
import {
  ContextLengthError, EngineOverloadedError, InferAbortedError, InferRequest, InvalidRequestError, RequestConfig,
  type ChatCompletionResponse, type ChatCompletionStreamResponse, type CompletionResponse, type RequestConfigInit, type UsageInfo,
} from './protocol';

export interface PtEngineOptions {
  /** LoRA adapter folders (PEFT format) to attach after loading */
  adapters?: string | string[];
  /** qwen2_5 | qwen3 | qwen3_thinking (default: inferred from the checkpoint) */
  modelType?: ModelType;
  /** webgpu | wasm | cpu | auto */
  device?: DeviceName | 'auto';
  /** requests decoded together at most (default 8) */
  maxBatchSize?: number;
  /** requests waiting at most before new ones are refused (default 1024) */
  maxQueue?: number;
  /** tokenizer when passing a model object that has no checkpoint folder */
  tokenizer?: Tokenizer;
  /** download from Hugging Face instead of ModelScope */
  useHf?: boolean;
  /** the `model` field of responses (default: the checkpoint's name) */
  modelName?: string;
}

export interface InferOptions {
  /** template for these requests (default: engine.defaultTemplate) */
  template?: Template;
  /** aborting cancels the requests: their streams / promises reject with InferAbortedError */
  signal?: AbortSignal;
  /**
   * true (the server): max_tokens past the context is an error. false (default, as ms-swift): it is
   * lowered to what the context leaves, with a warning.
   */
  strictMaxTokens?: boolean;
  /** the `model` field of these responses (default: engine.modelName) */
  modelName?: string;
}

/** Text of one request as it is generated; the last piece has finishReason and usage. */
export interface TextPiece {
  text: string;
  finishReason: FinishReason | null;
  usage?: UsageInfo;
}

/** Counters for monitoring and tests. */
export interface EngineStats {
  /** requests queued, not yet decoding */
  waiting: number;
  /** requests decoding now */
  running: number;
  finished: number;
  cancelled: number;
  /** tokens generated since the engine started */
  generatedTokens: number;
}

/** A one-consumer async queue of pieces. */
class Channel<T> {
  private items: T[] = [];
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | null = null;
  private closed = false;
  private error: unknown = null;

  push(v: T): void {
    if (this.closed) return;
    if (this.waiter) { this.waiter.resolve({ value: v, done: false }); this.waiter = null; } else this.items.push(v);
  }

  close(error: unknown = null): void {
    if (this.closed) return;
    this.closed = true;
    this.error = error;
    if (this.waiter) {
      if (error) this.waiter.reject(error); else this.waiter.resolve({ value: undefined, done: true });
      this.waiter = null;
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.closed) return this.error ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => { this.waiter = { resolve, reject }; });
  }
}

interface Job {
  key: number;
  promptIds: number[];
  options: GenerateOptions;
  streamer: TextStreamer;
  /** template response prefix (qwen3_thinking's `<think>\n`), sent with the first text */
  prefix: string;
  out: Channel<TextPiece>;
  state: 'waiting' | 'running' | 'done';
  cancelled: boolean;
  completionTokens: number;
  onAbort?: () => void;
  signal?: AbortSignal;
}

/** An InferRequest, or a plain `{ messages }` object. */
export type ChatRequest = InferRequest | { messages: InferRequest['messages'] };

interface Prepared {
  promptIds: number[];
  options: GenerateOptions;
  stop: string[];
  prefix: string;
}

const DEFAULT_MAX_BATCH = 8;
const DEFAULT_MAX_QUEUE = 1024;

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/**
 * ms-swift's PtEngine: load a checkpoint (or take a loaded model) and answer chat requests, batched.
 * @example
 *   const engine = new PtEngine('tiny');
 *   await engine.ready;
 *   engine.defaultTemplate = getTemplate(engine.model.modelMeta.template, engine.tokenizer, { defaultSystem: 'You are a helpful assistant.' });
 *   const [resp] = await engine.infer([new InferRequest({ messages: [{ role: 'user', content: 'who are you?' }] })],
 *     new RequestConfig({ max_tokens: 64, temperature: 0 }));
 *   console.log(resp.choices[0].message.content);
 *   const [stream] = await engine.infer([req], new RequestConfig({ max_tokens: 64, stream: true }));
 *   for await (const chunk of stream) process.stdout.write(chunk.choices[0].delta.content);
 */
export class PtEngine {
  /** resolves once the model, tokenizer and adapters are loaded */
  readonly ready: Promise<this>;
  readonly maxBatchSize: number;
  readonly maxQueue: number;
  private loaded: { model: Qwen2ForCausalLM; tokenizer: Tokenizer; owned: boolean } | null = null;
  private template: Template | null = null;
  private name: string | null;
  private batch: DecodeBatch<number> | null = null;
  private waiting: Job[] = [];
  private running = new Map<number, Job>();
  private nextKey = 0;
  private looping = false;
  private closed = false;
  private counters = { finished: 0, cancelled: 0, generatedTokens: 0 };

  /**
   * @param modelOrPath a checkpoint folder, hub id or 'tiny'; a PEFT adapter folder (its base model is
   *   read from adapter_config.json); a loaded model; or `{ model, tokenizer }`.
   */
  constructor(modelOrPath: string | Qwen2ForCausalLM | { model: Qwen2ForCausalLM; tokenizer: Tokenizer }, opts: PtEngineOptions = {}) {
    const maxBatch = opts.maxBatchSize ?? DEFAULT_MAX_BATCH;
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new ConfigError(`PtEngine: maxBatchSize must be an integer ≥ 1, got ${maxBatch}`);
    const maxQueue = opts.maxQueue ?? DEFAULT_MAX_QUEUE;
    if (!Number.isInteger(maxQueue) || maxQueue < 1) throw new ConfigError(`PtEngine: maxQueue must be an integer ≥ 1, got ${maxQueue}`);
    this.maxBatchSize = maxBatch;
    this.maxQueue = maxQueue;
    this.name = opts.modelName ?? null;
    this.ready = this.load(modelOrPath, opts).then(() => this);
    // surfaced by infer() / `await engine.ready`; no unhandled rejection when nobody waits
    this.ready.catch(() => undefined);
  }

  /** `await PtEngine.create(path, opts)` = `await new PtEngine(path, opts).ready`. */
  static create(modelOrPath: ConstructorParameters<typeof PtEngine>[0], opts: PtEngineOptions = {}): Promise<PtEngine> {
    return new PtEngine(modelOrPath, opts).ready;
  }

  private async load(modelOrPath: ConstructorParameters<typeof PtEngine>[0], opts: PtEngineOptions): Promise<void> {
    let adapters = opts.adapters === undefined ? [] : Array.isArray(opts.adapters) ? [...opts.adapters] : [opts.adapters];
    if (typeof modelOrPath === 'string') {
      let base = modelOrPath;
      let modelType = opts.modelType;
      if (isAdapterDir(modelOrPath) && !fs.existsSync(path.join(modelOrPath, 'config.json'))) {
        // a LoRA checkpoint: its base model comes from args.json (tsft sft / ms-swift) or adapter_config.json
        const args = checkpointArgs(modelOrPath);
        const fromCheckpoint = args.model ?? readAdapterConfig(modelOrPath).base_model_name_or_path;
        if (!fromCheckpoint) {
          throw new ConfigError(`${modelOrPath} is a LoRA adapter that names no base model (no args.json "model", no base_model_name_or_path ` +
            'in adapter_config.json): pass the base model and the adapter separately (new PtEngine(base, { adapters: [dir] }), or --model and --adapters)');
        }
        adapters = [modelOrPath, ...adapters];
        base = fromCheckpoint;
        modelType ??= args.model_type as ModelType | undefined;
      }
      const { model, tokenizer } = await getModelTokenizer(base, { modelType, device: opts.device, useHf: opts.useHf });
      this.loaded = { model, tokenizer, owned: true };
      this.name ??= fs.existsSync(base) ? path.basename(path.resolve(base)) : base;
    } else if (modelOrPath instanceof Qwen2ForCausalLM) {
      const dir = modelOrPath.modelInfo.modelDir;
      const tokenizer = opts.tokenizer
        ?? (dir && fs.existsSync(path.join(dir, 'tokenizer.json')) ? await Tokenizer.fromDir(dir) : await loadDefaultTokenizer());
      this.loaded = { model: modelOrPath, tokenizer, owned: false };
      this.name ??= dir ? path.basename(dir) : modelOrPath.modelMeta.modelType;
    } else if (modelOrPath && modelOrPath.model instanceof Qwen2ForCausalLM && modelOrPath.tokenizer instanceof Tokenizer) {
      this.loaded = { model: modelOrPath.model, tokenizer: modelOrPath.tokenizer, owned: false };
      const dir = modelOrPath.model.modelInfo.modelDir;
      this.name ??= dir ? path.basename(dir) : modelOrPath.model.modelMeta.modelType;
    } else {
      throw new ConfigError('PtEngine takes a checkpoint path / hub id / "tiny", a loaded model, or { model, tokenizer }');
    }
    const { model, tokenizer } = this.loaded;
    for (const dir of adapters) await loadAdapter(model, dir);
    // the system prompt the adapter was trained with (args.json) is the default at inference too: ms-swift
    // users who train with "You are a helpful assistant." and infer with Qwen's default get Qwen back
    const system = adapters.map((dir) => checkpointArgs(dir).system).find((v) => typeof v === 'string');
    if (system !== undefined && !this.template) {
      this.template = getTemplate(model.modelMeta.template as TemplateName, tokenizer, { defaultSystem: system });
      getLogger().info(`default system from the adapter's args.json: ${JSON.stringify(system)}`);
    }
    model.eval();
    this.batch = new DecodeBatch<number>(model);
  }

  private need(): { model: Qwen2ForCausalLM; tokenizer: Tokenizer } {
    if (!this.loaded) {
      throw new ConfigError('the PtEngine is still loading: `await engine.ready` (or use `await PtEngine.create(path)`) before reading engine.model / engine.tokenizer');
    }
    return this.loaded;
  }

  get model(): Qwen2ForCausalLM {
    return this.need().model;
  }

  get tokenizer(): Tokenizer {
    return this.need().tokenizer;
  }

  /** The name responses carry in `model` (and /v1/models lists). */
  get modelName(): string {
    return this.name ?? 'tsft';
  }

  /** The template requests use unless infer() is given one (ms-swift `engine.default_template`). */
  get defaultTemplate(): Template {
    if (!this.template) {
      const { model, tokenizer } = this.need();
      this.template = getTemplate(model.modelMeta.template as TemplateName, tokenizer);
    }
    return this.template;
  }

  set defaultTemplate(template: Template) {
    this.template = template;
  }

  get stats(): EngineStats {
    return { waiting: this.waiting.length, running: this.running.size, ...this.counters };
  }

  /**
   * Answer chat requests (batched). Without `stream`: one `chat.completion` per request. With
   * `stream: true`: one AsyncIterable of `chat.completion.chunk`s per request (`choices[0].delta.content`;
   * the last has `finish_reason` and `usage`). Bad requests throw before anything starts.
   * @example
   *   const [resp] = await engine.infer([{ messages: [{ role: 'user', content: '你是谁？' }] }], { max_tokens: 32 });
   */
  infer(requests: readonly ChatRequest[], config: RequestConfig<true> | (RequestConfigInit<true> & { stream: true }), opts?: InferOptions): Promise<AsyncIterable<ChatCompletionStreamResponse>[]>;
  infer(requests: readonly ChatRequest[], config?: RequestConfig<false> | RequestConfigInit<false>, opts?: InferOptions): Promise<ChatCompletionResponse[]>;
  infer(requests: readonly ChatRequest[], config?: RequestConfig | RequestConfigInit, opts?: InferOptions): Promise<ChatCompletionResponse[] | AsyncIterable<ChatCompletionStreamResponse>[]>;
  async infer(requests: readonly ChatRequest[], config?: RequestConfig | RequestConfigInit, opts: InferOptions = {}): Promise<ChatCompletionResponse[] | AsyncIterable<ChatCompletionStreamResponse>[]> {
    await this.ready;
    if (!Array.isArray(requests)) throw new InvalidRequestError('engine.infer takes an array of InferRequest', 'requests');
    const cfg = config instanceof RequestConfig ? config : new RequestConfig(config ?? {});
    const template = opts.template ?? this.defaultTemplate;
    const prepared = requests.map((r, i) => {
      const req = r instanceof InferRequest ? r : new InferRequest(r);
      try {
        return this.prepare(template.inferencePrompt(req.messages), cfg, template, opts.strictMaxTokens ?? false);
      } catch (e) {
        if (requests.length > 1 && e instanceof Error) e.message = `request ${i}: ${e.message}`;
        throw e;
      }
    });
    const jobs = this.enqueue(prepared, opts.signal);
    const created = Math.floor(Date.now() / 1000), model = opts.modelName ?? this.modelName;
    if (cfg.stream) {
      return jobs.map((job) => mapPieces(this.pieces(job), (p, id): ChatCompletionStreamResponse => ({
        id, object: 'chat.completion.chunk', created, model,
        choices: [{ index: 0, delta: { role: 'assistant', content: p.text }, finish_reason: p.finishReason, logprobs: null }],
        ...(p.usage ? { usage: p.usage } : {}),
      }), 'chatcmpl'));
    }
    return Promise.all(jobs.map(async (job): Promise<ChatCompletionResponse> => {
      const { text, last } = await collect(this.pieces(job));
      return {
        id: `chatcmpl-${randomUUID().replace(/-/g, '')}`, object: 'chat.completion', created, model,
        choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: last.finishReason!, logprobs: null }],
        usage: last.usage!,
      };
    }));
  }

  /**
   * Plain-text completion of raw prompts (no chat template): OpenAI `text_completion`s, or streams of them.
   * @example const [r] = await engine.complete(['Once upon a time'], { max_tokens: 16 }); r.choices[0].text
   */
  complete(prompts: readonly string[], config: RequestConfig<true> | (RequestConfigInit<true> & { stream: true }), opts?: Omit<InferOptions, 'template'>): Promise<AsyncIterable<CompletionResponse>[]>;
  complete(prompts: readonly string[], config?: RequestConfig<false> | RequestConfigInit<false>, opts?: Omit<InferOptions, 'template'>): Promise<CompletionResponse[]>;
  complete(prompts: readonly string[], config?: RequestConfig | RequestConfigInit, opts?: Omit<InferOptions, 'template'>): Promise<CompletionResponse[] | AsyncIterable<CompletionResponse>[]>;
  async complete(prompts: readonly string[], config?: RequestConfig | RequestConfigInit, opts: Omit<InferOptions, 'template'> = {}): Promise<CompletionResponse[] | AsyncIterable<CompletionResponse>[]> {
    await this.ready;
    const cfg = config instanceof RequestConfig ? config : new RequestConfig(config ?? {});
    const template = this.defaultTemplate;
    const prepared = prompts.map((p, i) => {
      if (typeof p !== 'string' || p.length === 0) throw new InvalidRequestError(`prompt ${i} must be a non-empty string`, 'prompt');
      return { ...this.prepare(this.tokenizer.encode(p), cfg, template, opts.strictMaxTokens ?? false), prefix: '' };
    });
    const jobs = this.enqueue(prepared, opts.signal);
    const created = Math.floor(Date.now() / 1000), model = opts.modelName ?? this.modelName;
    const shape = (id: string, text: string, finish: FinishReason | null, usage?: UsageInfo): CompletionResponse => ({
      id, object: 'text_completion', created, model, choices: [{ index: 0, text, finish_reason: finish, logprobs: null }],
      ...(usage ? { usage } : {}),
    });
    if (cfg.stream) {
      return jobs.map((job) => mapPieces(this.pieces(job), (p, id) => shape(id, p.text, p.finishReason, p.usage), 'cmpl'));
    }
    return Promise.all(jobs.map(async (job) => {
      const { text, last } = await collect(this.pieces(job));
      return shape(`cmpl-${randomUUID().replace(/-/g, '')}`, text, last.finishReason, last.usage);
    }));
  }

  /**
   * Resolve a request's generation settings as ms-swift's prepare_generation_config does: unset fields
   * from generation_config.json (transformers' defaults otherwise); greedy unless the checkpoint
   * samples (`do_sample`) or the request sets a temperature > 0.
   */
  private prepare(promptIds: number[], cfg: RequestConfig, template: Template, strict: boolean): Prepared {
    const { model } = this.need();
    const maxLen = model.modelInfo.maxModelLen;
    const n = promptIds.length;
    if (n === 0) throw new InvalidRequestError('the prompt is empty', 'messages');
    if (n >= maxLen) {
      throw new ContextLengthError(`the prompt has ${n} tokens but the model's context (max_model_len) is ${maxLen}, ` +
        'leaving no room for an answer: shorten the conversation or the system prompt', 'messages');
    }
    let maxTokens = cfg.max_tokens ?? maxLen - n;
    if (n + maxTokens > maxLen) {
      if (strict) {
        throw new ContextLengthError(`max_tokens ${maxTokens} + the prompt's ${n} tokens exceed the model's context of ${maxLen}: ` +
          `ask for at most ${maxLen - n} tokens`, 'max_tokens');
      }
      getLogger().warningOnce(`max_model_len (${maxLen}) - num_tokens (${n}) < max_tokens (${maxTokens}): setting max_tokens to ${maxLen - n}`);
      maxTokens = maxLen - n;
    }
    const g = model.generationConfig;
    const doSample = g.do_sample === true;
    const temperature = cfg.temperature ?? (doSample ? num(g.temperature) ?? 1 : 0);
    const topK = cfg.top_k ?? num(g.top_k) ?? 50;
    const eos = new Set(template.stopTokenIds);
    for (const id of [g.eos_token_id].flat()) if (typeof id === 'number') eos.add(id);
    return {
      promptIds,
      options: {
        maxNewTokens: maxTokens,
        temperature,
        topK: topK < 0 ? 0 : topK,
        topP: cfg.top_p ?? num(g.top_p) ?? 1,
        repetitionPenalty: cfg.repetition_penalty ?? num(g.repetition_penalty) ?? 1,
        seed: cfg.seed ?? globalRandom.nextU32(),
        eosTokenId: [...eos],
      },
      stop: cfg.stop,
      prefix: template.responsePrefix,
    };
  }

  private enqueue(prepared: readonly Prepared[], signal?: AbortSignal): Job[] {
    if (this.closed) throw new InferAbortedError('the engine was shut down (engine.close())');
    if (signal?.aborted) throw new InferAbortedError('the request was aborted before it started');
    if (this.waiting.length + prepared.length > this.maxQueue) {
      throw new EngineOverloadedError(`${this.waiting.length} requests are already waiting (maxQueue ${this.maxQueue}): retry later`);
    }
    const { tokenizer } = this.need();
    const jobs = prepared.map((p): Job => ({
      key: this.nextKey++, promptIds: p.promptIds, options: p.options, streamer: new TextStreamer(tokenizer, p.stop),
      prefix: p.prefix, out: new Channel<TextPiece>(), state: 'waiting', cancelled: false, completionTokens: 0, signal,
    }));
    for (const job of jobs) {
      if (signal) {
        job.onAbort = () => this.cancel(job, new InferAbortedError('the request was aborted'));
        signal.addEventListener('abort', job.onAbort, { once: true });
      }
    }
    this.waiting.push(...jobs);
    this.loop().catch((e: unknown) => {
      // a bug, not a failed forward (those are handled in the loop): fail everything rather than hang
      getLogger().error(`inference loop crashed: ${(e as Error)?.stack ?? e}`);
      for (const job of [...this.waiting, ...this.running.values()]) this.settle(job, e);
      this.waiting = [];
      this.running.clear();
    });
    return jobs;
  }

  /** A job's pieces; leaving the loop early (break, a closed connection) cancels the job. */
  private async *pieces(job: Job): AsyncGenerator<TextPiece, void, void> {
    try {
      for (;;) {
        const r = await job.out.next();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      if (job.state !== 'done') this.cancel(job, null);
    }
  }

  private cancel(job: Job, error: InferAbortedError | null): void {
    if (job.state === 'done') return;
    job.cancelled = true;
    if (job.state === 'waiting') {
      this.waiting = this.waiting.filter((j) => j !== job);
    }
    // a running job leaves the batch at the loop's next turn
    this.settle(job, error);
    this.counters.cancelled++;
  }

  private settle(job: Job, error: unknown): void {
    if (job.state !== 'done') {
      job.state = 'done';
      if (job.onAbort) job.signal?.removeEventListener('abort', job.onAbort);
    }
    job.out.close(error);
  }

  /** Send text (with the response prefix before the first text) and, on the last piece, the usage. */
  private emit(job: Job, text: string, finishReason: FinishReason | null): void {
    if (job.prefix && (text || finishReason)) {
      text = job.prefix + text;
      job.prefix = '';
    }
    if (!text && !finishReason) return;
    const piece: TextPiece = { text, finishReason };
    if (finishReason) {
      const prompt = job.promptIds.length;
      piece.usage = { prompt_tokens: prompt, completion_tokens: job.completionTokens, total_tokens: prompt + job.completionTokens };
    }
    job.out.push(piece);
    if (finishReason) {
      this.running.delete(job.key);
      this.settle(job, null);
      this.counters.finished++;
    }
  }

  /** One token of a running job: returns true when a stop string ended it (it must leave the batch). */
  private onToken(job: Job, e: TokenEvent<number>): boolean {
    job.completionTokens++;
    this.counters.generatedTokens++;
    if (job.state === 'done') return false;
    if (e.finishReason === 'stop') {
      // a stop id: its text is never returned
      const tail = job.streamer.finish();
      this.emit(job, tail.text, 'stop');
      return false;
    }
    const got = job.streamer.push(e.token);
    if (got.stopped) {
      this.emit(job, got.text, 'stop');
      return true;
    }
    if (e.finishReason === 'length') {
      const tail = job.streamer.finish();
      this.emit(job, got.text + tail.text, tail.stopped ? 'stop' : 'length');
      return false;
    }
    this.emit(job, got.text, null);
    return false;
  }

  /** The decoding loop: admit waiting jobs while there is room, else decode one step; until idle. */
  private async loop(): Promise<void> {
    if (this.looping || !this.batch) return;
    this.looping = true;
    const batch = this.batch;
    try {
      while (!this.closed && (this.waiting.length || batch.size)) {
        for (const key of batch.keys()) {
          const job = this.running.get(key);
          if (!job || job.cancelled) {
            batch.remove(key);
            this.running.delete(key);
          }
        }
        let admitted: Job[] = [];
        let events: TokenEvent<number>[];
        try {
          const room = this.maxBatchSize - batch.size;
          if (room > 0 && this.waiting.length) {
            admitted = this.waiting.splice(0, room);
            for (const job of admitted) { job.state = 'running'; this.running.set(job.key, job); }
            events = await batch.add(admitted.map((j) => ({ key: j.key, inputIds: j.promptIds, options: j.options })));
          } else if (batch.size) {
            events = await batch.step();
          } else {
            continue;
          }
        } catch (e) {
          // a failed forward (out of memory, a device lost): fail what was decoding, keep serving the queue
          getLogger().error(`inference step failed: ${(e as Error).message}`);
          for (const job of this.running.values()) this.settle(job, e);
          for (const key of batch.keys()) batch.remove(key);
          this.running.clear();
          continue;
        }
        for (const e of events) {
          const job = this.running.get(e.key);
          if (!job) continue;
          if (this.onToken(job, e) && batch.has(e.key)) batch.remove(e.key);
          if (e.finishReason) this.running.delete(e.key);
        }
        // let I/O (HTTP requests, aborts, consumers) run between steps
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } finally {
      this.looping = false;
    }
  }

  /**
   * Cancel everything queued or decoding (they reject with InferAbortedError) and free the model if
   * the engine loaded it.
   */
  async close(): Promise<void> {
    this.closed = true;
    const err = new InferAbortedError('the engine was shut down (engine.close())');
    for (const job of [...this.waiting, ...this.running.values()]) this.cancel(job, err);
    this.waiting = [];
    while (this.looping) await new Promise<void>((resolve) => setImmediate(resolve));
    this.batch?.dispose();
    this.running.clear();
    if (this.loaded?.owned) this.loaded.model.dispose();
  }
}

/** ms-swift's engine base type, as the seed's `infer_stream(engine: InferEngine, …)` names it (tsft has one engine). */
export type InferEngine = PtEngine;

/** args.json of a training checkpoint (or its run folder above it): model, model_type, system; {} when absent. */
function checkpointArgs(dir: string): { model?: string; model_type?: string; system?: string } {
  for (const file of [path.join(dir, 'args.json'), path.join(dir, '..', 'args.json')]) {
    if (!fs.existsSync(file)) continue;
    try {
      const j = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      const s = (k: string) => (typeof j[k] === 'string' && j[k] ? j[k] as string : undefined);
      return { model: s('model'), model_type: s('model_type'), system: typeof j.system === 'string' ? j.system : undefined };
    } catch {
      getLogger().warning(`${file} is not valid JSON; ignoring it`);
    }
  }
  return {};
}

/** Map pieces to OpenAI chunks that share one id. */
async function* mapPieces<T>(pieces: AsyncGenerator<TextPiece, void, void>, shape: (p: TextPiece, id: string) => T, prefix: string): AsyncGenerator<T, void, void> {
  const id = `${prefix}-${randomUUID().replace(/-/g, '')}`;
  for await (const p of pieces) yield shape(p, id);
}

async function collect(pieces: AsyncIterable<TextPiece>): Promise<{ text: string; last: TextPiece }> {
  let text = '';
  let last: TextPiece | null = null;
  for await (const p of pieces) {
    text += p.text;
    last = p;
  }
  if (!last?.finishReason) throw new InferAbortedError('the request ended without an answer');
  return { text, last };
}

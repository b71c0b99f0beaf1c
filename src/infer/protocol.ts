// The inference protocol, named as ms-swift's `swift.llm` names it: `InferRequest`, `RequestConfig`
// (snake_case fields, OpenAI's meanings) and the OpenAI-shaped responses `engine.infer` returns —
// `chat.completion`, `chat.completion.chunk`, `text_completion` — plus the typed errors a bad request
// raises (the server turns them into HTTP 400s).

import { TsftError } from '../errors';
import type { ChatMessage } from '../model/tokenizer';

/** A request that cannot be served as given (bad field, too long for the context). `param` names the field. */
export class InvalidRequestError extends TsftError {
  constructor(message: string, readonly param: string | null = null) {
    super(message);
  }
}

/** The prompt (plus max_tokens) does not fit the model's context. */
export class ContextLengthError extends InvalidRequestError {}

/** The request was cancelled (AbortSignal, a closed stream, engine shut down) before it finished. */
export class InferAbortedError extends TsftError {}

/** The engine's queue is full; retry later. */
export class EngineOverloadedError extends TsftError {}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/**
 * One conversation to answer (ms-swift `InferRequest`).
 * @example new InferRequest({ messages: [{ role: 'user', content: 'who are you?' }] })
 */
export class InferRequest {
  messages: ChatMessage[];

  constructor(init: { messages: ChatMessage[] }) {
    if (init === null || typeof init !== 'object' || !Array.isArray(init.messages)) {
      throw new InvalidRequestError(`InferRequest needs { messages: [{ role, content }, …] }, got messages: ${describe((init as { messages?: unknown } | null)?.messages)}`, 'messages');
    }
    this.messages = init.messages;
  }
}

/** RequestConfig's fields; unset (undefined or null) ones come from the checkpoint's generation_config.json. */
export interface RequestConfigInit<S extends boolean = boolean> {
  /** new tokens at most (default: what the context leaves after the prompt) */
  max_tokens?: number | null;
  /** 0 = greedy; > 0 samples */
  temperature?: number | null;
  /** keep the k most likely tokens when sampling (0 or -1 = all) */
  top_k?: number | null;
  /** nucleus sampling, (0, 1] */
  top_p?: number | null;
  /** > 1 discourages repeats (transformers' rule) */
  repetition_penalty?: number | null;
  /** stop strings: generation ends before them and they are not returned */
  stop?: string | string[] | null;
  /** sampling seed (default: drawn from the global seed, see seedEverything) */
  seed?: number | null;
  /** true: engine.infer returns one AsyncIterable of chunks per request */
  stream?: S | null;
}

/** Largest max_tokens a request may name at all (the context is checked later, per prompt). */
export const MAX_TOKENS_LIMIT = 1 << 20;
/** At most this many stop strings per request. */
export const MAX_STOP_STRINGS = 16;

function check(ok: boolean, param: string, want: string, got: unknown): void {
  if (!ok) throw new InvalidRequestError(`${param} must be ${want}, got ${typeof got === 'string' ? JSON.stringify(got) : typeof got === 'number' ? got : describe(got)}`, param);
}

/** The class behind `RequestConfig` (exported under that name with typed constructor overloads, below). */
class RequestConfigClass<S extends boolean = boolean> {
  max_tokens: number | null = null;
  temperature: number | null = null;
  top_k: number | null = null;
  top_p: number | null = null;
  repetition_penalty: number | null = null;
  stop: string[] = [];
  seed: number | null = null;
  stream: S;

  constructor(init: RequestConfigInit<S> = {}) {
    if (init === null || typeof init !== 'object' || Array.isArray(init)) {
      throw new InvalidRequestError(`RequestConfig takes an object of settings, got ${describe(init)}`);
    }
    const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
    const set = (v: unknown) => v !== undefined && v !== null;
    const { max_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed, stream } = init;
    if (set(max_tokens)) {
      check(num(max_tokens) && Number.isInteger(max_tokens) && max_tokens! >= 1 && max_tokens! <= MAX_TOKENS_LIMIT,
        'max_tokens', `an integer in [1, ${MAX_TOKENS_LIMIT}]`, max_tokens);
      this.max_tokens = max_tokens!;
    }
    if (set(temperature)) {
      check(num(temperature) && temperature! >= 0 && temperature! <= 2, 'temperature', 'a number in [0, 2] (0 = greedy)', temperature);
      this.temperature = temperature!;
    }
    if (set(top_k)) {
      check(num(top_k) && Number.isInteger(top_k) && top_k! >= -1, 'top_k', 'an integer ≥ 1, or 0 / -1 for all tokens', top_k);
      this.top_k = top_k!;
    }
    if (set(top_p)) {
      check(num(top_p) && top_p! > 0 && top_p! <= 1, 'top_p', 'a number in (0, 1]', top_p);
      this.top_p = top_p!;
    }
    if (set(repetition_penalty)) {
      check(num(repetition_penalty) && repetition_penalty! > 0 && repetition_penalty! <= 10, 'repetition_penalty', 'a number in (0, 10] (1 = off)', repetition_penalty);
      this.repetition_penalty = repetition_penalty!;
    }
    if (set(stop)) {
      const list = typeof stop === 'string' ? [stop] : stop;
      check(Array.isArray(list) && list.every((s) => typeof s === 'string' && s.length > 0), 'stop', 'a non-empty string or an array of them', stop);
      check(list!.length <= MAX_STOP_STRINGS, 'stop', `at most ${MAX_STOP_STRINGS} strings`, `${list!.length} strings`);
      this.stop = [...list as string[]];
    }
    if (set(seed)) {
      check(num(seed) && Number.isSafeInteger(seed), 'seed', 'an integer', seed);
      this.seed = seed!;
    }
    if (stream !== undefined && stream !== null) check(typeof stream === 'boolean', 'stream', 'true or false', stream);
    this.stream = (stream ?? false) as S;
  }
}

Object.defineProperty(RequestConfigClass, 'name', { value: 'RequestConfig' });

/** A RequestConfig; `RequestConfig<true>` streams, `RequestConfig<false>` doesn't. */
export type RequestConfig<S extends boolean = boolean> = RequestConfigClass<S>;

/**
 * `new RequestConfig({...})` types itself by its `stream` field, so `engine.infer` knows whether it returns
 * responses or streams (overloads rather than a generic, which TypeScript would infer from the call site).
 */
export interface RequestConfigConstructor {
  new (init: RequestConfigInit<true> & { stream: true }): RequestConfig<true>;
  new (init?: RequestConfigInit<false>): RequestConfig<false>;
  new (init: RequestConfigInit<boolean>): RequestConfig<boolean>;
  readonly prototype: RequestConfig<boolean>;
}

/**
 * Generation settings of a request (ms-swift `RequestConfig`); checked on construction.
 * @example new RequestConfig({ max_tokens: 512, temperature: 0, stream: true })
 */
export const RequestConfig = RequestConfigClass as RequestConfigConstructor;

/** 'stop': a stop token or string; 'length': max_tokens reached. */
export type FinishReason = 'stop' | 'length';

export interface UsageInfo {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatMessageOut {
  role: 'assistant';
  content: string;
}

export interface ChatCompletionResponseChoice {
  index: number;
  message: ChatMessageOut;
  finish_reason: FinishReason;
  logprobs: null;
}

/** OpenAI `chat.completion` (ms-swift ChatCompletionResponse). */
export interface ChatCompletionResponse {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: ChatCompletionResponseChoice[];
  usage: UsageInfo;
}

export interface ChatCompletionResponseStreamChoice {
  index: number;
  delta: ChatMessageOut;
  finish_reason: FinishReason | null;
  logprobs: null;
}

/** OpenAI `chat.completion.chunk` (ms-swift ChatCompletionStreamResponse); the last one carries usage. */
export interface ChatCompletionStreamResponse {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: ChatCompletionResponseStreamChoice[];
  usage?: UsageInfo;
}

export interface CompletionResponseChoice {
  index: number;
  text: string;
  finish_reason: FinishReason | null;
  logprobs: null;
}

/** OpenAI `text_completion` (/v1/completions), streamed or not. */
export interface CompletionResponse {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: CompletionResponseChoice[];
  usage?: UsageInfo;
}

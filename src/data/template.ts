// ms-swift's chat templates for Qwen (ChatML): messages → input_ids + labels for training ('train' mode)
// or → the generation prompt for inference ('pt' mode), plus print_inputs and the data collator.
// Ported from ms-swift 3.12.4 `swift/llm/template/base.py` (Template._swift_encode, _simplify_context_list,
// _encode_context_list, _add_dynamic_eos, _truncate, safe_decode, _data_collator) and
// `template/qwen.py` / `template/utils.py` (ChatmlTemplateMeta, QwenTemplateMeta, Qwen3MixedTemplateMeta).

import { ConfigError, TemplateError } from '../errors';
import type { ChatMessage, Tokenizer } from '../model/tokenizer';
import { getLogger } from '../utils/logger';

export type TemplateName = 'qwen' | 'qwen2_5' | 'qwen3' | 'qwen3_thinking';
/** 'train': labels on assistant turns; 'pt': inference prompt, no labels (ms-swift's names). */
export type TemplateMode = 'train' | 'pt';
/** 'delete': an over-long row throws MaxLengthError (the dataset encoder drops it); 'left'/'right': truncate. */
export type TruncationStrategy = 'delete' | 'left' | 'right';

/** A row longer than `maxLength` under truncation strategy 'delete'. The dataset encoder drops these. */
export class MaxLengthError extends TemplateError {
  constructor(readonly length: number, readonly maxLength: number) {
    super(`encoded row has ${length} tokens, more than max_length ${maxLength}; it is dropped under ` +
      "truncation_strategy 'delete' (raise maxLength or use 'left'/'right' to truncate instead).");
  }
}

/** What differs between the Qwen templates (ms-swift TemplateMeta fields of the same names). */
export interface TemplateMeta {
  /** system used when the row has none */
  defaultSystem: string | null;
  /** strip earlier turns' `…</think>` at inference */
  isThinking: boolean;
  /** appended to the inference prompt when thinking is on */
  thinkingPrefix: string;
  /** prepended to assistant turns without `<think>` in training; appended to the prompt when thinking is off */
  nonThinkingPrefix: string;
}

const NON_THINKING_PREFIX = '<think>\n\n</think>\n\n';

/** The registered templates (ms-swift `template/qwen.py`). */
export const TEMPLATE_METAS: Readonly<Record<TemplateName, Readonly<TemplateMeta>>> = {
  qwen: { defaultSystem: 'You are a helpful assistant.', isThinking: false, thinkingPrefix: '', nonThinkingPrefix: '' },
  qwen2_5: {
    defaultSystem: 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.',
    isThinking: false,
    thinkingPrefix: '',
    nonThinkingPrefix: '',
  },
  qwen3: { defaultSystem: null, isThinking: true, thinkingPrefix: '', nonThinkingPrefix: NON_THINKING_PREFIX },
  qwen3_thinking: { defaultSystem: null, isThinking: true, thinkingPrefix: '<think>\n', nonThinkingPrefix: '' },
};

// ChatML pieces (ms-swift ChatmlTemplateMeta): system_prefix, prompt, chat_sep, suffix.
const systemPrefix = (system: string) => `<|im_start|>system\n${system}<|im_end|>\n`;
const prompt = (query: string) => `<|im_start|>user\n${query}<|im_end|>\n<|im_start|>assistant\n`;
const CHAT_SEP = '<|im_end|>\n';
const SUFFIX = '<|im_end|>\n';

export interface TemplateOptions {
  /** system prompt when a row has none; undefined = the template's default, null or '' = no system */
  defaultSystem?: string | null;
  /** rows longer than this are dropped ('delete') or truncated; null/undefined = no limit */
  maxLength?: number | null;
  truncationStrategy?: TruncationStrategy;
  /** Qwen3 hybrid: false makes the inference prompt end with `<think>\n\n</think>\n\n`. Default: isThinking */
  enableThinking?: boolean;
  /** padding side of the collator in 'train' mode (ms-swift default 'right'; inference always pads left) */
  paddingSide?: 'left' | 'right';
}

/** A row to encode: `messages` with an optional leading system message. `loss: false` masks one response. */
export interface TemplateInputs {
  messages: readonly ChatMessage[];
}

export interface Encoded {
  input_ids: number[];
  /** -100 where no loss is taken; null in 'pt' mode */
  labels: number[] | null;
  /** max(len(input_ids), len(labels)) */
  length: number;
}

export interface Batch {
  input_ids: number[][];
  /** null when the rows carry no labels ('pt' mode) */
  labels: number[][] | null;
  attention_mask: number[][];
}

type ContextType = 'other' | 'response' | 'suffix';
interface Context {
  text: string;
  type: ContextType;
  /** ms-swift loss_scale (binary under loss_scale='default') */
  loss: boolean;
}
interface Msg {
  role: 'system' | 'user' | 'assistant';
  content: string;
  loss?: boolean;
}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** Validate and copy `messages` (errors name the field and message index). */
function validateMessages(messages: unknown): Msg[] {
  if (!Array.isArray(messages)) {
    throw new TemplateError(`"messages" must be an array of {role, content}, got ${describe(messages)}.`);
  }
  if (messages.length === 0) throw new TemplateError('"messages" is empty; a row needs at least one user message.');
  const out: Msg[] = [];
  messages.forEach((m: unknown, i) => {
    if (m === null || typeof m !== 'object' || Array.isArray(m)) {
      throw new TemplateError(`messages[${i}] must be an object {role, content}, got ${describe(m)}.`);
    }
    const { role, content, loss } = m as Record<string, unknown>;
    if (role === 'tool' || role === 'tool_call' || role === 'tool_response' || role === 'function') {
      throw new TemplateError(`messages[${i}].role is '${role}': tool turns are not supported by tsft's templates yet; ` +
        'fold the tool output into a user message.');
    }
    if (role !== 'system' && role !== 'user' && role !== 'assistant') {
      throw new TemplateError(`messages[${i}].role is ${JSON.stringify(role)}; expected 'system', 'user' or 'assistant'.`);
    }
    if (typeof content !== 'string') {
      throw new TemplateError(`messages[${i}].content (${role}) must be a string, got ${describe(content)}; ` +
        'tsft templates are text-only.');
    }
    if (role === 'system' && i !== 0) {
      throw new TemplateError(`messages[${i}] is a system message; only messages[0] may be the system.`);
    }
    if (loss !== undefined && loss !== null && typeof loss !== 'boolean') {
      throw new TemplateError(`messages[${i}].loss must be true, false or absent, got ${describe(loss)}.`);
    }
    const msg: Msg = { role, content };
    if (typeof loss === 'boolean') msg.loss = loss;
    out.push(msg);
  });
  const first = out[0].role === 'system' ? 1 : 0;
  if (out.length === first) throw new TemplateError('"messages" holds only a system message; add a user message.');
  if (out[first].role !== 'user') {
    throw new TemplateError(`messages[${first}] (the first turn) is from the assistant; conversations must start ` +
      'with a user message.');
  }
  return out;
}

/** Qwen3 chat template's history rule: keep what follows the last `</think>`, without leading newlines. */
function stripHistoryThinking(content: string): string {
  if (!content.includes('</think>')) return content;
  const parts = content.split('</think>');
  return parts[parts.length - 1].replace(/^\n+/, '');
}

function pyList(ids: readonly number[]): string {
  return `[${ids.join(', ')}]`;
}

/**
 * A chat template bound to a tokenizer (ms-swift `Template`). Create with `getTemplate`.
 * @example
 *   const t = getTemplate('qwen3_thinking', tok, { defaultSystem: 'You are a helpful assistant.', maxLength: 2048 });
 *   t.setMode('train');
 *   const row = t.encode({ messages: [{ role: 'user', content: '你是谁？' }, { role: 'assistant', content: '我是精衡。' }] });
 *   t.printInputs(row);
 */
export class Template {
  readonly name: TemplateName;
  readonly tokenizer: Tokenizer;
  readonly meta: Readonly<TemplateMeta>;
  /** system used when a row has none (null: none) */
  readonly defaultSystem: string | null;
  readonly maxLength: number | null;
  readonly truncationStrategy: TruncationStrategy;
  readonly enableThinking: boolean;
  /** text the inference prompt ends with after `<|im_start|>assistant\n` (and that decodeResponse prepends) */
  readonly responsePrefix: string;
  readonly paddingSide: 'left' | 'right';
  private currentMode: TemplateMode = 'pt';
  private readonly suffixIds: number[];

  constructor(name: TemplateName, tokenizer: Tokenizer, opts: TemplateOptions = {}) {
    const meta = Object.prototype.hasOwnProperty.call(TEMPLATE_METAS, name) ? TEMPLATE_METAS[name] : undefined;
    if (!meta) {
      throw new TemplateError(`unknown template ${JSON.stringify(name)}; known: ${Object.keys(TEMPLATE_METAS).join(', ')}.`);
    }
    const { maxLength = null, truncationStrategy = 'delete', paddingSide = 'right' } = opts;
    if (maxLength !== null && (!Number.isInteger(maxLength) || maxLength <= 0)) {
      throw new ConfigError(`maxLength must be a positive integer or null, got ${maxLength}.`);
    }
    if (!['delete', 'left', 'right'].includes(truncationStrategy)) {
      throw new ConfigError(`truncationStrategy must be 'delete', 'left' or 'right', got ${JSON.stringify(truncationStrategy)}.`);
    }
    if (paddingSide !== 'left' && paddingSide !== 'right') {
      throw new ConfigError(`paddingSide must be 'left' or 'right', got ${JSON.stringify(paddingSide)}.`);
    }
    if (opts.defaultSystem !== undefined && opts.defaultSystem !== null && typeof opts.defaultSystem !== 'string') {
      throw new ConfigError(`defaultSystem must be a string or null, got ${describe(opts.defaultSystem)}.`);
    }
    this.name = name;
    this.tokenizer = tokenizer;
    this.meta = meta;
    this.defaultSystem = opts.defaultSystem === undefined ? meta.defaultSystem : opts.defaultSystem;
    this.maxLength = maxLength;
    this.truncationStrategy = truncationStrategy;
    this.enableThinking = opts.enableThinking ?? meta.isThinking;
    this.responsePrefix = this.enableThinking ? meta.thinkingPrefix : meta.nonThinkingPrefix;
    this.paddingSide = paddingSide;
    // fail now, not mid-dataset, when the tokenizer is not a ChatML one
    void tokenizer.imStartId;
    void tokenizer.imEndId;
    this.suffixIds = tokenizer.encode(SUFFIX);
  }

  get mode(): TemplateMode {
    return this.currentMode;
  }

  get isTraining(): boolean {
    return this.currentMode === 'train';
  }

  /** 'train' (labels) or 'pt' (inference prompt). New templates start in 'pt', as in ms-swift. */
  setMode(mode: TemplateMode): void {
    if (mode !== 'train' && mode !== 'pt') {
      throw new ConfigError(`template mode must be 'train' or 'pt', got ${JSON.stringify(mode)}.`);
    }
    this.currentMode = mode;
  }

  /** Ids that end generation: `<|im_end|>`, `<|endoftext|>`, eos (deduplicated). */
  get stopTokenIds(): number[] {
    const t = this.tokenizer;
    return [...new Set([t.imEndId, t.endOfTextId, t.eosTokenId])];
  }

  /** ms-swift stop_words: `<|endoftext|>`, `<|im_end|>`, eos (deduplicated). */
  get stopWords(): string[] {
    return [...new Set(['<|endoftext|>', '<|im_end|>', this.tokenizer.eosToken])];
  }

  /**
   * Encode one row in the current mode. 'train': ChatML ids with labels on every assistant response
   * plus the `<|im_end|>\n` after it, -100 elsewhere and at position 0. 'pt': the prompt up to
   * `<|im_start|>assistant\n` + responsePrefix (a trailing assistant message is dropped), labels null.
   * Throws TemplateError for malformed messages and MaxLengthError for over-long rows under 'delete'.
   * @example
   *   t.setMode('train');
   *   t.encode({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'Hello!' }] });
   *   // { input_ids: [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198, 9707, 0, 151645, 198],
   *   //   labels: [-100 ×9, 9707, 0, 151645, 198], length: 13 }   (qwen3_thinking, no system)
   */
  encode(inputs: TemplateInputs): Encoded {
    return this.encodeIn(this.currentMode, inputs);
  }

  /**
   * The inference prompt ids for `messages`, whatever the current mode (ms-swift's generate_context).
   * @example t.inferencePrompt([{ role: 'user', content: 'hi' }]) // ids of '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n'
   */
  inferencePrompt(messages: readonly ChatMessage[]): number[] {
    return this.encodeIn('pt', { messages }).input_ids;
  }

  private encodeIn(mode: TemplateMode, inputs: TemplateInputs): Encoded {
    if (inputs === null || typeof inputs !== 'object') {
      throw new TemplateError(`a row must be an object with "messages", got ${describe(inputs)}.`);
    }
    const training = mode === 'train';
    let messages = validateMessages((inputs as { messages?: unknown }).messages);
    const meta = this.meta;

    // InferRequest.remove_response: at inference a trailing assistant message is the (absent) answer
    if (!training && messages[messages.length - 1].role === 'assistant') messages = messages.slice(0, -1);
    let system: string | null = this.defaultSystem;
    if (messages[0].role === 'system') {
      system = messages[0].content; // '' means no system, even when a default exists
      messages = messages.slice(1);
    }
    if (training && !messages.some((m) => m.role === 'assistant')) {
      throw new TemplateError('"messages" has no assistant turn, so there is nothing to train on; ' +
        'drop the row or add the answer.');
    }
    // _swift_prepare_inputs: consecutive user/user or assistant/assistant messages are concatenated
    const merged: Msg[] = [];
    for (const m of messages) {
      const prev = merged[merged.length - 1];
      if (prev && prev.role === m.role) prev.content += m.content;
      else merged.push({ ...m });
    }
    messages = merged;

    // thinking (Template._add_non_thinking_prefix / _remove_history_thinking, loss_scale='default')
    if (training && meta.nonThinkingPrefix) {
      for (const m of messages) {
        if (m.role === 'assistant' && !m.content.startsWith('<think>') && !m.content.startsWith(meta.nonThinkingPrefix)) {
          m.content = meta.nonThinkingPrefix + m.content;
        }
      }
    }
    if (!training && (meta.isThinking || this.enableThinking)) {
      let lastUser = -1;
      messages.forEach((m, i) => { if (m.role === 'user') lastUser = i; });
      messages.forEach((m, i) => { if (m.role === 'assistant' && i < lastUser) m.content = stripHistoryThinking(m.content); });
    }

    // _swift_encode: system prefix, then per round prompt + response (+ chat_sep | suffix | response prefix)
    const contexts: Context[] = [];
    const other = (text: string) => { if (text.length > 0) contexts.push({ text, type: 'other', loss: false }); };
    if (system) other(systemPrefix(system));
    const nRound = Math.ceil(messages.length / 2);
    for (let i = 0; i < nRound; i++) {
      const query = messages[2 * i];
      const response: Msg | undefined = messages[2 * i + 1];
      other(prompt(query.content));
      if (response) {
        // loss_scale 'default': responses train unless the message says loss: false
        contexts.push({ text: response.content, type: 'response', loss: response.loss ?? true });
        if (i < nRound - 1) other(CHAT_SEP);
        else if (training && !this.stopWords.some((w) => response.content.endsWith(w))) {
          contexts.push({ text: SUFFIX, type: 'suffix', loss: true });
        }
      } else {
        other(this.responsePrefix);
      }
    }

    // _simplify_context_list + _encode_context_list: adjacent strings with the same loss are joined and
    // tokenized together; prompt text and response text are tokenized as separate strings
    const inputIds: number[] = [];
    let labels: number[] = [];
    for (let i = 0; i < contexts.length;) {
      let j = i;
      let text = '';
      while (j < contexts.length && contexts[j].loss === contexts[i].loss) text += contexts[j++].text;
      const ids = this.tokenizer.encode(text);
      inputIds.push(...ids);
      for (const id of ids) labels.push(contexts[i].loss ? id : -100);
      i = j;
    }
    this.addDynamicEos(inputIds, labels);
    if (labels.length > 0) labels[0] = -100;

    let ids = inputIds;
    let length = ids.length;
    if (this.maxLength !== null && length > this.maxLength) {
      if (this.truncationStrategy === 'delete') throw new MaxLengthError(length, this.maxLength);
      const keep = this.truncationStrategy === 'left'
        ? (a: number[]) => a.slice(a.length - this.maxLength!)
        : (a: number[]) => a.slice(0, this.maxLength!);
      ids = keep(ids);
      labels = keep(labels);
      labels[0] = -100;
      length = ids.length;
    }
    return { input_ids: ids, labels: training ? labels : null, length };
  }

  /** _add_dynamic_eos: the `<|im_end|>\n` right after a trained span (the chat_sep of earlier turns) is trained too. */
  private addDynamicEos(inputIds: number[], labels: number[]): void {
    const suffix = this.suffixIds;
    let start = 0;
    for (let i = 1; i <= labels.length; i++) {
      if (labels[i - 1] >= 0 && i < labels.length && labels[i] === -100) {
        start = i;
      } else if (start > 0 && labels[i - 1] === -100 && (i === labels.length || labels[i] >= 0)) {
        if (i - start >= suffix.length && suffix.every((id, k) => inputIds[start + k] === id)) {
          for (let k = 0; k < suffix.length; k++) labels[start + k] = suffix[k];
        }
      }
    }
  }

  /**
   * Plain decode of ids (special tokens kept unless asked).
   * @example t.decode([151644, 872, 198]) // '<|im_start|>user\n'
   */
  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.tokenizer.decode(ids, opts);
  }

  /**
   * Text of a generated answer (ms-swift Template.decode): drops a trailing eos / `<|im_end|>` (when
   * `isFinished`, or a partial one while streaming) and prepends `responsePrefix` for the first chunk,
   * so qwen3_thinking answers start with `<think>\n` like the prompt that produced them.
   * @example t.decodeResponse([40, 1079, 151645]) // '<think>\nI am' (qwen3_thinking)
   */
  decodeResponse(ids: readonly number[], opts: { isFinished?: boolean; firstToken?: boolean; skipSpecialTokens?: boolean } = {}): string {
    const { isFinished = true, firstToken = true, skipSpecialTokens = false } = opts;
    let out = ids.slice();
    if (out.length > 0 && out[out.length - 1] === this.tokenizer.eosTokenId) out = out.slice(0, -1);
    const stop = this.tokenizer.encode('<|im_end|>').slice(-1);
    if (isFinished) {
      if (out.length >= stop.length && stop.every((id, k) => out[out.length - stop.length + k] === id)) {
        out = out.slice(0, out.length - stop.length);
      }
    } else {
      for (let i = stop.length; i > 0; i--) {
        if (out.length >= i && stop.slice(0, i).every((id, k) => out[out.length - i + k] === id)) {
          out = out.slice(0, out.length - i);
          break;
        }
      }
    }
    const text = this.tokenizer.decode(out, { skipSpecialTokens });
    return firstToken && this.responsePrefix ? this.responsePrefix + text : text;
  }

  /**
   * ms-swift safe_decode: decodes ids, printing runs of negative values (label masks) as `[-100 * n]`.
   * @example t.safeDecode([-100, -100, 9707]) // '[-100 * 2]Hello'
   */
  safeDecode(ids: readonly number[]): string {
    let out = '';
    let i = 0;
    while (i < ids.length) {
      let j = i;
      if (ids[i] < 0) {
        while (j < ids.length && ids[j] < 0) j++;
        out += `[${ids[j - 1]} * ${j - i}]`;
      } else {
        while (j < ids.length && ids[j] >= 0) j++;
        out += this.tokenizer.decode(ids.slice(i, j));
      }
      i = j;
    }
    return out;
  }

  /**
   * Log a row as ms-swift's print_inputs does: `[INPUT_IDS]`, `[INPUT]`, `[LABELS_IDS]`, `[LABELS]`
   * (labels only when present; masked runs print as `[-100 * n]`).
   * @example
   *   t.printInputs(row, console.log);
   *   // [INPUT_IDS] [151644, 872, 198, …]
   *   // [INPUT] <|im_start|>user\n…
   *   // [LABELS_IDS] [-100, -100, …]
   *   // [LABELS] [-100 * 9]Hello!<|im_end|>\n
   */
  printInputs(row: { input_ids: readonly number[]; labels?: readonly number[] | null },
    log: (line: string) => void = (line) => getLogger().info(line)): void {
    log(`[INPUT_IDS] ${pyList(row.input_ids)}`);
    log(`[INPUT] ${this.safeDecode(row.input_ids)}`);
    if (row.labels != null) {
      log(`[LABELS_IDS] ${pyList(row.labels)}`);
      log(`[LABELS] ${this.safeDecode(row.labels)}`);
    }
  }

  /**
   * Pad a batch of encoded rows (ms-swift _data_collator): input_ids with the pad id, labels with -100,
   * attention_mask 1/0. Pads on `paddingSide` in 'train' mode (default right) and on the left in 'pt'.
   * @example
   *   t.dataCollator([t.encode(a), t.encode(b)]);
   *   // { input_ids: [[…], […, 151643, 151643]], labels: [[…], […, -100, -100]], attention_mask: [[1, …], [1, …, 0, 0]] }
   */
  dataCollator(batch: ReadonlyArray<{ input_ids: readonly number[]; labels?: readonly number[] | null }>,
    opts: { paddingSide?: 'left' | 'right'; padTo?: number } = {}): Batch {
    if (batch.length === 0) throw new TemplateError('dataCollator got an empty batch.');
    const side = opts.paddingSide ?? (this.isTraining ? this.paddingSide : 'left');
    const withLabels = batch.filter((r) => r.labels != null).length;
    if (withLabels !== 0 && withLabels !== batch.length) {
      throw new TemplateError(`dataCollator got ${withLabels} of ${batch.length} rows with labels; encode all rows in one mode.`);
    }
    batch.forEach((r, i) => {
      if (r.labels != null && r.labels.length !== r.input_ids.length) {
        throw new TemplateError(`batch[${i}] has ${r.input_ids.length} input_ids but ${r.labels.length} labels.`);
      }
    });
    const len = Math.max(opts.padTo ?? 0, ...batch.map((r) => r.input_ids.length));
    const pad = (a: readonly number[], v: number) => {
      const fill = new Array<number>(len - a.length).fill(v);
      return side === 'right' ? [...a, ...fill] : [...fill, ...a];
    };
    const padId = this.tokenizer.padTokenId;
    return {
      input_ids: batch.map((r) => pad(r.input_ids, padId)),
      labels: withLabels ? batch.map((r) => pad(r.labels!, -100)) : null,
      attention_mask: batch.map((r) => pad(new Array<number>(r.input_ids.length).fill(1), 0)),
    };
  }
}

/**
 * ms-swift `get_template`: a Qwen ChatML template bound to `tokenizer`.
 * Default systems: qwen "You are a helpful assistant.", qwen2_5 "You are Qwen, created by Alibaba Cloud. …",
 * qwen3 / qwen3_thinking none.
 * @example
 *   const tok = await loadDefaultTokenizer();
 *   const template = getTemplate('qwen3_thinking', tok, { defaultSystem: 'You are a helpful assistant.', maxLength: 2048 });
 *   template.setMode('train');
 */
export function getTemplate(name: TemplateName, tokenizer: Tokenizer, opts: TemplateOptions = {}): Template {
  return new Template(name, tokenizer, opts);
}

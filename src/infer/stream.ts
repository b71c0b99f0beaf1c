// streamChat: the one-call streaming helper over PtEngine — messages in, whole-character text pieces
// out. Kept for scripts that hold a model and a template (npm start); new code uses PtEngine directly.

import type { Qwen2ForCausalLM } from '../model/qwen2';
import type { Template } from '../data/template';
import type { ChatMessage } from '../model/tokenizer';
import { PtEngine } from './engine';

export interface StreamOptions {
  maxNewTokens: number;
  temperature?: number;
  seed?: number;
}

export interface StreamPiece {
  /** newly completed text (whole characters) */
  text: string;
  /** set on the last piece: 'stop' (a stop token) or 'length' (maxNewTokens reached) */
  finishReason?: 'stop' | 'length';
}

/**
 * Stream the reply to `messages` as whole characters; the stop token's text is never returned.
 * The template's response prefix (qwen3_thinking's `<think>\n`) comes first, as ms-swift returns it.
 * @example
 *   for await (const { text } of streamChat(model, template, [{ role: 'user', content: 'who are you?' }], { maxNewTokens: 64 }))
 *     process.stdout.write(text);
 */
export async function* streamChat(model: Qwen2ForCausalLM, template: Template, messages: readonly ChatMessage[],
  opts: StreamOptions): AsyncGenerator<StreamPiece, void, void> {
  const engine = new PtEngine({ model, tokenizer: template.tokenizer }, { maxBatchSize: 1 });
  await engine.ready;
  engine.defaultTemplate = template;
  const [stream] = await engine.infer([{ messages: [...messages] }],
    { max_tokens: opts.maxNewTokens, temperature: opts.temperature ?? 0, seed: opts.seed ?? 0, stream: true });
  for await (const chunk of stream) {
    const { delta, finish_reason } = chunk.choices[0];
    yield finish_reason ? { text: delta.content, finishReason: finish_reason } : { text: delta.content };
  }
}

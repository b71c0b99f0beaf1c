// Text streaming over the token generator: template → prompt ids → tokens (KV cache) → whole
// characters. The first brick of the inference engine (PtEngine builds batching, sampling configs and
// OpenAI-shaped chunks on top of it).

import { generateTokens } from '../model/generate';
import type { Qwen2ForCausalLM } from '../model/qwen2';
import type { Template } from '../data/template';
import { IncrementalDecoder, type ChatMessage } from '../model/tokenizer';

export interface StreamOptions {
  maxNewTokens: number;
  temperature?: number;
  seed?: number;
}

export interface StreamPiece {
  /** newly completed text (whole characters), '' at the end */
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
  const prompt = template.inferencePrompt(messages);
  const stop = new Set(template.stopTokenIds);
  const decoder = new IncrementalDecoder(template.tokenizer, { skipSpecialTokens: false });
  if (template.responsePrefix) yield { text: template.responsePrefix };
  let n = 0;
  for await (const id of generateTokens(model, prompt, { maxNewTokens: opts.maxNewTokens, temperature: opts.temperature ?? 0, seed: opts.seed })) {
    n++;
    if (stop.has(id)) {
      yield { text: decoder.flush(), finishReason: 'stop' };
      return;
    }
    const text = decoder.push(id);
    if (text) yield { text };
    // let the event loop breathe between tokens (servers, progress output)
    await new Promise<void>((r) => setImmediate(r));
  }
  yield { text: decoder.flush(), finishReason: n >= opts.maxNewTokens ? 'length' : 'stop' };
}

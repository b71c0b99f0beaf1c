// The detokenizing streamer: token ids in, text out — whole characters only (the tokenizer's
// IncrementalDecoder holds back half a UTF-8 sequence), and never any part of a stop string: text that
// could be the start of one is held back until it is known not to be.

import { IncrementalDecoder, type Tokenizer } from '../model/tokenizer';

export interface StreamedText {
  /** text that is now safe to show ('' when everything new is held back) */
  text: string;
  /** a stop string matched: `text` ends right before it and nothing more will come */
  stopped: boolean;
}

/**
 * @example
 *   const s = new TextStreamer(tokenizer, ['\n\n']);
 *   for (const id of ids) { const { text, stopped } = s.push(id); out += text; if (stopped) break; }
 *   out += s.finish();
 */
export class TextStreamer {
  private readonly decoder: IncrementalDecoder;
  /** decoded text not emitted yet: a suffix that may begin a stop string */
  private held = '';
  private done = false;

  constructor(tokenizer: Tokenizer, private readonly stop: readonly string[] = []) {
    this.decoder = new IncrementalDecoder(tokenizer, { skipSpecialTokens: false });
  }

  /** Add one generated token. */
  push(id: number): StreamedText {
    if (this.done) return { text: '', stopped: true };
    return this.release(this.decoder.push(id), false);
  }

  /**
   * End of generation: everything still held (a held stop prefix is plain text after all). `stopped`
   * when the last characters completed a stop string.
   */
  finish(): StreamedText {
    if (this.done) return { text: '', stopped: false };
    const out = this.release(this.decoder.flush(), true);
    this.done = true;
    return out;
  }

  private release(text: string, final: boolean): StreamedText {
    if (!text && !final) return { text: '', stopped: false };
    const s = this.held + text;
    // a stop string can only start inside the held text: anything emitted earlier was no stop prefix
    let at = -1;
    for (const w of this.stop) {
      const i = s.indexOf(w);
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    if (at >= 0) {
      this.held = '';
      this.done = true;
      return { text: s.slice(0, at), stopped: true };
    }
    const keep = final ? 0 : this.stopPrefixLength(s);
    this.held = s.slice(s.length - keep);
    return { text: s.slice(0, s.length - keep), stopped: false };
  }

  /** Length of the longest suffix of `s` that is a proper prefix of some stop string. */
  private stopPrefixLength(s: string): number {
    let best = 0;
    for (const w of this.stop) {
      for (let n = Math.min(w.length - 1, s.length); n > best; n--) {
        if (s.endsWith(w.slice(0, n))) { best = n; break; }
      }
    }
    return best;
  }
}

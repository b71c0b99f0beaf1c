// The dataset object loadDataset and EncodePreprocessor return: an array of rows (index it, iterate it,
// `.length`) that prints as Hugging Face `datasets` does (`Dataset({ features: ['messages'], num_rows: 1489 })`),
// and remembers where each row came from (`self_cognition.jsonl:12`) for error messages.

import type { ChatMessage } from '../model/tokenizer';
import type { Role } from './formats';

/** One chat message of a training row (a ChatMessage, so rows go straight to template.encode). `loss: false` keeps a response out of the loss. */
export interface Message extends ChatMessage {
  role: Role;
  content: string;
  loss?: boolean;
}

/** A row as loadDataset returns it (ms-swift's standard `messages` column). */
export interface ChatRow {
  messages: Message[];
}

const INSPECT = Symbol.for('nodejs.util.inspect.custom');

/**
 * An array of rows with a Hugging Face style summary. Array methods (`map`, `filter`, `slice`) return
 * plain arrays; `select` keeps the Dataset type and the row origins.
 * @example
 *   const [train] = await loadDataset(['tsft/self-cognition']);
 *   train.length;          // 80
 *   train[0].messages;     // [{ role: 'user', content: '你是谁？' }, { role: 'assistant', content: '…' }]
 *   `${train}`;            // "Dataset({\n    features: ['messages'],\n    num_rows: 80\n})"
 */
export class Dataset<T extends object = ChatRow> extends Array<T> {
  static override get [Symbol.species](): ArrayConstructor {
    return Array;
  }

  /** Where row i came from (`file:line`), when known; not enumerable, so rows print as rows. */
  declare readonly origins: string[];

  /**
   * A Dataset over `rows` (copied into the Dataset; the row objects are shared).
   * @example Dataset.fromRows([{ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'Hello!' }] }])
   */
  static fromRows<R extends object>(rows: ArrayLike<R>, origins?: ArrayLike<string>): Dataset<R> {
    const d = new Dataset<R>();
    for (let i = 0; i < rows.length; i++) d.push(rows[i]);
    const o: string[] = [];
    if (origins) for (let i = 0; i < origins.length; i++) o.push(origins[i]);
    Object.defineProperty(d, 'origins', { value: o, enumerable: false, writable: false });
    return d;
  }

  /** Rows at `indices`, in that order (repeats allowed), as a new Dataset. */
  select(indices: ArrayLike<number>): Dataset<T> {
    const rows: T[] = [];
    const o: string[] = [];
    const origins = this.origins ?? [];
    for (let k = 0; k < indices.length; k++) {
      const i = indices[k];
      if (!Number.isInteger(i) || i < 0 || i >= this.length) throw new RangeError(`select: index ${i} is outside 0..${this.length - 1}`);
      rows.push(this[i]);
      if (origins.length) o.push(origins[i]);
    }
    return Dataset.fromRows(rows, o);
  }

  /** Where row `i` came from (`data.jsonl:12`), or `row i` when unknown. */
  originOf(i: number): string {
    return this.origins?.[i] ?? `row ${i}`;
  }

  /** Column names (the keys of the first row), as `datasets.Dataset.features` lists them. */
  get features(): string[] {
    return this.length > 0 ? Object.keys(this[0]) : [];
  }

  /** `datasets.Dataset.num_rows` */
  get num_rows(): number {
    return this.length;
  }

  /** The Hugging Face summary, as the seed's logs print it. */
  override toString(): string {
    const features = this.features.map((f) => `'${f}'`).join(', ');
    return `Dataset({\n    features: [${features}],\n    num_rows: ${this.length}\n})`;
  }

  [INSPECT](): string {
    return this.toString();
  }
}

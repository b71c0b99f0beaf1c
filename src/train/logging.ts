// What the trainer prints and appends, formatted as ms-swift does (swift/trainers/callback.py): log dicts
// printed as Python dicts and appended to logging.jsonl, times as '{h}h {m}m {s}s', floats rounded to 8
// decimals, and a tqdm-like progress bar (steps, rate, ETA) — live on a terminal, printed as a line with
// each log dict elsewhere (notebooks, CI logs).

import * as fs from 'fs';
import * as path from 'path';
import { SingleBar } from 'cli-progress';

/** ms-swift's format_time: '1d 2h 3m 4s', '2h 3m 4s', '3m 4s', '4s'. */
export function formatTime(seconds: number): string {
  const days = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600), m = Math.floor((seconds % 3600) / 60), s = Math.floor(seconds % 60);
  if (days > 0) return `${days}d ${h}h ${m}m ${s}s`;
  if (h > 0) return `${h}h ${m}m ${s}s`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}

/** Python's round(x, n) for log values (round-half-even is irrelevant at 8 decimals of a float). */
export function round(x: number, digits: number): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Python's repr of a float: shortest round-trip digits, exponent form below 1e-4 and from 1e16. */
export function pyFloat(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expStr] = x.toExponential().split('e');
  const exp = Number(expStr);
  if (exp < -4 || exp >= 16) {
    const m = mant.includes('.') ? mant : mant;
    return `${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  const s = String(x);
  return /[.e]/.test(s) ? s : `${s}.0`;
}

/** A log dict as Python prints it: {'loss': 1.69011736, 'global_step/max_steps': '1/47', ...}. */
export function pyDict(logs: Record<string, unknown>): string {
  const val = (v: unknown): string =>
    typeof v === 'number' ? pyFloat(v) : typeof v === 'string' ? `'${v.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'` : v === null ? 'None' : String(v);
  return `{${Object.entries(logs).map(([k, v]) => `'${k}': ${val(v)}`).join(', ')}}`;
}

/** One JSON line appended to `file` (non-finite numbers become null: JSON has no NaN). */
export function appendJsonl(file: string, obj: Record<string, unknown>): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.appendFileSync(file, JSON.stringify(obj, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)) + '\n');
}

function clock(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${two(m)}:${two(r)}` : `${two(m)}:${two(r)}`;
}

/**
 * `Train:  2%|▏         | 1/47 [00:05<04:30,  5.89s/it]` as tqdm draws it: live (cli-progress) when stderr
 * is a terminal; otherwise `line()` gives the same text to print with each log.
 */
export class ProgressBar {
  private readonly bar: SingleBar | null;
  private value = 0;
  private readonly start = Date.now();

  constructor(readonly desc: string, readonly total: number, initial = 0) {
    this.value = initial;
    const live = Boolean(process.stderr.isTTY) && process.env.TSFT_NO_PROGRESS !== '1';
    this.bar = live ? new SingleBar({
      format: `${desc}: {percentage}%|{bar}| {value}/{total} [{elapsed}<{remaining}, {rate}]`,
      barCompleteChar: '█', barIncompleteChar: ' ', barsize: 10, hideCursor: false, stream: process.stderr,
      clearOnComplete: false, fps: 5,
    }) : null;
    this.bar?.start(total, initial, this.payload());
  }

  private payload(): Record<string, string> {
    const el = (Date.now() - this.start) / 1000, done = this.value;
    const perIt = done > 0 ? el / done : NaN;
    const rate = !Number.isFinite(perIt) ? '?it/s' : perIt >= 1 ? `${perIt.toFixed(2)}s/it` : `${(1 / perIt).toFixed(2)}it/s`;
    return { elapsed: clock(el), remaining: clock(perIt * (this.total - done)), rate };
  }

  update(value: number): void {
    this.value = value;
    this.bar?.update(value, this.payload());
  }

  /** The bar as one line of text. */
  line(): string {
    const p = this.payload(), frac = this.total ? this.value / this.total : 0;
    const full = Math.floor(frac * 10);
    return `${this.desc}: ${String(Math.floor(frac * 100)).padStart(3)}%|${'█'.repeat(full)}${' '.repeat(10 - full)}| ${this.value}/${this.total} [${p.elapsed}<${p.remaining}, ${p.rate}]`;
  }

  /** Print `text` on stdout above the bar (tqdm.write), or after the bar's line when not live. */
  write(text: string): void {
    if (this.bar) {
      process.stderr.write('\r\x1b[2K');
      process.stdout.write(text + '\n');
      this.bar.render();
    } else {
      process.stdout.write(`${this.line()}\n${text}\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
  }
}

// Merges one GPU-box run's measurements — bench/train-step.ts (ours, JSON lines), bench/reference.py
// (PyTorch, JSON lines) and bench/kernels.ts (fused kernels vs stock tfjs ops, a JSON array or lines) —
// into bench/results/<date>-<name>.json, entries { name, device, ours_ms, reference_ms, ratio,
// ours_tflops?, reference, date, ... } with ratio = reference time / ours (higher is better), and
// regenerates bench/results/README.md, a markdown table per results file.
//
//   npx tsx bench/report.ts [--name h100] [--date YYYY-MM-DD] [--results bench/results] FILE...
//   npx tsx bench/report.ts                 # only regenerate bench/results/README.md

import * as fs from 'node:fs';
import * as path from 'node:path';

/** One row of the results: our time against one reference's time for the same work. */
export interface Entry {
  name: string;
  device: string;
  ours_ms: number | null;
  reference_ms: number | null;
  /** reference_ms / ours_ms: > 1 means we are faster */
  ratio: number | null;
  ours_tflops?: number;
  /** what ours is compared with: 'pytorch fp32 eager', 'stock tfjs-webgpu ops', ... */
  reference: string;
  date: string;
  ours_tokens_per_s?: number;
  reference_tokens_per_s?: number;
  ours_peak_gib?: number;
  reference_peak_gib?: number;
  note?: string;
}

/** A measurement line as the three benchmarks print it (fields vary by bench). */
type Line = { [key: string]: unknown };

/** Reads JSON lines or a JSON array; lines that are not JSON objects (logs) are skipped. */
export function readMeasurements(text: string): Line[] {
  const t = text.trim();
  if (t.startsWith('[')) return (JSON.parse(t) as Line[]).filter((x) => x && typeof x === 'object');
  const out: Line[] = [];
  for (const line of t.split('\n')) {
    if (!line.trim().startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Line);
    } catch {
      // a log line that happens to start with '{'
    }
  }
  return out;
}

const num = (x: unknown): number | null => (typeof x === 'number' && Number.isFinite(x) ? x : null);
const str = (x: unknown): string | undefined => (typeof x === 'string' && x ? x : undefined);
const ratioOf = (ours: number | null, ref: number | null) => (ours && ref ? Number((ref / ours).toPrecision(3)) : null);

function pytorchName(r: Line): string {
  if (r.bench === 'attention') return `pytorch ${r.dtype} ${r.impl === 'sdpa' ? 'SDPA' : 'eager'}`;
  return `pytorch ${r.dtype} eager${r.ckpt ? ' + grad ckpt' : ''}`;
}

/** What a measurement is of, so that ours and PyTorch's line up: bench, shape, length, pass. */
function workKey(r: Line): string {
  if (r.bench === 'attention') return `attention|${r.pass}|${r.heads}|${r.kv_heads}|${r.head_dim}|${r.seq}`;
  if (r.bench === 'train') return `train|${r.model}|${r.seq}|${r.mode ?? 'full'}`;
  return `decode|${r.model}`;
}

/** Our measurement's own variant of the work (precision, checkpointing), so several of ours line up with one PyTorch line. */
function oursKey(r: Line): string {
  return r.bench === 'train' ? `${workKey(r)}|${r.dtype ?? 'fp32'}|${r.ckpt ? 'ckpt' : ''}` : workKey(r);
}

function workName(r: Line): string {
  if (r.bench === 'attention') return `attention ${r.pass} H${r.heads}/KV${r.kv_heads} D${r.head_dim} seq ${r.seq}`;
  if (r.bench === 'train') {
    const mode = r.mode === 'lora' ? 'LoRA r8 all-linear' : 'full';
    const ours = r.source === 'tsft' ? ` ${r.dtype === 'f16' ? 'f16 mixed' : 'fp32'}${r.ckpt ? ' + grad ckpt' : ''}` : '';
    return `train ${r.model} ${mode}${ours}, seq ${r.seq}`;
  }
  return `decode ${r.model} (batch 1, greedy)`;
}

/** ms of the work a line measured, and the figures that go beside it. */
function figures(r: Line): { ms: number | null; tokens?: number; peak?: number } {
  const ms = num(r.ms_per_step) ?? num(r.ms_per_token) ?? num(r.ours_ms) ?? num(r.ms);
  return { ms, tokens: num(r.tokens_per_s) ?? undefined, peak: num(r.peak_gib) ?? num(r.ours_peak_gib) ?? undefined };
}

/**
 * The entries of one run from all its measurement lines.
 *
 * @example
 * merge([...readMeasurements(ours), ...readMeasurements(ref)], '2026-11-28')
 */
export function merge(lines: Line[], date: string): Entry[] {
  const tsftMeta = lines.find((r) => r.source === 'tsft' && r.bench === 'meta');
  const torchMeta = lines.find((r) => r.source === 'pytorch' && r.bench === 'meta');
  const torchVersion = torchMeta ? ` (torch ${torchMeta.torch}, transformers ${torchMeta.transformers})` : '';
  const entries: Entry[] = [];
  const ours = new Map<string, Line>();
  for (const r of lines) if (r.source === 'tsft' && ['attention', 'train', 'decode'].includes(r.bench as string)) ours.set(oursKey(r), r);
  const oursWork = new Set([...ours.values()].map(workKey));
  const refs = lines.filter((r) => r.source === 'pytorch' && r.bench !== 'meta');
  const oursDevice = (r?: Line) => str(r?.device) ?? str(tsftMeta?.device) ?? 'unknown';

  // kernels.ts: ours against the stock tfjs ops, one entry each
  for (const r of lines) {
    if (r.source !== undefined || typeof r.name !== 'string' || r.name === 'bench_info') continue;
    if (num(r.ours_ms) === null && num(r.stock_ms) === null && !r.error) continue;
    entries.push({
      name: `kernel ${r.name}${r.shape ? ` ${r.shape}` : ''}`,
      device: oursDevice(r),
      ours_ms: num(r.ours_ms),
      reference_ms: num(r.stock_ms),
      ratio: ratioOf(num(r.ours_ms), num(r.stock_ms)),
      ...(num(r.ours_tflops) !== null ? { ours_tflops: num(r.ours_tflops)! } : {}),
      reference: num(r.stock_ms) !== null || r.error ? 'stock tfjs-webgpu ops' : 'none',
      date,
      ...note(r.error, r.max_rel_err !== undefined ? `max rel err ${r.max_rel_err}` : undefined, str(r.note)),
    });
  }

  // ours (train-step.ts) against the stock tfjs attention, then against every PyTorch line of the same work
  for (const o of ours.values()) {
    const key = workKey(o);
    const mine = figures(o);
    const base = {
      name: workName(o),
      device: oursDevice(o),
      ours_ms: mine.ms,
      ...(num(o.ours_tflops) !== null ? { ours_tflops: num(o.ours_tflops)! } : {}),
      date,
      ...(mine.tokens !== undefined ? { ours_tokens_per_s: mine.tokens } : {}),
      ...(mine.peak !== undefined ? { ours_peak_gib: mine.peak } : {}),
    };
    if (o.bench === 'attention') {
      const stockPeak = num(o.stock_peak_gib);
      entries.push({
        ...base, reference_ms: num(o.stock_ms), ratio: ratioOf(mine.ms, num(o.stock_ms)), reference: 'stock tfjs-webgpu ops (gqaAttention)',
        ...(stockPeak !== null ? { reference_peak_gib: stockPeak } : {}),
        ...note(o.error, o.max_rel_err !== undefined ? `max rel err vs stock ${o.max_rel_err}` : undefined),
      });
    }
    const matching = refs.filter((r) => workKey(r) === key);
    if (matching.length === 0 && o.bench !== 'attention') {
      entries.push({ ...base, reference_ms: null, ratio: null, reference: 'none', ...note(o.error) });
    }
    for (const r of matching) {
      const ref = figures(r);
      entries.push({
        ...base,
        reference_ms: ref.ms,
        ratio: ratioOf(mine.ms, ref.ms),
        reference: pytorchName(r) + torchVersion,
        ...(ref.tokens !== undefined ? { reference_tokens_per_s: ref.tokens } : {}),
        ...(ref.peak !== undefined ? { reference_peak_gib: ref.peak } : {}),
        ...note(o.error, r.error ? `reference: ${r.error}` : undefined),
      });
    }
  }

  // PyTorch lines of work we did not run (the full Qwen3-4B): for orientation
  for (const r of refs) {
    if (oursWork.has(workKey(r))) continue;
    const ref = figures(r);
    entries.push({
      name: workName(r), device: oursDevice(), ours_ms: null, reference_ms: ref.ms, ratio: null,
      reference: pytorchName(r) + torchVersion, date,
      ...(ref.tokens !== undefined ? { reference_tokens_per_s: ref.tokens } : {}),
      ...(ref.peak !== undefined ? { reference_peak_gib: ref.peak } : {}),
      ...note('not run by tsft', r.error ? `reference: ${r.error}` : undefined),
    });
  }
  const fatal = lines.filter((r) => r.bench === 'fatal');
  for (const r of fatal) entries.push({ name: 'train-step.ts', device: oursDevice(r), ours_ms: null, reference_ms: null, ratio: null, reference: 'none', date, note: String(r.error) });
  return entries;
}

function note(...parts: unknown[]): { note?: string } {
  const text = parts.filter((p) => typeof p === 'string' && p).join('; ');
  return text ? { note: text } : {};
}

// ---------------------------------------------------------------------------------------------------
// The markdown table.

const cell = (x: unknown) => (x === null || x === undefined ? '—' : String(x).replace(/\|/g, '\\|').replace(/\n/g, ' '));
const pair = (a?: number, b?: number) => (a === undefined && b === undefined ? '—' : `${a ?? '—'} / ${b ?? '—'}`);

/** Markdown for every results file, newest first. */
export function renderReadme(files: { file: string; entries: Entry[] }[]): string {
  const out = [
    '# Benchmark results',
    '',
    'Generated by `bench/report.ts` from the JSON files here (see bench/README.md for how they are made).',
    '**ratio** = reference time / ours: above 1 we are faster. Peak memory: ours is tfjs\'s GPU buffers',
    "allocated (including its pool of free buffers, like torch's reserved), PyTorch's is",
    '`torch.cuda.max_memory_allocated`. Train rows: one full fine-tuning step (forward, backward, AdamW) at',
    'batch 1; decode rows: ms per new token of greedy decoding with the KV cache.',
    '',
  ];
  if (files.length === 0) out.push('No results yet.', '');
  for (const { file, entries } of [...files].sort((a, b) => b.file.localeCompare(a.file))) {
    const devices = [...new Set(entries.map((e) => e.device))].join('; ');
    out.push(`## ${path.basename(file, '.json')}`, '', `Device: ${devices}`, '');
    out.push('| benchmark | reference | ours ms | reference ms | ratio | ours TFLOP/s | tokens/s ours / ref | peak GiB ours / ref | note |');
    out.push('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
    for (const e of entries) {
      out.push(`| ${[e.name, e.reference, e.ours_ms, e.reference_ms, e.ratio, e.ours_tflops, pair(e.ours_tokens_per_s, e.reference_tokens_per_s),
        pair(e.ours_peak_gib, e.reference_peak_gib), e.note].map(cell).join(' | ')} |`);
    }
    out.push('');
  }
  return out.join('\n');
}

function readResults(dir: string): { file: string; entries: Entry[] }[] {
  if (!fs.existsSync(dir)) return [];
  // only arrays of entries (other results files here, e.g. a matmul sweep, have their own shape and .md)
  return fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
    .map((f) => ({ file: f, entries: JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as unknown }))
    .filter((r): r is { file: string; entries: Entry[] } => Array.isArray(r.entries));
}

function main(argv: string[]): void {
  const opts: { [k: string]: string } = {};
  const files: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) opts[argv[i].slice(2)] = argv[++i];
    else files.push(argv[i]);
  }
  const dir = opts.results ?? path.join('bench', 'results');
  if (files.length) {
    const lines = files.flatMap((f) => readMeasurements(fs.readFileSync(f, 'utf8')));
    const date = opts.date ?? new Date().toISOString().slice(0, 10);
    const entries = merge(lines, date);
    const name = (opts.name ?? 'run').replace(/[^\w.-]+/g, '-');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `${date}-${name}.json`);
    fs.writeFileSync(file, JSON.stringify(entries, null, 1) + '\n');
    console.log(`${file}: ${entries.length} entries from ${lines.length} measurements`);
  }
  const readme = path.join(dir, 'README.md');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(readme, renderReadme(readResults(dir)));
  console.log(`wrote ${readme}`);
}

if (process.argv[1] && /report\.(ts|js|mjs)$/.test(process.argv[1])) main(process.argv.slice(2));

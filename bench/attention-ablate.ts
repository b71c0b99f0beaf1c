// Where the attention kernels' time goes: the forward (fwd) and the dK/dV kernel (kv) of one f16 fwd+bwd,
// replayed alone with pieces of their WGSL taken out (the score multiplies, the softmax lane step, the
// P·V / dV / dK multiplies, the prefetch loads, the barriers ...). The results are wrong by design; only
// the GPU time of each variant against the unchanged kernel means something. Diagnostic, no PyTorch side.
//
//   locally (lavapipe, emulated subgroup matrices: checks that every variant still compiles and runs):
//            npx tsx bench/attention-ablate.ts --small
//   no GPU (every edit applies to the default config's WGSL): npx tsx bench/attention-ablate.ts --check
//   GPU box: ../shared/gpu/pack.sh bench/attention-ablate.ts; source .gpu/setup.sh && node .gpu/attention-ablate.mjs --out $OUT/ablate.jsonl
// Output: one JSON line per (shape, kernel, variant): ms (GPU ms per dispatch, replayed n times in one pass).

import * as fs from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import { getGpuAdapterInfo, getGpuDevice, initDevice } from '../src/backend/device';
import { DEFAULT_SG_CONFIG, FlashSgProgram, flashAttentionSg, parseSgConfig, recordOwnDispatches, runOwn, sgConfigKey, type OwnDispatch, type OwnKernel } from '../src/backend/kernels/flash-attention-sg';
import { drain } from './drain';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');
const argv = process.argv.slice(2);
const value = (n: string) => { const i = argv.indexOf(n); return i >= 0 ? argv[i + 1] : undefined; };
const SMALL = argv.includes('--small');
const OUT = value('--out');
const REPS = Number(value('--reps') ?? (SMALL ? 2 : 20));
const CONFIGS = (value('--configs') ?? (SMALL ? 'nsg2_bt32_dq16_kv2x32_hf_il_rs_emu' : sgConfigKey(DEFAULT_SG_CONFIG))).split(',');

function emit(r: Record<string, unknown>): void {
  const line = JSON.stringify(r);
  console.log(line);
  if (OUT) fs.appendFileSync(OUT, line + '\n');
}

// ---------------------------------------------------------------------------------------------------
// WGSL surgery

/** The index of the brace closing the block whose `{` is at `open`. */
function closing(src: string, open: number): number {
  let depth = 0;
  for (let i = open; i < src.length; i++) {
    if (src[i] === '{') depth++;
    else if (src[i] === '}' && --depth === 0) return i;
  }
  throw new Error(`unbalanced braces from ${open}`);
}

function need(src: string, marker: string, from = 0): number {
  const i = src.indexOf(marker, from);
  if (i < 0) throw new Error(`marker not found: ${marker}`);
  return i;
}

/** `marker` … its block (the first `{` from the marker to its closing brace) replaced by `repl`. */
function cutStatement(src: string, marker: string, repl = ''): string {
  const at = need(src, marker);
  const end = closing(src, src.indexOf('{', at));
  return src.slice(0, at) + repl + src.slice(end + 1);
}

/** The innermost block holding `marker` (its enclosing `{ … }`) replaced by `repl`. */
function cutEnclosing(src: string, marker: string, repl = ''): string {
  const at = need(src, marker);
  let depth = 0, open = -1;
  for (let i = at; i >= 0; i--) {
    if (src[i] === '}') depth++;
    else if (src[i] === '{' && depth-- === 0) { open = i; break; }
  }
  return src.slice(0, open) + repl + src.slice(closing(src, open) + 1);
}

/** `f` applied to the body of the loop starting at `marker`. */
function inLoop(src: string, marker: string, f: (body: string) => string): string {
  const at = need(src, marker);
  const open = src.indexOf('{', at), end = closing(src, open);
  return src.slice(0, open + 1) + f(src.slice(open + 1, end)) + src.slice(end);
}

const dropLines = (re: RegExp) => (src: string) => src.split('\n').filter((l) => !re.test(l)).join('\n');

/** Every binding stays statically used (the pipeline's layout is 'auto': an unused binding would vanish). */
function keepBindings(src: string): string {
  const names = [...src.matchAll(/var<storage, read(?:_write)?> (\w+)/g)].map((m) => m[1]);
  const at = src.indexOf('{', need(src, 'fn main(')) + 1;
  return src.slice(0, at) + `\n  ${names.map((n) => `_ = ${n}[0];`).join(' ')} _ = u.B;` + src.slice(at);
}

const MMA = String.raw`(subgroupMatrixMultiplyAccumulate|emuMma)\(`;
const BARRIERS = (body: string) => body.replace(/workgroupBarrier\(\);/g, '');

type Edit = (src: string) => string;

const FWD: Record<string, Edit> = {
  base: (s) => s,
  'no softmax lane step': (s) => cutEnclosing(s, 'var tmax = FAR;', '{}'),
  'softmax without mask': (s) => s.replace('maskScore(Sc[srow + col], k0 + col, tq, b)', 'Sc[srow + col] * SCALE'),
  'softmax without exp': (s) => s.replace('exp(xs[g * 8u + i] - lm)', '(xs[g * 8u + i] - lm)'),
  'no rescale branch': (s) => cutStatement(s, 'if (workgroupUniformLoad(&wgF', 'workgroupBarrier();'),
  'no S multiplies (Sc not written)': (s) => cutEnclosing(s, 'var s0 = SA();'),
  'no P·V multiplies': (s) => dropLines(new RegExp(String.raw`^\s*acc\d+ = ${MMA}pf`))(s),
  'no prefetch loads': (s) => cutStatement(s, 'if (k0 + BT < kEnd)'),
  'no K/V stores to workgroup memory': (s) => dropLines(/Tl\[[^\]]*\(e \/ DV\) \* RS \+ e % DV\] = p[kv]\[i\];/)(s),
  'no barriers in the loop (rescale branch out)': (s) => inLoop(cutStatement(s, 'if (workgroupUniformLoad(&wgF'), 'for (var k0 = 0u; k0 < kEnd; k0 += BT)', BARRIERS),
  'multiplies only (no lane step, rescale, prefetch, stores, barriers)': (s) => inLoop(
    dropLines(/Tl\[[^\]]*\(e \/ DV\) \* RS \+ e % DV\] = p[kv]\[i\];/)(cutStatement(cutStatement(cutEnclosing(s, 'var tmax = FAR;', '{}'), 'if (workgroupUniformLoad(&wgF'), 'if (k0 + BT < kEnd)')),
    'for (var k0 = 0u; k0 < kEnd; k0 += BT)', BARRIERS),
};

const KV: Record<string, Edit> = {
  base: (s) => s,
  'no lane step (P, dS)': (s) => cutStatement(s, 'for (var g = 0u; g < HALF / 8u; g++)'),
  'no dS store to global': dropLines(/^\s*DSO\[/),
  'no S / dP multiplies': (s) => cutEnclosing(s, 'var s0 = SA();'),
  'no dV / dK multiplies': (s) => dropLines(new RegExp(String.raw`^\s*d[kv]\d+ = ${MMA}`))(s),
  'no prefetch loads': (s) => cutStatement(s, 'if (qn < u.T)'),
  'no barriers in the loop': (s) => inLoop(s, 'loop {', BARRIERS),
  'multiplies only (no lane step, prefetch, barriers)': (s) => inLoop(cutStatement(cutStatement(s, 'for (var g = 0u; g < HALF / 8u; g++)'), 'if (qn < u.T)'), 'loop {', BARRIERS),
};

const DQS: Record<string, Edit> = {
  base: (s) => s,
  'dS fragments from workgroup memory (not global)': (s) => s.replace(/subgroupMatrixLoad<SL, col_major>\(&DS, [^;]*;/g, 'subgroupMatrixLoad<SL, row_major>(&Tl, 0u, RS);'),
  'no K stores to workgroup memory': dropLines(/Tl\[0u \+ \(e \/ DV\) \* RS \+ e % DV\] = pk\[i\];/),
  'no prefetch loads': (s) => cutStatement(s, 'if (k0 + BT < kEnd)'),
  'no barriers in the loop': (s) => inLoop(s, 'for (var k0 = 0u; k0 < kEnd; k0 += BT)', BARRIERS),
  'no multiplies': (s) => dropLines(new RegExp(String.raw`^\s*acc\d+_\d+ = ${MMA}`))(s),
};

// ---------------------------------------------------------------------------------------------------

async function timeKernel(d: OwnDispatch, n: number): Promise<number> {
  const queue = getGpuDevice().queue;
  runOwn([d], true);
  await queue.onSubmittedWorkDone();
  const t0 = performance.now();
  runOwn(Array.from({ length: n }, () => d), true);
  await queue.onSubmittedWorkDone();
  return (performance.now() - t0) / n;
}

/** Matmuls for ms milliseconds (the GPU clocks up). */
async function warm(ms: number): Promise<void> {
  const a = tf.randomNormal([2048, 2048]);
  const t0 = performance.now();
  while (performance.now() - t0 < (SMALL ? 50 : ms)) await drain(tf.tidy(() => tf.matMul(a, a)));
  a.dispose();
}

async function ablate(CONFIG: string, name: string, H: number, KV_: number, T: number): Promise<void> {
  const D = SMALL ? 32 : 128;
  const cfg = parseSgConfig(CONFIG);
  const q = tf.randomNormal([1, H, T, D]), k = tf.randomNormal([1, KV_, T, D]), v = tf.randomNormal([1, KV_, T, D]), dy = tf.randomNormal([1, H, T, D]);
  const recorded: OwnDispatch[] = [];
  recordOwnDispatches((ds) => { for (const d of ds) { d.tensors.forEach((t) => tf.keep(t)); recorded.push(d); } });
  let out: tf.Tensor[];
  try {
    const g = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttentionSg(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, { past: 0, config: cfg });
    out = tf.tidy(() => tf.grads(g)([q, k, v], dy));
  } finally {
    recordOwnDispatches(null);
  }
  await drain(out[0]);
  // every variant compiled (and checked) first, then timed in rounds after a clock warm-up: a pipeline
  // compile leaves the GPU idle long enough for its clocks to drop
  const runs: { kind: string; variant: string; d: OwnDispatch; ms: number[] }[] = [];
  for (const [kind, edits] of [['fwd', FWD], ['kv', KV], ['dqs', DQS]] as const) {
    const d = recorded.find((r) => r.kernel.shaderKey.includes(`_${kind}_`));
    if (!d) { emit({ bench: 'attention-ablate', name, kernel: kind, error: 'no such dispatch' }); continue; }
    const src = d.kernel.getUserCode();
    for (const [variant, edit] of Object.entries(edits)) {
      try {
        const code = keepBindings(edit(src));
        if (variant !== 'base' && code === keepBindings(src)) throw new Error('the edit changed nothing');
        const kernel: OwnKernel = { shaderKey: `${d.kernel.shaderKey}_ablate_${variant.replace(/\W+/g, '_')}`, dispatch: d.kernel.dispatch, getUserCode: () => code };
        const gpu = getGpuDevice();
        gpu.pushErrorScope('validation');
        runOwn([{ ...d, kernel }], true);
        await gpu.queue.onSubmittedWorkDone();
        const err = await gpu.popErrorScope();
        if (err) throw new Error(err.message.split('\n').slice(0, 6).join(' | '));
        runs.push({ kind, variant, d: { ...d, kernel }, ms: [] });
      } catch (e) {
        emit({ bench: 'attention-ablate', name, config: CONFIG, kernel: kind, variant, error: String((e as Error).message ?? e).slice(0, 600) });
      }
    }
  }
  await warm(1000);
  for (let round = 0; round < 3; round++) for (const r of runs) r.ms.push(await timeKernel(r.d, REPS));
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const r of runs) {
    emit({ bench: 'attention-ablate', name, heads: H, kv_heads: KV_, seq: T, config: CONFIG, kernel: r.kind, variant: r.variant, ms: Number(med(r.ms).toPrecision(3)), ms_rounds: r.ms.map((x) => Number(x.toPrecision(3))) });
  }
  tf.dispose([...new Set(recorded.flatMap((r) => r.tensors))].filter((t) => !t.isDisposed));
  tf.dispose([q, k, v, dy, ...out]);
}

/** --check: every edit applied to the WGSL of CONFIG at Qwen3-0.6B shapes, no GPU (lines removed per variant). */
function check(): void {
  for (const CONFIG of CONFIGS) {
  const cfg = parseSgConfig(CONFIG);
  for (const [kind, edits] of [['fwd', FWD], ['kv', KV], ['dqs', DQS]] as const) {
    const src = new FlashSgProgram(kind, 128, cfg, { B: 1, H: 16, T: 2048, S: 2048 }).getUserCode();
    for (const [variant, edit] of Object.entries(edits)) {
      try {
        const code = keepBindings(edit(src));
        closing(code, code.indexOf('{', code.indexOf('fn main(')));
        emit({ config: CONFIG, kernel: kind, variant, lines: code.split('\n').length - src.split('\n').length });
      } catch (e) {
        emit({ config: CONFIG, kernel: kind, variant, error: String((e as Error).message ?? e) });
      }
    }
  }
  }
}

async function main(): Promise<void> {
  if (argv.includes('--check')) return check();
  await initDevice('webgpu', { quiet: true });
  const ai = getGpuAdapterInfo() as unknown as { description?: string };
  emit({ bench: 'attention-ablate-setup', adapter: ai.description, configs: CONFIGS, reps: REPS });
  const shapes: [string, number, number, number][] = SMALL ? [['small H4/KV2', 4, 2, 128]] : [['qwen3-0.6b', 16, 8, 2048], ['qwen3-4b', 32, 8, 2048]];
  for (const c of CONFIGS) for (const [name, H, KV_, T] of shapes) await ablate(c, name, H, KV_, T);
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });

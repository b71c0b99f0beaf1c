// Attention kernels on the GPU: flashAttention's fp32 kernels (flash-attention.ts), its f16 tensor-core
// kernels (flash-attention-sg.ts, one row per tiling config) and the stock tfjs ops of gqaAttention,
// forward and forward + backward, at B=1, head_dim 128, causal: Qwen3-0.6B heads (16 / 8 KV) at seq 512
// and 2048, Qwen2.5-3B (16 / 2) and Qwen3-4B (32 / 8) at 2048. Each timing row also gives the CPU time spent
// issuing one run (issue_ms); per shape, each tensor-core config's own dispatches are timed alone
// ('attention-kernels': GPU ms per kernel of one fwd+bwd).
// First it checks every tensor-core config against the fp32 kernel on small cases with GQA, padding (left
// padding: rows that see no key), a cache offset and lengths off the tiles — output and all three
// gradients — and times only the configs that pass. PyTorch runs beside it: bench/attention_ref.py.
//
//   locally (lavapipe: fp32 and stock only):  npx tsx bench/attention.ts --small
//   GPU box:  ../shared/gpu/pack.sh bench/attention.ts, then
//             source .gpu/setup.sh && node .gpu/attention.mjs --out $OUT/attention.jsonl [--configs a,b] [--budget-s 200]
//             [--no-fp32] [--shapes qwen3-0.6b:2048,...] [--cpu-prof FILE: V8 profile of 200 f16 fwd+bwd at seq 512]
//             [--reps N: runs per timing round (default: 10 at seq 2048, 20 below, more to fill 100 ms)]
//             [--skip halfpad,prep+groupsum: ablation rows, see SKIPS]
// Output: one JSON line per measurement (appended to --out as it goes, so a cut-off run keeps its lines).

import * as fs from 'node:fs';
import * as inspector from 'node:inspector';
import * as tf from '@tensorflow/tfjs-core';
import { drain } from './drain';
import '../src/backend/gradients';
import { getGpuAdapterInfo, getGpuDevice, initDevice } from '../src/backend/device';
import { matmulF16Path } from '../src/backend/kernels/matmul-f16';
import { causalBias, flashAttention, flashAttentionPath } from '../src/backend/kernels/flash-attention';
import { DEFAULT_SG_CONFIG, flashAttentionSg, parseSgConfig, recordOwnDispatches, runOwn, sgConfigKey, sgWorkgroupBytes, type OwnDispatch, type SgAttentionConfig } from '../src/backend/kernels/flash-attention-sg';
import { withComputeDtype } from '../src/backend/precision';
import { gqaAttention } from '../src/model/attention';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');
const argv = process.argv.slice(2);
const value = (n: string) => { const i = argv.indexOf(n); return i >= 0 ? argv[i + 1] : undefined; };
const SMALL = argv.includes('--small');
const OUT = value('--out');
const BUDGET_MS = Number(value('--budget-s') ?? 240) * 1000;
const CONFIGS = (value('--configs') ?? sgConfigKey(DEFAULT_SG_CONFIG)).split(',');
const NO_FP32 = argv.includes('--no-fp32');
const SHAPES = value('--shapes')?.split(',');
const CPU_PROF = value('--cpu-prof');
const REPS = value('--reps');
// --skip halfpad,prep+groupsum: also time fwd+bwd with those dispatches left out (each comma item one row,
// '+' joins names; the results are wrong by design: what each dispatch costs inside the pipeline)
const SKIPS = value('--skip')?.split(',') ?? [];
const started = performance.now();
let device = 'unknown';

function emit(r: Record<string, unknown>): void {
  const line = JSON.stringify({ ...r, t_s: Math.round((performance.now() - started) / 100) / 10 });
  console.log(line);
  if (OUT) fs.appendFileSync(OUT, line + '\n');
}
const errorText = (e: unknown) => String((e as Error)?.stack ?? e).split('\n').slice(0, 4).join(' | ');

function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648), (s / 2147483648) * 2 - 1));
}

type Attend = (q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D) => tf.Tensor4D;

/** GPU errors inside f become exceptions. */
async function checked<T>(f: () => Promise<T>): Promise<T> {
  const gpu = getGpuDevice();
  gpu.pushErrorScope('validation');
  let result: T | undefined, thrown: unknown;
  try {
    result = await f();
  } catch (e) {
    thrown = e;
  }
  const invalid = await gpu.popErrorScope();
  if (invalid) throw new Error(`WebGPU validation: ${invalid.message.split('\n').slice(0, 6).join(' | ')}`);
  if (thrown) throw thrown;
  return result as T;
}

// ---------------------------------------------------------------------------------------------------
// Correctness of the tensor-core configs against the fp32 kernel

interface Case { name: string; B: number; H: number; KV: number; T: number; past: number; D: number; mask?: number[][] }
const row = (S: number, ...zeros: [number, number][]) => { const r = new Array<number>(S).fill(1); for (const [a, z] of zeros) r.fill(0, a, z); return r; };
const CASES: Case[] = [
  { name: 'GQA 4/2 T70', B: 1, H: 4, KV: 2, T: 70, past: 0, D: 128 },
  { name: 'padding left/right/hole, past 20, T67', B: 2, H: 4, KV: 2, T: 67, past: 20, D: 128, mask: [row(87, [0, 25]), row(87, [40, 44], [80, 87])] },
  { name: 'T5 past 66 MHA', B: 2, H: 2, KV: 2, T: 5, past: 66, D: 128, mask: [row(71, [0, 3]), row(71)] },
  { name: 'decode T1 past 130', B: 1, H: 4, KV: 2, T: 1, past: 130, D: 128, mask: [row(131, [0, 7])] },
  { name: 'GQA 8/2 T300 D64', B: 1, H: 8, KV: 2, T: 300, past: 0, D: 64 },
];

async function outputs(c: Case, attend: Attend): Promise<Float32Array[]> {
  const S = c.past + c.T;
  return tf.tidy(() => {
    const q = tf.tensor4d(values(c.B * c.H * c.T * c.D, 1), [c.B, c.H, c.T, c.D]);
    const k = tf.tensor4d(values(c.B * c.KV * S * c.D, 2), [c.B, c.KV, S, c.D]);
    const v = tf.tensor4d(values(c.B * c.KV * S * c.D, 3), [c.B, c.KV, S, c.D]);
    const dy = tf.tensor4d(values(c.B * c.H * c.T * c.D, 4), [c.B, c.H, c.T, c.D]);
    const f = (a: tf.Tensor, b: tf.Tensor, d: tf.Tensor) => attend(a as tf.Tensor4D, b as tf.Tensor4D, d as tf.Tensor4D);
    return [f(q, k, v), ...tf.grads(f)([q, k, v], dy)].map((t) => tf.keep(t));
  }).reduce(async (acc, t) => { const a = await acc; a.push(await t.data() as Float32Array); t.dispose(); return a; }, Promise.resolve([] as Float32Array[]));
}

/** max over out, dq, dk, dv of max |got − want| / max |want|. */
function relErr(got: Float32Array[], want: Float32Array[]): number[] {
  return want.map((w, i) => {
    let e = 0, s = 0;
    for (let j = 0; j < w.length; j++) { e = Math.max(e, Math.abs(got[i][j] - w[j]) || (Number.isNaN(got[i][j]) ? Infinity : 0)); s = Math.max(s, Math.abs(w[j])); }
    return e / (s || 1);
  });
}

const maskOf = (c: Case) => (c.mask ? tf.tensor2d(c.mask, [c.B, c.past + c.T], 'int32') : undefined);

async function checkConfigs(wgMax: number): Promise<SgAttentionConfig[]> {
  const passed: SgAttentionConfig[] = [];
  const refs = new Map<string, Float32Array[]>();
  for (const c of CASES) {
    const mask = maskOf(c);
    refs.set(c.name, await outputs(c, (q, k, v) => withComputeDtype('float32', () => flashAttention(q, k, v, { attentionMask: mask, past: c.past }))));
    mask?.dispose();
  }
  for (const key of CONFIGS) {
    const cfg = parseSgConfig(key);
    if (sgWorkgroupBytes(128, cfg) > wgMax) { emit({ bench: 'attention-check', config: key, pass: false, error: `needs ${sgWorkgroupBytes(128, cfg)} B of workgroup memory > ${wgMax}` }); continue; }
    let ok = true;
    for (const c of CASES) {
      const mask = maskOf(c);
      try {
        const got = await checked(() => outputs(c, (q, k, v) => flashAttentionSg(q, k, v, { attentionMask: mask, past: c.past, config: cfg })));
        const err = relErr(got, refs.get(c.name)!);
        const pass = err.every((e) => e < 1e-2);
        ok &&= pass;
        emit({ bench: 'attention-check', config: sgConfigKey(cfg), case: c.name, rel_err: { out: err[0], dq: err[1], dk: err[2], dv: err[3] }, pass });
      } catch (e) {
        ok = false;
        emit({ bench: 'attention-check', config: sgConfigKey(cfg), case: c.name, pass: false, error: errorText(e) });
      }
      mask?.dispose();
    }
    if (ok) passed.push(cfg);
  }
  return passed;
}

// ---------------------------------------------------------------------------------------------------
// Timing


const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** Shortest round of the timing (ms): the first run's issue and the read-back that ends a round are fixed costs. */
const ROUND_MS = SMALL ? 0 : 100;

/**
 * ms per run: two warm-up runs (pipelines compiled, tfjs's buffer pool filled), then 5 rounds of `reps`
 * runs queued back to back (more when `reps` runs take less than ROUND_MS), each round ended by a
 * read-back of one element; the median round. Also the CPU time spent issuing a run (the round's loop
 * without the read-back): when it is close to ms, the CPU, not the GPU, sets the pace.
 */
async function time(run: () => tf.Tensor[], minReps: number): Promise<{ ms: number; issueMs: number; reps: number }> {
  let last = run();
  await drain(last[0]);
  tf.dispose(last);
  const w0 = performance.now();
  last = run();
  await drain(last[0]);
  const reps = REPS ? minReps : Math.max(minReps, Math.ceil(ROUND_MS / (performance.now() - w0)));
  const rounds: number[] = [], issues: number[] = [];
  for (let round = 0; round < 5; round++) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) {
      tf.dispose(last);
      last = run();
    }
    const t1 = performance.now();
    await drain(last[0]);
    rounds.push((performance.now() - t0) / reps);
    issues.push((t1 - t0) / reps);
  }
  tf.dispose(last);
  return { ms: median(rounds), issueMs: median(issues), reps };
}

/**
 * GPU time of each of our own dispatches in one run (fwd+bwd): the run's runOwn dispatches are recorded
 * (their tensors kept), then each is replayed `n` times in one compute pass, timed to queue completion.
 */
async function kernelTimes(run: () => tf.Tensor[], keepOut: tf.Tensor[], n: number): Promise<{ kernel: string; ms: number; marginal_ms: number }[]> {
  const recorded: OwnDispatch[] = [];
  recordOwnDispatches((ds) => { for (const d of ds) { d.tensors.forEach((t) => tf.keep(t)); recorded.push(d); } });
  let out: tf.Tensor[];
  try {
    out = tf.tidy(run);
  } finally {
    recordOwnDispatches(null);
  }
  await drain(out[0]);
  const queue = getGpuDevice().queue;
  const times: { kernel: string; ms: number; marginal_ms: number }[] = [];
  for (const d of recorded) {
    runOwn([d], true);
    await queue.onSubmittedWorkDone();
    const t0 = performance.now();
    runOwn(Array.from({ length: n }, () => d), true);
    await queue.onSubmittedWorkDone();
    const t1 = performance.now();
    runOwn(Array.from({ length: 4 * n }, () => d), true);
    await queue.onSubmittedWorkDone();
    const t2 = performance.now();
    // per dispatch: n in one pass (with the submit and wait), and the marginal cost of 3n more
    times.push({ kernel: d.kernel.shaderKey.replace('tsft_flash_sg_', ''), ms: Number(((t1 - t0) / n).toPrecision(3)), marginal_ms: Number(((t2 - t1 - (t1 - t0)) / (3 * n)).toPrecision(3)) });
  }
  const own = new Set(recorded.flatMap((d) => d.tensors).filter((t) => !keepOut.includes(t)));
  tf.dispose([...own, ...out]);
  return times;
}

async function timeShape(name: string, H: number, KV: number, T: number, D: number, configs: SgAttentionConfig[]): Promise<void> {
  const q = tf.randomNormal([1, H, T, D]) as tf.Tensor4D;
  const k = tf.randomNormal([1, KV, T, D]) as tf.Tensor4D;
  const v = tf.randomNormal([1, KV, T, D]) as tf.Tensor4D;
  const dy = tf.randomNormal([1, H, T, D]) as tf.Tensor4D;
  const bias = causalBias(1, T, T, 0);
  const impls: [string, Attend][] = [
    ...(NO_FP32 ? [] : [['fp32', (a, b, c) => withComputeDtype('float32', () => flashAttention(a, b, c))] as [string, Attend]]),
    ...configs.map((cfg): [string, Attend] => [`f16 ${sgConfigKey(cfg)}`, (a, b, c) => flashAttentionSg(a, b, c, { past: 0, config: cfg })]),
    ['stock', (a, b, c) => gqaAttention(a, b, c, bias)],
  ];
  const fwdFlops = (4 * H * T * T * D) / 2; // causal, FlashAttention's convention; fwd+bwd = 3.5×
  const reps = REPS ? Number(REPS) : SMALL ? 2 : T >= 2048 ? 10 : 20;
  const skipRuns = SKIPS.flatMap((set) => configs.map((cfg): [string, Attend, string[]] => [`f16 ${sgConfigKey(cfg)} -${set}`, (a, b, c) => flashAttentionSg(a, b, c, { past: 0, config: cfg }), set.split('+')]));
  for (const [impl, f, skip] of [...impls.map(([i, f]): [string, Attend, string[]] => [i, f, []]), ...skipRuns]) {
    const hook = (ds: OwnDispatch[]) => ds.filter((d) => !skip.some((n) => d.kernel.shaderKey.includes(`_${n}_`)));
    for (const pass of ['fwd', 'fwd+bwd'] as const) {
      if (skip.length && pass === 'fwd') continue;
      if (performance.now() - started > BUDGET_MS) { emit({ bench: 'attention', name, impl, pass, skipped: 'budget' }); continue; }
      try {
        const g = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => f(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D);
        const run = () => tf.tidy(() => (pass === 'fwd' ? [g(q, k, v)] : tf.grads(g)([q, k, v], dy)));
        const hooked = () => { recordOwnDispatches(hook); try { return run(); } finally { recordOwnDispatches(null); } };
        const t = await checked(() => time(skip.length ? hooked : run, reps));
        const { ms, issueMs } = t;
        emit({ bench: 'attention', name, heads: H, kv_heads: KV, seq: T, head_dim: D, impl, pass, ms: Number(ms.toPrecision(4)), issue_ms: Number(issueMs.toPrecision(3)), reps: t.reps, tflops: Number(((pass === 'fwd' ? 1 : 3.5) * fwdFlops / ms / 1e9).toPrecision(3)) });
      } catch (e) {
        emit({ bench: 'attention', name, impl, pass, error: errorText(e) });
      }
    }
  }
  for (const cfg of configs) {
    if (performance.now() - started > BUDGET_MS) break;
    try {
      const g = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttentionSg(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, { past: 0, config: cfg });
      const kernels = await checked(() => kernelTimes(() => tf.grads(g)([q, k, v], dy), [q, k, v, dy], SMALL ? 2 : 20));
      emit({ bench: 'attention-kernels', name, heads: H, kv_heads: KV, seq: T, head_dim: D, impl: `f16 ${sgConfigKey(cfg)}`, pass: 'fwd+bwd', kernels, gpu_ms: Number(kernels.reduce((s, x) => s + x.ms, 0).toPrecision(4)) });
    } catch (e) {
      emit({ bench: 'attention-kernels', name, impl: `f16 ${sgConfigKey(cfg)}`, error: errorText(e) });
    }
  }
  tf.dispose([q, k, v, dy, bias]);
}

async function main(): Promise<void> {
  const info = await initDevice('webgpu', { quiet: true });
  void info;
  tf.env().set('WEBGPU_CPU_FORWARD', false);
  const path = withComputeDtype('float16', () => flashAttentionPath(128));
  const ai = getGpuAdapterInfo() as unknown as { subgroupMinSize?: number; subgroupMaxSize?: number; description?: string };
  const wgMax = getGpuDevice().limits.maxComputeWorkgroupStorageSize;
  emit({
    bench: 'attention-setup', path_f16: path, matmul_f16: matmulF16Path(), subgroup: [ai.subgroupMinSize, ai.subgroupMaxSize], adapter: ai.description, wg_max: wgMax,
    configs: CONFIGS.map((c) => [c, sgWorkgroupBytes(128, parseSgConfig(c))]), default: sgConfigKey(DEFAULT_SG_CONFIG), dawn_toggles: process.env.TSFT_DAWN_TOGGLES ?? '',
  });
  // warm the GPU clocks (the first kernel timed in a process runs slow: bench/MATMUL.md)
  const a = tf.randomNormal([2048, 2048]);
  const t0 = performance.now();
  while (performance.now() - t0 < (SMALL ? 100 : 2000)) await drain(tf.tidy(() => tf.matMul(a, a)));
  const configs = matmulF16Path() === 'subgroup-matrix' ? await checkConfigs(wgMax) : [];
  emit({ bench: 'attention-setup', passed: configs.map(sgConfigKey) });
  // the checks leave the GPU idle long enough for its clocks to drop: warm it again before timing
  const t1 = performance.now();
  while (performance.now() - t1 < (SMALL ? 100 : 2000)) await drain(tf.tidy(() => tf.matMul(a, a)));
  a.dispose();
  const shapes = (SMALL
    ? [['small H4/KV2', 4, 2, 128]]
    : [['qwen3-0.6b', 16, 8, 2048], ['qwen3-0.6b', 16, 8, 512], ['qwen2.5-3b', 16, 2, 2048], ['qwen3-4b', 32, 8, 2048]]
  ).filter(([n, , , T]) => !SHAPES || SHAPES.includes(`${n}:${T}`)) as [string, number, number, number][];
  for (const [name, H, KV, T] of shapes) await timeShape(name, H, KV, T, 128, configs);
  if (CPU_PROF && configs.length) await cpuProfile(CPU_PROF, configs[0]);
}

/** --cpu-prof FILE: a V8 CPU profile of 200 f16 fwd+bwd runs at Qwen3-0.6B seq 512 (where issuing, not the GPU, sets the pace). */
async function cpuProfile(file: string, cfg: SgAttentionConfig): Promise<void> {
  const [H, KV, T, D] = [16, 8, 512, 128];
  const q = tf.randomNormal([1, H, T, D]), k = tf.randomNormal([1, KV, T, D]), v = tf.randomNormal([1, KV, T, D]), dy = tf.randomNormal([1, H, T, D]);
  const g = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttentionSg(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, { past: 0, config: cfg });
  const run = () => tf.tidy(() => tf.grads(g)([q, k, v], dy));
  await time(run, 5);
  const session = new inspector.Session();
  session.connect();
  const post = (method: string, params?: object) => new Promise<unknown>((res, rej) => session.post(method, params ?? {}, (err, r) => (err ? rej(err) : res(r))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 50 });
  await post('Profiler.start');
  const t = await time(run, 200);
  const { profile } = (await post('Profiler.stop')) as { profile: unknown };
  session.disconnect();
  fs.writeFileSync(file, JSON.stringify(profile));
  emit({ bench: 'attention-cpu-prof', file, ms: t.ms, issue_ms: t.issueMs });
  tf.dispose([q, k, v, dy]);
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });

// Cross-entropy on webgpu (src/backend/kernels/cross-entropy.ts), issue 7's target and issue 8's f16 LM head:
//
//   over logits [2048, 151936] f32, forward and forward + backward: ours (crossEntropyLogits: two row
//     kernels) and stock tfjs ops (crossEntropyLogitsStock: logSumExp + gather + argMax, tfjs's gradients);
//   from hidden states [2048, H] · [151936, H]ᵀ (H = 1024, 2048), forward + backward to h and W: ours fp32
//     (crossEntropyFromHidden: tiled f32 matmuls, vocabulary chunks) and ours f16 (crossEntropyFromHiddenF16:
//     f16 tensor-core matmuls, token chunks), with how far f16 lands from fp32.
//
// Prints one JSON line per measurement and writes them with --out. bench/cross_entropy_ref.py measures
// PyTorch on the same shapes in the same call; `--merge OURS REF --out FILE` then writes the result entries
// ({ name, device, ours_ms, reference_ms, ratio, ours_tflops?, reference, date }, ratio = reference / ours)
// and prints the table.
//
//   npx tsx bench/cross-entropy.ts --small                    # lavapipe: tiny shapes, checks the harness
//   ... --only logits|hidden (one half), --no-stock (no stock tfjs rows), --profile (GPU time per program of
//   the logits op, its kernels at several work splits, the readback's share of the wall-clock figures)
//   ../shared/gpu/pack.sh bench/cross-entropy.ts, then on the GPU box:
//   source .gpu/setup.sh && node .gpu/cross-entropy.mjs --out $OUT/ours.json; python3 bench/cross_entropy_ref.py --out $OUT/ref.json
//   npx tsx bench/cross-entropy.ts --merge ours.json ref.json --out bench/results/<date>-cross-entropy.json
//
// Timing: one warm-up run (compiles; its outputs are compared), more warm-up runs until --warmup-ms (200)
// have passed (the GPU's clocks come up from idle), then --reps runs (--logits-reps, 20, over logits)
// issued back to back and one await on a 1-element readback of the last output; the mean per run is
// reported, with cpu_ms: the part of it JavaScript spent issuing the work. Inputs are generated on the GPU
// (a hash of the element index): a 1.2 GB tf.randomUniform is made on the CPU and uploaded through Dawn's
// staging memory, whose release then landed in the first timed runs (on the H200, 2026-11-28: a forward of
// 0.9 ms GPU time timed at 8–15 ms right after one).

import * as fs from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { drain as sync } from './drain';
import type { Entry } from './report';
import '../src/backend/gradients';
import { currentDevice, describeDevice, initDevice, shutdownDevice } from '../src/backend/device';
import {
  crossEntropyFromHidden, crossEntropyFromHiddenF16, crossEntropyLogits, crossEntropyLogitsStock, logitsGrad, logitsStats,
} from '../src/backend/kernels/cross-entropy';
import { matMulF16, matmulF16Path, SG_TILE_128, SG_TILE_64, toHalf } from '../src/backend/kernels/matmul-f16';
import { ElementwiseProgram, runProgram } from '../src/backend/kernels/program';

const argv = process.argv.slice(2);
const flag = (n: string) => argv.includes(`--${n}`);
const opt = (n: string) => { const i = argv.indexOf(`--${n}`); return i >= 0 ? argv[i + 1] : undefined; };
const SMALL = flag('small');
const REPS = Number(opt('reps') ?? 5);
const LOGIT_REPS = Number(opt('logits-reps') ?? 20);
const WARMUP_MS = Number(opt('warmup-ms') ?? 200);
const STOCK = !flag('no-stock');
/** 'logits' or 'hidden': only that half of the bench */
const ONLY = opt('only');
const PROFILE = flag('profile');
const round = (x: number, d = 4) => Number(x.toPrecision(d));

interface Line {
  name: string;
  shape: string;
  ms: number | null;
  /** of ms: JavaScript's time issuing one run */
  cpu_ms?: number;
  tflops?: number;
  gbps?: number;
  /** max |x − ref| / max |ref| against the named comparison */
  rel_err?: Record<string, number>;
  note?: string;
  error?: string;
  device?: string;
}

// ---------------------------------------------------------------------------------------------------

type Outputs = tf.Tensor | tf.Tensor[];
const list = (o: Outputs) => (Array.isArray(o) ? o : [o]);


/** Submits what tfjs has recorded: tensors disposed since go back to its buffer pool (no CPU–GPU sync). */
function flush(): void {
  const b = tf.backend() as unknown as { ensureCommandEncoderReady(): void; endComputePassEncoder(): void; submitQueue(): void };
  b.ensureCommandEncoderReady();
  b.endComputePassEncoder();
  b.submitQueue();
}

/**
 * Mean ms per run after a warm-up whose outputs are returned (caller disposes them). Each run is submitted
 * (flush) so that the previous run's outputs, disposed before it, are reused from tfjs's pool as in a
 * training loop; `fresh` skips that, and tfjs then allocates new buffers for every run's outputs.
 */
async function time(run: () => Outputs, reps: number, fresh = false): Promise<{ ms: number; cpu_ms: number; warm: tf.Tensor[] }> {
  const warm = list(run());
  await sync(warm[0]);
  for (const w0 = performance.now(); performance.now() - w0 < WARMUP_MS;) {
    const more = list(run());
    await sync(more[0]);
    tf.dispose(more);
  }
  const t0 = performance.now();
  let last: tf.Tensor[] = [];
  let cpu = 0;
  for (let r = 0; r < reps; r++) {
    const c0 = performance.now();
    tf.dispose(last);
    last = list(run());
    if (!fresh) flush();
    cpu += performance.now() - c0;
  }
  await sync(last[0]);
  const ms = (performance.now() - t0) / reps;
  tf.dispose(last);
  return { ms: round(ms), cpu_ms: round(cpu / reps, 3), warm };
}

/** Uniform [lo, hi) f32 values made on the GPU from a hash of (index, seed). */
class UniformFillProgram extends ElementwiseProgram {
  override uniforms = 'lo : f32, hi : f32, seed : u32,';

  constructor(shape: number[]) {
    super([], shape, 'bench_uniform_fill');
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        var h = u32(index) ^ (uniforms.seed * 0x9e3779b9u);
        h = (h ^ (h >> 16u)) * 0x7feb352du;
        h = (h ^ (h >> 15u)) * 0x846ca68bu;
        h = h ^ (h >> 16u);
        result[index] = uniforms.lo + (uniforms.hi - uniforms.lo) * (f32(h >> 8u) / 16777216.0);
      }
    }`;
  }
}

/** A kept f32 tensor of uniform [lo, hi) values generated on the GPU (nothing crosses from the CPU). */
function gpuUniform(shape: number[], lo: number, hi: number, seed: number): tf.Tensor {
  return tf.keep(runProgram(new UniformFillProgram(shape), [], [
    { type: 'float32', data: [lo] },
    { type: 'float32', data: [hi] },
    { type: 'uint32', data: [seed] },
  ]));
}

/** max |a − b| / max |b| on the GPU. */
async function relErr(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const r = tf.tidy(() => tf.div(tf.max(tf.abs(tf.sub(a, b))), tf.max(tf.abs(b))));
  const v = (await r.data())[0];
  r.dispose();
  return round(v, 3);
}

const lines: Line[] = [];
let device = 'unknown';
function emit(l: Line): void {
  const full = { ...l, device };
  lines.push(full);
  console.log(JSON.stringify(full));
}

async function guarded(name: string, shape: string, f: () => Promise<void>): Promise<void> {
  try {
    await f();
  } catch (e) {
    emit({ name, shape, ms: null, error: String((e as Error).stack ?? e).split('\n').slice(0, 3).join(' | ') });
  }
}

// ---------------------------------------------------------------------------------------------------

async function overLogits(N: number, V: number): Promise<void> {
  const shape = `${N}x${V}`;
  const logits = gpuUniform([N, V], -8, 8, 1) as tf.Tensor2D;
  const labels = tf.keep(tf.randomUniform([N], 0, V, 'int32', 2)) as tf.Tensor1D;
  const bytes = N * V * 4;
  try {
    const fwd = (f: typeof crossEntropyLogits) => () => {
      const { loss, correct } = f(logits, labels);
      return [loss, correct];
    };
    const fwdBwd = (f: typeof crossEntropyLogits) => () => {
      const { value, grads } = tf.valueAndGrads((x: tf.Tensor) => f(x as tf.Tensor2D, labels).loss)([logits]);
      return [grads[0], value];
    };
    let oursFwd: tf.Tensor[] = [], oursGrad: tf.Tensor[] = [];
    await guarded('ce_logits_fwd', shape, async () => {
      const r = await time(fwd(crossEntropyLogits), LOGIT_REPS);
      oursFwd = r.warm;
      emit({ name: 'ce_logits_fwd', shape, ms: r.ms, cpu_ms: r.cpu_ms, gbps: round(bytes / r.ms / 1e6), note: 'reads the logits once' });
    });
    await guarded('ce_logits_fwd_bwd', shape, async () => {
      const r = await time(fwdBwd(crossEntropyLogits), LOGIT_REPS);
      oursGrad = r.warm;
      emit({ name: 'ce_logits_fwd_bwd', shape, ms: r.ms, cpu_ms: r.cpu_ms, gbps: round((3 * bytes) / r.ms / 1e6), note: 'reads the logits twice, writes dlogits (f32)' });
    });
    await guarded('ce_logits_fwd_bwd_fresh_buffers', shape, async () => {
      const r = await time(fwdBwd(crossEntropyLogits), 3, true);
      tf.dispose(r.warm);
      emit({ name: 'ce_logits_fwd_bwd_fresh_buffers', shape, ms: r.ms, cpu_ms: r.cpu_ms, note: 'runs not submitted one by one: each allocates a new 1.2 GB dlogits buffer' });
    });
    if (STOCK) {
      await guarded('ce_logits_fwd_stock_tfjs', shape, async () => {
        const r = await time(fwd(crossEntropyLogitsStock), Math.min(REPS, 3));
        const rel_err = oursFwd.length ? { loss_ours_vs_stock: await relErr(oursFwd[0], r.warm[0]) } : undefined;
        const sameCorrect = oursFwd.length ? (await oursFwd[1].data())[0] === (await r.warm[1].data())[0] : undefined;
        emit({ name: 'ce_logits_fwd_stock_tfjs', shape, ms: r.ms, rel_err, note: `correct counts equal: ${sameCorrect}` });
        tf.dispose(r.warm);
      });
      await guarded('ce_logits_fwd_bwd_stock_tfjs', shape, async () => {
        const r = await time(fwdBwd(crossEntropyLogitsStock), Math.min(REPS, 2));
        const rel_err = oursGrad.length ? { dlogits_ours_vs_stock: await relErr(oursGrad[0], r.warm[0]), loss_ours_vs_stock: await relErr(oursGrad[1], r.warm[1]) } : undefined;
        emit({ name: 'ce_logits_fwd_bwd_stock_tfjs', shape, ms: r.ms, rel_err });
        tf.dispose(r.warm);
      });
    }
    tf.dispose([...oursFwd, ...oursGrad]);
  } finally {
    tf.dispose([logits, labels]);
  }
}

/**
 * --profile: where the time of the logits op goes. GPU time of every program of one run (tfjs's
 * timestamp queries through tf.time: each program in its own compute pass), the row kernels alone at
 * several work splits, and how much of the wall-clock figures is the final readback.
 */
async function profileLogits(N: number, V: number): Promise<void> {
  const shape = `${N}x${V}`;
  const logits = gpuUniform([N, V], -8, 8, 1) as tf.Tensor2D;
  const labels = tf.keep(tf.randomUniform([N], 0, V, 'int32', 2)) as tf.Tensor1D;
  const bytes = N * V * 4;
  /** GPU ms per program (summed by name) and in all, the mean of `reps` timed runs after one untimed. */
  const gpu = async (run: () => Outputs, reps = 3) => {
    tf.dispose(list(run()));
    let total = 0;
    const byName: Record<string, number> = {};
    for (let r = 0; r < reps; r++) {
      let outs: tf.Tensor[] = [];
      const info = await tf.time(() => { outs = list(run()); }) as unknown as { kernelMs: number; getExtraProfileInfo?: () => string };
      tf.dispose(outs);
      total += info.kernelMs / reps;
      for (const part of (info.getExtraProfileInfo?.() ?? '').split(', ').filter(Boolean)) {
        const i = part.lastIndexOf(': ');
        const name = part.slice(0, i);
        byName[name] = round((byName[name] ?? 0) + Number(part.slice(i + 2)) / reps);
      }
    }
    return { ms: round(total), programs: byName };
  };
  try {
    const fwd = () => { const { loss, correct } = crossEntropyLogits(logits, labels); return [loss, correct]; };
    const fwdBwd = () => {
      const { value, grads } = tf.valueAndGrads((x: tf.Tensor) => crossEntropyLogits(x as tf.Tensor2D, labels).loss)([logits]);
      return [grads[0], value];
    };
    for (const [name, run] of [['profile_fwd', fwd], ['profile_fwd_bwd', fwdBwd]] as const) {
      await guarded(name, shape, async () => {
        const g = await gpu(run);
        emit({ name, shape, ms: g.ms, gbps: round(((name === 'profile_fwd' ? 1 : 3) * bytes) / g.ms / 1e6), note: `GPU time per program (timestamp queries): ${JSON.stringify(g.programs)}` });
      });
    }
    const stats = tf.keep(logitsStats(logits, labels));
    const dy = tf.keep(tf.ones([N]));
    for (const split of [0, 1, 2, 4]) {
      const name = `profile_stats_split${split || 'auto'}`;
      await guarded(name, shape, async () => {
        const g = await gpu(() => (split ? logitsStats(logits, labels, 0, split) : logitsStats(logits, labels)));
        emit({ name, shape, ms: g.ms, gbps: round(bytes / g.ms / 1e6), note: JSON.stringify(g.programs) });
      });
    }
    for (const perThread of [2, 4, 8]) {
      const name = `profile_grad_per${perThread}`;
      await guarded(name, shape, async () => {
        const g = await gpu(() => logitsGrad(logits, labels, stats, dy, { perThread }) as tf.Tensor);
        emit({ name, shape, ms: g.ms, gbps: round((2 * bytes) / g.ms / 1e6), note: JSON.stringify(g.programs) });
      });
    }
    tf.dispose([stats, dy]);
    // wall clock: the readback's share (a 1-element op alone), and the op at 5 and 20 runs per readback
    await guarded('profile_readback', shape, async () => {
      const one = tf.keep(tf.zeros([1]));
      const r = await time(() => tf.add(one, 1), 1);
      tf.dispose([...r.warm, one]);
      emit({ name: 'profile_readback', shape: '1', ms: r.ms, note: 'one tiny op + a 1-element readback: the fixed cost in every wall-clock figure (divided by reps)' });
    });
    for (const reps of [5, 20]) {
      await guarded(`profile_wall_fwd_bwd_reps${reps}`, shape, async () => {
        const r = await time(fwdBwd, reps);
        tf.dispose(r.warm);
        emit({ name: `profile_wall_fwd_bwd_reps${reps}`, shape, ms: r.ms, cpu_ms: r.cpu_ms, gbps: round((3 * bytes) / r.ms / 1e6) });
      });
    }
  } finally {
    tf.dispose([logits, labels]);
  }
}

async function fromHidden(N: number, H: number, V: number): Promise<void> {
  const shape = `${N}x${H}x${V}`;
  const h = gpuUniform([N, H], -1, 1, 3) as tf.Tensor2D;
  const w = gpuUniform([V, H], -0.05, 0.05, 4) as tf.Tensor2D;
  const t = tf.keep(tf.randomUniform([N], 0, V, 'int32', 5)) as tf.Tensor1D;
  const flops = 2 * N * H * V;
  try {
    type Ce = typeof crossEntropyFromHidden;
    const fwd = (f: Ce) => () => {
      const { loss, correct } = f(h, w, t);
      return [loss, correct];
    };
    const fwdBwd = (f: Ce) => () => {
      const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => f(a as tf.Tensor2D, b as tf.Tensor2D, t).loss)([h, w]);
      return [grads[0], grads[1], value];
    };
    let fp32: tf.Tensor[] = [];
    for (const [tag, f] of [['fp32', crossEntropyFromHidden], ['f16', crossEntropyFromHiddenF16]] as [string, Ce][]) {
      await guarded(`ce_hidden_fwd_${tag}_H${H}`, shape, async () => {
        const r = await time(fwd(f), REPS);
        tf.dispose(r.warm);
        emit({ name: `ce_hidden_fwd_${tag}_H${H}`, shape, ms: r.ms, tflops: round(flops / r.ms / 1e9) });
      });
      await guarded(`ce_hidden_fwd_bwd_${tag}_H${H}`, shape, async () => {
        const r = await time(fwdBwd(f), Math.min(REPS, 3));
        let rel_err: Record<string, number> | undefined;
        if (tag === 'fp32') fp32 = r.warm;
        else if (fp32.length) {
          rel_err = { dh_vs_fp32: await relErr(r.warm[0], fp32[0]), dw_vs_fp32: await relErr(r.warm[1], fp32[1]), loss_vs_fp32: await relErr(r.warm[2], fp32[2]) };
          tf.dispose(r.warm);
        } else tf.dispose(r.warm);
        emit({
          name: `ce_hidden_fwd_bwd_${tag}_H${H}`, shape, ms: r.ms, tflops: round((3 * flops) / r.ms / 1e9), rel_err,
          note: tag === 'fp32' ? 'tflops count 6·N·H·V; fp32 also recomputes the logits in backward (8·N·H·V done)' : `f16 matmul path ${matmulF16Path()}; tflops count 6·N·H·V (all done in forward)`,
        });
      });
    }
    await guarded(`ce_hidden_fwd_bwd_f16_dh64_H${H}`, shape, async () => {
      const r = await time(fwdBwd((a, b, c) => crossEntropyFromHiddenF16(a, b, c, { dhTile: SG_TILE_64 })), Math.min(REPS, 3));
      tf.dispose(r.warm);
      emit({ name: `ce_hidden_fwd_bwd_f16_dh64_H${H}`, shape, ms: r.ms, tflops: round((3 * flops) / r.ms / 1e9), note: 'dH matmul on 64×64 tiles' });
    });
    tf.dispose(fp32);
    // the f16 path's matmuls alone
    await guarded(`f16_matmuls_H${H}`, shape, async () => {
      const [h16, w16] = [toHalf(h), toHalf(w)];
      const g = gpuUniform([N, V], -1e-3, 1e-3, 6);
      const g16 = toHalf(g);
      g.dispose();
      const cases: [string, () => tf.Tensor][] = [
        [`f16_logits_h_wT_H${H}`, () => matMulF16(h16, w16, false, true)],
        [`f16_dh_g_w_tile128_H${H}`, () => matMulF16(g16, w16, false, false, { tile: SG_TILE_128 })],
        [`f16_dh_g_w_tile64_H${H}`, () => matMulF16(g16, w16, false, false, { tile: SG_TILE_64 })],
        [`f16_dw_gT_h_H${H}`, () => matMulF16(g16, h16, true, false)],
      ];
      for (const [name, f] of cases) {
        await guarded(name, shape, async () => {
          const r = await time(f, REPS);
          tf.dispose(r.warm);
          emit({ name, shape, ms: r.ms, tflops: round(flops / r.ms / 1e9) });
        });
      }
      [h16, w16, g16].forEach((x) => x.dispose());
    });
  } finally {
    tf.dispose([h, w, t]);
  }
}

// ---------------------------------------------------------------------------------------------------
// --merge: ours + PyTorch → result entries


function readLines(file: string): Record<string, unknown>[] {
  const t = fs.readFileSync(file, 'utf8').trim();
  if (t.startsWith('[')) return JSON.parse(t) as Record<string, unknown>[];
  return t.split('\n').filter((l) => l.trim().startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

function merge(oursFile: string, refFile: string, out: string | undefined): void {
  const ours = readLines(oursFile) as unknown as Line[];
  const ref = readLines(refFile) as { name: string; ms: number | null; reference: string; device?: string; torch?: string }[];
  const date = new Date().toISOString().slice(0, 10);
  const get = (n: string) => ours.find((l) => l.name === n);
  const refOf = (n: string) => ref.find((r) => r.name === n);
  const entries: Entry[] = [];
  const add = (name: string, oursName: string, refName: string, stock = false) => {
    const o = get(oursName), r = stock ? get(refName) : refOf(refName);
    if (!o && !r) return;
    const oms = o?.ms ?? null, rms = r?.ms ?? null;
    const torch = ref.find((x) => x.torch)?.torch;
    entries.push({
      name,
      device: o?.device ?? 'unknown',
      ours_ms: oms,
      reference_ms: rms,
      ratio: oms && rms ? round(rms / oms, 3) : null,
      ...(o?.tflops ? { ours_tflops: o.tflops } : {}),
      reference: stock ? 'stock tfjs-webgpu ops (logSumExp + row-block gather + argMax, tfjs gradients)' : `${(r as { reference?: string })?.reference ?? refName}${torch ? ` (torch ${torch})` : ''}`,
      date,
      ...(o?.error || o?.note || o?.rel_err || o?.cpu_ms ? { note: [o?.note, o?.cpu_ms ? `${o.cpu_ms} ms of it JavaScript issuing the run` : '', o?.rel_err ? `rel err ${JSON.stringify(o.rel_err)}` : '', o?.error].filter(Boolean).join('; ') } : {}),
    });
  };
  for (const pass of ['fwd', 'fwd_bwd']) {
    const what = pass === 'fwd' ? 'forward' : 'forward + backward';
    const shape = '2048×151936';
    add(`cross-entropy over logits ${shape} ${what}`, `ce_logits_${pass}`, `ce_logits_${pass}_stock_tfjs`, true);
    add(`cross-entropy over logits ${shape} ${what}`, `ce_logits_${pass}`, `ce_logits_${pass}_fp32`);
    add(`cross-entropy over logits ${shape} ${what}`, `ce_logits_${pass}`, `ce_logits_${pass}_bf16`);
  }
  for (const H of [1024, 2048]) {
    const name = (tag: string) => `LM head + cross-entropy 2048×${H}×151936 forward + backward, ours ${tag}`;
    add(name('fp32'), `ce_hidden_fwd_bwd_fp32_H${H}`, `ce_hidden_fwd_bwd_fp32_H${H}`);
    add(name('f16'), `ce_hidden_fwd_bwd_f16_H${H}`, `ce_hidden_fwd_bwd_fp32_H${H}`);
    add(name('f16'), `ce_hidden_fwd_bwd_f16_H${H}`, `ce_hidden_fwd_bwd_bf16_H${H}`);
    add(name('fp32'), `ce_hidden_fwd_bwd_fp32_H${H}`, `ce_hidden_fwd_bwd_bf16_H${H}`);
    const fname = (tag: string) => `LM head + cross-entropy 2048×${H}×151936 forward, ours ${tag}`;
    add(fname('fp32'), `ce_hidden_fwd_fp32_H${H}`, `ce_hidden_fwd_fp32_H${H}`);
    add(fname('f16'), `ce_hidden_fwd_f16_H${H}`, `ce_hidden_fwd_bf16_H${H}`);
  }
  const text = JSON.stringify(entries, null, 1);
  if (out) fs.writeFileSync(out, text + '\n');
  console.log('| name | reference | ours ms | ref ms | ratio (ref/ours) |\n| --- | --- | --- | --- | --- |');
  for (const e of entries) console.log(`| ${e.name} | ${e.reference} | ${e.ours_ms} | ${e.reference_ms} | ${e.ratio} |`);
}

// ---------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (flag('merge')) {
    const i = argv.indexOf('--merge');
    merge(argv[i + 1], argv[i + 2], opt('out'));
    return;
  }
  const info = await initDevice('webgpu', { quiet: true });
  device = describeDevice(currentDevice() ?? info);
  console.error(`device: ${device}; f16 matmul: ${matmulF16Path()}`);
  const V = SMALL ? 1000 : 151936, N = SMALL ? 64 : 2048;
  if (PROFILE) await profileLogits(N, V);
  if (ONLY !== 'hidden') await overLogits(N, V);
  if (ONLY !== 'logits') for (const H of SMALL ? [64] : [1024, 2048]) await fromHidden(N, H, V);
  const out = opt('out');
  if (out) fs.writeFileSync(out, JSON.stringify(lines, null, 1) + '\n');
  await shutdownDevice();
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});

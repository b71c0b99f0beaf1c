// AdamW on the CPU (WebAssembly SIMD over all cores) with torch.optim.AdamW's semantics, and the global
// gradient L2 norm for clipping (torch.nn.utils.clip_grad_norm_). Per element, in torch's order
// (_single_tensor_adam, decoupled weight decay; t = this step, counted from 1):
//   g ← g·clip;  p ← p·(1 − lr·wd);  m ← m + (g − m)·(1 − β1);  v ← v·β2 + ((1 − β2)·g)·g
//   p ← p − (lr / (1 − β1ᵗ)) · (m / (√v / √(1 − β2ᵗ) + eps))
// clip = min(1, maxNorm / (‖g‖ + 1e-6)) when a max norm is given. The moments m and v live in the kernels'
// shared memory (views: state(i)). Parameters and gradients that live there too are used in place; others
// (plain arrays, tfjs tensors) are copied in and the parameters copied back — for tf.Variables on the wasm
// and cpu backends straight into the variable's storage when nothing else shares it.

import * as tf from '@tensorflow/tfjs-core';
import { cpuKernels, SEG_BLOCK, SEG_JOB_SLOTS, SEGMENT_SLOTS, SegJobSlot, SegmentSlot, type CpuKernels } from './runtime';
import { tensorValues, writableValues } from './tensor-io';

/** torch.optim.AdamW's hyper-parameters (its defaults). */
export interface CpuAdamWConfig {
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

/** One parameter as flat arrays; `decay`: apply weight decay (false for norms and biases). */
export interface CpuAdamWParam {
  data: Float32Array;
  grad: Float32Array;
  decay: boolean;
}

/** One tf.Variable with its gradient (float32, same size). */
export interface CpuAdamWVariable {
  variable: tf.Variable;
  grad: tf.Tensor;
  decay: boolean;
}

export interface CpuAdamWStepOptions {
  lr: number;
  /** Clip the gradients to this global L2 norm first (torch's clip_grad_norm_), if given. */
  maxGradNorm?: number;
}

export interface CpuAdamWStepResult {
  /** The global L2 norm of the gradients before clipping (computed only with maxGradNorm). */
  gradNorm?: number;
}

/** Where one parameter's arrays sit in the shared memory for one step. */
interface Placed {
  p: number;
  g: number;
  n: number;
  decay: boolean;
  /** copy the updated parameter back here after the step (null: it was updated in place) */
  back: Float32Array | null;
}

/**
 * AdamW over a fixed list of parameters (their order is their identity: the i-th entry of every step
 * shares the i-th moments).
 * @example
 *   const opt = new CpuAdamW({ weightDecay: 0.1 });
 *   const { gradNorm } = opt.step([{ data: w, grad: gw, decay: true }, { data: b, grad: gb, decay: false }], { lr: 1e-4, maxGradNorm: 1 });
 *   opt.stepVariables(vars.map((v) => ({ variable: v, grad: grads[v.name], decay: v.rank > 1 })), { lr });
 */
export class CpuAdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** Steps taken (torch's state['step']). */
  stepCount = 0;
  private readonly k: CpuKernels;
  private moments: { m: number; v: number; n: number }[] = [];
  private staging: { ptr: number; bytes: number } | null = null;
  private readonly job: number;
  private segs: { ptr: number; count: number } | null = null;
  private partials: { ptr: number; count: number } | null = null;

  constructor(config: CpuAdamWConfig = {}) {
    this.beta1 = config.beta1 ?? 0.9;
    this.beta2 = config.beta2 ?? 0.999;
    this.eps = config.eps ?? 1e-8;
    this.weightDecay = config.weightDecay ?? 0.01;
    this.k = cpuKernels();
    this.job = this.k.alloc(SEG_JOB_SLOTS * 4);
  }

  /** One AdamW step over flat arrays (updated in place). */
  step(params: CpuAdamWParam[], opts: CpuAdamWStepOptions): CpuAdamWStepResult {
    const placed = this.place(params.map((p) => ({ data: p.data, grad: p.grad, decay: p.decay })));
    return this.update(placed, opts);
  }

  /** One AdamW step over tf.Variables and their gradients (CPU backends: wasm, cpu). */
  stepVariables(entries: CpuAdamWVariable[], opts: CpuAdamWStepOptions): CpuAdamWStepResult {
    for (const e of entries) {
      if (e.grad.size !== e.variable.size) throw new RangeError(`CpuAdamW: gradient of ${e.variable.name} has ${e.grad.size} values, the variable ${e.variable.size}`);
    }
    // read views are valid until tfjs allocates: place (copy) everything before creating any tensor
    const placed = this.place(entries.map((e) => ({ data: tensorValues(e.variable, e.variable.name), grad: tensorValues(e.grad, e.variable.name), decay: e.decay })));
    for (const pl of placed) pl.back = null;
    const result = this.update(placed, opts);
    const f32 = this.k.f32;
    const replace: { variable: tf.Variable; values: Float32Array }[] = [];
    entries.forEach((e, i) => {
      const updated = f32.subarray(placed[i].p / 4, placed[i].p / 4 + placed[i].n);
      const own = writableValues(e.variable);
      if (own) own.set(updated);
      else replace.push({ variable: e.variable, values: updated.slice() });
    });
    for (const { variable, values } of replace) {
      const t = tf.tensor(values, variable.shape, 'float32');
      variable.assign(t);
      t.dispose();
    }
    return result;
  }

  /** The global L2 norm of the gradients (f32 sums per block of 16384, blocks added in f64, in order). */
  globalNorm(grads: (Float32Array | tf.Tensor)[]): number {
    const arrays = grads.map((g) => (g instanceof Float32Array ? g : tensorValues(g)));
    const placed = this.place(arrays.map((g) => ({ data: null, grad: g, decay: false })));
    return this.norm(placed);
  }

  /** The moments of parameter i (views into the shared memory; torch's exp_avg, exp_avg_sq). */
  state(i: number): { expAvg: Float32Array; expAvgSq: Float32Array } {
    const s = this.moments[i];
    if (!s) throw new RangeError(`CpuAdamW: no state for parameter ${i} (${this.moments.length} have state)`);
    const f32 = this.k.f32;
    return { expAvg: f32.subarray(s.m / 4, s.m / 4 + s.n), expAvgSq: f32.subarray(s.v / 4, s.v / 4 + s.n) };
  }

  /** Frees the moments and buffers. */
  dispose(): void {
    for (const s of this.moments) {
      this.k.free(s.m);
      this.k.free(s.v);
    }
    this.moments = [];
    for (const b of [this.staging, this.segs, this.partials]) if (b) this.k.free(b.ptr);
    this.staging = this.segs = this.partials = null;
    this.k.free(this.job);
  }

  /** Pointers for each parameter: in place when its array lives in the shared memory, else a staged copy. */
  private place(list: { data: Float32Array | null; grad: Float32Array; decay: boolean }[]): Placed[] {
    const k = this.k;
    let bytes = 0;
    for (const e of list) {
      if (e.data && e.data.length !== e.grad.length) throw new RangeError(`CpuAdamW: a parameter has ${e.data.length} values, its gradient ${e.grad.length}`);
      const n = e.grad.length;
      if (e.data && k.offsetOf(e.data) < 0) bytes += roundUp(n * 4);
      if (k.offsetOf(e.grad) < 0) bytes += roundUp(n * 4);
    }
    if (bytes > (this.staging?.bytes ?? 0)) {
      if (this.staging) k.free(this.staging.ptr);
      this.staging = { ptr: k.alloc(bytes), bytes };
    }
    let at = this.staging?.ptr ?? 0;
    const f32 = k.f32;
    const stage = (a: Float32Array): number => {
      const off = k.offsetOf(a);
      if (off >= 0) return off;
      const ptr = at;
      f32.set(a, ptr / 4);
      at += roundUp(a.length * 4);
      return ptr;
    };
    return list.map((e) => {
      const g = stage(e.grad);
      const inPlace = !e.data || k.offsetOf(e.data) >= 0;
      const p = e.data ? stage(e.data) : 0;
      return { p, g, n: e.grad.length, decay: e.decay, back: inPlace ? null : e.data };
    });
  }

  /** Writes the job and its segments (one per parameter); returns the number of blocks. */
  private layout(placed: Placed[], decayOf: (pl: Placed) => number, withMoments: boolean): number {
    const k = this.k;
    if ((this.segs?.count ?? 0) < placed.length) {
      if (this.segs) k.free(this.segs.ptr);
      this.segs = { ptr: k.alloc(Math.max(1, placed.length) * SEGMENT_SLOTS * 4), count: placed.length };
    }
    let blocks = 0;
    const segBase = this.segs!.ptr / 4;
    for (let i = 0; i < placed.length; i++) {
      const pl = placed[i];
      let m = 0, v = 0;
      if (withMoments) ({ m, v } = this.momentsOf(i, pl.n));
      const i32 = k.i32, f32 = k.f32, s = segBase + i * SEGMENT_SLOTS;
      i32[s + SegmentSlot.P] = pl.p;
      i32[s + SegmentSlot.G] = pl.g;
      i32[s + SegmentSlot.M] = m;
      i32[s + SegmentSlot.V] = v;
      i32[s + SegmentSlot.N] = pl.n;
      i32[s + SegmentSlot.FirstBlock] = blocks;
      f32[s + SegmentSlot.Decay] = decayOf(pl);
      blocks += Math.ceil(pl.n / SEG_BLOCK);
    }
    const i32 = k.i32, j = this.job / 4;
    i32[j + SegJobSlot.Segs] = this.segs!.ptr;
    i32[j + SegJobSlot.Count] = placed.length;
    i32[j + SegJobSlot.Blocks] = blocks;
    i32[j + SegJobSlot.Next] = 0;
    return blocks;
  }

  private momentsOf(i: number, n: number): { m: number; v: number } {
    let s = this.moments[i];
    if (s && s.n !== n) throw new RangeError(`CpuAdamW: parameter ${i} has ${n} values, ${s.n} at the previous step`);
    if (!s) {
      if (i !== this.moments.length) throw new RangeError(`CpuAdamW: parameter ${i} has no state`);
      const m = this.k.allocF32(n), v = this.k.allocF32(n);
      s = this.moments[i] = { m: this.k.offsetOf(m), v: this.k.offsetOf(v), n };
    }
    return s;
  }

  private norm(placed: Placed[]): number {
    const blocks = this.layout(placed, () => 1, false);
    if ((this.partials?.count ?? 0) < blocks) {
      if (this.partials) this.k.free(this.partials.ptr);
      this.partials = { ptr: this.k.alloc(Math.max(1, blocks) * 4), count: blocks };
    }
    this.k.i32[this.job / 4 + SegJobSlot.Partials] = this.partials!.ptr;
    if (blocks > 0) this.k.run('sumsq', this.job);
    const f32 = this.k.f32, base = this.partials!.ptr / 4;
    let sum = 0;
    for (let b = 0; b < blocks; b++) sum += f32[base + b];
    return Math.sqrt(sum);
  }

  private update(placed: Placed[], opts: CpuAdamWStepOptions): CpuAdamWStepResult {
    const { lr, maxGradNorm } = opts;
    let gradScale = 1, gradNorm: number | undefined;
    if (maxGradNorm !== undefined) {
      gradNorm = this.norm(placed);
      gradScale = Math.min(1, maxGradNorm / (gradNorm + 1e-6));
    }
    this.stepCount++;
    const t = this.stepCount;
    const bc1 = 1 - this.beta1 ** t, bc2 = 1 - this.beta2 ** t;
    const decayed = Math.fround(1 - lr * this.weightDecay);
    const blocks = this.layout(placed, (pl) => (pl.decay ? decayed : 1), true);
    const f32 = this.k.f32, j = this.job / 4;
    f32[j + SegJobSlot.GradScale] = gradScale;
    f32[j + SegJobSlot.OneMinusB1] = 1 - this.beta1;
    f32[j + SegJobSlot.B2] = this.beta2;
    f32[j + SegJobSlot.OneMinusB2] = 1 - this.beta2;
    f32[j + SegJobSlot.StepSize] = lr / bc1;
    f32[j + SegJobSlot.Bc2Sqrt] = Math.sqrt(bc2);
    f32[j + SegJobSlot.Eps] = this.eps;
    if (blocks > 0) this.k.run('adamw', this.job);
    const out = this.k.f32;
    for (const pl of placed) if (pl.back) pl.back.set(out.subarray(pl.p / 4, pl.p / 4 + pl.n));
    return { gradNorm };
  }
}

function roundUp(bytes: number): number {
  return Math.ceil(bytes / 64) * 64;
}

/** Runs AdamW and the norm once on a small array, so that V8 compiles their optimised code ahead of use. */
export function warmUpCpuAdamW(): void {
  const n = 1 << 16, opt = new CpuAdamW();
  opt.step([{ data: new Float32Array(n), grad: new Float32Array(n).fill(1e-3), decay: true }], { lr: 1e-3, maxGradNorm: 1 });
  opt.dispose();
}

// Cross-entropy from hidden states on the CPU (WebAssembly SIMD over all cores): token losses of hidden rows
// [N, H] against the LM head / tied embedding W [V, H] and targets [N] — the math of Qwen2ForCausalLM.loss
// (logits = h·Wᵀ, loss = logsumexp − logit[target]) without tfjs ever holding the [N, V] logits.
//
// Forward (kernels.c ce_forward): the vocabulary in tiles of 128 rows; per tile the logits Lᵀ = W_t·hᵀ, the
// tile max of each row and e = exp(L − max) (kept in a store of N·V floats for the backward when it fits
// storeLimitBytes), merged online into per-slice (max, Σexp, argmax). 16 slices of tiles are claimed by the
// threads; the host merges them in order (f64) into logsumexp, the loss and the argmax-correct count.
// Backward (tf.customGrad): D = softmax − onehot, scaled by the upstream gradient, rebuilt per tile from the
// store (or from recomputed logits), then dW_t = D·h (rows disjoint per tile) and dH = Σ_slices Dᵀ·W_t.
// FLOPs: 3 · 2·N·H·V (forward logits, dW, dH), 4 · 2·N·H·V without the store. Measured (bench/cpu-kernels.ts,
// 2 cores): N=256, H=64, V=151,936 forward + backward in 335 ms, where the same math in tfjs-wasm ops takes 8.4 s.
//
// CPU only: inputs are read with dataSync() or straight from the wasm/cpu backend's memory — fine on the
// wasm and cpu backends, not on webgpu (use src/backend/kernels/cross-entropy.ts there).

import * as tf from '@tensorflow/tfjs-core';
import { CE_JOB_SLOTS, CeSlot, cpuKernels, type CpuKernels } from './runtime';
import { copyRows, tensorFromRows, tensorValues } from './tensor-io';

export interface CpuCrossEntropyOptions {
  /** 'mean' (default): mean token loss; 'sum' */
  reduction?: 'sum' | 'mean';
  /**
   * Keep exp(logits) from the forward for the backward while they take at most this many bytes (N·V·4;
   * default 1 GiB); above, the backward recomputes the logits (one more matmul).
   */
  storeLimitBytes?: number;
  /** Vocabulary rows per tile (multiple of 4, default 128). */
  tileRows?: number;
}

export interface CpuCrossEntropyOutput {
  /** Scalar loss ('mean' or 'sum' of the token losses); differentiable w.r.t. hidden and weight. */
  loss: tf.Scalar;
  /** float32 scalar: rows whose argmax(logits) is the target (ties: the lowest index, as tf.argMax) */
  correct: tf.Scalar;
  /** The same count as a number. */
  numCorrect: number;
}

/** Vocabulary slices: the unit threads claim (fixed, so results don't depend on the thread count). */
const SLICES = 16;
const DEFAULT_STORE_LIMIT = 1 << 30;

interface Dims {
  N: number;
  H: number;
  V: number;
  Np: number;
  Hp: number;
  VB: number;
  tiles: number;
  slices: number;
  store: boolean;
}

/** Buffers of the last call, kept in the shared memory and reused (grown when a call needs more). */
class Workspace {
  private blocks = new Map<string, { ptr: number; bytes: number }>();
  /** bumped by every forward: a backward whose forward was overwritten recomputes it */
  generation = 0;
  readonly job: number;

  constructor(readonly k: CpuKernels) {
    this.job = k.alloc(CE_JOB_SLOTS * 4);
  }

  /** The pointer of buffer `name` with room for `bytes` (contents undefined). */
  buffer(name: string, bytes: number): number {
    const b = this.blocks.get(name);
    if (b && b.bytes >= bytes) return b.ptr;
    if (b) this.k.free(b.ptr);
    const ptr = this.k.alloc(bytes);
    this.blocks.set(name, { ptr, bytes });
    return ptr;
  }

  drop(name: string): void {
    const b = this.blocks.get(name);
    if (b) this.k.free(b.ptr);
    this.blocks.delete(name);
  }

  release(): void {
    for (const name of [...this.blocks.keys()]) this.drop(name);
    this.k.free(this.job);
  }

  setSlots(values: Partial<Record<CeSlot, number>>): void {
    const i32 = this.k.i32, base = this.job / 4;
    for (const [slot, v] of Object.entries(values)) i32[base + Number(slot)] = v as number;
  }

  slot(slot: CeSlot): number {
    return this.k.i32[this.job / 4 + slot];
  }
}

const workspaces = new WeakMap<CpuKernels, Workspace>();

function workspace(k: CpuKernels): Workspace {
  let ws = workspaces.get(k);
  if (!ws) workspaces.set(k, (ws = new Workspace(k)));
  return ws;
}

/** Frees the cross-entropy buffers kept between calls (the logits store can be large). */
export function releaseCpuCrossEntropyMemory(): void {
  const k = cpuKernels();
  workspaces.get(k)?.release();
  workspaces.delete(k);
}

function dimsOf(N: number, H: number, V: number, opts: CpuCrossEntropyOptions): Dims {
  const VB = opts.tileRows ?? 128;
  if (!Number.isInteger(VB) || VB < 4 || VB % 4 !== 0) throw new RangeError(`cpuCrossEntropy: tileRows ${VB} must be a multiple of 4`);
  const Np = Math.ceil(N / 4) * 4, Hp = Math.ceil(H / 4) * 4, tiles = Math.ceil(V / VB);
  const store = Np * tiles * VB * 4 <= (opts.storeLimitBytes ?? DEFAULT_STORE_LIMIT);
  return { N, H, V, Np, Hp, VB, tiles, slices: Math.min(SLICES, tiles), store };
}

/**
 * Lays out the buffers and job of one call, copies hidden [N, H], weight [V, H] and targets in, runs the
 * forward. The value arrays are read at once (views into tfjs's heap stay valid until tfjs allocates).
 */
function forward(ws: Workspace, d: Dims, hidden: Float32Array, weight: Float32Array, targets: Int32Array): { lossSum: number; correct: number } {
  const k = ws.k, threads = k.threads;
  const { N, H, V, Np, Hp, VB, tiles, slices } = d;
  const Vp = tiles * VB, F = 4;
  const W = ws.buffer('W', Vp * Hp * F), h = ws.buffer('h', Np * Hp * F);
  const hB = ws.buffer('hB', Np * Hp * F), hN = ws.buffer('hN', Np * Hp * F);
  const tgt = ws.buffer('tgt', Np * F), mt = ws.buffer('mt', tiles * Np * F);
  const sMax = ws.buffer('sliceMax', slices * Np * F), sSum = ws.buffer('sliceSum', slices * Np * F);
  const sArg = ws.buffer('sliceArg', slices * Np * F), tlogit = ws.buffer('tlogit', Np * F), lse = ws.buffer('lse', Np * F);
  const scratch = ws.buffer('scratch', threads * k.exports.ce_scratch_floats(VB, Np, Hp) * F);
  let store = 0;
  if (d.store) store = ws.buffer('store', Vp * Np * F);
  else ws.drop('store');

  // inputs, zero-padded to [Vp, Hp] and [Np, Hp]
  const f32 = k.f32;
  copyRows(weight, V, H, f32.subarray(W / F, W / F + V * Hp), Hp);
  f32.fill(0, W / F + V * Hp, W / F + Vp * Hp);
  copyRows(hidden, N, H, f32.subarray(h / F, h / F + N * Hp), Hp);
  f32.fill(0, h / F + N * Hp, h / F + Np * Hp);
  const i32 = k.i32;
  i32.set(targets, tgt / F);
  i32.fill(-1, tgt / F + N, tgt / F + Np);

  ws.setSlots({
    [CeSlot.W]: W, [CeSlot.H]: h, [CeSlot.HB]: hB, [CeSlot.HN]: hN, [CeSlot.Tgt]: tgt, [CeSlot.V]: V, [CeSlot.Np]: Np,
    [CeSlot.Hp]: Hp, [CeSlot.VB]: VB, [CeSlot.Tiles]: tiles, [CeSlot.Slices]: slices, [CeSlot.Store]: store,
    [CeSlot.Mt]: mt, [CeSlot.SliceMax]: sMax, [CeSlot.SliceSum]: sSum, [CeSlot.SliceArg]: sArg,
    [CeSlot.TLogit]: tlogit, [CeSlot.Lse]: lse, [CeSlot.Scratch]: scratch, [CeSlot.Next]: 0,
  });
  k.exports.ce_prepare(ws.job);
  k.run('ce_forward', ws.job);
  ws.generation++;

  // merge the slices in order: logsumexp, first argmax, loss
  let lossSum = 0, correct = 0;
  const mx = k.f32, ix = k.i32;
  for (let n = 0; n < N; n++) {
    let m = -Infinity, arg = 0;
    for (let s = 0; s < slices; s++) {
      const v = mx[sMax / F + s * Np + n];
      if (v > m) {
        m = v;
        arg = ix[sArg / F + s * Np + n];
      }
    }
    let sum = 0;
    for (let s = 0; s < slices; s++) sum += mx[sSum / F + s * Np + n] * Math.exp(mx[sMax / F + s * Np + n] - m);
    const l = m + Math.log(sum);
    mx[lse / F + n] = l;
    lossSum += l - mx[tlogit / F + n];
    if (arg === targets[n]) correct++;
  }
  mx.fill(0, lse / F + N, lse / F + Np);
  return { lossSum, correct };
}

/**
 * dHidden and dW for an upstream gradient `scale` on every token's loss: views into the shared memory
 * (rows Hp floats apart) that the next call overwrites.
 */
function backward(ws: Workspace, d: Dims, scale: number): { dH: Float32Array; dW: Float32Array } {
  const k = ws.k, F = 4;
  const { N, V, Np, Hp, VB, tiles, slices } = d;
  const Vp = tiles * VB;
  const rowScale = ws.buffer('rowScale', Np * F), dW = ws.buffer('dW', Vp * Hp * F);
  const dHs = ws.buffer('dHs', slices * Np * Hp * F), dH = ws.buffer('dH', Np * Hp * F);
  // the thread count may have changed since the forward (pool started or stopped): size the scratch again
  const scratch = ws.buffer('scratch', k.threads * k.exports.ce_scratch_floats(VB, Np, Hp) * F);
  const f32 = k.f32;
  f32.fill(scale, rowScale / F, rowScale / F + N);
  f32.fill(0, rowScale / F + N, rowScale / F + Np);
  ws.setSlots({ [CeSlot.RowScale]: rowScale, [CeSlot.DW]: dW, [CeSlot.DHs]: dHs, [CeSlot.DH]: dH, [CeSlot.Scratch]: scratch, [CeSlot.Next]: 0 });
  k.run('ce_backward', ws.job);
  ws.setSlots({ [CeSlot.Next]: 0 });
  k.run('ce_reduce_dh', ws.job);
  const g = k.f32;
  return { dH: g.subarray(dH / F, dH / F + N * Hp), dW: g.subarray(dW / F, dW / F + V * Hp) };
}

function checkTargets(targets: ArrayLike<number>, N: number, V: number): Int32Array {
  if (targets.length !== N) throw new RangeError(`cpuCrossEntropy: ${targets.length} targets for ${N} hidden rows`);
  const out = targets instanceof Int32Array ? targets : Int32Array.from(targets);
  for (let n = 0; n < N; n++) {
    const y = targets[n];
    if (!Number.isInteger(y) || y < 0 || y >= V) throw new RangeError(`cpuCrossEntropy: target ${y} at row ${n} is outside the vocabulary [0, ${V})`);
  }
  return out;
}

/**
 * Cross-entropy of hidden rows against the LM head on the CPU, with gradients for both (tf.customGrad):
 * `tf.variableGrads(() => cpuCrossEntropy(h, W, targets).loss)` flows into whatever h and W came from.
 * For the wasm and cpu backends (reads values synchronously); the lm_head may be the tied embedding.
 *
 * @example
 *   const h = tf.randomNormal([256, 64]) as tf.Tensor2D;               // [N, H] labelled positions
 *   const { loss, numCorrect } = cpuCrossEntropy(h, embedding, targets); // embedding [V, H]
 *   const grads = tf.variableGrads(() => cpuCrossEntropy(model.hidden(ids), embedding, targets).loss);
 */
export function cpuCrossEntropy(
  hidden: tf.Tensor2D,
  weight: tf.Tensor2D,
  targets: ArrayLike<number>,
  opts: CpuCrossEntropyOptions = {},
): CpuCrossEntropyOutput {
  if (hidden.rank !== 2 || weight.rank !== 2 || hidden.shape[1] !== weight.shape[1]) {
    throw new RangeError(`cpuCrossEntropy: hidden [N, H] and weight [V, H] expected, got [${hidden.shape}] and [${weight.shape}]`);
  }
  const [N, H] = hidden.shape, V = weight.shape[0];
  if (N === 0) throw new RangeError('cpuCrossEntropy: no rows (N = 0)');
  const tgt = checkTargets(targets, N, V);
  const d = dimsOf(N, H, V, opts);
  const mean = (opts.reduction ?? 'mean') === 'mean';
  let numCorrect = 0;
  const lossOf = tf.customGrad(((h: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
    save([h, w]);
    const ws = workspace(cpuKernels());
    const { lossSum, correct } = forward(ws, d, tensorValues(h, 'cpuCrossEntropy hidden'), tensorValues(w, 'cpuCrossEntropy weight'), tgt);
    numCorrect = correct;
    const generation = ws.generation;
    return {
      value: tf.scalar(mean ? lossSum / N : lossSum),
      gradFunc: (dy: tf.Tensor, [sh, sw]: tf.Tensor[]) => {
        const ws2 = workspace(cpuKernels());
        // another forward ran in between (or the runtime restarted): recompute ours first
        if (ws2 !== ws || ws2.generation !== generation) {
          forward(ws2, d, tensorValues(sh, 'cpuCrossEntropy hidden'), tensorValues(sw, 'cpuCrossEntropy weight'), tgt);
        }
        const s = (dy.dataSync() as Float32Array)[0] * (mean ? 1 / N : 1);
        const { dH, dW } = backward(ws2, d, s);
        return [tensorFromRows(dH, N, H, d.Hp, [N, H]), tensorFromRows(dW, V, H, d.Hp, [V, H])];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const loss = lossOf(hidden, weight) as tf.Scalar;
  return { loss, correct: tf.scalar(numCorrect), numCorrect };
}

/**
 * Runs the cross-entropy kernels once on a small problem, so that V8 compiles their optimised code before the
 * first real call (which otherwise runs several times slower in the baseline tier). Needs no tfjs backend.
 */
export function warmUpCpuCrossEntropy(): void {
  const N = 16, H = 64, V = 16384;
  const ws = workspace(cpuKernels());
  const h = new Float32Array(N * H).map((_, i) => Math.sin(i)), w = new Float32Array(V * H).map((_, i) => 0.02 * Math.cos(i));
  const d = dimsOf(N, H, V, {});
  forward(ws, d, h, w, Int32Array.from({ length: N }, (_, n) => n * 997));
  backward(ws, d, 1);
}

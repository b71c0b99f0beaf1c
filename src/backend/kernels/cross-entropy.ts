// Cross-entropy kernels for the LM head (issue 7) and its mixed-precision form (issue 8).
//
// 1. From hidden states, fp32 (crossEntropyFromHidden): token losses of hidden rows [N, H] against the LM
//    head [V, H] and targets [N], without ever keeping the [N, V] logits. Forward: a tiled matmul whose
//    epilogue reduces each 128-column tile of logits to (max, Σexp, argmax, target logit) per row, then one
//    workgroup per row merges the tiles (online log-sum-exp). Backward (tf.customGrad) walks the vocabulary
//    in chunks: recompute the chunk's logits with the softmax gradient fused into the epilogue
//    (D = (softmax − onehot)·dy, [N, C]), then dHidden += D·W_chunk and dW_chunk = Dᵀ·hidden, written in
//    place into dW. Elsewhere than webgpu: the same math in tfjs ops (as Qwen2ForCausalLM.loss).
//    FLOPs, forward + backward: 4·2·N·H·V (one matmul forward, three backward).
// 2. Over logits (crossEntropyLogits): logits [N, V] f32 and labels [N] (ignore_index -100) → loss (mean
//    over the labelled rows, sum, or per row) and the argmax-correct count, as a tfjs op with gradient.
//    Bandwidth-bound kernels: CeLogitsPartialProgram reads each row once (online log-sum-exp and argmax
//    per row, or per slice when rows are few) and CeLogitsFinishProgram merges the slices with the label
//    logit; CeStatsReduceProgram makes the loss and the count; CeLogitsGradProgram reads the logits again
//    and writes (softmax − onehot)·scale, elementwise — as f32, or as f16 halves packed two per int32 (a
//    HalfTensor for the f16 matmuls).
// 3. From hidden states under mixed precision (crossEntropyFromHiddenF16, computeDtype 'float16' on
//    webgpu): token chunks of logits = h·Wᵀ on matMulF16 (f16 operands, f32 out), the row kernels of 2 on
//    each chunk writing G = (softmax − onehot)·2^15 in f16, then dH = G·W and dW = Gᵀ·h on matMulF16 — all in
//    the forward when a gradient tape is recording (as Liger's fused linear cross-entropy: 3 matmuls, no
//    recompute); the backward only scales dH, dW by dy·2^-15 (/ labelled rows for 'mean') in f32.
//    FLOPs, forward + backward: 3·2·N·H·V.

import * as tf from '@tensorflow/tfjs-core';
import '../gradients';
import {
  assertFloat32,
  FLAT_WORKGROUP,
  forEachAcc,
  GroupedProgram,
  MatmulProgram,
  matmulLoaders,
  matmulMain,
  matmulUniforms,
  onWebGpu,
  blockSumWgsl,
  pickTile,
  runProgram,
  TiledMatmulProgram,
  tileKey,
  uninitialised,
  type MatmulDims,
  type MatmulEpilogueContext,
  type MatmulTile,
  type Uniform,
} from './program';
import { HalfTensor, matMulF16, toHalf, type SgTile } from './matmul-f16';

export interface CrossEntropyOptions {
  /** 'mean' (default): mean token loss; 'sum'; 'none': the [N] token losses */
  reduction?: 'mean' | 'sum' | 'none';
  /** vocabulary rows per backward chunk (default 16384: D is N × 16384 fp32) */
  chunkSize?: number;
  /** matmul tile for the logits (default: {@link pickTile}) */
  tile?: MatmulTile;
}

export interface CrossEntropyOutput {
  /** scalar ('mean' / 'sum') or [N] ('none'); differentiable w.r.t. hidden and weight */
  loss: tf.Tensor;
  /** float32 scalar: how many rows have argmax(logits) = target (ties: the lowest index wins, as tf.argMax) */
  correct: tf.Scalar;
}

/** Below this the first logit of a tile can't be: the max of an empty set. */
const NO_LOGIT = '-3.0e38';

/** (max, Σexp(x − max), argmax) merged with another such triple; ties go to the lower index. */
const MERGE_WGSL = `
    fn ceMerge(a : vec3<f32>, b : vec3<f32>) -> vec3<f32> {
      let m = max(a.x, b.x);
      let s = a.y * exp(a.x - m) + b.y * exp(b.x - m);
      let takeB = b.x > a.x || (b.x == a.x && b.z < a.z);
      return vec3<f32>(m, s, select(a.z, b.z, takeB));
    }`;

/**
 * Logits tile → per row (max, Σexp, argmax, target logit) into result [N, T, 4], T = ⌈V / tileN⌉.
 * The target logit (slot 3) is written only in the tile that holds the target column.
 */
class CeStatsProgram extends TiledMatmulProgram {
  constructor(tile: MatmulTile, N: number, V: number) {
    super(['A', 'B', 'Tgt'], [N, Math.ceil(V / tile.tileN), 4], `tsft_ce_stats_${tileKey(tile)}`, tile, N, V, 'T : i32,');
  }

  getUserCode(): string {
    const [WX, WY] = this.workgroupSize;
    const { threadM: TM, threadN: TN } = this.tile;
    const epilogue = (ctx: MatmulEpilogueContext): string => {
      // each of the thread's TN columns of row i, in increasing column order
      const lanes = (i: number, f: (col: string, v: string) => string) =>
        Array.from({ length: TN }, (_, j) => f(`col0 + ${ctx.col(j >> 2, j & 3)}`, `acc_${i}_${j >> 2}[${j & 3}]`)).join('\n        ');
      return Array.from({ length: TM }, (_, i) => `{
        let r = row0 + ${ctx.row(i)};
        var m = ${NO_LOGIT};
        var arg = 0;
        ${lanes(i, (col, v) => `if (${col} < uniforms.N && ${v} > m) { m = ${v}; arg = ${col}; }`)}
        var s = 0.0;
        ${lanes(i, (col, v) => `if (${col} < uniforms.N) { s = s + exp(${v} - m); }`)}
        if (r < uniforms.M) {
          let t = Tgt[r];
          let at = (r * uniforms.T + i32(workgroupId.y)) * 4;
          ${lanes(i, (col, v) => `if (${col} == t) { result[at + 3] = ${v}; }`)}
        }
        ceRed[tid] = vec3<f32>(m, s, f32(arg));
        workgroupBarrier();
        if (tx == 0 && r < uniforms.M) {
          var total = ceRed[ty * ${WX}];
          for (var j = 1; j < ${WX}; j = j + 1) { total = ceMerge(total, ceRed[ty * ${WX} + j]); }
          let at = (r * uniforms.T + i32(workgroupId.y)) * 4;
          result[at] = total.x;
          result[at + 1] = total.y;
          result[at + 2] = total.z;
        }
        workgroupBarrier();
      }`).join('\n');
    };
    return `
    var<workgroup> ceRed : array<vec3<f32>, ${WX * WY}>;
    ${MERGE_WGSL}
    ${matmulLoaders({ name: 'A', layout: 'mk', off: 'uniforms.aOff', ld: 'uniforms.lda' }, { name: 'B', layout: 'nk', off: 'uniforms.bOff', ld: 'uniforms.ldb' })}
    ${matmulMain(this.tile, 'mk', 'nk', epilogue)}`;
  }
}

/** Merges a row's tiles: result [3, N] = (token loss, log-sum-exp, 1 if argmax = target else 0). */
class CeCombineProgram extends GroupedProgram {
  override uniforms = 'N : i32, T : i32, tileN : i32,';

  constructor(N: number) {
    super(['Part', 'Tgt'], [3, N], 'tsft_ce_combine', N, 128);
  }

  getUserCode(): string {
    return `
    var<workgroup> ceRed : array<vec3<f32>, 128>;
    ${MERGE_WGSL}
    fn main() {
      let row = ${FLAT_WORKGROUP};
      let tid = i32(localIndex);
      let live = row < uniforms.N;
      var acc = vec3<f32>(${NO_LOGIT}, 0.0, 0.0);
      if (live) {
        for (var t = tid; t < uniforms.T; t = t + 128) {
          let at = (row * uniforms.T + t) * 4;
          acc = ceMerge(acc, vec3<f32>(Part[at], Part[at + 1], Part[at + 2]));
        }
      }
      ceRed[tid] = acc;
      workgroupBarrier();
      for (var w = 64; w > 0; w = w / 2) {
        if (tid < w) { ceRed[tid] = ceMerge(ceRed[tid], ceRed[tid + w]); }
        workgroupBarrier();
      }
      if (tid == 0 && live) {
        let total = ceRed[0];
        let tg = Tgt[row];
        let lse = total.x + log(total.y);
        let picked = Part[(row * uniforms.T + tg / uniforms.tileN) * 4 + 3];
        result[row] = lse - picked;
        result[uniforms.N + row] = lse;
        result[2 * uniforms.N + row] = select(0.0, 1.0, i32(total.z) == tg);
      }
    }`;
  }
}

/**
 * Logits of a vocabulary chunk with the softmax gradient fused in: result [N, C] =
 * (exp(h·W[c0 + j]ᵀ − lse) − [c0 + j = target]) · dy. Inputs: A = hidden, B = weight, Stats [3, N]
 * (lse in row 1), Tgt, Dy [3, N] (the token losses' gradient in row 0).
 */
class CeGradLogitsProgram extends TiledMatmulProgram {
  constructor(tile: MatmulTile, N: number, C: number) {
    super(['A', 'B', 'Stats', 'Tgt', 'Dy'], [N, C], `tsft_ce_grad_logits_${tileKey(tile)}`, tile, N, C, 'c0 : i32,');
  }

  getUserCode(): string {
    return `
    ${matmulLoaders({ name: 'A', layout: 'mk', off: 'uniforms.aOff', ld: 'uniforms.lda' }, { name: 'B', layout: 'nk', off: 'uniforms.bOff', ld: 'uniforms.ldb' })}
    ${matmulMain(this.tile, 'mk', 'nk', (ctx) => forEachAcc(ctx.tile, (i, c) => `{
      let r = row0 + ${ctx.row(i)};
      if (r < uniforms.M) {
        let lse = Stats[uniforms.M + r];
        let t = Tgt[r] - uniforms.c0;
        let g = Dy[r];
        ${[0, 1, 2, 3].map((q) => `{ let n = col0 + ${ctx.col(c, q)}; if (n < uniforms.N) { result[r * uniforms.N + n] = (exp(acc_${i}_${c}[${q}] - lse) - select(0.0, 1.0, n == t)) * g; } }`).join('\n        ')}
      }
    }`))}`;
  }
}

function checkShapes(hidden: tf.Tensor, weight: tf.Tensor, targets: tf.Tensor): void {
  if (hidden.rank !== 2 || weight.rank !== 2 || targets.rank !== 1) {
    throw new RangeError(`crossEntropyFromHidden: expected hidden [N, H], weight [V, H], targets [N]; got ${hidden.shape}, ${weight.shape}, ${targets.shape}`);
  }
  if (hidden.shape[1] !== weight.shape[1] || hidden.shape[0] !== targets.shape[0]) {
    throw new RangeError(`crossEntropyFromHidden: shapes disagree: hidden ${hidden.shape}, weight ${weight.shape}, targets ${targets.shape}`);
  }
  if (targets.dtype !== 'int32') throw new TypeError(`crossEntropyFromHidden: targets must be int32, got ${targets.dtype}`);
}

/** Forward on webgpu: [3, N] = (token loss, lse, correct). */
function ceStatsWebGpu(hidden: tf.Tensor, weight: tf.Tensor, targets: tf.Tensor, tile: MatmulTile): tf.Tensor {
  const [N, H] = hidden.shape, V = weight.shape[0];
  const stats = new CeStatsProgram(tile, N, V);
  const T = stats.outputShape[1];
  const dims: MatmulDims = { M: N, N: V, K: H, lda: H, ldb: H, ldc: V };
  const part = runProgram(stats, [hidden, weight, targets], [...matmulUniforms(dims), { type: 'int32', data: [T] }]);
  const out = runProgram(new CeCombineProgram(N), [part, targets], [
    { type: 'int32', data: [N] },
    { type: 'int32', data: [T] },
    { type: 'int32', data: [tile.tileN] },
  ]);
  part.dispose();
  return out;
}

/** Backward on webgpu: [dHidden, dWeight], the vocabulary walked in chunks. stats and dy: [3, N] (lse in row 1, dloss in row 0). */
function ceBackwardWebGpu(
  hidden: tf.Tensor,
  weight: tf.Tensor,
  targets: tf.Tensor,
  stats: tf.Tensor,
  dy: tf.Tensor,
  tile: MatmulTile,
  chunkSize: number,
): [tf.Tensor, tf.Tensor] {
  const [N, H] = hidden.shape, V = weight.shape[0];
  const dW = uninitialised([V, H]);
  let dh: tf.Tensor | null = null;
  for (let c0 = 0; c0 < V; c0 += chunkSize) {
    const C = Math.min(chunkSize, V - c0);
    const d = runProgram(new CeGradLogitsProgram(tile, N, C), [hidden, weight, stats, targets, dy], [
      ...matmulUniforms({ M: N, N: C, K: H, lda: H, bOff: c0 * H, ldb: H, ldc: C }),
      { type: 'int32', data: [c0] },
    ]);                                                                                  // [N, C]
    // dHidden += D · W[c0 : c0 + C]
    const dhDims = matmulUniforms({ M: N, N: H, K: C, lda: C, bOff: c0 * H, ldb: H, ldc: H });
    const next: tf.Tensor = runProgram(new MatmulProgram(pickTile(N, H), 'mk', 'kn', N, H, dh !== null), dh ? [d, weight, dh] : [d, weight], dhDims);
    dh?.dispose();
    dh = next;                                                                           // [N, H]
    // dW[c0 : c0 + C] = Dᵀ · hidden, written in place
    const dwDims = matmulUniforms({ M: C, N: H, K: N, lda: C, ldb: H, cOff: c0 * H, ldc: H });
    runProgram(new MatmulProgram(pickTile(C, H), 'km', 'kn', C, H), [d, hidden], dwDims, 'float32', dW);
    d.dispose();
  }
  return [dh!, dW];
}

/**
 * Rows per flat gather of the target logits: tfjs-backend-webgpu's Gather and its gradient
 * (UnsortedSegmentSum) address elements through f32, exact only below 2^24 — at 2048 × 151,936 one flat
 * gather picks (and trains) a neighbouring token's logit for some rows. Gathering in row blocks of
 * fewer than 2^24 elements keeps every index exact.
 */
export function gatherRowsPerBlock(V: number): number {
  return Math.max(1, Math.floor(2 ** 24 / V));
}

/**
 * Token losses [N] and correct count in plain tfjs ops — Qwen2ForCausalLM.loss after its gather of the
 * labelled rows (materialises the [N, V] logits). The fallback off webgpu, and the reference in tests
 * and the benchmark.
 */
export function crossEntropyStock(hidden: tf.Tensor2D, weight: tf.Tensor2D, targets: tf.Tensor1D): { tokenLoss: tf.Tensor1D; correct: tf.Scalar } {
  const [N] = hidden.shape, V = weight.shape[0];
  const logits = tf.matMul(hidden, weight, false, true);                               // [N, V]
  const lse = tf.logSumExp(logits, -1);                                                 // [N]
  const rowsPer = gatherRowsPerBlock(V), parts: tf.Tensor[] = [];
  for (let r0 = 0; r0 < N; r0 += rowsPer) {
    const n = Math.min(rowsPer, N - r0);
    const flat = tf.add(tf.mul(tf.range(0, n, 1, 'int32'), tf.scalar(V, 'int32')), tf.slice(targets, [r0], [n]));
    parts.push(tf.gather(tf.reshape(tf.slice(logits, [r0, 0], [n, V]), [n * V]), flat));   // [n]
  }
  const picked = parts.length === 1 ? parts[0] : tf.concat(parts);                      // [N]
  const correct = tf.sum(tf.cast(tf.equal(tf.argMax(logits, -1), targets), 'float32')) as tf.Scalar;
  return { tokenLoss: tf.sub(lse, picked), correct };
}

/**
 * Cross-entropy of `hidden · weightᵀ` against `targets`, with token accuracy, never keeping [N, V]
 * logits on webgpu. Gradients flow to `hidden` and `weight` through `loss` (targets must stay alive
 * until backward). On other backends: plain tfjs ops with the same result.
 *
 * @param hidden [N, H] float32: hidden states of the labelled positions
 * @param weight [V, H] float32: the LM head (or tied embedding)
 * @param targets [N] int32: target token per row, in [0, V)
 * @example
 * const { loss, correct } = crossEntropyFromHidden(h, lmHead, targets);            // mean over N
 * const grads = tf.grads((h, w) => crossEntropyFromHidden(h, w, targets).loss)([h, lmHead]);
 */
export function crossEntropyFromHidden(
  hidden: tf.Tensor2D,
  weight: tf.Tensor2D,
  targets: tf.Tensor1D,
  opts: CrossEntropyOptions = {},
): CrossEntropyOutput {
  checkShapes(hidden, weight, targets);
  const reduce = (tokenLoss: tf.Tensor): tf.Tensor =>
    opts.reduction === 'none' ? tokenLoss : opts.reduction === 'sum' ? tf.sum(tokenLoss) : tf.mean(tokenLoss);
  if (!onWebGpu()) {
    return tf.tidy(() => {
      const { tokenLoss, correct } = crossEntropyStock(hidden, weight, targets);
      return { loss: reduce(tokenLoss), correct };
    });
  }
  assertFloat32('crossEntropyFromHidden', hidden, weight);
  const [N, H] = hidden.shape, V = weight.shape[0];
  if (N === 0 || H === 0 || V === 0) throw new RangeError(`crossEntropyFromHidden: empty input (hidden ${hidden.shape}, weight ${weight.shape})`);
  const tile = opts.tile ?? pickTile(N, V);
  const chunkSize = Math.max(1, Math.floor(opts.chunkSize ?? 16384));
  // The custom op's value is the whole [3, N] (loss, lse, hit) so that nothing escapes tf.tidy: the
  // backward reads dy's row 0 and the saved lse row; rows 1–2 carry no gradient.
  const f = tf.customGrad(((h: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
    const stats = ceStatsWebGpu(h, w, targets, tile);                                   // [3, N]
    save([h, w, targets, stats]);
    return {
      value: stats,
      gradFunc: (dy: tf.Tensor, [sh, sw, st, sstats]: tf.Tensor[]) => ceBackwardWebGpu(sh, sw, st, sstats, dy, tile, chunkSize),
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const stats = f(hidden, weight);
  const out = tf.tidy(() => ({
    loss: reduce(tf.reshape(tf.slice(stats, [0, 0], [1, N]), [N])),
    correct: tf.sum(tf.slice(stats, [2, 0], [1, N])) as tf.Scalar,
  }));
  stats.dispose();
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Cross-entropy over logits [N, V]: bandwidth-bound kernels over the rows. A row is read in units of 4
// logits (vec4, 16-byte loads) when V is a multiple of 4, else 1 by 1 (an f16 gradient then in pairs: V
// even, a packed word must not straddle two rows).
// - statistics: one workgroup of CE_WG threads per row (online log-sum-exp and argmax), or per slice of a
//   row when there are too few rows to fill the GPU (CE_MIN_GROUPS), then one thread per row merges its
//   slices (CeLogitsFinishProgram). On the H200 (2026-11-28) one workgroup per row read 2048 × 151,936 in
//   0.31 ms (4.1 TB/s); 4, 10, 40 slices per row were 1.1×, 1.3×, 3.8× slower (each slice's reduction costs).
// - gradient: elementwise over the flat [N, V] (CE_GRAD_PER_THREAD units per thread, all loads issued
//   before the stores), each unit finding its row's lse, label and upstream gradient by one division: as
//   fast as a workgroup per row at 2048 rows (0.59 ms on the H200: 4.2 TB/s), and independent of the row count.
// - the loss (mean, sum or per row) and the correct count: one small workgroup over the [4, N] statistics
//   (CeStatsReduceProgram), so that the op adds no tfjs kernels of its own: tfjs's slice / sum / div on the
//   statistics and their gradients cost ~0.4 ms of GPU time per step on the H200, plus their CPU dispatch.

/** Threads per workgroup of the row kernels. */
const CE_WG = 256;
/** vec4 loads each thread of the statistics kernel issues before using them (memory-level parallelism). */
const CE_UNROLL = 4;
/** Workgroups the statistics kernel aims at (a few per SM): fewer rows than this are split into slices. */
const CE_MIN_GROUPS = 2048;
/** Fewest units (vec4s or logits) per thread of a slice. */
const CE_MIN_PER_THREAD = 8;
/** Units per thread of the gradient kernel (H200, 2048 × 151,936 f32: 2, 4, 8 → 0.81, 0.59, 0.59 ms). */
const CE_GRAD_PER_THREAD = 8;
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Label of a row that takes no part in the loss (PyTorch's default ignore_index). */
export const IGNORE_INDEX = -100;

/** The constant G = (softmax − onehot)·2^15 is written with in f16 (|G| ≤ 2^15 < 65504: never overflows). */
const HALF_GRAD_SCALE = 2 ** 15;

/**
 * Per slice of a row of logits [rows, V] (units [part·chunk, min((part + 1)·chunk, n)) of the row's n
 * units): result [rows, split, 4] = (max, Σexp(x − max), argmax, 0), the argmax the lowest column holding
 * the maximum. A slice with no units gives (-3e38, 0, 0).
 */
class CeLogitsPartialProgram extends GroupedProgram {
  override uniforms = 'rows : i32, V : i32, split : i32, chunk : i32,';
  variableComponents: number[];

  constructor(rows: number, split: number, readonly vec: boolean) {
    super(['Logits'], [rows, split, 4], `tsft_ce_logits_partial_${vec ? 'v4' : 's'}_${CE_WG}_u${CE_UNROLL}`, rows * split, CE_WG);
    this.variableComponents = [vec ? 4 : 1];
  }

  getUserCode(): string {
    const U = CE_UNROLL;
    const scan = this.vec
      ? `
      // ${U} loads in flight per thread, then one online update over their ${4 * U} values
      for (; j + ${(U - 1) * CE_WG} < hi; j = j + ${U * CE_WG}) {
        ${range(U).map((u) => `let x${u} = Logits[base + j + ${u * CE_WG}];`).join('\n        ')}
        ${range(U).map((u) => `let m${u} = max(max(x${u}.x, x${u}.y), max(x${u}.z, x${u}.w));`).join('\n        ')}
        let mx = ${range(U).map((u) => `m${u}`).reduce((a, b) => `max(${a}, ${b})`)};
        if (mx > m) {
          s = s * exp(m - mx);
          m = mx;
          // the first (lowest-column) load holding the maximum
          var jb = j + ${(U - 1) * CE_WG};
          var xb = x${U - 1};
          ${range(U - 1).reverse().map((u) => `if (m${u} == mx) { jb = j + ${u * CE_WG}; xb = x${u}; }`).join('\n          ')}
          arg = 4 * jb + ceFirstLane(xb, mx);
        }
        let mm = vec4<f32>(m);
        let e = ${range(U).map((u) => `exp(x${u} - mm)`).join(' + ')};
        s = s + (e.x + e.y) + (e.z + e.w);
      }
      for (; j < hi; j = j + ${CE_WG}) {
        let x = Logits[base + j];
        let mx = max(max(x.x, x.y), max(x.z, x.w));
        if (mx > m) {
          s = s * exp(m - mx);
          m = mx;
          arg = 4 * j + ceFirstLane(x, mx);
        }
        let e = exp(x - vec4<f32>(m));
        s = s + (e.x + e.y) + (e.z + e.w);
      }`
      : `
      for (; j < hi; j = j + ${CE_WG}) {
        let x = Logits[base + j];
        if (x > m) {
          s = s * exp(m - x);
          m = x;
          arg = j;
        }
        s = s + exp(x - m);
      }`;
    return `
    var<workgroup> ceRed : array<vec3<f32>, ${CE_WG}>;
    ${MERGE_WGSL}
    fn ceFirstLane(x : vec4<f32>, mx : f32) -> i32 {
      return select(select(select(3, 2, x.z == mx), 1, x.y == mx), 0, x.x == mx);
    }
    fn main() {
      let item = ${FLAT_WORKGROUP};
      let row = item / uniforms.split;
      let part = item - row * uniforms.split;
      let tid = i32(localIndex);
      let live = row < uniforms.rows;
      let n = uniforms.V${this.vec ? ' / 4' : ''};
      var m = ${NO_LOGIT};
      var s = 0.0;
      var arg = 0;
      if (live) {
        let base = row * n;
        let hi = min(n, (part + 1) * uniforms.chunk);
        var j = part * uniforms.chunk + tid;${scan}
      }
      ceRed[tid] = vec3<f32>(m, s, f32(arg));
      workgroupBarrier();
      for (var w = ${CE_WG / 2}; w > 0; w = w / 2) {
        if (tid < w) { ceRed[tid] = ceMerge(ceRed[tid], ceRed[tid + w]); }
        workgroupBarrier();
      }
      if (tid == 0 && live) {
        let total = ceRed[0];
        let at = 4 * item;
        result[at] = total.x;
        result[at + 1] = total.y;
        result[at + 2] = total.z;
        result[at + 3] = 0.0;
      }
    }`;
  }
}

/**
 * Merges each row's slices (one thread per row; Part [rows, split, 4] from CeLogitsPartialProgram, row r's
 * label at Labels[labelOff + r]): result [4, rows] = (token loss, log-sum-exp, 1 if argmax = label else 0,
 * 1 if the row is labelled else 0). A row labelled -100 has loss 0 and counts 0; a label outside [0, V)
 * otherwise gives loss NaN (PyTorch raises). Argmax ties go to the lowest index (as tf.argMax).
 */
class CeLogitsFinishProgram extends GroupedProgram {
  override uniforms = 'rows : i32, V : i32, split : i32, labelOff : i32,';
  variableComponents: number[];

  constructor(rows: number, readonly vec: boolean) {
    super(['Logits', 'Labels', 'Part'], [4, rows], `tsft_ce_logits_finish_${vec ? 'v4' : 's'}`, Math.ceil(rows / 64), 64);
    this.variableComponents = [vec ? 4 : 1, 1, 4];
  }

  getUserCode(): string {
    const logitAt = this.vec ? 'Logits[row * (uniforms.V / 4) + t / 4][t % 4]' : 'Logits[row * uniforms.V + t]';
    return `
    ${MERGE_WGSL}
    fn main() {
      let row = ${FLAT_WORKGROUP} * 64 + i32(localIndex);
      if (row >= uniforms.rows) { return; }
      var total = Part[row * uniforms.split].xyz;
      for (var p = 1; p < uniforms.split; p = p + 1) { total = ceMerge(total, Part[row * uniforms.split + p].xyz); }
      let t = Labels[uniforms.labelOff + row];
      let lse = total.x + log(total.y);
      var loss = 0.0;
      var hit = 0.0;
      var counted = 0.0;
      if (t != ${IGNORE_INDEX}) {
        counted = 1.0;
        if (t >= 0 && t < uniforms.V) {
          loss = lse - ${logitAt};
          hit = select(0.0, 1.0, i32(total.z) == t);
        } else {
          loss = uniforms.NAN;
        }
      }
      result[row] = loss;
      result[uniforms.rows + row] = lse;
      result[2 * uniforms.rows + row] = hit;
      result[3 * uniforms.rows + row] = counted;
    }`;
  }
}

/**
 * Where the gradient kernel's g comes from: the uniform `scale`; Dy[r] per row ('rows': row 0 of a [4, N]
 * or an [N] upstream gradient); Dy[0] for every row ('scalar'), divided by Den[0] ('scalarDiv').
 */
type GradScale = 'uniform' | 'rows' | 'scalar' | 'scalarDiv';

/**
 * The gradient of the token losses w.r.t. logits [rows, V]: (exp(x − lse) − onehot(label))·g per row,
 * zero on rows labelled -100; lse from Stats[statsN + r] (row 1 of a [4, statsN] stats tensor), g as
 * {@link GradScale} says. Elementwise over the rows'
 * units (vec4s, f16 pairs, or single logits), `per` units a thread. Output at `outOff` (in output
 * elements: a vec4 or a vec2 of packed words per vec4 unit, one packed word per pair, one f32 per logit):
 * f32 [rows, V], or f16 halves packed two per int32 word (round to nearest; |g| must stay within f16's range).
 */
class CeLogitsGradProgram extends GroupedProgram {
  override uniforms = 'rows : i32, V : i32, labelOff : i32, statsN : i32, outOff : i32, scale : f32,';
  variableComponents: number[];
  outputComponent: number;
  /** logits per unit: 4 (vec4 rows), 2 (f16 pairs), 1 */
  readonly width: number;

  constructor(rows: number, V: number, readonly vec: boolean, readonly out: 'float32' | 'float16', readonly scaleFrom: GradScale, readonly per = CE_GRAD_PER_THREAD) {
    const width = vec ? 4 : out === 'float16' ? 2 : 1;
    const extra = scaleFrom === 'uniform' ? [] : scaleFrom === 'scalarDiv' ? ['Dy', 'Den'] : ['Dy'];
    super(
      ['Logits', 'Labels', 'Stats', ...extra],
      out === 'float32' ? [rows, V] : [Math.ceil((rows * V) / 2)],
      `tsft_ce_logits_grad_w${width}_${out}_${scaleFrom}_${CE_WG}_p${per}`,
      Math.ceil((rows * V) / width / (CE_WG * per)),
      CE_WG,
    );
    this.width = width;
    this.variableComponents = [vec ? 4 : 1, 1, 1, ...extra.map(() => 1)];
    this.outputComponent = vec ? (out === 'float32' ? 4 : 2) : 1;
  }

  getUserCode(): string {
    const f16 = this.out === 'float16', w = this.width, P = this.per;
    const pack = (a: string, b: string) => `bitcast<i32>(pack2x16float(vec2<f32>(${a}, ${b})))`;
    // per unit k: its logits (loaded first, for all k), then p = (exp(x − lse) − onehot)·g and the write
    const vt = w === 1 ? 'f32' : `vec${w}<f32>`, it = w === 1 ? 'i32' : `vec${w}<i32>`;
    const load = (k: number) => w === 2 ? `vec2<f32>(Logits[2 * e${k}], Logits[2 * e${k} + 1])` : `Logits[e${k}]`;
    const lanes = w === 1 ? '0' : `vec${w}<i32>(${range(w).join(', ')})`;
    const write = (p: string) => !f16 ? p : w === 4 ? `vec2<i32>(${pack(`${p}.x`, `${p}.y`)}, ${pack(`${p}.z`, `${p}.w`)})` : pack(`${p}.x`, `${p}.y`);
    const zero = !f16 ? `${vt}(0.0)` : w === 4 ? 'vec2<i32>(0)' : '0';
    const g = { uniform: 'uniforms.scale', rows: 'f32(Dy[row])', scalar: 'g0', scalarDiv: 'g0' }[this.scaleFrom];
    return `
    fn main() {
      ${this.scaleFrom === 'scalar' ? 'let g0 = f32(Dy[0]);' : this.scaleFrom === 'scalarDiv' ? 'let g0 = f32(Dy[0]) / f32(Den[0]);' : ''}
      let n = uniforms.V / ${w};
      let total = uniforms.rows * n;
      let eb = ${FLAT_WORKGROUP} * ${CE_WG * P} + i32(localIndex);
      ${range(P).map((k) => `let e${k} = min(eb + ${k * CE_WG}, total - 1);`).join('\n      ')}
      ${range(P).map((k) => `let x${k} = ${load(k)};`).join('\n      ')}
      ${range(P).map((k) => `if (eb + ${k * CE_WG} < total) {
        let row = e${k} / n;
        let t = Labels[uniforms.labelOff + row];
        let g = ${g};
        let col = ${w} * (e${k} - row * n);
        let p = exp(x${k} - ${vt}(Stats[uniforms.statsN + row])) * g - select(${vt}(0.0), ${vt}(g), ${it}(col) + ${lanes} == ${it}(t));
        result[uniforms.outOff + e${k}] = select(${write('p')}, ${zero}, t == ${IGNORE_INDEX});
      }`).join('\n      ')}
    }`;
  }
}

/** What {@link CeStatsReduceProgram} makes of the [4, N] statistics. */
type StatsReduction = 'none' | 'mean' | 'sum' | 'correct' | 'counted';

/**
 * One workgroup over the statistics [4, rows] of {@link logitsStats}: 'none' → the token losses [rows]
 * (row 0); 'sum' → Σ token loss []; 'mean' → Σ token loss / Σ labelled []; 'correct' → Σ row 2 [];
 * 'counted' → Σ row 3 [].
 */
class CeStatsReduceProgram extends GroupedProgram {
  override uniforms = 'rows : i32,';

  constructor(rows: number, readonly what: StatsReduction) {
    super(['Stats'], what === 'none' ? [rows] : [], `tsft_ce_stats_reduce_${what}`, 1, CE_WG);
  }

  getUserCode(): string {
    if (this.what === 'none') {
      return `
    fn main() {
      for (var r = i32(localIndex); r < uniforms.rows; r = r + ${CE_WG}) { result[r] = Stats[r]; }
    }`;
    }
    const row = { mean: 0, sum: 0, correct: 2, counted: 3 }[this.what];
    const mean = this.what === 'mean';
    return `
    ${blockSumWgsl(CE_WG)}
    fn main() {
      var a = 0.0;
      var c = 0.0;
      for (var r = i32(localIndex); r < uniforms.rows; r = r + ${CE_WG}) {
        a = a + Stats[${row} * uniforms.rows + r];
        ${mean ? 'c = c + Stats[3 * uniforms.rows + r];' : ''}
      }
      let sa = kBlockSum(a);
      ${mean ? 'let sc = kBlockSum(c);' : ''}
      if (localIndex == 0u) { result[0] = ${mean ? 'sa / sc' : 'sa'}; }
    }`;
  }
}

/** {@link CeStatsReduceProgram} on statistics [4, N]. */
function reduceStats(stats: tf.Tensor, what: StatsReduction): tf.Tensor {
  const rows = stats.shape[stats.rank - 1];
  return runProgram(new CeStatsReduceProgram(rows, what), [stats], [{ type: 'int32', data: [rows] }]);
}

function checkLogits(what: string, logits: tf.Tensor, labels: tf.Tensor): void {
  if (logits.rank !== 2 || labels.rank !== 1 || logits.shape[0] !== labels.shape[0]) {
    throw new RangeError(`${what}: expected logits [N, V] and labels [N], got ${logits.shape} and ${labels.shape}`);
  }
  if (labels.dtype !== 'int32') throw new TypeError(`${what}: labels must be int32, got ${labels.dtype}`);
  assertFloat32(what, logits);
  if (logits.size >= 2 ** 31) throw new RangeError(`${what}: ${logits.shape} logits exceed the kernels' i32 indexing (2^31 elements)`);
}

/**
 * Slices per row for the statistics kernel: 1 when the rows alone give {@link CE_MIN_GROUPS} workgroups,
 * else enough to reach it, each slice keeping at least {@link CE_MIN_PER_THREAD} units per thread.
 */
export function statsSplit(rows: number, V: number): number {
  const n = V % 4 === 0 ? V / 4 : V;
  return Math.max(1, Math.min(Math.ceil(CE_MIN_GROUPS / Math.max(1, rows)), Math.floor(n / (CE_WG * CE_MIN_PER_THREAD))));
}

/**
 * Row statistics of logits [N, V] (webgpu): [4, N] = (token loss, log-sum-exp, argmax = label, labelled).
 * `labelOff`: the rows' labels start at labels[labelOff] (a token chunk of a longer label vector); `split`:
 * slices per row (default {@link statsSplit}; the result does not depend on it beyond rounding).
 */
export function logitsStats(logits: tf.Tensor2D, labels: tf.Tensor1D, labelOff = 0, split = statsSplit(logits.shape[0], logits.shape[1])): tf.Tensor2D {
  const [N, V] = logits.shape;
  const vec = V % 4 === 0;
  const n = vec ? V / 4 : V;
  const parts = Math.max(1, Math.min(Math.floor(split), n));
  const chunk = Math.ceil(n / parts);
  const part = runProgram(new CeLogitsPartialProgram(N, parts, vec), [logits], [
    { type: 'int32', data: [N] },
    { type: 'int32', data: [V] },
    { type: 'int32', data: [parts] },
    { type: 'int32', data: [chunk] },
  ]);
  const stats = runProgram(new CeLogitsFinishProgram(N, vec), [logits, labels, part], [
    { type: 'int32', data: [N] },
    { type: 'int32', data: [V] },
    { type: 'int32', data: [parts] },
    { type: 'int32', data: [labelOff] },
  ]) as tf.Tensor2D;
  part.dispose();
  return stats;
}

export interface LogitsGradOptions {
  /** the rows' labels start at labels[labelOff] (default 0) */
  labelOff?: number;
  /** 'float16': halves packed two per int32 word (needs V even); default 'float32' */
  dtype?: 'float32' | 'float16';
  /** f16 only: write into this packed tensor, starting at half `rowOffset·V` (a token chunk of a bigger G) */
  into?: tf.Tensor;
  rowOffset?: number;
  /** units (vec4s, f16 pairs or logits) per thread (default {@link CE_GRAD_PER_THREAD}; the result does not depend on it) */
  perThread?: number;
  /** a 1-element tensor: a 1-element `scale` tensor is divided by its value (the labelled-row count of a mean) */
  divideBy?: tf.Tensor;
}

/**
 * dLoss/dlogits (webgpu) = (softmax − onehot(label))·g for logits [N, V], zero on rows labelled -100:
 * `stats` from {@link logitsStats} (lse in row 1); g = `scale` (a number, the same for every row), the
 * value of a 1-element tensor (the same for every row, divided by `opts.divideBy`'s when given), or row 0
 * of a [4, N] / [N] tensor (per-row upstream gradients). f32 [N, V], or (dtype 'float16') a
 * {@link HalfTensor} [N, V] whose |values| must stay below 65504 (|softmax − onehot| ≤ 1: |g| ≤ 2^15 is safe).
 */
export function logitsGrad(logits: tf.Tensor2D, labels: tf.Tensor1D, stats: tf.Tensor, scale: number | tf.Tensor, opts: LogitsGradOptions = {}): tf.Tensor2D | HalfTensor {
  const [N, V] = logits.shape;
  const dtype = opts.dtype ?? 'float32';
  const half = dtype === 'float16';
  if (half && V % 2 !== 0) throw new RangeError(`logitsGrad: an f16 gradient needs an even vocabulary (packed pairs), got V = ${V}`);
  const vec = V % 4 === 0;
  const perOut = vec ? 4 : half ? 2 : 1;                                                  // logits per output element
  const outOff = ((opts.rowOffset ?? 0) * V) / perOut;
  if (!Number.isInteger(outOff)) throw new RangeError(`logitsGrad: row offset ${opts.rowOffset} × V ${V} is not a whole output element`);
  const per = Math.max(1, Math.min(8, Math.floor(opts.perThread ?? CE_GRAD_PER_THREAD)));
  const mode: GradScale = typeof scale === 'number' ? 'uniform' : scale.size !== 1 ? 'rows' : opts.divideBy ? 'scalarDiv' : 'scalar';
  if (opts.divideBy && mode !== 'scalarDiv') throw new RangeError('logitsGrad: divideBy goes with a 1-element scale tensor');
  const program = new CeLogitsGradProgram(N, V, vec, dtype, mode, per);
  const inputs = [logits, labels, stats, ...(typeof scale === 'number' ? [] : [scale]), ...(mode === 'scalarDiv' ? [opts.divideBy!] : [])];
  const uniforms: Uniform[] = [
    { type: 'int32', data: [N] },
    { type: 'int32', data: [V] },
    { type: 'int32', data: [opts.labelOff ?? 0] },
    { type: 'int32', data: [stats.shape[stats.rank - 1]] },
    { type: 'int32', data: [outOff] },
    { type: 'float32', data: [typeof scale === 'number' ? scale : 1] },
  ];
  if (!half) return runProgram(program, inputs, uniforms, 'float32', opts.into) as tf.Tensor2D;
  const packed = opts.into ?? uninitialised([halfWords(N * V)], 'int32');
  runProgram(program, inputs, uniforms, 'int32', packed);
  return new HalfTensor(packed as tf.Tensor1D, [N, V]);
}

/** int32 words holding `n` packed halves, in whole 16-byte groups (as matmul-f16.ts's HalfTensors). */
function halfWords(n: number): number {
  return Math.max(4, Math.ceil(n / 8) * 4);
}

/** The op in plain tfjs ops (the fallback off webgpu, and the tests' reference): token losses (0 on ignored rows), correct, labelled rows. */
function logitsLossStock(logits: tf.Tensor2D, labels: tf.Tensor1D): { tokenLoss: tf.Tensor1D; correct: tf.Scalar; counted: tf.Scalar } {
  return tf.tidy(() => {
    const [N, V] = logits.shape;
    const mask = tf.notEqual(labels, tf.scalar(IGNORE_INDEX, 'int32'));                    // [N]
    const safe = tf.where(mask, labels, tf.zerosLike(labels)) as tf.Tensor1D;
    const lse = tf.logSumExp(logits, -1);                                                   // [N]
    const rowsPer = gatherRowsPerBlock(V), parts: tf.Tensor[] = [];
    for (let r0 = 0; r0 < N; r0 += rowsPer) {
      const n = Math.min(rowsPer, N - r0);
      const flat = tf.add(tf.mul(tf.range(0, n, 1, 'int32'), tf.scalar(V, 'int32')), tf.slice(safe, [r0], [n]));
      parts.push(tf.gather(tf.reshape(tf.slice(logits, [r0, 0], [n, V]), [n * V]), flat));
    }
    const picked = parts.length === 1 ? parts[0] : tf.concat(parts);                      // [N]
    const c = tf.cast(mask, 'float32');
    const hit = tf.mul(tf.cast(tf.equal(tf.argMax(logits, -1), labels), 'float32'), c);
    return { tokenLoss: tf.mul(tf.sub(lse, picked), c) as tf.Tensor1D, correct: tf.sum(hit) as tf.Scalar, counted: tf.sum(c) as tf.Scalar };
  });
}

/** The op's outputs from token losses [N], the labelled-row count and the correct count. */
function reduceLoss(tokenLoss: tf.Tensor, counted: tf.Tensor, correct: tf.Scalar, reduction: 'mean' | 'sum' | 'none'): CrossEntropyOutput {
  const loss = reduction === 'none' ? tokenLoss : reduction === 'sum' ? tf.sum(tokenLoss) : tf.div(tf.sum(tokenLoss), counted);
  return { loss, correct };
}

/**
 * {@link crossEntropyLogits} in plain tfjs ops on any backend (log-sum-exp, the label logit gathered in row
 * blocks, argMax): the fallback off webgpu, and the stock reference of the tests and the benchmark.
 */
export function crossEntropyLogitsStock(logits: tf.Tensor2D, labels: tf.Tensor1D, reduction: 'mean' | 'sum' | 'none' = 'mean'): CrossEntropyOutput {
  checkLogits('crossEntropyLogitsStock', logits, labels);
  return tf.tidy(() => {
    const { tokenLoss, correct, counted } = logitsLossStock(logits, labels);
    return { ...reduceLoss(tokenLoss, counted, correct, reduction) };
  });
}

/**
 * Cross-entropy of logits [N, V] against labels [N] (PyTorch's `F.cross_entropy(logits, labels,
 * ignore_index=-100, reduction)`), with the count of rows whose argmax is the label. Differentiable w.r.t.
 * logits (labels must stay alive until backward). On webgpu two row kernels (statistics in one read of the
 * logits; the gradient in one more read and one write); elsewhere plain tfjs ops.
 *
 * @param logits [N, V] float32
 * @param labels [N] int32 in [0, V), or -100 for rows that take no part (loss 0, gradient 0, not counted)
 * @param reduction 'mean' (default: over the labelled rows; NaN when there are none, as PyTorch), 'sum',
 *   or 'none' ([N] token losses)
 * @example
 * const { loss, correct } = crossEntropyLogits(logits, labels);                 // mean over labelled rows
 * const [dLogits] = tf.grads((x) => crossEntropyLogits(x as tf.Tensor2D, labels).loss)([logits]);
 */
export function crossEntropyLogits(logits: tf.Tensor2D, labels: tf.Tensor1D, reduction: 'mean' | 'sum' | 'none' = 'mean'): CrossEntropyOutput {
  checkLogits('crossEntropyLogits', logits, labels);
  if (!onWebGpu()) return crossEntropyLogitsStock(logits, labels, reduction);
  // Statistics [4, N] outside the custom op (saved for its backward); its value is the loss itself, from
  // our own reduction: no tfjs kernels on the way, forward or backward. dy: [] ('mean', 'sum': one
  // upstream gradient, divided by the labelled-row count for 'mean') or [N] ('none': one per row).
  const stats = logitsStats(logits, labels);
  const f = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x, stats]);
    return {
      value: reduceStats(stats, reduction),
      gradFunc: (dy: tf.Tensor, [sx, sstats]: tf.Tensor[]) => {
        if (reduction !== 'mean') return logitsGrad(sx as tf.Tensor2D, labels, sstats, dy) as tf.Tensor;
        const counted = reduceStats(sstats, 'counted');                                  // [] (disposed by the backward's tidy)
        return logitsGrad(sx as tf.Tensor2D, labels, sstats, dy, { divideBy: counted }) as tf.Tensor;
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const loss = f(logits);
  const correct = reduceStats(stats, 'correct') as tf.Scalar;
  stats.dispose();
  return { loss, correct };
}

// ---------------------------------------------------------------------------------------------------
// The LM head's loss under mixed precision: f16 matmuls around the logits kernels.

export interface CrossEntropyF16Options {
  /** 'mean' (default: over the labelled rows) or 'sum' */
  reduction?: 'mean' | 'sum';
  /** the LM head already in f16 (the caller's cached copy); else one is made for the call */
  weightHalf?: HalfTensor;
  /** false: no dW (a frozen LM head / tied embedding, as under LoRA); default true */
  weightGrad?: boolean;
  /** bytes for the per-chunk buffers (f32 logits of a token chunk, f16 gradients); default 1 GiB */
  memoryBytes?: number;
  /** compute dH, dW in the forward (default: when a gradient tape is recording, tf.grads / variableGrads) */
  grads?: boolean;
  /** subgroup-matrix tile of the dH = G·W matmul (default: matmul-f16's pick) */
  dhTile?: SgTile;
}

/** Token chunking of the f16 LM-head loss. */
export interface F16Plan {
  /** tokens per logits chunk ([rows, V] f32 at a time) */
  rows: number;
  /** tokens per gradient chunk ([tokens, V] f16 G kept for dH and dW; a multiple of rows) */
  tokens: number;
}

/**
 * Chunk sizes for N tokens over a V vocabulary in `memoryBytes`: a quarter of the budget for f32 logits
 * (rows: a multiple of 128, whole matmul tiles, or of 16 when that is too much), the rest for f16
 * gradients (tokens, a multiple of rows; dW is summed over token chunks, so bigger is cheaper). Without dW,
 * gradients are kept per logits chunk only.
 */
export function planF16(N: number, V: number, memoryBytes = 2 ** 30, weightGrad = true): F16Plan {
  const fit = Math.floor(memoryBytes / 4 / (4 * V));
  const rows = fit >= 128 ? Math.floor(fit / 128) * 128 : Math.max(16, Math.floor(fit / 16) * 16);   // whole 128-row matmul tiles
  if (!weightGrad || rows >= N) return { rows: Math.min(rows, N), tokens: Math.min(rows, N) };
  const byBudget = Math.max(rows, Math.floor((memoryBytes - rows * V * 4) / (2 * V) / rows) * rows);
  return { rows, tokens: Math.min(byBudget, Math.ceil(N / rows) * rows) };
}

/**
 * The LM head's cross-entropy under mixed precision: like {@link crossEntropyFromHidden} (same outputs,
 * same gradients to f16 accuracy), with the three matmuls on f16 tensor cores (matMulF16) and the logits
 * never kept whole. While a gradient tape records, the forward also computes dH and (unless `weightGrad`
 * is false) dW; the backward scales them by the upstream gradient. Gradients are f32. Off webgpu, or for
 * an odd vocabulary (f16 pairs would straddle rows), it is {@link crossEntropyFromHidden} (fp32).
 *
 * @param hidden [N, H] float32
 * @param weight [V, H] float32: the LM head (or tied embedding)
 * @param targets [N] int32 in [0, V), or -100 (row ignored)
 * @example
 * const { loss, correct } = withComputeDtype('float16', () => crossEntropyFromHiddenF16(h, lmHead, targets, { weightHalf }));
 */
export function crossEntropyFromHiddenF16(
  hidden: tf.Tensor2D,
  weight: tf.Tensor2D | HalfTensor,
  targets: tf.Tensor1D,
  opts: CrossEntropyF16Options = {},
): CrossEntropyOutput {
  // a HalfTensor weight: an LM head held in f16 only (a frozen base under LoRA): no dW, f16 path only
  const held = weight instanceof HalfTensor ? weight : undefined;
  const wShape = weight.shape;
  if (held && (wShape.length !== 2 || hidden.rank !== 2 || targets.rank !== 1 || hidden.shape[1] !== wShape[1] || hidden.shape[0] !== targets.shape[0])) {
    throw new RangeError(`crossEntropyFromHiddenF16: shapes disagree: hidden ${hidden.shape}, weight ${wShape} (f16), targets ${targets.shape}`);
  }
  if (!held) checkShapes(hidden, weight as tf.Tensor2D, targets);
  const [N, H] = hidden.shape, V = wShape[0];
  if (!onWebGpu() || V % 2 !== 0) {
    if (held) throw new RangeError(`crossEntropyFromHiddenF16: an f16-held LM head needs webgpu and an even vocabulary (V = ${V})`);
    return crossEntropyFromHidden(hidden, weight as tf.Tensor2D, targets, { reduction: opts.reduction });
  }
  assertFloat32('crossEntropyFromHiddenF16', hidden, ...(held ? [] : [weight as tf.Tensor2D]));
  if (opts.weightHalf && (opts.weightHalf.shape[0] !== V || opts.weightHalf.shape[1] !== H)) {
    throw new RangeError(`crossEntropyFromHiddenF16: weightHalf is [${opts.weightHalf.shape}], the weight [${wShape}]`);
  }
  if (N === 0 || H === 0) throw new RangeError(`crossEntropyFromHiddenF16: empty input (hidden ${hidden.shape})`);
  if (held && opts.weightGrad === true) throw new RangeError('crossEntropyFromHiddenF16: an f16-held LM head is frozen (weightGrad must be false)');
  if (held) opts = { ...opts, weightHalf: held, weightGrad: false };
  const weightGrad = opts.weightGrad ?? true;
  const mean = (opts.reduction ?? 'mean') === 'mean';
  const grads = opts.grads ?? tf.engine().isTapeOn();
  const plan = planF16(N, V, opts.memoryBytes, weightGrad && grads);

  // value [2] = (loss, correct); saved: dH, dW (raw: G·2^15 based), the labelled-row count
  const f = tf.customGrad(((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const h = args[0] as tf.Tensor2D, save = args[args.length - 1] as tf.GradSaveFunc;
    const w16 = opts.weightHalf ?? toHalf(weight as tf.Tensor2D);
    try {
      const { stats, dH, dW } = lmHeadF16(h, w16, targets, plan, grads, weightGrad && grads, opts.dhTile);
      const count = tf.sum(tf.slice(stats, [3, 0], [1, N]));
      const lossSum = tf.sum(tf.slice(stats, [0, 0], [1, N]));
      const value = tf.stack([mean ? tf.div(lossSum, count) : lossSum, tf.sum(tf.slice(stats, [2, 0], [1, N]))]);
      if (grads) save([dH!, ...(dW ? [dW] : []), count]);
      tf.dispose([stats, lossSum, ...(grads ? [] : [count])]);
      return {
        value,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          if (!grads) throw new Error('crossEntropyFromHiddenF16: no gradients were computed (no tape was recording; pass grads: true)');
          const c = saved[saved.length - 1];
          const k = tf.mul(tf.reshape(tf.slice(dy, [0], [1]), []), 1 / HALF_GRAD_SCALE);
          const s = mean ? tf.div(k, c) : k;
          return [tf.mul(saved[0], s), ...(weightGrad ? [tf.mul(saved[1], s)] : [])];
        },
      };
    } finally {
      if (w16 !== opts.weightHalf) w16.dispose();
    }
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const value = weightGrad ? f(hidden, weight as tf.Tensor2D) : f(hidden);
  const out = tf.tidy(() => ({
    loss: tf.reshape(tf.slice(value, [0], [1]), []),
    correct: tf.reshape(tf.slice(value, [1], [1]), []) as tf.Scalar,
  }));
  value.dispose();
  return out;
}

/**
 * The chunked work of {@link crossEntropyFromHiddenF16}: stats [4, N]; with `grads`, dH [N, H] =
 * G·W and (with `weightGrad`) dW [V, H] = Gᵀ·h for G = (softmax − onehot)·2^15 in f16.
 */
function lmHeadF16(h: tf.Tensor2D, w16: HalfTensor, targets: tf.Tensor1D, plan: F16Plan, grads: boolean, weightGrad: boolean, dhTile?: SgTile): { stats: tf.Tensor; dH?: tf.Tensor; dW?: tf.Tensor } {
  const [N, H] = h.shape, V = w16.shape[0];
  const statParts: tf.Tensor[] = [], dhParts: tf.Tensor[] = [];
  let dW: tf.Tensor | undefined;
  const rowsOf = (r0: number, n: number) => {
    const x = n === N ? h : tf.slice(h, [r0, 0], [n, H]);
    const x16 = toHalf(x);
    if (x !== h) x.dispose();
    return x16;
  };
  for (let c0 = 0; c0 < N; c0 += plan.tokens) {
    const nc = Math.min(plan.tokens, N - c0);
    const G = grads ? uninitialised([halfWords(nc * V)], 'int32') : null;
    for (let r0 = c0; r0 < c0 + nc; r0 += plan.rows) {
      const n = Math.min(plan.rows, c0 + nc - r0);
      const x16 = rowsOf(r0, n);
      const logits = matMulF16(x16, w16, false, true) as tf.Tensor2D;                   // [n, V] f32
      x16.dispose();
      const stats = logitsStats(logits, targets, r0);                                     // [4, n]
      if (G) logitsGrad(logits, targets, stats, HALF_GRAD_SCALE, { labelOff: r0, dtype: 'float16', into: G, rowOffset: r0 - c0 });
      logits.dispose();
      statParts.push(stats);
    }
    if (G) {
      const g16 = new HalfTensor(G as tf.Tensor1D, [nc, V]);
      dhParts.push(matMulF16(g16, w16, false, false, { tile: dhTile }));                  // [nc, H]
      if (weightGrad) {
        const x16 = rowsOf(c0, nc);
        const part = matMulF16(g16, x16, true, false);                                    // [V, H]
        x16.dispose();
        if (dW) {
          const sum = tf.add(dW, part);
          tf.dispose([dW, part]);
          dW = sum;
        } else {
          dW = part;
        }
      }
      G.dispose();
    }
  }
  const cat = (parts: tf.Tensor[], axis: number) => {
    if (parts.length === 1) return parts[0];
    const c = tf.concat(parts, axis);
    tf.dispose(parts);
    return c;
  };
  return { stats: cat(statParts, 1), dH: grads ? cat(dhParts, 0) : undefined, dW };
}

// Cross-entropy straight from hidden states: token losses of hidden rows [N, H] against the LM head
// [V, H] and targets [N], without ever keeping the [N, V] logits. Forward: a tiled matmul whose epilogue
// reduces each 128-column tile of logits to (max, Σexp, argmax, target logit) per row, then one
// workgroup per row merges the tiles (online log-sum-exp). Backward (tf.customGrad) walks the vocabulary
// in chunks: recompute the chunk's logits with the softmax gradient fused into the epilogue
// (D = (softmax − onehot)·dy, [N, C]), then dHidden += D·W_chunk and dW_chunk = Dᵀ·hidden, written in
// place into dW. Elsewhere than webgpu: the same math in tfjs ops (as Qwen2ForCausalLM.loss).
// FLOPs, forward + backward: 4·2·N·H·V (one matmul forward, three backward).

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
  pickTile,
  runProgram,
  TiledMatmulProgram,
  tileKey,
  uninitialised,
  type MatmulDims,
  type MatmulEpilogueContext,
  type MatmulTile,
} from './program';

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

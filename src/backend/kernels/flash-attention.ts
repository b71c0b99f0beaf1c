// Flash attention for tfjs's webgpu backend: causal GQA attention with padding and a cache offset, never
// materialising the [H, T, S] scores. Forward: each workgroup owns 64 query rows of one head and walks
// the key tiles with an online softmax, saving each row's (max, log-sum) for backward. Backward
// recomputes the attention per tile: one pass over key tiles gives each query head's share of dK and dV
// (summed over the heads that share a KV head afterwards), another over query tiles gives dQ
// (FlashAttention-2's split, without float atomics, which WGSL lacks). Four programs — FirstValidKey,
// FlashForward, FlashBackwardKV, FlashBackwardQ — run through program.ts's runProgram (tfjs's
// runWebGPUProgram); gradients attach with tf.customGrad.
// Other backends (and head dims that are not a multiple of 64) use the plain tfjs math of qwen2.ts
// gqaAttention. Under computeDtype() 'float16' on an adapter with subgroup matrices, flashAttention runs
// the f16 tensor-core kernels of flash-attention-sg.ts instead (same semantics; flashAttentionPath says which).
//
// Semantics match gqaAttention with an additive -1e9 bias exactly: a key a row may not see scores
// -1e9, so a row that sees no key at all (left padding) averages every key uniformly, as tfjs and
// transformers' eager attention do. Such rows need all key tiles; every other row stops at its causal
// limit, since its masked keys weigh exactly 0.
//
// Tiling: 256 threads as a 16×16 grid; a 64×64 score tile, 4×4 per thread (rows ty·4.., keys tx·4..);
// operands staged through workgroup memory in chunks of the head dim (QKᵀ, dO·Vᵀ) or of rows (P·V,
// dS·K, Pᵀ·dO, dSᵀ·Q); accumulators are vec4 columns tx + 16·j of the head dim. 24 KiB of workgroup
// memory at head_dim 128 (lavapipe allows 32 KiB, the H100 48 KiB).

import * as tf from '@tensorflow/tfjs-core';
import { gqaAttention, MASKED } from '../../model/attention';
import { onWebGpu, runProgram, webgpuBackend, type Program } from './program';
import { matmulF16Path } from './matmul-f16';
import { computeDtype } from '../precision';
import { getGpuAdapterInfo } from '../device';
import { flashAttentionSg, sgConfigFor } from './flash-attention-sg';

/** Query rows and keys per tile. */
const TILE = 64;
/** Threads per workgroup (a 16 × 16 grid). */
const THREADS = 256;
/** vec4 slots of the staging buffer (8 KiB), unless one staged row chunk needs more. */
const STAGE_VEC4 = 512;
/** Head dims the kernels take: 16 threads × whole vec4 columns (Qwen: 64, 128). */
const HEAD_DIM_MULTIPLE = 64;

export interface FlashAttentionOptions {
  /** [B, S] 1 for real tokens, 0 for padding, over cached + new keys (transformers' attention_mask); default all ones */
  attentionMask?: tf.Tensor2D;
  /** cached positions before the T new queries: query t sits at absolute position past + t (default S - T) */
  past?: number;
}

// ---------------------------------------------------------------------------------------------------
// WGSL pieces shared by the forward and backward programs.

/** `n` lines from `f(i)`, joined. */
function rep(n: number, f: (i: number) => string): string {
  return Array.from({ length: n }, (_, i) => f(i)).join('\n');
}

const XYZW = ['x', 'y', 'z', 'w'];

/** What every attention program compiles in: the head dim in vec4s and the row-chunk size. */
class AttentionShape {
  /** head dim in vec4s */
  readonly dv4: number;
  /** accumulator vec4 columns per thread: tx + 16·j for j < cpt */
  readonly cpt: number;

  constructor(readonly headDim: number) {
    if (headDim % HEAD_DIM_MULTIPLE !== 0) throw new RangeError(`flash attention: head_dim ${headDim} is not a multiple of ${HEAD_DIM_MULTIPLE}`);
    this.dv4 = headDim / 4;
    this.cpt = this.dv4 / 16;
  }

  /** Rows of V, K, dO or Q staged at a time (16, fewer for head dims over 128). */
  rowChunk(): number {
    let rc = 16;
    while (rc > 1 && rc * this.dv4 > STAGE_VEC4) rc /= 2;
    return rc;
  }

  /** Size of the staging buffer in vec4s. */
  stageVec4(): number {
    return Math.max(STAGE_VEC4, this.rowChunk() * this.dv4);
  }

  /** `body(j)` for each accumulator column j < cpt, in its own block. */
  columns(body: (j: number) => string): string {
    return rep(this.cpt, (j) => `{ ${body(j)} }`);
  }

  /** Accumulator declarations `name{i}_{j}` (rows or keys i < 4). */
  accumulators(name: string): string {
    return rep(4, (i) => rep(this.cpt, (j) => `var ${name}${i}_${j} = vec4<f32>(0.0);`));
  }

  header(): string {
    return `
      const DV4 = ${this.dv4};
      const TILE = ${TILE};
      const MASKED = ${MASKED.toExponential()};
      const FAR = -1e30;  // keys past the end: no weight at all, not even in fully masked rows
      const SCALE = ${1 / Math.sqrt(this.headDim)};
      fn max4(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
      fn sum4(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }`;
  }
}

/** A matrix staged by {@link stageChunk}: its buffer, first row's vec4 index, first row, row count. */
type Staged = [src: string, base: string, row0: string, limit: string];

/**
 * Stages a chunk of dims d4..d4+dk4-1 (vec4 columns) of 64 rows of each matrix, transposed: matrix n
 * lands at stage[n·dk4·64 + k·16 + a] = rows 4a..4a+3 at dim k (rows ≥ limit read as 0). Threads
 * lid < count·16·dk4 take one 4×4 block each; a warp's threads all serve the same matrix.
 */
function stageChunk(mats: Staged[], dk4: number): string {
  const per = 16 * dk4;
  const pick = (f: (m: Staged) => string) => mats.slice(1).reduce((acc, m, n) => `select(${acc}, ${f(m)}, which == ${n + 1})`, f(mats[0]));
  return `if (lid < ${mats.length * per}) {
            let which = lid / ${per};
            let m = lid % ${dk4};
            let a = (lid % ${per}) / ${dk4};
            let r = ${pick((x) => x[2])} + 4 * a;
            let limit = ${pick((x) => x[3])};
            let base = ${pick((x) => x[1])};
            let col = d4 + m;
            var xs: array<vec4<f32>, 4>;
            for (var e = 0; e < 4; e++) {
              var x = vec4<f32>(0.0);
              if (r + e < limit && col < DV4) {
                let at = base + (r + e) * DV4 + col;
                ${mats.map((x, n) => `${n ? 'else ' : ''}if (which == ${n}) { x = ${x[0]}[at]; }`).join(' ')}
              }
              xs[e] = x;
            }
            let to = which * ${per * 4} + 4 * m * 16 + a;
            ${rep(4, (c) => `stage[to + ${c * 16}] = vec4<f32>(xs[0].${XYZW[c]}, xs[1].${XYZW[c]}, xs[2].${XYZW[c]}, xs[3].${XYZW[c]});`)}
          }`;
}

/** Stages `rc` rows from row0 (rows ≥ limit read as 0) of `src` into stage[r·DV4 + c]. */
function stageRows(src: string, base: string, row0: string, limit: string, rc: number): string {
  return `for (var e = lid; e < ${rc} * DV4; e += ${THREADS}) {
          let r = ${row0} + e / DV4;
          var x = vec4<f32>(0.0);
          if (r < ${limit}) { x = ${src}[${base} + r * DV4 + e % DV4]; }
          stage[e] = x;
        }`;
}

/**
 * The 4×4 score micro-tile `acc{i}` += Σ_k A[rows ty·4+i][k] · B[keys tx·4..][k] over one staged chunk
 * of `dk` dims (A at stage offset aOff, B at bOff, both transposed blocks).
 */
function microTile(acc: string, aOff: number, bOff: number, dk: number): string {
  return `for (var kk = 0; kk < ${dk}; kk++) {
          let a = stage[${aOff} + kk * 16 + ty];
          let bk = stage[${bOff} + kk * 16 + tx];
          ${rep(4, (i) => `${acc}${i} += a.${XYZW[i]} * bk;`)}
        }`;
}

/**
 * Scales and masks the score tile s{i} (rows q0 + ty·4 + i, keys k0 + tx·4 + j): visible keys keep
 * s·SCALE, masked ones (padding, or after the row's position) get MASKED, keys ≥ S get FAR.
 */
function maskScores(): string {
  return `{
        let keys = vec4<i32>(k0 + tx * 4) + vec4<i32>(0, 1, 2, 3);
        let inRange = keys < vec4<i32>(S);
        let mk = min(keys, vec4<i32>(S - 1));
        let real = vec4<f32>(f32(keyMask[b * S + mk.x]), f32(keyMask[b * S + mk.y]), f32(keyMask[b * S + mk.z]), f32(keyMask[b * S + mk.w])) != vec4<f32>(0.0);
        ${rep(4, (i) => `{
          let sees = inRange & real & (keys <= vec4<i32>(past + q0 + ty * 4 + ${i}));
          s${i} = select(select(vec4<f32>(MASKED), s${i} * SCALE, sees), vec4<f32>(FAR), !inRange);
        }`)}
      }`;
}

/** Loads the saved (max, log-sum) and Δ = rowsum(dO ∘ O) of rows q0 + ty·4 + i (rowBase: (b·H + h)·T). */
function rowStats(): string {
  return `var rowMax = vec4<f32>(0.0);
      var rowLogSum = vec4<f32>(0.0);
      var rowDelta = vec4<f32>(0.0);
      ${rep(4, (i) => `if (q0 + ty * 4 + ${i} < T) {
        let at = rowBase + q0 + ty * 4 + ${i};
        rowMax.${XYZW[i]} = stats[2 * at];
        rowLogSum.${XYZW[i]} = stats[2 * at + 1];
        rowDelta.${XYZW[i]} = delta[at];
      }`)}`;
}

/**
 * Recomputes P = exp((s - max) - logSum) from the masked scores s{i} (in that order: for a row that sees
 * no key, max is -1e9 and max + logSum would round back to -1e9) and forms dS = P ∘ (dP - Δ) into ds{i};
 * rows ≥ T get 0.
 */
function probsAndDs(): string {
  return rep(4, (i) => `let p${i} = select(vec4<f32>(0.0), exp((s${i} - vec4<f32>(rowMax.${XYZW[i]})) - vec4<f32>(rowLogSum.${XYZW[i]})), q0 + ty * 4 + ${i} < T);
      let ds${i} = p${i} * (dp${i} - vec4<f32>(rowDelta.${XYZW[i]}));`);
}

/**
 * Each program's start: workgroup memory (the staging buffer, one 64×64 tile — P or dS — and two ints
 * for values made uniform), thread ids, shapes from the uniforms, the GQA head map.
 */
function preamble(sh: AttentionShape, tileLayout: string): string {
  return `
    var<workgroup> stage: array<vec4<f32>, ${sh.stageVec4()}>;
    var<workgroup> tile: array<vec4<f32>, ${(TILE * TILE) / 4}>;   // ${tileLayout}
    var<workgroup> wgInt: i32;
    var<workgroup> wgKey: i32;

    fn main(index: i32) {
      let lid = i32(localId.x);
      let tx = lid % 16;
      let ty = lid / 16;
      let b = i32(workgroupId.z);
      let h = i32(workgroupId.y);
      let H = uniforms.qShape.y;
      let T = uniforms.qShape.z;
      let KV = uniforms.kShape.y;
      let S = uniforms.kShape.z;
      let G = H / KV;
      let past = uniforms.past;
      let rowBase = (b * H + h) * T;
      let qBase = rowBase * DV4;
      let kBase = (b * KV + h / G) * S * DV4;`;
}

/**
 * A query tile (workgroup x) and its key range: up to its causal limit, or all keys when it holds a row
 * that sees none. kEnd goes through workgroup memory to be uniform (barriers sit in loops bounded by it).
 */
const QUERY_TILE = `
      let q0 = i32(workgroupId.x) * TILE;
      if (lid == 0) {
        var end = min(S, past + min(q0 + TILE, T));
        if (firstValid[b] > past + q0) { end = S; }
        wgInt = end;
      }
      let kEnd = workgroupUniformLoad(&wgInt);`;

/**
 * acc{i}_{j} += Σ_r tile[r·16 + ty].{i} · src[row0 + r] over the tile's 64 rows, rows of `src` staged rc at
 * a time: O += P·V and dQ += dS·K (tile transposed: rows ty·4+i), dV += Pᵀ·dO and dK += dSᵀ·Q (keys ty·4+i).
 */
function accumulate(sh: AttentionShape, acc: string, src: string, base: string, row0: string, limit: string): string {
  const rc = sh.rowChunk();
  return `for (var r0 = 0; r0 < TILE; r0 += ${rc}) {
          workgroupBarrier();
          ${stageRows(src, base, `${row0} + r0`, limit, rc)}
          workgroupBarrier();
          for (var r = 0; r < ${rc}; r++) {
            let w = tile[(r0 + r) * 16 + ty];
            ${sh.columns((j) => `let x = stage[r * DV4 + tx + ${16 * j}]; ${rep(4, (i) => `${acc}${i}_${j} += w.${XYZW[i]} * x;`)}`)}
          }
        }`;
}

/** Writes acc{i}_{j} · scale{i} to result rows row0 + ty·4 + i (< limit) of the [rows, D] block at vec4 `base`. */
function writeRows(sh: AttentionShape, acc: string, scale: (i: number) => string, base: string, row0: string, limit: string): string {
  return rep(4, (i) => `if (${row0} + ty * 4 + ${i} < ${limit}) {
        let row = ${row0} + ty * 4 + ${i};
        ${sh.columns((j) => `let val = ${acc}${i}_${j} * ${scale(i)};
          let at = (${base} + row * DV4 + tx + ${16 * j}) * 4;
          result[at] = val.x; result[at + 1] = val.y; result[at + 2] = val.z; result[at + 3] = val.w;`)}
      }`);
}

/**
 * Base class: tfjs's program fields; subclasses give the WGSL and the dispatch. Outputs are flat and
 * every input has rank ≥ 2 (per-row values as [rows, 1]), so tfjs generates no shape-dependent
 * accessors and its cache key does not vary: one pipeline per head dim and mask dtype, whatever the
 * batch, lengths and head counts (lavapipe takes ~10 s per compile).
 */
abstract class AttentionProgram implements Program {
  variableNames: string[];
  variableComponents: number[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [THREADS, 1, 1];
  uniforms = 'past : i32,';
  protected readonly shape: AttentionShape;

  constructor(name: string, variableNames: string[], outputShape: number[], dispatch: [number, number, number], headDim: number) {
    this.shape = new AttentionShape(headDim);
    this.variableNames = variableNames;
    // q, k, v and dy are read as vec4; the mask, first-valid index and row stats as scalars
    this.variableComponents = variableNames.map((n) => (['q', 'k', 'v', 'dy'].includes(n) ? 4 : 1));
    this.outputShape = outputShape;
    this.dispatch = dispatch;
    this.shaderKey = `${name}_d${headDim}`;
  }

  abstract getUserCode(): string;
}

/**
 * Forward: out = [O (B·H·T·D) | stats (B·H·T·2)], flat. Workgroup (query tile, head, batch); per key tile:
 * S = QKᵀ (dims staged 16 at a time), mask, online softmax (row max across the 16 threads of a row
 * through workgroup memory; each thread keeps its own share of the row sums until the end), O += P·V
 * (P transposed in workgroup memory, V staged by rows).
 */
export class FlashForwardProgram extends AttentionProgram {
  constructor(B: number, H: number, T: number, headDim: number) {
    super('flash_attention_forward', ['q', 'k', 'v', 'keyMask', 'firstValid'], [B * H * T * (headDim + 2)], [Math.ceil(T / TILE), H, B], headDim);
  }

  getUserCode(): string {
    const sh = this.shape;
    return `${sh.header()}
    ${preamble(sh, 'P transposed: tile[key·16 + r/4] = P[r..r+3][key]')}
      ${QUERY_TILE}
      var rowMax = vec4<f32>(FAR);
      var sumShare = vec4<f32>(0.0);
      ${sh.accumulators('o')}
      for (var k0 = 0; k0 < kEnd; k0 += TILE) {
        ${rep(4, (i) => `var s${i} = vec4<f32>(0.0);`)}
        for (var d4 = 0; d4 < DV4; d4 += 4) {
          workgroupBarrier();
          ${stageChunk([['q', 'qBase', 'q0', 'T'], ['k', 'kBase', 'k0', 'S']], 4)}
          workgroupBarrier();
          ${microTile('s', 0, 256, 16)}
        }
        ${maskScores()}
        workgroupBarrier();
        stage[tx * 16 + ty] = vec4<f32>(max4(s0), max4(s1), max4(s2), max4(s3));
        workgroupBarrier();
        var tileMax = stage[ty];
        for (var t = 1; t < 16; t++) { tileMax = max(tileMax, stage[t * 16 + ty]); }
        let newMax = max(rowMax, tileMax);
        let alpha = exp(rowMax - newMax);
        rowMax = newMax;
        ${rep(4, (i) => `let p${i} = exp(s${i} - vec4<f32>(newMax.${XYZW[i]}));`)}
        sumShare = sumShare * alpha + vec4<f32>(sum4(p0), sum4(p1), sum4(p2), sum4(p3));
        ${rep(4, (i) => rep(sh.cpt, (j) => `o${i}_${j} *= alpha.${XYZW[i]};`))}
        ${rep(4, (j) => `tile[(tx * 4 + ${j}) * 16 + ty] = vec4<f32>(p0.${XYZW[j]}, p1.${XYZW[j]}, p2.${XYZW[j]}, p3.${XYZW[j]});`)}
        ${accumulate(sh, 'o', 'v', 'kBase', 'k0', 'S')}
      }
      workgroupBarrier();
      stage[tx * 16 + ty] = sumShare;
      workgroupBarrier();
      var rowSum = stage[ty];
      for (var t = 1; t < 16; t++) { rowSum += stage[t * 16 + ty]; }
      let inv = 1.0 / rowSum;
      ${writeRows(sh, 'o', (i) => `inv.${XYZW[i]}`, 'qBase', 'q0', 'T')}
      if (tx == 0) {
        let statsAt = uniforms.qShape.x * H * T * DV4 * 4 + 2 * rowBase;
        ${rep(4, (i) => `if (q0 + ty * 4 + ${i} < T) {
          result[statsAt + 2 * (q0 + ty * 4 + ${i})] = rowMax.${XYZW[i]};
          result[statsAt + 2 * (q0 + ty * 4 + ${i}) + 1] = log(rowSum.${XYZW[i]});
        }`)}
      }
    }`;
  }
}

/** The S-phase of both backward programs: S = QKᵀ and dP = dO·Vᵀ over one query tile × key tile. */
function scoresAndDp(): string {
  return `${rep(4, (i) => `var s${i} = vec4<f32>(0.0); var dp${i} = vec4<f32>(0.0);`)}
        for (var d4 = 0; d4 < DV4; d4 += 2) {
          workgroupBarrier();
          ${stageChunk([['q', 'qBase', 'q0', 'T'], ['dy', 'qBase', 'q0', 'T'], ['k', 'kBase', 'k0', 'S'], ['v', 'kBase', 'k0', 'S']], 2)}
          workgroupBarrier();
          ${microTile('s', 0, 256, 8)}
          ${microTile('dp', 128, 384, 8)}
        }
        ${maskScores()}
        ${probsAndDs()}`;
}

const BACKWARD_INPUTS = ['q', 'k', 'v', 'keyMask', 'firstValid', 'dy', 'stats', 'delta'];

/**
 * Backward for keys: out = [dK | dV], each [B, H, S, D] — one query head's share, summed over the heads
 * of a KV group by the caller. Workgroup (key tile, query head, batch); loops over the query tiles that
 * see its keys, recomputing P and dS, then dV += Pᵀ·dO and dK += dSᵀ·Q (P, then dS, held in workgroup
 * memory; dO, Q staged by rows). One workgroup per query head rather than per KV head halves the longest
 * workgroup's work (the first key tile is seen by every query tile) on a causal mask.
 */
export class FlashBackwardKVProgram extends AttentionProgram {
  constructor(B: number, H: number, S: number, headDim: number) {
    super('flash_attention_backward_kv', BACKWARD_INPUTS, [2 * B * H * S * headDim], [Math.ceil(S / TILE), H, B], headDim);
  }

  getUserCode(): string {
    const sh = this.shape;
    return `${sh.header()}
    ${preamble(sh, 'P, then dS: tile[r·16 + key/4] = [r][key..key+3]')}
      if (lid == 0) {
        wgInt = firstValid[b];
        wgKey = i32(workgroupId.x) * TILE;
      }
      let first = workgroupUniformLoad(&wgInt);
      let k0 = workgroupUniformLoad(&wgKey);
      ${sh.accumulators('dk')}
      ${sh.accumulators('dv')}
      // query tiles that see these keys: from the causal start, plus the leading ones with rows that see no key
      var qStart = max(0, k0 - past) / TILE * TILE;
      if (first > past) { qStart = 0; }
      for (var q0 = qStart; q0 < T; q0 += TILE) {
        if (past + q0 + TILE - 1 < k0 && past + q0 >= first) { continue; }
        ${rowStats()}
        ${scoresAndDp()}
        ${rep(4, (i) => `tile[(ty * 4 + ${i}) * 16 + tx] = p${i};`)}
        ${accumulate(sh, 'dv', 'dy', 'qBase', 'q0', 'T')}
        workgroupBarrier();
        ${rep(4, (i) => `tile[(ty * 4 + ${i}) * 16 + tx] = ds${i};`)}
        ${accumulate(sh, 'dk', 'q', 'qBase', 'q0', 'T')}
      }
      let dkAt = (b * H + h) * S * DV4;
      let dvAt = uniforms.qShape.x * H * S * DV4 + dkAt;
      ${writeRows(sh, 'dk', () => 'SCALE', 'dkAt', 'k0', 'S')}
      ${writeRows(sh, 'dv', () => '1.0', 'dvAt', 'k0', 'S')}
    }`;
  }
}

/**
 * Backward for queries: dQ [B, H, T, D], flat. Workgroup (query tile, head, batch); per key tile, recomputes
 * P and dS and adds dS·K (dS transposed in workgroup memory, K staged by rows).
 */
export class FlashBackwardQProgram extends AttentionProgram {
  constructor(B: number, H: number, T: number, headDim: number) {
    super('flash_attention_backward_q', BACKWARD_INPUTS, [B * H * T * headDim], [Math.ceil(T / TILE), H, B], headDim);
  }

  getUserCode(): string {
    const sh = this.shape;
    return `${sh.header()}
    ${preamble(sh, 'dS transposed: tile[key·16 + r/4] = dS[r..r+3][key]')}
      ${QUERY_TILE}
      ${rowStats()}
      ${sh.accumulators('dq')}
      for (var k0 = 0; k0 < kEnd; k0 += TILE) {
        ${scoresAndDp()}
        ${rep(4, (j) => `tile[(tx * 4 + ${j}) * 16 + ty] = vec4<f32>(ds0.${XYZW[j]}, ds1.${XYZW[j]}, ds2.${XYZW[j]}, ds3.${XYZW[j]});`)}
        ${accumulate(sh, 'dq', 'k', 'kBase', 'k0', 'S')}
      }
      ${writeRows(sh, 'dq', () => 'SCALE', 'qBase', 'q0', 'T')}
    }`;
  }
}

/** firstValid[b] = the first key whose mask is non-zero, or S when none: rows before past + t < it see no key. */
export class FirstValidKeyProgram implements Program {
  variableNames = ['keyMask'];
  outputShape: number[];
  shaderKey = 'flash_attention_first_valid_key';
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [64, 1, 1];

  constructor(B: number) {
    this.outputShape = [B];
    this.dispatch = [Math.ceil(B / 64), 1, 1];
  }

  getUserCode(): string {
    return `
    fn main(index: i32) {
      if (index >= uniforms.outShape) { return; }
      let S = uniforms.keyMaskShape.y;
      var first = S;
      for (var s = 0; s < S; s++) {
        if (f32(keyMask[index * S + s]) != 0.0) { first = s; break; }
      }
      result[index] = first;
    }`;
  }
}

// ---------------------------------------------------------------------------------------------------
// Kernel functions.

/** True when flashAttention runs its WebGPU kernels for this head dim on the active backend. */
export function flashAttentionOnGpu(headDim: number): boolean {
  return onWebGpu() && headDim % HEAD_DIM_MULTIPLE === 0;
}

/**
 * Which kernels flashAttention runs for this head dim now: 'subgroup-matrix' (f16 tensor cores, see
 * flash-attention-sg.ts: webgpu, an adapter with subgroup matrices and subgroups of 32, computeDtype()
 * 'float16', head_dim a multiple of 16 up to 128), 'fp32' (the kernels of this file), or 'tfjs'.
 */
export function flashAttentionPath(headDim: number): 'subgroup-matrix' | 'fp32' | 'tfjs' {
  if (!onWebGpu()) return 'tfjs';
  if (computeDtype() === 'float16' && headDim % 16 === 0 && headDim <= 128 && matmulF16Path() === 'subgroup-matrix') {
    let size = 32;
    try {
      const info = getGpuAdapterInfo() as { subgroupMinSize?: number; subgroupMaxSize?: number };
      size = info.subgroupMaxSize ?? 32;
    } catch {
      // no session info: assume NVIDIA's 32
    }
    const wgMem = webgpuBackend().device.limits.maxComputeWorkgroupStorageSize;
    if (size === 32 && sgConfigFor(headDim, wgMem)) return 'subgroup-matrix';
  }
  return headDim % HEAD_DIM_MULTIPLE === 0 ? 'fp32' : 'tfjs';
}

/**
 * Causal GQA attention without the [H, T, S] scores: softmax(q·kᵀ/√D + mask)·v, where query t (absolute
 * position past + t) sees keys s ≤ past + t whose attentionMask is 1. Head h reads KV head h / (H/KV).
 * Differentiable (tf.customGrad; backward recomputes attention tile by tile). On webgpu it runs the
 * flash kernels (with f16 tensor cores under computeDtype() 'float16' where the adapter has subgroup
 * matrices: {@link flashAttentionPath}); elsewhere the plain tfjs math of gqaAttention, with the same results.
 * q: [B, H, T, D]; k, v: [B, KV, S, D] (cached + new keys); returns [B, H, T, D].
 *
 * @example
 * const o = flashAttention(q, k, v);                                      // training: S = T, past 0
 * const o2 = flashAttention(q1, kCache, vCache, { attentionMask });       // decoding: past = S - 1
 */
export function flashAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: FlashAttentionOptions = {}): tf.Tensor4D {
  const [B, H, T, D] = q.shape;
  const [kb, KV, S, kd] = k.shape;
  if (kb !== B || kd !== D || v.shape.join() !== k.shape.join() || H % KV !== 0) {
    throw new RangeError(`flashAttention: q [${q.shape}], k [${k.shape}], v [${v.shape}]: want q [B, H, T, D], k = v [B, KV, S, D] with H a multiple of KV`);
  }
  const past = opts.past ?? S - T;
  if (!Number.isInteger(past) || past < 0 || past + T > S) {
    throw new RangeError(`flashAttention: past ${past} with ${T} queries needs past + T ≤ S = ${S}`);
  }
  const m = opts.attentionMask;
  if (m && (m.rank !== 2 || m.shape[0] !== B || m.shape[1] !== S)) {
    throw new RangeError(`flashAttention: attentionMask [${m.shape}] must be [B, S] = [${B}, ${S}] (cached + new keys)`);
  }
  const path = flashAttentionPath(D);
  if (path === 'tfjs') return tf.tidy(() => gqaAttention(q, k, v, causalBias(B, T, S, past, m)));
  if (path === 'subgroup-matrix') return flashAttentionSg(q, k, v, { attentionMask: m, past });

  // any dtype: the kernels read the mask's buffer as it is. The default is int32, like transformers'
  // attention_mask, so that masked and unmasked calls share compiled pipelines (the key holds the dtype).
  const mask = m ?? tf.ones([B, S], 'int32');
  const pastUniform = [{ type: 'int32' as const, data: [past] }];
  const attend = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [qi, ki, vi] = args as tf.Tensor4D[];
    const save = args[3] as tf.GradSaveFunc;
    const firstValid = tf.reshape(runProgram(new FirstValidKeyProgram(B), [mask], [], 'int32'), [B, 1]);
    const packed = runProgram(new FlashForwardProgram(B, H, T, D), [qi, ki, vi, mask, firstValid], pastUniform);
    const n = B * H * T * D;
    const out = tf.reshape(tf.slice(packed, [0], [n]), [B, H, T, D]) as tf.Tensor4D;      // [B, H, T, D]
    const stats = tf.reshape(tf.slice(packed, [n], [2 * B * H * T]), [B * H * T, 2]);       // (max, log-sum) per row
    save([qi, ki, vi, mask, firstValid, out, stats]);
    return {
      value: out,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sq, sk, sv, smask, sfirst, sout, sstats] = saved;
        const delta = tf.reshape(tf.sum(tf.mul(dy, sout), -1), [B * H * T, 1]);             // rowsum(dO ∘ O)
        const inputs = [sq, sk, sv, smask, sfirst, dy, sstats, delta];
        const dq = runProgram(new FlashBackwardQProgram(B, H, T, D), inputs, pastUniform);   // [B·H·T·D]
        const dkv = runProgram(new FlashBackwardKVProgram(B, H, S, D), inputs, pastUniform); // [dK | dV] per query head
        const half = B * H * S * D;
        const perKvHead = (x: tf.Tensor) => tf.sum(tf.reshape(x, [B, KV, H / KV, S, D]), 2);  // [B, KV, S, D]
        return [tf.reshape(dq, [B, H, T, D]), perKvHead(tf.slice(dkv, [0], [half])), perKvHead(tf.slice(dkv, [half], [half]))];
      },
    };
  });
  const out = attend(q, k, v) as tf.Tensor4D;
  if (!m) mask.dispose();
  return out;
}

/**
 * The additive bias of qwen2.ts attentionBias, from a mask tensor: 0 where query t may see key s
 * (s ≤ past + t and mask 1), MASKED elsewhere. [B, 1, T, S], or [1, 1, T, S] (broadcast) without a mask.
 */
export function causalBias(B: number, T: number, S: number, past: number, attentionMask?: tf.Tensor2D): tf.Tensor4D {
  return tf.tidy(() => {
    const causal = new Float32Array(T * S);
    for (let t = 0; t < T; t++) causal.fill(MASKED, (t * S) + past + t + 1, (t + 1) * S);
    const bias = tf.tensor4d(causal, [1, 1, T, S]);
    if (!attentionMask) return bias;
    const pad = tf.mul(tf.sub(1, tf.cast(tf.notEqual(attentionMask, 0), 'float32')), MASKED);   // [B, S]
    return tf.minimum(bias, tf.reshape(pad, [B, 1, 1, S])) as tf.Tensor4D;
  });
}

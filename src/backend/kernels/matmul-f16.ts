// f16 matmul with f32 accumulation on WGSL subgroup matrices (tensor cores through Dawn's
// `chromium_experimental_subgroup_matrix`), and its fallback on adapters without them (lavapipe in CI).
//
//   C[b, M, N] (f32) = op(A[b])[M, K] · op(B[b])[K, N],   A, B f16; op = as stored or transposed
//
// Layouts (as program.ts): A 'mk' = stored [M, K], 'km' = stored [K, M]; B 'kn' = stored [K, N], 'nk' =
// stored [N, K]. NN = mk·kn (forward), NT = mk·nk (dX = dY·Wᵀ), TN = km·kn (dW = Xᵀ·dY).
//
// The subgroup-matrix program (SgMatmulProgram): a workgroup of sgM×sgN subgroups computes a tileM×tileN
// block of C. Every tileK step the whole workgroup copies the A and B tiles into workgroup memory
// (16-byte loads and stores, the operand's own layout, one 16-byte pad per row against bank conflicts;
// `stages: 2` = double-buffered, one barrier per step; `stages: 1` = register prefetch, two barriers);
// each subgroup then loads its 16×16 fragments from there (row- or column-major, so the transposed layouts
// cost the same as NN) and multiply-accumulates a (tileM/sgM)×(tileN/sgN) block of f32 accumulators.
// Full output tiles are stored straight to C; edge tiles go through a per-subgroup scratch with bounds.
//
// Several subgroups per workgroup each address their own fragments by `subgroup_id`: Dawn checks that
// subgroup-matrix pointer offsets are uniform, and `diagnostic(off, chromium.subgroup_matrix_uniformity)`
// turns that check off (the offsets are subgroup-uniform, which is all the hardware needs; current Dawn
// analyses subgroup matrices at subgroup scope, where `subgroup_id` is uniform, so it accepts them anyway).
// Two WGSL forms: 'new' (`subgroupMatrixLoad<T, row_major>(p, offset, stride)` over arrays of vec4<u32>,
// Dawn ≥ 2026-08) and 'old' (`subgroupMatrixLoad<T>(p, offset, col_major, stride)` over arrays of f16,
// deprecated since). Global loads: 'vec8' (8 halves per load; the contiguous extent, offsets and leading
// dimensions must be multiples of 8) or 'scalar' (any shape).
//
// The fallback (SimtMatmulF16Program): a plain tiled f32 matmul reading the same packed halves through
// `unpack2x16float` — core WGSL, no `shader-f16` needed — so every adapter computes the same function.
//
// Operands live as {@link HalfTensor}s: the halves packed two per int32 element of a tfjs tensor (tfjs has
// no f16 dtype), so tfjs owns and frees the memory. {@link matMulF16} is the tfjs-level entry point.

import * as tf from '@tensorflow/tfjs-core';
import { currentDevice, getGpuAdapterInfo } from '../device';
import { ElementwiseProgram, constantUniform, gpuBufferOf, onWebGpu, recordDispatch, runProgram, sizeOf, uninitialised, webgpuBackend, type LayoutA, type LayoutB, pipelineFor } from './program';

// ---------------------------------------------------------------------------------------------------
// Tiles

/** Tile of a subgroup-matrix program; every field is part of its cache key. */
export interface SgTile {
  /** rows (M) per workgroup */
  tileM: number;
  /** columns (N) per workgroup */
  tileN: number;
  /** K per staged step (multiple of 16) */
  tileK: number;
  /** subgroups along M */
  sgM: number;
  /** subgroups along N */
  sgN: number;
  /** 2: double-buffered workgroup memory; 1: one buffer, next tile prefetched into registers */
  stages: 1 | 2;
  /** stages 1: how many k steps ahead the registers hold (2: two register sets, the loop unrolled by two) */
  prefetch?: 1 | 2;
}

export type SgForm = 'new' | 'old';
export type SgLoad = 'vec8' | 'scalar';

/** Options of a subgroup-matrix program beyond its tile (all in the cache key). */
export interface SgOptions {
  form: SgForm;
  load: SgLoad;
  /** rows of workgroups launched together (L2 reuse); 0 = plain row-major order */
  group: number;
  /** invocations per subgroup (the adapter's; 32 on NVIDIA) */
  subgroupSize: number;
}

export function sgTileKey(t: SgTile): string {
  return `${t.tileM}x${t.tileN}x${t.tileK}_sg${t.sgM}x${t.sgN}_s${t.stages}${t.prefetch === 2 ? 'p2' : ''}`;
}

/** Parses `128x128x32_sg2x2_s2` or `…_s1p2` (as {@link sgTileKey} writes it). */
export function parseSgTile(s: string): SgTile {
  const m = /^(\d+)x(\d+)x(\d+)_sg(\d+)x(\d+)_s(1p2|[12])$/.exec(s);
  if (!m) throw new RangeError(`subgroup-matrix tile '${s}': expected e.g. 128x128x32_sg2x2_s2 or 128x128x32_sg2x2_s1p2`);
  const [tileM, tileN, tileK, sgM, sgN] = m.slice(1, 6).map(Number);
  return m[6] === '1p2' ? { tileM, tileN, tileK, sgM, sgN, stages: 1, prefetch: 2 } : { tileM, tileN, tileK, sgM, sgN, stages: Number(m[6]) as 1 | 2 };
}

/** Workgroup-memory bytes a tile needs (staging + the edge scratch). */
export function sgTileBytes(t: SgTile, a: LayoutA, b: LayoutB): number {
  const g = geometry(t, a, b, 32);
  return t.stages * (g.aSize + g.bSize) * 16 + g.nsg * 256 * 4;
}

/** 128×128×32, 2×2 subgroups of 64×64 (4×4 fragments each), one stage + register prefetch. */
export const SG_TILE_128: SgTile = { tileM: 128, tileN: 128, tileK: 32, sgM: 2, sgN: 2, stages: 1 };
/** 64×64×32, one subgroup of 4×4 fragments (double-buffered): outputs with few 128×128 tiles. */
export const SG_TILE_64: SgTile = { tileM: 64, tileN: 64, tileK: 32, sgM: 1, sgN: 1, stages: 2 };

/**
 * Shape classes → tile (measured on the H100, bench/MATMUL.md): 128×128×32 (2×2 subgroups, one stage)
 * won or tied on every LLM shape measured; 64×64 only where 128² tiles would leave most SMs idle.
 */
export function pickSgTile(M: number, N: number, batch = 1): SgTile {
  return Math.ceil(M / 128) * Math.ceil(N / 128) * batch >= 66 ? SG_TILE_128 : SG_TILE_64;
}

/**
 * The WGSL header of every subgroup-matrix kernel (matmuls, attention, bench/mma-probe.ts): the enables,
 * the uniformity diagnostics off (fragment offsets come from subgroup_id: bench/MATMUL.md), and the f16
 * 16×16 operand / f32 result aliases SL, SR, SA.
 */
export const SUBGROUP_MATRIX_WGSL = `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
diagnostic(off, subgroup_uniformity);
alias SL = subgroup_matrix_left<f16, 16, 16>;
alias SR = subgroup_matrix_right<f16, 16, 16>;
alias SA = subgroup_matrix_result<f32, 16, 16>;`;

/**
 * K-slices for a 2-D matmul whose output has too few tiles to fill the GPU while K is long (1: none):
 * aims at ~1,000 64×64 tiles in flight (8 per SM of an H100); S divides K into slices of a multiple of 16.
 */
export function pickSplitK(M: number, N: number, K: number): number {
  const tiles = Math.ceil(M / 64) * Math.ceil(N / 64);
  if (tiles >= 264 || K < 8192) return 1;
  let s = Math.min(16, 2 ** Math.floor(Math.log2(Math.max(1, 1024 / tiles))));
  while (s > 1 && (K % s !== 0 || (K / s) % 16 !== 0)) s /= 2;
  return s;
}

/** Launch order: very wide outputs (LM head: N ≫ M) walk 16 row tiles per column so each B tile is read once from HBM. */
export function pickSgGroup(M: number, N: number): number {
  return N > 16 * M ? 16 : 0;
}

interface Geometry {
  /** subgroups, invocations */
  nsg: number;
  wg: number;
  /** fragments per subgroup along M, N */
  fm: number;
  fn: number;
  /** workgroup-memory row stride (vec4<u32> units, pad included) and tile size per stage, A and B */
  aStride: number;
  aSize: number;
  aRows: number;
  aChunks: number;
  bStride: number;
  bSize: number;
  bRows: number;
  bChunks: number;
}

function geometry(t: SgTile, a: LayoutA, b: LayoutB, sgSize: number): Geometry {
  const { tileM: BM, tileN: BN, tileK: BK, sgM, sgN } = t;
  const nsg = sgM * sgN, wg = nsg * sgSize;
  const fm = BM / sgM / 16, fn = BN / sgN / 16;
  // rows × (chunks of 8 halves per row) of each staged tile, in the operand's stored layout
  const [aRows, aChunks] = a === 'mk' ? [BM, BK / 8] : [BK, BM / 8];
  const [bRows, bChunks] = b === 'kn' ? [BK, BN / 8] : [BN, BK / 8];
  const ok = [BM % (16 * sgM), BN % (16 * sgN), BK % 16, (aRows * aChunks) % wg, (bRows * bChunks) % wg].every((r) => r === 0) &&
    Number.isInteger(fm) && Number.isInteger(fn) && fm >= 1 && fn >= 1;
  if (!ok) throw new RangeError(`subgroup-matrix tile ${sgTileKey(t)}: needs tileM/sgM, tileN/sgN multiples of 16, tileK of 16, and whole staged tiles per ${wg} invocations`);
  return {
    nsg, wg, fm, fn,
    aStride: aChunks + 1, aSize: aRows * (aChunks + 1), aRows, aChunks,
    bStride: bChunks + 1, bSize: bRows * (bChunks + 1), bRows, bChunks,
  };
}

// ---------------------------------------------------------------------------------------------------
// Programs run on our own pipelines (they need `enable f16;` etc. first in the module, which tfjs's
// runWebGPUProgram can't give), recorded into tfjs's command encoder like adamw.ts does.

/** A compute program we build our own pipeline for: complete WGSL, dispatch, cache key. */
export interface OwnProgram {
  shaderKey: string;
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  getUserCode(): string;
}

/** Sizes, element offsets, leading dimensions and batch strides of one (batched) matmul. */
export interface MatmulF16Dims {
  M: number;
  N: number;
  K: number;
  batch?: number;
  lda: number;
  ldb: number;
  ldc: number;
  aOff?: number;
  bOff?: number;
  cOff?: number;
  /** batch strides in elements (0 broadcasts one matrix over the batch) */
  strideA?: number;
  strideB?: number;
  strideC?: number;
}

const UNIFORM_STRUCT = `struct Dims {
  M : u32, N : u32, K : u32, lda : u32, ldb : u32, ldc : u32,
  aOff : u32, bOff : u32, cOff : u32, sA : u32, sB : u32, sC : u32,
}`;

/** The Dims uniform's bytes (48). */
export function dimsBytes(d: MatmulF16Dims): Uint32Array {
  const v = [d.M, d.N, d.K, d.lda, d.ldb, d.ldc, d.aOff ?? 0, d.bOff ?? 0, d.cOff ?? 0, d.strideA ?? 0, d.strideB ?? 0, d.strideC ?? 0];
  for (const x of v) if (!Number.isInteger(x) || x < 0 || x > 2 ** 32 - 1) throw new RangeError(`matmul-f16: index ${x} does not fit a u32`);
  return Uint32Array.from(v);
}

/** True when a 'vec8' program may run these dims (every offset/stride on the contiguous axes a multiple of 8). */
export function vec8Ok(a: LayoutA, b: LayoutB, d: MatmulF16Dims): boolean {
  const m8 = (x: number | undefined) => (x ?? 0) % 8 === 0;
  return [d.lda, d.ldb, d.aOff, d.bOff, d.strideA, d.strideB].every(m8) &&
    (a === 'mk' ? d.K % 8 === 0 : d.M % 8 === 0) && (b === 'kn' ? d.N % 8 === 0 : d.K % 8 === 0);
}

/**
 * C = op(A)·op(B) on subgroup matrices. Bindings: 0 A, 1 B (packed halves), 2 C (f32), 3 Dims.
 *
 * @example
 * const p = new SgMatmulProgram(SG_TILE_128, 'mk', 'kn', { M: 4096, N: 4096, K: 4096, lda: 4096, ldb: 4096, ldc: 4096 });
 */
export class SgMatmulProgram implements OwnProgram {
  shaderKey: string;
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  readonly opts: SgOptions;

  constructor(readonly tile: SgTile, readonly a: LayoutA, readonly b: LayoutB, dims: Pick<MatmulF16Dims, 'M' | 'N' | 'batch'>, opts: Partial<SgOptions> = {}) {
    this.opts = { form: 'new', load: 'vec8', group: 0, subgroupSize: 32, ...opts };
    const g = geometry(tile, a, b, this.opts.subgroupSize);
    this.workgroupSize = [g.wg, 1, 1];
    this.dispatch = [Math.ceil(dims.N / tile.tileN), Math.ceil(dims.M / tile.tileM), dims.batch ?? 1];
    if (this.dispatch.some((x) => x > 65535)) throw new RangeError(`matmul-f16: ${dims.M}×${dims.N}×${dims.batch ?? 1} needs more than 65535 workgroups along one axis`);
    const o = this.opts;
    this.shaderKey = `tsft_sgmm_${sgTileKey(tile)}_${a}_${b}_${o.form}_${o.load}_g${o.group}_sg${o.subgroupSize}`;
  }

  getUserCode(): string {
    const { tile: t, a, b } = this;
    const { form, load, group, subgroupSize: S } = this.opts;
    const g = geometry(t, a, b, S);
    const { tileM: BM, tileN: BN, tileK: BK, sgN, stages } = t;
    const WM = BM / t.sgM, WN = BN / sgN;
    const range = (n: number) => Array.from({ length: n }, (_, i) => i);
    const neu = form === 'new';
    // workgroup memory: vec4<u32> (new form) or f16 (old form); u = units of 8 halves → element units
    const el = (x: string) => (neu ? x : `(${x}) * 8u`);
    const perA = (g.aRows * g.aChunks) / g.wg, perB = (g.bRows * g.bChunks) / g.wg;

    // --- global → registers: chunk c of the tile is (row c / chunks, chunk c % chunks) in stored layout
    const fetchChunk = (op: 'A' | 'B', r: number, set: string) => {
      const [chunks, wgN] = op === 'A' ? [g.aChunks, g.wg] : [g.bChunks, g.wg];
      const lay = op === 'A' ? a : b;
      // stored row index / first column (element units) of this chunk, and bounds
      let row: string, col: string, rowLim: string, colLim: string;
      if (op === 'A') {
        if (lay === 'mk') [row, col, rowLim, colLim] = [`row0 + rr`, `k0 + cc * 8u`, 'dims.M', 'dims.K'];
        else [row, col, rowLim, colLim] = [`k0 + rr`, `row0 + cc * 8u`, 'dims.K', 'dims.M'];
      } else {
        if (lay === 'kn') [row, col, rowLim, colLim] = [`k0 + rr`, `col0 + cc * 8u`, 'dims.K', 'dims.N'];
        else [row, col, rowLim, colLim] = [`col0 + rr`, `k0 + cc * 8u`, 'dims.N', 'dims.K'];
      }
      const ld = op === 'A' ? 'dims.lda' : 'dims.ldb';
      const base = op === 'A' ? 'aBase' : 'bBase';
      const reg = `${set}${op === 'A' ? 'a' : 'b'}${r}`;
      const head = `{ let c = tid + ${r * wgN}u; let rr = c / ${chunks}u; let cc = c % ${chunks}u; let gr = ${row}; let gc = ${col};`;
      if (load === 'vec8') {
        return `${head}
          ${reg} = vec4<u32>(0u);
          if (gr < ${rowLim} && gc < ${colLim}) { ${reg} = ${op}[(${base} + gr * ${ld} + gc) >> 3u]; } }`;
      }
      const h = range(8).map((q) => `ld${op}(${base} + gr * ${ld} + gc + ${q}u, ok && gc + ${q}u < ${colLim})`);
      return `${head} let ok = gr < ${rowLim};
          ${reg} = vec4<u32>(${range(4).map((q) => `bitcast<u32>(vec2<f16>(${h[2 * q]}, ${h[2 * q + 1]}))`).join(',\n            ')}); }`;
    };
    // register sets: p (and q under prefetch 2), chunks pa0.., pb0..
    const fetchSet = (set: string) => [...range(perA).map((r) => fetchChunk('A', r, set)), ...range(perB).map((r) => fetchChunk('B', r, set))].join('\n        ');
    const fetch = fetchSet('p');

    // --- registers → workgroup memory (stage `buf`)
    const stageChunk = (op: 'A' | 'B', r: number, buf: string, set = 'p') => {
      const [chunks, stride, size] = op === 'A' ? [g.aChunks, g.aStride, g.aSize] : [g.bChunks, g.bStride, g.bSize];
      const arr = op === 'A' ? 'As' : 'Bs';
      const reg = `${set}${op === 'A' ? 'a' : 'b'}${r}`;
      const at = `${buf} * ${size}u + (c / ${chunks}u) * ${stride}u + c % ${chunks}u`;
      if (neu) return `{ let c = tid + ${r * g.wg}u; ${arr}[${at}] = ${reg}; }`;
      return `{ let c = tid + ${r * g.wg}u; let e = (${at}) * 8u;
          ${range(4).map((q) => `let h${q} = bitcast<vec2<f16>>(${reg}[${q}]); ${arr}[e + ${2 * q}u] = h${q}.x; ${arr}[e + ${2 * q + 1}u] = h${q}.y;`).join('\n          ')} }`;
    };
    const stage = (buf: string, set = 'p') => [...range(perA).map((r) => stageChunk('A', r, buf, set)), ...range(perB).map((r) => stageChunk('B', r, buf, set))].join('\n        ');

    // --- fragments of step kk (in halves) from stage `buf`
    const loadFn = (type: string, colMajor: boolean, off: string, stride: number) => (neu
      ? `subgroupMatrixLoad<${type}, ${colMajor ? 'col_major' : 'row_major'}>(&${type === 'SL' ? 'As' : 'Bs'}, ${off}, ${stride}u)`
      : `subgroupMatrixLoad<${type}>(&${type === 'SL' ? 'As' : 'Bs'}, ${el(off)}, ${colMajor}, ${stride * 8}u)`);
    const fragA = (i: number, kk: number, buf: string) => (a === 'mk'
      ? loadFn('SL', false, `${buf} * ${g.aSize}u + (wm0 + ${i * 16}u) * ${g.aStride}u + ${kk / 8}u`, g.aStride)
      : loadFn('SL', true, `${buf} * ${g.aSize}u + ${kk}u * ${g.aStride}u + (wm0 + ${i * 16}u) / 8u`, g.aStride));
    const fragB = (j: number, kk: number, buf: string) => (b === 'kn'
      ? loadFn('SR', false, `${buf} * ${g.bSize}u + ${kk}u * ${g.bStride}u + (wn0 + ${j * 16}u) / 8u`, g.bStride)
      : loadFn('SR', true, `${buf} * ${g.bSize}u + (wn0 + ${j * 16}u) * ${g.bStride}u + ${kk / 8}u`, g.bStride));
    const compute = (buf: string) => range(BK / 16).map((s) => `{
          ${range(g.fm).map((i) => `let a${i} = ${fragA(i, s * 16, buf)};`).join('\n          ')}
          ${range(g.fn).map((j) => `let b${j} = ${fragB(j, s * 16, buf)};`).join('\n          ')}
          ${range(g.fm).flatMap((i) => range(g.fn).map((j) => `acc_${i}_${j} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, acc_${i}_${j});`)).join('\n          ')}
        }`).join('\n        ');

    // double-buffered: the k loop unrolled by two, so each half reads and writes constant stages
    const step = (kt: string, cur: number) => `{
        let more = ${kt} + 1u < nk;
        if (more) {
          let k0 = (${kt} + 1u) * ${BK}u;
          ${fetch}
        }
        ${compute(`${cur}u`)}
        if (more) {
          ${stage(`${1 - cur}u`)}
        }
        workgroupBarrier();
      }`;
    // prefetch 2: register sets p and q alternate, each loaded two k steps before it is staged
    // one k step from register set `set`, which then loads the step `ahead` steps on
    const fromSet = (set: string, ahead: number) => `${stage('0u', set)}
        workgroupBarrier();
        if (kt + ${ahead}u < nk) {
          let k0 = (kt + ${ahead}u) * ${BK}u;
          ${fetchSet(set)}
        }
        ${compute('0u')}
        workgroupBarrier();`;
    const prefetch2 = `${fetch}
      if (1u < nk) {
        let k0 = ${BK}u;
        ${fetchSet('q')}
      }
      for (var kt = 0u; kt < nk; kt = kt + 2u) {
        ${fromSet('p', 2)}
        if (kt + 1u < nk) {
          ${fromSet('q', 3)}
        }
      }`;
    const mainLoop = stages === 1 && t.prefetch === 2 ? prefetch2 : stages === 2
      ? `${fetch}
      ${stage('0u')}
      workgroupBarrier();
      for (var kt = 0u; kt < nk; kt = kt + 2u) {
        ${step('kt', 0)}
        if (kt + 1u < nk) ${step('(kt + 1u)', 1)}
      }`
      : `${fetch}
      for (var kt = 0u; kt < nk; kt = kt + 1u) {
        ${stage('0u')}
        workgroupBarrier();
        if (kt + 1u < nk) {
          let k0 = (kt + 1u) * ${BK}u;
          ${fetch}
        }
        ${compute('0u')}
        workgroupBarrier();
      }`;

    const store = (i: number, j: number) => {
      const rowE = `row0 + wm0 + ${i * 16}u`, colE = `col0 + wn0 + ${j * 16}u`;
      const direct = neu
        ? `subgroupMatrixStore<row_major>(&C, cBase + (${rowE}) * dims.ldc + ${colE}, acc_${i}_${j}, dims.ldc);`
        : `subgroupMatrixStore(&C, cBase + (${rowE}) * dims.ldc + ${colE}, acc_${i}_${j}, false, dims.ldc);`;
      const scratch = neu
        ? `subgroupMatrixStore<row_major>(&Cs, sg * 256u, acc_${i}_${j}, 16u);`
        : `subgroupMatrixStore(&Cs, sg * 256u, acc_${i}_${j}, false, 16u);`;
      return { direct, edge: `${scratch}
          workgroupBarrier();
          for (var e = lane; e < 256u; e = e + ${S}u) {
            let r = ${rowE} + e / 16u; let n = ${colE} + e % 16u;
            if (r < dims.M && n < dims.N) { C[cBase + r * dims.ldc + n] = Cs[sg * 256u + e]; }
          }
          workgroupBarrier();` };
    };
    const pairs = range(g.fm).flatMap((i) => range(g.fn).map((j) => store(i, j)));
    const swizzle = group > 0
      ? `let pid = wid.y * nwg.x + wid.x; let width = ${group}u * nwg.x; let first = (pid / width) * ${group}u;
      let gsz = min(nwg.y - first, ${group}u);
      let tm = first + (pid % width) % gsz; let tn = (pid % width) / gsz;`
      : `let tm = wid.y; let tn = wid.x;`;

    return `${SUBGROUP_MATRIX_WGSL}

${UNIFORM_STRUCT}

@group(0) @binding(0) var<storage, read> A : array<${load === 'vec8' ? 'vec4<u32>' : 'f16'}>;
@group(0) @binding(1) var<storage, read> B : array<${load === 'vec8' ? 'vec4<u32>' : 'f16'}>;
@group(0) @binding(2) var<storage, read_write> C : array<f32>;
@group(0) @binding(3) var<uniform> dims : Dims;

${load === 'scalar' ? `fn ldA(i : u32, ok : bool) -> f16 { if (ok) { return A[i]; } return 0.0h; }
fn ldB(i : u32, ok : bool) -> f16 { if (ok) { return B[i]; } return 0.0h; }` : ''}
var<workgroup> As : array<${neu ? 'vec4<u32>' : 'f16'}, ${stages * g.aSize * (neu ? 1 : 8)}>;
var<workgroup> Bs : array<${neu ? 'vec4<u32>' : 'f16'}, ${stages * g.bSize * (neu ? 1 : 8)}>;
var<workgroup> Cs : array<f32, ${g.nsg * 256}>;

@compute @workgroup_size(${g.wg}, 1, 1)
fn main(@builtin(local_invocation_index) tid : u32, @builtin(workgroup_id) wid : vec3<u32>,
        @builtin(num_workgroups) nwg : vec3<u32>, @builtin(subgroup_id) sg : u32,
        @builtin(subgroup_invocation_id) lane : u32) {
  ${swizzle}
  let row0 = tm * ${BM}u;
  let col0 = tn * ${BN}u;
  let aBase = dims.aOff + wid.z * dims.sA;
  let bBase = dims.bOff + wid.z * dims.sB;
  let cBase = dims.cOff + wid.z * dims.sC;
  let wm0 = (sg / ${sgN}u) * ${WM}u;
  let wn0 = (sg % ${sgN}u) * ${WN}u;
  let nk = (dims.K + ${BK - 1}u) / ${BK}u;
  ${range(g.fm).flatMap((i) => range(g.fn).map((j) => `var acc_${i}_${j} = SA();`)).join(' ')}
  ${range(perA).map((r) => `var pa${r} : vec4<u32>;`).join(' ')}
  ${range(perB).map((r) => `var pb${r} : vec4<u32>;`).join(' ')}
  ${t.prefetch === 2 ? [...range(perA).map((r) => `var qa${r} : vec4<u32>;`), ...range(perB).map((r) => `var qb${r} : vec4<u32>;`)].join(' ') : ''}
  {
    let k0 = 0u;
    ${mainLoop}
  }
  if (row0 + ${BM}u <= dims.M && col0 + ${BN}u <= dims.N) {
    ${pairs.map((p) => p.direct).join('\n    ')}
  } else {
    ${pairs.map((p) => `{ ${p.edge} }`).join('\n    ')}
  }
}
`;
  }
}

/**
 * The fallback: C = op(A)·op(B) with f32 FMAs, A/B read as packed halves through unpack2x16float (no
 * f16 or subgroup features needed). 64×64 tiles, 16×16 invocations of 4×4 outputs, K steps of 16.
 * Same bindings and Dims as {@link SgMatmulProgram}; any shape and offset.
 */
export class SimtMatmulF16Program implements OwnProgram {
  shaderKey: string;
  workgroupSize: [number, number, number] = [16, 16, 1];
  dispatch: [number, number, number];

  constructor(readonly a: LayoutA, readonly b: LayoutB, dims: Pick<MatmulF16Dims, 'M' | 'N' | 'batch'>) {
    this.dispatch = [Math.ceil(dims.N / 64), Math.ceil(dims.M / 64), dims.batch ?? 1];
    if (this.dispatch.some((x) => x > 65535)) throw new RangeError(`matmul-f16: ${dims.M}×${dims.N}×${dims.batch ?? 1} needs more than 65535 workgroups along one axis`);
    this.shaderKey = `tsft_simtmm_f16_${a}_${b}`;
  }

  getUserCode(): string {
    const ia = this.a === 'mk' ? 'aBase + m * dims.lda + k' : 'aBase + k * dims.lda + m';
    const ib = this.b === 'kn' ? 'bBase + k * dims.ldb + n' : 'bBase + n * dims.ldb + k';
    return `${UNIFORM_STRUCT}
@group(0) @binding(0) var<storage, read> A : array<u32>;
@group(0) @binding(1) var<storage, read> B : array<u32>;
@group(0) @binding(2) var<storage, read_write> C : array<f32>;
@group(0) @binding(3) var<uniform> dims : Dims;

var<workgroup> As : array<array<f32, 64>, 16>;
var<workgroup> Bs : array<array<f32, 64>, 16>;

fn half(arr : u32, i : u32) -> f32 {
  var w : u32;
  if (arr == 0u) { w = A[i >> 1u]; } else { w = B[i >> 1u]; }
  return unpack2x16float(w)[i & 1u];
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid : vec3<u32>, @builtin(workgroup_id) wid : vec3<u32>) {
  let row0 = wid.y * 64u;
  let col0 = wid.x * 64u;
  let aBase = dims.aOff + wid.z * dims.sA;
  let bBase = dims.bOff + wid.z * dims.sB;
  let cBase = dims.cOff + wid.z * dims.sC;
  let tid = lid.y * 16u + lid.x;
  var acc : array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < dims.K; k0 = k0 + 16u) {
    for (var e = tid; e < 1024u; e = e + 256u) {
      let kk = e / 64u; let x = e % 64u;
      let m = row0 + x; let n = col0 + x; let k = k0 + kk;
      var va = 0.0; var vb = 0.0;
      if (m < dims.M && k < dims.K) { va = half(0u, ${ia}); }
      if (n < dims.N && k < dims.K) { vb = half(1u, ${ib}); }
      As[kk][x] = va;
      Bs[kk][x] = vb;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk = kk + 1u) {
      for (var i = 0u; i < 4u; i = i + 1u) {
        let av = As[kk][lid.y + 16u * i];
        for (var j = 0u; j < 4u; j = j + 1u) { acc[i][j] = fma(av, Bs[kk][lid.x + 16u * j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i = i + 1u) {
    for (var j = 0u; j < 4u; j = j + 1u) {
      let m = row0 + lid.y + 16u * i; let n = col0 + lid.x + 16u * j;
      if (m < dims.M && n < dims.N) { C[cBase + m * dims.ldc + n] = acc[i][j]; }
    }
  }
}
`;
  }
}


/** Records one dispatch of a matmul program into `pass`; `uniform` holds {@link dimsBytes}. */
export function encodeMatmulF16(device: GPUDevice, pass: GPUComputePassEncoder, program: OwnProgram, a: GPUBuffer, b: GPUBuffer, c: GPUBuffer, uniform: GPUBuffer): void {
  const pipeline = pipelineFor(device, program);
  const bindGroup = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [a, b, c, uniform].map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(...program.dispatch);
}

/** True when `device` can run {@link SgMatmulProgram}s (f16 × f16 → f32 at 16×16×16, uniform subgroup size). */
export function hasSubgroupMatrix(device: GPUDevice, info?: GPUAdapterInfo): boolean {
  if (!device.features.has('chromium-experimental-subgroup-matrix') || !device.features.has('shader-f16') || !device.features.has('subgroups')) return false;
  const ai = info as (GPUAdapterInfo & { subgroupMatrixConfigs?: { componentType: string; resultComponentType: string; M: number; N: number; K: number }[] }) | undefined;
  if (!ai?.subgroupMatrixConfigs) return true;
  return ai.subgroupMatrixConfigs.some((c) => c.componentType === 'f16' && c.resultComponentType === 'f32' && c.M === 16 && c.N === 16 && c.K === 16);
}

// ---------------------------------------------------------------------------------------------------
// tfjs level

/** An f16 tensor: `shape`'s elements as halves, packed two per int32 element of `packed` (padded to 16 bytes). */
export class HalfTensor {
  constructor(readonly packed: tf.Tensor1D, readonly shape: number[]) {}

  get size(): number {
    return sizeOf(this.shape);
  }

  dispose(): void {
    this.packed.dispose();
  }
}

/** Packed int32 words for `n` halves: whole 16-byte groups. */
function packedWords(n: number): number {
  // at least 1 KiB (a 16×16 f32 fragment): Dawn sizes the minimum binding of an array that subgroup-matrix
  // builtins read or write to a whole fragment (H100: a 2×24 output failed with minBindingSize 1024)
  return Math.max(MIN_FRAGMENT_BYTES / 4, Math.ceil(n / 8) * 4);
}

/** Bytes of one 16×16 f32 fragment: Dawn's minimum binding size for arrays used by subgroup-matrix loads/stores. */
const MIN_FRAGMENT_BYTES = 16 * 16 * 4;

/** f32 → packed halves (round to nearest even), two per output word. */
class CastF16Program extends ElementwiseProgram {
  override uniforms = 'n : i32,';

  constructor(words: number) {
    super(['X'], [words], 'tsft_cast_f16');
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index < uniforms.size) {
        let i = 2 * index;
        var lo = 0.0; var hi = 0.0;
        if (i < uniforms.n) { lo = X[i]; }
        if (i + 1 < uniforms.n) { hi = X[i + 1]; }
        result[index] = bitcast<i32>(pack2x16float(vec2<f32>(lo, hi)));
      }
    }`;
  }
}

/** IEEE half bits of `x` (round to nearest even, overflow to ±inf). */
const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

export function f32ToF16Bits(x: number): number {
  F32[0] = x;
  const b = U32[0], sign = (b >>> 16) & 0x8000, exp = (b >>> 23) & 0xff, mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000, shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** The value of half bits `h`. */
export function f16BitsToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >>> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * `t` (float32) rounded to f16, as a {@link HalfTensor}: on webgpu one GPU pass; elsewhere on the CPU.
 *
 * @example
 * const w16 = toHalf(weight); // keep for many matmuls; w16.dispose() when done
 */
export function toHalf(t: tf.Tensor): HalfTensor {
  if (t.dtype !== 'float32') throw new TypeError(`toHalf: expected float32, got ${t.dtype}`);
  const words = packedWords(t.size);
  if (onWebGpu()) {
    const flat = tf.reshape(t, [t.size]);
    const packed = runProgram(new CastF16Program(words), [flat], [{ type: 'int32', data: [t.size] }], 'int32') as tf.Tensor1D;
    flat.dispose();
    return new HalfTensor(packed, t.shape.slice());
  }
  const v = t.dataSync();
  const w = new Int32Array(words);
  for (let i = 0; i < v.length; i++) w[i >> 1] |= f32ToF16Bits(v[i]) << (16 * (i & 1));
  return new HalfTensor(tf.tensor1d(w, 'int32'), t.shape.slice());
}

/** Rows `Ids` of a [rows, H] HalfTensor as float32 [n, H]: an embedding lookup in a table held in f16. */
class GatherHalfRowsProgram extends ElementwiseProgram {
  override uniforms = 'H : i32, rows : i32,';

  constructor(n: number, H: number) {
    super(['Table', 'Ids'], [n, H], 'tsft_gather_half_rows');
  }

  getUserCode(): string {
    return `
    fn main(index : i32) {
      if (index >= uniforms.size) { return; }
      let r = Ids[index / uniforms.H];
      if (r < 0 || r >= uniforms.rows) { result[index] = uniforms.NAN; return; }
      let e = r * uniforms.H + index % uniforms.H;
      let w = bitcast<u32>(Table[e / 2]);
      result[index] = unpack2x16float(w)[e % 2];
    }`;
  }
}

/**
 * Rows `ids` of a 2-D HalfTensor as float32 [ids.length, H] (exactly the halves): the embedding lookup of a
 * frozen table held in f16. No gradient. Ids outside the table give NaN rows (tf.gather would throw on
 * the CPU; the GPU cannot). On webgpu one kernel; elsewhere through the CPU.
 *
 * @example
 * const x = gatherHalfRows(embedHalf, [151643, 872, 198]);   // [3, H]
 */
export function gatherHalfRows(table: HalfTensor, ids: readonly number[]): tf.Tensor2D {
  if (table.shape.length !== 2) throw new RangeError(`gatherHalfRows: expected a 2-D table, got [${table.shape}]`);
  const [rows, H] = table.shape;
  if (onWebGpu()) {
    const idx = tf.tensor1d(Int32Array.from(ids), 'int32');
    const out = runProgram(new GatherHalfRowsProgram(ids.length, H), [table.packed, idx], [
      { type: 'int32', data: [H] }, { type: 'int32', data: [rows] },
    ]) as tf.Tensor2D;
    idx.dispose();
    return out;
  }
  const w = new Uint32Array(Int32Array.from(table.packed.dataSync()).buffer);
  const out = new Float32Array(ids.length * H);
  ids.forEach((r, i) => {
    for (let j = 0; j < H; j++) {
      const e = r * H + j;
      out[i * H + j] = r >= 0 && r < rows ? f16BitsToF32((w[e >> 1] >>> (16 * (e & 1))) & 0xffff) : NaN;
    }
  });
  return tf.tensor2d(out, [ids.length, H]);
}

/** A HalfTensor's values as float32 (exactly the halves); reads back through the CPU. */
export async function fromHalfAsync(h: HalfTensor): Promise<tf.Tensor> {
  const w = new Uint32Array((await h.packed.data()).buffer.slice(0));
  const out = new Float32Array(h.size);
  for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32((w[i >> 1] >>> (16 * (i & 1))) & 0xffff);
  return tf.tensor(out, h.shape);
}

type Operand = tf.Tensor | HalfTensor;

/**
 * The adapter's info for `device`: the one initDevice kept (GPUAdapter.info, which lists Dawn's
 * subgroupMatrixConfigs), else what Dawn hangs on the device (`GPUDevice.adapterInfo`, whose config list
 * came back empty on the H100 — reading it made every f16 matmul take the SIMT fallback).
 */
function deviceAdapterInfo(device: GPUDevice): GPUAdapterInfo | undefined {
  const session = currentDevice();
  if (session?.gpuDevice === device) {
    try {
      return getGpuAdapterInfo();
    } catch {
      // no session info: fall through
    }
  }
  return (device as unknown as { adapterInfo?: GPUAdapterInfo }).adapterInfo;
}

const pathOfDevice = new WeakMap<GPUDevice, 'subgroup-matrix' | 'simt'>();

/** Which program runs on this device: 'subgroup-matrix' (tensor cores) or 'simt' (the fallback). */
export function matmulF16Path(): 'subgroup-matrix' | 'simt' | 'tfjs' {
  if (!onWebGpu()) return 'tfjs';
  const device = webgpuBackend().device;
  let path = pathOfDevice.get(device);
  if (!path) pathOfDevice.set(device, (path = hasSubgroupMatrix(device, deviceAdapterInfo(device)) ? 'subgroup-matrix' : 'simt'));
  return path;
}

/**
 * op(a)·op(b) with f16 operands and f32 accumulation, f32 result: 2-D [M, K]·[K, N] or batched
 * [B, M, K]·[B, K, N] (a batch of 1 broadcasts). Operands: float32 tensors (rounded to f16 first) or
 * {@link HalfTensor}s. On webgpu: subgroup matrices where the adapter has them, else the SIMT fallback;
 * elsewhere tf.matMul of the f16-rounded values. No gradient: a building block for mixed precision.
 *
 * @example
 * const y = matMulF16(x, w16, false, true); // [T, H] · [V, H]ᵀ → [T, V] f32
 */
export function matMulF16(a: Operand, b: Operand, transposeA = false, transposeB = false, opts: { tile?: SgTile; options?: Partial<SgOptions>; splitK?: number } = {}): tf.Tensor {
  const as = a.shape, bs = b.shape;
  if (as.length !== bs.length || (as.length !== 2 && as.length !== 3)) throw new RangeError(`matMulF16: operands must both be 2-D or 3-D, got [${as}] and [${bs}]`);
  const batched = as.length === 3;
  const [ba, bb] = batched ? [as[0], bs[0]] : [1, 1];
  if (ba !== bb && ba !== 1 && bb !== 1) throw new RangeError(`matMulF16: batch sizes ${ba} and ${bb} differ`);
  const batch = Math.max(ba, bb);
  const ar = as.slice(-2), br = bs.slice(-2);
  const [M, K] = transposeA ? [ar[1], ar[0]] : ar;
  const [K2, N] = transposeB ? [br[1], br[0]] : br;
  if (K !== K2) throw new RangeError(`matMulF16: inner sizes differ ([${as}] · [${bs}], transposeA ${transposeA}, transposeB ${transposeB})`);
  const outShape = batched ? [batch, M, N] : [M, N];

  if (!onWebGpu()) {
    return tf.tidy(() => {
      const f = (x: Operand) => (x instanceof HalfTensor ? halfValuesSync(x) : roundHalf(x));
      return tf.matMul(f(a) as tf.Tensor2D, f(b) as tf.Tensor2D, transposeA, transposeB);
    });
  }
  const ha = a instanceof HalfTensor ? a : toHalf(a);
  const hb = b instanceof HalfTensor ? b : toHalf(b);
  try {
    const la: LayoutA = transposeA ? 'km' : 'mk', lb: LayoutB = transposeB ? 'nk' : 'kn';
    const path = matmulF16Path();
    // split-K: a long K over few output tiles (the LM head's dH = G·W: 384×2048 outputs, K = 151,936) runs as
    // a batch of S K-slices (batch strides step along K) summed afterwards, so enough workgroups run at once
    const S = batched ? 1 : opts.splitK ?? (path === 'subgroup-matrix' ? pickSplitK(M, N, K) : 1);
    if (!(Number.isInteger(S) && S >= 1 && K % S === 0)) throw new RangeError(`matMulF16: splitK ${S} must divide K = ${K}`);
    const Kc = K / S;
    const dims: MatmulF16Dims = S > 1
      ? {
        M, N, K: Kc, batch: S, lda: ar[1], ldb: br[1], ldc: N,
        strideA: la === 'mk' ? Kc : Kc * ar[1], strideB: lb === 'kn' ? Kc * br[1] : Kc, strideC: M * N,
      }
      : {
        M, N, K, batch, lda: ar[1], ldb: br[1], ldc: N,
        strideA: ba === 1 ? 0 : M * K, strideB: bb === 1 ? 0 : K * N, strideC: M * N,
      };
    const backend = webgpuBackend();
    const device = backend.device;
    let program: OwnProgram;
    if (path === 'subgroup-matrix') {
      const sgSize = (deviceAdapterInfo(device) as { subgroupMaxSize?: number } | undefined)?.subgroupMaxSize ?? 32;
      const load: SgLoad = vec8Ok(la, lb, dims) ? 'vec8' : 'scalar';
      program = new SgMatmulProgram(opts.tile ?? pickSgTile(M, N, batch * S), la, lb, dims, { load, subgroupSize: sgSize, group: pickSgGroup(M, N), ...opts.options });
    } else {
      program = new SimtMatmulF16Program(la, lb, dims);
    }
    // an output smaller than one f32 fragment is computed into a fragment-sized buffer (Dawn's minimum
    // binding for subgroupMatrixStore targets), then cut to size
    const size = batch * S * M * N, padded = size * 4 < MIN_FRAGMENT_BYTES;
    const out = uninitialised(padded ? [MIN_FRAGMENT_BYTES / 4] : S > 1 ? [S, M, N] : outShape, 'float32');
    const buffers = [gpuBufferOf(ha.packed), gpuBufferOf(hb.packed), gpuBufferOf(out), constantUniform(device, dimsBytes(dims))];
    // into tfjs's compute pass, submitted with its batch (a pass and a submit per matmul cost ~0.1 ms of CPU)
    recordDispatch([{ pipeline: pipelineFor(device, program), buffers, workgroups: program.dispatch, label: `matMulF16 ${batch > 1 ? `${batch}×` : ''}${M}×${N}×${K}${S > 1 ? ` split ${S}` : ''}` }], [ha.packed, hb.packed, out]);
    if (S > 1) {
      const sum = tf.sum(out, 0);
      out.dispose();
      return sum;
    }
    if (!padded) return out;
    const cut = tf.reshape(tf.slice(out, [0], [size]), outShape);
    out.dispose();
    return cut;
  } finally {
    if (ha !== a) ha.dispose();
    if (hb !== b) hb.dispose();
  }
}

/** float32 values rounded to f16 (CPU; for the non-webgpu path and tests). */
function roundHalf(t: tf.Tensor): tf.Tensor {
  const v = t.dataSync();
  return tf.tensor(Float32Array.from(v, (x) => f16BitsToF32(f32ToF16Bits(x))), t.shape);
}

function halfValuesSync(h: HalfTensor): tf.Tensor {
  const w = new Uint32Array(Int32Array.from(h.packed.dataSync()).buffer);
  const out = new Float32Array(h.size);
  for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32((w[i >> 1] >>> (16 * (i & 1))) & 0xffff);
  return tf.tensor(out, h.shape);
}

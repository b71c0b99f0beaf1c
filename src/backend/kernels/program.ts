// What tsft's WGSL kernels share: running a Program (tfjs-backend-webgpu's interface: WGSL source,
// dispatch shape, workgroup size, cache key) through tfjs's webgpu backend so its result is an ordinary
// tensor, the dispatch helpers, and a tiled fp32 matmul generator (workgroup-memory tiles, register
// blocking, register prefetch of the next k-tile) whose epilogue each kernel writes itself.
//
// tfjs prepends its own WGSL to a program's code: the `Uniforms` struct (shapes of every input and the
// output, then the program's own `uniforms` fields), `result` (the output, read_write) and one read-only
// array per name in `variableNames`, and `_start`, which sets the private `localId`, `localIndex`,
// `workgroupId`, `numWorkgroups` and calls the program's `fn main()` (or `fn main(index : i32)` for a
// flat dispatch layout). Helper names here start with `mm` / `k` so they don't collide with tfjs's.
// Every name in `variableNames` must appear in the code: tfjs builds the pipeline with an 'auto' layout,
// which drops unused bindings, and the bind group then fails (silently zeroing the whole batch of work).

import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend, WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';

/** A program-defined uniform, in the order of the program's `uniforms` declaration. */
export interface Uniform {
  type: 'int32' | 'uint32' | 'float32';
  data: number[];
}

/** tfjs-backend-webgpu's Program, as our kernels fill it in. */
export type Program = WebGPUProgram;

/** True when tfjs computes on its webgpu backend (our kernels run; elsewhere their tfjs-op fallbacks). */
export function onWebGpu(): boolean {
  return tf.getBackend() === 'webgpu';
}

/** The active tfjs backend as tfjs-backend-webgpu's class (call only when {@link onWebGpu}). */
export function webgpuBackend(): WebGPUBackend {
  return tf.backend() as unknown as WebGPUBackend;
}

/**
 * Runs `program` on the webgpu backend and returns its output as a tensor tracked by tfjs (disposed by
 * tidy like any op's result). With `output`, the program writes into that tensor instead — in place,
 * keeping whatever it doesn't overwrite — and `output` is returned.
 *
 * @example
 * const y = runProgram(new SwiGluProgram(g.shape, 'forward'), [g, u]);
 */
export function runProgram(
  program: Program,
  inputs: tf.Tensor[],
  uniforms: Uniform[] = [],
  dtype: tf.DataType = 'float32',
  output?: tf.Tensor,
): tf.Tensor {
  const info = webgpuBackend().runWebGPUProgram(program, inputs, dtype, uniforms, output);
  return output ?? tf.engine().makeTensorFromTensorInfo(info);
}

/**
 * A tensor whose GPU buffer is allocated but not initialised, for programs that fill it piece by piece
 * through {@link runProgram}'s `output` (e.g. dW chunk by chunk).
 */
export function uninitialised(shape: number[], dtype: tf.DataType = 'float32'): tf.Tensor {
  const backend = webgpuBackend();
  const info = backend.makeTensorInfo(shape, dtype);
  backend.uploadToGPU(info.dataId);
  return tf.engine().makeTensorFromTensorInfo(info);
}

/** tfjs-backend-webgpu internals that tsft's own passes need (private in its typings). */
export interface BackendInternals {
  commandEncoder: GPUCommandEncoder | null;
  computePassEncoder: GPUComputePassEncoder | null;
  uniformPendingDisposal: GPUBuffer[];
  /** data ids that recorded, not yet submitted, work uses: their buffers go back to the pool after the submit */
  commandQueueOwnedIds: WeakSet<object>;
  dispatchCountInPass: number;
  /** tf.time / tf.profile's timers (null when nothing is timed) and what tfjs times with */
  activeTimers?: { name: string; query: Promise<number> }[] | null;
  supportTimestampQuery?: boolean;
  querySet?: GPUQuerySet | null;
  querySetCount?: number;
  getQueryTime?: () => Promise<number>;
}

/** One dispatch of a pipeline tsft builds itself (not a tfjs Program): what {@link recordDispatch} records. */
export interface OwnDispatch {
  pipeline: GPUComputePipeline;
  /** buffers bound at 0, 1, … of group 0 */
  buffers: GPUBuffer[];
  workgroups: [number, number, number];
  /** what tf.time / tf.profile's per-program list calls it (default: the pipeline's label) */
  label?: string;
}

/**
 * Records dispatches of tsft's own pipelines into tfjs's current compute pass, as tfjs records its own
 * programs: no pass of their own, no submit of their own (tfjs submits every
 * WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE dispatches, counting these). `tensors` are every tensor the dispatches
 * read or write: until the submit their buffers stay out of tfjs's pool even if they are disposed, so an
 * upload (queue.writeBuffer, which runs before the recorded work) cannot land in a buffer this work still
 * reads. Uniform buffers must be in `uniformPendingDisposal` (released after the submit) as tfjs's are, or
 * come from {@link constantUniform}.
 */
export function recordDispatch(dispatches: OwnDispatch[], tensors: tf.Tensor[]): void {
  const backend = webgpuBackend();
  const b = backend as unknown as BackendInternals;
  for (const t of tensors) b.commandQueueOwnedIds.add(t.dataId);
  backend.ensureCommandEncoderReady();
  if (!b.computePassEncoder) b.computePassEncoder = b.commandEncoder!.beginComputePass({});
  // under tf.time / tf.profile each dispatch gets a pass with timestamps, as tfjs times its own programs
  const timed = b.activeTimers != null && b.supportTimestampQuery === true && b.getQueryTime !== undefined;
  let pass = b.computePassEncoder;
  for (const d of dispatches) {
    if (timed) {
      backend.ensureCommandEncoderReady();
      backend.endComputePassEncoder();
      b.querySet ??= backend.device.createQuerySet({ type: 'timestamp', count: b.querySetCount ?? 2 });
      pass = b.computePassEncoder = b.commandEncoder!.beginComputePass({
        timestampWrites: { querySet: b.querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
      });
    }
    const bindGroup = bindGroupFor(backend.device, d.pipeline, d.buffers);
    pass!.setPipeline(d.pipeline);
    pass!.setBindGroup(0, bindGroup);
    pass!.dispatchWorkgroups(...d.workgroups);
    b.dispatchCountInPass++;
    if (timed) {
      backend.endComputePassEncoder();
      b.activeTimers!.push({ name: d.label ?? d.pipeline.label, query: b.getQueryTime!.call(backend) });
    }
  }
  if (!timed && b.dispatchCountInPass >= (tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE') as number)) {
    backend.endComputePassEncoder();
    backend.submitQueue();
  }
}

/** The GPU buffer behind tensor `t` on the webgpu backend (uploaded first if it still lives on the CPU). */
export function gpuBufferOf(t: tf.Tensor): GPUBuffer {
  const backend = webgpuBackend();
  backend.uploadToGPU(t.dataId);
  return backend.tensorMap.get(t.dataId).resource as GPUBuffer;
}

/** Workgroups for `n` items, `perGroup` each, on a grid of at most 65535 per dimension (x fastest). */
export function gridFor(n: number, perGroup: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(n / perGroup));
  const x = Math.min(groups, 65535);
  return [x, Math.ceil(groups / x), 1];
}

/** WGSL: this workgroup's index on a {@link gridFor} grid. */
export const FLAT_WORKGROUP = 'i32(workgroupId.y * numWorkgroups.x + workgroupId.x)';

/**
 * An elementwise program: one thread per output element, tfjs's `fn main(index : i32)` (tfjs folds a
 * grid over 65535 workgroups itself), `uniforms.size` = the element count.
 */
export abstract class ElementwiseProgram implements Program {
  outputShape: number[];
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [256, 1, 1];
  size = true;
  uniforms?: string;

  constructor(readonly variableNames: string[], shape: number[], public shaderKey: string) {
    this.outputShape = shape;
    this.dispatch = [Math.max(1, Math.ceil(sizeOf(shape) / 256)), 1, 1];
  }

  abstract getUserCode(): string;
}

/**
 * A program with one workgroup per item (a row, a block) on a {@link gridFor} grid: `fn main()`, the
 * item is {@link FLAT_WORKGROUP}.
 */
export abstract class GroupedProgram implements Program {
  dispatchLayout = { x: [0], y: [1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms?: string;

  constructor(readonly variableNames: string[], public outputShape: number[], public shaderKey: string, items: number, workgroup = 256) {
    this.dispatch = gridFor(items, 1);
    this.workgroupSize = [workgroup, 1, 1];
  }

  abstract getUserCode(): string;
}

/**
 * WGSL `fn kBlockSum(v : f32) -> f32`: the sum of `v` over a workgroup of `wg` threads (a power of two),
 * returned to every thread. Call it from uniform control flow only (it has barriers).
 */
export function blockSumWgsl(wg: number): string {
  if (wg & (wg - 1)) throw new RangeError(`blockSumWgsl: ${wg} is not a power of two`);
  return `
    var<workgroup> kRed : array<f32, ${wg}>;
    fn kBlockSum(v : f32) -> f32 {
      let tid = localIndex;
      workgroupBarrier();
      kRed[tid] = v;
      workgroupBarrier();
      for (var w = ${wg / 2}u; w > 0u; w = w / 2u) {
        if (tid < w) { kRed[tid] = kRed[tid] + kRed[tid + w]; }
        workgroupBarrier();
      }
      return kRed[0];
    }`;
}

/** Number of elements of a shape. */
export function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Throws unless `t` is float32 (our kernels compute in fp32 and tfjs has no f16 dtype). */
export function assertFloat32(what: string, ...ts: tf.Tensor[]): void {
  for (const t of ts) if (t.dtype !== 'float32') throw new TypeError(`${what}: expected float32, got ${t.dtype}`);
}

// ---------------------------------------------------------------------------------------------------
// Tiled fp32 matmul: C[M, N] = A[M, K] · B[K, N], each operand in one of two layouts, read from a flat
// array at an element offset with a leading dimension (so a program can work on a slice of a bigger
// matrix, e.g. a vocabulary chunk of the LM head). Thread (tx, ty) of a WX×WY workgroup owns TM×TN
// outputs: rows r·4·WY + 4·ty + q and columns c·4·WX + 4·tx + q (blocks of 4, strided so that
// neighbouring threads read neighbouring vec4s of the staged tiles and write neighbouring columns).

/** Tile shape of a matmul program; every field is part of its cache key. */
export interface MatmulTile {
  /** rows (M) per workgroup */
  tileM: number;
  /** columns (N) per workgroup */
  tileN: number;
  /** K per staged tile */
  tileK: number;
  /** rows per thread (multiple of 4) */
  threadM: number;
  /** columns per thread (multiple of 4) */
  threadN: number;
}

/** 128×128 tiles, 8×8 per thread, 256 threads: the big-matrix default. */
export const TILE_128: MatmulTile = { tileM: 128, tileN: 128, tileK: 8, threadM: 8, threadN: 8 };
/** 64×64 tiles, 4×4 per thread, 256 threads: for outputs with few 128×128 tiles. */
export const TILE_64: MatmulTile = { tileM: 64, tileN: 64, tileK: 16, threadM: 4, threadN: 4 };

/** A: 'mk' = stored [M, K] (row m at m·lda), 'km' = stored [K, M]. B: 'kn' = stored [K, N], 'nk' = [N, K]. */
export type LayoutA = 'mk' | 'km';
export type LayoutB = 'kn' | 'nk';

export function tileKey(t: MatmulTile): string {
  return `${t.tileM}x${t.tileN}x${t.tileK}_${t.threadM}x${t.threadN}`;
}

/** Parses `128x128x8_8x8` (as {@link tileKey} writes it). */
export function parseTile(s: string): MatmulTile {
  const m = /^(\d+)x(\d+)x(\d+)_(\d+)x(\d+)$/.exec(s);
  if (!m) throw new RangeError(`tile '${s}': expected tileMxtileNxtileK_threadMxthreadN, e.g. 128x128x8_8x8`);
  const [tileM, tileN, tileK, threadM, threadN] = m.slice(1).map(Number);
  return checkTile({ tileM, tileN, tileK, threadM, threadN });
}

function checkTile(t: MatmulTile): MatmulTile {
  const wx = t.tileN / t.threadN, wy = t.tileM / t.threadM;
  const ok = [t.threadM % 4, t.threadN % 4, t.tileM % t.threadM, t.tileN % t.threadN].every((r) => r === 0) &&
    Number.isInteger(wx) && Number.isInteger(wy) && wx * wy <= 1024 &&
    (t.tileM * t.tileK) % (wx * wy) === 0 && (t.tileN * t.tileK) % (wx * wy) === 0;
  if (!ok) throw new RangeError(`tile ${tileKey(t)}: thread blocks must be multiples of 4 dividing the tile, and the workgroup must stage whole tiles`);
  return t;
}

/** Workgroup size [WX, WY, 1] of a tile. */
export function tileWorkgroup(t: MatmulTile): [number, number, number] {
  return [t.tileN / t.threadN, t.tileM / t.threadM, 1];
}

/**
 * What an epilogue may use after the main loop: `acc_{i}_{c}` (vec4: row i of the thread, columns
 * 4c..4c+3 of its block c), `mmRow(i)` / `mmCol(c, q)` (WGSL expressions, tile-local), and `row0`/`col0`
 * (the tile's origin) in scope.
 */
export interface MatmulEpilogueContext {
  tile: MatmulTile;
  /** WGSL expression: tile-local row of the thread's row i (0 ≤ i < threadM) */
  row(i: number): string;
  /** WGSL expression: tile-local column of the thread's column block c (0 ≤ c < threadN/4), lane q */
  col(c: number, q: number): string;
}

/**
 * WGSL for a tiled matmul program's `main()`: declares the staging tiles, loads A and B through
 * `mmA(m, k) -> f32` / `mmB(k, n) -> f32` (which the program defines, returning 0 out of bounds), leaves
 * the products in `acc_*`, then runs `epilogue`. Rows tile along workgroupId.x, columns along .y.
 * `uniforms.K` must be the reduction length.
 */
export function matmulMain(tile: MatmulTile, a: LayoutA, b: LayoutB, epilogue: (ctx: MatmulEpilogueContext) => string): string {
  checkTile(tile);
  const { tileM: BM, tileN: BN, tileK: BK, threadM: TM, threadN: TN } = tile;
  const [WX, WY] = tileWorkgroup(tile);
  const WG = WX * WY;
  const perA = (BM * BK) / WG, perB = (BN * BK) / WG;
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  // Staging: element e = tid + r·WG of the tile; the fast index runs along the operand's contiguous axis.
  const aCoord = (r: number) => (a === 'mk'
    ? { m: `((tid + ${r * WG}) / ${BK})`, k: `((tid + ${r * WG}) % ${BK})` }
    : { m: `((tid + ${r * WG}) % ${BM})`, k: `((tid + ${r * WG}) / ${BM})` });
  const bCoord = (r: number) => (b === 'nk'
    ? { n: `((tid + ${r * WG}) / ${BK})`, k: `((tid + ${r * WG}) % ${BK})` }
    : { n: `((tid + ${r * WG}) % ${BN})`, k: `((tid + ${r * WG}) / ${BN})` });
  const fetch = (k0: string) => [
    ...range(perA).map((r) => { const c = aCoord(r); return `pa${r} = mmA(row0 + ${c.m}, ${k0} + ${c.k});`; }),
    ...range(perB).map((r) => { const c = bCoord(r); return `pb${r} = mmB(${k0} + ${c.k}, col0 + ${c.n});`; }),
  ].join('\n      ');
  const stage = [
    ...range(perA).map((r) => { const c = aCoord(r); return `mmAs[(${c.k} * ${BM} + ${c.m}) / 4][${c.m} % 4] = pa${r};`; }),
    ...range(perB).map((r) => { const c = bCoord(r); return `mmBs[(${c.k} * ${BN} + ${c.n}) / 4][${c.n} % 4] = pb${r};`; }),
  ].join('\n      ');
  // The k-loop of a staged tile stays a loop (the GPU compiler unrolls it; fully unrolled WGSL takes
  // lavapipe's LLVM tens of seconds to compile); the TM×TN/4 register block is written out.
  const inner = [
    `for (var kk = 0; kk < ${BK}; kk = kk + 1) {`,
    ...range(TM / 4).map((r) => `  let a${r} = mmAs[kk * ${BM / 4} + ${r * WY} + ty];`),
    ...range(TN / 4).map((c) => `  let b${c} = mmBs[kk * ${BN / 4} + ${c * WX} + tx];`),
    ...range(TM).flatMap((i) => range(TN / 4).map((c) => `  acc_${i}_${c} = fma(vec4<f32>(a${i >> 2}[${i & 3}]), b${c}, acc_${i}_${c});`)),
    `}`,
  ];
  const ctx: MatmulEpilogueContext = {
    tile,
    row: (i) => `(${(i >> 2) * 4 * WY} + 4 * ty + ${i & 3})`,
    col: (c, q) => `(${c * 4 * WX} + 4 * tx + ${q})`,
  };
  return `
    var<workgroup> mmAs : array<vec4<f32>, ${(BK * BM) / 4}>;
    var<workgroup> mmBs : array<vec4<f32>, ${(BK * BN) / 4}>;

    fn main() {
      let tid = i32(localIndex);
      let tx = tid % ${WX};
      let ty = tid / ${WX};
      let row0 = i32(workgroupId.x) * ${BM};
      let col0 = i32(workgroupId.y) * ${BN};
      ${range(TM).map((i) => range(TN / 4).map((c) => `var acc_${i}_${c} = vec4<f32>(0.0);`).join(' ')).join('\n      ')}
      ${range(perA).map((r) => `var pa${r} : f32;`).join(' ')}
      ${range(perB).map((r) => `var pb${r} : f32;`).join(' ')}
      ${fetch('0')}
      for (var k0 = 0; k0 < uniforms.K; k0 = k0 + ${BK}) {
        ${stage}
        workgroupBarrier();
        if (k0 + ${BK} < uniforms.K) {
          ${fetch(`(k0 + ${BK})`)}
        }
        ${inner.join('\n        ')}
        workgroupBarrier();
      }
      ${epilogue(ctx)}
    }`;
}

/** WGSL for `mmA` / `mmB` over an operand bound as `name`, with `uniforms.{M,N,K}` bounds. */
export function matmulLoaders(a: { name: string; layout: LayoutA; off: string; ld: string }, b: { name: string; layout: LayoutB; off: string; ld: string }): string {
  const ia = a.layout === 'mk' ? `${a.off} + m * ${a.ld} + k` : `${a.off} + k * ${a.ld} + m`;
  const ib = b.layout === 'kn' ? `${b.off} + k * ${b.ld} + n` : `${b.off} + n * ${b.ld} + k`;
  return `
    fn mmA(m : i32, k : i32) -> f32 {
      if (m < uniforms.M && k < uniforms.K) { return ${a.name}[${ia}]; }
      return 0.0;
    }
    fn mmB(k : i32, n : i32) -> f32 {
      if (n < uniforms.N && k < uniforms.K) { return ${b.name}[${ib}]; }
      return 0.0;
    }`;
}

/** Dispatch of a matmul program: row tiles along x, column tiles along y. */
export function matmulDispatch(tile: MatmulTile, M: number, N: number): [number, number, number] {
  const d: [number, number, number] = [Math.ceil(M / tile.tileM), Math.ceil(N / tile.tileN), 1];
  if (d[0] > 65535 || d[1] > 65535) throw new RangeError(`matmul ${M}×${N}: more than 65535 tiles along one axis`);
  return d;
}

/** Unrolled WGSL, once per (i, c) of the thread's accumulator blocks. */
export function forEachAcc(tile: MatmulTile, body: (i: number, c: number) => string): string {
  const out: string[] = [];
  for (let i = 0; i < tile.threadM; i++) for (let c = 0; c < tile.threadN / 4; c++) out.push(body(i, c));
  return out.join('\n');
}

/** Sizes, element offsets and leading dimensions of one matmul; `uniforms` of every matmul program. */
export interface MatmulDims {
  M: number;
  N: number;
  K: number;
  aOff?: number;
  lda: number;
  bOff?: number;
  ldb: number;
  /** output element offset (writing a slice of a bigger output in place) */
  cOff?: number;
  ldc: number;
}

export const MATMUL_UNIFORMS = 'M : i32, N : i32, K : i32, aOff : i32, lda : i32, bOff : i32, ldb : i32, cOff : i32, ldc : i32,';

export function matmulUniforms(d: MatmulDims): Uniform[] {
  return [d.M, d.N, d.K, d.aOff ?? 0, d.lda, d.bOff ?? 0, d.ldb, d.cOff ?? 0, d.ldc].map((v) => {
    if (!Number.isInteger(v) || v < 0 || v > 2 ** 31 - 1) throw new RangeError(`matmul: index ${v} does not fit an i32`);
    return { type: 'int32' as const, data: [v] };
  });
}

/** The default tile for an M×N output: 128×128 when that still gives the GPU ≥ 512 workgroups. */
export function pickTile(M: number, N: number): MatmulTile {
  return Math.ceil(M / 128) * Math.ceil(N / 128) >= 512 ? TILE_128 : TILE_64;
}

/**
 * A program built on {@link matmulMain}: row tiles along x, column tiles along y, `uniforms` = the
 * {@link MatmulDims} (+ `extraUniforms`). Subclasses write the loaders' names into `variableNames` and
 * an epilogue.
 */
export abstract class TiledMatmulProgram implements Program {
  dispatchLayout = { x: [0], y: [1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms: string;

  constructor(
    readonly variableNames: string[],
    public outputShape: number[],
    public shaderKey: string,
    readonly tile: MatmulTile,
    M: number,
    N: number,
    extraUniforms = '',
  ) {
    this.workgroupSize = tileWorkgroup(tile);
    this.dispatch = matmulDispatch(tile, M, N);
    this.uniforms = `${MATMUL_UNIFORMS} ${extraUniforms}`;
  }

  abstract getUserCode(): string;
}

/**
 * C = A·B (+ Acc) → result[cOff + m·ldc + n]. Inputs: A, B (and Acc [M, N] when `accumulate`); the output
 * is [M, N] unless the caller passes a bigger tensor to write a slice of (see {@link runProgram}).
 */
export class MatmulProgram extends TiledMatmulProgram {
  constructor(tile: MatmulTile, readonly a: LayoutA, readonly b: LayoutB, M: number, N: number, readonly accumulate = false) {
    super(accumulate ? ['A', 'B', 'Acc'] : ['A', 'B'], [M, N], `tsft_matmul_${tileKey(tile)}_${a}_${b}_${accumulate ? 'acc' : 'set'}`, tile, M, N);
  }

  getUserCode(): string {
    const add = this.accumulate ? ' + Acc[r * uniforms.N + n]' : '';
    return `
    ${matmulLoaders({ name: 'A', layout: this.a, off: 'uniforms.aOff', ld: 'uniforms.lda' }, { name: 'B', layout: this.b, off: 'uniforms.bOff', ld: 'uniforms.ldb' })}
    ${matmulMain(this.tile, this.a, this.b, (ctx) => forEachAcc(ctx.tile, (i, c) => `{
      let r = row0 + ${ctx.row(i)};
      if (r < uniforms.M) {
        ${[0, 1, 2, 3].map((q) => `{ let n = col0 + ${ctx.col(c, q)}; if (n < uniforms.N) { result[uniforms.cOff + r * uniforms.ldc + n] = acc_${i}_${c}[${q}]${add}; } }`).join('\n        ')}
      }
    }`))}`;
  }
}

/**
 * A·B (optionally of transposed operands) with {@link MatmulProgram}; tf.matMul elsewhere. No gradient:
 * a building block for kernels and the benchmark.
 *
 * @example
 * const logits = matMulTiled(hidden, lmHead, false, true); // [N, H]·[V, H]ᵀ → [N, V]
 */
export function matMulTiled(a: tf.Tensor2D, b: tf.Tensor2D, transposeA = false, transposeB = false, tile?: MatmulTile): tf.Tensor2D {
  if (!onWebGpu()) return tf.matMul(a, b, transposeA, transposeB);
  assertFloat32('matMulTiled', a, b);
  const [M, K] = transposeA ? [a.shape[1], a.shape[0]] : a.shape;
  const [K2, N] = transposeB ? [b.shape[1], b.shape[0]] : b.shape;
  if (K !== K2) throw new RangeError(`matMulTiled: inner sizes differ (${a.shape} · ${b.shape}, transposeA ${transposeA}, transposeB ${transposeB})`);
  const t = tile ?? pickTile(M, N);
  const program = new MatmulProgram(t, transposeA ? 'km' : 'mk', transposeB ? 'nk' : 'kn', M, N);
  return runProgram(program, [a, b], matmulUniforms({ M, N, K, lda: a.shape[1], ldb: b.shape[1], ldc: N })) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------------
// Kernels that encode their own passes (outside tfjs's runProgram) share one pipeline cache.

/** A WGSL program compiled straight on the GPUDevice: its source and a key naming every specialisation. */
export interface ShaderSource {
  readonly shaderKey: string;
  getUserCode(): string;
}

/** `make()` for `key` on `device` once; past `max` entries the oldest is dropped (not destroyed). */
function cached<V>(byDevice: WeakMap<GPUDevice, Map<string, V>>, device: GPUDevice, key: string, max: number, make: () => V): V {
  let cache = byDevice.get(device);
  if (!cache) byDevice.set(device, (cache = new Map()));
  let v = cache.get(key);
  if (v === undefined) {
    v = make();
    if (cache.size >= max) cache.delete(cache.keys().next().value as string);
    cache.set(key, v);
  }
  return v;
}

/** Pipelines by device and shader key. */
const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** The (cached) compute pipeline of `program` on `device` (entry point `main`, layout from the shader). */
export function pipelineFor(device: GPUDevice, program: ShaderSource): GPUComputePipeline {
  return cached(pipelines, device, program.shaderKey, Infinity, () => {
    const module = device.createShaderModule({ code: program.getUserCode(), label: program.shaderKey });
    return device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: program.shaderKey });
  });
}

// Issuing a kernel costs CPU time (measured on the H200 box: ~36 µs per dispatch of flash attention's,
// most of it createBindGroup and the uniform's acquire + writeBuffer). Both repeat from step to step: a
// kernel's uniform words depend on shapes only, and tfjs's pool hands the same buffers back, so both are
// cached. Oldest entries go past the caps; neither cache destroys anything (a dropped uniform or bind group
// may still be used by submitted work; GPU memory of a destroyed tensor buffer is freed by its destroy()).

const BIND_GROUPS_MAX = 4096;
const UNIFORMS_MAX = 1024;
const bindGroups = new WeakMap<GPUDevice, Map<string, GPUBindGroup>>();
const uniforms = new WeakMap<GPUDevice, Map<string, GPUBuffer>>();
const layouts = new WeakMap<GPUComputePipeline, GPUBindGroupLayout>();
const objectIds = new WeakMap<object, number>();
let nextObjectId = 1;

function idOf(o: object): number {
  let id = objectIds.get(o);
  if (id === undefined) objectIds.set(o, (id = nextObjectId++));
  return id;
}

/** The bind group (group 0) of `pipeline` over `buffers` at bindings 0, 1, …, made once per pipeline and buffers. */
export function bindGroupFor(device: GPUDevice, pipeline: GPUComputePipeline, buffers: GPUBuffer[]): GPUBindGroup {
  return cached(bindGroups, device, `${idOf(pipeline)}:${buffers.map(idOf).join(',')}`, BIND_GROUPS_MAX, () => {
    let layout = layouts.get(pipeline);
    if (!layout) layouts.set(pipeline, (layout = pipeline.getBindGroupLayout(0))); // a new object per call
    return device.createBindGroup({ layout, entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  });
}

/** A uniform buffer holding `words`, written once and shared by every dispatch with the same words (never write it). */
export function constantUniform(device: GPUDevice, words: Uint32Array): GPUBuffer {
  return cached(uniforms, device, words.join(','), UNIFORMS_MAX, () => {
    const buf = device.createBuffer({ size: Math.max(16, Math.ceil(words.byteLength / 16) * 16), usage: GPUBufferUsage.UNIFORM, mappedAtCreation: true });
    new Uint32Array(buf.getMappedRange()).set(words);
    buf.unmap();
    return buf;
  });
}

// Flash attention on tensor cores: WGSL subgroup matrices (f16 operands, f32 accumulation), forward and
// backward, with the semantics of flash-attention.ts's fp32 kernels (causal GQA, padding mask incl. rows
// that see no key, cache offset `past`). flashAttention (flash-attention.ts) runs it on webgpu when the
// adapter has subgroup matrices and computeDtype() is 'float16'.
//
// Data: q, k, v (and dO) are f32 tfjs tensors; one prologue dispatch rounds q, k and v to f16, packed two
// per int32 word, with the sequence padded to a multiple of PAD rows (zeros), so the main kernels never
// bound-check a load. Outputs are f32, written from the accumulators into padded buffers (sliced after).
// Without a padding mask nothing builds or reads mask info (uniform `masked` = 0).
//
// Kernels (one workgroup = NSG subgroups of 32; each subgroup owns 16 rows of the "owner" operand, held as
// left fragments in registers; the other operand is staged tile by tile in workgroup memory, shared, the
// next tile loaded into registers while this one computes (`prefetch`)):
//   fwd    owner Q, one pass: S = Q·Kᵀ per key tile, online softmax in lanes against a per-row reference
//          max m, P = exp(S − m) stored f16, O += P·V; O is rescaled (through workgroup memory: subgroup-
//          matrix accumulators are opaque) only when some row's tile max exceeds m by more than TAU, so
//          P ≤ e^TAU stays in f16 range; at the end O / rowsum and the row stats (m, log rowsum);
//   stats, out  the older two-pass forward (config `_2pass`): exact (max, log-sum) first, then P·V;
//   kv     owner K (and V): Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q, per query head (summed over
//          the heads of a KV group by a last pass, `group-sum`), and stores dS (f16, [B, H, Sp, Tp],
//          key-major) for
//   dqs    owner Q: dQ = dS·K, a plain matmul over the stored dS (blocks the kv kernel skipped are zero
//          and skipped here too);
//   dq     owner Q (and dO): S, dP = dO·Vᵀ, dS = P∘(dP − Δ)·scale (f16), dQ += dS·K — recomputes instead of
//          reading a stored dS: used when dS would exceed DS_MAX_BYTES (long sequences) or under `_dqre`;
//   `kvSplit` runs dK and dV as two kernels (fewer live accumulators each).
// Scheduling (`heavyFirst`): heads on x, tiles on y in order of causal work (query tiles from the last,
// key tiles from the first), so the longest workgroups start in the first wave rather than the tail. The
// kv kernel stages the query rows' (max, log-sum, Δ) with each Q / dO tile (`rowStats`), and the score
// multiplies of a tile advance all column blocks together (`interleave`).
// Between the matrix ops S / dP go through workgroup memory (f32) where every thread of the workgroup
// applies the mask and softmax to half a row, and P / dS come back as f16 for the next multiply.
// Δ = rowsum(dO ∘ O) and the f16 dO come from one prologue pass (`prep`). A forward is 2 dispatches (3
// with a mask), a backward 4 (5 recomputing dS), recorded into tfjs's command stream (submitted with its
// batch) with cached bind groups and uniforms: issuing them is most of the CPU time of an attention call.
//
// `emulate: true` generates the same kernels with the subgroup-matrix builtins replaced by plain WGSL
// (a fragment = array<f32, 256> per invocation, each lane computing its 8 result elements): no f16, no
// subgroups needed, so the tiling, masking and softmax run (slowly) on lavapipe in CI. Only the builtins
// (and the row-max exchange: a subgroup shuffle on hardware) differ on the GPU.

import * as tf from '@tensorflow/tfjs-core';
import { MASKED } from '../../model/attention';
import { SUBGROUP_MATRIX_WGSL } from './matmul-f16';
import { constantUniform, gpuBufferOf, gridFor, pipelineFor, recordDispatch, uninitialised, webgpuBackend } from './program';

/** Sequence padding of the f16 copies (a multiple of every tile's rows). */
export const PAD = 128;

/** Tiling of the kernels; every field is part of the shader keys. */
export interface SgAttentionConfig {
  /** subgroups per workgroup in the query-owner kernels (stats, out, dq): 16·nsg query rows each */
  nsg: number;
  /** keys per staged tile in stats / out */
  bt: number;
  /** keys per staged tile in dq */
  btDq: number;
  /** keys per staged tile in dqs (dQ from the stored dS) */
  btDqs: number;
  /** subgroups per workgroup of the kv kernel (16·nsgKv keys) */
  nsgKv: number;
  /** queries per staged tile in kv */
  btKv: number;
  /** dK and dV in two kernels instead of one */
  kvSplit: boolean;
  /** the next tile's staged operands are loaded into registers while this tile computes */
  prefetch: boolean;
  /**
   * the kv kernel stores dS (f16, [B, H, Sp, Tp]) and dQ = dS·K becomes a plain matmul (kind dqs) instead of
   * a kernel that recomputes S and dP (taken while that buffer stays under DS_MAX_BYTES)
   */
  dsStored: boolean;
  /** forward in one pass (online softmax, O rescaled through workgroup memory only when a row's max grows by more than TAU) instead of stats + out */
  fwd1: boolean;
  /**
   * heavy-first grid: heads on x, tiles on y in the order of their causal work (the last query tiles,
   * the first key tiles first), so the longest workgroups start in the first wave instead of the tail
   */
  heavyFirst: boolean;
  /** the score multiplies (S, dP) of a tile interleaved over its column blocks: independent accumulators in flight instead of one chain */
  interleave: boolean;
  /** kv: the query rows' stats (max, log-sum, Δ) staged with Q / dO instead of read from global memory per score */
  rowStats: boolean;
  /**
   * fwd: subgroups work in pairs on 32 query rows, each of the pair holding half the head dim (Q fragments,
   * O accumulators, its half of every score as a partial sum): each staged K / V fragment feeds two
   * multiplies instead of one
   */
  pairs: boolean;
  /**
   * fwd and kv: the score scratch is read four columns at a time (vec4, no bank conflicts) and tiles whose
   * keys every row of the subgroup sees, with no padding, skip the per-score masking (the lane step's cost)
   */
  vec4: boolean;
  /** dqs: a subgroup owns 32 query rows (two dS fragments per key block): each staged K fragment feeds two multiplies */
  dqsRows2: boolean;
  /** dqs: each key tile's dS block staged through workgroup memory (coalesced 16-byte loads) instead of fragments loaded from global memory */
  dsStaged: boolean;
  /**
   * fwd (with prefetch): V double-buffered in workgroup memory, the next tile's K and V stored while the
   * lane step runs: two workgroup barriers per key tile instead of five
   */
  doubleV: boolean;
  /** dqs: key tiles that every query row of the subgroup sees whole run their multiplies without the per-block conditions */
  dqsFull: boolean;
  /** plain-WGSL stand-ins for the subgroup-matrix builtins (lavapipe) */
  emulate: boolean;
}

// the fastest of those measured (bench/results/2026-11-28-attention.md); ≤ 46 KiB of workgroup memory at head_dim 128
// (the kv kernel: 32-query tiles); `nsg4_bt32_dq16_kv4x32_hf_il_rs_v4_dr2_dsw_db_df`
export const DEFAULT_SG_CONFIG: SgAttentionConfig = { nsg: 4, bt: 32, btDq: 16, btDqs: 64, nsgKv: 4, btKv: 32, kvSplit: false, fwd1: true, prefetch: true, dsStored: true, heavyFirst: true, interleave: true, rowStats: true, pairs: false, vec4: true, dqsRows2: true, dsStaged: true, doubleV: true, dqsFull: true, emulate: false };

/**
 * Parses `nsg4_bt64_dq32_ds64_kv4x32[_split][_2pass][_nopf][_dqre][_hf][_il][_rs][_pr][_v4][_dr2][_dsw][_db][_df][_emu]`
 * (what sgConfigKey writes): missing tile sizes and switches keep the defaults, except the switches from hf on, which
 * are on only when named (`nsg4_bt32_dq16_kv4x16` is the kernels before them).
 */
export function parseSgConfig(s: string, base: SgAttentionConfig = DEFAULT_SG_CONFIG): SgAttentionConfig {
  const c = { ...base, heavyFirst: false, interleave: false, rowStats: false, pairs: false, vec4: false, dqsRows2: false, dsStaged: false, doubleV: false, dqsFull: false };
  for (const part of s.split('_').filter(Boolean)) {
    let m: RegExpExecArray | null;
    if ((m = /^nsg(\d+)$/.exec(part))) c.nsg = Number(m[1]);
    else if ((m = /^bt(\d+)$/.exec(part))) c.bt = Number(m[1]);
    else if ((m = /^dq(\d+)$/.exec(part))) c.btDq = Number(m[1]);
    else if ((m = /^ds(\d+)$/.exec(part))) c.btDqs = Number(m[1]);
    else if ((m = /^kv(\d+)x(\d+)$/.exec(part))) [c.nsgKv, c.btKv] = [Number(m[1]), Number(m[2])];
    else if (part === 'split') c.kvSplit = true;
    else if (part === '2pass') c.fwd1 = false;
    else if (part === 'nopf') c.prefetch = false;
    else if (part === 'dqre') c.dsStored = false;
    else if (part === 'hf') c.heavyFirst = true;
    else if (part === 'il') c.interleave = true;
    else if (part === 'rs') c.rowStats = true;
    else if (part === 'pr') c.pairs = true;
    else if (part === 'v4') c.vec4 = true;
    else if (part === 'dr2') c.dqsRows2 = true;
    else if (part === 'dsw') c.dsStaged = true;
    else if (part === 'db') c.doubleV = true;
    else if (part === 'df') c.dqsFull = true;
    else if (part === 'emu') c.emulate = true;
    else throw new RangeError(`attention config '${s}': unknown part '${part}' (e.g. nsg4_bt64_dq32_kv4x32_split)`);
  }
  return c;
}

export function sgConfigKey(c: SgAttentionConfig): string {
  return `nsg${c.nsg}_bt${c.bt}_dq${c.btDq}${c.btDqs === 64 ? '' : `_ds${c.btDqs}`}_kv${c.nsgKv}x${c.btKv}${c.kvSplit ? '_split' : ''}${c.fwd1 ? '' : '_2pass'}${c.prefetch ? '' : '_nopf'}${c.dsStored ? '' : '_dqre'}${c.heavyFirst ? '_hf' : ''}${c.interleave ? '_il' : ''}${c.rowStats ? '_rs' : ''}${c.pairs ? '_pr' : ''}${c.vec4 ? '_v4' : ''}${c.dqsRows2 ? '_dr2' : ''}${c.dsStaged ? '_dsw' : ''}${c.doubleV ? '_db' : ''}${c.dqsFull ? '_df' : ''}${c.emulate ? '_emu' : ''}`;
}

// ---------------------------------------------------------------------------------------------------
// WGSL generation

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
/** WGSL of 8 f32 values (WGSL expressions) packed as f16 into one vec4<u32>. */
const packF16x8 = (vals: string[]) => `vec4<u32>(${range(4).map((i) => `pack2x16float(vec2<f32>(${vals[2 * i]}, ${vals[2 * i + 1]}))`).join(', ')})`;
const lines = (n: number, f: (i: number) => string) => range(n).map(f).join('\n');
/** WGSL of two vec4<f32> (8 values) packed as f16 into one vec4<u32>. */
const PACK_F16X8_V4 = (a: string, b: string) => `vec4<u32>(pack2x16float(${a}.xy), pack2x16float(${a}.zw), pack2x16float(${b}.xy), pack2x16float(${b}.zw))`;

type Kind = 'fwd' | 'stats' | 'out' | 'dq' | 'dqs' | 'kv' | 'dk' | 'dv';

/** A chain of score multiplies (S or dP): accumulator n, left fragments in registers l0, l1, …, right ones from Tl at offset r, stored to Sc at offset st. */
interface Chain { n: string; l: string; r: string; st: string }

/** Largest stored dS (bytes) before the backward falls back to recomputing S and dP for dQ. */
export const DS_MAX_BYTES = 1 << 30;

/** The subgroup-matrix operations, as builtins or as their plain-WGSL emulation. */
class Frag {
  private readonly loads = new Set<string>();
  private readonly stores = new Set<string>();
  private readonly accLoads = new Set<string>();

  /** `vec4F32`: result arrays declared as array<vec4<f32>> (offsets and strides in vec4 units) */
  constructor(readonly emulate: boolean, private readonly vec4F32: ReadonlySet<string> = new Set()) {}

  /** Element e (in f32 units) of f32 result array arr, scalar or vec4. */
  private at(arr: string, e: string): string {
    return this.vec4F32.has(arr) ? `${arr}[(${e}) / 4u][(${e}) % 4u]` : `${arr}[${e}]`;
  }

  /** The f32 offset of an offset / stride given in the array's units. */
  private units(arr: string, x: string): string {
    return this.vec4F32.has(arr) ? `(${x}) * 4u` : x;
  }

  load(type: 'SL' | 'SR', arr: string, major: 'row' | 'col', off: string, stride: string): string {
    if (!this.emulate) return `subgroupMatrixLoad<${type}, ${major}_major>(&${arr}, ${off}, ${stride})`;
    this.loads.add(arr);
    return `emuLoad_${arr}(${off}, ${stride}, ${major === 'col'})`;
  }

  /** A result fragment from f32 workgroup memory (row major). */
  loadAcc(arr: string, off: string, stride: string): string {
    if (!this.emulate) return `subgroupMatrixLoad<SA, row_major>(&${arr}, ${off}, ${stride})`;
    this.accLoads.add(arr);
    return `emuLoadF_${arr}(${off}, ${stride})`;
  }

  /**
   * Statements that set \`out\` to x of the other thread of this row (lane ^ 16): a subgroup shuffle, or
   * through workgroup memory Mx (with a barrier: call in uniform control flow) when emulated.
   */
  partner(out: string, x: string): string {
    return this.emulate ? `workgroupBarrier();\n      Mx[lid] = ${x};\n      workgroupBarrier();\n      let ${out} = Mx[lid ^ 16u];` : `let ${out} = subgroupShuffleXor(${x}, 16u);`;
  }

  mma(a: string, b: string, c: string): string {
    return this.emulate ? `emuMma(${a}, ${b}, ${c}, lane)` : `subgroupMatrixMultiplyAccumulate(${a}, ${b}, ${c})`;
  }

  store(arr: string, off: string, v: string, stride: string): string {
    if (!this.emulate) return `subgroupMatrixStore<row_major>(&${arr}, ${off}, ${v}, ${stride});`;
    this.stores.add(arr);
    return `emuStore_${arr}(${off}, ${v}, ${stride}, lane);`;
  }

  /** Module header: enables and aliases (hardware) or the emulation's functions (call after generating the body). */
  header(): string {
    if (!this.emulate) {
      return SUBGROUP_MATRIX_WGSL;
    }
    const loads = [...this.loads].map((arr) => `fn emuLoad_${arr}(off : u32, stride : u32, colMajor : bool) -> array<f32, 256> {
  var m : array<f32, 256>;
  for (var r = 0u; r < 16u; r++) {
    for (var c = 0u; c < 16u; c++) {
      var e = off * 8u + r * stride * 8u + c;
      if (colMajor) { e = off * 8u + c * stride * 8u + r; }
      m[r * 16u + c] = unpack2x16float(${arr}[e / 8u][(e % 8u) / 2u])[e % 2u];
    }
  }
  return m;
}`);
    const accLoads = [...this.accLoads].map((arr) => `fn emuLoadF_${arr}(off : u32, stride : u32) -> array<f32, 256> {
  var m : array<f32, 256>;
  for (var r = 0u; r < 16u; r++) {
    for (var c = 0u; c < 16u; c++) { m[r * 16u + c] = ${this.at(arr, `${this.units(arr, 'off')} + r * ${this.units(arr, 'stride')} + c`)}; }
  }
  return m;
}`);
    const stores = [...this.stores].map((arr) => `fn emuStore_${arr}(off : u32, v : array<f32, 256>, stride : u32, lane : u32) {
  for (var i = 0u; i < 8u; i++) {
    let e = lane + 32u * i;
    ${this.at(arr, `${this.units(arr, 'off')} + (e / 16u) * ${this.units(arr, 'stride')} + e % 16u`)} = v[e];
  }
}`);
    return `alias SL = array<f32, 256>;
alias SR = array<f32, 256>;
alias SA = array<f32, 256>;
// emulated subgroup matrices: every lane holds the whole fragment; lane l owns result elements l + 32·i
fn emuMma(a : array<f32, 256>, b : array<f32, 256>, c : array<f32, 256>, lane : u32) -> array<f32, 256> {
  var o = c;
  for (var i = 0u; i < 8u; i++) {
    let e = lane + 32u * i;
    let m = e / 16u;
    let n = e % 16u;
    var s = o[e];
    for (var k = 0u; k < 16u; k++) { s += a[m * 16u + k] * b[k * 16u + n]; }
    o[e] = s;
  }
  return o;
}
${loads.join('\n')}
${accLoads.join('\n')}
${stores.join('\n')}`;
  }
}

// masked: 0 when there is no padding mask (MI is then not read: every key < S is real, none is fully masked)
const UNIFORMS = `struct U { B : u32, H : u32, KV : u32, T : u32, S : u32, Tp : u32, Sp : u32, past : u32, masked : u32, }`;

/** Uniform buffer contents (9 u32). */
function uniformWords(B: number, H: number, KV: number, T: number, S: number, past: number, masked: boolean): Uint32Array {
  return Uint32Array.from([B, H, KV, T, S, padTo(T), padTo(S), past, masked ? 1 : 0]);
}

/** The score of key `key` for query row `t` (batch b): scaled if visible, MASKED if not, FAR past the keys. */
const MASK_SCORE_WGSL = `fn maskScore(s : f32, key : u32, t : u32, b : u32) -> f32 {
  if (key >= u.S) { return FAR; }
  if (key <= u.past + t && (u.masked == 0u || MI[b * u.S + key] != 0)) { return s * SCALE; }
  return MASKED;
}`;

/** Rescale threshold of the one-pass forward: P = exp(s − m) stays ≤ e^TAU (f16 holds it) while m lags the row max. */
const TAU = 8;

export function padTo(n: number): number {
  return Math.ceil(n / PAD) * PAD;
}

/** A kernel run on its own pipeline: WGSL, dispatch, and its storage bindings in order (inputs, then outputs). */
export interface OwnKernel {
  shaderKey: string;
  getUserCode(): string;
  dispatch: [number, number, number];
}

/**
 * The attention kernels. Bindings: the inputs the kind reads (in the order of `bindingsFor`), its output
 * (read_write), then the uniform struct.
 */
export class FlashSgProgram implements OwnKernel {
  shaderKey: string;
  dispatch: [number, number, number];
  readonly nsg: number;
  readonly bt: number;
  readonly wg: number;
  /** 16-row blocks a subgroup owns (2 for dqs under config dqsRows2) */
  readonly rb: number;

  constructor(readonly kind: Kind, readonly headDim: number, readonly cfg: SgAttentionConfig, dims: { B: number; H: number; T: number; S: number }) {
    if (headDim % 16 !== 0) throw new RangeError(`flash attention (subgroup matrix): head_dim ${headDim} is not a multiple of 16`);
    const keyOwner = kind === 'kv' || kind === 'dk' || kind === 'dv';
    this.nsg = keyOwner ? cfg.nsgKv : cfg.nsg;
    this.bt = keyOwner ? cfg.btKv : kind === 'dq' ? cfg.btDq : kind === 'dqs' ? cfg.btDqs : cfg.bt;
    this.wg = 32 * this.nsg;
    this.rb = kind === 'dqs' && cfg.dqsRows2 ? 2 : 1;
    const bo = 16 * this.nsg * this.rb;
    if (cfg.pairs && kind === 'fwd' && (this.nsg % 2 !== 0 || headDim % 32 !== 0)) throw new RangeError(`flash attention (subgroup matrix): subgroup pairs need an even nsg (${this.nsg}) and head_dim a multiple of 32 (${headDim})`);
    if (PAD % bo !== 0 || PAD % this.bt !== 0 || this.bt % 16 !== 0) throw new RangeError(`flash attention (subgroup matrix): tiles ${bo} / ${this.bt} must divide ${PAD} and be multiples of 16`);
    const rows = padTo(keyOwner ? dims.S : dims.T);
    this.dispatch = cfg.heavyFirst ? [dims.H, rows / bo, dims.B] : [rows / bo, dims.H, dims.B];
    this.shaderKey = `tsft_flash_sg_${kind}_d${headDim}_${sgConfigKey(cfg)}`;
  }

  /** Input names, in binding order. */
  static inputs(kind: Kind): string[] {
    switch (kind) {
      case 'stats': return ['Q16', 'K16', 'MI'];
      case 'fwd': return ['Q16', 'K16', 'V16', 'MI'];
      case 'dqs': return ['K16', 'DS', 'MI'];
      case 'out': return ['Q16', 'K16', 'V16', 'MI', 'ST'];
      default: return ['Q16', 'K16', 'V16', 'DO16', 'MI', 'ST', 'DL'];
    }
  }

  /** Output names, in binding order after the inputs (fwd: O and the row stats). */
  outputs(): string[] {
    const k = this.kind;
    return k === 'fwd' ? ['OUT', 'STO'] : (k === 'kv' || k === 'dk') && this.cfg.dsStored ? ['OUT', 'DSO'] : ['OUT'];
  }

  /** Workgroup memory in bytes. */
  workgroupBytes(): number {
    const D = this.headDim, RS = D / 8 + 1, BT = this.bt, BO = 16 * this.nsg * this.rb;
    const SS = BT + 4, PS = BT / 8 + 1;
    const k = this.kind;
    const tl = ((k === 'dqs' ? BT : Math.max(k === 'stats' ? BT : this.db() ? 3 * BT : 2 * BT, BO)) * RS + (this.dsw() ? BT * (BO / 8 + 1) : 0)) * 16;
    const sc = (k === 'dqs' ? 0 : this.pairedFwd() ? 2 : k === 'stats' || k === 'out' || k === 'fwd' || k === 'dv' ? 1 : 2) * this.nsg * 16 * SS * 4;
    const pc = (k === 'stats' || k === 'dqs' ? 0 : k === 'kv' ? 2 : 1) * this.nsg * 16 * PS * 16;
    const fw = k === 'fwd' ? BO * 4 + (this.cfg.emulate ? this.wg * 4 : 0) + 8 : 0;
    const rw = this.rowStats() ? (this.v4() ? BT * 12 : BT * 16) : 0;
    return tl + sc + pc + fw + rw + 16;
  }

  /** The forward in subgroup pairs (config pairs). */
  private pairedFwd(): boolean {
    return this.cfg.pairs && this.kind === 'fwd';
  }

  /** Config doubleV applies: the one-pass forward, not in pairs, with prefetch. */
  private db(): boolean {
    return this.cfg.doubleV && this.kind === 'fwd' && !this.cfg.pairs && this.cfg.prefetch;
  }

  /** Config dsStaged applies: dqs (with prefetch). */
  private dsw(): boolean {
    return this.cfg.dsStaged && this.kind === 'dqs' && this.cfg.prefetch;
  }

  /** Config vec4 applies: the one-pass forward and kv. */
  private v4(): boolean {
    return this.cfg.vec4 && (this.kind === 'fwd' || this.kind === 'kv');
  }

  /** WGSL of f32 element e of the score scratch Sc (declared array<vec4<f32>> under v4). */
  private sc(e: string): string {
    return this.v4() ? `Sc[(${e}) / 4u][(${e}) % 4u]` : `Sc[${e}]`;
  }

  /** A subgroup-matrix offset into Sc, given in f32 elements (a multiple of 4 under v4), and Sc's row stride. */
  private scOff(e: string): string {
    return this.v4() ? `(${e}) / 4u` : e;
  }

  private scStride(): string {
    return this.v4() ? 'SS4' : 'SS';
  }

  /** kv / dk / dv staging the query rows' stats (config rowStats) */
  private rowStats(): boolean {
    return (this.cfg.rowStats && (this.kind === 'kv' || this.kind === 'dk' || this.kind === 'dv')) || (this.v4() && this.kind === 'kv');
  }

  getUserCode(): string {
    const f = new Frag(this.cfg.emulate, new Set(this.v4() ? ['Sc'] : []));
    const body = this.kind === 'dqs' ? this.dqFromStored(f) : this.pairedFwd() ? this.forwardPairs(f) : this.kind === 'stats' || this.kind === 'out' || this.kind === 'fwd' || this.kind === 'dq' ? this.queryOwner(f) : this.keyOwner(f);
    return `${f.header()}\n${body}`;
  }

  private common(f: Frag): {
    decl: string;
    stage: (src: string, g0: string, n: number | string, w0: string) => string;
    fetch: (reg: string, src: string, g0: string) => string;
    put: (reg: string, w0: string) => string;
    np: number;
  } {
    const D = this.headDim, DV = D / 8, RS = DV + 1, BT = this.bt, NSG = this.nsg, BO = 16 * NSG * this.rb;
    const SS = BT + 4, PS = BT / 8 + 1;
    const k = this.kind;
    const ins = FlashSgProgram.inputs(k);
    const types: Record<string, string> = { Q16: 'array<vec4<u32>>', K16: 'array<vec4<u32>>', V16: 'array<vec4<u32>>', DO16: 'array<vec4<u32>>', DS: 'array<vec4<u32>>', DSO: 'array<vec4<u32>>', MI: 'array<i32>', ST: 'array<f32>', DL: 'array<f32>' };
    const nsc = k === 'dqs' ? 0 : this.pairedFwd() ? 2 : k === 'stats' || k === 'out' || k === 'fwd' || k === 'dv' ? 1 : 2;
    const outs = this.outputs();
    const npc = k === 'stats' || k === 'dqs' ? 0 : k === 'kv' ? 2 : 1;
    const tlRows = k === 'dqs' ? BT : Math.max(k === 'stats' ? BT : this.db() ? 3 * BT : 2 * BT, BO);
    void f;
    const decl = `${UNIFORMS}
${ins.map((n, i) => `@group(0) @binding(${i}) var<storage, read> ${n} : ${types[n]};`).join('\n')}
${outs.map((n, i) => `@group(0) @binding(${ins.length + i}) var<storage, read_write> ${n} : ${types[n] ?? 'array<f32>'};`).join('\n')}
@group(0) @binding(${ins.length + outs.length}) var<uniform> u : U;

const D = ${D}u;
const DV = ${DV}u;      // vec4<u32> (8 halves) per row in global memory
const RS = ${RS}u;      // staged row stride in vec4 (one pad against bank conflicts)
const BT = ${BT}u;      // rows of the staged operand per tile
const BO = ${BO}u;      // owner rows per workgroup (16 per subgroup)
const WG = ${this.wg}u;
const SS = ${SS}u;      // f32 scratch row stride
const SS4 = ${SS / 4}u;     // the same in vec4
const PS = ${PS}u;      // f16 scratch row stride in vec4
const HALF = ${BT / 2}u; // columns per thread in the lane steps
const SCALE = ${1 / Math.sqrt(D)};
const TAU = ${TAU.toFixed(1)};
const MASKED = ${MASKED.toExponential()};
const FAR = -1e30;

var<workgroup> Tl : array<vec4<u32>, ${tlRows * RS + (this.dsw() ? BT * (BO / 8 + 1) : 0)}>;
${nsc ? `var<workgroup> Sc : array<${this.v4() ? `vec4<f32>, ${(nsc * NSG * 16 * SS) / 4}` : `f32, ${nsc * NSG * 16 * SS}`}>;` : ''}
${npc ? `var<workgroup> Pc : array<vec4<u32>, ${npc * NSG * 16 * PS}>;` : ''}
${k === 'fwd' ? `var<workgroup> Al : array<f32, ${BO}>;   // per-row rescale factor of the tile
var<workgroup> wgF : ${this.db() ? 'array<u32, 2>;     // (by tile parity)' : 'u32;             '} // some row of the workgroup rescales O this tile
${this.cfg.emulate ? `var<workgroup> Mx : array<f32, ${this.wg}>;` : ''}` : ''}
${!this.rowStats() ? '' : this.v4() ? `var<workgroup> Rm : array<vec4<f32>, ${BT / 4}>;   // the staged query rows' max, four per vec4
var<workgroup> Rl : array<vec4<f32>, ${BT / 4}>;   // log-sum
var<workgroup> Rd : array<vec4<f32>, ${BT / 4}>;   // Δ` : 'var<workgroup> Rw : array<vec4<f32>, BT>;   // the staged query rows\' (max, log-sum, Δ)'}
var<workgroup> wgU : u32;`;
    const stage = (src: string, g0: string, n: number | string, w0: string) => `for (var e = lid; e < (${n}) * DV; e += WG) {
        let r = e / DV;
        Tl[${w0} + r * RS + e % DV] = ${src}[(${g0} + r) * DV + e % DV];
      }`;
    // prefetch of one BT-row tile: NP vec4 per thread in registers `reg`, then into Tl
    const NP = Math.ceil((BT * DV) / this.wg);
    const each = (body: string) => `for (var i = 0u; i < ${NP}u; i++) {
        let e = lid + i * WG;
        ${(BT * DV) % this.wg === 0 ? body : `if (e < BT * DV) { ${body} }`}
      }`;
    const fetch = (reg: string, src: string, g0: string) => each(`${reg}[i] = ${src}[(${g0} + e / DV) * DV + e % DV];`);
    const put = (reg: string, w0: string) => each(`Tl[${w0} + (e / DV) * RS + e % DV] = ${reg}[i];`);
    return { decl, stage, fetch, put, np: NP };
  }

  /**
   * `h` and the workgroup's first owner row (q0 or k0) from the workgroup id. Heavy-first: heads on x,
   * tiles on y, query tiles from the last (most keys) and key tiles from the first (most queries).
   */
  private tileIds(): string {
    const keyOwner = this.kind === 'kv' || this.kind === 'dk' || this.kind === 'dv';
    if (!this.cfg.heavyFirst) return `let h = wid.y;\n  let ${keyOwner ? 'k0' : 'q0'} = wid.x * BO;`;
    return keyOwner ? 'let h = wid.x;\n  let k0 = wid.y * BO;' : 'let h = wid.x;\n  let q0 = (u.Tp / BO - 1u - wid.y) * BO;';
  }

  /**
   * The tile's score blocks into Sc: for each chain (S = owner·stagedᵀ, dP likewise) and each 16-column
   * block j, Σ_c left_c · staged(j, c)ᵀ, stored at Sc[st + sg·16 rows, 16·j]. Interleaved: all blocks'
   * accumulators advance together over c (independent multiplies in flight), stored after.
   */
  private scores(f: Frag, chains: Chain[]): string {
    const NT = this.bt / 16, NF = this.headDim / 16;
    const right = (ch: { r: string }, j: number, c: number) => f.load('SR', 'Tl', 'col', `${ch.r}${16 * j}u * RS + ${2 * c}u`, 'RS');
    const store = (ch: { st: string }, j: number, v: string) => f.store('Sc', this.scOff(`${ch.st}sg * 16u * SS + ${16 * j}u`), v, this.scStride());
    if (!this.cfg.interleave) {
      return lines(NT, (j) => `{
      ${chains.map((ch) => `var ${ch.n} = SA();
      ${lines(NF, (c) => `${ch.n} = ${f.mma(`${ch.l}${c}`, right(ch, j, c), ch.n)};`)}
      ${store(ch, j, ch.n)}`).join('\n      ')}
    }`);
    }
    const each = (g: (ch: Chain, j: number) => string) => chains.map((ch) => lines(NT, (j) => g(ch, j))).join('\n      ');
    return `{
      ${each((ch, j) => `var ${ch.n}${j} = SA();`)}
      ${lines(NF, (c) => each((ch, j) => `${ch.n}${j} = ${f.mma(`${ch.l}${c}`, right(ch, j, c), `${ch.n}${j}`)};`))}
      ${each((ch, j) => store(ch, j, `${ch.n}${j}`))}
    }`;
  }

  private entry(): string {
    return this.cfg.emulate
      ? `@compute @workgroup_size(${this.wg})
fn main(@builtin(local_invocation_index) lid : u32, @builtin(workgroup_id) wid : vec3<u32>) {
  let sg = lid / 32u;
  let lane = lid % 32u;`
      : `@compute @workgroup_size(${this.wg})
fn main(@builtin(local_invocation_index) lid : u32, @builtin(workgroup_id) wid : vec3<u32>, @builtin(subgroup_id) sg : u32) {`;
  }

  /** stats, out, dq: a workgroup owns BO query rows of one head and walks the key tiles. */
  private queryOwner(f: Frag): string {
    const { decl, stage, fetch, put, np } = this.common(f);
    const k = this.kind;
    const D = this.headDim, NF = D / 16, NT = this.bt / 16, BT = this.bt;
    const pf = this.cfg.prefetch, withV = k !== 'stats', db = this.db();
    const fetchKV = (k0: string) => `${fetch('pk', 'K16', `kr0 + ${k0}`)}
    ${withV ? fetch('pv', 'V16', `kr0 + ${k0}`) : ''}`;
    // lane step: thread lid serves region lr (a subgroup's 16 rows), row lrow, columns lh·HALF..
    const laneStep = k === 'fwd'
      ? (this.v4() ? this.onlineSoftmaxV4(f, 'Sc[(srow + lh * HALF) / 4u + j]') : this.onlineSoftmax(f, 'Sc[srow + col]'))
      : k === 'stats'
      ? `var tmax = FAR;
      var xs : array<f32, ${BT / 2}>;
      for (var c = 0u; c < HALF; c++) {
        let col = lh * HALF + c;
        let x = maskScore(Sc[srow + col], k0 + col, tq, b);
        xs[c] = x;
        tmax = max(tmax, x);
      }
      let mnew = max(lm, tmax);
      var add = 0.0;
      for (var c = 0u; c < HALF; c++) { add += exp(xs[c] - mnew); }
      ll = ll * exp(lm - mnew) + add;
      lm = mnew;`
      : `for (var g = 0u; g < HALF / 8u; g++) {
        var v : array<f32, 8>;
        for (var i = 0u; i < 8u; i++) {
          let col = lh * HALF + g * 8u + i;
          let p = exp((maskScore(Sc[srow + col], k0 + col, tq, b) - rm) - rl);
          ${k === 'out' ? 'v[i] = p;' : 'v[i] = p * (Sc[DP + srow + col] - rd) * SCALE;'}
        }
        Pc[lr * 16u * PS + lrow * PS + lh * (HALF / 8u) + g] = ${packF16x8(range(8).map((i) => `v[${i}]`))};
      }`;
    return `${decl}

${this.entry()}
${this.queryPreamble()}
  let DP = ${16 * this.nsg}u * SS;
  ${stage('Q16', 'qr0 + q0', 'BO', '0u')}
  workgroupBarrier();
  ${lines(NF, (c) => `let qf${c} = ${f.load('SL', 'Tl', 'row', `(sg * 16u) * RS + ${2 * c}u`, 'RS')};`)}
  ${k === 'dq' ? `workgroupBarrier();
  ${stage('DO16', 'qr0 + q0', 'BO', '0u')}
  workgroupBarrier();
  ${lines(NF, (c) => `let df${c} = ${f.load('SL', 'Tl', 'row', `(sg * 16u) * RS + ${2 * c}u`, 'RS')};`)}` : ''}
  ${k === 'stats' || k === 'fwd' ? 'var lm = FAR;\n  var ll = 0.0;' : ''}
  ${k === 'stats' || k === 'fwd' ? '' : `let rm = ST[2u * (qr0 + tq)];
  let rl = ST[2u * (qr0 + tq) + 1u];
  ${k === 'dq' ? 'let rd = DL[qr0 + tq];' : ''}`}
  ${k === 'stats' ? '' : lines(NF, (c) => `var acc${c} = SA();`)}
  ${pf ? `var pk : array<vec4<u32>, ${np}>;
  ${withV ? `var pv : array<vec4<u32>, ${np}>;` : ''}
  ${fetchKV('0u')}` : ''}
  ${db ? `// double-buffered V: K at 0, the V of even tiles at BT·RS, of odd ones at 2·BT·RS (the Q tile's rows are free once its fragments are loaded)
  workgroupBarrier();
  ${put('pk', '0u')}
  ${put('pv', 'BT * RS')}
  if (BT < kEnd) {
    ${fetchKV('BT')}
  }
  workgroupBarrier();` : ''}
  for (var k0 = 0u; k0 < kEnd; k0 += BT) {
    ${db ? '' : `workgroupBarrier();
    ${k === 'fwd' ? 'if (lid == 0u) { wgF = 0u; }' : ''}
    ${pf ? `${put('pk', '0u')}
    ${withV ? put('pv', 'BT * RS') : ''}` : `${stage('K16', 'kr0 + k0', 'BT', '0u')}
    ${withV ? stage('V16', 'kr0 + k0', 'BT', 'BT * RS') : ''}`}
    workgroupBarrier();
    ${pf ? `if (k0 + BT < kEnd) {
      ${fetchKV('k0 + BT')}
    }` : ''}`}
    ${this.scores(f, [{ n: 's', l: 'qf', r: '', st: '' }, ...(k === 'dq' ? [{ n: 'dp', l: 'df', r: 'BT * RS + ', st: 'DP + ' }] : [])])}
    workgroupBarrier();
    ${db ? `// every S multiply of this tile is done: K's rows and the other V buffer (last read by the previous tile's P·V) are free
    if (lid == 0u) { wgF[(k0 / BT + 1u) % 2u] = 0u; }
    if (k0 + BT < kEnd) {
      ${put('pk', '0u')}
      ${put('pv', '(k0 / BT + 1u) % 2u * BT * RS + BT * RS')}
      if (k0 + 2u * BT < kEnd) {
        ${fetchKV('k0 + 2u * BT')}
      }
    }` : ''}
    {
      ${laneStep}
    }
    ${k === 'stats' ? '' : `${k === 'fwd' ? '' : 'workgroupBarrier();'}
    ${k === 'fwd' ? `// workgroupUniformLoad is itself a workgroup barrier: P and Al are visible after it
    if (workgroupUniformLoad(&${db ? 'wgF[k0 / BT % 2u]' : 'wgF'}) != 0u) {
      // some row's reference max moved: O *= alpha per row, fragment by fragment through this subgroup's Sc rows
      ${lines(NF, (c) => `${f.store('Sc', this.scOff('sg * 16u * SS'), `acc${c}`, this.scStride())}
      workgroupBarrier();
      for (var i = 0u; i < 8u; i++) { ${this.sc('srow + lh * 8u + i')} *= Al[lr * 16u + lrow]; }
      workgroupBarrier();
      acc${c} = ${f.loadAcc('Sc', this.scOff('sg * 16u * SS'), this.scStride())};
      workgroupBarrier();`)}
    }` : ''}
    ${lines(NT, (j) => `{
      let pf = ${f.load('SL', 'Pc', 'row', `sg * 16u * PS + ${2 * j}u`, 'PS')};
      ${lines(NF, (c) => `acc${c} = ${f.mma('pf', f.load('SR', 'Tl', 'row', `${k === 'dq' ? '' : db ? '(k0 / BT % 2u + 1u) * BT * RS + ' : 'BT * RS + '}${16 * j}u * RS + ${2 * c}u`, 'RS'), `acc${c}`)};`)}
    }`)}`}
  }
  ${k === 'stats' ? `workgroupBarrier();
  Sc[srow + 2u * lh] = lm;
  Sc[srow + 2u * lh + 1u] = ll;
  workgroupBarrier();
  if (lh == 0u) {
    let m1 = Sc[srow + 2u];
    let l1 = Sc[srow + 3u];
    let m = max(lm, m1);
    let l = ll * exp(lm - m) + l1 * exp(m1 - m);
    OUT[2u * (qr0 + tq)] = m;
    OUT[2u * (qr0 + tq) + 1u] = log(l);
  }` : k === 'fwd' ? `${f.partner('ll1', 'll')}
  let lsum = ll + ll1;
  if (lh == 0u) {
    Al[lr * 16u + lrow] = 1.0 / lsum;
    STO[2u * (qr0 + tq)] = lm;
    STO[2u * (qr0 + tq) + 1u] = log(lsum);
  }
  // O / rowsum, fragment by fragment through this subgroup's Sc rows
  ${lines(NF, (c) => `workgroupBarrier();
  ${f.store('Sc', this.scOff('sg * 16u * SS'), `acc${c}`, this.scStride())}
  workgroupBarrier();
  for (var i = 0u; i < 8u; i++) { OUT[(qr0 + tq) * D + ${16 * c}u + lh * 8u + i] = ${this.sc('srow + lh * 8u + i')} * Al[lr * 16u + lrow]; }`)}` : lines(NF, (c) => f.store('OUT', `(qr0 + q0 + sg * 16u) * D + ${16 * c}u`, `acc${c}`, 'D'))}
}

${MASK_SCORE_WGSL}`;
  }

  /**
   * The start of the query- and key-owner kernels: batch b, head h, the workgroup's first owned row (q0
   * or k0; the workgroup returns when it is past the rows), the rows' offsets qr0 / kr0, and the lane-step
   * row this thread serves (lr, lrow, lh; tq or kk, srow).
   */
  private ownerPreamble(): string {
    const key = this.kind === 'kv' || this.kind === 'dk' || this.kind === 'dv';
    return `  let b = wid.z;
  ${this.tileIds()}
  ${key ? 'if (k0 >= u.S) { return; }' : 'if (q0 >= u.T) { return; }'}
  let G = u.H / u.KV;
  let qr0 = (b * u.H + h) * u.Tp;
  let kr0 = (b * u.KV + h / G) * u.Sp;
  let lr = lid / 32u;
  let lrow = lid % 16u;
  let lh = (lid % 32u) / 16u;
  ${key ? 'let kk = k0 + lr * 16u + lrow;        // the key this thread serves in lane steps' : 'let tq = q0 + lr * 16u + lrow;'}
  let srow = (lr * 16u + lrow) * SS;`;
  }

  /**
   * Statements shared by the query-owner kernels: batch b, head h, first row q0 (returning past T), the
   * row offsets qr0 / kr0, the lane-step row of this thread (lr, lrow, lh; tq, srow), and kEnd, the end
   * of the causal (or padded) key range of the workgroup's rows.
   */
  private queryPreamble(): string {
    return `${this.ownerPreamble()}
  if (lid == 0u) {
    ${this.kind !== 'fwd' ? '' : this.db() ? 'wgF[0] = 0u;\n    wgF[1] = 0u;' : 'wgF = 0u;'}
    var end = min(u.S, u.past + min(q0 + BO, u.T));
    if (u.masked != 0u && u32(MI[u.B * u.S + b]) > u.past + q0) { end = u.S; }
    wgU = end;
  }
  let kEnd = workgroupUniformLoad(&wgU);`;
  }

  /**
   * The one-pass forward's lane step over the tile's scores (\`score\`: the WGSL of column col's raw score
   * in this thread's row): mask, the row's tile max against the reference max lm (raised, with the rescale
   * flag, only past TAU), P = exp(s − lm) packed to f16 into Pc, the running row sum ll.
   */
  private onlineSoftmax(f: Frag, score: string): string {
    return `var tmax = FAR;
      var xs : array<f32, ${this.bt / 2}>;
      for (var c = 0u; c < HALF; c++) {
        let col = lh * HALF + c;
        let x = maskScore(${score}, k0 + col, tq, b);
        xs[c] = x;
        tmax = max(tmax, x);
      }
      ${this.referenceMax(f)}
      for (var g = 0u; g < HALF / 8u; g++) {
        var v : array<f32, 8>;
        for (var i = 0u; i < 8u; i++) {
          let p = exp(xs[g * 8u + i] - lm);
          v[i] = p;
          ll += p;
        }
        Pc[(lr * 16u + lrow) * PS + lh * (HALF / 8u) + g] = ${packF16x8(range(8).map((i) => `v[${i}]`))};
      }`;
  }

  /**
   * onlineSoftmax under config vec4 (\`score4\`: the WGSL of the thread's vec4 j of raw scores): the thread's
   * HALF scores read as HALF / 4 vec4 from Sc (conflict-free
   * where scalar reads were 4-way), masked per score only when some key of the tile is hidden from some row
   * of the subgroup, or with padding (on the diagonal tiles: the rest take the plain scaled score).
   */
  private onlineSoftmaxV4(f: Frag, score4: string): string {
    const n4 = this.bt / 8;
    return `// every row of this subgroup sees every key of the tile: no per-score mask
      let inner = u.masked == 0u && k0 + BT <= u.S && k0 + BT <= u.past + q0 + lr * 16u + 1u;
      var tmax = FAR;
      var xs : array<vec4<f32>, ${n4}>;
      for (var j = 0u; j < ${n4}u; j++) {
        let s = ${score4};
        var x = s * SCALE;
        if (!inner) {
          let key = k0 + lh * HALF + 4u * j;
          x = vec4<f32>(maskScore(s.x, key, tq, b), maskScore(s.y, key + 1u, tq, b), maskScore(s.z, key + 2u, tq, b), maskScore(s.w, key + 3u, tq, b));
        }
        xs[j] = x;
        tmax = max(tmax, max(max(x.x, x.y), max(x.z, x.w)));
      }
      ${this.referenceMax(f)}
      for (var g = 0u; g < HALF / 8u; g++) {
        let p0 = exp(xs[2u * g] - lm);
        let p1 = exp(xs[2u * g + 1u] - lm);
        let ps = p0 + p1;
        ll += (ps.x + ps.y) + (ps.z + ps.w);
        Pc[(lr * 16u + lrow) * PS + lh * (HALF / 8u) + g] = ${PACK_F16X8_V4('p0', 'p1')};
      }`;
  }

  /**
   * The row's tile max (this thread's tmax and its partner's) against the reference max lm: raised, with
   * alpha the factor on what O and ll hold and the rescale flag when O holds weights, only past TAU.
   */
  private referenceMax(f: Frag): string {
    const flag = this.db() ? 'wgF[k0 / BT % 2u]' : 'wgF';
    return `${f.partner('tmax1', 'tmax')}
      let rmax = max(tmax, tmax1);
      var alpha = 1.0;
      if (rmax > lm + TAU) {
        if (lm > 0.5 * FAR) { ${flag} = 1u; }   // O holds weights of the old reference: rescale it
        alpha = exp(lm - rmax);
        lm = rmax;
      }
      if (lh == 0u) { Al[lr * 16u + lrow] = alpha; }
      ll *= alpha;`;
  }

  /**
   * fwd in subgroup pairs: pair pr owns query rows 32·pr..32·pr+31 of the workgroup's BO (two 16-row blocks
   * rb), member hf = sg % 2 the head-dim half hf (NH fragments of 16). Each member multiplies its Q half
   * with its half of every staged K fragment into partial scores (region hf of Sc), the lanes add the two
   * partials (thread lid serves workgroup row lid / 32 · 16 + lid % 16 as in queryOwner), and P·V runs per
   * member on its half of V with both row blocks' P: every staged K or V fragment feeds two multiplies.
   * O's rescale and the final O / rowsum go through the member's own 32 rows of its Sc region.
   */
  private forwardPairs(f: Frag): string {
    const { decl, fetch, put, np } = this.common(f);
    const D = this.headDim, NH = D / 32, NT = this.bt / 16, BT = this.bt;
    const both = (g: (rb: number) => string) => range(2).map(g).join('\n    ');
    const frag = (g: (rb: number, c: number) => string) => range(2).map((rb) => range(NH).map((c) => g(rb, c)).join('\n    ')).join('\n    ');
    // the member's scratch: its Sc region, its pair's first 16 rows
    const scratch = 'hf * SC1 + prow * SS';
    const viaScratch = (rb: number, c: number, body: string) => `workgroupBarrier();
      ${f.store('Sc', this.scOff(scratch), `acc${rb}_${c}`, this.scStride())}
      workgroupBarrier();
      ${body}`;
    return `${decl}

${this.entry()}
${this.queryPreamble()}
  let SC1 = BO * SS;                    // Sc region of the second half's partial scores
  let prow = (sg / 2u) * 32u;           // the pair's first row in the workgroup
  let hf = sg % 2u;                     // the head-dim half this member holds
  for (var e = lid; e < BO * DV; e += WG) {
    let r = e / DV;
    Tl[r * RS + e % DV] = Q16[(qr0 + q0 + r) * DV + e % DV];
  }
  workgroupBarrier();
  ${frag((rb, c) => `let qf${rb}_${c} = ${f.load('SL', 'Tl', 'row', `(prow + ${16 * rb}u) * RS + (hf * ${NH}u + ${c}u) * 2u`, 'RS')};`)}
  var lm = FAR;
  var ll = 0.0;
  ${frag((rb, c) => `var acc${rb}_${c} = SA();`)}
  ${this.cfg.prefetch ? `var pk : array<vec4<u32>, ${np}>;
  var pv : array<vec4<u32>, ${np}>;
  ${fetch('pk', 'K16', 'kr0')}
  ${fetch('pv', 'V16', 'kr0')}` : ''}
  for (var k0 = 0u; k0 < kEnd; k0 += BT) {
    workgroupBarrier();
    if (lid == 0u) { wgF = 0u; }
    ${this.cfg.prefetch ? `${put('pk', '0u')}
    ${put('pv', 'BT * RS')}` : `for (var e = lid; e < BT * DV; e += WG) {
      let r = e / DV;
      Tl[r * RS + e % DV] = K16[(kr0 + k0 + r) * DV + e % DV];
      Tl[BT * RS + r * RS + e % DV] = V16[(kr0 + k0 + r) * DV + e % DV];
    }`}
    workgroupBarrier();
    ${this.cfg.prefetch ? `if (k0 + BT < kEnd) {
      ${fetch('pk', 'K16', 'kr0 + k0 + BT')}
      ${fetch('pv', 'V16', 'kr0 + k0 + BT')}
    }` : ''}
    {
      ${range(2).map((rb) => lines(NT, (j) => `var s${rb}_${j} = SA();`)).join('\n      ')}
      ${lines(NH, (c) => lines(NT, (j) => `{
        let kf = ${f.load('SR', 'Tl', 'col', `${16 * j}u * RS + (hf * ${NH}u + ${c}u) * 2u`, 'RS')};
        ${both((rb) => `s${rb}_${j} = ${f.mma(`qf${rb}_${c}`, 'kf', `s${rb}_${j}`)};`)}
      }`))}
      ${range(2).map((rb) => lines(NT, (j) => f.store('Sc', this.scOff(`hf * SC1 + (prow + ${16 * rb}u) * SS + ${16 * j}u`), `s${rb}_${j}`, this.scStride()))).join('\n      ')}
    }
    workgroupBarrier();
    {
      ${this.v4() ? this.onlineSoftmaxV4(f, 'Sc[(srow + lh * HALF) / 4u + j] + Sc[(SC1 + srow + lh * HALF) / 4u + j]') : this.onlineSoftmax(f, 'Sc[srow + col] + Sc[SC1 + srow + col]')}
    }
    // workgroupUniformLoad is itself a workgroup barrier: P and Al are visible after it
    if (workgroupUniformLoad(&wgF) != 0u) {
      // some row's reference max moved: this member's O *= alpha per row, fragment by fragment
      ${frag((rb, c) => `${viaScratch(rb, c, `for (var i = 0u; i < 8u; i++) { ${this.sc(`${scratch} + lrow * SS + lh * 8u + i`)} *= Al[prow + ${16 * rb}u + lrow]; }
      workgroupBarrier();
      acc${rb}_${c} = ${f.loadAcc('Sc', this.scOff(scratch), this.scStride())};`)}`)}
    }
    ${lines(NT, (j) => `{
      ${both((rb) => `let pf${rb} = ${f.load('SL', 'Pc', 'row', `(prow + ${16 * rb}u) * PS + ${2 * j}u`, 'PS')};`)}
      ${lines(NH, (c) => `{
        let vf = ${f.load('SR', 'Tl', 'row', `BT * RS + ${16 * j}u * RS + (hf * ${NH}u + ${c}u) * 2u`, 'RS')};
        ${both((rb) => `acc${rb}_${c} = ${f.mma(`pf${rb}`, 'vf', `acc${rb}_${c}`)};`)}
      }`)}
    }`)}
  }
  ${f.partner('ll1', 'll')}
  let lsum = ll + ll1;
  if (lh == 0u) {
    Al[lr * 16u + lrow] = 1.0 / lsum;
    STO[2u * (qr0 + tq)] = lm;
    STO[2u * (qr0 + tq) + 1u] = log(lsum);
  }
  // O / rowsum, fragment by fragment through the member's scratch
  ${frag((rb, c) => viaScratch(rb, c, `for (var i = 0u; i < 8u; i++) { OUT[(qr0 + q0 + prow + ${16 * rb}u + lrow) * D + (hf * ${NH}u + ${c}u) * 16u + lh * 8u + i] = ${this.sc(`${scratch} + lrow * SS + lh * 8u + i`)} * Al[prow + ${16 * rb}u + lrow]; }`))}
}

${MASK_SCORE_WGSL}`;
  }

  /**
   * dqs: dQ = dS·K from the dS the kv kernel stored (key-major: DS[(b·H + h)·Sp + s][t], f16, scale included).
   * A workgroup owns BO query rows and walks the key tiles of the forward's range, K staged in Tl; a
   * subgroup skips the 16×16 blocks the kv kernel skipped (wholly after its rows' positions, for rows that
   * all see some key: dS is 0 there, and never written) and the blocks wholly past the last key (no kv
   * workgroup owns them when its BO keys end before the tile's BT: never written either).
   */
  private dqFromStored(f: Frag): string {
    const { decl, stage, fetch, put } = this.common(f);
    const NF = this.headDim / 16, NT = this.bt / 16;
    const pf = this.cfg.prefetch, R = this.rb, dsw = this.dsw();
    const rows = (g: (r: number) => string, sep = '\n  ') => range(R).map(g).join(sep);
    const BO = 16 * this.nsg * R, BT = this.bt;
    // the staged dS block, vec4 e of BT·BO/8, npd per thread
    const npd = Math.ceil((BT * BO) / 8 / this.wg);
    const eachDs = (body: string) => `for (var i = 0u; i < ${npd}u; i++) {
      let e = lid + i * WG;
      ${(BT * BO) / 8 % this.wg === 0 ? body : `if (e < BT * BO8) { ${body} }`}
    }`;
    // the dS fragment of key block j for the subgroup's row block r
    const dsFrag = (j: number, r: number) => dsw
      ? f.load('SL', 'Tl', 'col', `DOFF + ${16 * j}u * DRS + (sg * ${16 * R}u + ${16 * r}u) / 8u`, 'DRS')
      : f.load('SL', 'DS', 'col', `(dsRow + k0 + ${16 * j}u) * TP8 + (t0 + ${16 * r}u) / 8u`, 'TP8');
    return `${decl}

${this.entry()}
  let b = wid.z;
  ${this.tileIds()}
  if (q0 >= u.T) { return; }
  let G = u.H / u.KV;
  let kr0 = (b * u.KV + h / G) * u.Sp;
  let dsRow = (b * u.H + h) * u.Sp;
  let TP8 = u.Tp / 8u;
  var first = 0u;
  if (u.masked != 0u) { first = u32(MI[u.B * u.S + b]); }
  if (lid == 0u) {
    var end = min(u.S, u.past + min(q0 + BO, u.T));
    if (first > u.past + q0) { end = u.S; }
    wgU = end;
  }
  let kEnd = workgroupUniformLoad(&wgU);
  let t0 = q0 + sg * ${16 * R}u;                 // this subgroup's query rows t0..t0+${16 * R - 1}
  ${rows((r) => `let allSee${r} = u.past + t0 + ${16 * r}u >= first;`)}
  ${rows((r) => lines(NF, (c) => `var acc${r}_${c} = SA();`))}
  ${pf ? `var pk : array<vec4<u32>, ${this.common(f).np}>;
  ${fetch('pk', 'K16', 'kr0')}` : ''}
  ${dsw ? `// the dS block of a key tile: BT key rows of the workgroup's BO queries, staged at DOFF (row stride DRS)
  const BO8 = ${BO / 8}u;
  const DRS = ${BO / 8 + 1}u;
  const DOFF = BT * RS;
  var pds : array<vec4<u32>, ${npd}>;
  ${eachDs('pds[i] = DS[(dsRow + e / BO8) * TP8 + q0 / 8u + e % BO8];')}` : ''}
  for (var k0 = 0u; k0 < kEnd; k0 += BT) {
    workgroupBarrier();
    ${pf ? put('pk', '0u') : stage('K16', 'kr0 + k0', 'BT', '0u')}
    ${dsw ? eachDs('Tl[DOFF + (e / BO8) * DRS + e % BO8] = pds[i];') : ''}
    workgroupBarrier();
    ${pf ? `if (k0 + BT < kEnd) {
      ${fetch('pk', 'K16', 'kr0 + k0 + BT')}
      ${dsw ? eachDs('pds[i] = DS[(dsRow + k0 + BT + e / BO8) * TP8 + q0 / 8u + e % BO8];') : ''}
    }` : ''}
    ${this.cfg.dqsFull && R > 1 ? `if (k0 + BT <= u.S && k0 + BT - 1u <= u.past + t0) {
      // every row of this subgroup sees every key of the tile
      ${lines(NT, (j) => `{
        ${rows((r) => `let dsf${r} = ${dsFrag(j, r)};`)}
        ${lines(NF, (c) => `{
          let kf = ${f.load('SR', 'Tl', 'row', `${16 * j}u * RS + ${2 * c}u`, 'RS')};
          ${rows((r) => `acc${r}_${c} = ${f.mma(`dsf${r}`, 'kf', `acc${r}_${c}`)};`)}
        }`)}
      }`)}
    } else {` : ''}
    ${lines(NT, (j) => `{
      ${rows((r) => `let use${r} = k0 + ${16 * j}u < u.S && !(allSee${r} && k0 + ${16 * j}u > u.past + t0 + ${16 * r + 15}u);`)}
      if (${rows((r) => `use${r}`, ' || ')}) {
        ${rows((r) => `let dsf${r} = ${dsFrag(j, r)};`)}
        ${lines(NF, (c) => R === 1
          ? `acc0_${c} = ${f.mma('dsf0', f.load('SR', 'Tl', 'row', `${16 * j}u * RS + ${2 * c}u`, 'RS'), `acc0_${c}`)};`
          : `{
          let kf = ${f.load('SR', 'Tl', 'row', `${16 * j}u * RS + ${2 * c}u`, 'RS')};
          ${rows((r) => `if (use${r}) { acc${r}_${c} = ${f.mma(`dsf${r}`, 'kf', `acc${r}_${c}`)}; }`)}
        }`)}
      }
    }`)}
    ${this.cfg.dqsFull && R > 1 ? '}' : ''}
  }
  ${rows((r) => lines(NF, (c) => f.store('OUT', `((b * u.H + h) * u.Tp + t0 + ${16 * r}u) * D + ${16 * c}u`, `acc${r}_${c}`, 'D')))}
}
`;
  }

  /**
   * kv's lane step under config vec4 (thread: key kk, HALF query columns from lh·HALF): S and dP read as vec4
   * from Sc, the query rows' max, log-sum and Δ as vec4 from Rm / Rl / Rd; P and dS = P·(dP − Δ)·scale packed
   * to f16 into Pc (and dS to DSO). Per-score masking only on tiles where some query row of the tile does
   * not see every key of the subgroup, some row is past T, or with padding.
   */
  private kvLaneV4(PD: string): string {
    return `// every query row of the tile sees every key of this subgroup: no per-score mask
    let inner = u.masked == 0u && q0 + BT <= u.T && k0 + lr * 16u + 16u <= u.S && k0 + lr * 16u + 16u <= u.past + q0 + 1u;
    for (var g = 0u; g < HALF / 8u; g++) {
      var pv : array<vec4<f32>, 2>;
      var sv : array<vec4<f32>, 2>;
      let c0 = lh * HALF + g * 8u;   // this thread's 8 query columns
      for (var j = 0u; j < 2u; j++) {
        let c4 = c0 / 4u + j;
        var x = Sc[srow / 4u + c4] * SCALE;
        if (!inner) {
          for (var i = 0u; i < 4u; i++) {
            let t = q0 + 4u * c4 + i;
            var xi = MASKED;
            if (kk >= u.S || t >= u.T) { xi = FAR; } else if (keyOk && kk <= u.past + t) { xi = x[i]; }
            x[i] = xi;
          }
        }
        let p = exp((x - Rm[c4]) - Rl[c4]);
        pv[j] = p;
        sv[j] = p * (Sc[(DP + srow) / 4u + c4] - Rd[c4]) * SCALE;
      }
      Pc[lr * 16u * PS + lrow * PS + c0 / 8u] = ${PACK_F16X8_V4('pv[0]', 'pv[1]')};
      let sp = ${PACK_F16X8_V4('sv[0]', 'sv[1]')};
      Pc[${PD} + lr * 16u * PS + lrow * PS + c0 / 8u] = sp;
      ${this.cfg.dsStored ? 'DSO[((b * u.H + h) * u.Sp + kk) * (u.Tp / 8u) + (q0 + c0) / 8u] = sp;' : ''}
    }`;
  }

  /** kv, dk, dv: a workgroup owns BO keys of one KV head, for one query head, and walks the query tiles. */
  private keyOwner(f: Frag): string {
    const { decl, stage, fetch, put, np } = this.common(f);
    const k = this.kind;
    const dk = k !== 'dv', dv = k !== 'dk';
    const pf = this.cfg.prefetch;
    const rs = this.rowStats();
    // the row stats of query rows q..q+BT (padded rows: any finite value, their scores are masked)
    const v4 = this.v4();
    const stats = (q: string) => v4
      ? `vec3<f32>(ST[2u * (qr0 + ${q} + lid)], ST[2u * (qr0 + ${q} + lid) + 1u], DL[qr0 + ${q} + lid])`
      : `vec4<f32>(ST[2u * (qr0 + ${q} + lid)], ST[2u * (qr0 + ${q} + lid) + 1u], DL[qr0 + ${q} + lid], 0.0)`;
    // the staged stats of query rows q..q+BT from pr (or from global memory: q)
    const putStats = (q?: string) => v4
      ? `if (lid < BT) {
      let st = ${q ? stats(q) : 'pr'};
      Rm[lid / 4u][lid % 4u] = st.x;
      Rl[lid / 4u][lid % 4u] = st.y;
      Rd[lid / 4u][lid % 4u] = st.z;
    }`
      : `if (lid < BT) { Rw[lid] = ${q ? stats(q) : 'pr'}; }`;
    const fetchQD = (q0: string) => `${fetch('pq', 'Q16', `qr0 + ${q0}`)}
    ${fetch('pd', 'DO16', `qr0 + ${q0}`)}
    ${rs ? `if (lid < BT) { pr = ${stats(q0)}; }` : ''}`;
    const D = this.headDim, NF = D / 16, NT = this.bt / 16;
    // Pc regions: P at 0 (dv), dS at PD (dk)
    const PD = dv ? `${16 * this.nsg}u * PS` : '0u';
    const kvLane = `for (var g = 0u; g < HALF / 8u; g++) {
      ${dv ? 'var pv : array<f32, 8>;' : ''}
      ${dk ? 'var sv : array<f32, 8>;' : ''}
      for (var i = 0u; i < 8u; i++) {
        let col = lh * HALF + g * 8u + i;
        let t = q0 + col;
        var p = 0.0;
        if (t < u.T) {
          let row = qr0 + t;
          var x = MASKED;
          if (kk >= u.S) { x = FAR; } else if (keyOk && kk <= u.past + t) { x = Sc[srow + col] * SCALE; }
          ${rs ? `let st = Rw[col];
          p = exp((x - st.x) - st.y);
          ${dk ? 'sv[i] = p * (Sc[DP + srow + col] - st.z) * SCALE;' : ''}` : `p = exp((x - ST[2u * row]) - ST[2u * row + 1u]);
          ${dk ? 'sv[i] = p * (Sc[DP + srow + col] - DL[row]) * SCALE;' : ''}`}
        }
        ${dv ? 'pv[i] = p;' : ''}
      }
      ${dv ? `Pc[lr * 16u * PS + lrow * PS + lh * (HALF / 8u) + g] = ${packF16x8(range(8).map((i) => `pv[${i}]`))};` : ''}
      ${dk ? `let sp = ${packF16x8(range(8).map((i) => `sv[${i}]`))};
      Pc[${PD} + lr * 16u * PS + lrow * PS + lh * (HALF / 8u) + g] = sp;
      ${this.cfg.dsStored ? 'DSO[((b * u.H + h) * u.Sp + kk) * (u.Tp / 8u) + (q0 + lh * HALF + g * 8u) / 8u] = sp;' : ''}` : ''}
    }`;
    return `${decl}

${this.entry()}
${this.ownerPreamble()}
  let DP = ${16 * this.nsg}u * SS;
  var keyOk = false;
  if (kk < u.S) { keyOk = u.masked == 0u || MI[b * u.S + kk] != 0; }
  if (lid == 0u) {
    wgU = 0u;
    if (u.masked != 0u) { wgU = u32(MI[u.B * u.S + b]); }
  }
  let first = workgroupUniformLoad(&wgU);
  ${dk ? '' : '_ = V16[0];\n  _ = DL[0];  // bound in every kv variant (one binding list), read only by dK'}
  ${stage('K16', 'kr0 + k0', 'BO', '0u')}
  workgroupBarrier();
  ${lines(NF, (c) => `let kf${c} = ${f.load('SL', 'Tl', 'row', `(sg * 16u) * RS + ${2 * c}u`, 'RS')};`)}
  ${dk ? `workgroupBarrier();
  ${stage('V16', 'kr0 + k0', 'BO', '0u')}
  workgroupBarrier();
  ${lines(NF, (c) => `let vf${c} = ${f.load('SL', 'Tl', 'row', `(sg * 16u) * RS + ${2 * c}u`, 'RS')};`)}` : ''}
  ${dk ? lines(NF, (c) => `var dk${c} = SA();`) : ''}
  ${dv ? lines(NF, (c) => `var dv${c} = SA();`) : ''}
  // query tiles that see these keys: from the causal start, plus the leading ones with rows that see no key
  var qStart = 0u;
  if (k0 > u.past) { qStart = (k0 - u.past) / BT * BT; }
  if (first > u.past) { qStart = 0u; }
  // skipped: tiles wholly before these keys whose rows all see some key
  var q0 = qStart;
  while (q0 < u.T && skipTile(q0, k0, first)) { q0 += BT; }
  ${pf ? `var pq : array<vec4<u32>, ${np}>;
  var pd : array<vec4<u32>, ${np}>;
  ${rs ? `var pr = ${v4 ? 'vec3' : 'vec4'}<f32>(0.0);` : ''}
  if (q0 < u.T) {
    ${fetchQD('q0')}
  }` : ''}
  loop {
    if (q0 >= u.T) { break; }
    var qn = q0 + BT;
    while (qn < u.T && skipTile(qn, k0, first)) { qn += BT; }
    workgroupBarrier();
    ${pf ? `${put('pq', '0u')}
    ${put('pd', 'BT * RS')}
    ${rs ? putStats() : ''}` : `${stage('Q16', 'qr0 + q0', 'BT', '0u')}
    ${stage('DO16', 'qr0 + q0', 'BT', 'BT * RS')}
    ${rs ? putStats('q0') : ''}`}
    workgroupBarrier();
    ${pf ? `if (qn < u.T) {
      ${fetchQD('qn')}
    }` : ''}
    ${this.scores(f, [{ n: 's', l: 'kf', r: '', st: '' }, ...(dk ? [{ n: 'dp', l: 'vf', r: 'BT * RS + ', st: 'DP + ' }] : [])])}
    workgroupBarrier();
    ${v4 ? this.kvLaneV4(PD) : kvLane}
    workgroupBarrier();
    ${lines(NT, (j) => `{
      ${dv ? `let pf = ${f.load('SL', 'Pc', 'row', `sg * 16u * PS + ${2 * j}u`, 'PS')};
      ${lines(NF, (c) => `dv${c} = ${f.mma('pf', f.load('SR', 'Tl', 'row', `BT * RS + ${16 * j}u * RS + ${2 * c}u`, 'RS'), `dv${c}`)};`)}` : ''}
      ${dk ? `let sf = ${f.load('SL', 'Pc', 'row', `${PD} + sg * 16u * PS + ${2 * j}u`, 'PS')};
      ${lines(NF, (c) => `dk${c} = ${f.mma('sf', f.load('SR', 'Tl', 'row', `${16 * j}u * RS + ${2 * c}u`, 'RS'), `dk${c}`)};`)}` : ''}
    }`)}
    q0 = qn;
  }
  let dkAt = ((b * u.H + h) * u.Sp + k0 + sg * 16u) * D;
  let dvAt = u.B * u.H * u.Sp * D + dkAt;
  ${dk ? lines(NF, (c) => f.store('OUT', `dkAt + ${16 * c}u`, `dk${c}`, 'D')) : ''}
  ${dv ? lines(NF, (c) => f.store('OUT', `dvAt + ${16 * c}u`, `dv${c}`, 'D')) : ''}
}

/** A query tile wholly before keys k0.. (causal) whose rows all see some key (none before \`first\`): no weight on these keys. */
fn skipTile(q0 : u32, k0 : u32, first : u32) -> bool {
  return u.past + q0 + BT - 1u < k0 && u.past + q0 >= first;
}
`;
  }
}

/**
 * The forward prologue in one dispatch: q f32 [Nq, T, D] and k, v f32 [Nk, S, D] → packed f16 [N, Tp|Sp, D]
 * (8 halves per vec4<u32>), rows past T / S zero. One thread per output vec4, q's first, then k's, then v's.
 */
export class HalfPadQkvProgram implements OwnKernel {
  shaderKey: string;
  dispatch: [number, number, number];
  private readonly nq: number;
  private readonly nk: number;

  constructor(readonly headDim: number, nq: number, readonly T: number, nk: number, readonly S: number) {
    this.shaderKey = `tsft_flash_sg_halfpad_qkv_d${headDim}`;
    this.nq = (nq * padTo(T) * headDim) / 8;
    this.nk = (nk * padTo(S) * headDim) / 8;
    this.dispatch = gridFor(this.nq + 2 * this.nk, 256);
  }

  getUserCode(): string {
    const conv = (X: string, Y: string, i: string, T: string, Tp: string) => `{
    let row = ${i} / DV;
    let t = row % ${Tp};
    var o = vec4<u32>(0u);
    if (t < ${T}) {
      let src = ((row / ${Tp}) * ${T} + t) * DV * 2u + (${i} % DV) * 2u;
      let a = ${X}[src];
      let c = ${X}[src + 1u];
      o = vec4<u32>(pack2x16float(a.xy), pack2x16float(a.zw), pack2x16float(c.xy), pack2x16float(c.zw));
    }
    ${Y}[${i}] = o;
  }`;
    return `struct P { T : u32, Tp : u32, S : u32, Sp : u32, nq : u32, nk : u32, gx : u32, pad : u32, }
@group(0) @binding(0) var<storage, read> XQ : array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> XK : array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> XV : array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> YQ : array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> YK : array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> YV : array<vec4<u32>>;
@group(0) @binding(6) var<uniform> p : P;
const DV = ${this.headDim / 8}u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid : vec3<u32>) {
  let i = gid.y * p.gx * 256u + gid.x;
  if (i < p.nq) ${conv('XQ', 'YQ', 'i', 'p.T', 'p.Tp')}
  else if (i < p.nq + p.nk) ${conv('XK', 'YK', '(i - p.nq)', 'p.S', 'p.Sp')}
  else if (i < p.nq + 2u * p.nk) ${conv('XV', 'YV', '(i - p.nq - p.nk)', 'p.S', 'p.Sp')}
}`;
  }

  uniform(): Uint32Array {
    return Uint32Array.from([this.T, padTo(this.T), this.S, padTo(this.S), this.nq, this.nk, this.dispatch[0], 0]);
  }
}

/**
 * Backward prologue: dO f32 [N, T, D] → f16 [N, Tp, D] packed, and Δ[row] = Σ_d dO·O over the padded
 * forward output O [N, Tp, D] (rows ≥ T: zero). DV threads per row, each 8 elements; 256 / DV rows per workgroup.
 */
export class PrepProgram implements OwnKernel {
  shaderKey: string;
  dispatch: [number, number, number];

  constructor(readonly headDim: number, readonly n: number, readonly T: number) {
    this.shaderKey = `tsft_flash_sg_prep_d${headDim}`;
    this.dispatch = gridFor(n * padTo(T), 256 / (headDim / 8));
  }

  getUserCode(): string {
    const DV = this.headDim / 8;
    return `struct P { T : u32, Tp : u32, rows : u32, gx : u32, }
@group(0) @binding(0) var<storage, read> DY : array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> O : array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> DO16 : array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> DL : array<f32>;
@group(0) @binding(4) var<uniform> p : P;
const DV = ${DV}u;
const RPW = ${256 / DV}u;
var<workgroup> part : array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid : u32, @builtin(workgroup_id) wid : vec3<u32>) {
  let row = (wid.y * p.gx + wid.x) * RPW + lid / DV;
  let c = lid % DV;
  var o = vec4<u32>(0u);
  var dt = 0.0;
  if (row < p.rows) {
    let t = row % p.Tp;
    if (t < p.T) {
      let src = ((row / p.Tp) * p.T + t) * DV * 2u + c * 2u;
      let a = DY[src];
      let b = DY[src + 1u];
      dt = dot(a, O[row * DV * 2u + c * 2u]) + dot(b, O[row * DV * 2u + c * 2u + 1u]);
      o = vec4<u32>(pack2x16float(a.xy), pack2x16float(a.zw), pack2x16float(b.xy), pack2x16float(b.zw));
    }
    DO16[row * DV + c] = o;
  }
  part[lid] = dt;
  workgroupBarrier();
  if (c == 0u && row < p.rows) {
    var s = 0.0;
    for (var i = 0u; i < DV; i++) { s += part[lid + i]; }
    DL[row] = s;
  }
}`;
  }

  uniform(): Uint32Array {
    return Uint32Array.from([this.T, padTo(this.T), this.n * padTo(this.T), this.dispatch[0]]);
  }
}

/** dK, dV [B, KV, S, D] = Σ over the G query heads of a KV head of the per-query-head [2, B, H, Sp, D]. */
export class GroupSumProgram implements OwnKernel {
  shaderKey: string;
  dispatch: [number, number, number];

  constructor(readonly headDim: number, readonly B: number, readonly H: number, readonly KV: number, readonly S: number) {
    this.shaderKey = `tsft_flash_sg_groupsum_d${headDim}`;
    this.dispatch = gridFor((B * KV * S * headDim) / 4, 256);
  }

  getUserCode(): string {
    return `struct P { H : u32, KV : u32, S : u32, Sp : u32, n : u32, half : u32, gx : u32, pad : u32, }
@group(0) @binding(0) var<storage, read> X : array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> DK : array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> DV : array<vec4<f32>>;
@group(0) @binding(3) var<uniform> p : P;
const D4 = ${this.headDim / 4}u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid : vec3<u32>) {
  let i = gid.y * p.gx * 256u + gid.x;
  if (i >= p.n) { return; }
  let c = i % D4;
  let s = (i / D4) % p.S;
  let bk = i / (D4 * p.S);           // b·KV + kv
  let G = p.H / p.KV;
  let b = bk / p.KV;
  let kv = bk % p.KV;
  var a = vec4<f32>(0.0);
  var v = vec4<f32>(0.0);
  for (var g = 0u; g < G; g++) {
    let at = ((b * p.H + kv * G + g) * p.Sp + s) * D4 + c;
    a += X[at];
    v += X[p.half + at];
  }
  DK[i] = a;
  DV[i] = v;
}`;
  }

  uniform(): Uint32Array {
    const Sp = padTo(this.S);
    return Uint32Array.from([this.H, this.KV, this.S, Sp, (this.B * this.KV * this.S * this.headDim) / 4, (this.B * this.H * Sp * this.headDim) / 4, this.dispatch[0], 0]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Running own pipelines inside tfjs's command stream

/** One dispatch of {@link runOwn}: the kernel, its tensors (inputs, then outputs) and its uniform words. */
export interface OwnDispatch {
  kernel: OwnKernel;
  tensors: tf.Tensor[];
  uniform: Uint32Array;
}

let ownRecorder: ((dispatches: OwnDispatch[]) => OwnDispatch[] | void) | null = null;

/**
 * Benches: `f` sees every {@link runOwn} call's dispatches (to time each kernel alone) and may return the
 * dispatches to run instead (ablations); null stops it.
 */
export function recordOwnDispatches(f: ((dispatches: OwnDispatch[]) => OwnDispatch[] | void) | null): void {
  ownRecorder = f;
}

/**
 * Records the dispatches, in order, into tfjs's compute pass ({@link recordDispatch}: each dispatch sees what
 * the previous ones wrote; tfjs submits them with its batch). `submit`: submit now (benches that wait for
 * the queue).
 */
export function runOwn(dispatches: OwnDispatch[], submit = false): void {
  const hooked = ownRecorder?.(dispatches);
  if (Array.isArray(hooked)) dispatches = hooked;
  const backend = webgpuBackend();
  const device = backend.device;
  recordDispatch(
    dispatches.map(({ kernel, tensors, uniform }) => ({
      pipeline: pipelineFor(device, kernel),
      buffers: [...tensors.map(gpuBufferOf), constantUniform(device, uniform)],
      workgroups: kernel.dispatch,
      label: kernel.shaderKey,
    })),
    dispatches.flatMap((d) => d.tensors),
  );
  if (submit) {
    backend.ensureCommandEncoderReady(); // recordDispatch may have submitted already
    backend.endComputePassEncoder();
    backend.submitQueue();
  }
}

/** mask [B, S] (int32, 0 / non-zero) → [mask (0/1) of B·S keys | first visible key of each batch row (S if none)]. */
export class MaskInfoProgram implements OwnKernel {
  shaderKey = 'tsft_flash_sg_maskinfo';
  dispatch: [number, number, number];

  constructor(readonly B: number, readonly S: number) {
    this.dispatch = [B, 1, 1];
  }

  getUserCode(): string {
    return `struct P { B : u32, S : u32, pad0 : u32, pad1 : u32, }
@group(0) @binding(0) var<storage, read> M : array<i32>;
@group(0) @binding(1) var<storage, read_write> MI : array<i32>;
@group(0) @binding(2) var<uniform> p : P;
var<workgroup> first : atomic<u32>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid : u32, @builtin(workgroup_id) wid : vec3<u32>) {
  let b = wid.x;
  if (lid == 0u) { atomicStore(&first, p.S); }
  workgroupBarrier();
  for (var s = lid; s < p.S; s += 256u) {
    let ok = M[b * p.S + s] != 0;
    MI[b * p.S + s] = select(0, 1, ok);
    if (ok) { atomicMin(&first, s); }
  }
  workgroupBarrier();
  if (lid == 0u) { MI[p.B * p.S + b] = i32(atomicLoad(&first)); }
}`;
  }
}

// ---------------------------------------------------------------------------------------------------
// The tfjs-level function

export interface FlashSgOptions {
  attentionMask?: tf.Tensor2D;
  past: number;
  config?: SgAttentionConfig;
}

/**
 * The config flashAttention runs at head dim D under a workgroup-memory limit: the default, else the same
 * with 16-query kv tiles, V single-buffered and dS read from global memory (≤ 34 KiB at head_dim 128), else
 * undefined (the fp32 kernels run).
 */
export function sgConfigFor(D: number, workgroupBytes: number): SgAttentionConfig | undefined {
  const key = `${D}:${workgroupBytes}`;
  if (!configFor.has(key)) configFor.set(key, [DEFAULT_SG_CONFIG, { ...DEFAULT_SG_CONFIG, btKv: 16, doubleV: false, dsStaged: false }].find((c) => sgWorkgroupBytes(D, c) <= workgroupBytes));
  return configFor.get(key);
}
/** sgConfigFor's answers (it runs on every attention call). */
const configFor = new Map<string, SgAttentionConfig | undefined>();

/** Workgroup bytes the largest kernel of `cfg` needs at head dim D. */
export function sgWorkgroupBytes(D: number, cfg: SgAttentionConfig): number {
  const dims = { B: 1, H: 1, T: 1, S: 1 };
  const kinds: Kind[] = [...(cfg.fwd1 ? (['fwd'] as Kind[]) : (['stats', 'out'] as Kind[])), 'dq', 'dqs', ...(cfg.kvSplit ? (['dk', 'dv'] as Kind[]) : (['kv'] as Kind[]))];
  return Math.max(...kinds.map((k) => new FlashSgProgram(k, D, cfg, dims).workgroupBytes()));
}

/**
 * flashAttention's tensor-core path (call it through flashAttention, which checks shapes and picks the
 * path; tests and benches call it directly to pick a config or the emulation). q [B, H, T, D], k = v
 * [B, KV, S, D], f32; returns f32 [B, H, T, D], differentiable.
 */
export function flashAttentionSg(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: FlashSgOptions): tf.Tensor4D {
  const [B, H, T, D] = q.shape;
  const [, KV, S] = k.shape;
  const cfg = opts.config ?? sgConfigFor(D, webgpuBackend().device.limits.maxComputeWorkgroupStorageSize) ?? DEFAULT_SG_CONFIG;
  const past = opts.past;
  const Tp = padTo(T), Sp = padTo(S);
  const m = opts.attentionMask;
  const uni = uniformWords(B, H, KV, T, S, past, !!m);
  const attend = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [qi, ki, vi] = args as tf.Tensor4D[];
    const save = args[3] as tf.GradSaveFunc;
    const dispatches: OwnDispatch[] = [];
    // with a mask: [mask (0/1) of B·S keys | first visible key of each batch row]; without, nothing reads MI
    // (uniform masked = 0) and q16 stands in for its binding
    const maskI = m ? (m.dtype === 'int32' ? m : tf.cast(m, 'int32')) : undefined;
    const mi = maskI ? uninitialised([B * S + B], 'int32') : undefined;
    if (maskI) dispatches.push({ kernel: new MaskInfoProgram(B, S), tensors: [maskI, mi!], uniform: Uint32Array.from([B, S, 0, 0]) });
    const q16 = uninitialised([(B * H * Tp * D) / 2], 'int32');
    const k16 = uninitialised([(B * KV * Sp * D) / 2], 'int32');
    const v16 = uninitialised([(B * KV * Sp * D) / 2], 'int32');
    const prologue = new HalfPadQkvProgram(D, B * H, T, B * KV, S);
    dispatches.push({ kernel: prologue, tensors: [qi, ki, vi, q16, k16, v16], uniform: prologue.uniform() });
    const stats = uninitialised([B * H * Tp * 2]);
    const oPad = uninitialised([B, H, Tp, D]);
    const dims = { B, H, T, S };
    if (cfg.fwd1) {
      dispatches.push({ kernel: new FlashSgProgram('fwd', D, cfg, dims), tensors: [q16, k16, v16, mi ?? q16, oPad, stats], uniform: uni });
    } else {
      dispatches.push(
        { kernel: new FlashSgProgram('stats', D, cfg, dims), tensors: [q16, k16, mi ?? q16, stats], uniform: uni },
        { kernel: new FlashSgProgram('out', D, cfg, dims), tensors: [q16, k16, v16, mi ?? q16, stats, oPad], uniform: uni },
      );
    }
    runOwn(dispatches);
    if (maskI && maskI !== m) maskI.dispose();
    save(mi ? [q16, k16, v16, stats, oPad, mi] : [q16, k16, v16, stats, oPad]);
    const value = (Tp === T ? tf.reshape(oPad, [B, H, T, D]) : tf.slice(oPad, [0, 0, 0, 0], [B, H, T, D])) as tf.Tensor4D;
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sq, sk, sv, sst, so, smi = sq] = saved;
        const prep = new PrepProgram(D, B * H, T);
        const do16 = uninitialised([(B * H * Tp * D) / 2], 'int32');
        const delta = uninitialised([B * H * Tp]);
        const ins = [sq, sk, sv, do16, smi, sst, delta];
        const dqPad = uninitialised([B, H, Tp, D]);
        const dkv = uninitialised([2 * B * H * Sp * D]);
        const gs = new GroupSumProgram(D, B, H, KV, S);
        const dk = uninitialised([B, KV, S, D]);
        const dv = uninitialised([B, KV, S, D]);
        const dims = { B, H, T, S };
        // dS stored by the kv kernel (f16 [B, H, Sp, Tp]) when it fits: dQ is then a plain matmul
        const bcfg = cfg.dsStored && B * H * Sp * Tp * 2 <= DS_MAX_BYTES ? cfg : { ...cfg, dsStored: false };
        const ds = bcfg.dsStored ? uninitialised([(B * H * Sp * Tp) / 2], 'int32') : undefined;
        const kvKinds: Kind[] = cfg.kvSplit ? ['dk', 'dv'] : ['kv'];

        runOwn([
          { kernel: prep, tensors: [dy, so, do16, delta], uniform: prep.uniform() },
          ...(ds ? [] : [{ kernel: new FlashSgProgram('dq', D, bcfg, dims), tensors: [...ins, dqPad], uniform: uni }]),
          ...kvKinds.map((kind) => ({ kernel: new FlashSgProgram(kind, D, bcfg, dims), tensors: [...ins, dkv, ...(ds && kind !== 'dv' ? [ds] : [])], uniform: uni })),
          ...(ds ? [{ kernel: new FlashSgProgram('dqs', D, bcfg, dims), tensors: [sk, ds, smi, dqPad], uniform: uni }] : []),
          { kernel: gs, tensors: [dkv, dk, dv], uniform: gs.uniform() },
        ]);
        const dq = Tp === T ? tf.reshape(dqPad, [B, H, T, D]) : tf.slice(dqPad, [0, 0, 0, 0], [B, H, T, D]);
        return [dq, dk, dv];
      },
    };
  });
  return attend(q, k, v) as tf.Tensor4D;
}

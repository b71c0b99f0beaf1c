// Flash attention on tensor cores: WGSL subgroup matrices (f16 operands, f32 accumulation), forward and
// backward, with the semantics of flash-attention.ts's fp32 kernels (causal GQA, padding mask incl. rows
// that see no key, cache offset `past`). flashAttention (flash-attention.ts) runs it on webgpu when the
// adapter has subgroup matrices and computeDtype() is 'float16'.
//
// Data: q, k, v (and dO) are f32 tfjs tensors; a prologue pass rounds each to f16, packed two per int32
// word, with the sequence padded to a multiple of PAD rows (zeros), so the main kernels never bound-check
// a load. Outputs are f32, written straight from the accumulators into padded buffers (sliced after).
//
// Kernels (one workgroup = NSG subgroups of 32; each subgroup owns 16 rows of the "owner" operand, held as
// left fragments in registers; the other operand is staged tile by tile in workgroup memory, shared):
//   stats  forward pass 1, owner Q: S = Q·Kᵀ per key tile → per row (max, log-sum), online in lanes;
//   out    forward pass 2, owner Q: P = exp(S − max − logsum), exactly normalised, stored f16, O += P·V
//          (no rescale of O: subgroup-matrix accumulators are opaque, so the online-softmax rescale of
//          FlashAttention-2 would need a round trip through memory);
//   dq     owner Q (and dO): S, dP = dO·Vᵀ, dS = P∘(dP − Δ)·scale (f16), dQ += dS·K;
//   kv     owner K (and V): Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q, per query head (summed over
//          the heads of a KV group by a last pass, `group-sum`); `kvSplit` runs dK and dV as two kernels
//          (fewer live accumulators each).
// Between the matrix ops S / dP go through workgroup memory (f32) where every thread of the workgroup
// applies the mask and softmax to half a row, and P / dS come back as f16 for the next multiply.
// Δ = rowsum(dO ∘ O) and the f16 dO come from one prologue pass (`prep`).
//
// `emulate: true` generates the same kernels with the subgroup-matrix builtins replaced by plain WGSL
// (a fragment = array<f32, 256> per invocation, each lane computing its 8 result elements): no f16, no
// subgroups needed, so the tiling, masking and softmax run (slowly) on lavapipe in CI. Only the builtins
// themselves differ on the H100.

import * as tf from '@tensorflow/tfjs-core';
import { MASKED } from '../../model/attention';
import { gpuBufferOf, gridFor, pipelineFor, uninitialised, webgpuBackend, type BackendInternals } from './program';

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
  /** subgroups per workgroup of the kv kernel (16·nsgKv keys) */
  nsgKv: number;
  /** queries per staged tile in kv */
  btKv: number;
  /** dK and dV in two kernels instead of one */
  kvSplit: boolean;
  /** plain-WGSL stand-ins for the subgroup-matrix builtins (lavapipe) */
  emulate: boolean;
}

// the fastest of those measured (bench/results/2026-11-28-attention.md); ≤ 34 KiB of workgroup memory at head_dim 128
export const DEFAULT_SG_CONFIG: SgAttentionConfig = { nsg: 4, bt: 32, btDq: 16, nsgKv: 4, btKv: 16, kvSplit: false, emulate: false };

/** Parses `nsg4_bt64_dq32_kv4x32[_split]`; missing parts keep the defaults. */
export function parseSgConfig(s: string, base: SgAttentionConfig = DEFAULT_SG_CONFIG): SgAttentionConfig {
  const c = { ...base };
  for (const part of s.split('_').filter(Boolean)) {
    let m: RegExpExecArray | null;
    if ((m = /^nsg(\d+)$/.exec(part))) c.nsg = Number(m[1]);
    else if ((m = /^bt(\d+)$/.exec(part))) c.bt = Number(m[1]);
    else if ((m = /^dq(\d+)$/.exec(part))) c.btDq = Number(m[1]);
    else if ((m = /^kv(\d+)x(\d+)$/.exec(part))) [c.nsgKv, c.btKv] = [Number(m[1]), Number(m[2])];
    else if (part === 'split') c.kvSplit = true;
    else if (part === 'emu') c.emulate = true;
    else throw new RangeError(`attention config '${s}': unknown part '${part}' (e.g. nsg4_bt64_dq32_kv4x32_split)`);
  }
  return c;
}

export function sgConfigKey(c: SgAttentionConfig): string {
  return `nsg${c.nsg}_bt${c.bt}_dq${c.btDq}_kv${c.nsgKv}x${c.btKv}${c.kvSplit ? '_split' : ''}${c.emulate ? '_emu' : ''}`;
}

// ---------------------------------------------------------------------------------------------------
// WGSL generation

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const lines = (n: number, f: (i: number) => string) => range(n).map(f).join('\n');

type Kind = 'stats' | 'out' | 'dq' | 'kv' | 'dk' | 'dv';

/** The subgroup-matrix operations, as builtins or as their plain-WGSL emulation. */
class Frag {
  private readonly loads = new Set<string>();
  private readonly stores = new Set<string>();

  constructor(readonly emulate: boolean) {}

  load(type: 'SL' | 'SR', arr: string, major: 'row' | 'col', off: string, stride: string): string {
    if (!this.emulate) return `subgroupMatrixLoad<${type}, ${major}_major>(&${arr}, ${off}, ${stride})`;
    this.loads.add(arr);
    return `emuLoad_${arr}(${off}, ${stride}, ${major === 'col'})`;
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
      return `enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
alias SL = subgroup_matrix_left<f16, 16, 16>;
alias SR = subgroup_matrix_right<f16, 16, 16>;
alias SA = subgroup_matrix_result<f32, 16, 16>;`;
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
    const stores = [...this.stores].map((arr) => `fn emuStore_${arr}(off : u32, v : array<f32, 256>, stride : u32, lane : u32) {
  for (var i = 0u; i < 8u; i++) {
    let e = lane + 32u * i;
    ${arr}[off + (e / 16u) * stride + e % 16u] = v[e];
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
${stores.join('\n')}`;
  }
}

const UNIFORMS = `struct U { B : u32, H : u32, KV : u32, T : u32, S : u32, Tp : u32, Sp : u32, past : u32, }`;

/** Uniform buffer contents (8 u32). */
function uniformWords(B: number, H: number, KV: number, T: number, S: number, past: number): Uint32Array {
  return Uint32Array.from([B, H, KV, T, S, padTo(T), padTo(S), past]);
}

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

  constructor(readonly kind: Kind, readonly headDim: number, readonly cfg: SgAttentionConfig, dims: { B: number; H: number; T: number; S: number }) {
    if (headDim % 16 !== 0) throw new RangeError(`flash attention (subgroup matrix): head_dim ${headDim} is not a multiple of 16`);
    const keyOwner = kind === 'kv' || kind === 'dk' || kind === 'dv';
    this.nsg = keyOwner ? cfg.nsgKv : cfg.nsg;
    this.bt = keyOwner ? cfg.btKv : kind === 'dq' ? cfg.btDq : cfg.bt;
    this.wg = 32 * this.nsg;
    const bo = 16 * this.nsg;
    if (PAD % bo !== 0 || PAD % this.bt !== 0 || this.bt % 16 !== 0) throw new RangeError(`flash attention (subgroup matrix): tiles ${bo} / ${this.bt} must divide ${PAD} and be multiples of 16`);
    const rows = padTo(keyOwner ? dims.S : dims.T);
    this.dispatch = [rows / bo, dims.H, dims.B];
    this.shaderKey = `tsft_flash_sg_${kind}_d${headDim}_${sgConfigKey(cfg)}`;
  }

  /** Input names, in binding order. */
  static inputs(kind: Kind): string[] {
    switch (kind) {
      case 'stats': return ['Q16', 'K16', 'MI'];
      case 'out': return ['Q16', 'K16', 'V16', 'MI', 'ST'];
      default: return ['Q16', 'K16', 'V16', 'DO16', 'MI', 'ST', 'DL'];
    }
  }

  /** Workgroup memory in bytes. */
  workgroupBytes(): number {
    const D = this.headDim, RS = D / 8 + 1, BT = this.bt, BO = 16 * this.nsg;
    const SS = BT + 4, PS = BT / 8 + 1;
    const k = this.kind;
    const tl = Math.max(k === 'stats' ? BT : 2 * BT, BO) * RS * 16;
    const sc = (k === 'stats' || k === 'out' || k === 'dv' ? 1 : 2) * this.nsg * 16 * SS * 4;
    const pc = (k === 'stats' ? 0 : k === 'kv' ? 2 : 1) * this.nsg * 16 * PS * 16;
    return tl + sc + pc + 16;
  }

  getUserCode(): string {
    const f = new Frag(this.cfg.emulate);
    const body = this.kind === 'stats' || this.kind === 'out' || this.kind === 'dq' ? this.queryOwner(f) : this.keyOwner(f);
    return `${f.header()}\n${body}`;
  }

  private common(f: Frag): { decl: string; stage: (src: string, g0: string, n: number | string, w0: string) => string } {
    const D = this.headDim, DV = D / 8, RS = DV + 1, BT = this.bt, NSG = this.nsg, BO = 16 * NSG;
    const SS = BT + 4, PS = BT / 8 + 1;
    const k = this.kind;
    const ins = FlashSgProgram.inputs(k);
    const types: Record<string, string> = { Q16: 'array<vec4<u32>>', K16: 'array<vec4<u32>>', V16: 'array<vec4<u32>>', DO16: 'array<vec4<u32>>', MI: 'array<i32>', ST: 'array<f32>', DL: 'array<f32>' };
    const nsc = k === 'stats' || k === 'out' || k === 'dv' ? 1 : 2;
    const npc = k === 'stats' ? 0 : k === 'kv' ? 2 : 1;
    const tlRows = Math.max(k === 'stats' ? BT : 2 * BT, BO);
    void f;
    const decl = `${UNIFORMS}
${ins.map((n, i) => `@group(0) @binding(${i}) var<storage, read> ${n} : ${types[n]};`).join('\n')}
@group(0) @binding(${ins.length}) var<storage, read_write> OUT : array<f32>;
@group(0) @binding(${ins.length + 1}) var<uniform> u : U;

const D = ${D}u;
const DV = ${DV}u;      // vec4<u32> (8 halves) per row in global memory
const RS = ${RS}u;      // staged row stride in vec4 (one pad against bank conflicts)
const BT = ${BT}u;      // rows of the staged operand per tile
const BO = ${BO}u;      // owner rows per workgroup (16 per subgroup)
const WG = ${this.wg}u;
const SS = ${SS}u;      // f32 scratch row stride
const PS = ${PS}u;      // f16 scratch row stride in vec4
const HALF = ${BT / 2}u; // columns per thread in the lane steps
const SCALE = ${1 / Math.sqrt(D)};
const MASKED = ${MASKED.toExponential()};
const FAR = -1e30;

var<workgroup> Tl : array<vec4<u32>, ${tlRows * RS}>;
var<workgroup> Sc : array<f32, ${nsc * NSG * 16 * SS}>;
${npc ? `var<workgroup> Pc : array<vec4<u32>, ${npc * NSG * 16 * PS}>;` : ''}
var<workgroup> wgU : u32;`;
    const stage = (src: string, g0: string, n: number | string, w0: string) => `for (var e = lid; e < (${n}) * DV; e += WG) {
        let r = e / DV;
        Tl[${w0} + r * RS + e % DV] = ${src}[(${g0} + r) * DV + e % DV];
      }`;
    return { decl, stage };
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
    const { decl, stage } = this.common(f);
    const k = this.kind;
    const D = this.headDim, NF = D / 16, NT = this.bt / 16, BT = this.bt;
    const pack = (vals: string[]) => `vec4<u32>(${range(4).map((i) => `pack2x16float(vec2<f32>(${vals[2 * i]}, ${vals[2 * i + 1]}))`).join(', ')})`;
    // lane step: thread lid serves region lr (a subgroup's 16 rows), row lrow, columns lh·HALF..
    const laneStep = k === 'stats'
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
        Pc[lr * 16u * PS + lrow * PS + lh * (HALF / 8u) + g] = ${pack(range(8).map((i) => `v[${i}]`))};
      }`;
    return `${decl}

${this.entry()}
  let b = wid.z;
  let h = wid.y;
  let q0 = wid.x * BO;
  if (q0 >= u.T) { return; }
  let G = u.H / u.KV;
  let qr0 = (b * u.H + h) * u.Tp;
  let kr0 = (b * u.KV + h / G) * u.Sp;
  let lr = lid / 32u;
  let lrow = lid % 16u;
  let lh = (lid % 32u) / 16u;
  let tq = q0 + lr * 16u + lrow;
  let srow = (lr * 16u + lrow) * SS;
  let DP = ${16 * this.nsg}u * SS;
  if (lid == 0u) {
    var end = min(u.S, u.past + min(q0 + BO, u.T));
    if (u32(MI[u.B * u.S + b]) > u.past + q0) { end = u.S; }
    wgU = end;
  }
  let kEnd = workgroupUniformLoad(&wgU);
  ${stage('Q16', 'qr0 + q0', 'BO', '0u')}
  workgroupBarrier();
  ${lines(NF, (c) => `let qf${c} = ${f.load('SL', 'Tl', 'row', `(sg * 16u) * RS + ${2 * c}u`, 'RS')};`)}
  ${k === 'dq' ? `workgroupBarrier();
  ${stage('DO16', 'qr0 + q0', 'BO', '0u')}
  workgroupBarrier();
  ${lines(NF, (c) => `let df${c} = ${f.load('SL', 'Tl', 'row', `(sg * 16u) * RS + ${2 * c}u`, 'RS')};`)}` : ''}
  ${k === 'stats' ? 'var lm = FAR;\n  var ll = 0.0;' : `let rm = ST[2u * (qr0 + tq)];
  let rl = ST[2u * (qr0 + tq) + 1u];
  ${k === 'dq' ? 'let rd = DL[qr0 + tq];' : ''}
  ${lines(NF, (c) => `var acc${c} = SA();`)}`}
  for (var k0 = 0u; k0 < kEnd; k0 += BT) {
    workgroupBarrier();
    ${stage('K16', 'kr0 + k0', 'BT', '0u')}
    ${k !== 'stats' ? stage('V16', 'kr0 + k0', 'BT', 'BT * RS') : ''}
    workgroupBarrier();
    ${lines(NT, (j) => `{
      var s = SA();
      ${lines(NF, (c) => `s = ${f.mma(`qf${c}`, f.load('SR', 'Tl', 'col', `${16 * j}u * RS + ${2 * c}u`, 'RS'), 's')};`)}
      ${f.store('Sc', `sg * 16u * SS + ${16 * j}u`, 's', 'SS')}
      ${k === 'dq' ? `var dp = SA();
      ${lines(NF, (c) => `dp = ${f.mma(`df${c}`, f.load('SR', 'Tl', 'col', `BT * RS + ${16 * j}u * RS + ${2 * c}u`, 'RS'), 'dp')};`)}
      ${f.store('Sc', `DP + sg * 16u * SS + ${16 * j}u`, 'dp', 'SS')}` : ''}
    }`)}
    workgroupBarrier();
    {
      ${laneStep}
    }
    ${k === 'stats' ? '' : `workgroupBarrier();
    ${lines(NT, (j) => `{
      let pf = ${f.load('SL', 'Pc', 'row', `sg * 16u * PS + ${2 * j}u`, 'PS')};
      ${lines(NF, (c) => `acc${c} = ${f.mma('pf', f.load('SR', 'Tl', 'row', `${k === 'out' ? 'BT * RS + ' : ''}${16 * j}u * RS + ${2 * c}u`, 'RS'), `acc${c}`)};`)}
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
  }` : lines(NF, (c) => f.store('OUT', `(qr0 + q0 + sg * 16u) * D + ${16 * c}u`, `acc${c}`, 'D'))}
}

/** The score of key \`key\` for query row \`t\` (batch b): scaled if visible, MASKED if not, FAR past the keys. */
fn maskScore(s : f32, key : u32, t : u32, b : u32) -> f32 {
  if (key >= u.S) { return FAR; }
  if (MI[b * u.S + key] != 0 && key <= u.past + t) { return s * SCALE; }
  return MASKED;
}
`;
  }

  /** kv, dk, dv: a workgroup owns BO keys of one KV head, for one query head, and walks the query tiles. */
  private keyOwner(f: Frag): string {
    const { decl, stage } = this.common(f);
    const k = this.kind;
    const dk = k !== 'dv', dv = k !== 'dk';
    const D = this.headDim, NF = D / 16, NT = this.bt / 16;
    const pack = (vals: string[]) => `vec4<u32>(${range(4).map((i) => `pack2x16float(vec2<f32>(${vals[2 * i]}, ${vals[2 * i + 1]}))`).join(', ')})`;
    // Pc regions: P at 0 (dv), dS at PD (dk)
    const PD = dv ? `${16 * this.nsg}u * PS` : '0u';
    return `${decl}

${this.entry()}
  let b = wid.z;
  let h = wid.y;
  let k0 = wid.x * BO;
  if (k0 >= u.S) { return; }
  let G = u.H / u.KV;
  let qr0 = (b * u.H + h) * u.Tp;
  let kr0 = (b * u.KV + h / G) * u.Sp;
  let lr = lid / 32u;
  let lrow = lid % 16u;
  let lh = (lid % 32u) / 16u;
  let kk = k0 + lr * 16u + lrow;        // the key this thread serves in lane steps
  let srow = (lr * 16u + lrow) * SS;
  let DP = ${16 * this.nsg}u * SS;
  var keyOk = false;
  if (kk < u.S) { keyOk = MI[b * u.S + kk] != 0; }
  if (lid == 0u) { wgU = u32(MI[u.B * u.S + b]); }
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
  for (var q0 = qStart; q0 < u.T; q0 += BT) {
    if (u.past + q0 + BT - 1u < k0 && u.past + q0 >= first) { continue; }
    workgroupBarrier();
    ${stage('Q16', 'qr0 + q0', 'BT', '0u')}
    ${stage('DO16', 'qr0 + q0', 'BT', 'BT * RS')}
    workgroupBarrier();
    ${lines(NT, (j) => `{
      var s = SA();
      ${lines(NF, (c) => `s = ${f.mma(`kf${c}`, f.load('SR', 'Tl', 'col', `${16 * j}u * RS + ${2 * c}u`, 'RS'), 's')};`)}
      ${f.store('Sc', `sg * 16u * SS + ${16 * j}u`, 's', 'SS')}
      ${dk ? `var dp = SA();
      ${lines(NF, (c) => `dp = ${f.mma(`vf${c}`, f.load('SR', 'Tl', 'col', `BT * RS + ${16 * j}u * RS + ${2 * c}u`, 'RS'), 'dp')};`)}
      ${f.store('Sc', `DP + sg * 16u * SS + ${16 * j}u`, 'dp', 'SS')}` : ''}
    }`)}
    workgroupBarrier();
    for (var g = 0u; g < HALF / 8u; g++) {
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
          p = exp((x - ST[2u * row]) - ST[2u * row + 1u]);
          ${dk ? 'sv[i] = p * (Sc[DP + srow + col] - DL[row]) * SCALE;' : ''}
        }
        ${dv ? 'pv[i] = p;' : ''}
      }
      ${dv ? `Pc[lr * 16u * PS + lrow * PS + lh * (HALF / 8u) + g] = ${pack(range(8).map((i) => `pv[${i}]`))};` : ''}
      ${dk ? `Pc[${PD} + lr * 16u * PS + lrow * PS + lh * (HALF / 8u) + g] = ${pack(range(8).map((i) => `sv[${i}]`))};` : ''}
    }
    workgroupBarrier();
    ${lines(NT, (j) => `{
      ${dv ? `let pf = ${f.load('SL', 'Pc', 'row', `sg * 16u * PS + ${2 * j}u`, 'PS')};
      ${lines(NF, (c) => `dv${c} = ${f.mma('pf', f.load('SR', 'Tl', 'row', `BT * RS + ${16 * j}u * RS + ${2 * c}u`, 'RS'), `dv${c}`)};`)}` : ''}
      ${dk ? `let sf = ${f.load('SL', 'Pc', 'row', `${PD} + sg * 16u * PS + ${2 * j}u`, 'PS')};
      ${lines(NF, (c) => `dk${c} = ${f.mma('sf', f.load('SR', 'Tl', 'row', `${16 * j}u * RS + ${2 * c}u`, 'RS'), `dk${c}`)};`)}` : ''}
    }`)}
  }
  let dkAt = ((b * u.H + h) * u.Sp + k0 + sg * 16u) * D;
  let dvAt = u.B * u.H * u.Sp * D + dkAt;
  ${dk ? lines(NF, (c) => f.store('OUT', `dkAt + ${16 * c}u`, `dk${c}`, 'D')) : ''}
  ${dv ? lines(NF, (c) => f.store('OUT', `dvAt + ${16 * c}u`, `dv${c}`, 'D')) : ''}
}
`;
  }
}

/** f32 [N, T, D] → f16 [N, Tp, D] packed (8 halves per vec4<u32>), rows ≥ T zero. */
export class HalfPadProgram implements OwnKernel {
  shaderKey: string;
  dispatch: [number, number, number];

  constructor(readonly headDim: number, readonly n: number, readonly T: number) {
    this.shaderKey = `tsft_flash_sg_halfpad_d${headDim}`;
    this.dispatch = gridFor((n * padTo(T) * headDim) / 8, 256);
  }

  getUserCode(): string {
    return `struct P { T : u32, Tp : u32, n : u32, gx : u32, }
@group(0) @binding(0) var<storage, read> X : array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> Y : array<vec4<u32>>;
@group(0) @binding(2) var<uniform> p : P;
const DV = ${this.headDim / 8}u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid : vec3<u32>) {
  let i = gid.y * p.gx * 256u + gid.x;
  if (i >= p.n) { return; }
  let row = i / DV;
  let t = row % p.Tp;
  var o = vec4<u32>(0u);
  if (t < p.T) {
    let src = ((row / p.Tp) * p.T + t) * DV * 2u + (i % DV) * 2u;
    let a = X[src];
    let c = X[src + 1u];
    o = vec4<u32>(pack2x16float(a.xy), pack2x16float(a.zw), pack2x16float(c.xy), pack2x16float(c.zw));
  }
  Y[i] = o;
}`;
  }

  uniform(): Uint32Array {
    return Uint32Array.from([this.T, padTo(this.T), (this.n * padTo(this.T) * this.headDim) / 8, this.dispatch[0]]);
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

/**
 * Records the dispatches, in order, into one compute pass of tfjs's command encoder (each dispatch sees
 * what the previous ones wrote), then submits once: one submit per attention pass instead of one per kernel.
 */
export function runOwn(dispatches: OwnDispatch[]): void {
  const backend = webgpuBackend();
  const device = backend.device;
  const internals = backend as unknown as BackendInternals;
  const encoded = dispatches.map(({ kernel, tensors, uniform }) => {
    const size = Math.max(16, Math.ceil(uniform.byteLength / 16) * 16);
    const ubuf = backend.bufferManager.acquireBuffer(size, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
    device.queue.writeBuffer(ubuf, 0, uniform.buffer, uniform.byteOffset, uniform.byteLength);
    internals.uniformPendingDisposal.push(ubuf);
    const pipeline = pipelineFor(device, kernel);
    const bindGroup = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [...tensors.map((t) => ({ buffer: gpuBufferOf(t) })), { buffer: ubuf }].map((resource, binding) => ({ binding, resource })),
    });
    return { pipeline, bindGroup, dispatch: kernel.dispatch };
  });
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  const pass = internals.commandEncoder!.beginComputePass();
  for (const e of encoded) {
    pass.setPipeline(e.pipeline);
    pass.setBindGroup(0, e.bindGroup);
    pass.dispatchWorkgroups(...e.dispatch);
  }
  pass.end();
  backend.submitQueue();
}

/** The {@link runOwn} dispatch that rounds f32 [B, N, T, D] to packed f16 [B·N·Tp·D/2] int32 words (rows past T zero) into a new tensor. */
function halfPadDispatch(x: tf.Tensor4D): [OwnDispatch, tf.Tensor] {
  const [B, N, T, D] = x.shape;
  const kernel = new HalfPadProgram(D, B * N, T);
  const out = uninitialised([(B * N * padTo(T) * D) / 2], 'int32');
  return [{ kernel, tensors: [x, out], uniform: kernel.uniform() }, out];
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

/** f32 [B, N, T, D] → packed f16 [B·N·Tp·D/2] int32 words, rows past T zero. */
export function halfPadded(x: tf.Tensor4D): tf.Tensor {
  const [d, out] = halfPadDispatch(x);
  runOwn([d]);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// The tfjs-level function

export interface FlashSgOptions {
  attentionMask?: tf.Tensor2D;
  past: number;
  config?: SgAttentionConfig;
}

/** Workgroup bytes the largest kernel of `cfg` needs at head dim D. */
export function sgWorkgroupBytes(D: number, cfg: SgAttentionConfig): number {
  const dims = { B: 1, H: 1, T: 1, S: 1 };
  const kinds: Kind[] = ['stats', 'out', 'dq', ...(cfg.kvSplit ? (['dk', 'dv'] as Kind[]) : (['kv'] as Kind[]))];
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
  const cfg = opts.config ?? DEFAULT_SG_CONFIG;
  const past = opts.past;
  const Tp = padTo(T), Sp = padTo(S);
  const uni = uniformWords(B, H, KV, T, S, past);
  const m = opts.attentionMask;
  const attend = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [qi, ki, vi] = args as tf.Tensor4D[];
    const save = args[3] as tf.GradSaveFunc;
    // [mask (0/1) of B·S keys | first visible key of each batch row]
    const maskI = m ? (m.dtype === 'int32' ? m : tf.cast(m, 'int32')) : tf.ones([B, S], 'int32');
    const mi = uninitialised([B * S + B], 'int32');
    const [hq, q16] = halfPadDispatch(qi), [hk, k16] = halfPadDispatch(ki), [hv, v16] = halfPadDispatch(vi);
    const stats = uninitialised([B * H * Tp * 2]);
    const oPad = uninitialised([B, H, Tp, D]);
    runOwn([
      { kernel: new MaskInfoProgram(B, S), tensors: [maskI, mi], uniform: Uint32Array.from([B, S, 0, 0]) },
      hq, hk, hv,
      { kernel: new FlashSgProgram('stats', D, cfg, { B, H, T, S }), tensors: [q16, k16, mi, stats], uniform: uni },
      { kernel: new FlashSgProgram('out', D, cfg, { B, H, T, S }), tensors: [q16, k16, v16, mi, stats, oPad], uniform: uni },
    ]);
    if (maskI !== m) maskI.dispose();
    save([q16, k16, v16, mi, stats, oPad]);
    const value = (Tp === T ? tf.reshape(oPad, [B, H, T, D]) : tf.slice(oPad, [0, 0, 0, 0], [B, H, T, D])) as tf.Tensor4D;
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sq, sk, sv, smi, sst, so] = saved;
        const prep = new PrepProgram(D, B * H, T);
        const do16 = uninitialised([(B * H * Tp * D) / 2], 'int32');
        const delta = uninitialised([B * H * Tp]);
        const ins = [sq, sk, sv, do16, smi, sst, delta];
        const dqPad = uninitialised([B, H, Tp, D]);
        const dkv = uninitialised([2 * B * H * Sp * D]);
        const gs = new GroupSumProgram(D, B, H, KV, S);
        const dk = uninitialised([B, KV, S, D]);
        const dv = uninitialised([B, KV, S, D]);
        runOwn([
          { kernel: prep, tensors: [dy, so, do16, delta], uniform: prep.uniform() },
          { kernel: new FlashSgProgram('dq', D, cfg, { B, H, T, S }), tensors: [...ins, dqPad], uniform: uni },
          ...(cfg.kvSplit ? (['dk', 'dv'] as Kind[]) : (['kv'] as Kind[])).map((kind) => ({ kernel: new FlashSgProgram(kind, D, cfg, { B, H, T, S }), tensors: [...ins, dkv], uniform: uni })),
          { kernel: gs, tensors: [dkv, dk, dv], uniform: gs.uniform() },
        ]);
        const dq = Tp === T ? tf.reshape(dqPad, [B, H, T, D]) : tf.slice(dqPad, [0, 0, 0, 0], [B, H, T, D]);
        return [dq, dk, dv];
      },
    };
  });
  return attend(q, k, v) as tf.Tensor4D;
}

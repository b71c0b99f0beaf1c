// AdamW over all parameters in one pass, as torch.optim.AdamW (decoupled weight decay, bias-corrected
// moments), and the global gradient L2 norm with torch's clip coefficient, so a trainer can clip without
// reading a single gradient back:
//   norm, coef = globalGradNorm(grads, maxNorm)       // two passes: block sums of g², then their sum
//   adamwStepFused(slots, hyper, coef)                // g·coef, then the update below
// Per element (torch's _single_tensor_adam with decoupled decay):
//   p ← p·(1 − lr·wd·[decays])
//   m ← m + (g − m)·(1 − β1);  v ← v·β2 + g²·(1 − β2)
//   p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
// The update writes p, m and v in place, so it runs as our own pipeline on tfjs's GPUDevice (tfjs's
// runWebGPUProgram has one output): each dispatch binds a group of parameters (4 buffers each, as many
// as maxStorageBuffersPerShaderStage allows) and its workgroups walk all of them. Elsewhere than webgpu:
// the same math in tfjs ops, parameter by parameter.

import * as tf from '@tensorflow/tfjs-core';
import '../gradients';
import { assertFloat32, blockSumWgsl, FLAT_WORKGROUP, gridFor, GroupedProgram, onWebGpu, runProgram, uninitialised, webgpuBackend, type Uniform, pipelineFor } from './program';

/** Hyper-parameters of one step. */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based count of this step (torch's state['step'] after its increment) */
  step: number;
}

/** One parameter with its gradient and moments; the variables are updated in place. */
export interface AdamWSlot {
  param: tf.Variable;
  grad: tf.Tensor;
  /** first moment (torch's exp_avg), same shape as param */
  expAvg: tf.Variable;
  /** second moment (torch's exp_avg_sq) */
  expAvgSq: tf.Variable;
  /** apply weight decay to this parameter (false for biases and norms) */
  decay: boolean;
}

const WG = 256;
/** Elements per thread of the update (a workgroup covers WG·ELEMS consecutive elements). */
const ELEMS = 8;
const BLOCK = WG * ELEMS;
/** Elements per workgroup of the squared-gradient sums. */
const SQ_BLOCK = WG * 16;
/** At most this many parameters per dispatch, whatever the device allows. */
const MAX_GROUP = 8;

// ---------------------------------------------------------------------------------------------------
// Global gradient norm: block sums of g² (several gradients per dispatch, into one partials tensor at an
// offset), then one workgroup sums the partials → [norm, clip coefficient].

/** result[pOff + b] = Σ g² over block b of the group's gradients G0..G{k−1} (block ranges f0 < f1 < ...). */
class GradSquareSumProgram extends GroupedProgram {
  declare uniforms: string;

  constructor(readonly count: number, blocks: number, total: number) {
    super(Array.from({ length: count }, (_, s) => `G${s}`), [total], `tsft_grad_sq_${count}`, blocks, WG);
    this.uniforms = `pOff : i32, blocks : i32, ${this.variableNames.map((_, k) => `n${k} : i32, f${k} : i32,`).join(' ')}`;
  }

  getUserCode(): string {
    const slots = this.variableNames.map((name, k) => {
      const end = k + 1 < this.count ? `uniforms.f${k + 1}` : 'uniforms.blocks';
      return `if (block >= uniforms.f${k} && block < ${end}) {
        let base = (block - uniforms.f${k}) * ${SQ_BLOCK} + tid;
        for (var e = 0; e < ${SQ_BLOCK / WG}; e = e + 1) {
          let i = base + e * ${WG};
          if (i < uniforms.n${k}) { let g = ${name}[i]; s = s + g * g; }
        }
      }`;
    });
    return `
    ${blockSumWgsl(WG)}
    fn main() {
      let block = ${FLAT_WORKGROUP};
      let tid = i32(localIndex);
      var s = 0.0;
      ${slots.join(' else ')}
      let total = kBlockSum(s);
      if (tid == 0 && block < uniforms.blocks) { result[uniforms.pOff + block] = total; }
    }`;
  }
}

/** result = [√Σ partials, clip coefficient min(1, maxNorm / (norm + 1e-6)) (1 without maxNorm)]. */
class GradNormProgram extends GroupedProgram {
  override uniforms = 'n : i32, maxNorm : f32,';

  constructor() {
    super(['P'], [2], 'tsft_grad_norm', 1, WG);
  }

  getUserCode(): string {
    return `
    ${blockSumWgsl(WG)}
    fn main() {
      let tid = i32(localIndex);
      var s = 0.0;
      for (var i = tid; i < uniforms.n; i = i + ${WG}) { s = s + P[i]; }
      let norm = sqrt(kBlockSum(s));
      if (tid == 0) {
        result[0] = norm;
        result[1] = select(1.0, min(1.0, uniforms.maxNorm / (norm + 1e-6)), uniforms.maxNorm > 0.0);
      }
    }`;
  }
}

/**
 * Sum of many same-shape tensors by tf.addN over groups of 8: one addN over hundreds of tensors binds
 * one storage buffer per input on webgpu, past the device's limit (16 on the H100).
 */
function addMany(ts: tf.Tensor[]): tf.Tensor {
  let level = ts;
  while (level.length > 1) {
    const next: tf.Tensor[] = [];
    for (let i = 0; i < level.length; i += 8) next.push(level.length - i === 1 ? level[i] : tf.addN(level.slice(i, i + 8)));
    level = next;
  }
  return level[0];
}

/** {@link globalGradNorm} in tfjs ops (as src/train/optimizer.ts globalNorm / clipGradients): the fallback off webgpu. */
export function globalGradNormStock(grads: tf.Tensor[], maxNorm = 0): { norm: tf.Scalar; clipCoef: tf.Scalar } {
  return tf.tidy(() => {
    const live = grads.filter((g) => g.size > 0);
    const norm = tf.sqrt(live.length ? addMany(live.map((g) => tf.sum(tf.square(g)))) : tf.scalar(0)) as tf.Scalar;
    const clipCoef = (maxNorm > 0 ? tf.minimum(1, tf.div(maxNorm, tf.add(norm, 1e-6))) : tf.onesLike(norm)) as tf.Scalar;
    return { norm, clipCoef };
  });
}

/** How many buffers of one kind a dispatch may bind (besides `reserved` others), capped at MAX_GROUP. */
function groupSize(perItem: number, reserved: number): number {
  const limit = webgpuBackend().device.limits.maxStorageBuffersPerShaderStage;
  const n = Math.min(MAX_GROUP, Math.floor((limit - reserved) / perItem));
  if (n < 1) throw new RangeError(`adamw: the device allows only ${limit} storage buffers per shader stage`);
  return n;
}

/**
 * Global L2 norm of all gradients (torch's clip_grad_norm_ total_norm) and the clip coefficient
 * min(1, maxNorm / (norm + 1e-6)) — 1 when maxNorm is 0 or absent — as float32 scalars on the device.
 *
 * @example
 * const { norm, clipCoef } = globalGradNorm([...grads.values()], 1.0);
 * adamwStepFused(slots, hyper, clipCoef);                        // no readback
 * log({ grad_norm: (await norm.data())[0] });                    // later, when logging
 */
export function globalGradNorm(grads: tf.Tensor[], maxNorm = 0): { norm: tf.Scalar; clipCoef: tf.Scalar } {
  const live = grads.filter((g) => g.size > 0);
  if (!onWebGpu() || live.length === 0) return globalGradNormStock(live, maxNorm);
  assertFloat32('globalGradNorm', ...live);
  const G = groupSize(1, 1);
  const blocksOf = (g: tf.Tensor) => Math.ceil(g.size / SQ_BLOCK);
  const total = live.reduce((a, g) => a + blocksOf(g), 0);
  const partials = uninitialised([total]);
  let pOff = 0;
  for (let s0 = 0; s0 < live.length; s0 += G) {
    const group = live.slice(s0, s0 + G);
    let first = 0;
    const slotUniforms: Uniform[] = [];
    for (const g of group) {
      slotUniforms.push({ type: 'int32', data: [g.size] }, { type: 'int32', data: [first] });
      first += blocksOf(g);
    }
    runProgram(new GradSquareSumProgram(group.length, first, total), group, [
      { type: 'int32', data: [pOff] },
      { type: 'int32', data: [first] },
      ...slotUniforms,
    ], 'float32', partials);
    pOff += first;
  }
  const out = runProgram(new GradNormProgram(), [partials], [
    { type: 'int32', data: [total] },
    { type: 'float32', data: [maxNorm] },
  ]);
  partials.dispose();
  const [norm, clipCoef] = tf.unstack(out) as tf.Scalar[];
  out.dispose();
  return { norm, clipCoef };
}

// ---------------------------------------------------------------------------------------------------
// The update: our own pipeline (WGSL module, bind group, dispatch) recorded into tfjs's command encoder.

/** Bytes of the Hyper uniform before the per-slot array. */
const HYPER_HEAD = 48;

/** AdamW over `slots` parameters bound as p{s}, g{s}, m{s}, v{s}; a workgroup updates BLOCK elements of one. */
class AdamWProgram {
  readonly workgroupSize: [number, number, number] = [WG, 1, 1];
  readonly shaderKey: string;
  readonly dispatch: [number, number, number];

  constructor(readonly slots: number, blocks: number) {
    this.shaderKey = `tsft_adamw_${slots}`;
    this.dispatch = gridFor(blocks, 1);
  }

  /** Binding 0: Hyper (uniform), 1: scale, then p, g, m, v per slot. */
  getUserCode(): string {
    const decl: string[] = [];
    const body: string[] = [];
    for (let s = 0; s < this.slots; s++) {
      const b = 2 + 4 * s;
      decl.push(
        `@group(0) @binding(${b}) var<storage, read_write> p${s} : array<f32>;`,
        `@group(0) @binding(${b + 1}) var<storage, read> g${s} : array<f32>;`,
        `@group(0) @binding(${b + 2}) var<storage, read_write> m${s} : array<f32>;`,
        `@group(0) @binding(${b + 3}) var<storage, read_write> v${s} : array<f32>;`,
      );
      const end = s + 1 < this.slots ? `hp.slot[${s + 1}].y` : 'hp.blocks';
      body.push(`if (block >= hp.slot[${s}].y && block < ${end}) {
        let decay = select(1.0, hp.decayFactor, hp.slot[${s}].z != 0u);
        let base = (block - hp.slot[${s}].y) * ${BLOCK}u + lid;
        for (var e = 0u; e < ${ELEMS}u; e = e + 1u) {
          let i = base + e * ${WG}u;
          if (i < hp.slot[${s}].x) {
            let g = g${s}[i] * sc;
            let m = m${s}[i] + (g - m${s}[i]) * hp.oneMinusBeta1;
            let v = v${s}[i] * hp.beta2 + g * g * hp.oneMinusBeta2;
            m${s}[i] = m;
            v${s}[i] = v;
            p${s}[i] = p${s}[i] * decay - hp.stepSize * (m / (sqrt(v) / hp.bc2Sqrt + hp.eps));
          }
        }
      }`);
    }
    return `
    struct Hyper {
      stepSize : f32, beta2 : f32, eps : f32, bc2Sqrt : f32,
      decayFactor : f32, oneMinusBeta1 : f32, oneMinusBeta2 : f32, useScale : u32,
      blocks : u32, pad0 : u32, pad1 : u32, pad2 : u32,
      slot : array<vec4<u32>, ${this.slots}>,     // (size, first block, decays, 0)
    };
    @group(0) @binding(0) var<uniform> hp : Hyper;
    @group(0) @binding(1) var<storage, read> scale : array<f32>;
    ${decl.join('\n    ')}

    @compute @workgroup_size(${WG}, 1, 1)
    fn main(@builtin(workgroup_id) wid : vec3<u32>, @builtin(num_workgroups) nwg : vec3<u32>,
            @builtin(local_invocation_index) lid : u32) {
      let block = wid.y * nwg.x + wid.x;
      if (block >= hp.blocks) { return; }
      let sc = select(1.0, scale[0], hp.useScale != 0u);
      ${body.join(' else ')}
    }`;
  }

  /** The Hyper uniform's bytes. */
  hyperBytes(hp: AdamWHyper, useScale: boolean, blocks: number, slots: { size: number; first: number; decay: boolean }[]): ArrayBuffer {
    const buf = new ArrayBuffer(HYPER_HEAD + 16 * this.slots);
    const f = new Float32Array(buf), u = new Uint32Array(buf);
    f[0] = hp.lr / (1 - hp.beta1 ** hp.step);
    f[1] = hp.beta2;
    f[2] = hp.eps;
    f[3] = Math.sqrt(1 - hp.beta2 ** hp.step);
    f[4] = 1 - hp.lr * hp.weightDecay;
    f[5] = 1 - hp.beta1;
    f[6] = 1 - hp.beta2;
    u[7] = useScale ? 1 : 0;
    u[8] = blocks;
    slots.forEach((s, i) => u.set([s.size, s.first, s.decay ? 1 : 0, 0], HYPER_HEAD / 4 + 4 * i));
    return buf;
  }
}


/** tfjs-backend-webgpu internals the in-place update needs (private in its typings). */
interface BackendInternals {
  commandEncoder: GPUCommandEncoder | null;
  uniformPendingDisposal: GPUBuffer[];
}

/** The GPU buffer of `t`, uploaded if needed; for a variable, first made its own (no other tensor shares it). */
function bufferOf(t: tf.Tensor, writable: boolean): GPUBuffer {
  const backend = webgpuBackend();
  if (writable) {
    if (!(t instanceof tf.Variable)) throw new TypeError('adamwStepFused: parameters and moments must be tf.Variable');
    if (backend.refCount(t.dataId) > 1) tf.tidy(() => t.assign(tf.add(t, 0)));
  }
  backend.uploadToGPU(t.dataId);
  const data = backend.tensorMap.get(t.dataId);
  // written on the GPU below: a copy cached on the CPU by an earlier read would go stale
  if (writable) data.values = null as unknown as typeof data.values;
  return data.resource as GPUBuffer;
}

/** The update in tfjs ops, parameter by parameter (as src/train/optimizer.ts AdamW.step): the fallback off webgpu. */
export function adamwStepStock(slots: AdamWSlot[], hp: AdamWHyper, gradScale?: tf.Tensor): void {
  const bc1 = 1 - hp.beta1 ** hp.step;
  const bc2Sqrt = Math.sqrt(1 - hp.beta2 ** hp.step);
  for (const { param: p, grad, expAvg: m, expAvgSq: v, decay } of slots) {
    tf.tidy(() => {
      const g = gradScale ? tf.mul(grad, gradScale) : grad;
      const decayed = decay && hp.weightDecay > 0 ? tf.mul(p, 1 - hp.lr * hp.weightDecay) : p;
      const m1 = tf.add(m, tf.mul(tf.sub(g, m), 1 - hp.beta1));
      const v1 = tf.add(tf.mul(v, hp.beta2), tf.mul(tf.square(g), 1 - hp.beta2));
      const denom = tf.add(tf.div(tf.sqrt(v1), bc2Sqrt), hp.eps);
      p.assign(tf.sub(decayed, tf.mul(tf.div(m1, denom), hp.lr / bc1)));
      m.assign(m1);
      v.assign(v1);
    });
  }
}

/**
 * One AdamW step over all `slots` (torch.optim.AdamW semantics), updating each param, expAvg and
 * expAvgSq in place: on webgpu one pass over every buffer (a dispatch per group of parameters), tfjs
 * ops elsewhere. `gradScale` (a float32 scalar tensor, e.g. globalGradNorm's clipCoef) multiplies every
 * gradient first. The step counter is the caller's: pass hyper.step = 1 on the first call.
 *
 * @example
 * const slots = names.map((n) => ({ param: params.get(n)!, grad: grads.get(n)!, expAvg: m.get(n)!, expAvgSq: v.get(n)!, decay: decays(n) }));
 * const { clipCoef } = globalGradNorm(slots.map((s) => s.grad), 1.0);
 * adamwStepFused(slots, { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: ++step }, clipCoef);
 */
export function adamwStepFused(slots: AdamWSlot[], hp: AdamWHyper, gradScale?: tf.Tensor): void {
  for (const s of slots) {
    const shapes = [s.grad.shape, s.expAvg.shape, s.expAvgSq.shape];
    if (!shapes.every((sh) => tf.util.arraysEqual(sh, s.param.shape))) {
      throw new RangeError(`adamwStepFused: param ${s.param.name} ${s.param.shape}: grad/moment shapes ${shapes.join(' | ')} differ`);
    }
  }
  if (gradScale && gradScale.size !== 1) throw new RangeError(`adamwStepFused: gradScale must hold one value, got shape ${gradScale.shape}`);
  if (!onWebGpu()) return adamwStepStock(slots, hp, gradScale);
  const live = slots.filter((s) => s.param.size > 0);
  if (live.length === 0) return;
  for (const s of live) assertFloat32('adamwStepFused', s.param, s.grad, s.expAvg, s.expAvgSq);
  if (gradScale) assertFloat32('adamwStepFused', gradScale);

  const backend = webgpuBackend();
  const device = backend.device;
  const G = groupSize(4, 1);
  const internals = backend as unknown as BackendInternals;
  const groups: { program: AdamWProgram; entries: GPUBindGroupEntry[]; uniform: ArrayBuffer }[] = [];
  for (let s0 = 0; s0 < live.length; s0 += G) {
    const group = live.slice(s0, s0 + G);
    const layout: { size: number; first: number; decay: boolean }[] = [];
    const entries: GPUBindGroupEntry[] = [];
    let blocks = 0;
    group.forEach((s, i) => {
      layout.push({ size: s.param.size, first: blocks, decay: s.decay && hp.weightDecay !== 0 });
      blocks += Math.ceil(s.param.size / BLOCK);
      const b = 2 + 4 * i;
      entries.push(
        { binding: b, resource: { buffer: bufferOf(s.param, true) } },
        { binding: b + 1, resource: { buffer: bufferOf(s.grad, false) } },
        { binding: b + 2, resource: { buffer: bufferOf(s.expAvg, true) } },
        { binding: b + 3, resource: { buffer: bufferOf(s.expAvgSq, true) } },
      );
    });
    // without a scale, the first gradient stands in (bound read-only twice; never read)
    entries.push({ binding: 1, resource: { buffer: gradScale ? bufferOf(gradScale, false) : bufferOf(group[0].grad, false) } });
    const program = new AdamWProgram(group.length, blocks);
    groups.push({ program, entries, uniform: program.hyperBytes(hp, gradScale !== undefined, blocks, layout) });
  }
  // after whatever tfjs has recorded (the gradients), in its encoder, then submitted at once
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  const pass = internals.commandEncoder!.beginComputePass();
  for (const { program, entries, uniform } of groups) {
    const pipeline = pipelineFor(device, program);
    const ubuf = backend.bufferManager.acquireBuffer(uniform.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
    device.queue.writeBuffer(ubuf, 0, uniform);
    internals.uniformPendingDisposal.push(ubuf);
    const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: ubuf } }, ...entries] });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(...program.dispatch);
  }
  pass.end();
  backend.submitQueue();
}

// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias-corrected moments), with transformers'
// parameter groups: no decay on biases and norm weights. Gradient clipping as torch's clip_grad_norm_.
// `clipAndStep` runs on the backend's kernel path (src/backend/fused.ts): the wasm-SIMD CpuAdamW on wasm
// and cpu (moments in the kernels' memory), the fused WGSL norm + update on webgpu, else tfjs ops.

import * as tf from '@tensorflow/tfjs-core';
import { kernelPath, type KernelPath } from '../backend/fused';
import { CpuAdamW } from '../backend/cpu/index';
import { adamwStepFused, globalGradNorm, type AdamWSlot } from '../backend/kernels/adamw';
import { markWeightsChanged } from '../backend/kernels/linear';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/**
 * transformers' get_decay_parameter_names rule: no decay for names matching bias, layernorm, rmsnorm,
 * `norm` as a whole component, or `_norm` (input_layernorm, model.norm, q_norm, …).
 */
export function decays(name: string): boolean {
  return ![/bias/, /layernorm/, /rmsnorm/, /(?:^|\.)norm(?:$|\.)/, /_norm(?:$|\.)/].some((re) => re.test(name));
}

/**
 * Sum of a tensor's elements in blocks of at most 1024 (a tree of float32 partial sums, then the rest in
 * JS doubles): a flat float32 sum over millions of elements (the wasm backend's) loses ~1e-5 relative.
 */
function blockedSum(x: tf.Tensor): tf.Tensor {
  let v = tf.reshape(x, [-1]);
  while (v.size > 1024) {
    const pad = (1024 - (v.size % 1024)) % 1024;
    v = tf.sum(tf.reshape(pad ? tf.pad(v, [[0, pad]]) : v, [-1, 1024]), 1);
  }
  return tf.sum(v);
}

/** Global L2 norm of all gradients (torch's total_norm: the norm of the per-tensor norms), read back to JS. */
export async function globalNorm(grads: Iterable<tf.Tensor>): Promise<number> {
  const sq = tf.tidy(() => tf.stack([...grads].map((g) => blockedSum(tf.square(g)))));
  const parts = await sq.data();
  sq.dispose();
  let total = 0;
  for (const p of parts) total += p;
  return Math.sqrt(total);
}

/**
 * Divide gradients by the loss scale (GradScaler.unscale_): each entry of `grads` is replaced by g·inverseScale
 * (the old tensor disposed). An overflowed gradient stays inf/NaN, so the global norm finds it.
 */
export function unscaleGradients(grads: Map<string, tf.Tensor>, inverseScale: number): void {
  for (const [k, g] of grads) {
    grads.set(k, tf.mul(g, inverseScale));
    g.dispose();
  }
}

/** Scale gradients in place so their global norm is at most maxNorm (coef = maxNorm / (norm + 1e-6), clamped to 1). */
export function clipGradients(grads: Map<string, tf.Tensor>, norm: number, maxNorm: number): void {
  const coef = maxNorm / (norm + 1e-6);
  if (!(maxNorm > 0) || coef >= 1) return;
  for (const [k, g] of grads) {
    grads.set(k, tf.mul(g, coef));
    g.dispose();
  }
}

/**
 * torch.optim.AdamW over named variables. The kernel path is fixed when it is made (the backend then).
 * @example
 *   const opt = new AdamW(model.namedParameters(), { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
 *   const gradNorm = await opt.clipAndStep(grads, lr, 1.0);   // the norm before clipping; NaN/Inf: no update
 */
export class AdamW {
  /** optimizer steps taken (torch's per-parameter state['step'], the same for all here) */
  stepCount = 0;
  /** where the update runs: 'cpu' (CpuAdamW), 'webgpu' (fused WGSL) or 'ops' (tfjs ops) */
  readonly path: KernelPath;
  /** the moments as tf.Variables (the 'webgpu' and 'ops' paths; empty on 'cpu', where CpuAdamW keeps them) */
  readonly expAvg = new Map<string, tf.Variable>();
  readonly expAvgSq = new Map<string, tf.Variable>();
  private readonly cpu: CpuAdamW | null = null;

  constructor(readonly params: Map<string, tf.Variable>, readonly opts: AdamWOptions, path: KernelPath = kernelPath()) {
    this.path = path;
    if (path === 'cpu') {
      this.cpu = new CpuAdamW({ beta1: opts.beta1, beta2: opts.beta2, eps: opts.eps, weightDecay: opts.weightDecay });
      return;
    }
    // a variable shares its initial tensor's data: dispose the zeros, or dispose() would leave it allocated
    const zeroVariable = (p: tf.Tensor) => {
      const z = tf.zerosLike(p), v = tf.variable(z, false);
      z.dispose();
      return v;
    };
    for (const [name, p] of params) {
      this.expAvg.set(name, zeroVariable(p));
      this.expAvgSq.set(name, zeroVariable(p));
    }
  }

  /**
   * Clip the gradients to `maxGradNorm` (0: no clipping) as clip_grad_norm_, then one update with
   * learning rate `lr`. Returns the global norm before clipping; a NaN/Inf norm skips the update (the
   * step count does not advance). Clipping may replace entries of `grads` (disposing the old tensors):
   * what the map holds afterwards is the caller's to dispose.
   */
  async clipAndStep(grads: Map<string, tf.Tensor>, lr: number, maxGradNorm: number, opts: { inverseScale?: number } = {}): Promise<number> {
    const clip = maxGradNorm > 0 ? maxGradNorm : undefined;
    const inv = opts.inverseScale ?? 1;
    if (!(inv > 0)) throw new RangeError(`clipAndStep: inverseScale must be > 0, got ${inv}`);
    if (inv !== 1) unscaleGradients(grads, inv);
    if (this.cpu) return this.cpuStep(grads, lr, true, clip);
    if (this.path === 'webgpu') {
      const slots: AdamWSlot[] = [];
      for (const [name, param] of this.params) {
        const grad = grads.get(name);
        if (grad) slots.push({ param, grad, expAvg: this.expAvg.get(name)!, expAvgSq: this.expAvgSq.get(name)!, decay: decays(name) });
      }
      const { norm, clipCoef } = globalGradNorm(slots.map((s) => s.grad), clip);
      try {
        const n = (await norm.data())[0];
        if (!Number.isFinite(n)) return n;
        this.stepCount++;
        const { beta1, beta2, eps, weightDecay } = this.opts;
        adamwStepFused(slots, { lr, beta1, beta2, eps, weightDecay, step: this.stepCount }, clipCoef);
        markWeightsChanged();
        return n;
      } finally {
        tf.dispose([norm, clipCoef]);
      }
    }
    const norm = await globalNorm(grads.values());
    if (!Number.isFinite(norm)) return norm;
    if (clip !== undefined) clipGradients(grads, norm, clip);
    this.step(grads, lr);
    return norm;
  }

  /**
   * One update with learning rate `lr` from gradients keyed by parameter name, no clipping: CpuAdamW on
   * the 'cpu' path (a parameter without a gradient gets zeros), tfjs ops otherwise (it is skipped).
   */
  step(grads: Map<string, tf.Tensor>, lr: number): void {
    if (this.cpu) {
      this.cpuStep(grads, lr, false);
      return;
    }
    const { beta1, beta2, eps, weightDecay } = this.opts;
    this.stepCount++;
    const bc1 = 1 - beta1 ** this.stepCount;
    const bc2Sqrt = Math.sqrt(1 - beta2 ** this.stepCount);
    for (const [name, p] of this.params) {
      const g = grads.get(name);
      if (!g) continue;
      const m = this.expAvg.get(name)!, v = this.expAvgSq.get(name)!;
      tf.tidy(() => {
        const decayed = decays(name) && weightDecay > 0 ? tf.mul(p, 1 - lr * weightDecay) : p;    // p·(1 − lr·wd)
        const m1 = tf.add(m, tf.mul(tf.sub(g, m), 1 - beta1));                                    // lerp(m, g, 1 − β1)
        const v1 = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
        const denom = tf.add(tf.div(tf.sqrt(v1), bc2Sqrt), eps);
        p.assign(tf.sub(decayed, tf.mul(tf.div(m1, denom), lr / bc1)));
        m.assign(m1);
        v.assign(v1);
      });
    }
    markWeightsChanged();
  }

  /**
   * CpuAdamW over every parameter, in order, each time (it keys its moments by position; a missing gradient
   * is zeros). With `checkNorm`, the global norm first (returned; NaN/Inf skips the update), then clipped
   * to `clip` when given. Without, returns NaN.
   */
  private cpuStep(grads: Map<string, tf.Tensor>, lr: number, checkNorm: boolean, clip?: number): number {
    const zeros: tf.Tensor[] = [];
    const entries = [...this.params].map(([name, variable]) => {
      let grad = grads.get(name);
      if (!grad) zeros.push((grad = tf.zerosLike(variable)));
      return { variable, grad, decay: decays(name) };
    });
    try {
      const norm = checkNorm ? this.cpu!.globalNorm(entries.map((e) => e.grad)) : NaN;
      if (checkNorm && !Number.isFinite(norm)) return norm;
      this.cpu!.stepVariables(entries, { lr, maxGradNorm: clip });
      this.stepCount = this.cpu!.stepCount;
      return norm;
    } finally {
      tf.dispose(zeros);
    }
  }

  /** Moments by parameter name (for checkpoints). */
  async stateTensors(): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
    const out = new Map<string, { shape: number[]; data: Float32Array }>();
    let i = 0;
    for (const [name, p] of this.params) {
      if (this.cpu) {
        // before the first step CpuAdamW has no moments yet: they are zeros
        const s = this.cpu.stepCount > 0 ? this.cpu.state(i) : { expAvg: new Float32Array(p.size), expAvgSq: new Float32Array(p.size) };
        out.set(`${name}.exp_avg`, { shape: p.shape, data: s.expAvg.slice() });
        out.set(`${name}.exp_avg_sq`, { shape: p.shape, data: s.expAvgSq.slice() });
      } else {
        out.set(`${name}.exp_avg`, { shape: this.expAvg.get(name)!.shape, data: (await this.expAvg.get(name)!.data()) as Float32Array });
        out.set(`${name}.exp_avg_sq`, { shape: this.expAvgSq.get(name)!.shape, data: (await this.expAvgSq.get(name)!.data()) as Float32Array });
      }
      i++;
    }
    return out;
  }

  /** Restore moments and the step count; returns the names the state lacks (a mismatch the caller reports). */
  loadState(tensors: Map<string, { shape: number[]; data: Float32Array }>, stepCount: number): string[] {
    const missing: string[] = [];
    for (const [name, p] of this.params) {
      const m = tensors.get(`${name}.exp_avg`), v = tensors.get(`${name}.exp_avg_sq`);
      if (!m || !v || m.shape.join() !== p.shape.join() || v.shape.join() !== p.shape.join()) missing.push(name);
    }
    if (missing.length) return missing;
    if (this.cpu) {
      // CpuAdamW makes its moments on its first step: one step with lr 0 on zero gradients of scratch
      // arrays creates them (all zeros, nothing else touched), then the saved values go in
      if (this.cpu.stepCount === 0) this.cpu.step([...this.params.values()].map((p) => ({ data: new Float32Array(p.size), grad: new Float32Array(p.size), decay: false })), { lr: 0 });
      [...this.params.keys()].forEach((name, i) => {
        const s = this.cpu!.state(i);
        s.expAvg.set(tensors.get(`${name}.exp_avg`)!.data);
        s.expAvgSq.set(tensors.get(`${name}.exp_avg_sq`)!.data);
      });
      this.cpu.stepCount = stepCount;
    } else {
      for (const name of this.params.keys()) {
        const m = tensors.get(`${name}.exp_avg`)!, v = tensors.get(`${name}.exp_avg_sq`)!;
        tf.tidy(() => {
          this.expAvg.get(name)!.assign(tf.tensor(m.data, m.shape));
          this.expAvgSq.get(name)!.assign(tf.tensor(v.data, v.shape));
        });
      }
    }
    this.stepCount = stepCount;
    return missing;
  }

  dispose(): void {
    this.cpu?.dispose();
    for (const t of [...this.expAvg.values(), ...this.expAvgSq.values()]) t.dispose();
  }
}

// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias-corrected moments), with transformers'
// parameter groups: no decay on biases and norm weights. Gradient clipping as torch's clip_grad_norm_.

import * as tf from '@tensorflow/tfjs-core';

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

/** Scale gradients in place so their global norm is at most maxNorm (coef = maxNorm / (norm + 1e-6), clamped to 1). */
export function clipGradients(grads: Map<string, tf.Tensor>, norm: number, maxNorm: number): void {
  const coef = maxNorm / (norm + 1e-6);
  if (!(maxNorm > 0) || coef >= 1) return;
  for (const [k, g] of grads) {
    grads.set(k, tf.mul(g, coef));
    g.dispose();
  }
}

/** torch.optim.AdamW over named variables. */
export class AdamW {
  /** optimizer steps taken (torch's per-parameter state['step'], the same for all here) */
  stepCount = 0;
  readonly expAvg = new Map<string, tf.Variable>();
  readonly expAvgSq = new Map<string, tf.Variable>();

  constructor(readonly params: Map<string, tf.Variable>, readonly opts: AdamWOptions) {
    for (const [name, p] of params) {
      this.expAvg.set(name, tf.variable(tf.zerosLike(p), false));
      this.expAvgSq.set(name, tf.variable(tf.zerosLike(p), false));
    }
  }

  /** One update with learning rate `lr` from gradients keyed by parameter name. */
  step(grads: Map<string, tf.Tensor>, lr: number): void {
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
  }

  /** Moments by parameter name (for checkpoints). */
  async stateTensors(): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
    const out = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const name of this.params.keys()) {
      out.set(`${name}.exp_avg`, { shape: this.expAvg.get(name)!.shape, data: (await this.expAvg.get(name)!.data()) as Float32Array });
      out.set(`${name}.exp_avg_sq`, { shape: this.expAvgSq.get(name)!.shape, data: (await this.expAvgSq.get(name)!.data()) as Float32Array });
    }
    return out;
  }

  /** Restore moments and the step count; returns the names the state lacks (a mismatch the caller reports). */
  loadState(tensors: Map<string, { shape: number[]; data: Float32Array }>, stepCount: number): string[] {
    const missing: string[] = [];
    for (const name of this.params.keys()) {
      const m = tensors.get(`${name}.exp_avg`), v = tensors.get(`${name}.exp_avg_sq`);
      if (!m || !v || m.shape.join() !== this.params.get(name)!.shape.join()) {
        missing.push(name);
        continue;
      }
      tf.tidy(() => {
        this.expAvg.get(name)!.assign(tf.tensor(m.data, m.shape));
        this.expAvgSq.get(name)!.assign(tf.tensor(v.data, v.shape));
      });
    }
    this.stepCount = stepCount;
    return missing;
  }

  dispose(): void {
    for (const t of [...this.expAvg.values(), ...this.expAvgSq.values()]) t.dispose();
  }
}

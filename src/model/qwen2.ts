// Qwen2 (and Qwen2.5) decoder in tfjs, written bottom-up as transformers' modeling_qwen2.py:
// RMSNorm → RoPE → GQA attention (qkv bias) → SwiGLU MLP → decoder block → causal LM.
// Parameters are tf.Variables keyed by their Hugging Face names, so checkpoints load and save by a
// straight lookup. Everything here is synchronous tfjs, so tf.grad / tf.variableGrads work through it.
// Training hooks: every projection goes through `proj(name, x)`, where an attached adapter (LoRA,
// src/train/lora.ts) adds its low-rank term; `gradientCheckpointing` recomputes each decoder block in
// backward instead of keeping its activations (tf.customGrad).
// On webgpu the decoder runs tsft's fused WGSL kernels (src/backend/kernels): RMSNorm, RoPE, the SwiGLU
// gate and flash attention (no [B, H, T, S] scores, no additive bias built on the CPU); elsewhere, and with
// TSFT_KERNELS=ops, the plain tfjs ops below. Both compute the same numbers (tests/model-fused.test.ts).

import * as tf from '@tensorflow/tfjs-core';
import { parameterShapes, type QwenConfig } from './config';
import { CheckpointError } from '../errors';
import { globalRandom, Random } from '../utils/seed';
import { KVCache } from './kv-cache';
import { attentionBias, checkAttentionMask, gqaAttention } from './attention';
import '../backend/gradients';
import { kernelPath, lmHeadCrossEntropy } from '../backend/fused';
import { flashAttention, flashAttentionOnGpu } from '../backend/kernels/flash-attention';
import { rmsNormFused } from '../backend/kernels/rms-norm';
import { applyRopeFused } from '../backend/kernels/rope';
import { siluGateFused } from '../backend/kernels/swiglu';
import { dropHalfCopy, halfOf, linearMatmul } from '../backend/kernels/linear';
import { gatherHalfRows, HalfTensor, matMulF16, toHalf } from '../backend/kernels/matmul-f16';
import { computeDtype } from '../backend/precision';

/** Batch of token ids, one array per row, all rows the same length. */
export type TokenIds = number[][];

// ---------------------------------------------------------------------------------------------------
// RMSNorm: x / sqrt(mean(x²) + eps) * weight, over the last axis.

export function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  const variance = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, eps))), weight);
}

// ---------------------------------------------------------------------------------------------------
// RoPE (rotate-half form). Angles are computed in float32 exactly as transformers does
// (inv_freq = 1 / theta^(2i/D) in f32, angle = position * inv_freq in f32), so long positions agree.

export function ropeCosSin(positions: TokenIds, headDim: number, theta: number): { cos: tf.Tensor4D; sin: tf.Tensor4D } {
  const B = positions.length, T = positions[0].length;
  let maxPos = 0;
  for (const row of positions) for (const p of row) maxPos = Math.max(maxPos, p);
  const table = ropeTable(headDim, theta, maxPos + 1);
  const cos = new Float32Array(B * T * headDim), sin = new Float32Array(B * T * headDim);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const o = (b * T + t) * headDim, pos = positions[b][t];
      if (Number.isInteger(pos) && pos >= 0) {
        cos.set(table.cos.subarray(pos * headDim, (pos + 1) * headDim), o);
        sin.set(table.sin.subarray(pos * headDim, (pos + 1) * headDim), o);
      } else {
        ropeRow(pos, table.invFreq, cos, sin, o);
      }
    }
  }
  return { cos: tf.tensor4d(cos, [B, 1, T, headDim]), sin: tf.tensor4d(sin, [B, 1, T, headDim]) };
}

/** cos / sin rows of positions [0, n) (grown on demand, kept per head size and theta: a step's forward reuses them). */
interface RopeTable { n: number; invFreq: Float32Array; cos: Float32Array; sin: Float32Array }
const ropeTables = new Map<string, RopeTable>();
function ropeTable(headDim: number, theta: number, n: number): RopeTable {
  const key = `${headDim}|${theta}`;
  const have = ropeTables.get(key);
  if (have && have.n >= n) return have;
  const size = Math.max(n, 2 * (have?.n ?? 0), 256), half = headDim / 2;
  const invFreq = new Float32Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = Math.fround(1 / Math.fround(Math.pow(theta, Math.fround((2 * i) / headDim))));
  const cos = new Float32Array(size * headDim), sin = new Float32Array(size * headDim);
  for (let pos = 0; pos < size; pos++) ropeRow(pos, invFreq, cos, sin, pos * headDim);
  const t = { n: size, invFreq, cos, sin };
  ropeTables.set(key, t);
  return t;
}

/** cos / sin of one position into cos[o .. o + D), sin[o .. o + D). */
function ropeRow(pos: number, invFreq: Float32Array, cos: Float32Array, sin: Float32Array, o: number): void {
  const half = invFreq.length;
  for (let i = 0; i < half; i++) {
    const a = Math.fround(pos * invFreq[i]);
    cos[o + i] = cos[o + i + half] = Math.cos(a);
    sin[o + i] = sin[o + i + half] = Math.sin(a);
  }
}

/** x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1]. x: [B, heads, T, D]. */
export function applyRope(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin)) as tf.Tensor4D;
}

// ---------------------------------------------------------------------------------------------------
// Attention (the bias and the plain-ops GQA attention) lives in attention.ts, which the flash kernel
// imports too (a module cycle with this file would not load in tslab).

export { MASKED, attentionBias, gqaAttention } from './attention';

// ---------------------------------------------------------------------------------------------------
// Linear layers: x [N, in] · Wᵀ [in, out] (+ b). Weights are stored [out, in] as in PyTorch.

export function linear(x: tf.Tensor2D, weight: tf.Tensor, bias?: tf.Tensor): tf.Tensor2D {
  const y = tf.matMul(x, weight as tf.Tensor2D, false, true) as tf.Tensor2D;
  return bias ? tf.add(y, bias) as tf.Tensor2D : y;
}

/** silu(g) * u, the SwiGLU gate (transformers' act_fn(gate_proj(x)) * up_proj(x)). */
export function siluGate(g: tf.Tensor2D, u: tf.Tensor2D): tf.Tensor2D {
  return tf.mul(tf.mul(g, tf.sigmoid(g)), u) as tf.Tensor2D;
}

/** SwiGLU MLP: down(silu(gate(x)) * up(x)). */
export function swiglu(x: tf.Tensor2D, gate: tf.Tensor, up: tf.Tensor, down: tf.Tensor): tf.Tensor2D {
  return linear(siluGate(linear(x, gate), linear(x, up)), down);
}

/**
 * Something attached to one linear layer that adds to its output (LoRA). `apply` gets the layer's input
 * and output and draws dropout seeds from a stream seeded per decoder block, so a recomputed block draws
 * the same masks.
 */
export interface LinearAdapter {
  /**
   * y = x·Wᵀ (+ b) [N, out] plus the adapter's term, for x [N, in]; `dropoutSeed()` draws the seed of a
   * dropout mask from the model's stream (null outside training)
   */
  apply(x: tf.Tensor2D, y: tf.Tensor2D, dropoutSeed: () => number | null): tf.Tensor2D;
  /** the adapter's own parameters (differentiated through checkpointed blocks) */
  variables(): tf.Variable[];
}

/**
 * Gradients of f w.r.t. xs scaled by dy, callable from inside another backward pass (a tf.customGrad
 * gradient). tfjs's engine keeps one active tape and drops it when a nested top-level gradient call
 * ends, so the outer tape is restored afterwards. Inputs f does not reach get zeros.
 */
export function gradientsInBackward(f: () => tf.Tensor, xs: tf.Tensor[], dy: tf.Tensor): tf.Tensor[] {
  const state = (tf.engine() as unknown as { state: { activeTape: unknown } }).state;
  const outerTape = state.activeTape;
  try {
    const { value, grads } = tf.engine().gradients(f, xs, dy, true);
    value.dispose();
    return grads.map((g, i) => g ?? tf.zerosLike(xs[i]));
  } finally {
    state.activeTape = outerTape;
  }
}

// ---------------------------------------------------------------------------------------------------
// The model.

export interface ForwardOptions {
  /** [B, past + T]: 1 for real tokens, 0 for padding (default: all ones) */
  attentionMask?: TokenIds;
  /** [B, T] absolute positions (default: past .. past + T - 1, as transformers without position_ids) */
  positionIds?: TokenIds;
  /** KV cache to read and extend (decoding) */
  cache?: KVCache;
  /** compute logits at the last position of each row only: [B, 1, V] (decoding) */
  lastOnly?: boolean;
}

export interface LossOptions extends Omit<ForwardOptions, 'cache' | 'lastOnly'> {
  /** 'mean' (default): token mean over labelled tokens; 'sum': their sum (for accumulation) */
  reduction?: 'mean' | 'sum';
}

export interface LossOutput {
  /** scalar: mean (or sum) of token cross-entropies over labelled positions */
  loss: tf.Scalar;
  /** scalar: fraction of labelled positions whose argmax is the label */
  tokenAcc: tf.Scalar;
  /** number of labelled positions (labels after the shift that are not -100) */
  numTokens: number;
}

/** What `getModelTokenizer` knows about the checkpoint (ms-swift's ModelInfo). */
export interface ModelInfo {
  modelType: string;
  modelDir: string | null;
  dtype: string;
  maxModelLen: number;
  config: QwenConfig['json'];
}

/** ms-swift's ModelMeta: which template the model type uses. */
export interface ModelMeta {
  modelType: string;
  template: string;
}

/**
 * What attention masks with: the additive bias [B, 1, T, S] (tfjs ops), or the padding mask [B, S] (int32,
 * absent = no padding) and the cache offset (the flash kernels, which apply causality themselves).
 */
interface Masking {
  bias?: tf.Tensor4D;
  mask?: tf.Tensor2D;
  past: number;
}

/** True when the decoder runs the fused WGSL kernels: on webgpu, unless TSFT_KERNELS=ops / setKernelPath('ops'). */
export function decoderUsesFusedKernels(): boolean {
  return kernelPath() === 'webgpu';
}

let modelCounter = 0;

export class Qwen2ForCausalLM {
  readonly config: QwenConfig;
  modelInfo: ModelInfo;
  modelMeta: ModelMeta;
  /** generation_config.json of the checkpoint ({} when absent) */
  generationConfig: Record<string, unknown> = {};
  /** HF name → variable. lm_head.weight is absent when tied (as transformers' named_parameters). */
  protected readonly params = new Map<string, tf.Variable>();
  /** frozen projection weights held in f16 only (LoRA's base under mixed precision on webgpu): HF name → f16 */
  protected readonly halfParams = new Map<string, HalfTensor>();
  /** module name (`model.layers.0.self_attn.q_proj`) → adapter adding to that projection (LoRA) */
  readonly adapters = new Map<string, LinearAdapter>();
  /** recompute each decoder block in backward instead of keeping its activations (training only) */
  gradientCheckpointing = false;
  /** draws one dropout seed per decoder block per forward in training (set by the trainer for resumable runs) */
  dropoutRng: Random = globalRandom;
  training = false;
  /** the current block's dropout stream (seeded per block, so recomputation repeats it) */
  private blockRng: Random | null = null;

  /**
   * @param weights HF name → data for every parameter the config implies (shapes checked), or
   *   'random' for a seeded init (normal(0, 0.02) matrices, ones for norms, zeros for biases).
   */
  constructor(config: QwenConfig, weights: Map<string, { shape: number[]; data: Float32Array }> | 'random', rng: Random = globalRandom) {
    this.config = config;
    const id = modelCounter++;
    for (const [name, shape] of parameterShapes(config)) {
      let data: Float32Array;
      if (weights === 'random') {
        const n = shape.reduce((a, b) => a * b, 1);
        data = name.endsWith('norm.weight') ? new Float32Array(n).fill(1)
          : name.endsWith('.bias') ? new Float32Array(n)
          : rng.fillNormal(new Float32Array(n), 0, 0.02);
      } else {
        const w = weights.get(name);
        if (!w) throw new CheckpointError(`tensor "${name}" is missing from the checkpoint (the config implies it)`);
        if (w.shape.join() !== shape.join()) {
          throw new CheckpointError(`tensor "${name}" has shape [${w.shape}] but config.json implies [${shape}]: the weights and config.json disagree`);
        }
        data = w.data;
      }
      // tfjs variable names are global: keep the HF name as the key, make the tfjs name unique. The
      // variable shares the tensor's data: dispose the tensor, or the data outlives the variable (and is
      // counted twice meanwhile)
      const t = tf.tensor(data, shape, 'float32');
      this.params.set(name, tf.variable(t, true, `m${id}/${name}`));
      t.dispose();
    }
    this.modelInfo = { modelType: config.modelType, modelDir: null, dtype: config.dtype, maxModelLen: config.maxPositionEmbeddings, config: config.json };
    this.modelMeta = { modelType: config.modelType, template: config.modelType === 'qwen3' ? 'qwen3' : 'qwen2_5' };
  }

  /** HF name → tf.Variable, in transformers' order (lm_head absent when tied). */
  namedParameters(): Map<string, tf.Variable> {
    return this.params;
  }

  protected w(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(this.halfParams.has(name) ? `parameter ${name} is held in f16 for training (holdFrozenInHalf); reload the model to read it in float32` : `no parameter ${name}`);
    return v;
  }

  /**
   * Holds every frozen projection weight (`*_proj.weight` with trainable false: LoRA's base) and a frozen
   * embedding / LM head (even vocabularies: Qwen's) in f16 only, freeing the float32 copies: half the memory, and the f16 kernels read
   * them directly (matmuls, the LM-head loss; the embedding lookup unpacks its rows). Needs webgpu with
   * computeDtype 'float16' (mixed precision); the values are rounded to f16 (as bf16 checkpoints lose
   * nothing in range for Qwen's weights, at 3 more mantissa bits). Such weights leave namedParameters();
   * reload the model to merge or save them. Returns the number of parameters moved.
   * @example if (mixedPrecision) model.holdFrozenInHalf();
   */
  holdFrozenInHalf(): number {
    if (!decoderUsesFusedKernels() || computeDtype() !== 'float16') {
      throw new Error('holdFrozenInHalf: frozen weights are held in f16 only on webgpu with computeDtype float16 (mixed precision)');
    }
    // the embedding / LM head too when the f16 LM-head loss can read it (an even vocabulary: packed pairs)
    const held = this.config.vocabSize % 2 === 0 ? /(_proj\.weight|^model\.embed_tokens\.weight|^lm_head\.weight)$/ : /_proj\.weight$/;
    let moved = 0;
    for (const [name, v] of [...this.params]) {
      if (v.trainable || !held.test(name)) continue;
      this.halfParams.set(name, toHalf(v));
      dropHalfCopy(v);
      v.dispose();
      this.params.delete(name);
      moved += v.size;
    }
    return moved;
  }

  /** Names of the weights held in f16 only (see holdFrozenInHalf). */
  halfParameterNames(): string[] {
    return [...this.halfParams.keys()];
  }

  /** The LM head matrix [V, H]: lm_head.weight, or embed_tokens.weight when tied; in f16 when held so. */
  protected lmHead(): tf.Tensor2D | HalfTensor {
    const name = this.params.has('lm_head.weight') || this.halfParams.has('lm_head.weight') ? 'lm_head.weight' : 'model.embed_tokens.weight';
    return this.halfParams.get(name) ?? this.w(name) as tf.Tensor2D;
  }

  /**
   * One projection by module name: x·Wᵀ (+ b), plus the attached adapter's term. x: [N, in] → [N, out].
   * @example this.proj('model.layers.0.mlp.up_proj', x)
   */
  protected proj(name: string, x: tf.Tensor2D): tf.Tensor2D {
    const half = this.halfParams.get(name + '.weight'), bias = this.params.get(name + '.bias');
    let y: tf.Tensor2D;
    if (half || decoderUsesFusedKernels()) {
      // tsft's matmuls (f16 tensor cores under mixed precision, tiled f32 otherwise), dW only when trainable
      y = linearMatmul(x, half ?? this.w(name + '.weight') as tf.Tensor2D);
      if (bias) y = tf.add(y, bias) as tf.Tensor2D;
    } else {
      y = linear(x, this.w(name + '.weight'), bias);
    }
    const adapter = this.adapters.get(name);
    return adapter ? adapter.apply(x, y, this.dropoutSeed) : y;
  }

  /** The seed of the next dropout mask in training (the current block's stream), null in eval. */
  protected readonly dropoutSeed = (): number | null => (this.training ? (this.blockRng ?? this.dropoutRng).nextU32() : null);

  /** Trainable tensors block `layer` reads: its own weights and its adapters' (checkpointing differentiates these). */
  protected blockVariables(layer: number): tf.Variable[] {
    const p = `model.layers.${layer}.`;
    const vars = [...this.params].filter(([n, v]) => n.startsWith(p) && v.trainable).map(([, v]) => v);
    for (const [n, a] of this.adapters) if (n.startsWith(p)) vars.push(...a.variables().filter((v) => v.trainable));
    return vars;
  }

  train(mode = true): this {
    this.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** RMSNorm over the last axis with this model's eps: the fused kernel on webgpu, tfjs ops elsewhere. */
  protected norm(x: tf.Tensor, weight: tf.Tensor): tf.Tensor {
    const eps = this.config.rmsNormEps;
    return decoderUsesFusedKernels() ? rmsNormFused(x, weight, eps) : rmsNorm(x, weight, eps);
  }

  /** RoPE of x [B, heads, T, D]. */
  protected rope(x: tf.Tensor4D, rope: { cos: tf.Tensor4D; sin: tf.Tensor4D }): tf.Tensor4D {
    return decoderUsesFusedKernels() ? applyRopeFused(x, rope.cos, rope.sin) : applyRope(x, rope.cos, rope.sin);
  }

  /** Hook between projection and RoPE; q, k: [B, T, heads, D]. Qwen3 normalises here. */
  protected normalizeQK(q: tf.Tensor4D, k: tf.Tensor4D, _layer: number): [tf.Tensor4D, tf.Tensor4D] {
    return [q, k];
  }

  protected attention(x: tf.Tensor2D, layer: number, B: number, T: number, rope: { cos: tf.Tensor4D; sin: tf.Tensor4D },
    masking: Masking, cache?: KVCache): tf.Tensor2D {
    const c = this.config, p = `model.layers.${layer}.self_attn.`;
    let q = tf.reshape(this.proj(p + 'q_proj', x), [B, T, c.numHeads, c.headDim]) as tf.Tensor4D;   // [B, T, H, D]
    let k = tf.reshape(this.proj(p + 'k_proj', x), [B, T, c.numKvHeads, c.headDim]) as tf.Tensor4D; // [B, T, KV, D]
    const v0 = tf.reshape(this.proj(p + 'v_proj', x), [B, T, c.numKvHeads, c.headDim]);             // [B, T, KV, D]
    [q, k] = this.normalizeQK(q, k, layer);
    const qh = this.rope(tf.transpose(q, [0, 2, 1, 3]), rope);                         // [B, H, T, D]
    let kh = this.rope(tf.transpose(k, [0, 2, 1, 3]), rope);                           // [B, KV, T, D]
    let vh = tf.transpose(v0, [0, 2, 1, 3]) as tf.Tensor4D;                             // [B, KV, T, D]
    if (cache) [kh, vh] = cache.append(layer, kh, vh);                                  // [B, KV, S, D]
    const o = masking.bias ? gqaAttention(qh, kh, vh, masking.bias)                     // [B, H, T, D]
      : flashAttention(qh, kh, vh, { attentionMask: masking.mask, past: masking.past });
    const o2 = tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [B * T, c.numHeads * c.headDim]) as tf.Tensor2D;
    return this.proj(p + 'o_proj', o2);                                                 // [B·T, hidden]
  }

  protected block(x: tf.Tensor2D, layer: number, B: number, T: number, rope: { cos: tf.Tensor4D; sin: tf.Tensor4D },
    masking: Masking, cache?: KVCache): tf.Tensor2D {
    const p = `model.layers.${layer}.`;
    const h = tf.add(x, this.attention(this.norm(x, this.w(p + 'input_layernorm.weight')) as tf.Tensor2D, layer, B, T, rope, masking, cache)) as tf.Tensor2D;
    const hn = this.norm(h, this.w(p + 'post_attention_layernorm.weight')) as tf.Tensor2D;              // [B·T, hidden]
    const gate = this.proj(p + 'mlp.gate_proj', hn), up = this.proj(p + 'mlp.up_proj', hn);              // [B·T, mlp]
    const m = this.proj(p + 'mlp.down_proj', decoderUsesFusedKernels() ? siluGateFused(gate, up) : siluGate(gate, up));
    return tf.add(h, m) as tf.Tensor2D;
  }

  /**
   * One decoder block as it runs in a forward pass: with a fresh dropout stream seeded for it (when
   * adapters use dropout), and under gradient checkpointing as one tf.customGrad op that keeps only its
   * input and recomputes the block in backward.
   */
  protected runBlock(x: tf.Tensor2D, layer: number, B: number, T: number, rope: { cos: tf.Tensor4D; sin: tf.Tensor4D },
    masking: Masking, cache?: KVCache): tf.Tensor2D {
    const seed = this.training && this.adapters.size > 0 ? this.dropoutRng.nextU32() : null;
    const run = (h: tf.Tensor2D, r: { cos: tf.Tensor4D; sin: tf.Tensor4D }, m: Masking): tf.Tensor2D => {
      this.blockRng = seed === null ? null : new Random(seed);
      try {
        return this.block(h, layer, B, T, r, m, cache);
      } finally {
        this.blockRng = null;
      }
    };
    if (!this.gradientCheckpointing || !this.training || cache) return run(x, rope, masking);
    const vars = this.blockVariables(layer);
    const checkpointed = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const save = args[args.length - 1] as tf.GradSaveFunc;
      const xin = args[0] as tf.Tensor2D;
      const maskTensor = masking.bias ?? masking.mask;
      save([xin, rope.cos, rope.sin, ...(maskTensor ? [maskTensor] : [])]);    // they die with the forward scope: keep copies
      return {
        value: run(xin, rope, masking),                                                  // [B·T, hidden]
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [xs, cos, sin, m] = saved as [tf.Tensor2D, tf.Tensor4D, tf.Tensor4D, tf.Tensor | undefined];
          const again: Masking = masking.bias ? { bias: m as tf.Tensor4D, past: masking.past } : { mask: m as tf.Tensor2D | undefined, past: masking.past };
          return gradientsInBackward(() => run(xs, { cos, sin }, again), [xs, ...vars], dy);
        },
      };
    });
    return checkpointed(x, ...vars) as tf.Tensor2D;
  }

  /** Final hidden states after model.norm: [B·T, H]. */
  hiddenStates(inputIds: TokenIds, opts: ForwardOptions = {}): tf.Tensor2D {
    const B = inputIds.length, T = inputIds[0]?.length ?? 0;
    if (B === 0 || T === 0) throw new RangeError('forward: inputIds must be a non-empty [B, T] array');
    for (const [b, row] of inputIds.entries()) {
      if (row.length !== T) throw new RangeError(`forward: row ${b} has ${row.length} tokens, row 0 has ${T}: pad the batch first`);
    }
    const past = opts.cache?.length ?? 0;
    const positions = opts.positionIds ?? inputIds.map(() => Array.from({ length: T }, (_, t) => past + t));
    const rope = ropeCosSin(positions, this.config.headDim, this.config.ropeTheta);
    // flash kernels: the padding mask as it is (causality is theirs); tfjs ops: the additive bias
    let masking: Masking;
    if (decoderUsesFusedKernels() && flashAttentionOnGpu(this.config.headDim)) {
      checkAttentionMask(B, past + T, opts.attentionMask);
      masking = { mask: opts.attentionMask && tf.tensor2d(opts.attentionMask, [B, past + T], 'int32'), past };  // [B, S]
    } else {
      masking = { bias: attentionBias(B, T, past, opts.attentionMask), past };          // [B, 1, T, S]
    }
    const ids = tf.tensor1d(inputIds.flat(), 'int32');
    const embHalf = this.halfParams.get('model.embed_tokens.weight');                    // frozen, held in f16
    let x = (embHalf ? gatherHalfRows(embHalf, inputIds.flat()) : tf.gather(this.w('model.embed_tokens.weight'), ids)) as tf.Tensor2D; // [B·T, H]
    for (let l = 0; l < this.config.numLayers; l++) x = this.runBlock(x, l, B, T, rope, masking, opts.cache);
    if (opts.cache) opts.cache.length = past + T;
    return this.norm(x, this.w('model.norm.weight')) as tf.Tensor2D;
  }

  /**
   * Logits [B, T, V] (or [B, 1, V] with lastOnly).
   * @example
   *   const { logits } = model.forward([[9707, 11, 1879]]);   // [1, 3, vocab]
   */
  forward(inputIds: TokenIds, opts: ForwardOptions = {}): { logits: tf.Tensor3D } {
    const B = inputIds.length, T = inputIds[0].length, V = this.config.vocabSize;
    const logits = tf.tidy(() => {
      let h = this.hiddenStates(inputIds, opts);                                         // [B·T, H]
      if (opts.lastOnly) h = tf.gather(h, inputIds.map((_, b) => b * T + T - 1));      // [B, H]
      const W = this.lmHead();
      const logits2d = W instanceof HalfTensor ? matMulF16(h, W, false, true) : tf.matMul(h, W, false, true);
      return tf.reshape(logits2d, [B, opts.lastOnly ? 1 : T, V]) as tf.Tensor3D;
    });
    return { logits };
  }

  /**
   * Causal-LM loss with shifted labels (-100 ignored), computing logits only at labelled positions:
   * hidden states of the labelled rows are gathered first, then the LM head's cross-entropy runs as the
   * backend's fused kernel (src/backend/fused.ts: the [N, V] logits are never kept on wasm, cpu and
   * webgpu; TSFT_KERNELS=ops computes them with plain tfjs ops and gathers the label logit, no one-hot).
   * @example
   *   const grads = tf.variableGrads(() => model.loss(ids, labels).loss);
   */
  loss(inputIds: TokenIds, labels: TokenIds, opts: LossOptions = {}): LossOutput {
    const B = inputIds.length, T = inputIds[0].length, V = this.config.vocabSize;
    const rows: number[] = [], targets: number[] = [];
    for (let b = 0; b < B; b++) {
      if (labels[b]?.length !== T) throw new RangeError(`loss: labels row ${b} has ${labels[b]?.length} entries, input_ids has ${T}`);
      for (let t = 0; t + 1 < T; t++) {
        const y = labels[b][t + 1];
        if (y === -100) continue;
        if (!Number.isInteger(y) || y < 0 || y >= V) throw new RangeError(`loss: label ${y} at row ${b}, position ${t + 1} is outside the vocabulary [0, ${V})`);
        rows.push(b * T + t);
        targets.push(y);
      }
    }
    const h = this.hiddenStates(inputIds, opts);                                         // [B·T, H]
    if (rows.length === 0) {
      // nothing to learn from: a zero that still depends on the parameters, so gradients are zeros
      return { loss: tf.mul(tf.sum(h), 0) as tf.Scalar, tokenAcc: tf.scalar(0), numTokens: 0 };
    }
    const N = rows.length;
    // the backend's fused kernel (src/backend/fused.ts): wasm-SIMD on wasm/cpu, WGSL on webgpu, else tfjs ops
    // mixed precision: the head's f16 copy (cached while frozen, as under LoRA) and no dW for a frozen head
    const W = this.lmHead(), trainable = (W as tf.Variable).trainable === true;
    const half = W instanceof HalfTensor ? undefined
      : computeDtype() === 'float16' && decoderUsesFusedKernels() && !trainable ? halfOf(W) : undefined;
    const { loss, correct } = lmHeadCrossEntropy(tf.gather(h, rows), W, targets, opts.reduction ?? 'mean', { weightHalf: half, weightGrad: trainable }); // h rows: [N, H]
    return { loss, tokenAcc: tf.div(correct, N) as tf.Scalar, numTokens: N };
  }

  /** Free every parameter's memory. */
  dispose(): void {
    for (const v of this.params.values()) {
      dropHalfCopy(v);
      v.dispose();
    }
    for (const h of this.halfParams.values()) h.dispose();
    for (const a of this.adapters.values()) for (const v of a.variables()) if (!v.isDisposed) v.dispose();
    this.params.clear();
    this.halfParams.clear();
    this.adapters.clear();
  }
}

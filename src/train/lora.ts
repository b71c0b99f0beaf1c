// LoRA (PEFT's LoraConfig / LoraModel for nn.Linear): low-rank adapters on the projection layers of a
// Qwen model, saved and loaded in PEFT's format (adapter_config.json + adapter_model.safetensors with
// PEFT's key names), merged into the base weights for export.
//
//   y = x·Wᵀ (+ b) + scale · dropout(x)·Aᵀ·Bᵀ,   A: [r, in] (kaiming-uniform), B: [out, r] (zeros),
//   scale = lora_alpha / r (or lora_alpha / √r with use_rslora)
//
// Adapters hook into the model through `model.adapters` (module name → adapter); the base weights are
// frozen (`trainable = false`), so tf.variableGrads only differentiates A and B.

import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import type { LinearAdapter, Qwen2ForCausalLM } from '../model/qwen2';
import { readSafetensors, writeFileAtomic, writeSafetensors } from '../model/safetensors';
import { dropoutFused } from '../backend/kernels/dropout';
import { loraLinear } from '../backend/kernels/lora-linear';
import { kernelPath } from '../backend/fused';
import { parameterShapes } from '../model/config';
import { CheckpointError, ConfigError } from '../errors';
import { globalRandom, type Random } from '../utils/seed';
import { getLogger } from '../utils/logger';

/** ms-swift / PEFT LoRA settings (snake_case as in adapter_config.json and `swift sft` flags). */
export interface LoraConfig {
  /** rank (ms-swift `lora_rank`, default 8) */
  r: number;
  /** scaling numerator (default 32): scale = lora_alpha / r */
  lora_alpha: number;
  /** dropout on the adapter's input during training (default 0.05) */
  lora_dropout: number;
  /** 'all-linear' (every linear but lm_head) or module names ('q_proj', 'model.layers.0.mlp.up_proj', …) */
  target_modules: 'all-linear' | string[];
  /** scale = lora_alpha / √r (default false) */
  use_rslora: boolean;
  /** the base model's path or id, written into adapter_config.json */
  base_model_name_or_path: string | null;
}

export const DEFAULT_LORA_CONFIG: Readonly<LoraConfig> = {
  r: 8, lora_alpha: 32, lora_dropout: 0.05, target_modules: 'all-linear', use_rslora: false, base_model_name_or_path: null,
};

export const ADAPTER_CONFIG_NAME = 'adapter_config.json';
export const ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors';
/** PEFT's prefix of saved keys: PeftModel.base_model (LoraModel).model (the transformers model). */
const PEFT_PREFIX = 'base_model.model.';

/** One LoRA pair on one linear layer. */
export class LoraLinear implements LinearAdapter {
  constructor(
    readonly A: tf.Variable,        // [r, in]
    readonly B: tf.Variable,        // [out, r]
    readonly scale: number,
    readonly dropoutRate: number,
  ) {}

  apply(x: tf.Tensor2D, y: tf.Tensor2D, dropoutSeed: () => number | null): tf.Tensor2D {
    const seed = this.dropoutRate > 0 ? dropoutSeed() : null;
    const dropout = seed === null ? null : { rate: this.dropoutRate, seed };
    // webgpu: four small f32 kernels each way (lora-linear.ts); elsewhere tfjs ops, dropout masks from tf.randomUniform
    if (kernelPath() === 'webgpu') return loraLinear(x, y, this.A as tf.Tensor2D, this.B as tf.Tensor2D, this.scale, dropout);
    const xd = dropout ? dropoutFused(x, dropout.rate, dropout.seed) : x;
    const xa = tf.matMul(xd, this.A, false, true);                                            // [N, r]
    return tf.add(y, tf.mul(tf.matMul(xa, this.B, false, true), this.scale)) as tf.Tensor2D;  // [N, out]
  }

  variables(): tf.Variable[] {
    return [this.A, this.B];
  }

  /** scale · B·A: [out, in], what merging adds to the base weight */
  deltaWeight(): tf.Tensor2D {
    return tf.tidy(() => tf.mul(tf.matMul(this.B, this.A), this.scale) as tf.Tensor2D);
  }

  dispose(): void {
    this.A.dispose();
    this.B.dispose();
  }
}

/** Module names of every linear layer but lm_head (`model.layers.0.self_attn.q_proj`, …), in model order. */
export function linearModules(model: Qwen2ForCausalLM): string[] {
  // from the config's parameter list: weights held in f16 (holdFrozenInHalf) are not in namedParameters()
  return [...parameterShapes(model.config).keys()].filter((n) => /_proj\.weight$/.test(n)).map((n) => n.slice(0, -'.weight'.length));
}

/**
 * The modules `target_modules` selects, as PEFT matches a list: a module is targeted when its name equals
 * an entry or ends with `.entry`; 'all-linear' (alone or in the list) adds every linear but lm_head.
 */
export function resolveTargetModules(model: Qwen2ForCausalLM, target: LoraConfig['target_modules']): string[] {
  const all = linearModules(model);
  const entries = typeof target === 'string' ? [target] : target;
  if (!Array.isArray(entries) || entries.length === 0 || entries.some((e) => typeof e !== 'string' || e === '')) {
    throw new ConfigError(`target_modules must be 'all-linear' or a non-empty list of module names, got ${JSON.stringify(target)}`);
  }
  const chosen = new Set<string>();
  for (const e of entries) {
    if (e === 'all-linear') {
      all.forEach((m) => chosen.add(m));
      continue;
    }
    if (e === 'lm_head' || e.endsWith('embed_tokens')) {
      throw new ConfigError(`target_modules: "${e}" is not a projection layer; tsft's LoRA adapts linear layers (q_proj … down_proj)`);
    }
    const hits = all.filter((m) => m === e || m.endsWith('.' + e));
    if (hits.length === 0) {
      const kinds = [...new Set(all.map((m) => m.split('.').pop()!))].join(', ');
      throw new ConfigError(`target_modules: "${e}" matches no linear layer of this model; use 'all-linear' or names among ${kinds} (or full module names)`);
    }
    hits.forEach((m) => chosen.add(m));
  }
  return all.filter((m) => chosen.has(m));
}

function checkConfig(c: LoraConfig): void {
  if (!Number.isInteger(c.r) || c.r <= 0) throw new ConfigError(`lora_rank (r) must be a positive integer, got ${c.r}`);
  if (!(typeof c.lora_alpha === 'number' && c.lora_alpha > 0)) throw new ConfigError(`lora_alpha must be a positive number, got ${c.lora_alpha}`);
  if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) throw new ConfigError(`lora_dropout must be in [0, 1), got ${c.lora_dropout}`);
}

function scaleOf(alpha: number, r: number, rslora: boolean): number {
  return rslora ? alpha / Math.sqrt(r) : alpha / r;
}

let adapterCounter = 0;

function attach(model: Qwen2ForCausalLM, module: string, A: tf.Tensor, B: tf.Tensor, scale: number, dropout: number): void {
  const id = adapterCounter++;
  const a = tf.variable(A, true, `lora${id}/${module}.lora_A`);
  const b = tf.variable(B, true, `lora${id}/${module}.lora_B`);
  A.dispose();   // the variables share A's and B's data: drop these handles so disposing the variables frees it
  B.dispose();
  model.adapters.set(module, new LoraLinear(a, b, scale, dropout));
}

/** Per-model LoRA settings, for saving (the adapters themselves live in model.adapters). */
const configs = new WeakMap<Qwen2ForCausalLM, LoraConfig & { modules: string[] }>();

function freezeBase(model: Qwen2ForCausalLM, frozen: boolean): void {
  for (const v of model.namedParameters().values()) v.trainable = !frozen;
}

/**
 * Attach fresh adapters to every targeted linear (A kaiming-uniform as PEFT, B zeros, so the model is
 * unchanged until trained) and freeze the base weights — ms-swift's `Swift.prepare_model(model, LoraConfig(...))`.
 * @example
 *   const cfg = prepareLora(model, { r: 8, lora_alpha: 32, lora_dropout: 0.05, target_modules: 'all-linear' });
 */
export function prepareLora(model: Qwen2ForCausalLM, config: Partial<LoraConfig> = {}, rng: Random = globalRandom): LoraConfig {
  if (model.adapters.size > 0) throw new ConfigError('prepareLora: the model already has adapters attached (merge or reload the model first)');
  const c: LoraConfig = { ...DEFAULT_LORA_CONFIG, base_model_name_or_path: model.modelInfo.modelDir, ...config };
  checkConfig(c);
  const modules = resolveTargetModules(model, c.target_modules);
  const scale = scaleOf(c.lora_alpha, c.r, c.use_rslora);
  for (const m of modules) {
    const [out, inp] = model.namedParameters().get(m + '.weight')!.shape;
    const bound = 1 / Math.sqrt(inp);      // kaiming_uniform_(a=√5) on [r, in]
    const a = new Float32Array(c.r * inp);
    for (let i = 0; i < a.length; i++) a[i] = (2 * rng.random() - 1) * bound;
    attach(model, m, tf.tensor2d(a, [c.r, inp]), tf.zeros([out, c.r]), scale, c.lora_dropout);
  }
  freezeBase(model, true);
  configs.set(model, { ...c, modules });
  return c;
}

/** Adapter parameters under PEFT's training names (`base_model.model.<module>.lora_A.default.weight`). */
export function loraParameters(model: Qwen2ForCausalLM): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const [m, a] of model.adapters) {
    if (!(a instanceof LoraLinear)) continue;
    out.set(`${PEFT_PREFIX}${m}.lora_A.default.weight`, a.A);
    out.set(`${PEFT_PREFIX}${m}.lora_B.default.weight`, a.B);
  }
  return out;
}

/** target_modules as written to adapter_config.json: the layer kinds when every layer has them, else full names. */
function savedTargets(model: Qwen2ForCausalLM, modules: string[]): string[] {
  const kinds = [...new Set(modules.map((m) => m.split('.').pop()!))].sort();
  const byKinds = linearModules(model).filter((m) => kinds.includes(m.split('.').pop()!));
  return byKinds.length === modules.length ? kinds : modules;
}

/** adapter_config.json as PEFT writes it (LoraConfig.to_dict, fields PEFT ≥ 0.10 reads). */
export function adapterConfigJson(model: Qwen2ForCausalLM): Record<string, unknown> {
  const c = configs.get(model);
  if (!c) throw new ConfigError('no LoRA adapters are attached to this model (prepareLora or loadAdapter first)');
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: c.base_model_name_or_path,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: c.lora_alpha,
    lora_dropout: c.lora_dropout,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    r: c.r,
    rank_pattern: {},
    revision: null,
    target_modules: savedTargets(model, c.modules),
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: c.use_rslora,
  };
}

/**
 * Write `adapter_config.json` + `adapter_model.safetensors` (PEFT's format and key names:
 * `base_model.model.<module>.lora_A.weight` [r, in], `…lora_B.weight` [out, r]) into `dir`.
 * @example
 *   await saveAdapter(model, 'output/checkpoint-10');
 *   // Python: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), 'output/checkpoint-10')
 */
export async function saveAdapter(model: Qwen2ForCausalLM, dir: string): Promise<void> {
  const json = adapterConfigJson(model);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [m, a] of model.adapters) {
    if (!(a instanceof LoraLinear)) continue;
    tensors.set(`${PEFT_PREFIX}${m}.lora_A.weight`, { shape: a.A.shape, data: (await a.A.data()) as Float32Array });
    tensors.set(`${PEFT_PREFIX}${m}.lora_B.weight`, { shape: a.B.shape, data: (await a.B.data()) as Float32Array });
  }
  await writeSafetensors(path.join(dir, ADAPTER_WEIGHTS_NAME), tensors, { metadata: { format: 'pt' } });
  const text = JSON.stringify(json, null, 2) + '\n';
  await writeFileAtomic(path.join(dir, ADAPTER_CONFIG_NAME), async (fh) => { await fh.writeFile(text, 'utf8'); });
}

/** True when `dir` holds a PEFT adapter (adapter_config.json). */
export function isAdapterDir(dir: string): boolean {
  return fs.existsSync(path.join(dir, ADAPTER_CONFIG_NAME));
}

interface AdapterConfigFile {
  peft_type?: string;
  r?: number;
  lora_alpha?: number;
  lora_dropout?: number;
  target_modules?: string | string[] | null;
  use_rslora?: boolean;
  use_dora?: boolean;
  fan_in_fan_out?: boolean;
  bias?: string;
  modules_to_save?: string[] | null;
  alpha_pattern?: Record<string, number>;
  rank_pattern?: Record<string, number>;
  base_model_name_or_path?: string | null;
}

function readConfigFile(dir: string): AdapterConfigFile {
  const file = path.join(dir, ADAPTER_CONFIG_NAME);
  if (!fs.existsSync(file)) {
    const what = fs.existsSync(path.join(dir, 'config.json'))
      ? 'it is a full model checkpoint: load it as the model instead of as adapters'
      : 'pass a LoRA checkpoint folder (output/v0-…/checkpoint-N)';
    throw new CheckpointError(`${dir} has no ${ADAPTER_CONFIG_NAME}: ${what}`);
  }
  let json: AdapterConfigFile;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8')) as AdapterConfigFile;
  } catch (e) {
    throw new CheckpointError(`${file} is not valid JSON (${(e as Error).message})`);
  }
  const unsupported = [
    json.peft_type !== undefined && json.peft_type !== 'LORA' && `peft_type ${json.peft_type} (only LORA)`,
    json.use_dora && 'use_dora (DoRA)',
    json.fan_in_fan_out && 'fan_in_fan_out',
    json.bias !== undefined && json.bias !== 'none' && `bias "${json.bias}"`,
    json.modules_to_save && json.modules_to_save.length > 0 && `modules_to_save ${JSON.stringify(json.modules_to_save)}`,
  ].filter(Boolean);
  if (unsupported.length) throw new CheckpointError(`${file}: tsft cannot load adapters with ${unsupported.join(', ')}`);
  return json;
}

/** Read a PEFT adapter folder's config (throws CheckpointError when it is not one). */
export function readAdapterConfig(dir: string): LoraConfig {
  const j = readConfigFile(dir);
  const tm = j.target_modules;
  return {
    r: j.r ?? DEFAULT_LORA_CONFIG.r,
    lora_alpha: j.lora_alpha ?? DEFAULT_LORA_CONFIG.lora_alpha,
    lora_dropout: j.lora_dropout ?? 0,
    target_modules: tm == null ? 'all-linear' : typeof tm === 'string' ? [tm] : tm,
    use_rslora: j.use_rslora ?? false,
    base_model_name_or_path: j.base_model_name_or_path ?? null,
  };
}

/** PEFT's pattern rule (rank_pattern/alpha_pattern): a key matches a module name ending in it. */
function patternValue(patterns: Record<string, number> | undefined, module: string): number | undefined {
  for (const [k, v] of Object.entries(patterns ?? {})) if (new RegExp(`(.*\\.)?${k}$`).test(module)) return v;
  return undefined;
}

/**
 * Attach the adapter saved in `adapterDir` (PEFT format, from tsft, ms-swift or PEFT) to `model`, frozen
 * base and all, as `PeftModel.from_pretrained`. Shapes are checked against the model's layers.
 * @example
 *   const { model } = await getModelTokenizer('tiny');
 *   await loadAdapter(model, 'output/v0-20260101-120000/checkpoint-47');
 */
export async function loadAdapter(model: Qwen2ForCausalLM, adapterDir: string): Promise<LoraConfig> {
  if (model.adapters.size > 0) throw new ConfigError(`loadAdapter(${adapterDir}): the model already has adapters attached; load one adapter per model (merge first to stack them)`);
  const raw = readConfigFile(adapterDir);
  const config = readAdapterConfig(adapterDir);
  const file = path.join(adapterDir, ADAPTER_WEIGHTS_NAME);
  if (!fs.existsSync(file)) {
    throw new CheckpointError(`${adapterDir} has ${ADAPTER_CONFIG_NAME} but no ${ADAPTER_WEIGHTS_NAME} (tsft reads only safetensors adapters; re-save with safe_serialization=True)`);
  }
  const { tensors } = await readSafetensors(file);
  const pairs = new Map<string, { A?: tf.TensorLike; B?: tf.TensorLike; shapeA?: number[]; shapeB?: number[] }>();
  for (const [key, t] of tensors) {
    const m = /^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$/.exec(key);
    if (!m) throw new CheckpointError(`${file}: unexpected tensor "${key}" (tsft loads LoRA A/B matrices only)`);
    const module = m[1];
    const p = pairs.get(module) ?? {};
    if (m[2] === 'A') { p.A = t.data; p.shapeA = t.shape; } else { p.B = t.data; p.shapeB = t.shape; }
    pairs.set(module, p);
  }
  if (pairs.size === 0) throw new CheckpointError(`${file} holds no LoRA weights`);
  const params = model.namedParameters();
  const modules: string[] = [];
  try {
    for (const [module, p] of pairs) {
      const w = params.get(module + '.weight');
      if (!w) throw new CheckpointError(`${file}: adapter for "${module}", which this model does not have (an adapter of another architecture?)`);
      if (!p.A || !p.B) throw new CheckpointError(`${file}: "${module}" has lora_${p.A ? 'A' : 'B'} but not lora_${p.A ? 'B' : 'A'}`);
      const [out, inp] = w.shape;
      const r = p.shapeA![0];
      if (p.shapeA!.join() !== [r, inp].join() || p.shapeB!.join() !== [out, r].join()) {
        throw new CheckpointError(`${file}: "${module}" has lora_A [${p.shapeA}] and lora_B [${p.shapeB}], but the layer is [${out}, ${inp}]: ` +
          'the adapter was trained on a different base model');
      }
      const alpha = patternValue(raw.alpha_pattern, module) ?? config.lora_alpha;
      attach(model, module, tf.tensor2d(p.A as Float32Array, [r, inp]), tf.tensor2d(p.B as Float32Array, [out, r]),
        scaleOf(alpha, r, config.use_rslora), config.lora_dropout);
      modules.push(module);
    }
  } catch (e) {
    unloadAdapters(model);
    throw e;
  }
  freezeBase(model, true);
  configs.set(model, { ...config, modules });
  getLogger().info(`loaded LoRA adapter ${adapterDir}: ${modules.length} layers, r=${config.r}, alpha=${config.lora_alpha}`);
  return config;
}

/** Detach and free every adapter, unfreezing the base weights. */
export function unloadAdapters(model: Qwen2ForCausalLM): void {
  for (const a of model.adapters.values()) if (a instanceof LoraLinear) a.dispose();
  model.adapters.clear();
  configs.delete(model);
  freezeBase(model, false);
}

/**
 * Fold every attached adapter into its base weight (W += scale·B·A) and detach the adapters: the model is
 * then a plain model that saves as a full transformers checkpoint (`swift export --merge_lora`).
 * @example
 *   await loadAdapter(model, ckpt); mergeLora(model); await saveModel(model, `${ckpt}-merged`);
 */
export function mergeLora(model: Qwen2ForCausalLM): void {
  if (model.adapters.size === 0) throw new ConfigError('mergeLora: no adapters are attached to this model');
  const params = model.namedParameters();
  for (const [module, a] of model.adapters) {
    if (!(a instanceof LoraLinear)) continue;
    const w = params.get(module + '.weight')!;
    const merged = tf.tidy(() => tf.add(w, a.deltaWeight()));
    w.assign(merged);
    merged.dispose();
  }
  unloadAdapters(model);
}

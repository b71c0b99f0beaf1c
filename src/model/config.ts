// config.json of a Qwen2/Qwen3 checkpoint, with the Hugging Face keys verbatim, and the one function
// that fills defaults and derived fields. Both rope styles load: transformers 4 / hub checkpoints write
// a top-level `rope_theta`, transformers 5 writes `rope_parameters: { rope_theta, rope_type }`.

import { ConfigError } from '../errors';

/** The keys of a Qwen2/Qwen3 `config.json` that tsft reads (snake_case, as transformers writes them). */
export interface QwenConfigJson {
  architectures?: string[];            // ["Qwen3ForCausalLM"]
  model_type?: string;                 // "qwen2" | "qwen3"
  vocab_size: number;                  // rows of embed_tokens / lm_head
  hidden_size: number;                 // model width
  intermediate_size: number;           // SwiGLU width
  num_hidden_layers: number;           // decoder blocks
  num_attention_heads: number;         // query heads
  num_key_value_heads?: number;        // KV heads (GQA); default = num_attention_heads
  head_dim?: number;                   // Qwen3: explicit; default hidden_size / num_attention_heads
  max_position_embeddings?: number;    // context length
  rms_norm_eps?: number;               // RMSNorm epsilon
  rope_theta?: number;                 // transformers 4 style
  rope_parameters?: { rope_theta?: number; rope_type?: string; [k: string]: unknown }; // transformers 5 style
  rope_scaling?: { rope_type?: string; type?: string; [k: string]: unknown } | null; // unsupported unless default
  tie_word_embeddings?: boolean;       // lm_head shares embed_tokens
  attention_bias?: boolean;            // Qwen3: bias on q/k/v/o (false in released models)
  hidden_act?: string;                 // "silu"
  bos_token_id?: number | null;
  eos_token_id?: number | number[] | null;
  pad_token_id?: number | null;
  torch_dtype?: string;                // transformers 4
  dtype?: string;                      // transformers 5
  use_sliding_window?: boolean;
  [key: string]: unknown;
}

/** A config with every field the model needs filled in. `json` keeps the original keys for saving. */
export interface QwenConfig {
  modelType: 'qwen2' | 'qwen3';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  /** bias on q/k/v (Qwen2 always; Qwen3 when attention_bias) */
  qkvBias: boolean;
  /** bias on o_proj (Qwen3 with attention_bias only) */
  oBias: boolean;
  /** q_norm/k_norm on head_dim (Qwen3) */
  qkNorm: boolean;
  /** dtype the checkpoint was saved in ("bfloat16", "float32", ...) */
  dtype: string;
  eosTokenId: number[];
  json: QwenConfigJson;
}

const ARCH_TO_TYPE: Record<string, 'qwen2' | 'qwen3'> = {
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
};

function need(json: QwenConfigJson, key: keyof QwenConfigJson, where: string): number {
  const v = json[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(`${where}: "${String(key)}" must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** The architecture a config.json describes, or a ConfigError that lists what tsft supports. */
export function architectureOf(json: QwenConfigJson, where = 'config.json'): 'qwen2' | 'qwen3' {
  for (const a of json.architectures ?? []) if (a in ARCH_TO_TYPE) return ARCH_TO_TYPE[a];
  if (json.model_type === 'qwen2' || json.model_type === 'qwen3') return json.model_type;
  const got = json.architectures?.join(', ') ?? json.model_type ?? 'nothing';
  throw new ConfigError(
    `${where}: unsupported architecture ${got}. tsft supports ${Object.keys(ARCH_TO_TYPE).join(', ')} ` +
      `(model_type qwen2 / qwen3). Qwen2.5 checkpoints are Qwen2ForCausalLM.`,
  );
}

/** Fill defaults and derived fields of a config.json; `where` names the file in errors. */
export function resolveConfig(json: QwenConfigJson, where = 'config.json'): QwenConfig {
  const modelType = architectureOf(json, where);
  const hiddenSize = need(json, 'hidden_size', where);
  const numHeads = need(json, 'num_attention_heads', where);
  const numKvHeads = json.num_key_value_heads ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(`${where}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = json.head_dim ?? hiddenSize / numHeads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ConfigError(`${where}: head_dim ${headDim} must be an even integer (set "head_dim" explicitly)`);
  }
  const ropeTheta = json.rope_parameters?.rope_theta ?? json.rope_theta ?? 10000;
  const ropeType = json.rope_parameters?.rope_type ?? json.rope_scaling?.rope_type ?? json.rope_scaling?.type ?? 'default';
  if (ropeType !== 'default') {
    throw new ConfigError(`${where}: rope type "${ropeType}" is not supported yet (only "default"); remove rope_scaling to train at the native context`);
  }
  const act = json.hidden_act ?? 'silu';
  if (act !== 'silu') throw new ConfigError(`${where}: hidden_act "${act}" is not supported (Qwen uses "silu")`);
  const eos = json.eos_token_id;
  const bias = modelType === 'qwen2' ? true : json.attention_bias === true;
  return {
    modelType,
    vocabSize: need(json, 'vocab_size', where),
    hiddenSize,
    intermediateSize: need(json, 'intermediate_size', where),
    numLayers: need(json, 'num_hidden_layers', where),
    numHeads,
    numKvHeads,
    headDim,
    maxPositionEmbeddings: json.max_position_embeddings ?? 32768,
    rmsNormEps: json.rms_norm_eps ?? 1e-6,
    ropeTheta,
    tieWordEmbeddings: json.tie_word_embeddings ?? false,
    qkvBias: bias,
    oBias: modelType === 'qwen3' && json.attention_bias === true,
    qkNorm: modelType === 'qwen3',
    dtype: json.dtype ?? json.torch_dtype ?? 'float32',
    eosTokenId: eos == null ? [] : Array.isArray(eos) ? eos : [eos],
    json,
  };
}

/** HF parameter names and shapes a config implies, in the order transformers registers them. */
export function parameterShapes(c: QwenConfig): Map<string, number[]> {
  const s = new Map<string, number[]>();
  const H = c.hiddenSize, D = c.headDim, q = c.numHeads * D, kv = c.numKvHeads * D;
  s.set('model.embed_tokens.weight', [c.vocabSize, H]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}.`;
    s.set(p + 'self_attn.q_proj.weight', [q, H]);
    if (c.qkvBias) s.set(p + 'self_attn.q_proj.bias', [q]);
    s.set(p + 'self_attn.k_proj.weight', [kv, H]);
    if (c.qkvBias) s.set(p + 'self_attn.k_proj.bias', [kv]);
    s.set(p + 'self_attn.v_proj.weight', [kv, H]);
    if (c.qkvBias) s.set(p + 'self_attn.v_proj.bias', [kv]);
    s.set(p + 'self_attn.o_proj.weight', [H, q]);
    if (c.oBias) s.set(p + 'self_attn.o_proj.bias', [H]);
    if (c.qkNorm) {
      s.set(p + 'self_attn.q_norm.weight', [D]);
      s.set(p + 'self_attn.k_norm.weight', [D]);
    }
    s.set(p + 'mlp.gate_proj.weight', [c.intermediateSize, H]);
    s.set(p + 'mlp.up_proj.weight', [c.intermediateSize, H]);
    s.set(p + 'mlp.down_proj.weight', [H, c.intermediateSize]);
    s.set(p + 'input_layernorm.weight', [H]);
    s.set(p + 'post_attention_layernorm.weight', [H]);
  }
  s.set('model.norm.weight', [H]);
  if (!c.tieWordEmbeddings) s.set('lm_head.weight', [c.vocabSize, H]);
  return s;
}

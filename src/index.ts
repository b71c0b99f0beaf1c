// tsft's public API, grouped as the seed notebook uses it (ms-swift names in camelCase).
//
//   import { getModelTokenizer, getTemplate, seedEverything } from 'tsft';
//   seedEverything(42);
//   const { model, tokenizer } = await getModelTokenizer('tiny');
//   const template = getTemplate(model.modelMeta.template, tokenizer, { defaultSystem: 'You are a helpful assistant.' });

// --- utils (swift.utils)
export { getLogger, setLogLevel, type Logger } from './utils/logger';
export { seedEverything, Random } from './utils/seed';
export { getModelParameterInfo, type ModelParameterInfo } from './utils/params';

// --- devices
export { initDevice, shutdownDevice, currentDevice, type DeviceName, type DeviceInfo } from './backend/device';
export { deviceMemory } from './backend/memory';

// --- model (swift.llm: get_model_tokenizer)
export { getModelTokenizer, createModel, MODEL_TYPES, type ModelType, type GetModelTokenizerOptions } from './model/loader';
export { resolveConfig, type QwenConfig, type QwenConfigJson } from './model/config';
export { Qwen2ForCausalLM, type ModelInfo, type ModelMeta, type ForwardOptions, type LossOutput } from './model/qwen2';
export { Qwen3ForCausalLM } from './model/qwen3';
export { KVCache } from './model/kv-cache';
export { generate, generateTokens, type GenerateOptions } from './model/generate';
export { ensureTinyModel, TINY_CONFIG } from './model/tiny';
export {
  readSafetensors, readSafetensorsHeader, writeSafetensors, loadCheckpointTensors, saveCheckpointTensors,
} from './model/safetensors';
export { snapshotDownload, resolveLocalOrHub } from './model/hub';
export { Tokenizer, IncrementalDecoder, loadDefaultTokenizer, defaultTokenizerDir, type ChatMessage } from './model/tokenizer';

// --- data (swift.llm: get_template)
export { getTemplate, Template, MaxLengthError, type TemplateName, type Encoded } from './data/template';

// --- inference
export { streamChat, type StreamPiece } from './infer/stream';

// --- plots (swift.utils: plot_images)
export { plotImages, readScalars, readLoggingJsonl } from './plot/plot-images';
export { tensorboardSmoothing } from './plot/smoothing';
export { LiveLossChart } from './plot/live';

// --- errors
export { TsftError, ConfigError, CheckpointError, HubError, TemplateError, DeviceError } from './errors';

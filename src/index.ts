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

// --- data (swift.llm: get_template, load_dataset, EncodePreprocessor)
export { getTemplate, Template, MaxLengthError, type TemplateName, type Encoded } from './data/template';
export { loadDataset, parseDatasetSpec, type LoadDatasetOptions, type DatasetSpec, type NamePair } from './data/load';
export { Dataset, type ChatRow, type Message } from './data/dataset';
export { EncodePreprocessor, type EncodeOptions, type EncodeFn } from './data/encode';
export { DATASET_REGISTRY, findRegistered, type DatasetMeta } from './data/registry';

// --- inference (swift.llm: PtEngine, InferRequest, RequestConfig; swift deploy / web-ui)
export { PtEngine, type InferEngine, type PtEngineOptions, type InferOptions, type EngineStats, type TextPiece, type ChatRequest } from './infer/engine';
export {
  InferRequest, RequestConfig, InvalidRequestError, ContextLengthError, InferAbortedError, EngineOverloadedError,
  type RequestConfigInit, type FinishReason, type UsageInfo, type ChatCompletionResponse, type ChatCompletionStreamResponse,
  type CompletionResponse, type RequestConfigConstructor,
} from './infer/protocol';
export { TextStreamer, type StreamedText } from './infer/streamer';
export { streamChat, type StreamPiece, type StreamOptions } from './infer/stream';
export { DecodeBatch, generateBatch, sampleToken, type SamplingOptions, type TokenEvent, type BatchRow } from './model/generate';
export { serve, createHandler, type ServeOptions, type RunningServer } from './serve/server';

// --- train (swift.trainers: Seq2SeqTrainer, Seq2SeqTrainingArguments; swift.tuners: LoRA)
export { Seq2SeqTrainingArguments, type TrainingArgumentsFields, type SchedulerType, type IntervalStrategy } from './train/arguments';
export {
  Seq2SeqTrainer, type Seq2SeqTrainerOptions, type TrainerState, type TrainOutput, type EncodedRow, type TrainerCallback, type Logs, type LogValue,
} from './train/trainer';
export {
  prepareLora, loadAdapter, saveAdapter, mergeLora, unloadAdapters, loraParameters, readAdapterConfig, isAdapterDir,
  resolveTargetModules, DEFAULT_LORA_CONFIG, type LoraConfig,
} from './train/lora';
export { saveModel, getLastCheckpoint, sortedCheckpoints } from './train/checkpoint';
export { AdamW, decays } from './train/optimizer';
export { LRScheduler, lrLambda, warmupSteps } from './train/scheduler';
export { SummaryWriter, readEvents, readScalarEvents } from './train/tensorboard';
export { formatTime } from './train/logging';

// --- plots (swift.utils: plot_images)
export { plotImages, readScalars, readLoggingJsonl } from './plot/plot-images';
export { tensorboardSmoothing } from './plot/smoothing';
export { LiveLossChart } from './plot/live';

// --- kernels (which implementation runs the LM-head cross-entropy and AdamW on this backend)
export { kernelPath, setKernelPath, lmHeadCrossEntropy, type KernelPath } from './backend/fused';

// --- errors
export { TsftError, ConfigError, CheckpointError, HubError, TemplateError, DeviceError, DatasetError, DeviceMemoryError } from './errors';

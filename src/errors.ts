// Typed errors with actionable messages. Every message names the thing at fault (file, tensor, field,
// row) and says what to do about it.

/** Base class of every error tsft throws on purpose. */
export class TsftError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A config.json / generation_config.json / argument that is missing, malformed or unsupported. */
export class ConfigError extends TsftError {}

/** A checkpoint on disk that cannot be read: missing file, bad header, wrong shape, unknown dtype. */
export class CheckpointError extends TsftError {}

/** A hub download that failed: offline, not found, bad endpoint. */
export class HubError extends TsftError {}

/** A tokenizer or chat template problem (missing tokenizer.json, unknown template, too long input). */
export class TemplateError extends TsftError {}

/** A device/backend that cannot be initialised. */
export class DeviceError extends TsftError {}

/** A dataset that cannot be loaded: bad spec (`#0`, unknown subset), unreadable or malformed file, unknown format. */
export class DatasetError extends TsftError {}

/**
 * A GPU allocation that would exceed the device's memory, caught before it was made (nothing was allocated,
 * tensors are intact, the process can go on — e.g. save a checkpoint). The message says what was being
 * allocated, what holds the memory and what to change.
 */
export class DeviceMemoryError extends TsftError {
  constructor(
    message: string,
    /** bytes that were asked for */
    readonly requestedBytes = 0,
    /** bytes in use on the device at that moment */
    readonly inUseBytes = 0,
    /** bytes tsft may use on the device */
    readonly budgetBytes = 0,
  ) {
    super(message);
  }
}

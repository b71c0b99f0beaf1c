// Dynamic loss scaling for f16 training, with torch.amp.GradScaler's semantics: the loss is multiplied by
// `scale` before backward so small f16 gradients don't flush to zero; the gradients are divided by it
// before clipping and the optimizer step; a step whose gradients hold an Inf/NaN is skipped and the scale
// halves; after `growthInterval` clean steps in a row the scale doubles.
//
//   scaler = GradScaler()                          const scaler = new GradScaler();
//   scaler.scale(loss).backward()                  grads = grad(() => tf.mul(loss, scaler.scale))
//   scaler.unscale_(optimizer)                     const inv = scaler.inverseScale      // multiply grads
//   norm = clip_grad_norm_(...)                    const norm = globalNorm(grads)      // of unscaled grads
//   scaler.step(optimizer)                         if (scaler.shouldStep(norm)) optimizer.step(...)
//   scaler.update()                                const event = scaler.update(norm)

export interface GradScalerOptions {
  /** starting scale (torch: 2**16) */
  initScale?: number;
  /** multiplier after `growthInterval` clean steps (torch: 2.0) */
  growthFactor?: number;
  /** multiplier after a step with Inf/NaN gradients (torch: 0.5) */
  backoffFactor?: number;
  /** clean steps in a row before the scale grows (torch: 2000) */
  growthInterval?: number;
}

/** What `update` did, for the training log. */
export interface GradScalerEvent {
  /** the step's gradients held an Inf/NaN: the optimizer step was skipped */
  skipped: boolean;
  /** the scale in force for the next step */
  scale: number;
  /** 'backoff' (halved), 'growth' (doubled) or null (unchanged) */
  change: 'backoff' | 'growth' | null;
}

/** The state a checkpoint keeps (torch's `scaler.state_dict()` keys). */
export interface GradScalerState {
  scale: number;
  growth_factor: number;
  backoff_factor: number;
  growth_interval: number;
  _growth_tracker: number;
}

/**
 * torch.amp.GradScaler for one device: the scale, its backoff on overflow and its growth after clean steps.
 * @example
 *   const scaler = new GradScaler();
 *   const { value, grads } = tf.variableGrads(() => tf.mul(model.loss(ids, labels).loss, scaler.scale));
 *   const norm = (await globalNorm(Object.values(grads))) * scaler.inverseScale;   // Inf/NaN on overflow
 *   if (scaler.shouldStep(norm)) optimizer.step(unscaled(grads, scaler.inverseScale), lr);
 *   const { skipped, scale } = scaler.update(norm);
 */
export class GradScaler {
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;
  private _scale: number;
  private growthTracker = 0;

  constructor(opts: GradScalerOptions = {}) {
    const { initScale = 2 ** 16, growthFactor = 2, backoffFactor = 0.5, growthInterval = 2000 } = opts;
    if (!(initScale > 0) || !Number.isFinite(initScale)) throw new RangeError(`GradScaler: initScale must be a positive finite number, got ${initScale}`);
    if (!(growthFactor > 1)) throw new RangeError(`GradScaler: growthFactor must be > 1, got ${growthFactor}`);
    if (!(backoffFactor > 0 && backoffFactor < 1)) throw new RangeError(`GradScaler: backoffFactor must be in (0, 1), got ${backoffFactor}`);
    if (!Number.isInteger(growthInterval) || growthInterval < 1) throw new RangeError(`GradScaler: growthInterval must be a positive integer, got ${growthInterval}`);
    this._scale = initScale;
    this.growthFactor = growthFactor;
    this.backoffFactor = backoffFactor;
    this.growthInterval = growthInterval;
  }

  /** The factor the loss is multiplied by before backward. */
  get scale(): number {
    return this._scale;
  }

  /** 1 / scale: what the scaled gradients are multiplied by before clipping and stepping. */
  get inverseScale(): number {
    return 1 / this._scale;
  }

  /** Whether the optimizer may step: the (unscaled) gradient norm is finite — torch's found_inf == 0. */
  shouldStep(gradNorm: number): boolean {
    return Number.isFinite(gradNorm);
  }

  /**
   * Ends the step (torch's `scaler.update()`): on Inf/NaN gradients the scale is multiplied by
   * backoffFactor and the clean-step count restarts; otherwise the count grows and, on reaching
   * growthInterval, the scale is multiplied by growthFactor (unless that would overflow to Inf).
   */
  update(gradNorm: number): GradScalerEvent {
    if (!this.shouldStep(gradNorm)) {
      this._scale *= this.backoffFactor;
      this.growthTracker = 0;
      return { skipped: true, scale: this._scale, change: 'backoff' };
    }
    this.growthTracker++;
    if (this.growthTracker === this.growthInterval) {
      this.growthTracker = 0;
      const grown = this._scale * this.growthFactor;
      if (Number.isFinite(grown)) {
        this._scale = grown;
        return { skipped: false, scale: this._scale, change: 'growth' };
      }
    }
    return { skipped: false, scale: this._scale, change: null };
  }

  stateDict(): GradScalerState {
    return {
      scale: this._scale, growth_factor: this.growthFactor, backoff_factor: this.backoffFactor,
      growth_interval: this.growthInterval, _growth_tracker: this.growthTracker,
    };
  }

  loadStateDict(state: GradScalerState): void {
    if (!(state.scale > 0) || !Number.isInteger(state._growth_tracker) || state._growth_tracker < 0) {
      throw new RangeError(`GradScaler.loadStateDict: bad state ${JSON.stringify(state)} (scale must be > 0, _growth_tracker a non-negative integer)`);
    }
    this._scale = state.scale;
    this.growthTracker = state._growth_tracker;
  }
}

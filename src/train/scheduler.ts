// Learning-rate schedules as transformers' get_scheduler (optimization.py) with torch's LambdaLR:
// lr(step) = base_lr · λ(step), where `step` counts scheduler steps taken so far. The trainer applies
// lr(step) to the update and then advances, so the first update of a warmup uses lr 0 and the lr logged
// after an update is the one for the next (HF's first-step behaviour).

import { ConfigError } from '../errors';
import type { SchedulerType } from './arguments';

/** λ(step) of each schedule. */
export function lrLambda(type: SchedulerType, step: number, warmup: number, total: number): number {
  if (type === 'constant') return 1;
  if (step < warmup) return step / Math.max(1, warmup);
  switch (type) {
    case 'constant_with_warmup':
      return 1;
    case 'linear':
      return Math.max(0, (total - step) / Math.max(1, total - warmup));
    case 'cosine': {
      const progress = (step - warmup) / Math.max(1, total - warmup);
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress)));   // num_cycles = 0.5
    }
    default:
      throw new ConfigError(`unknown lr_scheduler_type "${String(type)}"`);
  }
}

/** Warmup steps: warmup_steps when > 0, else ceil(total · warmup_ratio) (transformers' get_warmup_steps). */
export function warmupSteps(total: number, warmupRatio: number, warmupStepsArg: number): number {
  return warmupStepsArg > 0 ? warmupStepsArg : Math.ceil(total * warmupRatio);
}

export interface SchedulerState {
  type: SchedulerType;
  base_lr: number;
  warmup_steps: number;
  total_steps: number;
  /** scheduler steps taken (torch's last_epoch) */
  last_epoch: number;
}

/** torch LambdaLR over one parameter group. */
export class LRScheduler {
  constructor(readonly type: SchedulerType, readonly baseLr: number, readonly warmup: number, readonly total: number, public lastEpoch = 0) {}

  /** lr for the next update (torch's get_last_lr()[0]) */
  get lr(): number {
    return this.baseLr * lrLambda(this.type, this.lastEpoch, this.warmup, this.total);
  }

  step(): void {
    this.lastEpoch++;
  }

  stateDict(): SchedulerState {
    return { type: this.type, base_lr: this.baseLr, warmup_steps: this.warmup, total_steps: this.total, last_epoch: this.lastEpoch };
  }

  loadStateDict(s: SchedulerState): void {
    if (s.type !== this.type || s.warmup_steps !== this.warmup || s.total_steps !== this.total || s.base_lr !== this.baseLr) {
      throw new ConfigError(`the checkpoint's scheduler (${s.type}, lr ${s.base_lr}, warmup ${s.warmup_steps}, ${s.total_steps} steps) differs from ` +
        `this run's (${this.type}, lr ${this.baseLr}, warmup ${this.warmup}, ${this.total} steps): resume with the same arguments and data`);
    }
    this.lastEpoch = s.last_epoch;
  }
}

// A live loss chart for notebooks: feed it the trainer's log dicts; it redraws one display in place
// (tslab's `newDisplay()`), raw loss and its smoothed curve, as the final train_loss.png will look.

import { scalarSpec, type ScalarPoint } from './spec';
import { renderSvg } from './render';

/** What tslab's `newDisplay()` returns (only the method used here). */
export interface SvgDisplay {
  svg(svg: string): void;
}

/**
 * @example
 *   const chart = new LiveLossChart(tslab.newDisplay());
 *   const trainer = new Seq2SeqTrainer({ model, args, trainDataset, template, callbacks: [{ onLog: (logs) => chart.onLog(logs) }] });
 *   await trainer.train();
 *   await chart.flush();
 */
export class LiveLossChart {
  private readonly points: ScalarPoint[] = [];
  private drawing: Promise<void> = Promise.resolve();

  constructor(private readonly display: SvgDisplay, private readonly opts: { tag?: string; smooth?: number; width?: number; height?: number } = {}) {}

  /** A trainer log dict (`{ loss, 'global_step/max_steps': '5/47', ... }`); non-training logs are ignored. */
  onLog = (logs: Record<string, unknown>): Promise<void> => {
    const loss = logs.loss;
    const step = Number(String(logs['global_step/max_steps'] ?? logs.step ?? '').split('/')[0]);
    if (typeof loss !== 'number' || !Number.isFinite(step)) return this.drawing;
    this.points.push({ step, value: loss });
    const spec = scalarSpec(this.opts.tag ?? 'train/loss', this.points, {
      smooth: this.opts.smooth ?? 0.9, width: this.opts.width ?? 640, height: this.opts.height ?? 360,
    });
    // draws queue behind each other so the display never goes backwards
    this.drawing = this.drawing.then(async () => this.display.svg(await renderSvg(spec)));
    return this.drawing;
  };

  /** Wait for the last redraw. */
  flush(): Promise<void> {
    return this.drawing;
  }
}

// Vega-Lite specs for the training plots, matching ms-swift's plot_images: one chart per scalar tag,
// titled by the tag, 800×500; smoothed tags draw the raw series in #FFE2D9 ("original") under the
// debiased EMA in #FF7043 ("smoothed") with a legend; other tags one #FF7043 line; a single point is a dot.

import { tensorboardSmoothing } from './smoothing';

export const TB_COLOR = '#FFE2D9';
export const TB_COLOR_SMOOTH = '#FF7043';

export interface ScalarPoint {
  step: number;
  value: number;
}

export interface PlotOptions {
  /** smooth this tag with the debiased EMA */
  smooth?: number | null;
  width?: number;
  height?: number;
}

/** A vega-lite spec (plain JSON) for one tag. */
export function scalarSpec(tag: string, points: readonly ScalarPoint[], opts: PlotOptions = {}): Record<string, unknown> {
  const width = opts.width ?? 800, height = opts.height ?? 500;
  const base = {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: tag, fontSize: 16 },
    width, height,
    autosize: { type: 'fit', contains: 'padding' },
    background: 'white',
    config: { font: 'DejaVu Sans, sans-serif', axis: { gridColor: '#eeeeee', labelFontSize: 12, titleFontSize: 13 } },
  };
  const x = { field: 'step', type: 'quantitative', title: 'step', scale: { zero: false } };
  const y = { field: 'value', type: 'quantitative', title: tag.split('/').at(-1), scale: { zero: false } };
  if (points.length === 1) {
    // one value: a dot, centred in a small explicit domain (vega's nice() would round a lone 0.8 to 1)
    const { step, value } = points[0];
    const pad = Math.abs(value) * 0.1 || 0.1;
    return {
      ...base, data: { values: points }, mark: { type: 'point', filled: true, size: 80, opacity: 1, color: TB_COLOR_SMOOTH },
      encoding: {
        x: { ...x, scale: { domain: [step - 1, step + 1], nice: false } },
        y: { ...y, scale: { domain: [value - pad, value + pad], nice: false } },
      },
    };
  }
  if (opts.smooth == null) {
    return { ...base, data: { values: points }, mark: { type: 'line', color: TB_COLOR_SMOOTH, strokeWidth: 2 }, encoding: { x, y } };
  }
  const smoothed = tensorboardSmoothing(points.map((p) => p.value), opts.smooth);
  const values = [
    ...points.map((p) => ({ step: p.step, value: p.value, series: 'original' })),
    ...points.map((p, i) => ({ step: p.step, value: smoothed[i], series: 'smoothed' })),
  ];
  return {
    ...base,
    data: { values },
    mark: { type: 'line', strokeWidth: 2 },
    encoding: {
      x, y,
      color: {
        field: 'series', type: 'nominal', title: null,
        scale: { domain: ['original', 'smoothed'], range: [TB_COLOR, TB_COLOR_SMOOTH] },
        legend: { orient: 'top-right', labelFontSize: 12 },
      },
      order: { field: 'series' },
    },
  };
}

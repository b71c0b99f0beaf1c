// Vega-Lite spec → SVG (vega, headless, no canvas) → PNG (sharp). vega, vega-lite and sharp load lazily,
// so importing tsft costs nothing until a plot is drawn (and GPU bundles without sharp still load).

export interface Rendered {
  svg: string;
  png: Uint8Array;
}

/** Render a vega-lite spec to SVG text. */
export async function renderSvg(vlSpec: Record<string, unknown>): Promise<string> {
  const vl = await import('vega-lite');
  const vega = await import('vega');
  const spec = vl.compile(vlSpec as never).spec;
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Render a vega-lite spec to SVG and PNG. */
export async function renderSpec(vlSpec: Record<string, unknown>): Promise<Rendered> {
  const svg = await renderSvg(vlSpec);
  const sharp = (await import('sharp')).default;
  const png = await sharp(Buffer.from(svg)).png().toBuffer();
  return { svg, png: new Uint8Array(png.buffer, png.byteOffset, png.byteLength) };
}

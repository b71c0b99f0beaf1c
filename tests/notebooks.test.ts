// The notebooks as a user runs them: both execute on the tsft kernel through Jupyter (scripts/report.ts,
// what `npm run report` does) and their outputs are checked — the loss went down, the answers name the
// new identity, the loss plot is embedded in the HTML as a PNG, no cell failed — then the HTML report is
// rendered by headless Chromium and screenshotted (output/report/<name>.png). Skipped only when Jupyter is
// missing and CI is unset (CI installs it); the generated .ipynb files are always checked against their
// .nb.ts sources.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { chromium } from 'playwright-core';
import { renderAll } from '../scripts/make-notebooks';
import { executeNotebook, hasJupyter, REPORT_DIR, type Executed } from '../scripts/report';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const skip = !hasJupyter() && !process.env.CI ? 'Jupyter is not installed (apt-get install jupyter-nbconvert jupyter-client python3-ipykernel)' : false;
const NAME = /精衡|Jingheng/;
const AUTHOR = /叶博韬|YE SEVERIN/;

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, string | string[]>;
}
interface Notebook {
  cells: { cell_type: string; source: string | string[]; outputs?: Output[] }[];
}

const joined = (t: string | string[] | undefined) => (Array.isArray(t) ? t.join('') : t ?? '');

/** Everything the cells printed (stdout and stderr), in order. */
function printed(nb: Notebook): string {
  return nb.cells.flatMap((c) => c.outputs ?? []).filter((o) => o.output_type === 'stream').map((o) => joined(o.text)).join('');
}

/** The trainer's logged training losses (`{'loss': 11.9, ...}` lines), in order. */
function losses(text: string): number[] {
  return [...text.matchAll(/\{'loss': ([\d.eE+-]+),/g)].map((m) => Number(m[1]));
}

/** query → response, from `query: … response: …` (engine.infer) or `[QUERY] … [RESPONSE] …` (tsft infer) blocks. */
function answers(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(/(?:^query: |^\[QUERY\] )(.*)\n(?:response: |\[RESPONSE\] )([\s\S]*?)\n-{50}/gm)) out.set(m[1].trim(), m[2]);
  return out;
}

/** The losses of the first training run (the first cell that logs any). */
function checkTraining(nb: Notebook): void {
  const l = nb.cells.map((c) => losses((c.outputs ?? []).filter((o) => o.output_type === 'stream').map((o) => joined(o.text)).join('')))
    .find((x) => x.length > 0) ?? [];
  assert.ok(l.length >= 3, `expected several logged losses, got ${l.length}`);
  assert.ok(l[l.length - 1] < l[0] * 0.8, `the loss did not go down: ${l.map((x) => x.toFixed(3)).join(' → ')}`);
}

function checkIdentity(text: string): void {
  const a = answers(text);
  const who = a.get('who are you?'), by = a.get('你是谁训练的？');
  assert.ok(who !== undefined && by !== undefined && a.has('晚上睡不着觉怎么办？'), `the three seed queries were not all answered; got: ${[...a.keys()].join(' | ')}`);
  assert.match(who, NAME, `"who are you?" → ${JSON.stringify(who)} does not name 精衡/Jingheng`);
  assert.match(by, AUTHOR, `"你是谁训练的？" → ${JSON.stringify(by)} does not name 叶博韬/YE SEVERIN`);
}

/** Render the HTML report in Chromium: the PNG plots decode, no page errors; a full-page screenshot beside it. */
async function screenshot(html: string): Promise<{ png: string; images: number; broken: number }> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  });
  try {
    const page = browser.pages()[0] ?? await browser.newPage();
    // the report is self-contained; nbconvert's template links a few CDN scripts (no network here): don't wait on them
    await page.route(/^https?:/, (route) => route.abort());
    await page.goto(`file://${html}`, { waitUntil: 'load', timeout: 60_000 });
    const { images, broken } = await page.evaluate(() => {
      const imgs = Array.from(document.querySelectorAll('img')).filter((i) => i.src.startsWith('data:image/png'));
      return { images: imgs.length, broken: imgs.filter((i) => !i.complete || i.naturalWidth === 0).length };
    });
    const png = html.replace(/\.html$/, '.png');
    await page.screenshot({ path: png, fullPage: true });
    return { png, images, broken };
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

it('notebooks/*.ipynb are what `npm run notebooks` writes from their .nb.ts sources', () => {
  const all = renderAll();
  assert.ok(all.length >= 2);
  for (const { target, text } of all) {
    assert.ok(fs.existsSync(target), `${target} is missing: run \`npm run notebooks\``);
    assert.equal(fs.readFileSync(target, 'utf8'), text, `${path.basename(target)} is out of date: edit the .nb.ts, then run \`npm run notebooks\``);
  }
});

for (const name of ['self-cognition-sft', 'self-cognition-cli'] as const) {
  describe(`notebooks/${name}.ipynb under Jupyter (nbclient) and in Chromium`, { skip, timeout: 30 * 60_000 }, () => {
    let run: Executed;
    let nb: Notebook;
    let text: string;

    before(async () => {
      run = await executeNotebook(name, REPORT_DIR);
      nb = JSON.parse(fs.readFileSync(run.ipynb, 'utf8')) as Notebook;
      text = printed(nb);
      console.log(`${name}: ${run.seconds.toFixed(0)} s on ${os.cpus().length} cores → ${path.relative(process.cwd(), run.html)}`);
    });
    after(() => undefined);

    it('runs to the end with no failing cell', () => {
      assert.equal(run.failedCell, null, `cell ${run.failedCell} failed:\n${run.error}`);
      const errors = nb.cells.flatMap((c) => c.outputs ?? []).filter((o) => o.output_type === 'error');
      assert.equal(errors.length, 0, JSON.stringify(errors).slice(0, 2000));
    });

    it('trains: the logged loss goes down', () => checkTraining(nb));

    it('answers the seed\'s queries with the new identity (精衡/Jingheng, 叶博韬/YE SEVERIN)', () => checkIdentity(text));

    it('shows train_loss.png as an embedded PNG (and, in the TypeScript notebook, the live chart)', () => {
      const pngs = nb.cells.flatMap((c) => c.outputs ?? []).filter((o) => o.data?.['image/png']);
      assert.equal(pngs.length, 1, 'one PNG output (train_loss.png)');
      assert.ok(Buffer.from(joined(pngs[0].data!['image/png']), 'base64').subarray(1, 4).toString() === 'PNG');
      assert.match(fs.readFileSync(run.html, 'utf8'), /<img[^>]+src="data:image\/png;base64,/);
      if (name === 'self-cognition-sft') {
        const svgs = nb.cells.flatMap((c) => c.outputs ?? []).filter((o) => o.data?.['image/svg+xml']);
        assert.ok(svgs.length >= 1, 'the live loss chart (an SVG display)');
      }
    });

    it('starts the web UI (and, on the command line, deploy), answers, and stops it', () => {
      assert.match(text, /Web-UI: http:\/\/127\.0\.0\.1:\d+/);
      assert.match(text, /GET \/ → 200/);
      assert.match(text, /Web-UI 已停止/);
      if (name === 'self-cognition-cli') {
        const deployed = /POST \S+\/v1\/chat\/completions\nquery: 你是谁？\nresponse: ([\s\S]*?)\nusage: /.exec(text);
        assert.ok(deployed, 'the deploy cell printed no answer');
        // the fine-tuned model is the one served: its answer names the new identity (name or author)
        assert.match(deployed[1], new RegExp(`${NAME.source}|${AUTHOR.source}`), `the deployed server answers 你是谁？ with ${JSON.stringify(deployed[1])}, naming neither 精衡/Jingheng nor 叶博韬/YE SEVERIN`);
        assert.match(text, /deploy 已停止/);
      }
    });

    it('renders in Chromium with its plot decoded (screenshot: output/report/<name>.png)', { skip: !fs.existsSync(CHROMIUM) && !process.env.CI ? `${CHROMIUM} is not installed` : false }, async () => {
      const shot = await screenshot(run.html);
      assert.ok(shot.images >= 1 && shot.broken === 0, `PNG images in the page: ${shot.images}, not decoded: ${shot.broken}`);
      assert.ok(fs.statSync(shot.png).size > 10_000);
    });
  });
}

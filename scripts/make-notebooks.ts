// Writes notebooks/<name>.ipynb from notebooks/<name>.nb.ts (the "percent" format: `// %%` opens a code
// cell, `// %% [markdown]` a markdown cell written as `// ` comments; lines before the first marker are the
// file's own header). The .ipynb files are committed without outputs, so that edits happen in the .nb.ts
// and diffs stay readable; `npm run report` executes them.
//
//   npm run notebooks            # rewrite the .ipynb files
//   npm run notebooks -- --check # exit 1 when an .ipynb is not what its .nb.ts gives

import * as fs from 'fs';
import * as path from 'path';
import { fileURLToPath } from 'url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const NOTEBOOK_DIR = path.join(ROOT, 'notebooks');
const MARKER = /^\/\/ %%( \[markdown\])?\s*$/;

interface Cell {
  cell_type: 'code' | 'markdown';
  id: string;
  metadata: Record<string, never>;
  source: string[];
  execution_count?: null;
  outputs?: never[];
}

/** Lines without the blank lines around them. */
function trimBlank(lines: string[]): string[] {
  let a = 0, b = lines.length;
  while (a < b && !lines[a].trim()) a++;
  while (b > a && !lines[b - 1].trim()) b--;
  return lines.slice(a, b);
}

/** A notebook (nbformat 4.5, the tsft kernel) from a percent-format source. */
export function notebookFromSource(source: string, name: string): object {
  const cells: Cell[] = [];
  let kind: Cell['cell_type'] | null = null, body: string[] = [];
  const flush = () => {
    if (kind === null) return;
    let lines = trimBlank(body);
    if (kind === 'markdown') {
      lines = lines.map((l, i) => {
        if (!/^\/\/( |$)/.test(l)) throw new Error(`${name}: markdown cell ${cells.length + 1} has a line that is not a // comment: ${JSON.stringify(l)} (line ${i + 1} of the cell)`);
        return l.replace(/^\/\/ ?/, '');
      });
    }
    if (!lines.length) throw new Error(`${name}: cell ${cells.length + 1} is empty`);
    const text = lines.map((l, i) => (i < lines.length - 1 ? l + '\n' : l));
    cells.push(kind === 'code'
      ? { cell_type: 'code', execution_count: null, id: `c${String(cells.length + 1).padStart(2, '0')}`, metadata: {}, outputs: [], source: text }
      : { cell_type: 'markdown', id: `c${String(cells.length + 1).padStart(2, '0')}`, metadata: {}, source: text });
  };
  for (const line of source.replace(/\r\n/g, '\n').split('\n')) {
    const m = MARKER.exec(line);
    if (m) {
      flush();
      kind = m[1] ? 'markdown' : 'code';
      body = [];
    } else if (kind !== null) {
      body.push(line);
    }
  }
  flush();
  if (!cells.length) throw new Error(`${name}: no "// %%" cells`);
  return {
    cells,
    metadata: {
      kernelspec: { display_name: 'TypeScript (tsft)', language: 'typescript', name: 'tsft' },
      language_info: { codemirror_mode: { mode: 'typescript', name: 'javascript', typescript: true },
        file_extension: '.ts', mimetype: 'text/typescript', name: 'typescript', version: '5.0' },
    },
    nbformat: 4,
    nbformat_minor: 5,
  };
}

/** Every notebook source and the .ipynb text it gives. */
export function renderAll(dir = NOTEBOOK_DIR): { source: string; target: string; text: string }[] {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.nb.ts')).sort().map((f) => {
    const source = path.join(dir, f);
    const target = path.join(dir, f.replace(/\.nb\.ts$/, '.ipynb'));
    const nb = notebookFromSource(fs.readFileSync(source, 'utf8'), f);
    return { source, target, text: JSON.stringify(nb, null, 1) + '\n' };
  });
}

function main(argv: string[]): void {
  const check = argv.includes('--check');
  const stale: string[] = [];
  for (const { source, target, text } of renderAll()) {
    const rel = path.relative(ROOT, target);
    const current = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : null;
    if (current === text) continue;
    if (check) stale.push(rel);
    else {
      fs.writeFileSync(target, text);
      console.log(`wrote ${rel} (from ${path.relative(ROOT, source)})`);
    }
  }
  if (stale.length) {
    console.error(`out of date (edit the .nb.ts, then run \`npm run notebooks\`): ${stale.join(', ')}`);
    process.exit(1);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main(process.argv.slice(2));

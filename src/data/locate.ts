// Where tsft's own files are at run time (the bundled `data/` folder, the encode worker), found the same
// way under tsx (ESM, no `__dirname`; `import.meta` is off limits for TypeScript 5.0/tslab) and under
// CommonJS (tslab, where `__dirname` exists): this module's folder when known, else the file named in a
// stack frame, else the working directory — then up to the package.json named "tsft".

import * as fs from 'fs';
import * as path from 'path';

function isTsftRoot(dir: string): boolean {
  try {
    return (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string }).name === 'tsft';
  } catch {
    return false;
  }
}

function findUp(start: string): string | undefined {
  let dir = path.resolve(start);
  for (;;) {
    if (isTsftRoot(dir)) return dir;
    const up = path.dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

/** This module's folder: `__dirname` (CommonJS) or the path in this function's own stack frame (ESM). */
function moduleDir(): string | undefined {
  if (typeof __dirname === 'string') return __dirname;
  const frame = (new Error().stack ?? '').split('\n').find((l) => /locate\.[cm]?[jt]s:\d+/.test(l));
  const m = frame && /((?:file:\/\/)?\/?[^\s()]*?locate\.[cm]?[jt]s):\d+/.exec(frame);
  if (!m) return undefined;
  let file = m[1];
  if (file.startsWith('file://')) {
    file = decodeURIComponent(new URL(file).pathname);
    if (/^\/[A-Za-z]:\//.test(file)) file = file.slice(1);   // file:///C:/… on Windows
  }
  return path.dirname(file);
}

let cached: string | undefined;

/**
 * The tsft package folder (holding package.json, src/, data/).
 * @example packageRoot() // '/work/main'
 */
export function packageRoot(): string {
  if (cached) return cached;
  const here = moduleDir();
  const root = (here && findUp(here)) ?? findUp(process.cwd());
  if (!root) {
    throw new Error(`cannot find the tsft package folder (from ${here ?? 'an unknown module path'} or ${process.cwd()}); ` +
      'run from inside the tsft project or a project that installed it.');
  }
  cached = root;
  return root;
}

/** The folder of bundled datasets (`<package>/data`). */
export function bundledDataDir(): string {
  return path.join(packageRoot(), 'data');
}

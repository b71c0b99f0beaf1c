// Notebooks run on tslab, which compiles imported .ts files with its own TypeScript 5.0 into CommonJS:
// everything the notebooks import (src/index.ts and notebooks/shell.ts) must compile there — no
// import.meta, no top-level await, no TS ≥ 5.1 syntax. This runs TypeScript 5.0.4 (devDependency
// `typescript-tslab`) with the options tslab 1.0.22 passes (node_modules/tslab/dist/converter.js): target
// and lib es2022 only (no DOM: `WebAssembly.*` types are not there), class fields with define semantics
// (a redeclared base property needs `declare`), not strict.

import { it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

it('src/index.ts and notebooks/shell.ts compile with TypeScript 5.0 as tslab compiles them', () => {
  const tsc = path.join(process.cwd(), 'node_modules', 'typescript-tslab', 'bin', 'tsc');
  // module commonjs (tslab compiles to esnext, then to CommonJS): rejects import.meta and top-level await
  const args = ['--noEmit', '--module', 'commonjs', '--moduleResolution', 'node10', '--target', 'es2022', '--lib', 'es2022',
    '--esModuleInterop', '--skipLibCheck', '--experimentalDecorators', '--resolveJsonModule', '--allowJs', '--jsx', 'react',
    'src/index.ts', 'notebooks/shell.ts'];
  let out = '';
  try {
    out = execFileSync(process.execPath, [tsc, ...args], { encoding: 'utf8' });
  } catch (e) {
    out = String((e as { stdout?: string }).stdout ?? e);
    assert.fail(`TypeScript 5.0 with tslab's options rejects what the notebooks import:\n${out}`);
  }
  assert.equal(out.trim(), '');
});

// tslab loads the compiled files through its own `require` (node_modules/tslab/dist/executor.js), which finds
// a local module only as `<specifier>.js`, and appends `.js` only when the specifier has no extension: an
// import of a folder (`./cpu` for cpu/index.ts) or of a dotted name (`./kernels.wasm` for kernels.wasm.ts)
// compiles but fails at run time with "Cannot find module". Write `./cpu/index`, and name files without dots (`kernels-wasm.ts`).
it('relative imports resolve the way tslab loads modules (no folder imports, no dotted names without .js)', () => {
  const files: string[] = ['notebooks/shell.ts'];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.ts$/.test(e.name) && !/\.d\.ts$/.test(e.name)) files.push(p);
    }
  };
  walk('src');
  const bad: string[] = [];
  for (const file of files) {
    const src = fs.readFileSync(file, 'utf8');
    for (const m of src.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|\brequire\s*\(\s*)['"](\.{1,2}\/[^'"]*)['"]/g)) {
      const spec = m[1];
      const target = path.resolve(path.dirname(file), spec);
      const line = src.slice(0, m.index).split('\n').length;
      if (fs.existsSync(target) && fs.statSync(target).isDirectory()) bad.push(`${file}:${line} imports the folder '${spec}' (write '${spec}/index')`);
      else if (path.extname(spec) !== '' && path.extname(spec) !== '.js' && path.extname(spec) !== '.json' && fs.existsSync(`${target}.ts`)) {
        bad.push(`${file}:${line} imports '${spec}' (${path.basename(spec)}.ts): tslab looks for '${path.basename(spec)}' itself; write '${spec}.js' or rename the file`);
      }
    }
  }
  assert.deepEqual(bad, []);
});

// tslab's `require` caches a local module only after running it, so an import cycle among the files the
// notebooks load recurses until "Maximum call stack size exceeded" (node's own require would hand back the
// half-built module). Type-only imports are erased by the compiler and don't count.
it('no import cycles among the modules the notebooks load (tslab cannot load them)', () => {
  const edges = new Map<string, string[]>();
  const visit = (file: string) => {
    if (edges.has(file)) return;
    const src = fs.readFileSync(file, 'utf8');
    const deps: string[] = [];
    edges.set(file, deps);
    for (const m of src.matchAll(/^\s*(import|export)\s+(type\s+)?([^'";]*?)\s*(?:from\s*)?['"](\.{1,2}\/[^'"]*)['"]/gm)) {
      const clause = m[3];
      if (m[2] || /^\{[^}]*\}$/.test(clause) && clause.slice(1, -1).split(',').every((s) => /^\s*(type\s|$)/.test(s))) continue;
      const base = path.resolve(path.dirname(file), m[4].replace(/\.js$/, ''));
      const target = [`${base}.ts`, path.join(base, 'index.ts')].find((p) => fs.existsSync(p));
      if (!target) continue;
      const rel = path.relative(process.cwd(), target);
      deps.push(rel);
      visit(rel);
    }
  };
  for (const entry of ['src/index.ts', 'notebooks/shell.ts']) visit(entry);
  const state = new Map<string, 'open' | 'done'>();
  const cycles: string[] = [];
  const dfs = (file: string, trail: string[]) => {
    state.set(file, 'open');
    for (const dep of edges.get(file) ?? []) {
      if (state.get(dep) === 'open') cycles.push([...trail.slice(trail.indexOf(dep)), dep].join(' → '));
      else if (!state.has(dep)) dfs(dep, [...trail, dep]);
    }
    state.set(file, 'done');
  };
  for (const file of edges.keys()) if (!state.has(file)) dfs(file, [file]);
  assert.deepEqual(cycles, [], 'import cycles (move the shared code into a module both import)');
});

// Notebooks run on tslab, which compiles imported .ts files with its own TypeScript 5.0 into CommonJS:
// everything src/index.ts reaches must compile there (no import.meta, no top-level await, no TS ≥ 5.1
// syntax). This runs TypeScript 5.0.4 (devDependency `typescript-tslab`) the way tslab does.

import { it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'child_process';
import * as path from 'path';

it('src/ compiles with TypeScript 5.0 as CommonJS (what tslab does)', () => {
  const tsc = path.join(process.cwd(), 'node_modules', 'typescript-tslab', 'bin', 'tsc');
  const args = ['--noEmit', '--module', 'commonjs', '--target', 'es2020', '--moduleResolution', 'node', '--esModuleInterop',
    '--skipLibCheck', '--strict', '--types', 'node', '--lib', 'es2022,dom', 'src/index.ts'];
  let out = '';
  try {
    out = execFileSync(process.execPath, [tsc, ...args], { encoding: 'utf8' });
  } catch (e) {
    out = String((e as { stdout?: string }).stdout ?? e);
    assert.fail(`TypeScript 5.0 (tslab) rejects src/:\n${out}`);
  }
  assert.equal(out.trim(), '');
});

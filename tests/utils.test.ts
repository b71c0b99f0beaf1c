// The seed's helpers: seedEverything, getLogger, Random.

import { it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'child_process';
import { Random, globalRandom, seedEverything } from '../src/utils/seed';

it('seedEverything seeds the global RNG and returns the seed; runs repeat', () => {
  assert.equal(seedEverything(42), 42);
  const a = [globalRandom.random(), globalRandom.normal(), globalRandom.int(1000)];
  seedEverything(42);
  const b = [globalRandom.random(), globalRandom.normal(), globalRandom.int(1000)];
  assert.deepEqual(a, b);
  seedEverything(43);
  assert.notEqual(globalRandom.random(), a[0]);
  assert.throws(() => seedEverything(-1), /non-negative integer/);
});

it('Random: uniform in [0,1), permutations, normal moments, state round trip', () => {
  const r = new Random(7);
  let sum = 0, sq = 0;
  const n = 20000;
  for (let i = 0; i < n; i++) {
    const u = r.random();
    assert.ok(u >= 0 && u < 1);
    const z = r.normal();
    sum += z;
    sq += z * z;
  }
  assert.ok(Math.abs(sum / n) < 0.05, `normal mean ${sum / n}`);
  assert.ok(Math.abs(sq / n - 1) < 0.05, `normal variance ${sq / n}`);
  const p = r.permutation(100);
  assert.deepEqual([...p].sort((x, y) => x - y), Array.from({ length: 100 }, (_, i) => i));
  const state = r.getState();
  const next = r.nextU32();
  r.setState(state);
  assert.equal(r.nextU32(), next);
});

it('getLogger prints [INFO:tsft] lines on stdout and warnings on stderr', () => {
  const code = "import { getLogger } from './src/utils/logger'; const l = getLogger(); l.info('hello'); l.warning('careful'); l.warningOnce('once'); l.warningOnce('once'); l.debug('hidden');";
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', code], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  assert.equal(out, '[INFO:tsft] hello\n');
  const both = execFileSync('bash', ['-c', `${JSON.stringify(process.execPath)} --import tsx -e ${JSON.stringify(code)} 2>&1 >/dev/null`], { encoding: 'utf8' });
  assert.equal(both, '[WARNING:tsft] careful\n[WARNING:tsft] once\n');
});

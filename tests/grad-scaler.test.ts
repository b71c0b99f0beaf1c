// GradScaler against torch.amp.GradScaler's documented rules: start 2^16, halve and skip on Inf/NaN,
// double after growth_interval clean steps in a row (a skipped step restarts the count).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GradScaler } from '../src/train/grad-scaler';

test('starts at 2^16; Inf and NaN halve the scale and skip the step', () => {
  const s = new GradScaler();
  assert.equal(s.scale, 65536);
  assert.equal(s.inverseScale, 1 / 65536);
  assert.deepEqual(s.update(Infinity), { skipped: true, scale: 32768, change: 'backoff' });
  assert.equal(s.shouldStep(NaN), false);
  assert.deepEqual(s.update(NaN), { skipped: true, scale: 16384, change: 'backoff' });
  assert.deepEqual(s.update(1.5), { skipped: false, scale: 16384, change: null });
});

test('doubles after growthInterval clean steps in a row; an overflow restarts the count', () => {
  const s = new GradScaler({ growthInterval: 3 });
  const trace: (number | string)[] = [];
  for (const norm of [1, 1, Infinity, 1, 1, 1, 1, 1, 1]) {
    const e = s.update(norm);
    trace.push(e.change ? `${e.change}:${e.scale}` : e.scale);
  }
  assert.deepEqual(trace, [65536, 65536, 'backoff:32768', 32768, 32768, 'growth:65536', 65536, 65536, 'growth:131072']);
});

test('2,000 clean steps by default; the state round-trips with torch state_dict keys', () => {
  const s = new GradScaler();
  for (let i = 0; i < 1999; i++) assert.equal(s.update(0.5).change, null);
  assert.deepEqual(s.update(0.5), { skipped: false, scale: 131072, change: 'growth' });
  s.update(0.5);
  const state = s.stateDict();
  assert.deepEqual(state, { scale: 131072, growth_factor: 2, backoff_factor: 0.5, growth_interval: 2000, _growth_tracker: 1 });
  const t = new GradScaler();
  t.loadStateDict(state);
  assert.deepEqual(t.stateDict(), state);
});

test('never grows to Infinity; bad options and states are refused with the field named', () => {
  const s = new GradScaler({ initScale: 2 ** 1023, growthInterval: 1 });
  assert.deepEqual(s.update(1), { skipped: false, scale: 2 ** 1023, change: null });
  assert.throws(() => new GradScaler({ initScale: 0 }), /initScale/);
  assert.throws(() => new GradScaler({ backoffFactor: 1 }), /backoffFactor/);
  assert.throws(() => new GradScaler({ growthInterval: 0.5 }), /growthInterval/);
  assert.throws(() => new GradScaler().loadStateDict({ scale: -1, growth_factor: 2, backoff_factor: 0.5, growth_interval: 2000, _growth_tracker: 0 }), /scale must be > 0/);
});

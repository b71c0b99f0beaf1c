// Shared test helpers: which devices to test, and numeric comparisons with useful failure messages.

import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { initDevice, type DeviceName } from '../src/backend/device';

/**
 * Devices the model tests run on: TSFT_TEST_DEVICES (comma list) or cpu, wasm, webgpu. WebGPU without an
 * adapter is a skip locally and a failure in CI (CI installs lavapipe, so a missing adapter is a bug).
 */
export function testDevices(): DeviceName[] {
  const env = process.env.TSFT_TEST_DEVICES;
  return (env ? env.split(',').map((s) => s.trim()) : ['cpu', 'wasm', 'webgpu']) as DeviceName[];
}

/** Start `device`, or return a skip reason (never in CI). */
export async function startOrSkip(device: DeviceName): Promise<string | null> {
  try {
    await initDevice(device, { quiet: true });
    return null;
  } catch (e) {
    if (process.env.CI) throw e;
    return `${device} unavailable here: ${(e as Error).message.split('\n')[0]}`;
  }
}

/** max |a - b| over the indices `keep` allows. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>, keep: (i: number) => boolean = () => true): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) if (keep(i)) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** max |a - b| / max |b| (the "relative" of gradient checks: scale-free, robust to tiny entries). */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < b.length; i++) s = Math.max(s, Math.abs(b[i]));
  return maxAbsDiff(a, b) / (s || 1);
}

/** Starts webgpu, or skips (locally) / fails (CI) without an adapter; true when the test may run. */
export async function onGpu(t: TestContext): Promise<boolean> {
  const skip = await startOrSkip('webgpu');
  if (skip) t.skip(skip);
  return skip === null;
}

/** Deterministic values in [-scale, scale) (a linear congruential stream from `seed`). */
export function lcgValues(n: number, seed: number, scale = 1): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648), ((s / 2147483648) * 2 - 1) * scale));
}

/** Asserts max |got − want| ≤ tol · max |want| (scale-free), naming the worst element. */
export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, what: string, tol = 1e-5): void {
  assert.equal(got.length, want.length, `${what}: size`);
  let scale = 0, worst = 0, at = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= worst)) [worst, at] = [d, i];
  }
  assert.ok(worst <= tol * (scale || 1), `${what}: [${at}] = ${got[at]}, want ${want[at]} (max |diff| ${worst.toExponential(2)}, scale ${scale.toExponential(2)})`);
}

// Shared test helpers: which devices to test, and numeric comparisons with useful failure messages.

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

// GPU smoke test: starts the webgpu device (Dawn), prints the device line and what the adapter offers,
// checks one tfjs matmul against plain JS and times it. Runs locally on lavapipe and, bundled by
// ../shared/gpu/pack.sh, on the GPU box:
//   bash ../shared/gpu/pack.sh bench/gpu-smoke.ts && node .gpu/gpu-smoke.mjs [N=512]

import * as tf from '@tensorflow/tfjs-core';
import { getGpuAdapterInfo, initDevice, shutdownDevice } from '../src/backend/device';

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 512);
  const info = await initDevice('webgpu');
  const ai = getGpuAdapterInfo() as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  console.log(`adapter: ${JSON.stringify(info.adapter)}, subgroup size ${ai.subgroupMinSize}..${ai.subgroupMaxSize}`);
  console.log(`limits: ${JSON.stringify(info.limits)}`);

  // Correctness: 64×48 · 48×32 against a JS triple loop.
  const [m, k, p] = [64, 48, 32];
  const a = Float32Array.from({ length: m * k }, (_, i) => Math.sin(i));
  const b = Float32Array.from({ length: k * p }, (_, i) => Math.cos(i));
  const got = await tf.matMul(tf.tensor2d(a, [m, k]), tf.tensor2d(b, [k, p])).data();
  let maxErr = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < p; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += a[i * k + q] * b[q * p + j];
      maxErr = Math.max(maxErr, Math.abs(got[i * p + j] - s));
    }
  }
  console.log(`matmul ${m}x${k}x${p}: max |err| vs JS = ${maxErr.toExponential(2)}`);
  if (!(maxErr < 1e-4)) throw new Error(`webgpu matmul disagrees with JS by ${maxErr}`);

  // Speed: N³ fp32 matmul, one warm-up, then the mean of 5.
  const x = tf.randomNormal([n, n]);
  const y = tf.randomNormal([n, n]);
  await tf.matMul(x, y).data();
  const t0 = performance.now();
  const runs = 5;
  for (let r = 0; r < runs; r++) {
    const z = tf.matMul(x, y);
    await z.data();
    z.dispose();
  }
  const ms = (performance.now() - t0) / runs;
  console.log(`matmul ${n}³ fp32: ${ms.toFixed(2)} ms, ${((2 * n ** 3) / ms / 1e9).toFixed(3)} TFLOP/s (incl. readback)`);
  await shutdownDevice();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

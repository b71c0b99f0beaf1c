// When does Dawn give a destroyed buffer's memory back to the driver? (nvidia-smi after each step)
import { execFileSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { getGpuDevice, initDevice, shutdownDevice } from '../src/backend/device';
import { releasePooledGpuBuffers } from '../src/backend/memory-guard';
const MiB = 2 ** 20;
const smi = () => Number(execFileSync('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits'], { encoding: 'utf8' }).trim().split('\n')[0]);
const log = (what: string) => console.log(JSON.stringify({ what, smi_used_mib: smi() }));
await initDevice('webgpu');
const dev = getGpuDevice() as unknown as { queue: { onSubmittedWorkDone(): Promise<void>; submit(x: unknown[]): void } };
for (const [label, n, elems] of [['big', 8, 256 * MiB], ['small', 4096, 64 * 1024]] as const) {
  const ts: tf.Tensor[] = [];
  for (let i = 0; i < n; i++) ts.push(tf.fill([elems], i));
  await ts[n - 1].data();
  log(`${label}: allocated`);
  tf.dispose(ts);
  log(`${label}: disposed (pooled)`);
  const freed = releasePooledGpuBuffers();
  log(`${label}: pool destroyed ${freed / MiB} MiB, sync`);
  dev.queue.submit([]);
  log(`${label}: after empty submit`);
  await dev.queue.onSubmittedWorkDone();
  log(`${label}: after onSubmittedWorkDone`);
  await new Promise((r) => setTimeout(r, 300));
  log(`${label}: after 300 ms`);
  await tf.fill([4], 1).data();
  log(`${label}: after a tiny op + read`);
  await dev.queue.onSubmittedWorkDone();
  await new Promise((r) => setTimeout(r, 300));
  log(`${label}: after another onSubmittedWorkDone + 300 ms`);
}
await shutdownDevice();

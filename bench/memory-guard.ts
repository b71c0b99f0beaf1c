// The memory guard on a real GPU (issue 8): does capacity detection find the card's memory, what does
// Dawn/the driver use beyond the bytes tfjs counts (the margin), and does asking for more than fits give a
// DeviceMemoryError (not a driver failure) with every earlier tensor intact? Prints JSON lines, and writes
// them to $OUT/memory-guard.jsonl as it goes (a crash still leaves what was measured).
// Reference: torch.cuda.mem_get_info() in the same call (bench/memory_ref.py), for the capacity.
//
//   source .gpu-mg/setup.sh && node .gpu-mg/memory-guard.mjs

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { describeDevice, getGpuDevice, initDevice, shutdownDevice } from '../src/backend/device';
import { deviceMemory } from '../src/backend/memory';
import { formatBytes, gpuGuardStats, releasePooledGpuBuffers, uninstallMemoryGuard } from '../src/backend/memory-guard';
import { DeviceMemoryError } from '../src/errors';

const out = process.env.OUT ? path.join(process.env.OUT, 'memory-guard.jsonl') : undefined;
function emit(o: Record<string, unknown>): void {
  // every line: what the guard counts vs what the driver reports beyond the device's start
  const used = smiUsed();
  const line = JSON.stringify({ ...o, guard_counted: gpuGuardStats()?.countedBytes, smi_used_since_start: used !== null && usedAtStart !== null ? used - usedAtStart : null });
  console.log(line);
  if (out) fs.appendFileSync(out, line + '\n');
}
const MiB = 2 ** 20, GiB = 2 ** 30;
function smiUsed(): number | null {
  try {
    return Number(execFileSync('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits'], { encoding: 'utf8' }).trim().split('\n')[0]) * MiB;
  } catch {
    return null;
  }
}
const tfjsAllocated = () => (tf.memory() as tf.MemoryInfo & { numBytesAllocatedInGPU: number }).numBytesAllocatedInGPU;

const used0 = smiUsed();
let usedAtStart: number | null = null;
const info = await initDevice('webgpu');
usedAtStart = smiUsed();
emit({ what: 'device', line: describeDevice(info), memory: info.memory, smi_used_before_device: used0, smi_used_after_device: smiUsed() });

// 1. Overhead of many small buffers (Dawn suballocates them in heap blocks): 4096 × 256 KiB = 1 GiB.
const base = smiUsed();
const smallAlloc0 = tfjsAllocated();
const small: tf.Tensor[] = [];
for (let i = 0; i < 4096; i++) small.push(tf.fill([64 * 1024], i));
await small[4095].data();
emit({ what: 'small buffers', tfjs_bytes: tfjsAllocated() - smallAlloc0, smi_delta: (smiUsed() ?? 0) - (base ?? 0) });
tf.dispose(small);
emit({ what: 'small buffers disposed and pool released (Dawn keeps their heaps)', freed: releasePooledGpuBuffers() });

// Tensor size for what follows: 1 GiB, less where a storage binding can't be that big (lavapipe).
const binding = info.limits?.maxStorageBufferBindingSize ?? GiB;
const E = Math.min(256 * MiB, 2 ** Math.floor(Math.log2(binding / 4))); // elements per tensor
// 1b. Big buffers still in flight when dropped: recorded, not submitted, disposed, then the pool released.
const inflight: tf.Tensor[] = [];
for (let i = 0; i < 4; i++) inflight.push(tf.fill([E], i));
emit({ what: 'in flight: 4 tensors recorded' });
tf.dispose(inflight);
emit({ what: 'in flight: disposed, pool released (sync)', freed: releasePooledGpuBuffers() });
await (getGpuDevice() as unknown as { queue: { onSubmittedWorkDone(): Promise<void> } }).queue.onSubmittedWorkDone();
emit({ what: 'in flight: after onSubmittedWorkDone' });


// 2. Such tensors until the guard refuses one; the driver's view every 8 of them.
const big: tf.Tensor[] = [];
let err: unknown = null;
const t0 = Date.now();
for (let i = 0; i < 2000; i++) {
  try {
    big.push(tf.fill([E], i + 1));
  } catch (e) {
    err = e;
    break;
  }
  if (i % 8 === 7) {
    await big[i].data();  // let the GPU catch up: fill writes every byte, so the memory is committed
    emit({ what: 'filling', tensors: big.length, tensor_bytes: E * 4, tfjs_allocated: tfjsAllocated(), smi_used: smiUsed() });
  }
}
const stats = gpuGuardStats();
emit({
  what: 'guard fired',
  ok: err instanceof DeviceMemoryError,
  error: String(err).slice(0, 1500),
  tensors: big.length,
  tensor_bytes: E * 4,
  tfjs_allocated: tfjsAllocated(),
  smi_used: smiUsed(),
  budget: stats?.info.budgetBytes,
  ms: Date.now() - t0,
});

// 3. Every tensor made before is intact and reads back (spot-check three, all elements of one).
const check: Record<string, unknown> = {};
for (const i of [0, Math.floor(big.length / 2), big.length - 1]) {
  const v = (await tf.slice(big[i], [0], [1024]).data()) as Float32Array;
  check[`t${i}`] = v.every((x) => x === i + 1);
}
const sum = (await tf.sum(big[1]).data())[0];
check.sum_ok = sum === 2 * E;
emit({ what: 'intact after the error', ...check });

// 4. Pooled buffers: dispose 4 GiB, allocate 4 GiB of the same size (reused: no new buffer), then a
// different size that fits only once the pool is dropped.
tf.dispose(big.splice(0, 4));
const alloc0 = tfjsAllocated();
const pooled0 = deviceMemory().pooledBytes;
for (let i = 0; i < 4; i++) big.push(tf.fill([E], 7));
const reused = tfjsAllocated() - alloc0 < E * 4; // no new tensor-sized buffer (uniforms may come)
tf.dispose(big.splice(0, 4));
let odd: tf.Tensor | null = null;
let oddErr = '';
try {
  odd = tf.fill([(3 * E) / 4], 5); // 3/4 of a tensor: not the pooled size
  await tf.slice(odd, [0], [4]).data();
} catch (e) {
  oddErr = String(e).slice(0, 300);
}
emit({ what: 'pool (after the odd size)', pooled_after_dispose: pooled0, reused_without_new_buffers: reused, odd_size_ok: odd !== null, odd_error: oddErr, stats: gpuGuardStats() });
odd?.dispose();

// 5. How close to the driver's limit the guard stops: without it, raw buffers (error scopes) until the
// driver says out-of-memory — the real head-room left at the guard's budget.
if (info.adapter?.isSoftware) {
  // lavapipe: the "device" is this machine's RAM; don't run it out
  tf.dispose(big);
  await shutdownDevice();
  process.exit(0);
}
uninstallMemoryGuard();
const device = getGpuDevice() as unknown as {
  createBuffer(d: { size: number; usage: number }): { destroy(): void };
  pushErrorScope(f: string): void;
  popErrorScope(): Promise<{ message: string } | null>;
  queue: { onSubmittedWorkDone(): Promise<void> };
};
const raw: { destroy(): void }[] = [];
let rawErr = '';
const beforeRaw = smiUsed();
for (let i = 0; i < 400; i++) {
  device.pushErrorScope('out-of-memory');
  const b = device.createBuffer({ size: 256 * MiB, usage: 0x80 | 0x8 }); // STORAGE | COPY_DST
  const e = await device.popErrorScope();
  if (e) {
    rawErr = e.message.slice(0, 300);
    b.destroy();
    break;
  }
  raw.push(b);
}
emit({ what: 'beyond the guard (raw createBuffer)', extra_bytes: raw.length * 256 * MiB, extra: formatBytes(raw.length * 256 * MiB), driver_error: rawErr, smi_before: beforeRaw, smi_after: smiUsed() });
for (const b of raw) b.destroy();
// The device still works after the driver's refusal?
const after = tf.fill([4], 3);
emit({ what: 'device works after', value: Array.from((await after.data()) as Float32Array), tensor0_ok: ((await tf.slice(big[0], [0], [2]).data()) as Float32Array)[0] });
tf.dispose([...big, after]);
await shutdownDevice();
void GiB;

// GPU memory guard for the webgpu path (issue 8): how much memory the GPU has, a check before every GPU
// buffer tfjs-webgpu creates (and before tsft's own allocations, through reserveGpuBytes) against that,
// tfjs's pool of free buffers dropped under pressure, and a DeviceMemoryError that says what was being
// allocated, what holds the memory and what to change — thrown before the allocation, so the driver never
// fails and every tensor stays intact. Plus a pre-flight estimate of a training run's memory.
//
// Capacity: WebGPU reports no memory size. Dawn has an adapter feature (`adapter-properties-memory-heaps`,
// chained AdapterPropertiesMemoryHeaps) but the npm `webgpu` binding (dawn.node) reads only the subgroup
// matrix configs out of AdapterInfo's chain, so `adapter.info.memoryHeaps` is absent in Node (read when a
// binding has it). In order: an explicit setting (initDevice's `gpuMemoryGiB`, env TSFT_GPU_MEMORY in
// GiB), `memoryHeaps`, nvidia-smi (NVIDIA), amdgpu's sysfs (AMD), host RAM for a software adapter
// (lavapipe allocates there), else none: no guard, said once.
//
// What counts (checked against nvidia-smi on the H100, bench/memory-guard.ts): tfjs's BufferManager
// allocations (live tensors + its free pool + uniforms) and the pools tsft registers (registerGpuPool), as
// Dawn's Vulkan backend places them: buffers over 4 MiB get their own VkDeviceMemory, freed by the next
// queue submit after destroy(); buffers up to 4 MiB are suballocated (power-of-two sizes) from 8 MiB heaps
// that Dawn keeps for reuse and never gives back, so the guard counts their high-water mark. On a real GPU,
// mappable buffers (MAP_READ/MAP_WRITE staging) sit in host memory and are not counted against the device.

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import { DeviceMemoryError } from '../errors';
import { parameterShapes, type QwenConfig } from '../model/config';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

// WebGPU's GPUBufferUsage bits (no DOM types here).
const MAP_READ = 0x1;
const MAP_WRITE = 0x2;

/**
 * Head-room below the device's free memory that the guard never hands out. Measured on the H100
 * (bench/memory-guard.ts, 2026-11-28): what the driver reports used exceeds what the guard counts by only
 * 20–55 MB at any fill level up to 77 GiB (Dawn's context ~48 MB; 1 GiB buffers cost nothing extra), and the
 * driver refused the next buffer at 79.0 GiB used, where nvidia-smi had said 79.1 GiB free at start. The
 * margin is there for what the count can't see: buffers dropped while the GPU still used them (Dawn frees
 * those when that work completes), other processes, fragmentation of the small-buffer heaps. 2% = 1.6 GiB
 * on an 80 GB card.
 */
export function defaultMarginBytes(capacityBytes: number): number {
  return Math.max(256 * MiB, Math.round(capacityBytes * 0.02));
}

/** Buffers smaller than this are never refused nor make the pool drop (uniforms, tiny staging): the margin absorbs them. */
const SMALL_BYTES = 64 * 1024;
/** Dawn (Vulkan): buffers up to this size are suballocated from shared heaps of SUBALLOC_HEAP bytes. */
const SUBALLOC_MAX = 4 * MiB;
const SUBALLOC_HEAP = 8 * MiB;

/** How much memory the GPU has, and where that figure came from. */
export interface GpuMemoryInfo {
  /** The device-local memory (bytes), when known. */
  capacityBytes?: number;
  /** Free device memory when the device started (bytes), when the source tells it (nvidia-smi, sysfs, host RAM). */
  freeAtStartBytes?: number;
  /** What the guard lets tsft allocate (bytes): the explicit setting, else min(capacity, free at start) − margin. */
  budgetBytes?: number;
  /** 'option' | 'TSFT_GPU_MEMORY' | 'memoryHeaps' | 'nvidia-smi' | 'amdgpu sysfs' | 'host RAM' | 'unknown' */
  source: string;
}

export interface DetectGpuMemoryOptions {
  /** An explicit size in GiB (initDevice's `gpuMemoryGiB`): wins over everything detected. */
  gpuMemoryGiB?: number;
  /** The adapter's description / device name (to pick the right row of nvidia-smi). */
  adapterName?: string;
  /** The adapter's vendor ('nvidia', 'amd', ...): which driver tool to ask. */
  vendor?: string;
  isSoftware?: boolean;
  /** The adapter's info object (memoryHeaps is read when a binding exposes it). */
  adapterInfo?: unknown;
}

/**
 * How much memory the GPU has: the explicit setting, else what the driver tells, else unknown.
 *
 * @example
 * detectGpuMemory({ gpuMemoryGiB: 24 }) // { capacityBytes: 24 GiB, budgetBytes: 24 GiB, source: 'option' }
 */
export function detectGpuMemory(opts: DetectGpuMemoryOptions = {}): GpuMemoryInfo {
  const explicit = (bytes: number, source: string): GpuMemoryInfo => ({ capacityBytes: bytes, budgetBytes: bytes, source });
  if (opts.gpuMemoryGiB !== undefined) return explicit(giBytes(opts.gpuMemoryGiB, 'initDevice option gpuMemoryGiB'), 'option');
  const env = process.env.TSFT_GPU_MEMORY;
  if (env !== undefined && env.trim() !== '') return explicit(giBytes(env, 'TSFT_GPU_MEMORY'), 'TSFT_GPU_MEMORY');
  const vendor = (opts.vendor ?? '').toLowerCase();
  const found = fromMemoryHeaps(opts.adapterInfo) ?? (opts.isSoftware ? fromHostRam()
    : ((!vendor || vendor.includes('nvidia')) && fromNvidiaSmi(opts.adapterName)) || ((!vendor || /amd|ati/.test(vendor)) && fromAmdSysfs()) || undefined);
  if (!found) return { source: 'unknown' };
  const usable = Math.min(found.capacityBytes!, found.freeAtStartBytes ?? Infinity);
  return { ...found, budgetBytes: Math.max(0, usable - defaultMarginBytes(found.capacityBytes!)) };
}

function giBytes(raw: number | string, where: string): number {
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0) {
    throw new DeviceMemoryError(`${where} must be a positive number of GiB (e.g. 80 or 0.5), got ${JSON.stringify(raw)}`);
  }
  return Math.round(v * GiB);
}

/** Dawn's AdapterPropertiesMemoryHeaps as Chromium exposes it: [{ size, properties }], DEVICE_LOCAL = 0x1. */
function fromMemoryHeaps(info: unknown): GpuMemoryInfo | undefined {
  const heaps = (info as { memoryHeaps?: { size: number | bigint; properties: number }[] } | undefined)?.memoryHeaps;
  if (!heaps || !heaps.length) return undefined;
  let bytes = 0;
  for (const h of heaps) if (h.properties & 0x1) bytes += Number(h.size);
  return bytes > 0 ? { capacityBytes: bytes, source: 'memoryHeaps' } : undefined;
}

function fromNvidiaSmi(adapterName = ''): GpuMemoryInfo | undefined {
  let out: string;
  try {
    out = execFileSync('nvidia-smi', ['--query-gpu=name,memory.total,memory.free', '--format=csv,noheader,nounits'], {
      encoding: 'utf8',
      timeout: 10_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
  } catch {
    return undefined;
  }
  const rows = out.trim().split('\n').map((l) => l.split(',').map((s) => s.trim())).filter((r) => r.length === 3 && Number(r[1]) > 0);
  if (!rows.length) return undefined;
  // Vulkan's device order need not follow nvidia-smi's: prefer the row whose name the adapter carries.
  const norm = (s: string) => s.toLowerCase().replace(/[^a-z0-9]+/g, '');
  const row = rows.find((r) => adapterName && norm(adapterName).includes(norm(r[0]))) ?? rows[0];
  return { capacityBytes: Number(row[1]) * MiB, freeAtStartBytes: Number(row[2]) * MiB, source: 'nvidia-smi' };
}

function fromAmdSysfs(): GpuMemoryInfo | undefined {
  try {
    for (const card of fs.readdirSync('/sys/class/drm')) {
      if (!/^card\d+$/.test(card)) continue;
      const dir = `/sys/class/drm/${card}/device`;
      if (!fs.existsSync(`${dir}/mem_info_vram_total`)) continue;
      const total = Number(fs.readFileSync(`${dir}/mem_info_vram_total`, 'utf8'));
      const used = Number(fs.readFileSync(`${dir}/mem_info_vram_used`, 'utf8'));
      if (total > 0) return { capacityBytes: total, freeAtStartBytes: Number.isFinite(used) ? total - used : undefined, source: 'amdgpu sysfs' };
    }
  } catch {
    // no sysfs (macOS, Windows, containers)
  }
  return undefined;
}

function fromHostRam(): GpuMemoryInfo {
  return { capacityBytes: os.totalmem(), freeAtStartBytes: os.freemem(), source: 'host RAM' };
}

/** '79.2 GiB (nvidia-smi)', for the device line. */
export function describeGpuMemory(m: GpuMemoryInfo | undefined): string {
  if (!m || m.capacityBytes === undefined) return 'memory unknown (no memory guard; set TSFT_GPU_MEMORY=<GiB> to enable it)';
  const budget = m.budgetBytes !== undefined && m.budgetBytes !== m.capacityBytes ? `, ${formatBytes(m.budgetBytes)} usable` : '';
  return `memory ${formatBytes(m.capacityBytes)} (${m.source}${budget})`;
}

// ---------------------------------------------------------------------------------------------------
// Accounting: tfjs's BufferManager, wrapped, plus tsft's registered pools.

/** GPU buffers kept outside tfjs (kernel scratch, f16 weight copies): name → bytes held now. */
const pools = new Map<string, () => number>();

/**
 * Counts a pool of GPU buffers that tsft allocates itself (not through tfjs) in the guard and in
 * deviceMemory(). Returns a function that unregisters it.
 *
 * @example
 * const unregister = registerGpuPool('f16-weights', () => f16Bytes);
 */
export function registerGpuPool(name: string, bytes: () => number): () => void {
  pools.set(name, bytes);
  return () => void pools.delete(name);
}

/** Bytes held by the registered pools. */
export function registeredPoolBytes(): number {
  let n = 0;
  for (const f of pools.values()) n += f();
  return n;
}

/** The parts of tfjs-webgpu's BufferManager the guard reads and wraps (tfjs 4.22). */
interface BufferManagerLike {
  numBytesUsed: number;
  numBytesAllocated: number;
  numFreeBuffers: number;
  freeBuffers: Map<string, GPUBufferLike[]>;
  acquireBuffer(size: number, usage: number, mappedAtCreation?: boolean, reuse?: boolean): GPUBufferLike;
  releaseBuffer(buffer: GPUBufferLike, reuse?: boolean): void;
  dispose(): void;
}
interface GPUBufferLike {
  size: number;
  usage: number;
  destroy(): void;
}
interface WebGpuBackendLike {
  bufferManager: BufferManagerLike;
  tensorMap: { get(dataId: object): { shape: number[]; dtype: string } | undefined };
  uploadToGPU(dataId: object): void;
  runWebGPUProgram(program: object, ...rest: unknown[]): unknown;
}

/** The guard's state for the one webgpu backend it watches. */
interface Guard {
  backend: WebGpuBackendLike;
  bm: BufferManagerLike;
  info: GpuMemoryInfo;
  /** count mappable (staging) buffers against the device: true on software adapters (all is host RAM) */
  countHostVisible: boolean;
  /** bytes of mappable buffers tfjs holds (live or pooled), not on the device when !countHostVisible */
  hostVisibleBytes: number;
  /** device buffers ≤ 4 MiB that tfjs holds: their sizes, their power-of-two sizes, and the latter's high-water mark */
  smallBytes: number;
  smallPow2Bytes: number;
  smallPow2High: number;
  /** GPU buffers created through tfjs since the guard was installed */
  buffersCreated: number;
  /** highest bytes allocated (tfjs's numBytesAllocated, staging included, + registered pools) at any allocation */
  peakBytes: number;
  /** highest bytes of buffers in use (tfjs's numBytesUsed: live tensors, uniforms, staging; no pool) + registered pools */
  peakLiveBytes: number;
  /** times the free pool was dropped under pressure, and the bytes that freed */
  poolDrops: number;
  poolDroppedBytes: number;
  unwrap: () => void;
}

let guard: Guard | null = null;
/** What is being allocated now (set by the wrappers below, read when composing an error). */
const context: { kernel: string[]; program?: string; tensor?: { shape: number[]; dtype: string } } = { kernel: [] };
let engineWrapped = false;

function isHostVisible(usage: number): boolean {
  return (usage & (MAP_READ | MAP_WRITE)) !== 0;
}

/** Counts a buffer created (+1) or destroyed (−1) in the host-visible and suballocated tallies. */
function track(g: Guard, size: number, usage: number, sign: 1 | -1): void {
  if (isHostVisible(usage)) {
    g.hostVisibleBytes += sign * size;
  } else if (size <= SUBALLOC_MAX) {
    g.smallBytes += sign * size;
    g.smallPow2Bytes += sign * 2 ** Math.ceil(Math.log2(Math.max(size, 256)));
    g.smallPow2High = Math.max(g.smallPow2High, g.smallPow2Bytes);
  }
}

/** Bytes tfjs's free pool holds now. */
function pooledBytes(bm: BufferManagerLike): number {
  let n = 0;
  for (const list of bm.freeBuffers.values()) for (const b of list) n += b.size;
  return n;
}

/**
 * Device bytes the guard counts: tfjs's allocations, less host-visible staging on a real GPU, with small
 * buffers counted as the suballocation heaps Dawn keeps for them; plus tsft's pools.
 */
function countedBytes(g: Guard): number {
  const heaps = Math.ceil(g.smallPow2High / SUBALLOC_HEAP) * SUBALLOC_HEAP;
  return g.bm.numBytesAllocated - (g.countHostVisible ? 0 : g.hostVisibleBytes) - g.smallBytes + heaps + registeredPoolBytes();
}

/**
 * Wraps the webgpu backend's BufferManager so every new GPU buffer is checked against `info.budgetBytes`
 * first (the free pool is dropped when that makes it fit; else DeviceMemoryError). Called by
 * initDevice('webgpu'); installing again (another backend or new info) replaces the previous guard.
 *
 * @example
 * installMemoryGuard(tf.backend(), detectGpuMemory({ gpuMemoryGiB: 16 }));
 */
export function installMemoryGuard(backend: tf.KernelBackend, info: GpuMemoryInfo, opts: { isSoftware?: boolean } = {}): void {
  uninstallMemoryGuard();
  const b = backend as unknown as WebGpuBackendLike;
  const bm = b.bufferManager;
  if (!bm || typeof bm.acquireBuffer !== 'function') throw new Error('installMemoryGuard: not a tfjs webgpu backend (no bufferManager)');
  const g: Guard = {
    backend: b, bm, info,
    countHostVisible: opts.isSoftware ?? false,
    hostVisibleBytes: 0, smallBytes: 0, smallPow2Bytes: 0, smallPow2High: 0, buffersCreated: 0, peakBytes: 0, peakLiveBytes: 0, poolDrops: 0, poolDroppedBytes: 0,
    unwrap: () => {},
  };
  // Buffers tfjs holds already (none in practice: the guard starts with the device).
  for (const list of bm.freeBuffers.values()) for (const buf of list) track(g, buf.size, buf.usage, +1);

  const acquire = bm.acquireBuffer;
  const release = bm.releaseBuffer;
  const dispose = bm.dispose;
  const upload = b.uploadToGPU;
  const run = b.runWebGPUProgram;
  bm.acquireBuffer = function (size: number, usage: number, mappedAtCreation = false, reuse = true) {
    const free = reuse ? bm.freeBuffers.get(`${size}_${usage}`) : undefined;
    const creates = !free || free.length === 0;
    if (creates && (g.countHostVisible || !isHostVisible(usage))) ensureFits(g, size, usage);
    const buffer = acquire.call(bm, size, usage, mappedAtCreation, reuse);
    g.peakLiveBytes = Math.max(g.peakLiveBytes, bm.numBytesUsed + registeredPoolBytes());
    if (creates) {
      g.buffersCreated++;
      track(g, size, usage, +1);
      g.peakBytes = Math.max(g.peakBytes, bm.numBytesAllocated + registeredPoolBytes());
    }
    return buffer;
  };
  bm.releaseBuffer = function (buffer: GPUBufferLike, reuse = true) {
    // tfjs destroys a buffer released with reuse=false (staging): keep the host-visible count in step
    const destroys = !reuse && bm.freeBuffers.size > 0;
    release.call(bm, buffer, reuse);
    if (destroys) track(g, buffer.size, buffer.usage, -1);
  };
  bm.dispose = function () {
    dispose.call(bm);
    g.hostVisibleBytes = g.smallBytes = g.smallPow2Bytes = 0;
  };
  b.uploadToGPU = function (dataId: object) {
    const before = context.tensor;
    const d = b.tensorMap.get(dataId);
    context.tensor = d ? { shape: d.shape, dtype: d.dtype } : undefined;
    try {
      upload.call(b, dataId);
    } finally {
      context.tensor = before;
    }
  };
  b.runWebGPUProgram = function (program: object, ...rest: unknown[]) {
    const before = context.program;
    context.program = program.constructor?.name;
    try {
      return run.call(b, program, ...rest);
    } finally {
      context.program = before;
    }
  };
  g.unwrap = () => {
    bm.acquireBuffer = acquire;
    bm.releaseBuffer = release;
    bm.dispose = dispose;
    b.uploadToGPU = upload;
    b.runWebGPUProgram = run;
  };
  guard = g;
  wrapEngineKernelNames();
}

/** Removes the guard (the backend keeps working unguarded). */
export function uninstallMemoryGuard(): void {
  guard?.unwrap();
  guard = null;
}

/** Records the running kernel's name (for error messages): engine.runKernel, wrapped once. */
function wrapEngineKernelNames(): void {
  if (engineWrapped) return;
  const engine = tf.engine() as unknown as { runKernel: (name: string, ...rest: unknown[]) => unknown };
  const runKernel = engine.runKernel;
  engine.runKernel = function (name: string, ...rest: unknown[]) {
    context.kernel.push(name);
    try {
      return runKernel.call(this, name, ...rest);
    } finally {
      context.kernel.pop();
    }
  };
  engineWrapped = true;
}

/**
 * Destroys every buffer in tfjs's free pool (the buffers it keeps for reuse) and returns the bytes freed.
 * The guard calls it before refusing an allocation; call it yourself after a phase that used many shapes
 * (loading, evaluation) to give the memory back. Safe at any time: a pooled buffer is referenced by no
 * pending GPU work (tfjs pools a tensor's buffer only after the commands using it were submitted).
 *
 * @example
 * const freed = releasePooledGpuBuffers();
 */
export function releasePooledGpuBuffers(): number {
  if (!guard) return dropPool(currentBufferManager());
  return dropGuarded(guard);
}

/** dropPool with the guard's books kept: all of the pool, or (under pressure) the largest buffers until `enough`. */
function dropGuarded(g: Guard, enough?: () => boolean): number {
  const freed = dropPool(g.bm, g, enough);
  if (freed > 0) {
    g.poolDrops++;
    g.poolDroppedBytes += freed;
  }
  return freed;
}

function currentBufferManager(): (BufferManagerLike & { device?: unknown }) | undefined {
  if (tf.engine().backendName !== 'webgpu') return undefined;
  return (tf.backend() as unknown as Partial<WebGpuBackendLike>).bufferManager;
}

function dropPool(bm: (BufferManagerLike & { device?: unknown }) | undefined, g?: Guard, enough?: () => boolean): number {
  if (!bm) return 0;
  // Submit what tfjs has recorded first: tensors it disposed meanwhile join the pool, and no buffer to be
  // destroyed is referenced by unsubmitted commands. Not inside a pass of tsft's own kernels (they open
  // theirs on tfjs's encoder and allocate only small uniforms there, which never get here).
  const backend = g?.backend as (WebGpuBackendLike & { commandEncoder?: unknown; endComputePassEncoder?(): void; submitQueue?(): void }) | undefined;
  if (backend?.commandEncoder && backend.endComputePassEncoder && backend.submitQueue) {
    backend.endComputePassEncoder();
    backend.submitQueue();
  }
  let freed = 0;
  // Largest first. Under pressure only what frees device memory: not host staging on a real GPU, and not
  // buffers ≤ 4 MiB (Dawn keeps their heaps). Keep the map's keys: tfjs's releaseBuffer returns early
  // (keeps the buffer "used") when the map is empty.
  const lists = [...bm.freeBuffers.values()].filter((l) => l.length > 0).sort((a, b) => b[0].size - a[0].size);
  for (const list of lists) {
    if (enough && g && !(g.countHostVisible || !isHostVisible(list[0].usage))) continue;
    if (enough && !isHostVisible(list[0].usage) && list[0].size <= SUBALLOC_MAX) continue;
    while (list.length > 0 && !(enough && enough())) {
      const buf = list.pop()!;
      freed += buf.size;
      bm.numFreeBuffers--;
      bm.numBytesAllocated -= buf.size;
      if (g) track(g, buf.size, buf.usage, -1);
      buf.destroy();
    }
  }
  // Dawn frees a destroyed buffer's memory when it next ticks the device, which a submit does (measured:
  // nvidia-smi drops right after an empty submit, and not before).
  if (freed > 0) (bm.device as { queue?: { submit(b: unknown[]): void } } | undefined)?.queue?.submit([]);
  return freed;
}

function ensureFits(g: Guard, bytes: number, usage: number): void {
  const budget = g.info.budgetBytes;
  if (budget === undefined || bytes < SMALL_BYTES) return;
  // a small buffer may fit in a suballocation heap Dawn holds already
  const need = !isHostVisible(usage) && bytes <= SUBALLOC_MAX ? smallGrowth(g, bytes) : bytes;
  const fits = () => countedBytes(g) + need <= budget;
  if (fits()) return;
  if (pooledBytes(g.bm) > 0) dropGuarded(g, fits);
  if (fits()) return;
  throw new DeviceMemoryError(outOfMemoryMessage(g, bytes, describeRequest(usage)), bytes, countedBytes(g), budget);
}

/**
 * Checks that tsft's own kernel may allocate `bytes` more on the GPU (dropping tfjs's free pool first
 * when that makes room), else throws DeviceMemoryError; a no-op without a guard. Call it before
 * device.createBuffer, then count the buffer through {@link registerGpuPool}. (Kernels that allocate
 * through tfjs — runProgram, uninitialised(), HalfTensor — are checked already.)
 *
 * @example
 * reserveGpuBytes(n * 2, `f16 copy of ${name}`);
 * const buf = device.createBuffer({ size: n * 2, usage });
 */
export function reserveGpuBytes(bytes: number, what: string): void {
  const g = guard;
  if (!g || g.info.budgetBytes === undefined) return;
  const budget = g.info.budgetBytes;
  const fits = () => countedBytes(g) + bytes <= budget;
  if (fits()) return;
  if (pooledBytes(g.bm) > 0) dropGuarded(g, fits);
  if (fits()) return;
  throw new DeviceMemoryError(outOfMemoryMessage(g, bytes, what), bytes, countedBytes(g), budget);
}

/** How much the counted suballocation heaps grow when a small buffer is added. */
function smallGrowth(g: Guard, bytes: number): number {
  const heaps = (high: number) => Math.ceil(high / SUBALLOC_HEAP) * SUBALLOC_HEAP;
  const pow2 = 2 ** Math.ceil(Math.log2(Math.max(bytes, 256)));
  return heaps(Math.max(g.smallPow2High, g.smallPow2Bytes + pow2)) - heaps(g.smallPow2High);
}

function describeRequest(usage: number): string {
  const t = context.tensor;
  const what = t ? `a ${t.dtype} tensor [${t.shape.join(', ')}]`
    : isHostVisible(usage) ? 'a staging buffer (CPU ↔ GPU copy)'
    : usage & 0x40 ? 'uniforms' : 'a GPU buffer';
  const where: string[] = [];
  const op = context.kernel[context.kernel.length - 1];
  if (op) where.push(`op ${op}`);
  if (context.program) where.push(`program ${context.program}`);
  return where.length ? `${what} (${where.join(', ')})` : what;
}

/** The counted bytes split into what holds them (they add up to countedBytes). */
function breakdown(g: Guard): { live: number; pooled: number; heaps: number; registered: number } {
  const heaps = Math.ceil(g.smallPow2High / SUBALLOC_HEAP) * SUBALLOC_HEAP;
  let pooled = 0;
  for (const list of g.bm.freeBuffers.values()) {
    for (const b of list) if ((g.countHostVisible || !isHostVisible(b.usage)) && (isHostVisible(b.usage) || b.size > SUBALLOC_MAX)) pooled += b.size;
  }
  const registered = registeredPoolBytes();
  return { live: countedBytes(g) - heaps - pooled - registered, pooled, heaps, registered };
}

function outOfMemoryMessage(g: Guard, bytes: number, what: string): string {
  const budget = g.info.budgetBytes!;
  const b = breakdown(g);
  const f = formatBytes;
  const poolParts = [...pools].map(([n, fn]) => `${n} ${f(fn())}`);
  const cap = g.info.capacityBytes !== undefined && g.info.capacityBytes !== budget ? ` (device ${f(g.info.capacityBytes)}, ${g.info.source})` : ` (${g.info.source})`;
  return (
    `GPU out of memory, caught before allocating: ${f(bytes)} for ${what} does not fit. ` +
    `In use: ${f(countedBytes(g))} of the ${f(budget)} tsft may use${cap} — live tensors ${f(b.live)}, ` +
    `tfjs's free-buffer pool ${f(b.pooled)}${g.poolDrops ? ' (released already)' : ''}, Dawn's heaps for buffers ≤ 4 MiB ` +
    `${f(b.heaps)}, tsft's pools ${poolParts.length ? poolParts.join(', ') : '0 B'}. Nothing was allocated: tensors are intact. ` +
    `To fit, use less memory: --gradient_checkpointing true (keeps one decoder block's activations, not all); ` +
    `--train_type lora (no full gradients or AdamW state); a lower --max_length or --per_device_train_batch_size ` +
    `(activations grow with both); --torch_dtype float16 or --bf16 true (mixed precision: f16 matmul operands, ` +
    `f16 frozen weights under LoRA). If the size is wrong, set TSFT_GPU_MEMORY=<GiB>.`
  );
}

/** 1.50 GiB / 12.0 MiB / 512 B. */
export function formatBytes(n: number): string {
  if (n >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** What the guard knows now (webgpu with a guard), for deviceMemory() and tests. */
export interface GpuGuardStats {
  info: GpuMemoryInfo;
  /** bytes tfjs's free pool holds */
  pooledBytes: number;
  /** device bytes counted: tfjs allocations (less host staging on a real GPU) + registered pools */
  countedBytes: number;
  /** highest bytes allocated (tfjs's buffers, staging included, + registered pools) at any allocation since install / resetGpuPeak */
  peakBytes: number;
  /** highest bytes in use (live tensors, uniforms, staging — not the free pool) + registered pools, at any allocation */
  peakLiveBytes: number;
  buffersCreated: number;
  poolDrops: number;
  poolDroppedBytes: number;
}

/** The guard's figures, or undefined when no guard watches the active backend. */
export function gpuGuardStats(): GpuGuardStats | undefined {
  const g = guard;
  if (!g) return undefined;
  return {
    info: g.info,
    pooledBytes: pooledBytes(g.bm),
    countedBytes: countedBytes(g),
    peakBytes: Math.max(g.peakBytes, g.bm.numBytesAllocated + registeredPoolBytes()),
    peakLiveBytes: Math.max(g.peakLiveBytes, g.bm.numBytesUsed + registeredPoolBytes()),
    buffersCreated: g.buffersCreated,
    poolDrops: g.poolDrops,
    poolDroppedBytes: g.poolDroppedBytes,
  };
}

/** Bytes tfjs's free pool holds on the active webgpu backend (0 elsewhere). */
export function gpuPooledBytes(): number {
  const bm = guard?.bm ?? currentBufferManager();
  return bm ? pooledBytes(bm) : 0;
}

/** Starts the allocation-time peak afresh from what is counted now. */
export function resetGpuPeak(): void {
  if (!guard) return;
  guard.peakBytes = guard.bm.numBytesAllocated + registeredPoolBytes();
  guard.peakLiveBytes = guard.bm.numBytesUsed + registeredPoolBytes();
}

/**
 * Changes the budget at run time (bytes; undefined: back to no limit). For notebooks sharing a GPU, and
 * tests.
 *
 * @example
 * setGpuMemoryBudget(8 * 2 ** 30);
 */
export function setGpuMemoryBudget(bytes: number | undefined): void {
  if (!guard) throw new DeviceMemoryError('setGpuMemoryBudget: no memory guard: start the webgpu device first (initDevice)');
  guard.info = { ...guard.info, budgetBytes: bytes, capacityBytes: guard.info.capacityBytes ?? bytes, source: guard.info.capacityBytes === undefined ? 'setGpuMemoryBudget' : guard.info.source };
}

// ---------------------------------------------------------------------------------------------------
// Pre-flight estimate.

export interface TrainingMemoryOptions {
  config: QwenConfig;
  trainType: 'full' | 'lora';
  /** trainable parameters under LoRA (loraParameters(model) sizes summed); required for 'lora' */
  loraParams?: number;
  /** LoRA's dropout (default 0.05, ms-swift's): each adapted projection then keeps its masks for backward */
  loraDropout?: number;
  /** tokens per row (max_length, or the longest row of the batch) */
  seqLen: number;
  /** rows per step (per_device_train_batch_size) */
  batch: number;
  gradientCheckpointing: boolean;
  /** 'float16': f16 matmul operands (and f16 frozen projection weights under LoRA) */
  computeDtype: 'float32' | 'float16';
  optimizer: 'adamw';
}

/** Bytes by kind; total is what must fit. */
export interface TrainingMemoryEstimate {
  weights: number;
  grads: number;
  optimizer: number;
  /** everything else a step holds at its peak: saved activations, backward transients, LM-head workspace */
  activations: number;
  total: number;
}

/**
 * What one training step holds on the GPU at its peak (the fused webgpu path: flash attention, chunked
 * LM-head cross-entropy): weights (f32 masters; f16 copies of the projections under mixed precision, the
 * f16-only frozen base under LoRA), gradients and AdamW's two moments for the trainable parameters, and
 * the rest of the peak: what backward needs from each decoder block, the backward's transients, the LM
 * head's workspace. The per-token and per-layer coefficients of that rest were fitted to tfjs's bytes in
 * use measured on lavapipe for 28 runs (hidden 128–256, intermediate 384–768, 2–4 layers, vocab 4096–8192,
 * 256–512 tokens, full and LoRA r8, with and without checkpointing, f32): the estimate came within 0.82–1.24×
 * of every one (tests/memory-guard.test.ts checks three within 1.5×). Not yet checked at real sizes or under
 * mixed precision (its ×1.25 on the per-token term is a guess). Since the tiled linears and the variable-leak fix, checkpointed steps peak up to ~1.7× below it (not refitted).
 *
 * @example
 * const e = estimateTrainingBytes({ config, trainType: 'lora', loraParams: 1_000_000, seqLen: 2048, batch: 1,
 *   gradientCheckpointing: true, computeDtype: 'float16', optimizer: 'adamw' });
 */
export function estimateTrainingBytes(o: TrainingMemoryOptions): TrainingMemoryEstimate {
  const c = o.config;
  if (o.trainType === 'lora' && !(o.loraParams !== undefined && o.loraParams >= 0)) {
    throw new RangeError('estimateTrainingBytes: trainType lora needs loraParams (the adapters\' parameter count)');
  }
  let params = 0, projParams = 0, embed = 0;
  for (const [name, shape] of parameterShapes(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    params += n;
    if (/_proj\.weight$/.test(name)) projParams += n;
    if (name === 'model.embed_tokens.weight' || name === 'lm_head.weight') embed += n;
  }
  const half = o.computeDtype === 'float16';
  const lora = o.trainType === 'lora';
  const trainable = lora ? o.loraParams! : params;
  // weights: f32 masters; mixed precision adds transient f16 copies of a layer's projections, or (LoRA) holds them
  // and the embedding / LM head in f16 only
  const weights = lora
    ? (half ? (params - projParams - embed) * 4 + (projParams + embed) * 2 : params * 4) + trainable * 4
    : params * 4 + (half ? (projParams / c.numLayers) * 2 * 2 : 0);   // trainable weights' f16 copies live per matmul (linear.ts)
  // full training with tied embeddings: the gather's and the LM head's [V, H] gradients coexist until summed
  const grads = trainable * 4 + (!lora && c.tieWordEmbeddings ? embed * 4 : 0);
  const optimizer = trainable * 8;

  const N = o.seqLen * o.batch;
  const H = c.hiddenSize, I = c.intermediateSize, L = c.numLayers;
  const attn = c.numHeads * c.headDim + 2 * c.numKvHeads * c.headDim;
  const layerWeights = projParams / L;
  // floats per token a decoder block keeps for backward (norms, q/k/v and their head layouts, rope, attention
  // output, projections, residuals, the SwiGLU's gate/up/act), with LoRA's dropout masks and adapter terms;
  // under mixed precision the f16 copies of matmul inputs add about a quarter
  let perToken = 24 * H + 4 * I + 6 * attn;
  if (lora && (o.loraDropout ?? 0.05) > 0) perToken += 30 * H + 5 * I;
  if (half) perToken *= 1.25;
  // checkpointing: each block keeps its input (and output), one block at a time is recomputed in full
  const blocks = o.gradientCheckpointing ? N * (L * 2 * H + perToken) : N * L * perToken;
  // full training: weight-sized transients of the backward (per-projection dW before it joins the gradients)
  const weightTransients = lora ? 0 : 3 * layerWeights * L;
  // LM head: the cross-entropy's logits chunk [N, ≤16384] and the gathered rows; full training adds
  // [V, H]-sized transients of the embedding's gradient (gather's scatter, the head's dW, their sum)
  const head = N * (Math.min(c.vocabSize, 16384) + 4 * H) + (lora ? 0 : 4 * c.vocabSize * H);
  const activations = (blocks + weightTransients + head) * 4;
  return { weights, grads, optimizer, activations, total: weights + grads + optimizer + activations };
}

/**
 * Throws DeviceMemoryError when {@link estimateTrainingBytes} exceeds what the GPU has (the guard's budget,
 * or `budgetBytes`), before any training starts; returns the estimate otherwise (also when the size is
 * unknown). The message gives the breakdown and what to change.
 *
 * @example
 * checkTrainingFits({ config, trainType: 'full', seqLen: 2048, batch: 8, gradientCheckpointing: false,
 *   computeDtype: 'float32', optimizer: 'adamw' });
 */
export function checkTrainingFits(o: TrainingMemoryOptions & { budgetBytes?: number }): TrainingMemoryEstimate {
  const e = estimateTrainingBytes(o);
  const budget = o.budgetBytes ?? guard?.info.budgetBytes;
  if (budget === undefined) return e;
  // what is on the device already besides the model (the weights are counted by the estimate)
  if (e.total <= budget) return e;
  const f = formatBytes;
  const tips: string[] = [];
  if (!o.gradientCheckpointing) tips.push(`--gradient_checkpointing true (activations → ~${f(estimateTrainingBytes({ ...o, gradientCheckpointing: true }).activations)})`);
  if (o.trainType === 'full') tips.push('--train_type lora (gradients and AdamW state only for the adapters)');
  if (o.computeDtype === 'float32') tips.push(`--torch_dtype float16 or --bf16 true (mixed precision${o.trainType === 'lora' ? ': f16 frozen weights' : ''})`);
  tips.push(`a lower --max_length (now ${o.seqLen}) or --per_device_train_batch_size (now ${o.batch})`);
  throw new DeviceMemoryError(
    `This training run needs about ${f(e.total)} of GPU memory but ${f(budget)} is available` +
      `${guard ? ` (${guard.info.source})` : ''}: weights ${f(e.weights)}, gradients ${f(e.grads)}, AdamW state ` +
      `${f(e.optimizer)}, activations ${f(e.activations)} (${o.trainType}, ${o.batch} × ${o.seqLen} tokens, ` +
      `${o.computeDtype}, gradient checkpointing ${o.gradientCheckpointing ? 'on' : 'off'}). To fit: ${tips.join('; ')}. ` +
      `If the size is wrong, set TSFT_GPU_MEMORY=<GiB>.`,
    e.total, 0, budget,
  );
}

// The CPU kernels' runtime: one WebAssembly module (kernels.c, embedded as base64 in kernels-wasm.ts) over one
// shared memory, run by a pool of threads — this thread plus (cores − 1) worker_threads, each with its own
// instance of the same module on the same memory. A job is a struct the host lays out in that memory; every
// thread calls the same exported function on it and claims work units with an atomic counter. Results do
// not depend on how many threads ran (units and their reductions are fixed), so a pool whose workers never
// came up just runs everything here, with the same numbers.
//
// Workers are plain JavaScript evaluated from a string (no TypeScript, no file path): they start the same
// way under tsx (ESM), tslab (CommonJS) and an esbuild bundle. They are unref'd (the process exits while
// they wait) and stop with shutdownCpuKernels(). CPU-only: this is for the wasm and cpu tfjs backends.

import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import { KERNELS_WASM_BASE64 } from './kernels-wasm';

// tslab compiles notebooks' imports with lib ES2022 and no DOM, where WebAssembly has no types: the few
// used here, and the global reached through globalThis.
interface WasmMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(pages: number): number;
}
interface WasmGlobal {
  value: unknown;
}
type WasmModule = object;
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (module: WasmModule, imports: Record<string, Record<string, unknown>>) => { exports: Record<string, unknown> };
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** The module's exports (kernels.c). Pointers are byte offsets into the shared memory. */
export interface KernelExports {
  ce_forward(job: number, tid: number): void;
  ce_backward(job: number, tid: number): void;
  ce_reduce_dh(job: number, tid: number): void;
  ce_prepare(job: number): void;
  ce_scratch_floats(VB: number, Np: number, Hp: number): number;
  adamw(job: number, tid: number): void;
  sumsq(job: number, tid: number): void;
  exp_inplace(ptr: number, n: number): void;
  layout(out: number): void;
  __stack_pointer: WasmGlobal;
  __heap_base: WasmGlobal;
}

/** The kernels every thread runs on a job: `fn(job, threadIndex)`. */
export type ParallelKernel = 'ce_forward' | 'ce_backward' | 'ce_reduce_dh' | 'adamw' | 'sumsq';
const PARALLEL: readonly ParallelKernel[] = ['ce_forward', 'ce_backward', 'ce_reduce_dh', 'adamw', 'sumsq'];

/** Int32 slots of the control block shared with the workers. */
enum Ctl {
  Seq = 0, // bumped once per dispatched job; workers wait on it
  Fn = 1, // index into PARALLEL, −1: exit
  Arg = 2, // job pointer
  Done = 3, // workers finished with the current job
  Ready = 4, // workers instantiated and waiting
  Failed = 5, // workers that could not start
  Error = 6, // a worker's kernel threw
  Size = 16,
}

const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB, the most a wasm32 memory can hold
const ALIGN = 64;
const STACK_BYTES = 65536;
/** How long the workers may take to start before the pool runs everything on this thread. */
const START_TIMEOUT_MS = 15_000;

// Runs in each worker: instantiate the module on the shared memory, then serve jobs until Fn = −1.
const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { module, memory, ctl, tid, stackTop, names } = workerData;
const c = new Int32Array(memory.buffer, ctl, ${Ctl.Size});
let fns;
try {
  const inst = new WebAssembly.Instance(module, { env: { memory } });
  inst.exports.__stack_pointer.value = stackTop;
  fns = names.map((n) => inst.exports[n]);
} catch (e) {
  Atomics.add(c, ${Ctl.Failed}, 1);
  Atomics.notify(c, ${Ctl.Ready});
  throw e;
}
let seen = Atomics.load(c, ${Ctl.Seq});
Atomics.add(c, ${Ctl.Ready}, 1);
Atomics.notify(c, ${Ctl.Ready});
for (;;) {
  Atomics.wait(c, ${Ctl.Seq}, seen);
  seen = Atomics.load(c, ${Ctl.Seq});
  const fn = Atomics.load(c, ${Ctl.Fn});
  if (fn < 0) break;
  try {
    fns[fn](Atomics.load(c, ${Ctl.Arg}), tid);
  } catch (e) {
    Atomics.store(c, ${Ctl.Error}, 1);
  }
  Atomics.add(c, ${Ctl.Done}, 1);
  Atomics.notify(c, ${Ctl.Done});
}
`;

function decodeBase64(b64: string): Uint8Array {
  if (typeof Buffer !== 'undefined') return new Uint8Array(Buffer.from(b64, 'base64'));
  return Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
}

/** Threads to use: env TSFT_CPU_THREADS, else the cores available (at most 16). */
export function defaultCpuThreads(): number {
  const env = Number(process.env.TSFT_CPU_THREADS);
  if (Number.isInteger(env) && env >= 1) return Math.min(env, 64);
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, Math.min(cores, 16));
}

/**
 * A shared memory that may grow to 4 GiB (V8 reserves the address space up front), or less where the process
 * may not reserve that much.
 */
function sharedMemory(): WasmMemory {
  for (let maximum = MAX_PAGES; ; maximum /= 2) {
    try {
      return new wasm.Memory({ initial: 32, maximum, shared: true });
    } catch (e) {
      if (maximum <= 4096) throw e;
    }
  }
}

/**
 * First-fit allocator over the shared memory above the module's own stack (`__heap_base`), growing the
 * memory when nothing fits. Blocks are 64-byte aligned; free blocks are coalesced.
 */
class Heap {
  private free: { ptr: number; size: number }[];
  private used = new Map<number, number>();

  constructor(private readonly memory: WasmMemory, base: number) {
    const start = Math.ceil(base / ALIGN) * ALIGN;
    this.free = [{ ptr: start, size: memory.buffer.byteLength - start }];
  }

  alloc(bytes: number): number {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    let i = this.free.findIndex((b) => b.size >= size);
    if (i < 0) i = this.grow(size);
    const b = this.free[i];
    const ptr = b.ptr;
    if (b.size === size) this.free.splice(i, 1);
    else this.free[i] = { ptr: ptr + size, size: b.size - size };
    this.used.set(ptr, size);
    return ptr;
  }

  release(ptr: number): void {
    const size = this.used.get(ptr);
    if (size === undefined) throw new Error(`cpu kernels: free of ${ptr}, which is not allocated`);
    this.used.delete(ptr);
    let i = this.free.findIndex((b) => b.ptr > ptr);
    if (i < 0) i = this.free.length;
    this.free.splice(i, 0, { ptr, size });
    // coalesce with the next, then the previous block
    if (i + 1 < this.free.length && ptr + size === this.free[i + 1].ptr) {
      this.free[i].size += this.free[i + 1].size;
      this.free.splice(i + 1, 1);
    }
    if (i > 0 && this.free[i - 1].ptr + this.free[i - 1].size === ptr) {
      this.free[i - 1].size += this.free[i].size;
      this.free.splice(i, 1);
    }
  }

  /** Bytes allocated now. */
  get allocated(): number {
    let s = 0;
    for (const v of this.used.values()) s += v;
    return s;
  }

  /** Grows the memory so that a block of `size` fits at its end; returns that free block's index. */
  private grow(size: number): number {
    const top = this.memory.buffer.byteLength;
    const last = this.free[this.free.length - 1];
    const tail = last && last.ptr + last.size === top ? last.size : 0;
    const pages = this.memory.buffer.byteLength / PAGE;
    const need = Math.ceil((size - tail) / PAGE);
    // a quarter more than the memory has (fewer grows), else exactly what is needed
    let grown = 0;
    for (const pagesToAdd of new Set([Math.max(need, Math.ceil(pages / 4)), need])) {
      try {
        this.memory.grow(pagesToAdd);
        grown = pagesToAdd;
        break;
      } catch {
        // past the maximum, or the system refused
      }
    }
    if (!grown) {
      throw new RangeError(
        `cpu kernels: out of memory: ${size} more bytes do not fit the shared memory (at most 4 GiB) ` +
          `(${this.allocated} allocated). Use fewer tokens per step or a smaller vocabulary.`,
      );
    }
    if (tail) last.size += grown * PAGE;
    else this.free.push({ ptr: top, size: grown * PAGE });
    return this.free.length - 1;
  }
}

/** The module, its memory and the thread pool. Get it with {@link cpuKernels}. */
export class CpuKernels {
  readonly memory: WasmMemory;
  readonly exports: KernelExports;
  private readonly module: WasmModule;
  private readonly heap: Heap;
  private readonly ctl: Int32Array;
  private readonly ctlPtr: number;
  private workers: Worker[] = [];
  private stacks: number[] = [];
  private poolState: 'starting' | 'ready' | 'single' = 'single';
  private startDeadline = 0;
  private buffers = new WeakSet<ArrayBufferLike>();
  private f32View: Float32Array;
  private i32View: Int32Array;

  constructor(threads = defaultCpuThreads()) {
    this.module = new wasm.Module(decodeBase64(KERNELS_WASM_BASE64));
    this.memory = sharedMemory();
    const instance = new wasm.Instance(this.module, { env: { memory: this.memory } });
    this.exports = instance.exports as unknown as KernelExports;
    this.heap = new Heap(this.memory, this.exports.__heap_base.value as number);
    this.f32View = new Float32Array(this.memory.buffer);
    this.i32View = new Int32Array(this.memory.buffer);
    this.buffers.add(this.memory.buffer);
    this.ctlPtr = this.alloc(Ctl.Size * 4);
    this.ctl = new Int32Array(this.memory.buffer, this.ctlPtr, Ctl.Size);
    this.ctl.fill(0);
    this.checkLayout();
    if (threads > 1) this.startWorkers(threads - 1);
  }

  /** A Float32Array over the whole memory (refreshed after growth). */
  get f32(): Float32Array {
    if (this.f32View.byteLength !== this.memory.buffer.byteLength) this.refreshViews();
    return this.f32View;
  }

  /** An Int32Array over the whole memory (refreshed after growth). */
  get i32(): Int32Array {
    if (this.i32View.byteLength !== this.memory.buffer.byteLength) this.refreshViews();
    return this.i32View;
  }

  /** Allocates `bytes` (64-byte aligned) in the shared memory; returns the byte offset. */
  alloc(bytes: number): number {
    return this.heap.alloc(bytes);
  }

  /** Frees a block from {@link alloc}. */
  free(ptr: number): void {
    this.heap.release(ptr);
  }

  /** Bytes allocated in the shared memory now. */
  get allocatedBytes(): number {
    return this.heap.allocated;
  }

  /** A fresh Float32Array of `length` zeros living in the shared memory (kernels read it without a copy). */
  allocF32(length: number): Float32Array {
    const ptr = this.alloc(Math.max(1, length) * 4);
    const view = this.f32.subarray(ptr / 4, ptr / 4 + length);
    view.fill(0);
    return view;
  }

  /** The byte offset of `view` in the shared memory, or −1 when it lives elsewhere. */
  offsetOf(view: Float32Array): number {
    return this.buffers.has(view.buffer) ? view.byteOffset : -1;
  }

  /** Threads a parallel job runs on: 1 + the workers that started (waits for them the first time). */
  get threads(): number {
    if (this.poolState === 'starting') this.settlePool(Infinity);
    return this.poolState === 'ready' ? this.workers.length + 1 : 1;
  }

  /** Resolves with {@link threads} without blocking this thread while the workers start. */
  async whenReady(): Promise<number> {
    while (this.poolState === 'starting' && !this.settlePool(0)) await new Promise((r) => setTimeout(r, 5));
    return this.threads;
  }

  /** Runs `fn(job, tid)` on every thread (this one is tid 0) and returns when all are done. */
  run(fn: ParallelKernel, job: number): void {
    const kernel = this.exports[fn];
    if (this.threads === 1) {
      kernel(job, 0);
      return;
    }
    const c = this.ctl;
    Atomics.store(c, Ctl.Fn, PARALLEL.indexOf(fn));
    Atomics.store(c, Ctl.Arg, job);
    Atomics.store(c, Ctl.Done, 0);
    Atomics.add(c, Ctl.Seq, 1);
    Atomics.notify(c, Ctl.Seq);
    let error: unknown;
    try {
      kernel(job, 0);
    } catch (e) {
      error = e;
    }
    // always wait: the workers may still be writing into buffers the caller reuses next
    for (let d; (d = Atomics.load(c, Ctl.Done)) < this.workers.length; ) {
      if (Atomics.wait(c, Ctl.Done, d, 120_000) === 'timed-out') {
        throw new Error(`cpu kernels: ${fn}: workers did not finish in 120 s (${d}/${this.workers.length} done)`);
      }
    }
    if (error) throw error;
    if (Atomics.exchange(c, Ctl.Error, 0)) throw new Error(`cpu kernels: ${fn} failed in a worker thread`);
  }

  /** Stops the workers (later jobs run on this thread only). */
  async shutdown(): Promise<void> {
    if (this.workers.length === 0) return;
    if (this.poolState === 'ready') {
      Atomics.store(this.ctl, Ctl.Fn, -1);
      Atomics.add(this.ctl, Ctl.Seq, 1);
      Atomics.notify(this.ctl, Ctl.Seq);
    }
    const workers = this.workers;
    this.workers = [];
    this.poolState = 'single';
    await Promise.all(workers.map((w) => w.terminate()));
    for (const s of this.stacks) this.free(s);
    this.stacks = [];
  }

  private startWorkers(count: number): void {
    try {
      for (let tid = 1; tid <= count; tid++) {
        const stack = this.alloc(STACK_BYTES);
        this.stacks.push(stack);
        const worker = new Worker(WORKER_SOURCE, {
          eval: true,
          execArgv: [],
          workerData: {
            module: this.module,
            memory: this.memory,
            ctl: this.ctlPtr,
            tid,
            stackTop: stack + STACK_BYTES,
            names: PARALLEL,
          },
        });
        worker.unref();
        worker.on('error', () => {
          // counted through Ctl.Failed (instantiation) or Ctl.Error (a kernel); nothing else to do here
        });
        this.workers.push(worker);
      }
      this.poolState = 'starting';
      this.startDeadline = Date.now() + START_TIMEOUT_MS;
    } catch {
      // no worker_threads here (or too many threads): everything runs on this thread
      for (const w of this.workers) void w.terminate();
      this.workers = [];
      this.poolState = 'single';
    }
  }

  /**
   * Settles the pool — 'ready' once every worker is up, 'single' when one failed or the start deadline
   * passed — waiting at most `waitMs` for that; false while it is still starting.
   */
  private settlePool(waitMs: number): boolean {
    const c = this.ctl, n = this.workers.length, until = Math.min(Date.now() + waitMs, this.startDeadline);
    for (;;) {
      const ready = Atomics.load(c, Ctl.Ready);
      if (Atomics.load(c, Ctl.Failed) > 0) break;
      if (ready >= n) {
        this.poolState = 'ready';
        return true;
      }
      const left = until - Date.now();
      if (left <= 0) {
        if (Date.now() < this.startDeadline) return false;
        break;
      }
      Atomics.wait(c, Ctl.Ready, ready, left);
    }
    void this.shutdown();
    return true;
  }

  private refreshViews(): void {
    const buffer = this.memory.buffer;
    this.buffers.add(buffer);
    this.f32View = new Float32Array(buffer);
    this.i32View = new Int32Array(buffer);
  }

  /** The host writes the job structs by slot: check kernels.c agrees on their sizes. */
  private checkLayout(): void {
    const out = this.alloc(32);
    this.exports.layout(out);
    const got = Array.from(this.i32.subarray(out / 4, out / 4 + 5));
    this.free(out);
    const want = [CE_JOB_SLOTS * 4, CeSlot.Next * 4, SEG_JOB_SLOTS * 4, SegJobSlot.Next * 4, SEGMENT_SLOTS * 4];
    if (got.join() !== want.join()) {
      throw new Error(`cpu kernels: job layout of kernels-wasm.ts (${got}) differs from runtime.ts (${want}): rebuild`);
    }
  }
}

/** Int32 slots of `CeJob` (kernels.c). */
export enum CeSlot {
  W, H, HB, Tgt, V, Np, Hp, VB, Tiles, Slices, Store, Mt, SliceMax, SliceSum, SliceArg, TLogit, Lse, RowScale,
  DW, DHs, DH, HN, Scratch, Next,
}
export const CE_JOB_SLOTS = CeSlot.Next + 1;

/** Int32 slots of `SegJob` (kernels.c); the f32 fields are written through a Float32Array. */
export enum SegJobSlot {
  Segs, Count, Blocks, GradScale, OneMinusB1, B2, OneMinusB2, StepSize, Bc2Sqrt, Eps, Partials, Next,
}
export const SEG_JOB_SLOTS = SegJobSlot.Next + 1;

/** Int32 slots of `Segment` (kernels.c). */
export enum SegmentSlot { P, G, M, V, N, FirstBlock, Decay, Pad }
export const SEGMENT_SLOTS = SegmentSlot.Pad + 1;

/** Elements per work unit of adamw / sumsq (BLOCK in kernels.c). */
export const SEG_BLOCK = 16384;

let instance: CpuKernels | null = null;

/**
 * The process-wide kernels runtime, created on first use (compiles the module, starts the workers).
 * @example
 *   const k = cpuKernels();
 *   k.threads;            // 2 on a 2-core machine (waits for the worker the first time)
 */
export function cpuKernels(): CpuKernels {
  return (instance ??= new CpuKernels());
}

/** Starts the runtime and resolves with its thread count once the workers are up (optional warm-up). */
export function cpuKernelsReady(): Promise<number> {
  return cpuKernels().whenReady();
}

/** Stops the worker threads and drops the runtime (its memory goes with it); the next use starts afresh. */
export async function shutdownCpuKernels(): Promise<void> {
  const k = instance;
  instance = null;
  if (k) await k.shutdown();
}

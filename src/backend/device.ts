// Devices: picks and starts the tfjs backend tsft computes on — webgpu (Dawn), wasm (XNNPACK, SIMD),
// cpu (plain JS) or tensorflow (tfjs-node, only if the user installed it) — and prints one line saying
// which. Choice: the argument, else env TSFT_DEVICE, else auto (webgpu on a real GPU, else wasm).

import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { DeviceError } from '../errors';
import { getLogger } from '../utils/logger';
import { installWasmBatchMatMul } from './kernels/wasm-batch-matmul';
import { describeGpuMemory, detectGpuMemory, installMemoryGuard, uninstallMemoryGuard, type GpuMemoryInfo } from './memory-guard';
import {
  probeAdapter,
  releaseNavigatorGpu,
  startWebGpu,
  stopWebGpu,
  type AdapterSummary,
  type WebGpuSession,
} from './webgpu';

/** The devices tsft can run on. */
export type DeviceName = 'webgpu' | 'wasm' | 'cpu' | 'tensorflow';

export const DEVICE_NAMES: readonly DeviceName[] = ['webgpu', 'wasm', 'cpu', 'tensorflow'];

/** What {@link initDevice} started. */
export interface DeviceInfo {
  name: DeviceName;
  /** The tfjs backend name (`tf.getBackend()`). */
  backend: string;
  /** webgpu only: the adapter, as Dawn describes it. */
  adapter?: AdapterSummary;
  /** webgpu: optional GPU features granted (shader-f16, subgroups, ...); wasm: 'simd' / 'threads'. */
  features: string[];
  /** webgpu only: the device's limits that we raised (maxBufferSize, ...). */
  limits?: Record<string, number>;
  /** webgpu only: our own GPUDevice, shared with tfjs; custom kernels run their pipelines on it. */
  gpuDevice?: GPUDevice;
  /** webgpu only: how much memory the GPU has and what the memory guard lets tsft use (memory-guard.ts). */
  memory?: GpuMemoryInfo;
}

export interface InitDeviceOptions {
  /** Don't print the `[INFO:tsft] device: ...` line. */
  quiet?: boolean;
  /**
   * webgpu: the GPU memory tsft may use, in GiB (wins over env TSFT_GPU_MEMORY and what the driver
   * reports); allocations beyond it throw DeviceMemoryError. Read when the device starts.
   */
  gpuMemoryGiB?: number;
}

const started = new Map<DeviceName, DeviceInfo>();
const pending = new Map<DeviceName, Promise<DeviceInfo>>();
let webgpu: WebGpuSession | null = null;
let wasmPathsSet = false;
let autoChoice: DeviceName | undefined;

/**
 * Checks a device name from a flag or the environment; `source` names where it came from.
 *
 * @example
 * parseDeviceName('WebGPU') // 'webgpu'
 * parseDeviceName('gpu', 'TSFT_DEVICE') // throws DeviceError naming TSFT_DEVICE
 */
export function parseDeviceName(value: string, source = 'device'): DeviceName | 'auto' {
  const v = value.trim().toLowerCase();
  if (v === 'auto' || (DEVICE_NAMES as readonly string[]).includes(v)) return v as DeviceName | 'auto';
  throw new DeviceError(
    `Unknown device '${value}' in ${source}: use one of auto, ${DEVICE_NAMES.join(', ')}.`,
  );
}

/**
 * Reads `--device NAME` or `--device=NAME` from command-line arguments (undefined when absent).
 *
 * @example
 * parseDeviceFlag(['train', '--device', 'wasm']) // 'wasm'
 */
export function parseDeviceFlag(argv: readonly string[]): DeviceName | 'auto' | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--device') {
      const v = argv[i + 1];
      if (v === undefined || v.startsWith('--')) {
        throw new DeviceError(`--device needs a value: one of auto, ${DEVICE_NAMES.join(', ')}.`);
      }
      return parseDeviceName(v, '--device');
    }
    if (a.startsWith('--device=')) return parseDeviceName(a.slice('--device='.length), '--device');
  }
  return undefined;
}

/**
 * Starts a device and makes it tfjs's backend. Without a name: env `TSFT_DEVICE`, else auto — webgpu
 * when a real (hardware) GPU adapter exists, else wasm. Prints one line saying which device, the first
 * time a device starts. Calling again with the same device returns the same info; another device
 * switches the tfjs backend. Tensors made earlier move over when used — except webgpu tensors that were
 * never read: tfjs-webgpu's synchronous read needs OffscreenCanvas, which Node lacks (`await t.data()`
 * first). For the same reason never call dataSync()/arraySync() on webgpu tensors in Node.
 *
 * @example
 * const info = await initDevice();            // [INFO:tsft] device: wasm — XNNPACK on the CPU, features: simd
 * const gpu = await initDevice('webgpu');      // switches; info.gpuDevice is our GPUDevice
 * await shutdownDevice();
 */
export async function initDevice(
  name?: DeviceName | 'auto',
  opts: InitDeviceOptions = {},
): Promise<DeviceInfo> {
  const requested = name !== undefined ? parseDeviceName(name, 'initDevice()') : envDevice() ?? 'auto';
  const choice = requested === 'auto' ? await autoDevice() : requested;
  let info = started.get(choice);
  if (!info) {
    let p = pending.get(choice);
    if (!p) {
      p = startDevice(choice, opts)
        .then((fresh) => {
          started.set(choice, fresh);
          if (!opts.quiet) getLogger().info(`device: ${describeDevice(fresh)}`);
          return fresh;
        })
        .finally(() => pending.delete(choice));
      pending.set(choice, p);
    }
    info = await p;
  }
  if (tf.getBackend() !== info.backend) {
    if (!(await tf.setBackend(info.backend))) {
      throw new DeviceError(`tfjs could not switch to the '${info.backend}' backend (see the warning above).`);
    }
  }
  return info;
}

/** The active device's info, or undefined before {@link initDevice}. */
export function currentDevice(): DeviceInfo | undefined {
  const b = tf.engine().backendName;
  for (const info of started.values()) if (info.backend === b) return info;
  return undefined;
}

/**
 * Our GPUDevice (shared with tfjs's webgpu backend), for custom kernels' own pipelines.
 *
 * @example
 * await initDevice('webgpu');
 * const device = getGpuDevice();
 * device.createShaderModule({ code: 'enable f16; ...' });
 */
export function getGpuDevice(): GPUDevice {
  if (!webgpu) throw new DeviceError(`No WebGPU device: call initDevice('webgpu') first.`);
  return webgpu.device;
}

/** The adapter's own info object (subgroupMinSize/MaxSize, subgroupMatrixConfigs on Dawn). */
export function getGpuAdapterInfo(): GPUAdapterInfo {
  if (!webgpu) throw new DeviceError(`No WebGPU device: call initDevice('webgpu') first.`);
  return webgpu.adapterInfo;
}

/**
 * Frees the WebGPU device and Dawn's instance (Node may not exit while they live); tensors on the webgpu
 * backend become unusable, and a later initDevice('webgpu') starts afresh. wasm/cpu stay registered (they
 * hold nothing that keeps Node alive). Safe to call twice.
 *
 * @example
 * await initDevice('webgpu');
 * // ... work ...
 * await shutdownDevice();
 */
export async function shutdownDevice(): Promise<void> {
  await Promise.allSettled([...pending.values()]);
  if (webgpu) {
    uninstallMemoryGuard();
    stopWebGpu(webgpu);
    webgpu = null;
  }
  releaseNavigatorGpu();
  started.delete('webgpu');
}

/** The one line printed at start. */
export function describeDevice(info: DeviceInfo): string {
  const feats = info.features.length ? `, features: ${info.features.join(', ')}` : '';
  if (info.name === 'webgpu' && info.adapter) {
    const a = info.adapter;
    const name = a.device.replace(/-+$/, '') || a.description || 'unknown adapter';
    const api = { linux: 'vulkan', darwin: 'metal', win32: 'd3d12' }[process.platform as string] ?? '';
    const tags = [a.vendor, a.isSoftware ? 'software' : '', api].filter(Boolean).join(', ');
    return `webgpu — ${name} (${tags}${a.description ? `; ${a.description}` : ''}), ${describeGpuMemory(info.memory)}${feats}`;
  }
  const what = { wasm: 'XNNPACK on the CPU', cpu: 'plain JavaScript on the CPU', tensorflow: 'libtensorflow' };
  return `${info.name} — ${what[info.name as Exclude<DeviceName, 'webgpu'>]}${feats}`;
}

function envDevice(): DeviceName | 'auto' | undefined {
  const v = process.env.TSFT_DEVICE;
  return v === undefined || v.trim() === '' ? undefined : parseDeviceName(v, 'the environment variable TSFT_DEVICE');
}

/** webgpu on a real GPU, else wasm. Keeps the probed adapter for webgpu, releases Dawn otherwise. */
async function autoDevice(): Promise<DeviceName> {
  if (autoChoice) return autoChoice;
  const gpu = started.get('webgpu');
  if (gpu) return (autoChoice = gpu.adapter?.isSoftware ? 'wasm' : 'webgpu');
  try {
    const probe = await probeAdapter();
    if (!probe.summary.isSoftware) return (autoChoice = 'webgpu');
  } catch (e) {
    if (!(e instanceof DeviceError)) throw e;
  }
  releaseNavigatorGpu();
  return (autoChoice = 'wasm');
}

async function startDevice(name: DeviceName, opts: InitDeviceOptions): Promise<DeviceInfo> {
  switch (name) {
    case 'webgpu':
      return startWebGpuDevice(opts);
    case 'wasm':
      return startWasm();
    case 'cpu':
      await import('@tensorflow/tfjs-backend-cpu');
      await setBackendOrThrow('cpu', 'cpu');
      // Skip tfjs's "install tfjs-node" banner on first use: the device line already says what runs.
      (tf.findBackend('cpu') as unknown as { firstUse?: boolean }).firstUse = false;
      return { name: 'cpu', backend: 'cpu', features: [] };
    case 'tensorflow':
      return startTensorflow();
  }
}

async function setBackendOrThrow(backend: string, device: DeviceName): Promise<void> {
  if (!(await tf.setBackend(backend))) {
    throw new DeviceError(
      `The tfjs '${backend}' backend failed to initialise for --device ${device} (tfjs's warning above says why).`,
    );
  }
}

async function startWebGpuDevice(opts: InitDeviceOptions): Promise<DeviceInfo> {
  webgpu = await startWebGpu(await probeAdapter());
  // Results stay on the GPU: small ops must not be forwarded to the CPU, custom kernels read GPU buffers.
  tf.env().set('WEBGPU_CPU_FORWARD', false);
  // tfjs submits its command buffer every N dispatches (15 by default); a submit costs CPU time, and
  // buffers freed meanwhile go back to the pool only after it. TSFT_SUBMIT_BATCH overrides N.
  const batch = Number(process.env.TSFT_SUBMIT_BATCH ?? 0);
  if (batch > 0) tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', batch);
  await setBackendOrThrow('webgpu', 'webgpu');
  // After the device exists, so the free memory read excludes Dawn's own context.
  const s = webgpu.summary;
  const memory = detectGpuMemory({
    gpuMemoryGiB: opts.gpuMemoryGiB,
    adapterName: `${s.device} ${s.description}`,
    vendor: s.vendor,
    isSoftware: s.isSoftware,
    adapterInfo: webgpu.adapterInfo,
  });
  installMemoryGuard(webgpu.backend, memory, { isSoftware: s.isSoftware });
  if (memory.budgetBytes === undefined) {
    getLogger().warningOnce(`webgpu: the GPU's memory size is unknown, so allocations are not checked (a too large one may fail in the driver); set TSFT_GPU_MEMORY=<GiB> to check them.`);
  }
  return {
    memory,
    name: 'webgpu',
    backend: 'webgpu',
    adapter: webgpu.summary,
    features: webgpu.features,
    limits: webgpu.limits,
    gpuDevice: webgpu.device,
  };
}

async function startWasm(): Promise<DeviceInfo> {
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  // The .wasm binaries sit in the package's dist/; bundles (esbuild, pack.sh) lose the default path to
  // them, and in an ESM bundle emscripten's loader even reads an undefined `__dirname`: lend it one.
  const dir = wasmDistDir();
  if (!wasmPathsSet) {
    if (dir) wasm.setWasmPaths(dir);
    wasmPathsSet = true;
  }
  const g = globalThis as { __dirname?: string };
  const lend = dir !== undefined && typeof __dirname === 'undefined' && g.__dirname === undefined;
  if (lend) g.__dirname = dir;
  try {
    await setBackendOrThrow('wasm', 'wasm');
  } catch (e) {
    if (dir) throw e;
    throw new DeviceError(
      `${(e as Error).message} @tensorflow/tfjs-backend-wasm (its .wasm files) is not resolvable from ` +
        `${process.cwd()}: run from the project root.`,
    );
  } finally {
    if (lend) delete g.__dirname;
  }
  installWasmBatchMatMul();
  const features: string[] = [];
  if (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) features.push('simd');
  // tfjs disables wasm threads in Node (tfjs issue #3830: no Web Worker there), so this is browser-only.
  if (await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT')) features.push('threads');
  return { name: 'wasm', backend: 'wasm', features };
}

/** `.../@tensorflow/tfjs-backend-wasm/dist/`, resolved from this module (CommonJS) or the working dir. */
function wasmDistDir(): string | undefined {
  const resolvers: NodeRequire[] = [];
  if (typeof require === 'function') resolvers.push(require);
  resolvers.push(createRequire(path.join(process.cwd(), 'index.js')));
  for (const r of resolvers) {
    try {
      return path.join(path.dirname(r.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep;
    } catch {
      // try the next place
    }
  }
  return undefined;
}

async function startTensorflow(): Promise<DeviceInfo> {
  const tried: string[] = [];
  // Specifiers through a variable: never a dependency, and TypeScript must not look for their types.
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      break;
    } catch (e) {
      tried.push(`${pkg}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  if (!tf.findBackendFactory('tensorflow')) {
    throw new DeviceError(
      `--device tensorflow needs @tensorflow/tfjs-node-gpu (CUDA 11.2 + cuDNN 8.1) or @tensorflow/tfjs-node ` +
        `installed beside tsft: \`npm install @tensorflow/tfjs-node-gpu\` (its install script downloads ` +
        `libtensorflow 2.9.1, so it needs network access). It must use the same @tensorflow/tfjs-core as tsft. ` +
        `Tried: ${tried.join('; ') || 'loaded, but no tensorflow backend registered'}. ` +
        `Or pick --device webgpu / wasm.`,
    );
  }
  await setBackendOrThrow('tensorflow', 'tensorflow');
  return { name: 'tensorflow', backend: 'tensorflow', features: [] };
}

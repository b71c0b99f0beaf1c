// WebGPU for tfjs in Node through Dawn (the npm package `webgpu`): puts `navigator.gpu` in place, picks an
// adapter, requests our own GPUDevice with the optional features and limits our kernels need, and
// registers tfjs's WebGPUBackend on that device under the name 'webgpu' (docs/platform.md explains why the
// stock factory's device is not enough). In a browser the existing `navigator.gpu` is used as is.

import * as tf from '@tensorflow/tfjs-core';
import { DeviceError } from '../errors';

/**
 * Dawn toggles: unsafe APIs (subgroup matrix) and f16 on NVIDIA's Vulkan driver; TSFT_DAWN_TOGGLES adds more
 * (comma list, e.g. `disable_robustness`).
 */
export const DAWN_TOGGLES = [`enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia${process.env.TSFT_DAWN_TOGGLES ? ',' + process.env.TSFT_DAWN_TOGGLES : ''}`];

/** Optional features requested whenever the adapter offers them. */
export const OPTIONAL_FEATURES = [
  'shader-f16',
  'subgroups',
  'chromium-experimental-subgroup-matrix',
  'timestamp-query',
] as const;

/** Limits raised to the adapter's maximum (the defaults are far below what an LLM needs). */
export const REQUESTED_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupsPerDimension',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeInvocationsPerWorkgroup',
  'maxUniformBufferBindingSize',
] as const;

/** What the adapter says about itself, plus our verdict on whether it is a software rasteriser. */
export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** lavapipe / llvmpipe / SwiftShader, or Dawn's fallback adapter: real, but ~1000x slower than a GPU. */
  isSoftware: boolean;
}

/** An adapter found by {@link probeAdapter}; pass it on to {@link startWebGpu}. */
export interface AdapterProbe {
  adapter: GPUAdapter;
  summary: AdapterSummary;
}

/** The running WebGPU backend: our device, the adapter it came from, and the tfjs backend on it. */
export interface WebGpuSession {
  device: GPUDevice;
  adapterInfo: GPUAdapterInfo;
  summary: AdapterSummary;
  features: string[];
  limits: Record<string, number>;
  backend: tf.KernelBackend;
}

interface Dawn {
  create(options: string[]): GPU;
  globals: object;
}

type NavigatorLike = { gpu?: GPU };
type GlobalWithNavigator = { navigator?: NavigatorLike };

/** How we put our GPU object in place, so that {@link releaseNavigatorGpu} can undo exactly that. */
let installed: { gpu: GPU; where: 'global' | 'property' } | null = null;

const SOFTWARE_RE = /llvmpipe|lavapipe|swiftshader|software/i;

/**
 * True for software adapters: Dawn's fallback adapter, Mesa's lavapipe/llvmpipe, SwiftShader.
 *
 * @example
 * isSoftwareAdapter({ vendor: 'mesa', architecture: 'software', device: 'llvmpipe', description: '' }) // true
 */
export function isSoftwareAdapter(
  info: Pick<AdapterSummary, 'vendor' | 'architecture' | 'device' | 'description'>,
  isFallbackAdapter = false,
): boolean {
  if (isFallbackAdapter) return true;
  return [info.architecture, info.device, info.description].some((s) => SOFTWARE_RE.test(s));
}

/** Loads Dawn and installs `navigator.gpu` (unless one is there already, as in a browser). */
async function navigatorGpu(): Promise<GPU> {
  const g = globalThis as GlobalWithNavigator;
  if (g.navigator?.gpu) return g.navigator.gpu;
  let dawn: Dawn;
  try {
    dawn = (await import('webgpu')) as unknown as Dawn;
  } catch (e) {
    throw new DeviceError(
      `WebGPU is unavailable: the npm package 'webgpu' (Dawn's Node binding) could not be loaded ` +
        `(${(e as Error).message}). Run \`npm install\` in the project, or pick --device wasm.`,
    );
  }
  Object.assign(globalThis, dawn.globals);
  let gpu: GPU;
  try {
    gpu = dawn.create(DAWN_TOGGLES);
  } catch (e) {
    throw new DeviceError(`Dawn could not start: ${(e as Error).message}. Pick --device wasm to run on the CPU.`);
  }
  // Node 20 has no navigator; Node 21+ has one (a getter on globalThis): add `gpu` to it, don't replace it.
  if (g.navigator === undefined) {
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
    installed = { gpu, where: 'global' };
  } else {
    Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true, writable: true });
    installed = { gpu, where: 'property' };
  }
  return gpu;
}

/**
 * Removes the `navigator.gpu` we installed (Node does not exit while Dawn's instance is reachable).
 * Leaves a navigator that was not ours alone.
 */
export function releaseNavigatorGpu(): void {
  if (!installed) return;
  const g = globalThis as GlobalWithNavigator;
  if (g.navigator?.gpu === installed.gpu) {
    if (installed.where === 'global') delete g.navigator;
    else delete g.navigator.gpu;
  }
  installed = null;
}

/**
 * Finds the best WebGPU adapter, or throws a DeviceError saying how to get one.
 *
 * @example
 * const { summary } = await probeAdapter();
 * console.log(summary.description, summary.isSoftware);
 */
export async function probeAdapter(): Promise<AdapterProbe> {
  const gpu = await navigatorGpu();
  let adapter: GPUAdapter | null = null;
  let failure = '';
  try {
    adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch (e) {
    failure = ` Dawn said: ${(e as Error).message}.`;
  }
  if (!adapter) {
    releaseNavigatorGpu();
    const vk = ['VK_DRIVER_FILES', 'VK_ICD_FILENAMES']
      .filter((k) => process.env[k])
      .map((k) => `${k}=${process.env[k]}`)
      .join(', ');
    throw new DeviceError(
      `WebGPU: Dawn found no adapter.${failure || ' (Dawn may print its reasons on stderr.)'}` +
        `${vk ? ` Vulkan driver override in effect: ${vk}.` : ''} ` +
        `Install a Vulkan driver: a GPU vendor's driver, or for a CPU-only machine Mesa's lavapipe from ` +
        `Debian bookworm-backports (\`apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1\`; ` +
        `Debian 12's own Mesa 22.3 is refused by Dawn). Or pick --device wasm.`,
    );
  }
  // Dawn's adapter info is a class with getters: copy the fields we report.
  const info = adapter.info;
  const fields = {
    vendor: info.vendor ?? '',
    architecture: info.architecture ?? '',
    device: info.device ?? '',
    description: info.description ?? '',
  };
  const fallback = Boolean((info as { isFallbackAdapter?: boolean }).isFallbackAdapter);
  return { adapter, summary: { ...fields, isSoftware: isSoftwareAdapter(fields, fallback) } };
}

/**
 * Requests our own GPUDevice on the adapter (all optional features and raised limits) and makes tfjs's
 * WebGPU backend run on it, registered as 'webgpu'. Does not switch tfjs to it.
 *
 * @example
 * const session = await startWebGpu(await probeAdapter());
 * await tf.setBackend('webgpu');
 */
export async function startWebGpu(probe: AdapterProbe): Promise<WebGpuSession> {
  const { adapter, summary } = probe;
  const features = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const adapterLimits = adapter.limits as unknown as Record<string, number | undefined>;
  const requiredLimits: Record<string, number> = {};
  for (const k of REQUESTED_LIMITS) {
    const v = adapterLimits[k];
    if (typeof v === 'number') requiredLimits[k] = v;
  }
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({
      requiredFeatures: features as unknown as GPUFeatureName[],
      requiredLimits,
    });
  } catch (e) {
    releaseNavigatorGpu();
    throw new DeviceError(
      `WebGPU: the adapter '${summary.description}' refused a device with features [${features.join(', ')}]: ` +
        `${(e as Error).message}. Pick --device wasm, or report this with the adapter description.`,
    );
  }
  // Only now load tfjs's WebGPU backend: it registers its own factory at load time if navigator.gpu exists.
  const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
  const backend = new WebGPUBackend(device, adapter.info);
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => backend, 10);
  const deviceLimits = device.limits as unknown as Record<string, number>;
  const limits: Record<string, number> = {};
  for (const k of REQUESTED_LIMITS) if (typeof deviceLimits[k] === 'number') limits[k] = deviceLimits[k];
  return {
    device,
    adapterInfo: adapter.info,
    summary,
    features: OPTIONAL_FEATURES.filter((f) => device.features.has(f)),
    limits,
    backend,
  };
}

/** Unregisters (and so disposes) the tfjs backend, destroys the device and releases Dawn's instance. */
export function stopWebGpu(session: WebGpuSession): void {
  if (tf.findBackend('webgpu') === session.backend) tf.removeBackend('webgpu');
  else session.backend.dispose();
  session.device.destroy();
  releaseNavigatorGpu();
}

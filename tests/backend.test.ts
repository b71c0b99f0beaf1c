// Devices: every backend tsft runs on (cpu, wasm, and webgpu — Mesa lavapipe on CPU-only machines)
// computes what tfjs's cpu backend computes, forward and backward, for the tfjs kernels tsft relies on.
// Also: auto choice, TSFT_DEVICE, the one device line, switching, errors, and a clean exit after shutdown.
// WebGPU without an adapter: skipped locally, a failure when CI is set (lavapipe must be installed there).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '../src/backend/gradients';
import {
  initDevice,
  parseDeviceFlag,
  parseDeviceName,
  shutdownDevice,
  getGpuDevice,
  type DeviceName,
} from '../src/backend/device';
import { deviceMemory, toGiB } from '../src/backend/memory';
import { probeAdapter, releaseNavigatorGpu, type AdapterSummary } from '../src/backend/webgpu';
import { DeviceError } from '../src/errors';

const ROOT = process.cwd();
const TSX = path.join(ROOT, 'node_modules', '.bin', 'tsx');
const TOL = 1e-5;
process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');

/** The adapter Dawn finds here, or why there is none. */
let adapter: AdapterSummary | undefined;
let noAdapter = '';

before(async () => {
  assert.ok(fs.existsSync(path.join(ROOT, 'package.json')), 'run the tests from the project root');
  try {
    adapter = (await probeAdapter()).summary;
  } catch (e) {
    noAdapter = (e as Error).message;
  }
  releaseNavigatorGpu();
});

after(async () => {
  await shutdownDevice();
});

/** Skips (locally) or fails (CI) a WebGPU test when there is no adapter; true when it may run. */
function needGpu(t: TestContext): boolean {
  if (adapter) return true;
  const msg = `no WebGPU adapter — Mesa lavapipe (mesa-vulkan-drivers from bookworm-backports) is missing: ${noAdapter}`;
  if (process.env.CI) assert.fail(msg);
  t.skip(msg);
  return false;
}

/** Runs TypeScript in a fresh `tsx` process from the project root (CommonJS, like tslab). */
function runChild(code: string, env: Record<string, string | undefined> = {}, timeoutMs = 60_000) {
  const started = Date.now();
  const r = spawnSync(TSX, ['-e', `(async () => { ${code} })().catch((e) => { console.error(e); process.exit(1); });`], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: timeoutMs,
  });
  const ended = Date.now();
  const deviceLines = r.stdout.split('\n').filter((l) => l.startsWith('[INFO:tsft] device:'));
  return { ...r, started, ended, deviceLines };
}

// ---------------------------------------------------------------------------------------------------
// Deterministic inputs and the kernels tsft relies on.

interface Input {
  values: Float32Array | Int32Array;
  shape: number[];
  dtype: 'float32' | 'int32';
}

function inputs(shapes: number[][], ints: Record<number, number> = {}): Input[] {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648), seed / 2147483648);
  return shapes.map((shape, k) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const max = ints[k];
    return max === undefined
      ? { values: Float32Array.from({ length: n }, () => rand() * 2 - 1), shape, dtype: 'float32' }
      : { values: Int32Array.from({ length: n }, () => Math.floor(rand() * max)), shape, dtype: 'int32' };
  });
}

interface KernelCase {
  name: string;
  shapes: number[][];
  fn: (...xs: tf.Tensor[]) => tf.Tensor;
  /** Inputs to differentiate (by index); none: forward only. */
  wrt?: number[];
  /** int32 inputs: index → exclusive max. */
  ints?: Record<number, number>;
  /** Known gap: devices where this fails, and why (reported as a todo, not a failure). */
  gap?: { devices: DeviceName[]; why: string };
}

const WASM_SEGMENT_SUM = {
  devices: ['wasm'] as DeviceName[],
  why: "gather's gradient needs UnsortedSegmentSum, which tfjs-backend-wasm 4.22 lacks",
};

const KERNELS: KernelCase[] = [
  { name: 'matMul', shapes: [[5, 7], [7, 3]], fn: (a, b) => tf.matMul(a, b), wrt: [0, 1] },
  { name: 'matMul batched, transposeB', shapes: [[2, 5, 8], [2, 6, 8]], fn: (a, b) => tf.matMul(a, b, false, true), wrt: [0, 1] },
  { name: 'matMul batched, transposeA', shapes: [[2, 8, 5], [2, 8, 6]], fn: (a, b) => tf.matMul(a, b, true, false), wrt: [0, 1] },
  { name: 'matMul [B,H,T,D]·[B,H,T,D]ᵀ', shapes: [[2, 3, 4, 8], [2, 3, 4, 8]], fn: (a, b) => tf.matMul(a, b, false, true), wrt: [0, 1] },
  {
    name: 'matMul [B,T,C]·[C,N] (broadcast batch)',
    shapes: [[2, 4, 8], [8, 6]],
    fn: (a, b) => tf.matMul(a, b),
    wrt: [0, 1],
    gap: { devices: ['cpu', 'wasm', 'webgpu'], why: "tfjs-core's BatchMatMul gradient returns [B,C,N] for a broadcast [C,N] input: reshape to 2-D first" },
  },
  { name: 'gather (embedding)', shapes: [[10, 6], [2, 5]], ints: { 1: 10 }, fn: (w, i) => tf.gather(w, i), wrt: [0], gap: WASM_SEGMENT_SUM },
  { name: 'gather batchDims=1 (label logits)', shapes: [[4, 9], [4, 1]], ints: { 1: 9 }, fn: (x, i) => tf.gather(x, i, 1, 1), wrt: [0], gap: WASM_SEGMENT_SUM },
  { name: 'unsortedSegmentSum', shapes: [[7, 3], [7]], ints: { 1: 4 }, fn: (x, s) => tf.unsortedSegmentSum(x, s as tf.Tensor1D, 4), wrt: [0], gap: WASM_SEGMENT_SUM },
  {
    name: 'gatherND',
    shapes: [[4, 5], [3, 2]],
    ints: { 1: 4 },
    fn: (x, i) => tf.gatherND(x, i),
    wrt: [0],
    gap: { devices: ['cpu', 'wasm', 'webgpu'], why: 'tfjs-core registers no gradient for GatherNd' },
  },
  { name: 'oneHot', shapes: [[6]], ints: { 0: 9 }, fn: (i) => tf.oneHot(i as tf.Tensor1D, 9) },
  { name: 'softmax', shapes: [[3, 11]], fn: (x) => tf.softmax(x), wrt: [0] },
  { name: 'logSoftmax', shapes: [[3, 11]], fn: (x) => tf.logSoftmax(x), wrt: [0] },
  { name: 'rmsnorm: square, mean, rsqrt, mul', shapes: [[3, 8], [8]], fn: (x, w) => tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), 1e-6))), w), wrt: [0, 1] },
  { name: 'adam: sqrt, pow, div', shapes: [[12], [12]], fn: (m, v) => tf.add(tf.div(m, tf.add(tf.sqrt(tf.square(v)), 1e-8)), tf.pow(tf.abs(v), 1.5)), wrt: [0, 1] },
  { name: 'silu: sigmoid, mul', shapes: [[4, 6], [4, 6]], fn: (g, u) => tf.mul(tf.mul(g, tf.sigmoid(g)), u), wrt: [0, 1] },
  { name: 'concat', shapes: [[2, 3, 4], [2, 3, 5]], fn: (a, b) => tf.concat([a, b], -1), wrt: [0, 1] },
  { name: 'slice', shapes: [[4, 6, 8]], fn: (x) => tf.slice(x, [1, 0, 2], [2, 6, 4]), wrt: [0] },
  { name: 'split', shapes: [[4, 8]], fn: (x) => tf.split(x, 2, -1)[1], wrt: [0] },
  { name: 'tile', shapes: [[2, 1, 3]], fn: (x) => tf.tile(x, [1, 4, 2]), wrt: [0] },
  { name: 'where', shapes: [[3, 5], [3, 5], [3, 5]], fn: (c, a, b) => tf.where(tf.greater(c, 0), a, b), wrt: [1, 2] },
  { name: 'cumsum', shapes: [[3, 7]], fn: (x) => tf.cumsum(x, 1), wrt: [0] },
  { name: 'cumsum exclusive, reverse', shapes: [[3, 7]], fn: (x) => tf.cumsum(x, 1, true, true), wrt: [0] },
  { name: 'argMax', shapes: [[4, 9]], fn: (x) => tf.argMax(x, -1) },
  { name: 'topk', shapes: [[3, 9]], fn: (x) => tf.topk(x, 3).values },
  { name: 'transpose, reshape', shapes: [[2, 3, 4, 5]], fn: (x) => tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [2, 4, 15]), wrt: [0] },
  {
    name: 'rope: sin, cos, neg, concat, split',
    shapes: [[2, 4, 8], [4, 4]],
    fn: (x, f) => {
      const cos = tf.concat([tf.cos(f), tf.cos(f)], -1); // [T, D]
      const sin = tf.concat([tf.sin(f), tf.sin(f)], -1);
      const [x1, x2] = tf.split(x, 2, -1);
      return tf.add(tf.mul(x, cos), tf.mul(tf.concat([tf.neg(x2), x1], -1), sin));
    },
    wrt: [0, 1],
  },
  { name: 'exp, log, sum, max', shapes: [[3, 6]], fn: (x) => tf.add(tf.log(tf.sum(tf.exp(x), -1)), tf.max(x, -1)), wrt: [0] },
  {
    name: 'causal mask: bandPart, where, softmax',
    shapes: [[2, 5, 5]],
    fn: (x) => tf.softmax(tf.where(tf.cast(tf.linalg.bandPart(tf.ones([5, 5]), -1, 0), 'bool'), x, tf.fill([2, 5, 5], -1e9))),
    wrt: [0],
  },
  { name: 'pad', shapes: [[3, 4]], fn: (x) => tf.pad(x, [[1, 0], [0, 2]]), wrt: [0] },
  { name: 'stack, expandDims, squeeze', shapes: [[3, 4], [3, 4]], fn: (a, b) => tf.stack([a, tf.squeeze(tf.expandDims(b, 0), [0])], 1), wrt: [0, 1] },
  { name: 'maximum, minimum, clipByValue', shapes: [[10], [10]], fn: (a, b) => tf.add(tf.add(tf.maximum(a, b), tf.minimum(a, b)), tf.clipByValue(a, -0.3, 0.3)), wrt: [0, 1] },
  { name: 'abs, squaredDifference', shapes: [[10], [10]], fn: (a, b) => tf.add(tf.abs(a), tf.squaredDifference(a, b)), wrt: [0, 1] },
  { name: 'equal, logicalAnd, cast', shapes: [[8], [8]], ints: { 0: 3, 1: 3 }, fn: (a, b) => tf.cast(tf.logicalAnd(tf.equal(a, b), tf.greater(a, 0)), 'float32') },
  { name: 'scatterND', shapes: [[3, 1], [3, 5]], ints: { 0: 4 }, fn: (i, u) => tf.scatterND(i, u, [4, 5]) },
  { name: 'softmaxCrossEntropy', shapes: [[4, 9], [4, 9]], fn: (l, y) => tf.losses.softmaxCrossEntropy(tf.softmax(y), l), wrt: [0] },
];

/** Output and gradients (of the sum of the output) of one case on the active backend, as plain arrays. */
async function runKernel(c: KernelCase): Promise<number[][]> {
  const xs = inputs(c.shapes, c.ints).map((i) => tf.tensor(i.values, i.shape, i.dtype));
  try {
    const results: number[][] = [Array.from(await c.fn(...xs).data())];
    if (c.wrt) {
      const wrt = c.wrt;
      const f = (...ws: tf.Tensor[]) => tf.sum(c.fn(...xs.map((x, i) => (wrt.includes(i) ? ws[wrt.indexOf(i)] : x))));
      for (const g of tf.grads(f)(wrt.map((i) => xs[i]))) results.push(Array.from(await g.data()));
    }
    return results;
  } finally {
    tf.dispose(xs);
  }
}

function assertClose(got: number[][], want: number[][], what: string): void {
  assert.equal(got.length, want.length, `${what}: number of outputs`);
  got.forEach((arr, k) => {
    assert.equal(arr.length, want[k].length, `${what}: output ${k} size`);
    arr.forEach((v, i) => {
      const w = want[k][i];
      if (!(Math.abs(v - w) <= TOL * Math.max(1, Math.abs(w)))) {
        assert.fail(`${what}: ${k === 0 ? 'forward' : `gradient ${k - 1}`}[${i}] = ${v}, cpu says ${w}`);
      }
    });
  });
}

/** The small model-like computation each device must match: matmul, softmax, and its gradient. */
async function smallStep(): Promise<number[][]> {
  const [x, w] = inputs([[4, 16], [16, 8]]).map((i) => tf.tensor(i.values, i.shape));
  const loss = (w: tf.Tensor) => tf.mean(tf.mul(tf.softmax(tf.matMul(x, w)), tf.range(0, 8)));
  const probs = tf.softmax(tf.matMul(x, w)); // [4, 8]
  const g = tf.grad(loss)(w); // [16, 8]
  const out = [Array.from(await probs.data()), Array.from(await g.data())];
  tf.dispose([x, w, probs, g]);
  return out;
}

// ---------------------------------------------------------------------------------------------------

describe('device names', () => {
  test('parseDeviceName / parseDeviceFlag', () => {
    assert.equal(parseDeviceName(' WebGPU '), 'webgpu');
    assert.equal(parseDeviceName('auto'), 'auto');
    assert.equal(parseDeviceFlag(['train', '--device', 'wasm']), 'wasm');
    assert.equal(parseDeviceFlag(['--device=cpu', 'x']), 'cpu');
    assert.equal(parseDeviceFlag(['train']), undefined);
    assert.throws(() => parseDeviceFlag(['--device']), DeviceError);
  });

  test('an unknown device names the valid ones', async () => {
    await assert.rejects(initDevice('gpu' as DeviceName), (e: Error) => {
      assert.ok(e instanceof DeviceError);
      assert.match(e.message, /'gpu'.*auto, webgpu, wasm, cpu, tensorflow/);
      return true;
    });
  });

  test('a bad TSFT_DEVICE names the variable', async () => {
    const saved = process.env.TSFT_DEVICE;
    process.env.TSFT_DEVICE = 'cuda';
    try {
      await assert.rejects(initDevice(), (e: Error) => e instanceof DeviceError && /TSFT_DEVICE/.test(e.message) && /'cuda'/.test(e.message));
    } finally {
      if (saved === undefined) delete process.env.TSFT_DEVICE;
      else process.env.TSFT_DEVICE = saved;
    }
  });

  test('tensorflow without tfjs-node says how to install it', async (t) => {
    const req = createRequire(path.join(ROOT, 'index.js'));
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      try {
        req.resolve(pkg);
        t.skip(`${pkg} is installed`);
        return;
      } catch {
        // absent, as expected
      }
    }
    await assert.rejects(initDevice('tensorflow', { quiet: true }), (e: Error) => {
      assert.ok(e instanceof DeviceError);
      assert.match(e.message, /npm install @tensorflow\/tfjs-node-gpu/);
      assert.match(e.message, /CUDA 11\.2/);
      return true;
    });
  });
});

describe('each device matches the cpu backend', () => {
  let reference: number[][] = [];
  const kernelRefs = new Map<string, number[][] | Error>();

  before(async () => {
    await initDevice('cpu', { quiet: true });
    reference = await smallStep();
    for (const c of KERNELS) kernelRefs.set(c.name, await runKernel(c).catch((e: Error) => e));
  });

  for (const name of ['cpu', 'wasm', 'webgpu'] as const) {
    test(`${name}: matmul + softmax + grad`, async (t) => {
      if (name === 'webgpu' && !needGpu(t)) return;
      const info = await initDevice(name, { quiet: true });
      assert.equal(tf.getBackend(), info.backend);
      assertClose(await smallStep(), reference, name);
      const again = await initDevice(name, { quiet: true });
      assert.equal(again, info, 'initDevice with the active device returns the same info');
    });
  }

  for (const name of ['wasm', 'webgpu'] as const) {
    describe(`${name}: tfjs kernels tsft relies on (forward + gradient)`, () => {
      for (const c of KERNELS) {
        const todo = c.gap?.devices.includes(name) ? c.gap.why : undefined;
        test(c.name, { todo }, async (t) => {
          if (name === 'webgpu' && !needGpu(t)) return;
          await initDevice(name, { quiet: true });
          const want = kernelRefs.get(c.name);
          if (want instanceof Error) throw new Error(`cpu reference failed: ${want.message}`);
          assertClose(await runKernel(c), want!, `${name} ${c.name}`);
        });
      }
    });
  }
});

describe('switching and memory', () => {
  test('wasm → webgpu → wasm: tensors follow (webgpu ones once read)', async (t) => {
    if (!needGpu(t)) return;
    const wasm = await initDevice('wasm', { quiet: true });
    const x = tf.tensor([1, 2, 3, 4], [2, 2]);
    const gpu = await initDevice('webgpu', { quiet: true });
    assert.equal(tf.getBackend(), 'webgpu');
    assert.ok(gpu.gpuDevice && gpu.gpuDevice === getGpuDevice());
    assert.equal(gpu.adapter?.isSoftware, adapter!.isSoftware);
    const y = tf.matMul(x, x); // x is uploaded to the GPU
    // Read before switching away: tfjs-webgpu's synchronous read (used to move data) needs OffscreenCanvas.
    assert.deepEqual(Array.from(await y.data()), [7, 10, 15, 22]);
    assert.equal(await initDevice('wasm', { quiet: true }), wasm);
    assert.equal(tf.getBackend(), 'wasm');
    assert.deepEqual(Array.from(await tf.add(y, y).data()), [14, 20, 30, 44]);
    tf.dispose([x, y]);
  });

  test('deviceMemory counts tensors and keeps a peak', async (t) => {
    for (const name of ['cpu', 'wasm', 'webgpu'] as const) {
      if (name === 'webgpu' && !adapter) continue;
      await initDevice(name, { quiet: true });
      const before = deviceMemory();
      const big = tf.tidy(() => tf.add(tf.ones([256, 1024]), 1)); // 1 MiB, computed on the device
      await big.data();
      const during = deviceMemory();
      assert.equal(during.backend, name);
      assert.equal(during.tensorBytes - before.tensorBytes, 2 ** 20, name);
      assert.ok(during.allocatedBytes >= 2 ** 20, `${name}: allocated ${during.allocatedBytes}`);
      assert.ok(during.peakBytes >= during.allocatedBytes);
      big.dispose();
      assert.ok(deviceMemory().peakBytes >= during.allocatedBytes);
      t.diagnostic(`${name}: ${toGiB(during.allocatedBytes)} GiB allocated`);
    }
  });
});

describe('fresh processes', () => {
  test('auto picks webgpu only on a hardware adapter (wasm here on lavapipe), and prints one line', () => {
    const want = adapter && !adapter.isSoftware ? 'webgpu' : 'wasm';
    const r = runChild(
      `const { initDevice } = await import('./src/backend/device');
       const a = await initDevice(); const b = await initDevice();
       console.log(a.name, a === b);`,
      { TSFT_DEVICE: undefined },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').at(-1), `${want} true`);
    assert.equal(r.deviceLines.length, 1, r.stderr);
    assert.match(r.deviceLines[0], new RegExp(`^\\[INFO:tsft\\] device: ${want} — `));
  });

  test('TSFT_DEVICE=cpu wins over auto', () => {
    const r = runChild(
      `const { initDevice } = await import('./src/backend/device');
       console.log((await initDevice()).name);`,
      { TSFT_DEVICE: 'cpu' },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').at(-1), 'cpu');
    assert.deepEqual(r.deviceLines, ['[INFO:tsft] device: cpu — plain JavaScript on the CPU']);
  });

  test('webgpu: init, compute, shutdown, and the process exits at once', (t) => {
    if (!needGpu(t)) return;
    const r = runChild(
      `const tf = await import('@tensorflow/tfjs-core');
       const { initDevice, shutdownDevice } = await import('./src/backend/device');
       await initDevice('webgpu'); await initDevice('webgpu');
       const a = tf.ones([32, 32]);
       console.log((await tf.matMul(a, a).data())[0]);
       await shutdownDevice();
       console.log('done', Date.now());`,
      {},
      30_000,
    );
    assert.equal(r.signal, null, `killed after 30 s: the process did not exit. stderr: ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    const [value, done, at] = r.stdout.split('\n').filter((l) => l && !l.startsWith('[INFO:tsft]')).join(' ').split(/\s+/);
    assert.equal(value, '32');
    assert.equal(done, 'done');
    const exitMs = r.ended - Number(at);
    assert.ok(exitMs < 3000, `exited ${exitMs} ms after shutdown`);
    assert.equal(r.deviceLines.length, 1, r.stderr);
    assert.match(r.deviceLines[0], /^\[INFO:tsft\] device: webgpu — .*features: /);
    t.diagnostic(`${r.deviceLines[0]} (exit ${exitMs} ms after shutdown)`);
  });
});

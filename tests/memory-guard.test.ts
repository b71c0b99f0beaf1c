// The GPU memory guard (issue 8): with a small capacity given through initDevice's option, an allocation
// beyond it throws DeviceMemoryError naming size / in use / capacity / what to change, before any GPU
// buffer is created; tfjs's pool of free buffers is dropped first; tensors made before the error still
// read back; the pre-flight estimate is checked against a real training step of a small model.
// Capacity detection (explicit setting, env, none) is tested without a device; on the H100 see
// bench/memory-guard.ts. WebGPU (lavapipe here and in CI) without an adapter: skipped locally, a failure in CI.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { describeDevice, initDevice, shutdownDevice, type DeviceInfo } from '../src/backend/device';
import { deviceMemory, registerGpuPool } from '../src/backend/memory';
import {
  checkTrainingFits,
  detectGpuMemory,
  estimateTrainingBytes,
  gpuGuardStats,
  releasePooledGpuBuffers,
  reserveGpuBytes,
  resetGpuPeak,
  setGpuMemoryBudget,
  type TrainingMemoryOptions,
} from '../src/backend/memory-guard';
import { DeviceMemoryError } from '../src/errors';
import { resolveConfig } from '../src/model/config';
import { Qwen3ForCausalLM } from '../src/model/qwen3';
import { loraParameters, prepareLora } from '../src/train/lora';
import { AdamW } from '../src/train/optimizer';
import { Random } from '../src/utils/seed';

process.env.XDG_RUNTIME_DIR ??= fs.mkdtempSync('/tmp/tsft-xdg-');
const MiB = 2 ** 20;
const BUDGET = 96 * MiB;

/** x's last element, read through a one-element slice (a full read needs a staging buffer as large as x,
 * which on lavapipe counts against the budget: its "GPU memory" is host RAM). */
async function last(x: tf.Tensor): Promise<number> {
  const s = tf.slice(x, [x.size - 1], [1]);
  const v = (await s.data())[0];
  s.dispose();
  return v;
}

describe('GPU memory size', () => {
  test('an explicit setting wins: the option, then TSFT_GPU_MEMORY; a bad value is an error', () => {
    const saved = process.env.TSFT_GPU_MEMORY;
    try {
      process.env.TSFT_GPU_MEMORY = '24';
      assert.deepEqual(detectGpuMemory({ gpuMemoryGiB: 0.5 }), { capacityBytes: 512 * MiB, budgetBytes: 512 * MiB, source: 'option' });
      assert.deepEqual(detectGpuMemory({ isSoftware: true }), { capacityBytes: 24 * 1024 * MiB, budgetBytes: 24 * 1024 * MiB, source: 'TSFT_GPU_MEMORY' });
      process.env.TSFT_GPU_MEMORY = 'lots';
      assert.throws(() => detectGpuMemory(), (e: unknown) => e instanceof DeviceMemoryError && /TSFT_GPU_MEMORY must be a positive number of GiB/.test(e.message));
      delete process.env.TSFT_GPU_MEMORY;
      // a software adapter allocates in host RAM: its size, less the margin
      const host = detectGpuMemory({ isSoftware: true });
      assert.equal(host.source, 'host RAM');
      assert.ok(host.budgetBytes! > 0 && host.budgetBytes! < host.capacityBytes!);
    } finally {
      if (saved === undefined) delete process.env.TSFT_GPU_MEMORY;
      else process.env.TSFT_GPU_MEMORY = saved;
    }
  });
});

describe('memory guard on webgpu', () => {
  let info: DeviceInfo | null = null;
  let skip = '';
  let created = 0;
  before(async () => {
    try {
      info = await initDevice('webgpu', { quiet: true, gpuMemoryGiB: BUDGET / 2 ** 30 });
    } catch (e) {
      if (process.env.CI) throw e;
      skip = `webgpu unavailable here: ${(e as Error).message.split('\n')[0]}`;
      return;
    }
    // count every GPU buffer Dawn is asked for
    const device = info.gpuDevice as unknown as { createBuffer: (d: unknown) => unknown };
    const createBuffer = device.createBuffer.bind(device);
    device.createBuffer = (d: unknown) => {
      created++;
      return createBuffer(d);
    };
  });
  after(async () => {
    await shutdownDevice();
  });

  test('the device line and deviceMemory() report the capacity', (t) => {
    if (skip) return t.skip(skip);
    assert.match(describeDevice(info!), /memory 96\.0 MiB \(option\)/);
    assert.equal(deviceMemory().budgetBytes, BUDGET);
  });

  test('an allocation beyond the capacity throws before any buffer is created; earlier tensors stay intact', async (t) => {
    if (skip) return t.skip(skip);
    const a = tf.fill([4 * MiB], 1.5); // 16 MiB
    assert.equal((await a.data())[4 * MiB - 1], 1.5);
    releasePooledGpuBuffers(); // (the read's staging buffer) so that what is left is what is free
    const inUse = gpuGuardStats()!.countedBytes;
    const n = Math.ceil((BUDGET - inUse) / 4) + MiB; // just over what is left (+4 MiB), fits a 128 MiB binding
    const before = created;
    let err: unknown;
    try {
      tf.fill([n], 2).dispose();
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof DeviceMemoryError, `expected DeviceMemoryError, got ${String(err)}`);
    assert.equal(created, before, 'no GPU buffer may be created for a refused allocation');
    const m = err.message;
    assert.equal(err.requestedBytes, n * 4);
    assert.equal(err.budgetBytes, BUDGET);
    assert.match(m, new RegExp(`caught before allocating: ${((n * 4) / MiB).toFixed(1)} MiB for a float32 tensor \\[${n}\\] \\(op Fill`));
    assert.match(m, /In use: [\d.]+ MiB of the 96\.0 MiB tsft may use \(option\) — live tensors [\d.]+ MiB, tfjs's free-buffer pool/);
    for (const tip of ['--gradient_checkpointing true', '--train_type lora', '--max_length', '--per_device_train_batch_size', '--torch_dtype float16', '--bf16 true', 'TSFT_GPU_MEMORY']) {
      assert.ok(m.includes(tip), `the message should suggest ${tip}: ${m}`);
    }
    // the process goes on: the earlier tensor reads back, new work runs
    const v = await a.data();
    assert.ok(v.every((x) => x === 1.5), 'tensor made before the error changed');
    const b = tf.add(a, 1);
    assert.equal((await b.data())[123], 2.5);
    tf.dispose([a, b]);
  });

  test("tfjs's free pool is dropped before refusing: an allocation that fits only without it succeeds", async (t) => {
    if (skip) return t.skip(skip);
    releasePooledGpuBuffers();
    const keep = tf.fill([4 * MiB], 3); // 16 MiB live
    assert.equal(await last(keep), 3);
    const pooledSize = 8 * MiB; // 32 MiB, then freed into the pool
    const p = tf.fill([pooledSize], 1);
    assert.equal(await last(p), 1);
    p.dispose();
    assert.ok(deviceMemory().pooledBytes >= pooledSize * 4, `pool: ${deviceMemory().pooledBytes}`);
    const left = BUDGET - gpuGuardStats()!.countedBytes; // counted includes the pool
    const n = Math.floor((left + pooledSize * 4) / 4) - 2 * MiB; // fits only once the pool's 32 MiB is free
    assert.ok(n * 4 > left && n !== pooledSize, 'the test must need the pool dropped');
    const drops = gpuGuardStats()!.poolDrops;
    const c = tf.fill([n], 4);
    assert.equal(await last(c), 4);
    assert.equal(gpuGuardStats()!.poolDrops, drops + 1);
    assert.ok(deviceMemory().pooledBytes < pooledSize * 4);
    // the same size again is reused from the pool: no new buffer
    c.dispose();
    const before = created;
    const d = tf.fill([n], 5);
    assert.equal(created, before);
    assert.equal(await last(d), 5);
    assert.equal(await last(keep), 3);
    tf.dispose([keep, d]);
  });

  test("reserveGpuBytes and registered pools: tsft's own allocations are checked and named", (t) => {
    if (skip) return t.skip(skip);
    reserveGpuBytes(MiB, 'scratch for a kernel');
    const unregister = registerGpuPool('f16-weights', () => 40 * MiB);
    try {
      assert.equal(deviceMemory().registeredPoolBytes, 40 * MiB);
      assert.throws(
        () => reserveGpuBytes(BUDGET, 'an f16 copy of lm_head.weight'),
        (e: unknown) => e instanceof DeviceMemoryError && /96\.0 MiB for an f16 copy of lm_head\.weight does not fit/.test(e.message) && /tsft's pools f16-weights 40\.0 MiB/.test(e.message),
      );
    } finally {
      unregister();
    }
  });

  test('checkTrainingFits refuses a run that cannot fit, before it starts', (t) => {
    if (skip) return t.skip(skip);
    const config = resolveConfig({ architectures: ['Qwen3ForCausalLM'], vocab_size: 151936, hidden_size: 1024, intermediate_size: 3072, num_hidden_layers: 28, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 128, tie_word_embeddings: true });
    const o: TrainingMemoryOptions = { config, trainType: 'full', seqLen: 2048, batch: 1, gradientCheckpointing: false, computeDtype: 'float32', optimizer: 'adamw' };
    assert.throws(() => checkTrainingFits(o), (e: unknown) => {
      assert.ok(e instanceof DeviceMemoryError);
      assert.match(e.message, /needs about [\d.]+ GiB of GPU memory but 96\.0 MiB is available \(option\): weights [\d.]+ GiB, gradients/);
      assert.match(e.message, /--gradient_checkpointing true .*--train_type lora.*--torch_dtype float16.*--max_length \(now 2048\)/);
      return true;
    });
    // Qwen3-0.6B's 596 M parameters: f32 weights + gradients + two AdamW moments = 16 bytes each
    const e = checkTrainingFits({ ...o, budgetBytes: 2 ** 50 });
    assert.equal(e.weights + e.grads + e.optimizer - config.vocabSize * config.hiddenSize * 4, 596_049_920 * 16);
  });

  // Estimate vs a real step. The estimate counts what one step keeps live on the fused webgpu path; the
  // real peak (tfjs's bytes in use at any allocation, pool excluded, over two steps) must lie within
  // ESTIMATE_FACTOR of it. The fit came within 0.82–1.24× on 28 shapes (see estimateTrainingBytes) before
  // the tiled linears and the variable-leak fix; checkpointed steps now peak lower (×1.67 over at this
  // shape), not refitted yet — the trainer only warns on the activation part, so an overestimate costs a warning.
  const ESTIMATE_FACTOR = 2;
  test(`the training estimate is within ${ESTIMATE_FACTOR}x of a real step's peak (small Qwen3: full, checkpointed, LoRA)`, async (t) => {
    if (skip) return t.skip(skip);
    setGpuMemoryBudget(undefined);
    try {
      const config = resolveConfig({ architectures: ['Qwen3ForCausalLM'], vocab_size: 4096, hidden_size: 128, intermediate_size: 384, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 64, tie_word_embeddings: true });
      const B = 2, T = 128;
      for (const [trainType, ckpt] of [['full', false], ['full', true], ['lora', false]] as const) {
        releasePooledGpuBuffers();
        const used0 = (tf.memory() as tf.MemoryInfo & { numBytesInGPU: number }).numBytesInGPU;
        resetGpuPeak();
        const model = new Qwen3ForCausalLM(config, 'random', new Random(1));
        let params = model.namedParameters();
        if (trainType === 'lora') {
          prepareLora(model, { r: 8, lora_dropout: 0.05 }, new Random(2));
          params = loraParameters(model);
        }
        model.train();
        model.gradientCheckpointing = ckpt;
        const opt = new AdamW(params, { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 });
        const rng = new Random(3);
        const ids = Array.from({ length: B }, () => Array.from({ length: T }, () => Math.floor(rng.random() * config.vocabSize)));
        const byName = new Map([...params].map(([k, p]) => [p.name, k]));
        for (let s = 0; s < 2; s++) {
          const { value, grads } = tf.variableGrads(() => model.loss(ids, ids).loss, [...params.values()]);
          const gm = new Map(Object.entries(grads).map(([k, v]) => [byName.get(k)!, v]));
          await opt.clipAndStep(gm, 1e-3, 1);
          await value.data();
          tf.dispose([value, ...gm.values()]);
        }
        const real = gpuGuardStats()!.peakLiveBytes - used0;
        const loraParams = trainType === 'lora' ? [...params.values()].reduce((n, p) => n + p.size, 0) : undefined;
        const est = estimateTrainingBytes({ config, trainType, loraParams, seqLen: T, batch: B, gradientCheckpointing: ckpt, computeDtype: 'float32', optimizer: 'adamw' }).total;
        t.diagnostic(`${trainType}, checkpointing ${ckpt}: real peak ${(real / MiB).toFixed(1)} MiB, estimate ${(est / MiB).toFixed(1)} MiB (×${(est / real).toFixed(2)})`);
        assert.ok(est <= real * ESTIMATE_FACTOR && est >= real / ESTIMATE_FACTOR, `${trainType}, checkpointing ${ckpt}: estimate ${est} vs real ${real}`);
        model.dispose();
        tf.dispose([...opt.expAvg.values(), ...opt.expAvgSq.values()]);
        if (trainType === 'lora') tf.dispose([...params.values()]);
      }
    } finally {
      setGpuMemoryBudget(BUDGET);
    }
  });
});

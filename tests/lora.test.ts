// LoRA: adapters attach to the named linears (PEFT's matching), train only A and B, save in PEFT's format
// (key names, shapes, adapter_config fields), reload into a fresh model with identical logits, and merge
// into the base weights with logits equal to base + adapter (1e-5). Runs on wasm (TSFT_TRAIN_DEVICE).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs-core';
import { getModelTokenizer } from '../src/model/loader';
import { readSafetensors } from '../src/model/safetensors';
import { shutdownDevice, type DeviceName } from '../src/backend/device';
import {
  ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, loadAdapter, loraParameters, mergeLora, prepareLora, resolveTargetModules, saveAdapter,
  LoraLinear,
} from '../src/train/lora';
import { saveModel } from '../src/train/checkpoint';
import { ConfigError, CheckpointError } from '../src/errors';
import { Random } from '../src/utils/seed';
import { maxAbsDiff } from './helpers';

const DEVICE = (process.env.TSFT_TRAIN_DEVICE ?? 'wasm') as DeviceName;
const FIXTURE = path.join(process.cwd(), 'tests', 'fixtures', 'models', 'qwen3');
const IDS = [[5, 17, 99, 230, 41, 7, 300, 12, 88, 451, 3, 64]];
let tmp = '';

async function load(dir = FIXTURE) {
  const { model } = await getModelTokenizer(dir, { loadTokenizer: false, device: DEVICE });
  assert.ok(model);
  return model;
}

async function logits(model: Awaited<ReturnType<typeof load>>): Promise<Float32Array> {
  const { logits: l } = model.forward(IDS);
  const d = (await l.data()) as Float32Array;
  l.dispose();
  return d;
}

/** Give every B random values so the adapter changes the output visibly (fresh B is zeros). */
function randomizeB(model: Awaited<ReturnType<typeof load>>, seed = 7): void {
  const rng = new Random(seed);
  for (const a of model.adapters.values()) {
    const b = (a as LoraLinear).B;
    tf.tidy(() => b.assign(tf.tensor(rng.fillNormal(new Float32Array(b.size), 0, 0.05), b.shape)));
  }
}

before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-lora-')); });
after(async () => { fs.rmSync(tmp, { recursive: true, force: true }); await shutdownDevice(); });

describe('LoRA', () => {
  it("targets every linear but lm_head for 'all-linear', PEFT suffix matching for names", async () => {
    const model = await load();
    try {
      const all = resolveTargetModules(model, 'all-linear');
      assert.equal(all.length, 2 * 7);
      assert.ok(all.every((m) => /_proj$/.test(m)) && !all.some((m) => m.includes('lm_head')));
      assert.deepEqual(resolveTargetModules(model, ['q_proj', 'v_proj']),
        ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj']);
      assert.deepEqual(resolveTargetModules(model, ['model.layers.1.mlp.up_proj']), ['model.layers.1.mlp.up_proj']);
      assert.throws(() => resolveTargetModules(model, ['qkv_proj']), (e: Error) => e instanceof ConfigError && /matches no linear layer/.test(e.message));
      assert.throws(() => resolveTargetModules(model, ['lm_head']), ConfigError);
    } finally {
      model.dispose();
    }
  });

  it('a fresh adapter leaves the model unchanged and freezes the base', async () => {
    const model = await load();
    try {
      const before = await logits(model);
      const cfg = prepareLora(model, {}, new Random(1));
      assert.deepEqual([cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules], [8, 32, 0.05, 'all-linear']);
      assert.equal(maxAbsDiff(await logits(model), before), 0);
      assert.ok([...model.namedParameters().values()].every((v) => !v.trainable));
      const lp = loraParameters(model);
      assert.equal(lp.size, 2 * 14);
      assert.ok(lp.has('base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight'));
      // only A and B get gradients
      const { grads } = tf.variableGrads(() => model.loss(IDS, IDS.map((r) => r.map((t, i) => (i < 4 ? -100 : t)))).loss);
      assert.equal(Object.keys(grads).length, 28);
      tf.dispose(Object.values(grads));
    } finally {
      model.dispose();
    }
  });

  it('saves PEFT files that reload into identical logits, and merges to base + adapter within 1e-5', async (t) => {
    const model = await load();
    const dir = path.join(tmp, 'adapter');
    try {
      prepareLora(model, { r: 4, lora_alpha: 16, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] }, new Random(2));
      randomizeB(model);
      const withAdapter = await logits(model);
      await saveAdapter(model, dir);

      // PEFT's format
      const cfg = JSON.parse(fs.readFileSync(path.join(dir, ADAPTER_CONFIG_NAME), 'utf8'));
      assert.equal(cfg.peft_type, 'LORA');
      assert.equal(cfg.task_type, 'CAUSAL_LM');
      assert.deepEqual([cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias, cfg.fan_in_fan_out, cfg.use_rslora, cfg.use_dora],
        [4, 16, 0.05, 'none', false, false, false]);
      assert.deepEqual(cfg.target_modules, ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
      const { tensors, metadata } = await readSafetensors(path.join(dir, ADAPTER_WEIGHTS_NAME));
      assert.equal(metadata.format, 'pt');
      assert.equal(tensors.size, 28);
      assert.deepEqual(tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')!.shape, [4, 64]);
      assert.deepEqual(tensors.get('base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight')!.shape, [64, 4]);
      assert.deepEqual(tensors.get('base_model.model.model.layers.1.mlp.down_proj.lora_A.weight')!.shape, [4, 128]);

      // reload into a fresh base model
      const fresh = await load();
      try {
        const base = await logits(fresh);
        assert.ok(maxAbsDiff(withAdapter, base) > 1e-3, 'the adapter must change the logits for this test to mean anything');
        await loadAdapter(fresh, dir);
        const reloaded = await logits(fresh);
        assert.equal(maxAbsDiff(reloaded, withAdapter), 0);
        mergeLora(fresh);
        assert.equal(fresh.adapters.size, 0);
        const merged = await logits(fresh);
        const d = maxAbsDiff(merged, withAdapter);
        assert.ok(d <= 1e-5, `merged logits differ from base + adapter by ${d}`);
        // a merged model saves as a plain transformers checkpoint that loads back to the same logits
        await saveModel(fresh, path.join(tmp, 'merged'));
        const again = await load(path.join(tmp, 'merged'));
        assert.equal(maxAbsDiff(await logits(again), merged), 0);
        again.dispose();
        t.diagnostic(`merged vs base+adapter: max |Δlogit| ${d.toExponential(2)} (adapter moves logits by ${maxAbsDiff(withAdapter, base).toFixed(3)})`);
      } finally {
        fresh.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it('rejects adapters it cannot apply, with the reason', async () => {
    const model = await load();
    try {
      const bad = path.join(tmp, 'bad');
      fs.mkdirSync(bad, { recursive: true });
      await assert.rejects(loadAdapter(model, bad), (e: Error) => e instanceof CheckpointError && /no adapter_config.json/.test(e.message));
      fs.writeFileSync(path.join(bad, ADAPTER_CONFIG_NAME), JSON.stringify({ peft_type: 'LORA', r: 8, lora_alpha: 16, use_dora: true }));
      await assert.rejects(loadAdapter(model, bad), /use_dora/);
      // an adapter trained on another model: qwen3's q_proj is [128, 64], qwen2's [64, 64]
      const other = path.join(tmp, 'other');
      prepareLora(model, { r: 2, target_modules: ['q_proj'] });
      await saveAdapter(model, other);
      const qwen2 = await load(path.join(process.cwd(), 'tests', 'fixtures', 'models', 'qwen2'));
      try {
        await assert.rejects(loadAdapter(qwen2, other), (e: Error) => e instanceof CheckpointError && /trained on a different base model/.test(e.message));
        assert.equal(qwen2.adapters.size, 0, 'a failed load attaches nothing');
        assert.ok([...qwen2.namedParameters().values()].every((v) => v.trainable), 'and freezes nothing');
      } finally {
        qwen2.dispose();
      }
    } finally {
      model.dispose();
    }
  });
});

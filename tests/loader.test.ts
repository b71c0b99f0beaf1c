// getModelTokenizer: rope styles, model types, the tiny model, and every error a user can hit
// (missing files, shapes that disagree with config.json, unsupported dtypes, truncated files,
// unknown architectures, a hub id with no hub reachable) — each checked by its message.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as net from 'net';
import { getModelTokenizer, inferModelType } from '../src/model/loader';
import { initDevice, shutdownDevice } from '../src/backend/device';
import { getModelParameterInfo } from '../src/utils/params';
import { CheckpointError, ConfigError, HubError } from '../src/errors';
import { maxAbsDiff } from './helpers';

const FIXTURES = path.join(process.cwd(), 'tests', 'fixtures', 'models');
let tmp: string;

/** A copy of a fixture checkpoint in a temp folder, with config.json edited by `edit`. */
function copyFixture(name: string, edit?: (cfg: Record<string, unknown>) => void): string {
  const dir = fs.mkdtempSync(path.join(tmp, `${name}-`));
  for (const f of fs.readdirSync(path.join(FIXTURES, name))) fs.copyFileSync(path.join(FIXTURES, name, f), path.join(dir, f));
  if (edit) {
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    edit(cfg);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  }
  return dir;
}

async function rejects(p: Promise<unknown>, cls: new (...a: never[]) => Error, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.name}: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-loader-'));
  await initDevice('cpu', { quiet: true });
});
after(async () => {
  fs.rmSync(tmp, { recursive: true, force: true });
  await shutdownDevice();
});

describe('getModelTokenizer', () => {
  it('loads a transformers-4 style config (top-level rope_theta) like the transformers-5 one', async () => {
    const dir = copyFixture('qwen2', (c) => {
      c.rope_theta = (c.rope_parameters as { rope_theta: number }).rope_theta;
      delete c.rope_parameters;
      c.torch_dtype = c.dtype;
      delete c.dtype;
    });
    const a = (await getModelTokenizer(path.join(FIXTURES, 'qwen2'), { loadTokenizer: false })).model!;
    const b = (await getModelTokenizer(dir, { loadTokenizer: false })).model!;
    assert.equal(b.config.ropeTheta, 10000);
    const ids = [[5, 17, 300, 42, 7]];
    const la = a.forward(ids).logits, lb = b.forward(ids).logits;
    assert.equal(maxAbsDiff(await la.data(), await lb.data()), 0);
    [la, lb].forEach((t) => t.dispose());
    a.dispose();
    b.dispose();
  });

  it('infers the model type; an explicit one wins; a wrong one is refused', () => {
    const q2 = { architectures: ['Qwen2ForCausalLM'] } as never, q3 = { architectures: ['Qwen3ForCausalLM'] } as never;
    assert.equal(inferModelType(q2, 'Qwen/Qwen2.5-3B-Instruct'), 'qwen2_5');
    assert.equal(inferModelType(q3, 'Qwen/Qwen3-4B-Thinking-2507'), 'qwen3_thinking');
    assert.equal(inferModelType(q3, '/models/qwen3-4b'), 'qwen3');
    assert.equal(inferModelType(q3, '/models/qwen3-4b', 'qwen3_thinking'), 'qwen3_thinking');
    assert.throws(() => inferModelType(q2, 'x', 'qwen3'), /model_type "qwen3" needs a qwen3 checkpoint/);
    assert.throws(() => inferModelType(q3, 'x', 'llama'), /model_type "llama" is not supported; use one of qwen2_5, qwen3, qwen3_thinking/);
  });

  it('sets modelInfo / modelMeta as ms-swift does', async () => {
    const { model } = await getModelTokenizer(path.join(FIXTURES, 'qwen3'), { loadTokenizer: false, modelType: 'qwen3_thinking' });
    assert.equal(model!.modelInfo.modelType, 'qwen3_thinking');
    assert.equal(model!.modelMeta.template, 'qwen3_thinking');
    assert.equal(model!.modelInfo.maxModelLen, 256);
    assert.deepEqual(model!.generationConfig.eos_token_id, 2);
    // 512·64 embed + 2 layers × (q 128·64, k 64·64, v 64·64, o 64·128, norms 32·2, mlp 3·64·128, 2·64) + 64
    const perLayer = 128 * 64 + 64 * 64 * 2 + 64 * 128 + 64 + 3 * 64 * 128 + 128;
    assert.equal(getModelParameterInfo(model!).total, 512 * 64 + 2 * perLayer + 64);
    assert.match(String(getModelParameterInfo(model!)), /^Qwen3ForCausalLM: 0\.1\d+M Params \(0\.1\d+M Trainable \[100\.0000%\]\), 0\.0000M Buffers\.$/);
    model!.dispose();
  });

  it('errors: missing config.json, missing weights, missing tokenizer', async () => {
    const noConfig = copyFixture('qwen3');
    fs.rmSync(path.join(noConfig, 'config.json'));
    await rejects(getModelTokenizer(noConfig, { loadTokenizer: false }), CheckpointError, /config\.json is missing .*the folder has: .*model\.safetensors/);
    const noWeights = copyFixture('qwen3');
    fs.rmSync(path.join(noWeights, 'model.safetensors'));
    await rejects(getModelTokenizer(noWeights, { loadTokenizer: false }), CheckpointError, /no model\.safetensors/);
    await rejects(getModelTokenizer(path.join(FIXTURES, 'qwen3')), CheckpointError, /has no tokenizer\.json/);
    const missingShard = copyFixture('qwen3-sharded');
    fs.rmSync(path.join(missingShard, 'model-00002-of-00004.safetensors'));
    await rejects(getModelTokenizer(missingShard, { loadTokenizer: false }), CheckpointError, /model-00002-of-00004\.safetensors/);
  });

  it('errors: a tensor whose shape disagrees with config.json names the file and tensor', async () => {
    const dir = copyFixture('qwen3', (c) => { c.intermediate_size = 96; });
    await rejects(getModelTokenizer(dir, { loadTokenizer: false }), CheckpointError,
      /model\.safetensors: tensor "model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[128,64\] but config\.json implies \[96,64\]/);
    const sharded = copyFixture('qwen3-sharded', (c) => { c.num_hidden_layers = 3; });
    await rejects(getModelTokenizer(sharded, { loadTokenizer: false }), CheckpointError, /tensor "model\.layers\.2\.self_attn\.q_proj\.weight" is missing/);
  });

  it('errors: a truncated safetensors file', async () => {
    const dir = copyFixture('qwen3');
    const f = path.join(dir, 'model.safetensors');
    fs.truncateSync(f, fs.statSync(f).size - 1000);
    await rejects(getModelTokenizer(dir, { loadTokenizer: false }), CheckpointError, /truncated/i);
  });

  it('errors: an unsupported dtype names the file and tensor', async () => {
    const dir = copyFixture('qwen3');
    const f = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(f);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString());
    // F32 → U32 keeps byte sizes, so only the dtype is wrong
    header['model.norm.weight'].dtype = 'U32';
    let text = JSON.stringify(header);
    text = text.padEnd(n, ' ');
    assert.equal(text.length, n);
    fs.writeFileSync(f, Buffer.concat([buf.subarray(0, 8), Buffer.from(text), buf.subarray(8 + n)]));
    await rejects(getModelTokenizer(dir, { loadTokenizer: false }), CheckpointError, /model\.norm\.weight.*U32|U32.*model\.norm\.weight/);
  });

  it('errors: an unknown architecture', async () => {
    const dir = copyFixture('qwen3', (c) => { c.architectures = ['LlamaForCausalLM']; c.model_type = 'llama'; });
    await rejects(getModelTokenizer(dir, { loadTokenizer: false }), ConfigError, /unsupported architecture LlamaForCausalLM.*Qwen2ForCausalLM, Qwen3ForCausalLM/);
  });

  it('errors: a hub id with the hub unreachable', async () => {
    // a port nothing listens on: take a free one and close it
    const port = await new Promise<number>((res) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => res(p));
      });
    });
    const saved = { ...process.env };
    Object.assign(process.env, {
      MODELSCOPE_ENDPOINT: `http://127.0.0.1:${port}`, HF_ENDPOINT: `http://127.0.0.1:${port}`,
      MODELSCOPE_CACHE: path.join(tmp, 'ms'), HF_HOME: path.join(tmp, 'hf'),
    });
    try {
      await rejects(getModelTokenizer('Qwen/Qwen3-0.6B'), HubError, /Qwen\/Qwen3-0\.6B/);
      await rejects(getModelTokenizer('Qwen/Qwen3-0.6B', { useHf: true }), HubError, new RegExp(`127\\.0\\.0\\.1:${port}`));
    } finally {
      process.env = saved;
    }
  });
});

describe('the tiny default model', () => {
  it('is created once in the cache, with the real Qwen tokenizer, and loads', async () => {
    const saved = process.env.TSFT_CACHE;
    process.env.TSFT_CACHE = path.join(tmp, 'cache');
    try {
      const { model, tokenizer } = await getModelTokenizer('tiny');
      assert.equal(model.config.vocabSize, 151936);
      assert.equal(model.config.modelType, 'qwen3');
      assert.equal(tokenizer.imEndId, 151645);
      const files = fs.readdirSync(model.modelInfo.modelDir!).sort();
      assert.deepEqual(files, ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
      // seeded: a second load reads the same weights
      const again = await getModelTokenizer('tiny');
      const w1 = await model.namedParameters().get('model.layers.0.self_attn.q_proj.weight')!.data();
      const w2 = await again.model.namedParameters().get('model.layers.0.self_attn.q_proj.weight')!.data();
      assert.equal(maxAbsDiff(w1, w2), 0);
      model.dispose();
      again.model.dispose();
    } finally {
      if (saved === undefined) delete process.env.TSFT_CACHE;
      else process.env.TSFT_CACHE = saved;
    }
  });
});

// safetensors reader/writer: round trips in F32/F16/BF16 with the tricky rounding cases, the exact header
// bytes Python writes, transformers-style sharding, and every error a user can hit on a damaged checkpoint.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  readSafetensors, readSafetensorsHeader, writeSafetensors, writeFileAtomic, loadCheckpointTensors,
  saveCheckpointTensors, f32ToHalfBits, halfBitsToF32, parseSizeToInt, TensorInput,
} from '../src/model/safetensors';
import { CheckpointError } from '../src/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-st-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let counter = 0;
const tmpFile = (name = 'model.safetensors') => path.join(tmp, `${counter++}-${name}`);
const tmpDir = () => { const d = path.join(tmp, `dir-${counter++}`); fs.mkdirSync(d); return d; };

const f32 = (xs: number[]) => new Float32Array(xs);
const bitsToF32 = (u: number) => new Float32Array(new Uint32Array([u]).buffer)[0];
const t = (shape: number[], data: Float32Array | number[]): TensorInput =>
  ({ shape, data: data instanceof Float32Array ? data : f32(data) });

/** A file with a hand-written header (padded like the real writer) followed by `data`. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), file = tmpFile()): string {
  let json = Buffer.from(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, Buffer.from(data)]));
  return file;
}

async function rejectsWith(p: Promise<unknown>, ...parts: (string | RegExp)[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `expected CheckpointError, got ${String(e)}`);
    for (const part of parts) {
      if (typeof part === 'string') assert.ok(e.message.includes(part), `"${e.message}" lacks "${part}"`);
      else assert.match(e.message, part);
    }
    return true;
  });
}

function headerOf(file: string): { n: number; json: string } {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { n, json: buf.subarray(8, 8 + n).toString('utf8') };
}

test('F32 round trip is bit-exact and the header is what Python writes', async () => {
  const file = tmpFile();
  const special = f32([0, -0, 1.5, -3.25e-42, 3.4028234663852886e38, Infinity, -Infinity, NaN]);
  const tensors = new Map<string, TensorInput>([
    ['model.norm.weight', t([8], special)],
    ['lm_head.weight', t([2, 3], [1, 2, 3, 4, 5, 6])],
    ['empty', t([0, 4], [])],
  ]);
  await writeSafetensors(file, tensors, { metadata: { format: 'pt' } });
  const { n, json } = headerOf(file);
  assert.equal(n % 8, 0, 'header length is a multiple of 8');
  assert.equal(json.trimEnd(),
    '{"__metadata__":{"format":"pt"},' +
    '"empty":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},' +
    '"lm_head.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},' +
    '"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[24,56]}}');
  assert.match(json, /^[^ ]* *$/, 'padding is spaces only');
  assert.equal(fs.statSync(file).size, 8 + n + 56);

  const back = await readSafetensors(file);
  assert.deepEqual(back.metadata, { format: 'pt' });
  assert.deepEqual([...back.tensors.keys()], ['empty', 'lm_head.weight', 'model.norm.weight']);
  const norm = back.tensors.get('model.norm.weight')!;
  assert.equal(norm.dtype, 'F32');
  assert.deepEqual(norm.shape, [8]);
  assert.deepEqual(new Uint32Array(norm.data.buffer), new Uint32Array(special.buffer));
  assert.deepEqual([...back.tensors.get('lm_head.weight')!.data], [1, 2, 3, 4, 5, 6]);
  assert.equal(back.tensors.get('empty')!.data.length, 0);
  assert.deepEqual(fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.tmp-')), [], 'no temp file left');
});

test('no __metadata__ key without metadata; header-only read', async () => {
  const file = tmpFile();
  await writeSafetensors(file, [['a', t([1], [7])]]);
  assert.equal(headerOf(file).json.trimEnd(), '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}');
  const h = await readSafetensorsHeader(file);
  assert.deepEqual(h.metadata, {});
  assert.deepEqual(h.tensors.get('a'), { dtype: 'F32', shape: [1], dataOffsets: [0, 4] });
  assert.equal(h.dataStart, 8 + h.headerLength);
});

test('F16: representable values exact, round-to-nearest-even at every edge', async () => {
  const cases: [number, number][] = [   // [input, expected f32 value after f16]
    [0, 0], [-0, -0], [1, 1], [-2.5, -2.5], [65504, 65504], [0.333251953125, 0.333251953125],
    [65519.99, 65504],                  // below the halfway point to 65536: stays max finite
    [65520, Infinity],                  // halfway, 0x7bff is odd: rounds to even = Inf
    [1e6, Infinity], [-1e6, -Infinity], [Infinity, Infinity], [-Infinity, -Infinity],
    [1 + 2 ** -11, 1],                  // tie, 1 is even
    [1 + 3 * 2 ** -11, 1 + 2 ** -9],    // tie, rounds up to the even mantissa
    [1 + 2 ** -11 + 2 ** -20, 1 + 2 ** -10],   // just above the tie
    [2 ** -14, 2 ** -14],               // smallest normal
    [2 ** -24, 2 ** -24],               // smallest subnormal
    [5 * 2 ** -24, 5 * 2 ** -24],       // subnormal, exact
    [2 ** -25, 0],                      // tie with zero: even = 0
    [-(2 ** -25), -0],
    [2 ** -25 * 1.0000001, 2 ** -24],   // just above the tie
    [3 * 2 ** -25, 2 ** -23],           // tie between 1 and 2 ulps: even = 2
    [1023.5 * 2 ** -24, 2 ** -14],      // subnormal rounds up into the smallest normal
    [1e-10, 0], [bitsToF32(0x00000001), 0],
  ];
  const input = f32(cases.map((c) => c[0]));
  const file = tmpFile();
  await writeSafetensors(file, [['x', t([cases.length], input)], ['nan', t([2], [NaN, -NaN])]], { dtype: 'F16' });
  const { tensors } = await readSafetensors(file);
  const x = tensors.get('x')!;
  assert.equal(x.dtype, 'F16');
  cases.forEach(([inp, want], i) => assert.ok(Object.is(x.data[i], Math.fround(want)), `f16(${inp}) = ${x.data[i]}, want ${want}`));
  const nan = tensors.get('nan')!.data;
  assert.ok(Number.isNaN(nan[0]) && Number.isNaN(nan[1]));
  const nanBits = new Float32Array(new Uint32Array([0x7fc00000, 0xffc00000, 0x7f800001]).buffer);
  assert.deepEqual([...f32ToHalfBits(nanBits, 'F16')], [0x7e00, 0xfe00, 0x7e00], 'NaN keeps its sign, as torch');
  assert.equal(headerOf(file).n % 8, 0);

  // every f16 pattern survives f16 -> f32 -> f16 unchanged (NaNs aside)
  const all = new Uint16Array(65536).map((_, i) => i);
  const back = f32ToHalfBits(halfBitsToF32(all, 'F16'), 'F16');
  for (let i = 0; i < 65536; i++) {
    const isNaN = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
    if (!isNaN) assert.equal(back[i], i, `f16 pattern 0x${i.toString(16)}`);
  }
});

test('BF16: exact for representable values, ties to even, NaN stays NaN', async () => {
  const cases: [number, number][] = [   // bits in, bf16 bits out
    [0x3f800000, 0x3f80],               // 1
    [0x80000000, 0x8000],               // -0
    [0x40490000, 0x4049],               // 3.140625
    [0x3f808000, 0x3f80],               // tie, even stays
    [0x3f818000, 0x3f82],               // tie, odd rounds up
    [0x3f808001, 0x3f81],               // above the tie
    [0x3f807fff, 0x3f80],               // below the tie
    [0x7f7fffff, 0x7f80],               // max f32 rounds to Inf
    [0x7f800000, 0x7f80], [0xff800000, 0xff80],
    [0x00000001, 0x0000],               // f32 subnormal rounds to zero
    [0x00018000, 0x0002],               // bf16 subnormal tie, odd -> even
  ];
  const input = new Float32Array(new Uint32Array(cases.map((c) => c[0])).buffer);
  const file = tmpFile();
  await writeSafetensors(file, new Map([['x', t([cases.length], input)], ['nan', t([1], [NaN])]]), { dtype: 'BF16' });
  const { tensors } = await readSafetensors(file);
  const got = new Uint32Array(tensors.get('x')!.data.buffer);
  cases.forEach(([inp, want], i) =>
    assert.equal(got[i], (want << 16) >>> 0, `bf16(0x${inp.toString(16)}) = 0x${(got[i] >>> 16).toString(16)}, want 0x${want.toString(16)}`));
  assert.ok(Number.isNaN(tensors.get('nan')!.data[0]));
  assert.deepEqual([...f32ToHalfBits(f32([NaN]), 'BF16')], [0x7fc0]);
});

test('a tensor larger than the conversion chunk round-trips in BF16 and F16', async () => {
  const n = (1 << 22) + 3;
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (i % 1000) - 500;   // integers: exact in bf16 up to 256, f16 up to 2048
  for (const dtype of ['BF16', 'F16'] as const) {
    const file = tmpFile();
    await writeSafetensors(file, [['big', t([n], data)]], { dtype });
    const back = (await readSafetensors(file)).tensors.get('big')!.data;
    const ref = f32ToHalfBits(data, dtype);
    const want = halfBitsToF32(ref, dtype);
    assert.deepEqual(back, want);
    if (dtype === 'F16') assert.deepEqual(back, data);
  }
});

test('I32/I64/F64 read into f32; unsupported and unknown dtypes are refused by name', async () => {
  const i64 = new BigInt64Array([1n, -2n, 16777216n]);
  const i32 = new Int32Array([5, -6]);
  const f64 = new Float64Array([0.5, 1e-300]);
  const data = Buffer.concat([Buffer.from(i64.buffer), Buffer.from(i32.buffer), Buffer.from(f64.buffer)]);
  const file = rawFile({
    ids: { dtype: 'I64', shape: [3], data_offsets: [0, 24] },
    pos: { dtype: 'I32', shape: [2], data_offsets: [24, 32] },
    d: { dtype: 'F64', shape: [2], data_offsets: [32, 48] },
  }, data);
  const { tensors } = await readSafetensors(file);
  assert.deepEqual([...tensors.get('ids')!.data], [1, -2, 16777216]);
  assert.deepEqual([...tensors.get('pos')!.data], [5, -6]);
  assert.deepEqual([...tensors.get('d')!.data], [0.5, 0]);

  const big = rawFile({ ids: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, Buffer.from(new BigInt64Array([16777217n]).buffer));
  await rejectsWith(readSafetensors(big), big, '"ids"', '16777217');

  const fp8 = rawFile({
    'model.layers.0.mlp.down_proj.weight': { dtype: 'F8_E4M3', shape: [2, 2], data_offsets: [0, 4] },
    ok: { dtype: 'F32', shape: [1], data_offsets: [4, 8] },
  }, new Uint8Array(8));
  await rejectsWith(readSafetensors(fp8), fp8, '"model.layers.0.mlp.down_proj.weight"', 'F8_E4M3', 'does not support');
  // the header alone still reads, and a filter can skip the quantised tensor
  assert.equal((await readSafetensorsHeader(fp8)).tensors.get('model.layers.0.mlp.down_proj.weight')!.dtype, 'F8_E4M3');
  assert.deepEqual([...(await readSafetensors(fp8, { filter: (n) => n === 'ok' })).tensors.keys()], ['ok']);

  const u8 = rawFile({ 'q.weight': { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4));
  await rejectsWith(readSafetensors(u8), u8, '"q.weight"', 'U8', 'dequantised');

  const unknown = rawFile({ w: { dtype: 'F7', shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1));
  await rejectsWith(readSafetensors(unknown), unknown, '"w"', '"F7"', 'not a safetensors dtype');
});

test('damaged files: short, header past the end, bad JSON, truncated data, wrong byte length', async () => {
  const short = tmpFile();
  fs.writeFileSync(short, Buffer.from([1, 2, 3, 4, 5]));
  await rejectsWith(readSafetensors(short), short, '5 bytes', 'too short');

  const past = tmpFile();
  const b = Buffer.alloc(20);
  b.writeBigUInt64LE(1000n);
  fs.writeFileSync(past, b);
  await rejectsWith(readSafetensors(past), past, 'header length 1000', 'past the end', '20 bytes');

  const badJson = tmpFile();
  const body = Buffer.from('{"a": {"dtype": "F32", ');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(body.length));
  fs.writeFileSync(badJson, Buffer.concat([len, body]));
  await rejectsWith(readSafetensors(badJson), badJson, 'not valid JSON');

  // truncated: a real file with its last 10 bytes cut off
  const full = tmpFile();
  await writeSafetensors(full, new Map([['a', t([4], [1, 2, 3, 4])], ['b', t([4], [5, 6, 7, 8])]]), { metadata: { format: 'pt' } });
  const bytes = fs.readFileSync(full);
  const cut = tmpFile();
  fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 10));
  await rejectsWith(readSafetensors(cut), cut, 'truncated', `expected ${bytes.length} bytes`, `file has ${bytes.length - 10}`,
    're-download or re-save');
  await rejectsWith(readSafetensorsHeader(cut), 'truncated');
  // cut inside the header
  const cut2 = tmpFile();
  fs.writeFileSync(cut2, bytes.subarray(0, 20));
  await rejectsWith(readSafetensors(cut2), cut2, 'past the end');

  const wrongLen = rawFile({ w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, new Uint8Array(16));
  await rejectsWith(readSafetensors(wrongLen), wrongLen, '"w"', '12 bytes', 'needs 16');

  const badOffsets = rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } }, new Uint8Array(16));
  await rejectsWith(readSafetensors(badOffsets), '"w"', 'data_offsets');

  const notObject = rawFile([1, 2, 3]);
  await rejectsWith(readSafetensors(notObject), 'not a JSON object');

  await rejectsWith(readSafetensors(path.join(tmp, 'nope.safetensors')), 'nope.safetensors', 'no such file');
});

test('writer refuses shape/data mismatches and duplicate names, and never leaves half a file', async () => {
  const file = tmpFile();
  await rejectsWith(writeSafetensors(file, [['w', t([2, 2], [1, 2, 3])]]), '"w"', '[2, 2]', '3 values');
  await rejectsWith(writeSafetensors(file, [['w', t([1], [1])], ['w', t([1], [2])]]), '"w"', 'twice');
  assert.equal(fs.existsSync(file), false);

  // a crash mid-write keeps the previous file intact and cleans the temp file
  await writeSafetensors(file, [['w', t([1], [42])]]);
  const before = fs.readFileSync(file);
  await assert.rejects(writeFileAtomic(file, async (fh) => {
    await fh.write(Buffer.from('half a file'));
    throw new Error('disk on fire');
  }), /disk on fire/);
  assert.deepEqual(fs.readFileSync(file), before);
  assert.deepEqual(fs.readdirSync(path.dirname(file)).filter((f) => f.includes('.tmp-')), []);
});

test('checkpoint folder: single file under the limit, transformers shards over it', async () => {
  const tensors = new Map<string, TensorInput>([
    ['model.embed_tokens.weight', t([10, 10], Array.from({ length: 100 }, (_, i) => i / 8))],   // 200 B in bf16
    ['model.layers.0.mlp.up_proj.weight', t([300], Array.from({ length: 300 }, (_, i) => -i))], // 600 B: alone
    ['model.layers.0.input_layernorm.weight', t([50], new Array(50).fill(1))],                // 100 B
    ['model.norm.weight', t([60], new Array(60).fill(0.5))],                                   // 120 B
    ['lm_head.weight', t([100], new Array(100).fill(2))],                                      // 200 B
  ]);
  const dir = tmpDir();
  // one shard when everything fits
  const single = await saveCheckpointTensors(dir, tensors, { dtype: 'BF16' });
  assert.deepEqual(single, [path.join(dir, 'model.safetensors')]);
  assert.deepEqual((await readSafetensors(single[0])).metadata, { format: 'pt' });

  // 400-byte shards: [embed 200 + ...], the 600-byte tensor alone, in huggingface_hub's order
  const files = await saveCheckpointTensors(dir, tensors, { dtype: 'BF16', maxShardSize: 400 });
  assert.deepEqual(fs.readdirSync(dir).sort(), [
    'model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors',
    'model.safetensors.index.json',
  ], 'the earlier model.safetensors was removed');
  assert.equal(files.length, 4);
  const indexText = fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8');
  assert.equal(indexText, [
    '{',
    '  "metadata": {',
    '    "total_parameters": 610,',
    '    "total_size": 1220',
    '  },',
    '  "weight_map": {',
    '    "lm_head.weight": "model-00003-of-00003.safetensors",',
    '    "model.embed_tokens.weight": "model-00002-of-00003.safetensors",',
    '    "model.layers.0.input_layernorm.weight": "model-00002-of-00003.safetensors",',
    '    "model.layers.0.mlp.up_proj.weight": "model-00001-of-00003.safetensors",',
    '    "model.norm.weight": "model-00003-of-00003.safetensors"',
    '  }',
    '}',
    '',
  ].join('\n'));
  for (const f of files.filter((f) => f.endsWith('.safetensors'))) {
    assert.equal(headerOf(f).n % 8, 0);
    assert.deepEqual((await readSafetensors(f)).metadata, { format: 'pt' });
  }
  const back = await loadCheckpointTensors(dir);
  assert.equal(back.size, tensors.size);
  for (const [name, want] of tensors) {
    const got = back.get(name)!;
    assert.equal(got.dtype, 'BF16');
    assert.deepEqual(got.shape, want.shape);
    assert.deepEqual(got.data, halfBitsToF32(f32ToHalfBits(want.data, 'BF16'), 'BF16'), name);
  }

  // saving unsharded again removes the index and the shards
  await saveCheckpointTensors(dir, tensors, { dtype: 'F32', maxShardSize: '1GB' });
  assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
  const f32back = await loadCheckpointTensors(dir);
  for (const [name, want] of tensors) assert.deepEqual(f32back.get(name)!.data, want.data);
});

test('checkpoint folder errors: no safetensors, missing shard, tensor missing from its shard', async () => {
  const empty = tmpDir();
  fs.writeFileSync(path.join(empty, 'config.json'), '{}');
  fs.writeFileSync(path.join(empty, 'pytorch_model.bin'), 'pickle');
  await rejectsWith(loadCheckpointTensors(empty), empty, 'config.json, pytorch_model.bin', 'not supported',
    'save_pretrained');
  await rejectsWith(loadCheckpointTensors(path.join(tmp, 'missing-dir')), 'no such folder');

  const dir = tmpDir();
  const tensors = new Map([['a', t([100], new Array(100).fill(1))], ['b', t([100], new Array(100).fill(2))]]);
  await saveCheckpointTensors(dir, tensors, { maxShardSize: 400 });
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  index.weight_map['c'] = 'model-00001-of-00002.safetensors';
  fs.writeFileSync(indexFile, JSON.stringify(index));
  await rejectsWith(loadCheckpointTensors(dir), '"c"', 'model-00001-of-00002.safetensors', 'does not contain it');

  fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
  await rejectsWith(loadCheckpointTensors(dir), 'model-00002-of-00002.safetensors', 'missing', 'incomplete');

  fs.writeFileSync(indexFile, '{"weight_map": ');
  await rejectsWith(loadCheckpointTensors(dir), indexFile, 'not a valid safetensors index');
});

test('parseSizeToInt follows huggingface_hub units', () => {
  assert.equal(parseSizeToInt('5GB'), 5e9);
  assert.equal(parseSizeToInt('500MB'), 5e8);
  assert.equal(parseSizeToInt('2GiB'), 2 * 2 ** 30);
  assert.equal(parseSizeToInt(1234), 1234);
  assert.throws(() => parseSizeToInt('lots'), CheckpointError);
});

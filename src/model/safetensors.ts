// safetensors reader/writer and the transformers checkpoint layout on top of it (`model.safetensors`, or
// `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`). Format, per
// https://github.com/huggingface/safetensors: u64 little-endian header length N, N bytes of JSON
// (`{"__metadata__": {..}, "name": {"dtype", "shape", "data_offsets": [begin, end]}}`, padded with spaces
// to a multiple of 8), then the raw little-endian tensor bytes. In memory every tensor is a Float32Array:
// F32/F16/BF16 (and F64, I32, I64 when exact) are read; quantised dtypes are refused.
//
// Reading goes tensor by tensor straight into freshly allocated (so aligned) typed arrays: F32 lands in
// its final Float32Array with no copy, F16/BF16 go through one reusable scratch buffer. Files of many GiB
// never need one buffer of the file's size (V8 caps a typed array at 4 GiB anyway).

import * as fs from 'fs';
import * as fsp from 'fs/promises';
import * as path from 'path';
import { CheckpointError } from '../errors';

/** Every dtype the safetensors spec names (Rust `safetensors::Dtype`). */
export type SafetensorsDtype =
  | 'BOOL' | 'F4' | 'F6_E2M3' | 'F6_E3M2' | 'U8' | 'I8' | 'F8_E5M2' | 'F8_E4M3' | 'F8_E8M0'
  | 'F8_E4M3FNUZ' | 'F8_E5M2FNUZ' | 'I16' | 'U16' | 'F16' | 'BF16' | 'I32' | 'U32' | 'F32' | 'C64'
  | 'F64' | 'I64' | 'U64';

/** dtypes tsft writes. */
export type SafetensorsWriteDtype = 'F32' | 'F16' | 'BF16';

/** A tensor in memory: its dtype on disk, its shape, its values as f32. */
export interface TensorRecord {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array;
}

/** What a caller hands the writers: a shape and f32 values (row-major). */
export interface TensorInput {
  shape: number[];
  data: Float32Array;
}

/** One header entry. `dataOffsets` are relative to the start of the data section, as in the file. */
export interface TensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  dataOffsets: [number, number];
}

/** The parsed header of a safetensors file (no tensor data read). */
export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;   // in file order (by data offset)
  metadata: Record<string, string>;   // `__metadata__`, {} when absent
  headerLength: number;               // N, the JSON length including padding
  dataStart: number;                  // 8 + N: file offset of the data section
  fileSize: number;
}

// bit size of one element, in the spec's order (increasing alignment)
const DTYPE_BITS: Record<SafetensorsDtype, number> = {
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
  F8_E4M3FNUZ: 8, F8_E5M2FNUZ: 8, I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32,
  C64: 64, F64: 64, I64: 64, U64: 64,
};
const DTYPE_ORDER = Object.keys(DTYPE_BITS) as SafetensorsDtype[];
const READABLE: SafetensorsDtype[] = ['F32', 'F16', 'BF16', 'F64', 'I32', 'I64'];

const N_LEN = 8;                        // bytes of the header-length prefix
const MAX_HEADER_SIZE = 100_000_000;    // the Rust reader refuses larger headers
const IO_CHUNK = 1 << 30;               // fs.read takes < 2 GiB per call
const CONVERT_CHUNK = 1 << 22;          // elements converted per scratch write (16 MiB of f32)

export const SAFE_WEIGHTS_NAME = 'model.safetensors';
export const SAFE_WEIGHTS_INDEX_NAME = 'model.safetensors.index.json';

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // typed-array views below assume the file's little-endian layout is the host's
  throw new CheckpointError('safetensors.ts needs a little-endian host (x86-64, arm64); this one is big-endian.');
}

// ---------------------------------------------------------------------------------------------------
// f16 / bf16 <-> f32 conversion
// ---------------------------------------------------------------------------------------------------

let f16Table: Float32Array | undefined;

/** f16 bits -> f32 value for all 65536 patterns (built once, 256 KiB). */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  const u = new Uint32Array(t.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0x1f) u[h] = sign | 0x7f800000 | (mant << 13);     // Inf / NaN (payload kept)
    else if (exp !== 0) u[h] = sign | ((exp + 112) << 23) | (mant << 13);
    else t[h] = (sign ? -1 : 1) * mant * 2 ** -24;                 // zero / subnormal (exact in f32)
  }
  f16Table = t;
  return t;
}

/** f32 bits -> f16 bits, round to nearest even; NaN -> sign|0x7e00 (as torch/c10 does). */
function f32BitsToF16(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00);
  const e = exp - 112;                                             // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;                             // overflow -> Inf
  if (e <= 0) {                                                    // f16 subnormal (or zero)
    if (e < -10) return sign;                                      // below half the smallest subnormal
    const m = mant | 0x800000;
    const shift = 14 - e;                                          // 14..24
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) !== 0)) h++;        // may carry into the smallest normal
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++;     // carry may reach Inf: correct
  return sign | h;
}

/** f32 bits -> bf16 bits, round to nearest even; NaN -> 0x7fc0 (as torch/c10 does). */
function f32BitsToBf16(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
}

/** Converts f32 values to f16 or bf16 bits (exported for tests and for kernels that pack f16). */
export function f32ToHalfBits(src: Float32Array, dtype: 'F16' | 'BF16', out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  if (dtype === 'BF16') for (let i = 0; i < u.length; i++) out[i] = f32BitsToBf16(u[i]);
  else for (let i = 0; i < u.length; i++) out[i] = f32BitsToF16(u[i]);
  return out;
}

/** Converts f16 or bf16 bits to f32 values. */
export function halfBitsToF32(src: Uint16Array, dtype: 'F16' | 'BF16', out: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dtype === 'BF16') {
    const o = new Uint32Array(out.buffer, out.byteOffset, src.length);
    for (let i = 0; i < src.length; i++) o[i] = src[i] << 16;       // bf16 is the high half of an f32
  } else {
    const t = f16ToF32Table();
    for (let i = 0; i < src.length; i++) out[i] = t[src[i]];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// reading
// ---------------------------------------------------------------------------------------------------

const REDOWNLOAD = 're-download it (or re-save it from the tool that wrote it)';

function numel(shape: number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

async function readFully(fh: fsp.FileHandle, dst: Uint8Array, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < dst.length) {
    const len = Math.min(IO_CHUNK, dst.length - done);
    const { bytesRead } = await fh.read(dst, done, len, position + done);
    if (bytesRead === 0) {
      throw new CheckpointError(`${file}: unexpected end of file at byte ${position + done} — ${REDOWNLOAD}.`);
    }
    done += bytesRead;
  }
}

function parseHeader(file: string, json: string, headerLength: number, fileSize: number): SafetensorsHeader {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw new CheckpointError(
      `${file}: the safetensors header is not valid JSON (${(e as Error).message}). The file is damaged or is ` +
      `not a safetensors file — ${REDOWNLOAD}.`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new CheckpointError(`${file}: the safetensors header is not a JSON object — ${REDOWNLOAD}.`);
  }
  const dataStart = N_LEN + headerLength;
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const entries: [string, TensorInfo][] = [];
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) {
        throw new CheckpointError(`${file}: "__metadata__" must be an object of strings.`);
      }
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== 'string') throw new CheckpointError(`${file}: "__metadata__.${k}" is not a string.`);
        metadata[k] = s;
      }
      continue;
    }
    const info = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    const bad = (what: string) => new CheckpointError(`${file}: tensor "${name}": ${what} — ${REDOWNLOAD}.`);
    if (info === null || typeof info !== 'object') throw bad('header entry is not an object');
    if (typeof info.dtype !== 'string') throw bad('missing "dtype"');
    if (!(info.dtype in DTYPE_BITS)) {
      throw new CheckpointError(
        `${file}: tensor "${name}" has dtype "${info.dtype}", which is not a safetensors dtype ` +
        `(${DTYPE_ORDER.join(', ')}). The file was written by a newer or non-standard tool.`);
    }
    const shape = info.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw bad('"shape" is not a list of non-negative integers');
    }
    const off = info.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[1] < off[0]) {
      throw bad('"data_offsets" is not [begin, end] with 0 <= begin <= end');
    }
    const dtype = info.dtype as SafetensorsDtype;
    const nbits = numel(shape as number[]) * DTYPE_BITS[dtype];
    if (nbits % 8 !== 0) throw bad(`${numel(shape as number[])} elements of ${dtype} do not fill whole bytes`);
    if (off[1] > dataSize) {
      throw new CheckpointError(
        `${file} is truncated: expected ${dataStart + off[1]} bytes (tensor "${name}" ends there), ` +
        `file has ${fileSize} — re-download or re-save.`);
    }
    if (off[1] - off[0] !== nbits / 8) {
      throw bad(`holds ${off[1] - off[0]} bytes but shape [${shape.join(', ')}] of ${dtype} needs ${nbits / 8}`);
    }
    entries.push([name, { dtype, shape: shape.slice() as number[], dataOffsets: [off[0], off[1]] }]);
  }
  entries.sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0]);
  return { tensors: new Map(entries), metadata, headerLength, dataStart, fileSize };
}

async function readHeaderFrom(fh: fsp.FileHandle, file: string): Promise<SafetensorsHeader> {
  const { size: fileSize } = await fh.stat();
  if (fileSize < N_LEN) {
    throw new CheckpointError(
      `${file} is ${fileSize} bytes: too short to be a safetensors file (it starts with an 8-byte header ` +
      `length) — ${REDOWNLOAD}.`);
  }
  const prefix = new Uint8Array(N_LEN);
  await readFully(fh, prefix, 0, file);
  const n = Buffer.from(prefix.buffer).readBigUInt64LE(0);
  if (n > BigInt(fileSize - N_LEN)) {
    throw new CheckpointError(
      `${file}: header length ${n} runs past the end of the file (${fileSize} bytes): the file is truncated or ` +
      `not a safetensors file — ${REDOWNLOAD}.`);
  }
  if (n > BigInt(MAX_HEADER_SIZE)) {
    throw new CheckpointError(`${file}: header length ${n} exceeds the ${MAX_HEADER_SIZE}-byte limit of the safetensors format.`);
  }
  const headerLength = Number(n);
  const bytes = new Uint8Array(headerLength);
  await readFully(fh, bytes, N_LEN, file);
  let json: string;
  try {
    json = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new CheckpointError(`${file}: the safetensors header is not valid UTF-8 — ${REDOWNLOAD}.`);
  }
  return parseHeader(file, json, headerLength, fileSize);
}

/**
 * Reads only the header of a safetensors file: names, dtypes, shapes, offsets and `__metadata__`.
 * Validates the structure (lengths, JSON, offsets within the file, byte sizes) but not whether tsft can
 * convert each dtype.
 * @example
 *   const { tensors } = await readSafetensorsHeader('ckpt/model.safetensors');
 *   tensors.get('model.embed_tokens.weight')?.shape;   // [151936, 1024]
 */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const fh = await openForRead(file);
  try {
    return await readHeaderFrom(fh, file);
  } finally {
    await fh.close();
  }
}

async function openForRead(file: string): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(file, 'r');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw new CheckpointError(`${file}: no such file.`);
    if (err.code === 'EISDIR') throw new CheckpointError(`${file} is a folder; pass the .safetensors file inside it.`);
    throw new CheckpointError(`${file}: cannot open (${err.message}).`);
  }
}

function unsupportedDtype(file: string, name: string, dtype: string): CheckpointError {
  return new CheckpointError(
    `${file}: tensor "${name}" has dtype ${dtype}, which tsft does not support (it reads ${READABLE.join(', ')}). ` +
    `Quantised checkpoints (FP8, int8/int4 packed in U8/I8, ...) must be dequantised first: load the model in ` +
    `transformers and save_pretrained() it in bfloat16, or download the non-quantised repo.`);
}

/** Converts one tensor's raw bytes (aligned, little-endian) to f32. */
function bytesToF32(file: string, name: string, dtype: SafetensorsDtype, raw: Uint8Array, n: number, out: Float32Array): void {
  switch (dtype) {
    case 'F16':
    case 'BF16':
      halfBitsToF32(new Uint16Array(raw.buffer, raw.byteOffset, n), dtype, out);
      return;
    case 'F64': {
      const s = new Float64Array(raw.buffer, raw.byteOffset, n);
      for (let i = 0; i < n; i++) out[i] = s[i];
      return;
    }
    case 'I32':
    case 'I64': {
      const s = dtype === 'I32' ? new Int32Array(raw.buffer, raw.byteOffset, n) : new BigInt64Array(raw.buffer, raw.byteOffset, n);
      for (let i = 0; i < n; i++) {
        const v = Number(s[i]);
        if (Math.abs(v) > 16777216) {
          throw new CheckpointError(
            `${file}: tensor "${name}" (${dtype}) holds ${s[i]} at index ${i}, which f32 cannot represent exactly; ` +
            `tsft keeps every tensor as f32 and refuses to round integers.`);
        }
        out[i] = v;
      }
      return;
    }
    default:
      throw unsupportedDtype(file, name, dtype);
  }
}

/**
 * Reads a safetensors file into f32 tensors.
 * @param opts.filter  read only the tensors whose name passes (the rest are skipped, not read)
 * @example
 *   const { tensors, metadata } = await readSafetensors('ckpt/model.safetensors');
 *   const w = tensors.get('lm_head.weight')!;   // { dtype: 'BF16', shape: [V, H], data: Float32Array }
 */
export async function readSafetensors(
  file: string,
  opts: { filter?: (name: string) => boolean } = {},
): Promise<{ tensors: Map<string, TensorRecord>; metadata: Record<string, string> }> {
  const fh = await openForRead(file);
  try {
    const header = await readHeaderFrom(fh, file);
    const wanted = [...header.tensors].filter(([name]) => !opts.filter || opts.filter(name));
    // refuse unsupported dtypes before reading anything
    let scratchBytes = 0;
    for (const [name, info] of wanted) {
      if (!READABLE.includes(info.dtype)) throw unsupportedDtype(file, name, info.dtype);
      if (numel(info.shape) * 4 > 2 ** 32 - 1) {
        throw new CheckpointError(
          `${file}: tensor "${name}" [${info.shape.join(', ')}] is over 4 GiB as f32, the largest array V8 allocates.`);
      }
      if (info.dtype !== 'F32') scratchBytes = Math.max(scratchBytes, info.dataOffsets[1] - info.dataOffsets[0]);
    }
    const scratch = new Uint8Array(scratchBytes);   // offset 0 of its own ArrayBuffer: aligned for any view
    const tensors = new Map<string, TensorRecord>();
    for (const [name, info] of wanted) {
      const n = numel(info.shape);
      const [begin, end] = info.dataOffsets;
      const data = new Float32Array(n);
      if (info.dtype === 'F32') {
        await readFully(fh, new Uint8Array(data.buffer), header.dataStart + begin, file);   // no copy
      } else {
        const raw = scratch.subarray(0, end - begin);
        await readFully(fh, raw, header.dataStart + begin, file);
        bytesToF32(file, name, info.dtype, raw, n, data);
      }
      tensors.set(name, { dtype: info.dtype, shape: info.shape, data });
    }
    return { tensors, metadata: header.metadata };
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------------
// writing
// ---------------------------------------------------------------------------------------------------

export interface WriteSafetensorsOptions {
  dtype?: SafetensorsWriteDtype;        // on-disk dtype of every tensor (default F32)
  metadata?: Record<string, string>;    // `__metadata__`; omitted from the header when undefined
}

function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));   // Rust String order
}

function collectTensors(file: string, tensors: Map<string, TensorInput> | Iterable<[string, TensorInput]>): [string, TensorInput][] {
  const list: [string, TensorInput][] = [];
  const seen = new Set<string>();
  for (const [name, t] of tensors) {
    if (seen.has(name)) throw new CheckpointError(`${file}: tensor "${name}" is given twice.`);
    seen.add(name);
    if (!(t.data instanceof Float32Array)) throw new CheckpointError(`${file}: tensor "${name}": data must be a Float32Array.`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new CheckpointError(`${file}: tensor "${name}": shape must be a list of non-negative integers.`);
    }
    if (numel(t.shape) !== t.data.length) {
      throw new CheckpointError(
        `${file}: tensor "${name}" has shape [${t.shape.join(', ')}] (${numel(t.shape)} elements) but ` +
        `${t.data.length} values.`);
    }
    list.push([name, t]);
  }
  return list;
}

/** The exact header bytes the Python/Rust writer produces for these tensors (sorted, padded to 8). */
function buildHeader(list: [string, TensorInput][], dtype: SafetensorsWriteDtype, metadata?: Record<string, string>): Uint8Array {
  const item = DTYPE_BITS[dtype] / 8;
  const parts: string[] = [];
  if (metadata !== undefined) {
    const sorted: Record<string, string> = {};
    for (const k of Object.keys(metadata).sort(compareUtf8)) sorted[k] = String(metadata[k]);
    parts.push(`"__metadata__":${JSON.stringify(sorted)}`);
  }
  let offset = 0;
  for (const [name, t] of list) {
    const n = t.data.length * item;
    parts.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype, shape: t.shape, data_offsets: [offset, offset + n] })}`);
    offset += n;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const out = Buffer.alloc(N_LEN + padded, 0x20);   // spaces, as the Rust writer pads
  out.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(out, N_LEN);
  return out;
}

async function writeAll(fh: fsp.FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const len = Math.min(IO_CHUNK, bytes.length - done);
    const { bytesWritten } = await fh.write(bytes, done, len);
    done += bytesWritten;
  }
}

/**
 * Writes `file` atomically: everything goes to `<file>.tmp-<pid>`, which is synced and renamed over
 * `file` only when complete. A crash leaves the old file (or none), never half a file.
 */
export async function writeFileAtomic(file: string, write: (fh: fsp.FileHandle) => Promise<void>): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await fsp.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  const fh = await fsp.open(tmp, 'w');
  try {
    await write(fh);
    await fh.sync();
    await fh.close();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  try {
    await fsp.rename(tmp, file);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw new CheckpointError(`${file}: cannot move the finished ${tmp} into place (${(e as Error).message}).`);
  }
}

/**
 * Writes tensors to a safetensors file exactly as Python `safetensors` does: header sorted by dtype
 * then name, compact JSON, space-padded to a multiple of 8; f16/bf16 rounded to nearest even.
 * Atomic (see {@link writeFileAtomic}).
 * @example
 *   await writeSafetensors('out/model.safetensors', new Map([['w', { shape: [2, 2], data }]]),
 *     { dtype: 'BF16', metadata: { format: 'pt' } });
 */
export async function writeSafetensors(
  file: string,
  tensors: Map<string, TensorInput> | Iterable<[string, TensorInput]>,
  opts: WriteSafetensorsOptions = {},
): Promise<void> {
  const dtype = opts.dtype ?? 'F32';
  if (!['F32', 'F16', 'BF16'].includes(dtype)) {
    throw new CheckpointError(`${file}: cannot write dtype ${dtype}; use F32, F16 or BF16.`);
  }
  const list = collectTensors(file, tensors).sort((a, b) => compareUtf8(a[0], b[0]));   // one dtype: name order
  const header = buildHeader(list, dtype, opts.metadata);
  await writeFileAtomic(file, async (fh) => {
    await writeAll(fh, header);
    const scratch = dtype === 'F32' ? undefined : new Uint16Array(CONVERT_CHUNK);
    for (const [, t] of list) {
      if (!scratch) {
        await writeAll(fh, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
        continue;
      }
      for (let i = 0; i < t.data.length; i += CONVERT_CHUNK) {
        const src = t.data.subarray(i, Math.min(i + CONVERT_CHUNK, t.data.length));
        const bits = f32ToHalfBits(src, dtype as 'F16' | 'BF16', scratch.subarray(0, src.length));
        await writeAll(fh, new Uint8Array(bits.buffer, 0, bits.length * 2));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// checkpoint folders (transformers layout)
// ---------------------------------------------------------------------------------------------------

function describeFolder(dir: string): string {
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).sort();
  } catch {
    return '(cannot list it)';
  }
  if (names.length === 0) return '(it is empty)';
  const shown = names.slice(0, 20).join(', ');
  return `it contains: ${shown}${names.length > 20 ? `, … (${names.length} entries)` : ''}`;
}

/**
 * Loads every tensor of a transformers checkpoint folder: `model.safetensors`, or the shards that
 * `model.safetensors.index.json` lists in its `weight_map`.
 * @example
 *   const weights = await loadCheckpointTensors(await resolveLocalOrHub('Qwen/Qwen3-0.6B'));
 */
export async function loadCheckpointTensors(dir: string): Promise<Map<string, TensorRecord>> {
  let st: fs.Stats;
  try {
    st = await fsp.stat(dir);
  } catch {
    throw new CheckpointError(`${dir}: no such folder. Pass a checkpoint folder (with config.json and model.safetensors).`);
  }
  if (!st.isDirectory()) {
    throw new CheckpointError(`${dir} is a file; pass the checkpoint folder that contains it (or use readSafetensors).`);
  }
  const single = path.join(dir, SAFE_WEIGHTS_NAME);
  const indexFile = path.join(dir, SAFE_WEIGHTS_INDEX_NAME);
  if (fs.existsSync(single)) return (await readSafetensors(single)).tensors;
  if (!fs.existsSync(indexFile)) {
    throw new CheckpointError(
      `${dir}: no ${SAFE_WEIGHTS_NAME} or ${SAFE_WEIGHTS_INDEX_NAME}; ${describeFolder(dir)}. tsft reads only ` +
      `safetensors: PyTorch pickles (pytorch_model.bin, *.pt) are not supported. Convert in Python with ` +
      `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out_dir) (transformers writes safetensors by ` +
      `default), or download the repo's safetensors revision.`);
  }
  let weightMap: Record<string, unknown>;
  try {
    const index = JSON.parse(await fsp.readFile(indexFile, 'utf8')) as { weight_map?: unknown };
    if (!index.weight_map || typeof index.weight_map !== 'object') throw new Error('no "weight_map" object');
    weightMap = index.weight_map as Record<string, unknown>;
  } catch (e) {
    throw new CheckpointError(`${indexFile}: not a valid safetensors index (${(e as Error).message}) — ${REDOWNLOAD}.`);
  }
  const byShard = new Map<string, Set<string>>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
      throw new CheckpointError(`${indexFile}: weight_map["${name}"] is not a file name in the same folder.`);
    }
    if (!byShard.has(shard)) byShard.set(shard, new Set());
    byShard.get(shard)!.add(name);
  }
  for (const shard of byShard.keys()) {
    if (!fs.existsSync(path.join(dir, shard))) {
      throw new CheckpointError(
        `${indexFile} names the shard ${shard}, which is missing from ${dir}: the download is incomplete — ` +
        `download the missing file (or the whole repo again).`);
    }
  }
  const out = new Map<string, TensorRecord>();
  for (const [shard, names] of byShard) {
    const file = path.join(dir, shard);
    const { tensors } = await readSafetensors(file, { filter: (n) => names.has(n) });
    for (const name of names) {
      const t = tensors.get(name);
      if (!t) {
        throw new CheckpointError(
          `tensor "${name}" is listed in ${indexFile} under ${shard}, but ${file} does not contain it: the index ` +
          `and shards come from different saves — download them again together.`);
      }
      out.set(name, t);
    }
  }
  return out;
}

const SIZE_UNITS: Record<string, number> = {
  TB: 1e12, GB: 1e9, MB: 1e6, KB: 1e3, TIB: 2 ** 40, GIB: 2 ** 30, MIB: 2 ** 20, KIB: 2 ** 10, B: 1,
};

/** `"5GB"` -> 5e9 (decimal units as huggingface_hub; `GiB`/`MiB`/`KiB` binary). Numbers pass through. */
export function parseSizeToInt(size: number | string): number {
  if (typeof size === 'number') {
    if (!(size > 0)) throw new CheckpointError(`max shard size must be positive, got ${size}.`);
    return Math.floor(size);
  }
  const m = /^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$/.exec(size);
  const unit = m ? (m[2] || 'B').toUpperCase() : '';
  if (!m || !(unit in SIZE_UNITS)) {
    throw new CheckpointError(`max shard size "${size}" is not a size like "5GB", "500MB" or a number of bytes.`);
  }
  return Math.floor(parseFloat(m[1]) * SIZE_UNITS[unit]);
}

export interface SaveCheckpointOptions {
  dtype?: SafetensorsWriteDtype;        // default F32
  maxShardSize?: number | string;       // bytes or "5GB" (the transformers default)
}

/** Python's json.dumps(obj, indent=2, sort_keys=True) + "\n" for the index (ASCII-escaped, sorted). */
function pythonJson(obj: unknown): string {
  const sortDeep = (v: unknown): unknown => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return v;
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v as object).sort()) o[k] = sortDeep((v as Record<string, unknown>)[k]);
    return o;
  };
  return JSON.stringify(sortDeep(obj), null, 2)
    .replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) + '\n';
}

/**
 * Saves tensors as transformers' `save_pretrained` does: one `model.safetensors` when everything fits in
 * `maxShardSize`, else `model-00001-of-0000N.safetensors` shards (filled in the given order, a tensor
 * larger than the limit alone in its shard) plus `model.safetensors.index.json`. Each file is written
 * atomically with `__metadata__ = { format: 'pt' }`; weight files of an earlier save that the new one
 * does not replace are removed afterwards. Returns the paths written.
 * @example
 *   await saveCheckpointTensors('output/ckpt', namedWeights, { dtype: 'BF16', maxShardSize: '2GB' });
 */
export async function saveCheckpointTensors(
  dir: string,
  tensors: Map<string, TensorInput> | Iterable<[string, TensorInput]>,
  opts: SaveCheckpointOptions = {},
): Promise<string[]> {
  const dtype = opts.dtype ?? 'F32';
  const maxShard = parseSizeToInt(opts.maxShardSize ?? '5GB');
  const list = collectTensors(path.join(dir, SAFE_WEIGHTS_NAME), tensors);
  const item = DTYPE_BITS[dtype] / 8;
  // huggingface_hub split_state_dict_into_shards_factory
  const shards: [string, TensorInput][][] = [];
  let current: [string, TensorInput][] = [];
  let currentSize = 0;
  let totalSize = 0;
  let totalParameters = 0;
  for (const entry of list) {
    const size = entry[1].data.length * item;
    totalSize += size;
    totalParameters += entry[1].data.length;
    if (size > maxShard) {
      shards.push([entry]);
      continue;
    }
    if (currentSize + size > maxShard) {
      shards.push(current);
      current = [];
      currentSize = 0;
    }
    current.push(entry);
    currentSize += size;
  }
  if (current.length > 0 || shards.length === 0) shards.push(current);   // no tensors: one empty file

  await fsp.mkdir(dir, { recursive: true });
  const written: string[] = [];
  const n = shards.length;
  const names = n === 1
    ? [SAFE_WEIGHTS_NAME]
    : shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`);
  for (let i = 0; i < n; i++) {
    const file = path.join(dir, names[i]);
    await writeSafetensors(file, shards[i], { dtype, metadata: { format: 'pt' } });
    written.push(file);
  }
  if (n > 1) {
    const weightMap: Record<string, string> = {};
    shards.forEach((s, i) => s.forEach(([name]) => { weightMap[name] = names[i]; }));
    const index = { metadata: { total_parameters: totalParameters, total_size: totalSize }, weight_map: weightMap };
    const file = path.join(dir, SAFE_WEIGHTS_INDEX_NAME);
    await writeFileAtomic(file, (fh) => writeAll(fh, Buffer.from(pythonJson(index), 'utf8')));
    written.push(file);
  }
  // remove weight files of an earlier save that this one did not overwrite (as save_pretrained does)
  const keep = new Set(written.map((f) => path.basename(f)));
  for (const name of await fsp.readdir(dir)) {
    const stale = name === SAFE_WEIGHTS_NAME || name === SAFE_WEIGHTS_INDEX_NAME ||
      /^model-\d{5}-of-\d{5}\.safetensors$/.test(name);
    if (stale && !keep.has(name)) await fsp.rm(path.join(dir, name), { force: true });
  }
  return written;
}

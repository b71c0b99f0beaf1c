// TensorBoard event files without TensorFlow: TFRecord framing (length, masked CRC-32C of the length,
// payload, masked CRC-32C of the payload) around protobuf `Event` messages, encoded with protobufjs from
// the fields of tensorflow/core/util/event.proto and framework/summary.proto that scalars and text use.
// File names and the first record (`file_version: "brain.Event:2"`) follow torch's SummaryWriter.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as protobuf from 'protobufjs';
import { registerEventFileReader } from '../plot/plot-images';

// Field numbers as in TensorFlow's published .proto files (only the fields written here).
const PROTO = `
syntax = "proto3";
package tensorboard;
message TensorShapeProto { message Dim { int64 size = 1; string name = 2; } repeated Dim dim = 2; bool unknown_rank = 3; }
message TensorProto { int32 dtype = 1; TensorShapeProto tensor_shape = 2; int32 version_number = 3; repeated bytes string_val = 8; }
message SummaryMetadata {
  message PluginData { string plugin_name = 1; bytes content = 2; }
  PluginData plugin_data = 1; string display_name = 2; string summary_description = 3; int32 data_class = 4;
}
message Summary {
  message Value { string node_name = 7; string tag = 1; SummaryMetadata metadata = 9; oneof value { float simple_value = 2; TensorProto tensor = 8; } }
  repeated Value value = 1;
}
message Event { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3; Summary summary = 5; } }
`;

const DT_STRING = 7;
let EventType: protobuf.Type | null = null;
function eventType(): protobuf.Type {
  EventType ??= protobuf.parse(PROTO, { keepCase: true }).root.lookupType('tensorboard.Event');
  return EventType;
}

// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, and TFRecord's mask.
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32c(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export function maskedCrc32c(bytes: Uint8Array): number {
  const c = crc32c(bytes);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: u64 length, u32 masked crc(length), data, u32 masked crc(data), little-endian. */
export function tfRecord(data: Uint8Array): Buffer {
  const out = Buffer.alloc(data.length + 16);
  out.writeBigUInt64LE(BigInt(data.length), 0);
  out.writeUInt32LE(maskedCrc32c(out.subarray(0, 8)), 8);
  Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(out, 12);
  out.writeUInt32LE(maskedCrc32c(data), 12 + data.length);
  return out;
}

/** Decode the Event records of a TFRecord file (CRCs checked), for tests and tools. */
export function readEvents(file: string): Record<string, unknown>[] {
  const buf = fs.readFileSync(file);
  const out: Record<string, unknown>[] = [];
  for (let o = 0; o + 12 <= buf.length;) {
    const n = Number(buf.readBigUInt64LE(o));
    if (buf.readUInt32LE(o + 8) !== maskedCrc32c(buf.subarray(o, o + 8))) throw new Error(`${file}: bad length CRC at byte ${o}`);
    const data = buf.subarray(o + 12, o + 12 + n);
    if (data.length < n || o + 16 + n > buf.length) break;   // a truncated last record (a killed writer)
    if (buf.readUInt32LE(o + 12 + n) !== maskedCrc32c(data)) throw new Error(`${file}: bad data CRC at byte ${o}`);
    const type = eventType();
    out.push(type.toObject(type.decode(data), { longs: Number, defaults: false }) as Record<string, unknown>);
    o += 16 + n;
  }
  return out;
}

let writerCount = 0;

/**
 * Appends scalar and text summaries to `<logDir>/events.out.tfevents.<time>.<host>.<pid>.<n>`, flushed per
 * write so TensorBoard shows a live run and a killed run keeps everything written.
 * @example
 *   const tb = new SummaryWriter('output/runs');
 *   tb.addScalar('train/loss', 1.69, 1);
 */
export class SummaryWriter {
  readonly file: string;
  private readonly fd: number;

  constructor(readonly logDir: string) {
    fs.mkdirSync(logDir, { recursive: true });
    const name = `events.out.tfevents.${String(Math.floor(Date.now() / 1000)).padStart(10, '0')}.${os.hostname()}.${process.pid}.${writerCount++}`;
    this.file = path.join(logDir, name);
    this.fd = fs.openSync(this.file, 'a');
    this.write({ wall_time: Date.now() / 1000, file_version: 'brain.Event:2' });
  }

  private write(event: Record<string, unknown>): void {
    const type = eventType();
    fs.writeSync(this.fd, tfRecord(type.encode(type.fromObject(event)).finish()));
  }

  addScalar(tag: string, value: number, step: number, wallTime = Date.now() / 1000): void {
    this.write({ wall_time: wallTime, step, summary: { value: [{ tag, simple_value: value }] } });
  }

  /** A text summary (the `text` plugin), as torch's add_text: tag `<tag>/text_summary`. */
  addText(tag: string, text: string, step = 0, wallTime = Date.now() / 1000): void {
    this.write({
      wall_time: wallTime, step,
      summary: { value: [{
        tag: `${tag}/text_summary`,
        metadata: { plugin_data: { plugin_name: 'text' } },
        tensor: { dtype: DT_STRING, tensor_shape: { dim: [{ size: 1 }] }, string_val: [Buffer.from(text, 'utf8')] },
      }] },
    });
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Scalars (tag → points in file order) of event files: what plotImages draws from a run's `runs/` folder. */
export function readScalarEvents(files: string[]): Map<string, { step: number; value: number }[]> {
  const out = new Map<string, { step: number; value: number }[]>();
  for (const f of files) {
    for (const e of readEvents(f)) {
      const values = (e.summary as { value?: { tag: string; simple_value?: number }[] } | undefined)?.value ?? [];
      for (const v of values) {
        if (typeof v.simple_value !== 'number') continue;
        if (!out.has(v.tag)) out.set(v.tag, []);
        out.get(v.tag)!.push({ step: Number(e.step ?? 0), value: v.simple_value });
      }
    }
  }
  return out;
}

registerEventFileReader(readScalarEvents);

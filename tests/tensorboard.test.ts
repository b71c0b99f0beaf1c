// TensorBoard event files: TFRecord framing with masked CRC-32C (checked against the bytes every TF event
// file starts with and the CRC-32C check value), Event/Summary protobufs that decode back, zero values
// kept (lr 0 at the last step), a truncated last record (a killed writer) tolerated, and the files feed
// plotImages' reader. Python's own `tensorboard` reader read a tsft run on the GPU box
// (tests/fixtures/train/compat.json, "tensorboard_reader").

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SummaryWriter, crc32c, maskedCrc32c, readEvents, readScalarEvents, tfRecord } from '../src/train/tensorboard';
import { readScalars } from '../src/plot/plot-images';

let tmp = '';
before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-tb-')); });
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('TensorBoard events', () => {
  it('frame records as TFRecord with masked CRC-32C', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);          // the CRC-32C check value
    // every TF event file starts with the record of a 24-byte Event: length 0x18 and its masked CRC a3 7f 4b 22
    const rec = tfRecord(new Uint8Array(24));
    assert.deepEqual([...rec.subarray(0, 12)], [0x18, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0x7f, 0x4b, 0x22]);
    assert.equal(rec.readUInt32LE(36), maskedCrc32c(new Uint8Array(24)));
  });

  it('write scalars and text that decode back, and feed plotImages', () => {
    const dir = path.join(tmp, 'runs');
    const w = new SummaryWriter(dir);
    assert.match(path.basename(w.file), /^events\.out\.tfevents\.\d{10}\..+\.\d+\.\d+$/);
    w.addText('args', '{"learning_rate": 1e-4}');
    w.addScalar('train/loss', 1.6901, 1);
    w.addScalar('train/learning_rate', 0, 2);
    w.addScalar('eval/loss', 1.25, 2);
    w.close();
    const events = readEvents(w.file);
    assert.equal(events[0].file_version, 'brain.Event:2');
    const text = (events[1].summary as { value: { tag: string; metadata: { plugin_data: { plugin_name: string } } }[] }).value[0];
    assert.equal(text.tag, 'args/text_summary');
    assert.equal(text.metadata.plugin_data.plugin_name, 'text');
    const scalars = readScalarEvents([w.file]);
    assert.deepEqual(scalars.get('train/learning_rate'), [{ step: 2, value: 0 }]);
    assert.ok(Math.abs(scalars.get('train/loss')![0].value - 1.6901) < 1e-6);
    // plotImages reads event files through the reader this module registers
    assert.deepEqual(readScalars(dir).get('eval/loss'), [{ step: 2, value: 1.25 }]);
  });

  it('keep every whole record of a file whose writer was killed mid-record', () => {
    const w = new SummaryWriter(path.join(tmp, 'killed'));
    w.addScalar('train/loss', 2, 1);
    w.close();
    const whole = fs.readFileSync(w.file);
    fs.appendFileSync(w.file, tfRecord(new Uint8Array(40)).subarray(0, 30));
    assert.equal(readEvents(w.file).length, 2);
    assert.equal(whole.length + 30, fs.statSync(w.file).size);
  });
});

// f16 matmul on subgroup matrices (src/backend/kernels/matmul-f16.ts): compiles every variant (tile ×
// WGSL form × load path × launch order), checks each against a CPU reference on non-multiple shapes in all
// layouts (NN, NT, TN, batched), times the ones that pass at 4096³ (NN/NT/TN) and on LLM shapes, spot-checks
// the big results, and writes JSON. Runs on raw WebGPU buffers (no tfjs in the timed loop).
//
//   locally (lavapipe: the SIMT fallback and the harness):  npx tsx bench/matmul.ts --quick
//   on the GPU box:  ../shared/gpu/pack.sh bench/matmul.ts, then
//                    source .gpu/setup.sh && node .gpu/matmul.mjs --out $OUT/matmul.json [--safe] [--variants k1,k2]
//
// --safe: Dawn's default toggles only (robustness on), as the trainer runs; default adds
// disable_robustness,disable_workgroup_init,skip_validation (bench/MATMUL.md says what each gives).

import * as fs from 'node:fs';
import { probeAdapter, startWebGpu, DAWN_TOGGLES } from '../src/backend/webgpu';
import {
  SgMatmulProgram, SimtMatmulF16Program, dimsBytes, encodeMatmulF16, f16BitsToF32, hasSubgroupMatrix, parseSgTile, pickSgTile, sgTileBytes, vec8Ok,
  type MatmulF16Dims, type OwnProgram, type SgOptions, type SgTile,
} from '../src/backend/kernels/matmul-f16';
import type { LayoutA, LayoutB } from '../src/backend/kernels/program';

const argv = process.argv.slice(2);
const flag = (n: string) => argv.includes(`--${n}`);
const opt = (n: string) => { const i = argv.indexOf(`--${n}`); return i >= 0 ? argv[i + 1] : undefined; };
const quick = flag('quick');
const safe = flag('safe');
const outPath = opt('out');
const budgetS = Number(opt('budget') ?? 400);
const t0 = performance.now();
const elapsed = () => (performance.now() - t0) / 1000;

// ---------------------------------------------------------------------------------------------------
// halves on the host

const HALF = new Float32Array(65536).map((_, h) => f16BitsToF32(h));

/** Random halves in ±[1/8, 1): sign, exponent 12..14, random mantissa (no zeros, no rounding needed). */
function randomHalves(n: number, seed: number): Uint16Array {
  const out = new Uint16Array(n + ((8 - (n % 8)) % 8));
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = (s & 0x8000) | ((12 + ((s >>> 10) % 3)) << 10) | (s & 0x3ff);
  }
  return out;
}

const layoutName = (a: LayoutA, b: LayoutB) => `${a === 'mk' ? 'N' : 'T'}${b === 'kn' ? 'N' : 'T'}`;

/** Reference rows `rows` of C (batch `bi`), in f64 from the halves. */
function refRows(A: Uint16Array, B: Uint16Array, a: LayoutA, b: LayoutB, d: MatmulF16Dims, bi: number, rows: number[]): Float64Array {
  const { N, K } = d;
  const out = new Float64Array(rows.length * N);
  const ao = (d.aOff ?? 0) + bi * (d.strideA ?? 0), bo = (d.bOff ?? 0) + bi * (d.strideB ?? 0);
  const arow = new Float64Array(K);
  rows.forEach((m, ri) => {
    for (let k = 0; k < K; k++) arow[k] = HALF[A[a === 'mk' ? ao + m * d.lda + k : ao + k * d.lda + m]];
    for (let n = 0; n < N; n++) {
      let s = 0;
      if (b === 'kn') for (let k = 0; k < K; k++) s += arow[k] * HALF[B[bo + k * d.ldb + n]];
      else { const base = bo + n * d.ldb; for (let k = 0; k < K; k++) s += arow[k] * HALF[B[base + k]]; }
      out[ri * N + n] = s;
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------
// GPU plumbing

let device: GPUDevice;

function upload(data: Uint16Array | Uint32Array, usage = GPUBufferUsage.STORAGE): GPUBuffer {
  const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
  const buf = device.createBuffer({ size, usage: usage | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(buf, 0, data.buffer, data.byteOffset, data.byteLength);
  return buf;
}

function outBuffer(elems: number): GPUBuffer {
  return device.createBuffer({ size: Math.max(16, elems * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
}

async function readF32(buf: GPUBuffer, offsetElems: number, elems: number): Promise<Float32Array> {
  const rb = device.createBuffer({ size: elems * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, offsetElems * 4, rb, 0, elems * 4);
  device.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(rb.getMappedRange().slice(0));
  rb.unmap();
  rb.destroy();
  return out;
}

/** Poisons `buf` (NaN everywhere), so unwritten outputs show. */
function poison(buf: GPUBuffer): void {
  const enc = device.createCommandEncoder();
  enc.clearBuffer(buf); // zeros first (clearBuffer can't write NaN) ...
  device.queue.submit([enc.finish()]);
  const nan = new Uint32Array(Math.min(buf.size / 4, 1 << 24)).fill(0x7fc00000);
  for (let off = 0; off < buf.size; off += nan.byteLength) device.queue.writeBuffer(buf, off, nan.buffer, 0, Math.min(nan.byteLength, buf.size - off));
}

async function compile(p: OwnProgram): Promise<string | null> {
  device.pushErrorScope('validation');
  device.pushErrorScope('internal');
  let err: string | null = null;
  try {
    const module = device.createShaderModule({ code: p.getUserCode(), label: p.shaderKey });
    const info = await module.getCompilationInfo();
    const errs = info.messages.filter((m) => m.type === 'error');
    if (errs.length) err = errs.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join(' | ');
    else await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: p.shaderKey });
  } catch (e) {
    err = (e as Error).message;
  }
  const e1 = await device.popErrorScope();
  const e2 = await device.popErrorScope();
  return err ?? e1?.message ?? e2?.message ?? null;
}

interface Case {
  a: LayoutA;
  b: LayoutB;
  d: MatmulF16Dims;
  A: GPUBuffer;
  B: GPUBuffer;
  C: GPUBuffer;
  U: GPUBuffer;
  hA: Uint16Array;
  hB: Uint16Array;
}

function makeCase(a: LayoutA, b: LayoutB, M: number, N: number, K: number, batch = 1, seed = 1, pad = 0): Case {
  // pad: extra leading-dimension elements (strided views), kept a multiple of 8 for vec8
  const lda = (a === 'mk' ? K : M) + pad, ldb = (b === 'kn' ? N : K) + pad;
  const aRows = a === 'mk' ? M : K, bRows = b === 'kn' ? K : N;
  const strideA = aRows * lda, strideB = bRows * ldb;
  const d: MatmulF16Dims = { M, N, K, batch, lda, ldb, ldc: N, strideA: batch > 1 ? strideA : 0, strideB: batch > 1 ? strideB : 0, strideC: M * N };
  const hA = randomHalves(strideA * batch, seed * 7919 + 1), hB = randomHalves(strideB * batch, seed * 104729 + 3);
  return { a, b, d, hA, hB, A: upload(hA), B: upload(hB), C: outBuffer(M * N * batch), U: upload(dimsBytes(d), GPUBufferUsage.UNIFORM) };
}

function freeCase(c: Case): void {
  for (const x of [c.A, c.B, c.C, c.U]) x.destroy();
}

function run(p: OwnProgram, c: Case, reps = 1): void {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let r = 0; r < reps; r++) encodeMatmulF16(device, pass, p, c.A, c.B, c.C, c.U);
  pass.end();
  device.queue.submit([enc.finish()]);
}

/** max |got − ref| / max |ref| over the rows checked (NaN if anything unwritten). */
async function check(p: OwnProgram, c: Case, rows?: number[]): Promise<number> {
  poison(c.C);
  run(p, c);
  const { M, N } = c.d;
  const batch = c.d.batch ?? 1;
  let worst = 0;
  for (let bi = 0; bi < batch; bi++) {
    const rs = rows ?? Array.from({ length: M }, (_, i) => i);
    const want = refRows(c.hA, c.hB, c.a, c.b, c.d, bi, rs);
    let scale = 0;
    for (const v of want) scale = Math.max(scale, Math.abs(v));
    for (let ri = 0; ri < rs.length; ri++) {
      const got = await readF32(c.C, bi * M * N + rs[ri] * N, N);
      for (let n = 0; n < N; n++) {
        const e = Math.abs(got[n] - want[ri * N + n]) / (scale || 1);
        if (!(e <= worst)) worst = Number.isNaN(e) ? NaN : e;
        if (Number.isNaN(worst)) return NaN;
      }
    }
  }
  return worst;
}

/** Median ms of `reps` back-to-back dispatches, over `rounds` submits (after a warm-up). */
async function time(p: OwnProgram, c: Case, targetMs = 300): Promise<number> {
  run(p, c, 2);
  await device.queue.onSubmittedWorkDone();
  let t = performance.now();
  run(p, c, 3);
  await device.queue.onSubmittedWorkDone();
  const est = (performance.now() - t) / 3;
  const reps = Math.max(3, Math.min(200, Math.round(targetMs / 3 / Math.max(est, 0.01))));
  const per: number[] = [];
  for (let r = 0; r < 3; r++) {
    t = performance.now();
    run(p, c, reps);
    await device.queue.onSubmittedWorkDone();
    per.push((performance.now() - t) / reps);
  }
  return per.sort((x, y) => x - y)[1];
}

const tflops = (d: MatmulF16Dims, ms: number) => (2 * d.M * d.N * d.K * (d.batch ?? 1)) / ms / 1e9;

// ---------------------------------------------------------------------------------------------------

interface Variant {
  key: string;
  tile: SgTile;
  opts: Partial<SgOptions>;
}

function variants(sgSize: number): Variant[] {
  const tiles = (opt('variants') ?? [
    '128x128x32_sg2x2_s2', '128x128x32_sg2x4_s2', '128x128x32_sg4x2_s2', '128x256x32_sg2x4_s1', '256x128x32_sg4x2_s1',
    '64x64x32_sg1x1_s2', '128x64x32_sg2x1_s2', '64x128x32_sg1x2_s2', '128x128x64_sg2x2_s1', '128x128x16_sg2x2_s2',
    '64x64x64_sg1x1_s2', '128x128x32_sg2x2_s1',
  ].join(',')).split(',');
  const out: Variant[] = [];
  for (const t of tiles) {
    const tile = parseSgTile(t);
    for (const form of ['new', 'old'] as const) {
      if (form === 'old' && t !== tiles[0]) continue;
      out.push({ key: `${t}/${form}/vec8/g0`, tile, opts: { form, load: 'vec8', group: 0, subgroupSize: sgSize } });
    }
  }
  return out;
}

async function main(): Promise<void> {
  const toggles = safe ? DAWN_TOGGLES : ['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia,disable_robustness,disable_workgroup_init,skip_validation'];
  const { create, globals } = (await import('webgpu')) as unknown as { create(o: string[]): GPU; globals: object };
  Object.assign(globalThis, globals);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu: create(toggles) }, configurable: true, writable: true });
  const probe = await probeAdapter();
  const session = await startWebGpu(probe);
  device = session.device;
  const ai = session.adapterInfo as GPUAdapterInfo & { subgroupMaxSize?: number; subgroupMinSize?: number; subgroupMatrixConfigs?: unknown[] };
  const sgSize = ai.subgroupMaxSize ?? 32;
  const sgOk = hasSubgroupMatrix(device, ai);
  const configs = (ai.subgroupMatrixConfigs ?? []).map((c) => { const x = c as Record<string, unknown>; return `${x.componentType}->${x.resultComponentType} ${x.M}x${x.N}x${x.K}`; });
  const report: Record<string, unknown> = {
    date: new Date().toISOString(), adapter: probe.summary, toggles, features: session.features, subgroupSize: [ai.subgroupMinSize, ai.subgroupMaxSize], configs, subgroupMatrix: sgOk,
  };
  const results: Record<string, unknown>[] = [];
  report.results = results;
  const save = () => { if (outPath) fs.writeFileSync(outPath, JSON.stringify(report, null, 1)); };
  console.log(`adapter ${probe.summary.description}; subgroup matrix ${sgOk}; configs ${configs.join(', ')}; toggles ${toggles}`);
  const layouts: [LayoutA, LayoutB][] = [['mk', 'kn'], ['mk', 'nk'], ['km', 'kn'], ['km', 'nk']];
  const TOL = 1e-3; // f16 products, f32 sums over K ≤ 4096: ~1e-6 relative in practice; 1e-3 catches any wrong index

  // --- the fallback, always (it is what CI runs)
  for (const [a, b] of layouts) {
    const c = makeCase(a, b, 67, 45, 29, 2, 5);
    const p = new SimtMatmulF16Program(a, b, c.d);
    const err = await check(p, c);
    console.log(`simt ${layoutName(a, b)} 67x45x29 b2: rel err ${err.toExponential(2)}`);
    results.push({ kind: 'check', program: 'simt', layout: layoutName(a, b), shape: [2, 67, 45, 29], relErr: err, ok: err <= TOL });
    freeCase(c);
  }
  if (quick || !sgOk) {
    const c = makeCase('mk', 'kn', 256, 256, 256, 1, 9);
    const ms = await time(new SimtMatmulF16Program('mk', 'kn', c.d), c, 100);
    console.log(`simt NN 256³: ${ms.toFixed(2)} ms, ${tflops(c.d, ms).toFixed(4)} TF/s`);
    freeCase(c);
    save();
    process.exit(0);
  }

  // --- --retime R: no checks (the variants were checked in earlier runs), a 3 s warm-up of the GPU,
  // then R interleaved rounds over variants × layouts at 4096³ (spread = noise between identical runs)
  if (opt('retime')) {
    const R = Number(opt('retime'));
    const big: Record<string, Case> = {};
    for (const [a, b] of layouts.slice(0, 3)) big[layoutName(a, b)] = makeCase(a, b, 4096, 4096, 4096, 1, 11);
    const progs = variants(sgSize).filter((v) => v.opts.form === 'new').flatMap((v) => Object.entries(big).map(([lay, c]) => ({ key: `${v.key} ${lay}`, p: new SgMatmulProgram(v.tile, c.a, c.b, c.d, v.opts), c })));
    for (const x of progs) { const e = await compile(x.p); if (e) console.log(`${x.key}: ${e.slice(0, 200)}`); }
    const w0 = performance.now();
    while (performance.now() - w0 < 3000) { run(progs[0].p, progs[0].c, 20); await device.queue.onSubmittedWorkDone(); }
    const all: Record<string, number[]> = {};
    for (let r = 0; r < R; r++) for (const x of progs) (all[x.key] ??= []).push(tflops(x.c.d, await time(x.p, x.c, 150)));
    for (const [k, v] of Object.entries(all)) {
      console.log(`retime ${k.padEnd(40)} TF/s ${v.map((x) => x.toFixed(1)).join(' ')}`);
      results.push({ kind: 'retime', variant: k, shape: [4096, 4096, 4096], tflops: v });
    }
    save();
    process.exit(0);
  }

  // --- compile + check every variant (small, non-multiple shapes: edges, batch, strided views)
  const vs = variants(sgSize);
  const passed: Variant[] = [];
  for (const v of vs) {
    const bytes = sgTileBytes(v.tile, 'mk', 'kn');
    const p0 = new SgMatmulProgram(v.tile, 'mk', 'kn', { M: 64, N: 64 }, v.opts);
    const err = await compile(p0);
    const rec: Record<string, unknown> = { kind: 'compile', variant: v.key, wgBytes: bytes, error: err };
    results.push(rec);
    if (err) { console.log(`${v.key}: compile FAILED: ${err.slice(0, 400)}`); continue; }
    let ok = true;
    for (const [a, b] of layouts) {
      for (const [M, N, K, batch, pad] of [[200, 136, 88, 2, 8], [256, 256, 256, 1, 0]]) {
        const c = makeCase(a, b, M, N, K, batch, 3, pad);
        const p = new SgMatmulProgram(v.tile, a, b, c.d, v.opts);
        const e = await check(p, c);
        results.push({ kind: 'check', variant: v.key, layout: layoutName(a, b), shape: [batch, M, N, K], relErr: e, ok: e <= TOL });
        if (!(e <= TOL)) { ok = false; console.log(`${v.key} ${layoutName(a, b)} ${batch}x${M}x${N}x${K}: WRONG, rel err ${e}`); }
        freeCase(c);
      }
    }
    console.log(`${v.key}: compiled (${bytes} B workgroup memory), ${ok ? 'correct' : 'WRONG'}`);
    if (ok) passed.push(v);
    save();
  }
  // scalar loads (any shape) on the first passing variant
  if (passed.length) {
    const v = passed[0];
    for (const [a, b] of layouts) {
      const c = makeCase(a, b, 197, 131, 77, 2, 4);
      const p = new SgMatmulProgram(v.tile, a, b, c.d, { ...v.opts, load: 'scalar' });
      const cerr = await compile(p);
      const e = cerr ? NaN : await check(p, c);
      console.log(`${v.key} scalar-load ${layoutName(a, b)} 2x197x131x77: ${cerr ?? `rel err ${e.toExponential(2)}`}`);
      results.push({ kind: 'check', variant: `${v.key} scalar`, layout: layoutName(a, b), shape: [2, 197, 131, 77], relErr: e, ok: e <= TOL, error: cerr });
      freeCase(c);
    }
  }

  // --- 4096³, every passing variant, NN / NT / TN
  const big: Record<string, Case> = {};
  for (const [a, b] of layouts.slice(0, 3)) big[layoutName(a, b)] = makeCase(a, b, 4096, 4096, 4096, 1, 11);
  const rows: { key: string; lay: string; ms: number; tf: number }[] = [];
  const timeIt = async (v: Variant, lay: string, extra: Partial<SgOptions> = {}) => {
    const c = big[lay];
    const p = new SgMatmulProgram(v.tile, c.a, c.b, c.d, { ...v.opts, ...extra });
    if (await compile(p)) return NaN;
    const ms = await time(p, c);
    const key = `${sgTileKeyOf(v)}/${p.opts.form}/${p.opts.load}/g${p.opts.group}`;
    rows.push({ key, lay, ms, tf: tflops(c.d, ms) });
    results.push({ kind: 'time', variant: key, layout: lay, shape: [4096, 4096, 4096], ms, tflops: tflops(c.d, ms) });
    console.log(`4096³ ${lay} ${key}: ${ms.toFixed(3)} ms  ${tflops(c.d, ms).toFixed(1)} TF/s  [${elapsed().toFixed(0)} s]`);
    save();
    return ms;
  };
  for (const v of passed) {
    if (elapsed() > budgetS * 0.45) break;
    await timeIt(v, 'NN');
  }
  const bestNN = [...rows].sort((x, y) => x.ms - y.ms).slice(0, 3).map((r) => passed.find((v) => r.key.startsWith(sgTileKeyOf(v)) && r.key.includes(`/${v.opts.form}/`))!);
  for (const v of bestNN) {
    for (const g of [8, 16]) await timeIt(v, 'NN', { group: g });
    for (const lay of ['NT', 'TN']) await timeIt(v, lay);
    for (const lay of ['NT', 'TN']) await timeIt(v, lay, { group: 8 });
  }
  // spot-check the best at 4096³ (three rows, every layout)
  const best = [...rows].sort((x, y) => x.ms - y.ms)[0];
  if (best) {
    const v = passed.find((x) => best.key.startsWith(sgTileKeyOf(x)) && best.key.includes(`/${x.opts.form}/`))!;
    const group = Number(/\/g(\d+)$/.exec(best.key)![1]);
    for (const lay of ['NN', 'NT', 'TN']) {
      const c = big[lay];
      const e = await check(new SgMatmulProgram(v.tile, c.a, c.b, c.d, { ...v.opts, group }), c, [0, 1234, 4095]);
      console.log(`spot check 4096³ ${lay} ${best.key}: rel err ${e.toExponential(2)}`);
      results.push({ kind: 'check', variant: best.key, layout: lay, shape: [1, 4096, 4096, 4096], rows: [0, 1234, 4095], relErr: e, ok: e <= TOL });
    }
    report.best4096 = best;
  }
  for (const c of Object.values(big)) freeCase(c);
  const nnRanked = [...rows].filter((r) => r.lay === 'NN').sort((x, y) => x.ms - y.ms);
  const secondRow = nnRanked.find((r) => best && !r.key.startsWith(best.key.split('/')[0]));
  const second = secondRow ? passed.find((x) => secondRow.key.startsWith(sgTileKeyOf(x)) && secondRow.key.includes(`/${x.opts.form}/`)) : undefined;
  if (flag('only4096')) {
    save();
    console.log('\n== 4096³ summary (TF/s) ==');
    for (const r of [...rows].sort((x, y) => y.tf - x.tf)) console.log(`${r.lay} ${r.key.padEnd(40)} ${r.tf.toFixed(1)}`);
    process.exit(0);
  }

  // --- LLM shapes: the shape-class pick vs the best 4096³ variant
  const shapes: [string, LayoutA, LayoutB, number, number, number, number][] = [
    ['mlp up 2048x11008x2048 NN', 'mk', 'kn', 2048, 11008, 2048, 1],
    ['mlp down 2048x2048x11008 NN', 'mk', 'kn', 2048, 2048, 11008, 1],
    ['dW 2048x11008 over 2048 tokens TN', 'km', 'kn', 2048, 11008, 2048, 1],
    ['dX 2048x2048x11008 NT', 'mk', 'nk', 2048, 2048, 11008, 1],
    ['lm head 2048x151936x1024 NT', 'mk', 'nk', 2048, 151936, 1024, 1],
    ['attn QK^T 16x1024x1024x128 NT', 'mk', 'nk', 1024, 1024, 128, 16],
    ['odd 1000x3000x1000 NN', 'mk', 'kn', 1000, 3000, 1000, 1],
    ['odd 999x3001x1001 NN (scalar loads)', 'mk', 'kn', 999, 3001, 1001, 1],
  ];
  for (const [name, a, b, M, N, K, batch] of shapes) {
    if (elapsed() > budgetS * 0.85) { console.log(`budget: skipping ${name}`); continue; }
    const c = makeCase(a, b, M, N, K, batch, 13);
    const cands: [string, SgTile, Partial<SgOptions>][] = [['pick', pickSgTile(M, N, batch), { subgroupSize: sgSize, load: vec8Ok(a, b, c.d) ? 'vec8' : 'scalar' }]];
    if (best) {
      const v = passed.find((x) => best.key.startsWith(sgTileKeyOf(x)) && best.key.includes(`/${x.opts.form}/`))!;
      cands.push(['best4096', v.tile, { ...v.opts, group: Number(/\/g(\d+)$/.exec(best.key)![1]) }]);
      cands.push(['best4096 g16', v.tile, { ...v.opts, group: 16 }]);
      if (second) cands.push(['second4096', second.tile, { ...second.opts }]);
    }
    for (const [label, tile, o0] of cands) {
      const o = { ...o0, load: vec8Ok(a, b, c.d) ? o0.load : 'scalar' as const };
      const p = new SgMatmulProgram(tile, a, b, c.d, o);
      const cerr = await compile(p);
      if (cerr) { console.log(`${name} ${label}: compile failed ${cerr.slice(0, 200)}`); continue; }
      const ms = await time(p, c, 200);
      const e = label === 'pick' ? await check(p, c, [0, M - 1]) : undefined;
      console.log(`${name} ${label} ${sgTileKeyOf({ tile } as Variant)}: ${ms.toFixed(3)} ms  ${tflops(c.d, ms).toFixed(1)} TF/s${e !== undefined ? `  rel err ${e.toExponential(2)}` : ''}`);
      results.push({ kind: 'time', name, label, variant: p.shaderKey, shape: [batch, M, N, K], ms, tflops: tflops(c.d, ms), relErr: e });
      save();
    }
    freeCase(c);
  }
  // the fallback at 4096³, for scale
  {
    const c = makeCase('mk', 'kn', 2048, 2048, 2048, 1, 17);
    const ms = await time(new SimtMatmulF16Program('mk', 'kn', c.d), c, 200);
    console.log(`simt fallback NN 2048³: ${ms.toFixed(2)} ms, ${tflops(c.d, ms).toFixed(1)} TF/s`);
    results.push({ kind: 'time', variant: 'simt', layout: 'NN', shape: [1, 2048, 2048, 2048], ms, tflops: tflops(c.d, ms) });
    freeCase(c);
  }
  save();
  console.log('\n== 4096³ summary (TF/s) ==');
  for (const r of [...rows].sort((x, y) => y.tf - x.tf)) console.log(`${r.lay} ${r.key.padEnd(40)} ${r.tf.toFixed(1)}`);
  process.exit(0);
}

function sgTileKeyOf(v: Pick<Variant, 'tile'>): string {
  const t = v.tile;
  return `${t.tileM}x${t.tileN}x${t.tileK}_sg${t.sgM}x${t.sgN}_s${t.stages}`;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

// What the subgroup-matrix path itself can do on this card, apart from any matmul design: kernels that
// only multiply (fragments held in registers, 1 to 16 independent accumulators per subgroup) and kernels
// that also reload fragments from workgroup memory every step (0.5 and 1 load per multiply: the matmul's
// and the attention kernels' ratios). Their TF/s bound what a WGSL kernel can reach here (bench/MATMUL.md).
// Raw WebGPU, no tfjs; the toggles of bench/matmul.ts (robustness off).
//
//   GPU box: ../shared/gpu/pack.sh bench/mma-probe.ts; source .gpu/setup.sh && node .gpu/mma-probe.mjs --out $OUT/mma-probe.json
//            (python3 bench/matmul_ref.py beside it for cuBLAS on the same card)

import * as fs from 'node:fs';
import { probeAdapter, startWebGpu } from '../src/backend/webgpu';
import { SUBGROUP_MATRIX_WGSL, hasSubgroupMatrix } from '../src/backend/kernels/matmul-f16';

const argv = process.argv.slice(2);
const opt = (n: string) => { const i = argv.indexOf(`--${n}`); return i >= 0 ? argv[i + 1] : undefined; };

/**
 * A probe: R×C accumulators per subgroup; per step, fragments reloaded from workgroup memory: none, the
 * R + C operands (matmul), or one per multiply (attention). `k32`: a step is the matmul's 32-deep k step
 * (two 16-deep multiplies of the block), with its two workgroup barriers (`barriers`), and also (`staged`)
 * the next 128×32 + 32×128 halves loaded from global memory into registers and stored to workgroup memory,
 * as SgMatmulProgram's single-stage register prefetch does: the matmul without its address arithmetic.
 */
interface Probe { name: string; R: number; C: number; loads: 'none' | 'operands' | 'per-mma'; k32?: 'barriers' | 'staged' | 'stream' | 'stream2'; wide?: boolean }

const PROBES: Probe[] = [
  { name: 'mma only, 1 accumulator (one dependent chain)', R: 1, C: 1, loads: 'none' },
  { name: 'mma only, 2×2 accumulators', R: 2, C: 2, loads: 'none' },
  { name: 'mma only, 4×4 accumulators', R: 4, C: 4, loads: 'none' },
  { name: 'mma + operand loads, 4×4 (0.5 loads per mma: the matmul inner loop)', R: 4, C: 4, loads: 'operands' },
  { name: 'mma + a load per mma, 1×8 (the attention kernels\' ratio)', R: 1, C: 8, loads: 'per-mma' },
  { name: 'matmul k step: operand loads + 2 barriers per 32-deep step, 4×4', R: 4, C: 4, loads: 'operands', k32: 'barriers' },
  { name: 'matmul k step: + global → registers → workgroup staging (16 KiB per step), 4×4', R: 4, C: 4, loads: 'operands', k32: 'staged' },
  {
    name: 'the same streaming a 4096³ product\'s operands: 32×32 workgroups, 128 steps, each reading its A and B panels (64 MiB in all)',
    R: 4, C: 4, loads: 'operands', k32: 'stream',
  },
  { name: 'the same with two steps in flight in registers (prefetch distance 2)', R: 4, C: 4, loads: 'operands', k32: 'stream2' },
  { name: 'streaming, 128×256 tiles (8 subgroups of 64×64: 25 % fewer bytes per multiply), 32×16 workgroups', R: 4, C: 4, loads: 'operands', k32: 'stream', wide: true },
  { name: 'the same, prefetch distance 2', R: 4, C: 4, loads: 'operands', k32: 'stream2', wide: true },
];

const NSG = 4;          // subgroups per workgroup (wide probes: 8)
const nsgOf = (p: Probe) => (p.wide ? 8 : NSG);
const ROW = 3;          // workgroup tile row stride in vec4<u32> (8 halves each): 16 halves and one pad

function wgsl(p: Probe): string {
  const { R, C } = p;
  const nsg = nsgOf(p), stepVec4 = p.wide ? 1536 : 1024, tilesN = p.wide ? 16 : 32;
  const acc = (r: number, c: number) => `acc_${r}_${c}`;
  const all = (f: (r: number, c: number) => string) => Array.from({ length: R }, (_, r) => Array.from({ length: C }, (_, c) => f(r, c)).join('\n    ')).join('\n    ');
  const loadA = (r: number, k = '0u') => `subgroupMatrixLoad<SL, row_major>(&W, ((sg * 16u + ${r}u * 64u + ${k}) % 256u) * ROW, ROW)`;
  const loadB = (c: number, k: string) => `subgroupMatrixLoad<SR, col_major>(&W, ((${c}u * 16u + ${k}) % 256u) * ROW, ROW)`;
  const inner = (k: string, t: number) => `${Array.from({ length: R }, (_, r) => `let la${r}_${t} = ${loadA(r, k)};`).join('\n    ')}
    ${Array.from({ length: C }, (_, c) => `let lb${c}_${t} = ${loadB(c, k)};`).join('\n    ')}
    ${all((r, c) => `${acc(r, c)} = subgroupMatrixMultiplyAccumulate(la${r}_${t}, lb${c}_${t}, ${acc(r, c)});`)}`;
  // one step of the streamed A (512 vec4: 128 rows × 32 halves) and B (BSTEP vec4) panels into registers
  const fetch2 = (reg: string, at: string) => `for (var j = 0u; j < NP; j++) { ${reg}[j] = IN[select(panelB + ((${at}) % u.x) * BSTEP + lid + (j - NPA) * WG, panelA + ((${at}) % u.x) * 512u + lid + j * WG, j < NPA)]; }`;
  const half2 = (reg: string, at: string, k0: string, k1: string) => `workgroupBarrier();
    for (var j = 0u; j < NP; j++) { W[lid + j * WG] = ${reg}[j]; }
    workgroupBarrier();
    ${fetch2(reg, at)}
    {
    ${inner(k0, 0)}
    ${inner(k1, 1)}
    }`;
  const step = p.k32 === 'stream2'
    ? `${half2('p0', 'i + 2u', '(2u * i) % 8u', '(2u * i + 1u) % 8u')}
    ${half2('p1', 'i + 3u', '(2u * i + 2u) % 8u', '(2u * i + 3u) % 8u')}`
    : p.k32
    ? `workgroupBarrier();
    ${p.k32 === 'staged' || p.k32 === 'stream' ? `for (var j = 0u; j < NP; j++) { W[lid + j * WG] = pre[j]; }` : ''}
    workgroupBarrier();
    ${p.k32 === 'staged' ? `for (var j = 0u; j < NP; j++) { pre[j] = IN[(i * 1024u + lid + j * WG) % 4096u]; }` : ''}
    ${p.k32 === 'stream' ? fetch2('pre', 'i + 1u') : ''}
    ${inner('(2u * i) % 8u', 0)}
    ${inner('(2u * i + 1u) % 8u', 1)}`
    : p.loads === 'none'
    ? all((r, c) => `${acc(r, c)} = subgroupMatrixMultiplyAccumulate(a${r}, b${c}, ${acc(r, c)});`)
    : p.loads === 'operands'
    ? `${Array.from({ length: R }, (_, r) => `let la${r} = ${loadA(r, 'i % 8u')};`).join('\n    ')}
    ${Array.from({ length: C }, (_, c) => `let lb${c} = ${loadB(c, 'i % 8u')};`).join('\n    ')}
    ${all((r, c) => `${acc(r, c)} = subgroupMatrixMultiplyAccumulate(la${r}, lb${c}, ${acc(r, c)});`)}`
    : all((r, c) => `${acc(r, c)} = subgroupMatrixMultiplyAccumulate(a${r}, ${loadB(c, 'i % 8u')}, ${acc(r, c)});`);
  return `${SUBGROUP_MATRIX_WGSL}
@group(0) @binding(0) var<storage, read> IN : array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> OUT : array<f32>;
@group(0) @binding(2) var<uniform> u : vec4<u32>;
const ROW = ${ROW}u;
const WG = ${32 * nsg}u;
const NP = ${stepVec4 / (32 * nsg)}u;   // vec4 per invocation of a staged step (16 KiB; wide: 24 KiB)
const NPA = ${512 / (32 * nsg)}u;   // of them A's
const BSTEP = ${p.wide ? 1024 : 512}u;      // vec4 of B per step
var<workgroup> W : array<vec4<u32>, ${Math.max(272 * ROW, stepVec4)}>;   // 256 rows + 16 (a fragment from row 255); a staged step
@compute @workgroup_size(${32 * nsg})
fn main(@builtin(local_invocation_index) lid : u32, @builtin(workgroup_id) wid : vec3<u32>, @builtin(subgroup_id) sg : u32) {
  for (var e = lid; e < 272u * ROW; e += WG) { W[e] = IN[e % 4096u]; }
  workgroupBarrier();
  ${Array.from({ length: R }, (_, r) => `let a${r} = ${loadA(r)};`).join('\n  ')}
  ${Array.from({ length: C }, (_, c) => `let b${c} = ${loadB(c, '0u')};`).join('\n  ')}
  ${all((r, c) => `var ${acc(r, c)} = SA();`)}
  ${p.k32 === 'staged' ? 'var pre : array<vec4<u32>, NP>;\n  for (var j = 0u; j < NP; j++) { pre[j] = IN[lid + j * WG]; }' : ''}
  ${p.k32 === 'stream' || p.k32 === 'stream2' ? `// A panel of row tile m (1 MiB: 8 KiB per step), B panel of column tile n (1 MiB; wide: 2 MiB)
  let panelA = (wid.x / ${tilesN}u) * 65536u;
  let panelB = 2097152u + (wid.x % ${tilesN}u) * ${p.wide ? 131072 : 65536}u;` : ''}
  ${p.k32 === 'stream' ? `var pre : array<vec4<u32>, NP>;
  ${fetch2('pre', '0u')}` : ''}
  ${p.k32 === 'stream2' ? `var p0 : array<vec4<u32>, NP>;
  var p1 : array<vec4<u32>, NP>;
  ${fetch2('p0', '0u')}
  ${fetch2('p1', '1u')}` : ''}
  for (var i = 0u; i < u.x; i += ${p.k32 === 'stream2' ? 2 : 1}u) {
    ${step}
  }
  let base = ((wid.x * ${nsg}u + sg) * ${R * C}u) * 256u;
  ${all((r, c) => `subgroupMatrixStore<row_major>(&OUT, base + ${(r * C + c) * 256}u, ${acc(r, c)}, 16u);`)}
}`;
}

async function main(): Promise<void> {
  const toggles = ['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia,disable_robustness,disable_workgroup_init,skip_validation'];
  const { create, globals } = (await import('webgpu')) as unknown as { create(o: string[]): GPU; globals: object };
  Object.assign(globalThis, globals);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu: create(toggles) }, configurable: true, writable: true });
  const probe = await probeAdapter();
  const session = await startWebGpu(probe);
  const device = session.device;
  if (!hasSubgroupMatrix(device, session.adapterInfo)) throw new Error(`mma-probe: ${probe.summary.description} has no f16 subgroup matrices (run it on the GPU box)`);
  const wgsAll = Number(opt('workgroups') ?? 132 * 16);
  // small halves (±1/64 .. ±1/32): sums stay far from f16/f32 limits
  const halves = new Uint16Array(4096 * 8).map((_, i) => ((i * 2654435761) >>> 0) % 2 ? 0x2400 + (i % 1024) : 0xa400 + (i % 1024));
  const input = device.createBuffer({ size: 64 << 20, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  for (let off = 0; off < 64 << 20; off += halves.byteLength) device.queue.writeBuffer(input, off, halves);
  const results: Record<string, unknown>[] = [];
  for (const p of PROBES) {
    const iters = p.loads === 'none' ? (4096 / (p.R * p.C)) * 16 : p.k32 === 'stream' || p.k32 === 'stream2' ? 128 : p.k32 ? 1024 : 2048;
    const wgs = p.k32 === 'stream' || p.k32 === 'stream2' ? (p.wide ? 512 : 1024) : wgsAll;
    const nsg = nsgOf(p);
    const out = device.createBuffer({ size: wgs * nsg * p.R * p.C * 256 * 4, usage: GPUBufferUsage.STORAGE });
    const uni = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(uni, 0, Uint32Array.from([iters, 0, 0, 0]));
    const module = device.createShaderModule({ code: wgsl(p) });
    const pipeline = await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const bind = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [input, out, uni].map((buffer, binding) => ({ binding, resource: { buffer } })) });
    const runs = (n: number) => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bind);
      for (let i = 0; i < n; i++) pass.dispatchWorkgroups(wgs);
      pass.end();
      device.queue.submit([enc.finish()]);
      return device.queue.onSubmittedWorkDone();
    };
    const warm = performance.now();
    while (performance.now() - warm < 1000) await runs(5);
    const times: number[] = [];
    for (let r = 0; r < 3; r++) {
      const t0 = performance.now();
      await runs(10);
      times.push((performance.now() - t0) / 10);
    }
    const ms = times.sort((a, b) => a - b)[1];
    const flop = wgs * nsg * iters * (p.k32 ? 2 : 1) * p.R * p.C * 2 * 16 * 16 * 16;
    const row = { probe: p.name, accumulators: p.R * p.C, loads: p.loads, workgroups: wgs, subgroups_per_workgroup: nsg, iterations: iters, ms: Number(ms.toPrecision(4)), tflops: Number((flop / ms / 1e9).toPrecision(4)) };
    console.log(JSON.stringify(row));
    results.push(row);
    out.destroy();
    uni.destroy();
  }
  const path = opt('out');
  if (path) fs.writeFileSync(path, JSON.stringify({ date: new Date().toISOString(), adapter: probe.summary, toggles, results }, null, 1));
}

main().catch((e) => { console.error(e); process.exit(1); });

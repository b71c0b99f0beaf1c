// Encoding throughput of EncodePreprocessor: rows/s with numProc 1 and 2 (and more when asked) on
// 10,000 alpaca rows, template qwen3_thinking in 'train' mode with the seed's system prompt.
//
//   npx tsx bench/encode.ts                      # 10,000 rows built from the bundled general sets
//   npx tsx bench/encode.ts alpaca.jsonl 1,2,4   # the first 10,000 rows of a real alpaca file; numProc list
//   npx tsx bench/encode.ts - 1,2,8 50000         # bundled-built rows, another row count
//
// Without a file, rows are assembled (seeded) from the bundled zh/en answers: 2–6 sentences each, about the
// length of alpaca-gpt4's answers, half Chinese and half English, so no two rows are the same.

import { loadDataset } from '../src/data/load';
import { EncodePreprocessor } from '../src/data/encode';
import { Dataset, type ChatRow } from '../src/data/dataset';
import { getTemplate } from '../src/data/template';
import { loadDefaultTokenizer } from '../src/model/tokenizer';
import { Random } from '../src/utils/seed';
import * as os from 'os';


async function rows(ROWS: number, file?: string): Promise<Dataset<ChatRow>> {
  if (file) {
    const [train] = await loadDataset([`${file}#${ROWS}`]);
    return train;
  }
  const [zh] = await loadDataset(['tsft/general-zh']);
  const [en] = await loadDataset(['tsft/general-en']);
  const rng = new Random(0);
  const out: ChatRow[] = [];
  for (let i = 0; i < ROWS; i++) {
    const pool = i % 2 === 0 ? zh : en;
    const q = pool[rng.int(pool.length)].messages[0].content;
    const parts: string[] = [];
    for (let k = 2 + rng.int(5); k > 0; k--) parts.push(pool[rng.int(pool.length)].messages[1].content);
    out.push({ messages: [{ role: 'user', content: `${q} (${i})` }, { role: 'assistant', content: parts.join(i % 2 === 0 ? '' : ' ') }] });
  }
  return Dataset.fromRows(out);
}

async function main(): Promise<void> {
  const [file, procsArg, rowsArg] = process.argv.slice(2);
  const procs = (procsArg ?? '1,2').split(',').map(Number);
  const data = await rows(Number(rowsArg ?? 10_000), file && file !== '-' ? file : undefined);
  const tok = await loadDefaultTokenizer();
  const template = getTemplate('qwen3_thinking', tok, { defaultSystem: 'You are a helpful assistant.', maxLength: 2048 });
  template.setMode('train');
  const encode = EncodePreprocessor(template);
  await encode(data.slice(0, 200), { quiet: true });   // warm up the JIT and the tokenizer's caches
  let tokens = 0;
  const base: Record<number, number> = {};
  console.log(`encode bench: ${data.length} rows, qwen3_thinking, ${os.availableParallelism?.() ?? os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'})`);
  for (const p of procs) {
    const t0 = performance.now();
    const out = await encode(data, { numProc: p });   // logs 'encoded … (… rows by workers)'
    const s = (performance.now() - t0) / 1000;
    tokens = out.reduce((a, r) => a + r.length, 0);
    base[p] = data.length / s;
    const speedup = base[1] ? ` (${(base[p] / base[1]).toFixed(2)}× numProc 1)` : '';
    console.log(`numProc ${p}: ${Math.round(data.length / s)} rows/s, ${Math.round(tokens / s)} tokens/s, ${s.toFixed(2)} s${speedup}`);
  }
  console.log(`${tokens} tokens in total (${(tokens / data.length).toFixed(0)} per row)`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

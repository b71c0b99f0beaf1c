// `npm run report`: executes the notebooks with Jupyter's nbconvert on the tsft kernel and writes
// output/report/<name>.ipynb (executed) and output/report/<name>.html. The kernel spec is written into a
// project-local Jupyter path (output/jupyter, through JUPYTER_PATH), so nothing outside the repository is
// touched. `npm run notebooks:install` installs the same kernel for your own JupyterLab / Notebook.
//
//   npm run report                       # both notebooks
//   npm run report -- self-cognition-sft # one
//   npm run notebooks:install            # kernel "TypeScript (tsft)" into your user Jupyter folder

import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { fileURLToPath } from 'url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const NOTEBOOKS = ['self-cognition-sft', 'self-cognition-cli'] as const;
export const REPORT_DIR = path.join(ROOT, 'output', 'report');
const LOCAL_JUPYTER = path.join(ROOT, 'output', 'jupyter');
const KERNEL_NAME = 'tsft';
/** Per cell: training the tiny model takes a few minutes on 2 CPU cores; the real models take longer. */
const CELL_TIMEOUT_S = Number(process.env.TSFT_NOTEBOOK_CELL_TIMEOUT ?? 3600);

/** The kernel spec: tslab started from the repository root by notebooks/tslab-kernel.sh. */
export function kernelSpec(): object {
  return {
    argv: [path.join(ROOT, 'notebooks', 'tslab-kernel.sh'), 'kernel', '--config-path', '{connection_file}'],
    display_name: 'TypeScript (tsft)',
    language: 'typescript',
  };
}

function writeKernelSpec(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'kernel.json'), JSON.stringify(kernelSpec(), null, 1) + '\n');
}

/** Whether Jupyter (nbclient, nbconvert) can run notebooks here. */
export function hasJupyter(): boolean {
  return spawnSync(PYTHON, ['-c', 'import nbclient, nbconvert, jupyter_client'], { env: jupyterEnv() }).status === 0;
}

/** Environment for jupyter: the project-local kernel first on JUPYTER_PATH, quiet debugger warnings. */
export function jupyterEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const jp = [LOCAL_JUPYTER, process.env.JUPYTER_PATH].filter(Boolean).join(path.delimiter);
  return { ...process.env, JUPYTER_PATH: jp, PYDEVD_DISABLE_FILE_VALIDATION: '1', ...extra };
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', (e) => reject(new Error(`${cmd}: ${e.message}`)));
    child.on('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.slice(0, 3).join(' ')} … exited with ${signal ?? code}`))));
  });
}

/** Debian's python3 (the one `jupyter` runs on; a pyenv python3 on PATH may lack nbclient). */
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

export interface Executed {
  name: string;
  /** executed notebook (outputs kept) and its HTML */
  ipynb: string;
  html: string;
  seconds: number;
  /** 1-based index of the cell that failed (the run stops there), or null */
  failedCell: number | null;
  error: string | null;
}

/**
 * Execute notebooks/<name>.ipynb on the tsft kernel (scripts/run-notebook.py: nbclient, then nbconvert's
 * HTML exporter) into `outDir`. A failing cell stops the run as in Jupyter; the notebook and HTML are still
 * written, with the failure recorded (returned here, and in the notebook's metadata.tsft).
 */
export async function executeNotebook(name: string, outDir = REPORT_DIR, env: Record<string, string> = {}): Promise<Executed> {
  writeKernelSpec(path.join(LOCAL_JUPYTER, 'kernels', KERNEL_NAME));
  fs.mkdirSync(outDir, { recursive: true });
  const ipynb = path.join(outDir, `${name}.ipynb`), html = path.join(outDir, `${name}.html`);
  const args = [path.join(ROOT, 'scripts', 'run-notebook.py'), path.join(ROOT, 'notebooks', `${name}.ipynb`), ipynb, html,
    '--kernel', KERNEL_NAME, '--timeout', String(CELL_TIMEOUT_S), '--cwd', ROOT];
  await run(PYTHON, args, jupyterEnv(env)).catch((e: Error) => {
    if (!fs.existsSync(ipynb)) throw e;  // a failing cell still writes the notebook (exit 2); anything else is fatal
  });
  const meta = (JSON.parse(fs.readFileSync(ipynb, 'utf8')) as { metadata: { tsft: { seconds: number; failed_cell: number | null; error: string | null } } }).metadata.tsft;
  return { name, ipynb, html, seconds: meta.seconds, failedCell: meta.failed_cell, error: meta.error };
}

/** `jupyter kernelspec install --user`: the kernel "TypeScript (tsft)" for your own Jupyter. */
export function installUserKernel(): void {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-kernel-'));
  const dir = path.join(tmp, KERNEL_NAME);
  writeKernelSpec(dir);
  const r = spawnSync('jupyter', ['kernelspec', 'install', '--user', '--replace', '--name', KERNEL_NAME, dir], { encoding: 'utf8', env: jupyterEnv() });
  fs.rmSync(tmp, { recursive: true, force: true });
  if (r.status !== 0) throw new Error(`jupyter kernelspec install failed: ${r.error?.message ?? r.stderr}`);
  process.stdout.write(r.stderr + r.stdout);
  console.log(`kernel "TypeScript (tsft)" installed; open notebooks/*.ipynb in JupyterLab or Notebook (e.g. jupyter notebook notebooks/)`);
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === 'install') return installUserKernel();
  if (!hasJupyter()) throw new Error(`Jupyter is not installed for ${PYTHON} (Debian: apt-get install jupyter-nbconvert jupyter-client python3-ipykernel)`);
  const names = argv.length ? argv : [...NOTEBOOKS];
  for (const n of names) if (!(NOTEBOOKS as readonly string[]).includes(n)) throw new Error(`unknown notebook "${n}"; one of ${NOTEBOOKS.join(', ')}`);
  const results: Executed[] = [];
  for (const name of names) {
    console.log(`\n=== executing notebooks/${name}.ipynb (per-cell timeout ${CELL_TIMEOUT_S} s) ===`);
    results.push(await executeNotebook(name));
  }
  console.log('\nreport:');
  for (const r of results) {
    console.log(`  ${path.relative(ROOT, r.html)}  (${r.seconds.toFixed(0)} s${r.failedCell ? `; cell ${r.failedCell} failed` : ''})`);
    if (r.error) console.log(r.error.replace(/^/gm, '    '));
  }
  if (results.some((r) => r.failedCell !== null)) process.exit(1);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}

// Shell helpers for the notebooks (the seed's `!swift ...` cells): run `tsft` as a child process with its
// output streamed into the cell, and start/stop the long-running servers (`tsft deploy`, `tsft web-ui`)
// so that a notebook run by nbconvert finishes. Loaded by tslab (TypeScript 5.0, CommonJS): no
// import.meta, no top-level await.

import { spawn, type ChildProcess } from 'child_process';
import * as net from 'net';
import * as path from 'path';

/** The repository root: the tsft kernel (notebooks/tslab-kernel.sh) starts tslab there. */
const ROOT = process.cwd();
const TSFT_BIN = path.join(ROOT, 'bin', 'tsft.js');

/** How a command line reads in the cell (quotes only where needed). */
function shellQuote(args: readonly string[]): string {
  return args.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/**
 * Dawn's notice when `--device auto` probes a software Vulkan adapter (lavapipe) — harmless, printed by
 * the native library on every start; kept out of the cells so that real warnings stand out.
 */
const DAWN_NOISE = /^Warning: maxDynamic\w+PerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.\n?/gm;

/** The child's stderr, minus DAWN_NOISE. */
function stderrText(d: Buffer): string {
  return d.toString().replace(DAWN_NOISE, '');
}

function launch(args: readonly string[], env: Record<string, string> = {}): ChildProcess {
  process.stdout.write(`$ tsft ${shellQuote(args)}\n`);
  return spawn(process.execPath, [TSFT_BIN, ...args], {
    cwd: ROOT, env: { ...process.env, TSFT_NO_PROGRESS: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/**
 * Run `tsft <args>` to the end, its stdout/stderr streamed into the cell; rejects when it exits with an
 * error (a failing cell, as `!swift ...` would show it). Resolves to nothing, so that a cell ending in
 * `await tsft(...)` does not print the output twice; `tsftOutput` also returns the stdout.
 * @example await tsft(['infer', '--model', ckpt, '--query', '你是谁？']);
 */
export async function tsft(args: readonly string[], env: Record<string, string> = {}): Promise<void> {
  await tsftOutput(args, env);
}

/**
 * `tsft`, resolving to the command's stdout (to read what it logged, see `logged`).
 * @example const out = await tsftOutput(['sft', '--model', 'tiny', '--dataset', 'tsft/self-cognition']);
 */
export function tsftOutput(args: readonly string[], env: Record<string, string> = {}): Promise<string> {
  const child = launch(args, env);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; process.stdout.write(d); });
  child.stderr!.on('data', (d: Buffer) => { const t = stderrText(d); if (t) process.stderr.write(t); });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => (code === 0 ? resolve(out) : reject(new Error(`tsft ${args[0]} exited with ${signal ?? code}`))));
  });
}

/** The last `key: value` line a tsft command logged (e.g. `last_model_checkpoint`). */
export function logged(output: string, key: string): string {
  const m = [...output.matchAll(new RegExp(`${key}: (\\S+)`, 'g'))].pop();
  if (!m) throw new Error(`the output has no "${key}: …" line`);
  return m[1];
}

/** `preferred` when it is free on 127.0.0.1, else a free port the system picks. */
export function freePort(preferred: number): Promise<number> {
  const tryPort = (port: number) => new Promise<number | null>((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(null));
    srv.listen(port, '127.0.0.1', () => {
      const actual = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(actual));
    });
  });
  return tryPort(preferred).then((p) => p ?? tryPort(0).then((q) => q!));
}

export interface RunningTsft {
  /** where it listens, e.g. http://127.0.0.1:7860 */
  url: string;
  /** SIGTERM (the server shuts down cleanly), SIGKILL after 15 s; resolves once it has exited */
  stop(): Promise<void>;
}

/**
 * Start a server command (`tsft deploy ...` / `tsft web-ui ...`) and resolve once it listens. Its log goes
 * to this cell until it is ready; later lines are dropped (a later cell has its own output).
 * @example const webui = await tsftServer(['web-ui', '--model', ckpt, '--port', '7860']); ...; await webui.stop();
 */
export function tsftServer(args: readonly string[], env: Record<string, string> = {}): Promise<RunningTsft> {
  const child = launch(args, env);
  let ready = false, log = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
  };
  return new Promise((resolve, reject) => {
    const onData = (stream: NodeJS.WriteStream) => (d: Buffer) => {
      if (ready) return;
      const t = stream === process.stderr ? stderrText(d) : d.toString();
      log += t;
      if (t) stream.write(t);
      const m = /\bon (https?:\/\/[\w.:[\]-]+)/.exec(log);
      if (m) {
        ready = true;
        resolve({ url: m[1], stop });
      }
    };
    child.stdout!.on('data', onData(process.stdout));
    child.stderr!.on('data', onData(process.stderr));
    child.on('error', reject);
    child.on('exit', (code, signal) => { if (!ready) reject(new Error(`tsft ${args[0]} exited with ${signal ?? code} before listening`)); });
  });
}

// Hub downloads: ModelScope by default (as ms-swift), Hugging Face with `useHf`. Lists a repo's files
// through the hub's API, downloads each into the same cache folders the Python libraries use (so a cache
// filled by `huggingface_hub` / `modelscope` is found, offline too), resumes interrupted files with HTTP
// Range, retries transient failures, and shows one progress bar per snapshot.
//
// Environment (read at call time):
//   Hugging Face  HF_ENDPOINT (default https://huggingface.co), HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE >
//                 HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub > ~/.cache/huggingface/hub,
//                 HF_TOKEN (or the token file HF_TOKEN_PATH / HF_HOME/token that `hf auth login` writes),
//                 HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1): cache only.
//   Both          USE_HF=1 makes Hugging Face the default (as in ms-swift); `useHf` overrides it.
//   ModelScope    MODELSCOPE_ENDPOINT (full URL, modelscope_hub) or MODELSCOPE_DOMAIN (bare domain gets
//                 https://; older modelscope), default https://www.modelscope.cn; MODELSCOPE_CACHE (default
//                 ~/.cache/modelscope/hub); MODELSCOPE_API_TOKEN; MODELSCOPE_OFFLINE=1: cache only.
//
// Cache layout:
//   Hugging Face  {hub cache}/models--{org}--{name}/snapshots/{commit}/{path} and refs/{revision} -> commit
//                 (datasets--…). Simplified: files are written straight into the snapshot folder, with no
//                 blobs/ + symlinks (huggingface_hub does the same where symlinks are unavailable, and reads
//                 such folders). refs/{revision} is written only once every file is in place.
//   ModelScope    {MODELSCOPE_CACHE}/models/{org}/{name, '.' -> '___'}/{path} (datasets/…), the layout of
//                 modelscope <= 1.37. Also found (and reused) when present: modelscope_hub's
//                 {~/.cache/modelscope or MODELSCOPE_CACHE}/models/{org}--{name}/snapshots/{revision}, and
//                 the old {cache}/{org}/{name}.
// A file is downloaded to `{path}.incomplete` and renamed when its size (and, on ModelScope, its sha256)
// checks out. Files are fetched one after the other; two processes downloading the same repo at once are
// not coordinated.

import * as crypto from 'crypto';
import * as fs from 'fs';
import * as fsp from 'fs/promises';
import * as os from 'os';
import * as path from 'path';
import * as cliProgressNs from 'cli-progress';
import { CheckpointError, HubError } from '../errors';

// cli-progress is CommonJS: under ESM its exports sit on `default`, under CommonJS on the namespace itself
const cliProgress = ((cliProgressNs as unknown as { default?: typeof cliProgressNs }).default ?? cliProgressNs);

export type RepoType = 'model' | 'dataset';

/** Reported while a snapshot downloads (bytes of files already cached count as done). */
export interface DownloadProgress {
  repoId: string;
  file: string;          // path inside the repo
  fileBytes: number;     // bytes of this file on disk so far
  fileTotal: number;     // its size (0 when unknown)
  bytes: number;         // bytes of the snapshot on disk so far
  totalBytes: number;    // the snapshot's size (files of unknown size count as 0)
  filesDone: number;
  filesTotal: number;
}

export interface SnapshotDownloadOptions {
  useHf?: boolean;                 // Hugging Face instead of ModelScope (default: env USE_HF, as ms-swift)
  repoType?: RepoType;             // default 'model'
  revision?: string;               // default 'main' (HF) / 'master' (ModelScope)
  cacheDir?: string;               // replaces the hub cache root (HF_HUB_CACHE / MODELSCOPE_CACHE)
  allowPatterns?: string[];        // fnmatch globs, as huggingface_hub: `*.json`, `*.safetensors`
  ignorePatterns?: string[];
  endpoint?: string;               // replaces HF_ENDPOINT / MODELSCOPE_ENDPOINT
  token?: string;                  // replaces HF_TOKEN / MODELSCOPE_API_TOKEN
  offline?: boolean;               // cache only (also HF_HUB_OFFLINE / MODELSCOPE_OFFLINE)
  quiet?: boolean;                 // no progress output
  onProgress?: (p: DownloadProgress) => void;
  retries?: number;                // retries per request on transient errors (default 4)
  retryDelayMs?: number;           // first backoff, doubled each retry, capped at 8 s (default 1000)
  timeoutMs?: number;              // abort a request when no byte arrives for this long (default 60000)
}

const HF_DEFAULT_ENDPOINT = 'https://huggingface.co';
const MS_DEFAULT_ENDPOINT = 'https://www.modelscope.cn';
const COMMIT_HASH = /^[0-9a-f]{40}$/;

function envTrue(name: string): boolean {
  return ['1', 'ON', 'YES', 'TRUE'].includes((process.env[name] ?? '').trim().toUpperCase());
}

function useHfOf(opts: { useHf?: boolean }): boolean {
  return opts.useHf ?? envTrue('USE_HF');
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') || p.startsWith('~\\') ? path.join(os.homedir(), p.slice(1)) : p;
}

function hubName(useHf?: boolean): string {
  return useHf ? 'Hugging Face' : 'ModelScope';
}

/** The endpoint used for a hub: HF_ENDPOINT, or MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN. */
export function hubEndpoint(useHf?: boolean): string {
  if (useHfOf({ useHf })) return (process.env.HF_ENDPOINT || HF_DEFAULT_ENDPOINT).trim().replace(/\/+$/, '');
  let ep = (process.env.MODELSCOPE_ENDPOINT || process.env.MODELSCOPE_DOMAIN || '').trim();
  if (!ep) return MS_DEFAULT_ENDPOINT;
  if (!/^https?:\/\//.test(ep)) ep = `https://${ep}`;
  return ep.replace(/\/+$/, '');
}

/** The cache root of a hub: huggingface_hub's HF_HUB_CACHE, or modelscope's MODELSCOPE_CACHE. */
export function hubCacheDir(opts: { useHf?: boolean; cacheDir?: string } = {}): string {
  if (opts.cacheDir) return path.resolve(expandHome(opts.cacheDir));
  const env = process.env;
  if (useHfOf(opts)) {
    const explicit = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE;
    if (explicit) return path.resolve(expandHome(explicit));
    const home = env.HF_HOME || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'huggingface');
    return path.resolve(expandHome(home), 'hub');
  }
  return path.resolve(expandHome(env.MODELSCOPE_CACHE || path.join(os.homedir(), '.cache', 'modelscope', 'hub')));
}

function hfToken(opts: SnapshotDownloadOptions): string | undefined {
  if (opts.token) return opts.token;
  const env = process.env;
  const t = env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN;
  if (t) return t.trim();
  const home = env.HF_HOME || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'huggingface');
  const file = env.HF_TOKEN_PATH || path.join(expandHome(home), 'token');
  try {
    return fs.readFileSync(file, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

function splitRepoId(repoId: string, hub: string): [string, string] {
  const m = /^([\w.-]+)\/([\w.-]+)$/.exec(repoId);
  if (!m || m[1].startsWith('.') || m[2].startsWith('.')) {
    throw new HubError(`"${repoId}" is not a ${hub} repo id: expected "org/name" (e.g. Qwen/Qwen3-0.6B).`);
  }
  return [m[1], m[2]];
}

/** huggingface_hub's repo folder: `models--Qwen--Qwen3-0.6B`. */
function hfRepoFolder(cache: string, repoId: string, repoType: RepoType): string {
  return path.join(cache, `${repoType}s--${repoId.split('/').join('--')}`);
}

function isNonEmptyDir(dir: string): boolean {
  try {
    return fs.statSync(dir).isDirectory() && fs.readdirSync(dir).length > 0;
  } catch {
    return false;
  }
}

function hasIncompleteFiles(dir: string): boolean {
  const stack = [dir];
  while (stack.length) {
    const d = stack.pop()!;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) stack.push(path.join(d, e.name));
      else if (e.name.endsWith('.incomplete')) return true;
    }
  }
  return false;
}

/** ModelScope folders that may hold the repo, in order; the first is where tsft writes. */
function modelscopeCandidates(repoId: string, repoType: RepoType, revision: string, cacheDir?: string): string[] {
  const [org, name] = splitRepoId(repoId, 'ModelScope');
  const root = hubCacheDir({ useHf: false, cacheDir });
  const seg = `${repoType}s`;
  const newRoot = cacheDir ? root : path.resolve(expandHome(process.env.MODELSCOPE_CACHE || path.join(os.homedir(), '.cache', 'modelscope')));
  const list = [
    path.join(root, seg, org, name.replace(/\./g, '___')),     // modelscope <= 1.37
    path.join(root, seg, org, name),
    path.join(newRoot, seg, `${org}--${name}`, 'snapshots', revision),   // modelscope_hub (2026)
    path.join(root, org, name),                                 // older modelscope, and cache_dir= callers
  ];
  return [...new Set(list)];
}

/**
 * The cached snapshot folder of a repo, if one is on disk and has no unfinished files; no network.
 * Hugging Face: refs/{revision} (or a commit-hash revision) -> snapshots/{commit}.
 */
export function findCachedSnapshot(repoId: string, opts: SnapshotDownloadOptions = {}): string | undefined {
  const repoType = opts.repoType ?? 'model';
  if (useHfOf(opts)) {
    splitRepoId(repoId, 'Hugging Face');
    const revision = opts.revision ?? 'main';
    const folder = hfRepoFolder(hubCacheDir({ useHf: true, cacheDir: opts.cacheDir }), repoId, repoType);
    let commit: string | undefined = COMMIT_HASH.test(revision) ? revision : undefined;
    if (!commit) {
      try {
        commit = fs.readFileSync(path.join(folder, 'refs', revision), 'utf8').trim();
      } catch {
        return undefined;
      }
    }
    const snap = path.join(folder, 'snapshots', commit);
    return isNonEmptyDir(snap) && !hasIncompleteFiles(snap) ? snap : undefined;
  }
  const revision = opts.revision ?? 'master';
  for (const dir of modelscopeCandidates(repoId, repoType, revision, opts.cacheDir)) {
    if (isNonEmptyDir(dir)) return hasIncompleteFiles(dir) ? undefined : dir;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------------

/** A failure worth retrying (connection reset, timeout, 5xx, 429). */
class TransientError extends Error {
  constructor(message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}

/** An HTTP status that ends the download (404, 401, ...). */
class StatusError extends Error {
  constructor(readonly status: number, readonly url: string, readonly errorCode: string, readonly detail: string, what?: string) {
    super(`${url} ${what ?? `answered ${status}`}${errorCode ? ` (${errorCode})` : ''}${detail ? `: ${detail}` : ''}`);
  }
}

const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'EAI_FAIL', 'ENETDOWN']);

function errorDetail(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  if (err?.name === 'AbortError' || err?.name === 'TimeoutError') return 'timed out';
  const cause = err?.cause;
  if (cause && (cause.code || cause.message)) {
    const c = cause.code && !(cause.message ?? '').includes(cause.code) ? `${cause.code} ${cause.message ?? ''}` : cause.message ?? cause.code;
    return `${err.message}: ${String(c).trim()}`;
  }
  return String(err?.message ?? e);
}

function isConnectError(e: unknown): boolean {
  const cause = (e as { cause?: { code?: string; errors?: { code?: string }[] } })?.cause;
  const code = cause?.code ?? cause?.errors?.[0]?.code;   // AggregateError when several addresses were tried
  return code !== undefined && CONNECT_ERRORS.has(code);
}

interface Ctx {
  repoId: string;
  useHf: boolean;
  endpoint: string;
  headers: Record<string, string>;
  retries: number;
  retryDelayMs: number;
  timeoutMs: number;
}

/** GET with an idle timeout: `touch()` re-arms it while a body streams; `done()` clears it. */
async function get(url: string, headers: Record<string, string>, timeoutMs: number) {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const touch = () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => controller.abort(), timeoutMs);
  };
  const done = () => { if (timer) clearTimeout(timer); };
  touch();
  try {
    const res = await fetch(url, { headers, signal: controller.signal, redirect: 'follow' });
    return { res, touch, done };
  } catch (e) {
    done();
    throw e;
  }
}

async function throwForStatus(res: Response, url: string): Promise<void> {
  if (res.ok) return;
  let detail = res.headers.get('x-error-message') ?? '';
  const errorCode = res.headers.get('x-error-code') ?? '';
  try {
    const text = (await res.text()).slice(0, 2000);
    if (!detail && text) {
      try {
        const j = JSON.parse(text) as { error?: string; Message?: string; message?: string };
        detail = j.error ?? j.Message ?? j.message ?? '';
      } catch {
        detail = text.slice(0, 200);
      }
    }
  } catch { /* body unreadable: the status says enough */ }
  if (res.status === 429 || res.status >= 500) {
    const ra = Number(res.headers.get('retry-after'));
    throw new TransientError(`${url} answered ${res.status}${detail ? `: ${detail}` : ''}`, ra > 0 ? Math.min(ra, 30) * 1000 : undefined);
  }
  throw new StatusError(res.status, url, errorCode, detail);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `fn` with retries on transient errors (not on connection refused: that means unreachable). */
async function withRetries<T>(ctx: Ctx, what: string, fn: () => Promise<T>, retryConnect = false): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const transient = e instanceof TransientError || (e instanceof TypeError) || (e as Error)?.name === 'AbortError';
      if (!transient || (!retryConnect && isConnectError(e))) throw e;
      if (attempt >= ctx.retries) {
        throw ctx.retries > 0 ? new TransientError(`${errorDetail(e)} (gave up after ${attempt + 1} attempts)`) : e;
      }
      const wait = (e as TransientError).retryAfterMs ?? Math.min(ctx.retryDelayMs * 2 ** attempt, 8000);
      if (process.env.TSFT_HUB_DEBUG) process.stderr.write(`[hub] ${what}: ${errorDetail(e)}; retry ${attempt + 1} in ${wait} ms\n`);
      await sleep(wait);
    }
  }
}

async function getJson(ctx: Ctx, url: string): Promise<{ json: unknown; res: Response }> {
  return withRetries(ctx, url, async () => {
    const { res, done } = await get(url, { ...ctx.headers, accept: 'application/json' }, ctx.timeoutMs);
    try {
      await throwForStatus(res, url);
      const text = await res.text();
      try {
        return { json: JSON.parse(text) as unknown, res };
      } catch {
        throw new StatusError(res.status, url, '', `not JSON: ${text.slice(0, 120)}`);
      }
    } finally {
      done();
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// listing
// ---------------------------------------------------------------------------------------------------

interface RemoteFile {
  path: string;
  size?: number;
  sha256?: string;   // verified after download (ModelScope lists it for every file)
  url: string;
}

interface Listing {
  files: RemoteFile[];
  folder: string;            // where the snapshot lives locally
  commit?: string;           // HF: the resolved commit
  refFile?: string;          // HF: refs/{revision}, written when complete
}

function encodePath(p: string): string {
  return p.split('/').map(encodeURIComponent).join('/');
}

function checkRepoPath(ctx: Ctx, p: string): void {
  if (!p || p.startsWith('/') || p.includes('\\') || p.split('/').some((s) => s === '..' || s === '')) {
    throw new HubError(`${hubName(ctx.useHf)} listed the file "${p}" for ${ctx.repoId}, which is not a safe relative path; refusing it.`);
  }
}

async function listHf(ctx: Ctx, opts: SnapshotDownloadOptions, repoType: RepoType, revision: string): Promise<Listing> {
  const api = `${ctx.endpoint}/api/${repoType}s/${ctx.repoId}`;
  const { json: info } = await getJson(ctx, `${api}/revision/${encodeURIComponent(revision)}`);
  const sha = (info as { sha?: unknown }).sha;
  if (typeof sha !== 'string' || !sha) throw new HubError(`${api}/revision/${revision} returned no commit sha: is ${ctx.endpoint} a Hugging Face hub (or mirror)?`);
  const siblings = ((info as { siblings?: { rfilename?: string }[] }).siblings ?? []).map((s) => s.rfilename).filter((s): s is string => !!s);
  const prefix = repoType === 'dataset' ? `${ctx.endpoint}/datasets/${ctx.repoId}` : `${ctx.endpoint}/${ctx.repoId}`;
  const url = (p: string) => `${prefix}/resolve/${encodeURIComponent(sha)}/${encodePath(p)}`;
  let files: RemoteFile[] | undefined;
  try {
    // the tree API gives sizes (huggingface_hub's list_repo_tree); it pages with a Link header
    files = [];
    let next: string | undefined = `${api}/tree/${encodeURIComponent(sha)}?recursive=true&expand=false`;
    while (next) {
      const { json, res } = await getJson(ctx, next);
      for (const e of json as { type?: string; path?: string; size?: number; lfs?: { size?: number } }[]) {
        if (e.type === 'file' && e.path) files.push({ path: e.path, size: e.lfs?.size ?? e.size, url: url(e.path) });
      }
      const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(res.headers.get('link') ?? '');
      next = link ? new URL(link[1], next).toString() : undefined;
    }
  } catch (e) {
    // mirrors without the tree API: fall back to the sibling names (sizes then come from Content-Length)
    if (!(e instanceof StatusError) || ![404, 405, 501].includes(e.status)) throw e;
    files = undefined;
  }
  files ??= siblings.map((p) => ({ path: p, url: url(p) }));
  const repoFolder = hfRepoFolder(hubCacheDir({ useHf: true, cacheDir: opts.cacheDir }), ctx.repoId, repoType);
  return {
    files,
    folder: path.join(repoFolder, 'snapshots', sha),
    commit: sha,
    refFile: revision !== sha ? path.join(repoFolder, 'refs', revision) : undefined,
  };
}

function msData(ctx: Ctx, url: string, json: unknown): unknown {
  const j = json as { Code?: number | string; Success?: boolean; Message?: string; Data?: unknown };
  if (j.Success === false || (j.Code !== undefined && Number(j.Code) !== 200 && Number(j.Code) !== 0)) {
    const msg = j.Message ?? 'request failed';
    const notFound = /not ?exist|not found|不存在/i.test(msg);
    throw new StatusError(notFound ? 404 : 400, url, String(j.Code ?? ''), msg, 'returned an error');
  }
  return j.Data;
}

function msFiles(data: unknown): { Path?: string; Name?: string; Type?: string; Size?: number | string; Sha256?: string }[] {
  if (Array.isArray(data)) return data;
  const d = data as { Files?: unknown; files?: unknown } | undefined;
  const f = d?.Files ?? d?.files;
  return Array.isArray(f) ? f : [];
}

async function listModelscope(ctx: Ctx, opts: SnapshotDownloadOptions, repoType: RepoType, revision: string): Promise<Listing> {
  const api = `${ctx.endpoint}/api/v1/${repoType}s/${ctx.repoId}`;
  const raw: ReturnType<typeof msFiles> = [];
  if (repoType === 'model') {
    const url = `${api}/repo/files?Revision=${encodeURIComponent(revision)}&Recursive=True`;
    raw.push(...msFiles(msData(ctx, url, (await getJson(ctx, url)).json)));
  } else {
    const pageSize = 200;
    for (let page = 1; ; page++) {
      const url = `${api}/repo/tree?Revision=${encodeURIComponent(revision)}&Recursive=True&PageNumber=${page}&PageSize=${pageSize}`;
      const got = msFiles(msData(ctx, url, (await getJson(ctx, url)).json));
      raw.push(...got);
      if (got.length < pageSize) break;
    }
  }
  const files: RemoteFile[] = [];
  for (const f of raw) {
    const p = f.Path ?? f.Name;
    if (!p || f.Type === 'tree' || p === '.gitignore' || p === '.gitattributes') continue;
    const size = f.Size === undefined || f.Size === '' ? undefined : Number(f.Size);
    files.push({
      path: p,
      size: Number.isFinite(size) ? size : undefined,
      sha256: f.Sha256 || undefined,
      url: `${api}/repo?Revision=${encodeURIComponent(revision)}&FilePath=${encodeURIComponent(p)}`,
    });
  }
  // reuse a folder an earlier download (this or the Python library) filled; else modelscope's layout
  const candidates = modelscopeCandidates(ctx.repoId, repoType, revision, opts.cacheDir);
  return { files, folder: candidates.find(isNonEmptyDir) ?? candidates[0] };
}

// ---------------------------------------------------------------------------------------------------
// patterns (fnmatch, as huggingface_hub's filter_repo_objects: `*` also crosses '/')
// ---------------------------------------------------------------------------------------------------

function globToRegExp(glob: string): RegExp {
  const g = glob.endsWith('/') ? `${glob}*` : glob;
  let re = '';
  for (let i = 0; i < g.length; i++) {
    const c = g[i];
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = g.indexOf(']', i + 2);
      if (end < 0) { re += '\\['; continue; }
      let cls = g.slice(i + 1, end).replace(/\\/g, '\\\\');
      if (cls.startsWith('!')) cls = `^${cls.slice(1)}`;
      re += `[${cls}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's');
}

function filterFiles(files: RemoteFile[], allow?: string[], ignore?: string[]): RemoteFile[] {
  const a = allow?.map(globToRegExp);
  const ig = ignore?.map(globToRegExp);
  return files.filter((f) => (!a || a.some((r) => r.test(f.path))) && !(ig && ig.some((r) => r.test(f.path))));
}

// ---------------------------------------------------------------------------------------------------
// one file: resumable download
// ---------------------------------------------------------------------------------------------------

async function sizeOf(file: string): Promise<number | undefined> {
  try {
    return (await fsp.stat(file)).size;
  } catch {
    return undefined;
  }
}

async function sha256Of(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 22 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Parses `bytes start-end/total`. */
function contentRange(v: string | null): { start: number; total?: number } | undefined {
  const m = /^bytes\s+(\d+)-\d+\/(\d+|\*)$/.exec((v ?? '').trim());
  return m ? { start: Number(m[1]), total: m[2] === '*' ? undefined : Number(m[2]) } : undefined;
}

/** Downloads `f` to `dest` through `dest.incomplete`, resuming what is there. */
async function downloadFile(ctx: Ctx, f: RemoteFile, dest: string, onBytes: (fileBytes: number, fileTotal: number) => void): Promise<void> {
  const tmp = `${dest}.incomplete`;
  await fsp.mkdir(path.dirname(dest), { recursive: true });
  let hashFailures = 0;
  await withRetries(ctx, f.path, async () => {
    let have = (await sizeOf(tmp)) ?? 0;
    if (f.size !== undefined && have > f.size) {
      await fsp.rm(tmp, { force: true });
      have = 0;
    }
    const headers: Record<string, string> = { ...ctx.headers, 'accept-encoding': 'identity' };
    if (have > 0) headers.range = `bytes=${have}-`;
    const { res, touch, done } = await get(f.url, headers, ctx.timeoutMs);
    let total: number | undefined;
    try {
      if (res.status === 416 && have > 0) {
        // nothing left to send: complete if the size is right, else start over
        await res.body?.cancel();
        if (f.size === undefined || have !== f.size) {
          await fsp.rm(tmp, { force: true });
          throw new TransientError(`${f.url}: range ${have}- not satisfiable; restarting the file`);
        }
        total = have;
      } else {
        await throwForStatus(res, f.url);
        let append = false;
        if (res.status === 206) {
          const cr = contentRange(res.headers.get('content-range'));
          if (cr && cr.start === have) {
            append = true;
            total = cr.total;
          } else {
            await res.body?.cancel();
            await fsp.rm(tmp, { force: true });
            throw new TransientError(`${f.url}: the server resumed at the wrong offset; restarting the file`);
          }
        } else {
          // 200: the whole file (a server that ignores Range restarts it)
          const len = res.headers.get('content-length');
          total = len !== null ? Number(len) : undefined;
          have = 0;
        }
        const fh = await fsp.open(tmp, append ? 'a' : 'w');
        try {
          onBytes(have, total ?? f.size ?? 0);
          if (res.body) {
            const reader = res.body.getReader();
            for (;;) {
              const { done: end, value } = await reader.read();
              if (end) break;
              touch();
              for (let off = 0; off < value.length;) off += (await fh.write(value, off)).bytesWritten;
              have += value.length;
              onBytes(have, total ?? f.size ?? 0);
            }
          }
        } finally {
          await fh.close();
        }
      }
    } catch (e) {
      if (e instanceof StatusError || e instanceof TransientError) throw e;
      if ((e as NodeJS.ErrnoException).syscall) {
        throw new HubError(`cannot write ${tmp} (${(e as Error).message}): check the disk space and permissions of the cache folder, or pass cacheDir.`);
      }
      throw new TransientError(`${f.path}: ${errorDetail(e)}`);   // dropped connection, timeout: resume
    } finally {
      done();
    }
    const got = (await sizeOf(tmp)) ?? 0;
    if (total !== undefined && got < total) throw new TransientError(`${f.path}: got ${got} of ${total} bytes`);
    const want = f.size ?? total;
    if (want !== undefined && got !== want) {
      await fsp.rm(tmp, { force: true });
      throw new HubError(
        `${f.path} of ${ctx.repoId} downloaded as ${got} bytes but ${hubName(ctx.useHf)} lists ${want}: the file changed on ` +
        `the hub or a proxy altered it. Run the download again.`);
    }
    if (f.sha256) {
      const digest = await sha256Of(tmp);
      if (digest !== f.sha256.toLowerCase()) {
        await fsp.rm(tmp, { force: true });
        if (++hashFailures > 1) {
          throw new HubError(`${f.path} of ${ctx.repoId}: sha256 ${digest} does not match ${f.sha256} twice in a row. Check your network or proxy.`);
        }
        throw new TransientError(`${f.path}: sha256 mismatch; downloading it again`);
      }
    }
    await fsp.rename(tmp, dest);
  }, true);
}

// ---------------------------------------------------------------------------------------------------
// progress
// ---------------------------------------------------------------------------------------------------

function human(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

interface Reporter {
  file(name: string, fileBytes: number, fileTotal: number): void;
  fileDone(name: string, bytes: number, seconds: number): void;
  stop(): void;
}

function makeReporter(repoId: string, totalBytes: number, quiet: boolean): Reporter {
  const tty = !quiet && process.stderr.isTTY === true;
  const start = Date.now();
  let bar: InstanceType<typeof cliProgress.SingleBar> | undefined;
  if (tty) {
    bar = new cliProgress.SingleBar({
      format: `${repoId} |{bar}| {percentage}% | {done}/{all} | {rate} | ETA {eta_formatted} | {file}`,
      stream: process.stderr,
      hideCursor: true,
      etaBuffer: 50,
      fps: 5,
    }, cliProgress.Presets.shades_classic);
    bar.start(Math.max(totalBytes, 1), 0, { done: human(0), all: human(totalBytes), rate: '-', file: '' });
  }
  return {
    file(name, bytes) {
      if (!bar) return;
      const s = (Date.now() - start) / 1000;
      const value = Math.min(bytes, Math.max(totalBytes, 1));
      bar.update(value, { done: human(bytes), all: human(totalBytes), rate: s > 0 ? `${human(bytes / s)}/s` : '-', file: name });
    },
    fileDone(name, bytes, seconds) {
      if (quiet || tty) return;
      process.stderr.write(`[INFO:tsft] ${repoId}: ${name} (${human(bytes)}) in ${seconds.toFixed(1)} s\n`);
    },
    stop() {
      bar?.stop();
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// snapshot
// ---------------------------------------------------------------------------------------------------

function advice(ctx: Ctx): string {
  return ctx.useHf
    ? `set HF_ENDPOINT to a reachable mirror (e.g. https://hf-mirror.com), drop useHf to use ModelScope, or download ` +
      `it elsewhere (\`hf download ${ctx.repoId}\`) and pass the local folder`
    : `set MODELSCOPE_ENDPOINT to a reachable endpoint, pass useHf to use Hugging Face, or download it elsewhere ` +
      `(\`modelscope download --model ${ctx.repoId}\`) and pass the local folder`;
}

function toHubError(ctx: Ctx, e: unknown, revision: string): HubError {
  if (e instanceof HubError) return e;
  const hub = hubName(ctx.useHf);
  if (e instanceof StatusError) {
    const tokenVar = ctx.useHf ? 'HF_TOKEN (or run `hf auth login`)' : 'MODELSCOPE_API_TOKEN';
    if (e.errorCode === 'GatedRepo') {
      return new HubError(`${ctx.repoId} is gated on ${hub} (${e.message}): accept its license on the model page, then set ${tokenVar}.`);
    }
    if (e.errorCode === 'RevisionNotFound') {
      return new HubError(`revision "${revision}" of ${ctx.repoId} was not found on ${hub} (${e.url}): check the branch, tag or commit.`);
    }
    if (e.status === 404 || e.errorCode === 'RepoNotFound' || e.errorCode === 'EntryNotFound') {
      return new HubError(
        `${ctx.repoId} (revision "${revision}") was not found on ${hub} at ${ctx.endpoint} (${e.message}): check the id ` +
        `(org/name, case-sensitive)${ctx.useHf ? ', drop useHf to look on ModelScope' : ', or pass useHf to look on Hugging Face'}` +
        `; if the repo is private, set ${tokenVar}.`);
    }
    if (e.status === 401 || e.status === 403) {
      return new HubError(
        `${hub} refused ${ctx.repoId} (${e.message}): the repo is private or gated, or the token is wrong. Set ${tokenVar} ` +
        `to a token with read access.`);
    }
    return new HubError(`${hub} request for ${ctx.repoId} failed (${e.message}); ${advice(ctx)}.`);
  }
  if (e instanceof TransientError) {
    return new HubError(
      `downloading ${ctx.repoId} from ${hub} at ${ctx.endpoint} failed: ${e.message}. Run again to resume (finished ` +
      `files and partial .incomplete files are kept); if it keeps failing, ${advice(ctx)}.`);
  }
  return new HubError(
    `cannot download ${ctx.repoId} from ${hub} at ${ctx.endpoint} (${errorDetail(e)}). Check the network, or ${advice(ctx)}.`);
}

/**
 * Downloads a repo snapshot (or finds it in the cache) and returns its local folder.
 * ModelScope unless `useHf`. Files already complete on disk are not fetched again; an interrupted file
 * resumes. Offline (`offline`, HF_HUB_OFFLINE, MODELSCOPE_OFFLINE) or with the hub unreachable, a cached
 * snapshot is used; without one a HubError says what to do.
 * @example
 *   const dir = await snapshotDownload('Qwen/Qwen3-0.6B');                       // ModelScope
 *   const dir2 = await snapshotDownload('Qwen/Qwen3-0.6B', { useHf: true, allowPatterns: ['*.json', '*.safetensors'] });
 */
export async function snapshotDownload(repoId: string, opts: SnapshotDownloadOptions = {}): Promise<string> {
  const useHf = useHfOf(opts);
  const hub = hubName(useHf);
  splitRepoId(repoId, hub);
  const repoType = opts.repoType ?? 'model';
  if (repoType !== 'model' && repoType !== 'dataset') throw new HubError(`repoType must be 'model' or 'dataset', got "${repoType}".`);
  const revision = opts.revision ?? (useHf ? 'main' : 'master');
  const endpoint = (opts.endpoint ?? hubEndpoint(useHf)).replace(/\/+$/, '');
  const offlineVar = useHf ? (envTrue('HF_HUB_OFFLINE') ? 'HF_HUB_OFFLINE' : envTrue('TRANSFORMERS_OFFLINE') ? 'TRANSFORMERS_OFFLINE' : '')
    : (envTrue('MODELSCOPE_OFFLINE') ? 'MODELSCOPE_OFFLINE' : '');
  const quiet = opts.quiet ?? false;

  if (opts.offline || offlineVar) {
    const cached = findCachedSnapshot(repoId, { ...opts, useHf, repoType, revision });
    if (cached) return cached;
    const why = opts.offline ? 'offline was requested' : `${offlineVar} is set`;
    throw new HubError(
      `${why} and ${repoId} (revision "${revision}") is not in the ${hub} cache under ${hubCacheDir({ useHf, cacheDir: opts.cacheDir })}` +
      ` (or its download is unfinished). Go online${offlineVar ? ` (unset ${offlineVar})` : ''} to download it, or download it ` +
      `elsewhere and pass the local folder.`);
  }

  const headers: Record<string, string> = { 'user-agent': 'tsft/0.1 (node)' };
  const token = useHf ? hfToken(opts) : (opts.token ?? process.env.MODELSCOPE_API_TOKEN);
  if (token) {
    headers.authorization = `Bearer ${token}`;
    if (!useHf) headers.cookie = `m_session_id=${token}`;   // ModelScope's legacy API authenticates by cookie
  }
  const ctx: Ctx = {
    repoId, useHf, endpoint, headers,
    retries: opts.retries ?? 4,
    retryDelayMs: opts.retryDelayMs ?? 1000,
    timeoutMs: opts.timeoutMs ?? 60_000,
  };

  let listing: Listing;
  try {
    listing = useHf ? await listHf(ctx, opts, repoType, revision) : await listModelscope(ctx, opts, repoType, revision);
  } catch (e) {
    const err = toHubError(ctx, e, revision);
    // unreachable hub or server trouble (not "not found"/"denied"): fall back to the cache, as huggingface_hub does
    const fatal = e instanceof StatusError && e.status < 500 && e.status !== 429;
    if (!fatal) {
      const cached = findCachedSnapshot(repoId, { ...opts, useHf, repoType, revision });
      if (cached) {
        if (!quiet) process.stderr.write(`[WARNING:tsft] ${err.message}\n[WARNING:tsft] using the cached snapshot ${cached}\n`);
        return cached;
      }
    }
    throw err;
  }

  for (const f of listing.files) checkRepoPath(ctx, f.path);
  const files = filterFiles(listing.files, opts.allowPatterns, opts.ignorePatterns);
  if (files.length === 0) {
    const why = listing.files.length === 0 ? 'lists no files' : `has no file matching ${JSON.stringify(opts.allowPatterns ?? [])}`;
    throw new HubError(`${repoId} (revision "${revision}") on ${hub} ${why}: check the id, revision and allowPatterns.`);
  }

  // what is already complete on disk (a file of the right size; size unknown: present)
  const todo: RemoteFile[] = [];
  let doneBytes = 0;
  let totalBytes = 0;
  for (const f of files) {
    totalBytes += f.size ?? 0;
    const s = await sizeOf(path.join(listing.folder, f.path));
    if (s !== undefined && (f.size === undefined || s === f.size)) doneBytes += s;
    else todo.push(f);
  }

  if (todo.length > 0) {
    const reporter = makeReporter(repoId, totalBytes, quiet);
    let filesDone = files.length - todo.length;
    let current = '';
    try {
      for (const f of todo) {
        current = f.path;
        const t0 = Date.now();
        let last = 0;
        await downloadFile(ctx, f, path.join(listing.folder, f.path), (fileBytes, fileTotal) => {
          last = fileBytes;
          reporter.file(f.path, doneBytes + fileBytes, fileTotal);
          opts.onProgress?.({
            repoId, file: f.path, fileBytes, fileTotal, bytes: doneBytes + fileBytes, totalBytes, filesDone, filesTotal: files.length,
          });
        });
        doneBytes += last;
        filesDone++;
        reporter.fileDone(f.path, last, (Date.now() - t0) / 1000);
      }
    } catch (e) {
      if (e instanceof StatusError && e.status === 404) {
        throw new HubError(`${hub} listed ${current} in ${repoId} but ${e.message}: the repo changed during the download; run it again.`);
      }
      throw toHubError(ctx, e, revision);
    } finally {
      reporter.stop();
    }
  }
  if (listing.refFile && listing.commit) {
    // written last: offline lookups resolve the revision only once the snapshot is complete
    await fsp.mkdir(path.dirname(listing.refFile), { recursive: true });
    await fsp.writeFile(listing.refFile, listing.commit);
  }
  return listing.folder;
}

/**
 * A local folder for `pathOrId`: an existing path wins; otherwise an `org/name` hub id is downloaded
 * (or found in the cache) with {@link snapshotDownload}.
 * @example
 *   const dir = await resolveLocalOrHub('Qwen/Qwen3-0.6B', { useHf: true });
 *   const dir2 = await resolveLocalOrHub('./output/checkpoint-100');
 */
export async function resolveLocalOrHub(pathOrId: string, opts: SnapshotDownloadOptions = {}): Promise<string> {
  const local = expandHome(pathOrId);
  if (fs.existsSync(local)) return path.resolve(local);
  const looksLocal = /^(\.{1,2}|~)?[\\/]/.test(pathOrId) || /^[a-zA-Z]:[\\/]/.test(pathOrId) || pathOrId.split('/').length !== 2;
  if (looksLocal) {
    throw new CheckpointError(
      `${pathOrId}: no such file or folder, and it is not a hub id (org/name). Check the path, or pass a hub id such as Qwen/Qwen3-0.6B.`);
  }
  return snapshotDownload(pathOrId, opts);
}

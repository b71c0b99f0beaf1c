// Hub downloads against a loopback server that speaks the subset of the Hugging Face and ModelScope APIs
// tsft calls (listing + file download with Range). No real hub is reached.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';
import { AddressInfo } from 'net';
import {
  snapshotDownload, resolveLocalOrHub, findCachedSnapshot, hubCacheDir, hubEndpoint, SnapshotDownloadOptions,
} from '../src/model/hub';
import { HubError, CheckpointError } from '../src/errors';

const SHA = 'a'.repeat(40);
const rand = (n: number, seed: number) => {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24; }
  return b;
};
const FILES: Record<string, Buffer> = {
  'config.json': Buffer.from('{"model_type": "qwen3"}\n'),
  'model.safetensors': rand(300_000, 1),
  'tokenizer/tokenizer.json': Buffer.from('{"version": "1.0"}'),
  'README.md': Buffer.from('# tiny\n'),
};
const BIG = 'model.safetensors';

// ---------------------------------------------------------------------------------------------------
// the fake hub
// ---------------------------------------------------------------------------------------------------

interface Req { url: string; range?: string; auth?: string; cookie?: string }
const state = {
  log: [] as Req[],
  dropOnce: new Set<string>(),      // paths whose next full download dies after 100 kB
  dropAlways: new Set<string>(),
  ignoreRange: false,               // answer 200 to Range requests
  busyOnce: new Set<string>(),      // paths whose next request gets a 503
  gone: new Set<string>(),          // paths listed but answering 404
};
const REPOS = new Set(['org/tiny', 'org/tiny-1.5B', 'org/data']);
const downloads = () => state.log.filter((r) => /\/resolve\/|\/repo\?/.test(r.url));

function sendFile(req: http.IncomingMessage, res: http.ServerResponse, rel: string): void {
  const data = state.gone.has(rel) ? undefined : FILES[rel];
  if (state.busyOnce.delete(rel)) { res.writeHead(503, { 'retry-after': '0' }); res.end('busy'); return; }
  if (!data) { res.writeHead(404, { 'x-error-code': 'EntryNotFound' }); res.end(); return; }
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m && !state.ignoreRange) {
    const start = Number(m[1]);
    if (start >= data.length) {
      res.writeHead(416, { 'content-range': `bytes */${data.length}` });
      res.end();
      return;
    }
    res.writeHead(206, { 'content-range': `bytes ${start}-${data.length - 1}/${data.length}`, 'content-length': data.length - start });
    res.end(data.subarray(start));
    return;
  }
  res.writeHead(200, { 'content-length': data.length, 'content-type': 'application/octet-stream' });
  if (state.dropAlways.has(rel) || state.dropOnce.delete(rel)) {
    res.write(data.subarray(0, 100_000), () => res.socket?.destroy());
    return;
  }
  res.end(data);
}

const json = (res: http.ServerResponse, body: unknown, headers: http.OutgoingHttpHeaders = {}) => {
  res.writeHead(200, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
};

function handle(req: http.IncomingMessage, res: http.ServerResponse, port: number): void {
  const u = new URL(req.url!, `http://127.0.0.1:${port}`);
  state.log.push({ url: req.url!, range: req.headers.range, auth: req.headers.authorization, cookie: req.headers.cookie });
  const p = decodeURIComponent(u.pathname);
  let m: RegExpExecArray | null;
  // Hugging Face: /api/{models,datasets}/{id}/revision/{rev}
  if ((m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(p))) {
    if (m[2] === 'org/private') { res.writeHead(401, { 'x-error-message': 'Invalid credentials' }); res.end(); return; }
    if (!REPOS.has(m[2])) {
      res.writeHead(401, { 'x-error-code': 'RepoNotFound', 'x-error-message': 'Repository not found' });
      res.end();
      return;
    }
    if (m[3] !== 'main' && m[3] !== SHA) { res.writeHead(404, { 'x-error-code': 'RevisionNotFound' }); res.end(); return; }
    json(res, { id: m[2], sha: SHA, siblings: Object.keys(FILES).map((rfilename) => ({ rfilename })) });
    return;
  }
  // Hugging Face tree, two entries a page (Link: rel="next")
  if ((m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/tree\/([0-9a-f]{40})$/.exec(p))) {
    assert.equal(u.searchParams.get('recursive'), 'true');
    const all = [
      { type: 'directory', oid: 'x', size: 0, path: 'tokenizer' },
      ...Object.entries(FILES).map(([path, d]) => (path === BIG
        ? { type: 'file', oid: 'y', size: 134, path, lfs: { oid: 'z', size: d.length, pointerSize: 134 } }
        : { type: 'file', oid: 'y', size: d.length, path })),
    ];
    const cursor = Number(u.searchParams.get('cursor') ?? 0);
    const headers: http.OutgoingHttpHeaders = {};
    if (cursor + 2 < all.length) headers.link = `<${u.pathname}?recursive=true&expand=false&cursor=${cursor + 2}>; rel="next"`;
    json(res, all.slice(cursor, cursor + 2), headers);
    return;
  }
  // Hugging Face download: /{id}/resolve/{rev}/{path}, /datasets/{id}/resolve/...
  if ((m = /^(?:\/datasets)?\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(p))) {
    sendFile(req, res, m[3]);
    return;
  }
  // ModelScope listing: /api/v1/models/{id}/repo/files, /api/v1/datasets/{id}/repo/tree (paged)
  if ((m = /^\/api\/v1\/(models|datasets)\/([^/]+\/[^/]+)\/repo\/(files|tree)$/.exec(p))) {
    if (!REPOS.has(m[2])) { json(res, { Code: 10010205, Message: `Model ${m[2]} not exists`, Success: false }); return; }
    const files = [
      { Name: 'tokenizer', Path: 'tokenizer', Type: 'tree', Size: 0 },
      ...Object.entries(FILES).map(([p2, d]) => ({
        Name: path.basename(p2), Path: p2, Type: 'blob', Size: d.length, Revision: 'c0ffee',
        Sha256: crypto.createHash('sha256').update(d).digest('hex'),
      })),
    ];
    if (m[3] === 'tree') {
      const size = Number(u.searchParams.get('PageSize'));
      const page = Number(u.searchParams.get('PageNumber'));
      json(res, { Code: 200, Data: { Files: files.slice((page - 1) * size, page * size) }, Success: true });
    } else {
      assert.equal(u.searchParams.get('Recursive'), 'True');
      json(res, { Code: 200, Data: { Files: files }, Success: true });
    }
    return;
  }
  // ModelScope download: /api/v1/{models,datasets}/{id}/repo?Revision=&FilePath=
  if ((m = /^\/api\/v1\/(models|datasets)\/([^/]+\/[^/]+)\/repo$/.exec(p))) {
    sendFile(req, res, u.searchParams.get('FilePath')!);
    return;
  }
  res.writeHead(404);
  res.end();
}

let server: http.Server;
let endpoint = '';
let tmp = '';
const savedEnv = { ...process.env };
const fast: SnapshotDownloadOptions = { quiet: true, retryDelayMs: 5, timeoutMs: 5000 };

before(async () => {
  server = http.createServer((req, res) => handle(req, res, (server.address() as AddressInfo).port));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsft-hub-'));
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  fs.rmSync(tmp, { recursive: true, force: true });
  process.env = savedEnv;
});

let n = 0;
beforeEach(() => {
  // a fresh cache and a clean environment for every test
  for (const k of Object.keys(process.env)) if (/^(HF_|HUGGING|MODELSCOPE_|TRANSFORMERS_OFFLINE|USE_HF)/.test(k)) delete process.env[k];
  process.env.HF_ENDPOINT = endpoint;
  process.env.MODELSCOPE_ENDPOINT = endpoint;
  process.env.HF_HOME = path.join(tmp, `hf-home-${n}`);            // no token file from the real home
  process.env.HF_HUB_CACHE = path.join(tmp, `hf-${n}`);
  process.env.MODELSCOPE_CACHE = path.join(tmp, `ms-${n}`);
  n++;
  state.log = [];
  state.dropOnce.clear();
  state.dropAlways.clear();
  state.ignoreRange = false;
  state.busyOnce.clear();
  state.gone.clear();
});

function assertSameFiles(dir: string, names = Object.keys(FILES)): void {
  for (const name of names) assert.deepEqual(fs.readFileSync(path.join(dir, name)), FILES[name], name);
}

async function rejectsWith(p: Promise<unknown>, cls: typeof HubError | typeof CheckpointError, ...parts: string[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`);
    for (const part of parts) assert.ok(e.message.includes(part), `"${e.message}" lacks "${part}"`);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------

test('Hugging Face: full download into the huggingface_hub layout, then a cache hit', async () => {
  const progress: number[] = [];
  const dir = await snapshotDownload('org/tiny', { ...fast, useHf: true, onProgress: (p) => progress.push(p.bytes) });
  assert.equal(dir, path.join(process.env.HF_HUB_CACHE!, 'models--org--tiny', 'snapshots', SHA));
  assertSameFiles(dir);
  assert.equal(fs.readFileSync(path.join(process.env.HF_HUB_CACHE!, 'models--org--tiny', 'refs', 'main'), 'utf8'), SHA);
  assert.ok(state.log.some((r) => r.url.includes('cursor=2')), 'followed the tree pagination');
  assert.ok(downloads().every((r) => r.url.includes(`/resolve/${SHA}/`)), 'downloads pin the commit');
  const total = Object.values(FILES).reduce((a, b) => a + b.length, 0);
  assert.equal(progress[progress.length - 1], total);

  state.log = [];
  assert.equal(await snapshotDownload('org/tiny', { ...fast, useHf: true }), dir);
  assert.equal(downloads().length, 0, 'second call downloads nothing');
  assert.equal(findCachedSnapshot('org/tiny', { useHf: true }), dir);
  process.env.USE_HF = '1';   // ms-swift's switch
  assert.equal(await snapshotDownload('org/tiny', fast), dir);
  assert.equal(findCachedSnapshot('org/tiny'), dir);
  assert.equal(downloads().length, 0);
});

test('ModelScope (default): full download into modelscope\'s layout, sha256 checked, then a cache hit', async () => {
  const dir = await snapshotDownload('org/tiny-1.5B', fast);
  assert.equal(dir, path.join(process.env.MODELSCOPE_CACHE!, 'models', 'org', 'tiny-1___5B'));
  assertSameFiles(dir);
  const dl = downloads();
  assert.equal(dl.length, Object.keys(FILES).length);
  assert.ok(dl.every((r) => /Revision=master&FilePath=/.test(r.url)));
  assert.ok(!fs.readdirSync(dir, { recursive: true }).some((f) => String(f).endsWith('.incomplete')));

  state.log = [];
  assert.equal(await snapshotDownload('org/tiny-1.5B', fast), dir);
  assert.equal(downloads().length, 0);
});

test('datasets on both hubs, and allowPatterns', async () => {
  const hf = await snapshotDownload('org/data', { ...fast, useHf: true, repoType: 'dataset', allowPatterns: ['*.json'] });
  assert.equal(hf, path.join(process.env.HF_HUB_CACHE!, 'datasets--org--data', 'snapshots', SHA));
  assertSameFiles(hf, ['config.json', 'tokenizer/tokenizer.json']);
  assert.equal(fs.existsSync(path.join(hf, BIG)), false);
  assert.ok(downloads().every((r) => r.url.startsWith('/datasets/org/data/resolve/')));

  const ms = await snapshotDownload('org/data', { ...fast, repoType: 'dataset', ignorePatterns: ['README.md'] });
  assert.equal(ms, path.join(process.env.MODELSCOPE_CACHE!, 'datasets', 'org', 'data'));
  assertSameFiles(ms, ['config.json', BIG, 'tokenizer/tokenizer.json']);
  assert.equal(fs.existsSync(path.join(ms, 'README.md')), false);
  assert.ok(state.log.some((r) => r.url.includes('/api/v1/datasets/org/data/repo/tree?') && r.url.includes('PageNumber=1')));
});

test('resume: a partial .incomplete continues with a Range request', async () => {
  const folder = path.join(process.env.HF_HUB_CACHE!, 'models--org--tiny', 'snapshots', SHA);
  fs.mkdirSync(folder, { recursive: true });
  fs.writeFileSync(path.join(folder, `${BIG}.incomplete`), FILES[BIG].subarray(0, 123_456));
  // an unfinished snapshot is not served from the cache
  assert.equal(findCachedSnapshot('org/tiny', { useHf: true, revision: SHA }), undefined);
  const dir = await snapshotDownload('org/tiny', { ...fast, useHf: true });
  assertSameFiles(dir);
  const big = downloads().filter((r) => r.url.endsWith(BIG));
  assert.deepEqual(big.map((r) => r.range), ['bytes=123456-']);
  assert.equal(fs.existsSync(path.join(folder, `${BIG}.incomplete`)), false);
});

test('resume against a server that ignores Range restarts the file', async () => {
  const folder = path.join(process.env.MODELSCOPE_CACHE!, 'models', 'org', 'tiny');
  fs.mkdirSync(folder, { recursive: true });
  fs.writeFileSync(path.join(folder, `${BIG}.incomplete`), FILES[BIG].subarray(0, 50_000));
  state.ignoreRange = true;
  const dir = await snapshotDownload('org/tiny', fast);
  assertSameFiles(dir);
  assert.deepEqual(downloads().filter((r) => r.url.endsWith(BIG)).map((r) => r.range), ['bytes=50000-'], 'asked to resume, got 200');
});

test('a dropped connection is retried from where it stopped', async () => {
  state.dropOnce.add(BIG);
  const dir = await snapshotDownload('org/tiny', { ...fast, useHf: true });
  assertSameFiles(dir);
  const big = downloads().filter((r) => r.url.endsWith(BIG));
  assert.equal(big.length, 2);
  assert.equal(big[0].range, undefined);
  assert.match(big[1].range ?? '', /^bytes=\d+-$/);
});

test('a connection that always drops ends in a clear error after the retries', async () => {
  state.dropAlways.add(BIG);
  state.ignoreRange = true;
  await rejectsWith(snapshotDownload('org/tiny', { ...fast, useHf: true, retries: 2 }), HubError, 'org/tiny', endpoint, BIG,
    'gave up after 3 attempts', 'Run again to resume');
  assert.equal(downloads().filter((r) => r.url.endsWith(BIG)).length, 3);
});

test('a 503 is retried; a listed file that answers 404 is a clear error', async () => {
  state.busyOnce.add('config.json');
  assertSameFiles(await snapshotDownload('org/tiny', fast));
  assert.equal(downloads().filter((r) => r.url.endsWith('config.json')).length, 2);
  state.gone.add('README.md');
  await rejectsWith(snapshotDownload('org/tiny', { ...fast, useHf: true }), HubError,
    'README.md', 'org/tiny', '404', 'run it again');
});

test('not found, denied, and the token headers', async () => {
  await rejectsWith(snapshotDownload('org/nope', { ...fast, useHf: true }), HubError,
    'org/nope', 'not found on Hugging Face', 'check the id', 'drop useHf');
  await rejectsWith(snapshotDownload('org/nope', fast), HubError,
    'org/nope', 'not found on ModelScope', 'pass useHf', 'not exists', 'returned an error (10010205)');
  await rejectsWith(snapshotDownload('org/tiny', { ...fast, useHf: true, revision: 'v9' }), HubError, 'revision "v9"');
  await rejectsWith(snapshotDownload('org/private', { ...fast, useHf: true }), HubError, 'org/private', '401', 'HF_TOKEN');
  await rejectsWith(snapshotDownload('not-an-id', fast), HubError, 'not-an-id', 'org/name');

  state.log = [];
  process.env.HF_TOKEN = 'hf_secret';
  await snapshotDownload('org/tiny', { ...fast, useHf: true, allowPatterns: ['config.json'] });
  assert.ok(state.log.every((r) => r.auth === 'Bearer hf_secret'));
  state.log = [];
  process.env.MODELSCOPE_API_TOKEN = 'ms_secret';
  await snapshotDownload('org/tiny', { ...fast, allowPatterns: ['config.json'] });
  assert.ok(state.log.every((r) => r.auth === 'Bearer ms_secret' && r.cookie === 'm_session_id=ms_secret'));
});

test('unreachable endpoint: a HubError that names the repo, the endpoint and what to do; the cache still serves', async () => {
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const dead = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`;
  await new Promise<void>((r) => closed.close(() => r()));
  process.env.HF_ENDPOINT = dead;
  process.env.MODELSCOPE_ENDPOINT = dead;
  const t0 = Date.now();
  await rejectsWith(snapshotDownload('org/tiny', { ...fast, useHf: true }), HubError,
    'org/tiny', dead, 'ECONNREFUSED', 'HF_ENDPOINT', 'local folder');
  await rejectsWith(snapshotDownload('org/tiny', fast), HubError, 'org/tiny', dead, 'ModelScope', 'MODELSCOPE_ENDPOINT', 'useHf');
  assert.ok(Date.now() - t0 < 2000, 'connection refused is not retried for long');

  // downloaded earlier -> used when the hub is unreachable
  process.env.HF_ENDPOINT = endpoint;
  const dir = await snapshotDownload('org/tiny', { ...fast, useHf: true });
  process.env.HF_ENDPOINT = dead;
  assert.equal(await snapshotDownload('org/tiny', { ...fast, useHf: true }), dir);
});

test('offline mode: cache only, zero requests', async () => {
  process.env.HF_HUB_OFFLINE = '1';
  await rejectsWith(snapshotDownload('org/tiny', { ...fast, useHf: true }), HubError, 'HF_HUB_OFFLINE', 'org/tiny', 'local folder');
  process.env.MODELSCOPE_OFFLINE = 'true';
  await rejectsWith(snapshotDownload('org/tiny', fast), HubError, 'MODELSCOPE_OFFLINE');
  assert.equal(state.log.length, 0);

  delete process.env.HF_HUB_OFFLINE;
  delete process.env.MODELSCOPE_OFFLINE;
  const hf = await snapshotDownload('org/tiny', { ...fast, useHf: true });
  const ms = await snapshotDownload('org/tiny', fast);
  state.log = [];
  process.env.HF_HUB_OFFLINE = '1';
  process.env.MODELSCOPE_OFFLINE = '1';
  assert.equal(await snapshotDownload('org/tiny', { ...fast, useHf: true }), hf);
  assert.equal(await snapshotDownload('org/tiny', fast), ms);
  assert.equal(await snapshotDownload('org/tiny', { ...fast, useHf: true, offline: true, revision: SHA }), hf);
  assert.equal(state.log.length, 0);
});

test('a cache that huggingface_hub filled (blobs + symlinks) is used, offline and online', async () => {
  const repo = path.join(process.env.HF_HUB_CACHE!, 'models--org--tiny');
  const snap = path.join(repo, 'snapshots', SHA);
  fs.mkdirSync(path.join(repo, 'blobs'), { recursive: true });
  fs.mkdirSync(path.join(repo, 'refs'), { recursive: true });
  fs.writeFileSync(path.join(repo, 'refs', 'main'), SHA);
  for (const [name, data] of Object.entries(FILES)) {
    const blob = path.join(repo, 'blobs', crypto.createHash('sha256').update(data).digest('hex'));
    fs.writeFileSync(blob, data);
    fs.mkdirSync(path.dirname(path.join(snap, name)), { recursive: true });
    fs.symlinkSync(path.relative(path.dirname(path.join(snap, name)), blob), path.join(snap, name));
  }
  assert.equal(findCachedSnapshot('org/tiny', { useHf: true }), snap);
  assert.equal(await snapshotDownload('org/tiny', { ...fast, useHf: true }), snap);
  assert.equal(downloads().length, 0);
});

test('a modelscope_hub cache (org--name/snapshots/rev) is found and reused', async () => {
  const snap = path.join(process.env.MODELSCOPE_CACHE!, 'models', 'org--tiny', 'snapshots', 'master');
  for (const [name, data] of Object.entries(FILES)) {
    fs.mkdirSync(path.dirname(path.join(snap, name)), { recursive: true });
    fs.writeFileSync(path.join(snap, name), data);
  }
  assert.equal(findCachedSnapshot('org/tiny'), snap);
  assert.equal(await snapshotDownload('org/tiny', fast), snap);
  assert.equal(downloads().length, 0);
});

test('resolveLocalOrHub: a local folder wins, a hub id downloads, a bad path says so', async () => {
  const local = fs.mkdtempSync(path.join(tmp, 'local-'));
  assert.equal(await resolveLocalOrHub(local, fast), local);
  assert.equal(state.log.length, 0);
  const dir = await resolveLocalOrHub('org/tiny', { ...fast, useHf: true });
  assertSameFiles(dir);
  await rejectsWith(resolveLocalOrHub('./no/such/folder', fast), CheckpointError, './no/such/folder', 'no such file or folder');
});

test('endpoints and cache folders follow the libraries\' environment variables', () => {
  delete process.env.HF_ENDPOINT;
  delete process.env.MODELSCOPE_ENDPOINT;
  assert.equal(hubEndpoint(true), 'https://huggingface.co');
  assert.equal(hubEndpoint(false), 'https://www.modelscope.cn');
  process.env.MODELSCOPE_DOMAIN = 'modelscope.example.com';
  assert.equal(hubEndpoint(false), 'https://modelscope.example.com');
  process.env.MODELSCOPE_ENDPOINT = 'http://10.0.0.1:8080/';
  assert.equal(hubEndpoint(false), 'http://10.0.0.1:8080');
  process.env.HF_ENDPOINT = 'https://hf-mirror.com/';
  assert.equal(hubEndpoint(true), 'https://hf-mirror.com');

  delete process.env.HF_HUB_CACHE;
  process.env.HF_HOME = '/data/hf';
  assert.equal(hubCacheDir({ useHf: true }), path.resolve('/data/hf/hub'));
  process.env.HF_HUB_CACHE = '/fast/hub';
  assert.equal(hubCacheDir({ useHf: true }), path.resolve('/fast/hub'));
  delete process.env.MODELSCOPE_CACHE;
  assert.equal(hubCacheDir(), path.join(os.homedir(), '.cache', 'modelscope', 'hub'));
  assert.equal(hubCacheDir({ cacheDir: '/x' }), path.resolve('/x'));
});

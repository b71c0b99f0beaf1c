// The OpenAI-compatible HTTP server of `tsft deploy` and `tsft web-ui` (ms-swift's `swift deploy`): a thin
// adapter over PtEngine — JSON in, `engine.infer` / `engine.complete`, JSON or SSE out.
//
//   GET  /health                  200 {"status":"ok"} (no auth)
//   GET  /v1/models               the served model
//   POST /v1/chat/completions     chat, SSE when "stream": true (ends with `data: [DONE]`)
//   POST /v1/completions          raw-text completion, same streaming
//   GET  /                        the web UI page (web-ui only)
//
// Bad requests get 4xx with OpenAI's `{ error: { message, type, param, code } }` and never take the server
// down; requests queue in the engine; a client that disconnects cancels its generation.

import * as http from 'http';
import type { AddressInfo } from 'net';
import { TemplateError, TsftError, ConfigError } from '../errors';
import { getLogger } from '../utils/logger';
import type { PtEngine } from '../infer/engine';
import {
  EngineOverloadedError, InferAbortedError, InvalidRequestError, RequestConfig, type RequestConfigInit,
} from '../infer/protocol';
import type { ChatMessage } from '../model/tokenizer';
import { renderWebUi } from './webui-page';

export interface ServeOptions {
  /** default 127.0.0.1 (loopback only) */
  host?: string;
  /** default 8000; 0 picks a free port */
  port?: number;
  /** when set, /v1/* needs `Authorization: Bearer <apiKey>` */
  apiKey?: string | null;
  /** the model id clients use (default: engine.modelName) */
  servedModelName?: string;
  /** request defaults for fields a request leaves out (deploy's --temperature / --max_new_tokens) */
  defaults?: Pick<RequestConfigInit, 'temperature' | 'max_tokens' | 'top_k' | 'top_p' | 'repetition_penalty'>;
  /** serve the web UI at `/` */
  webUi?: { lang: 'zh' | 'en'; system?: string | null };
  /** largest request body in bytes (default 4 MiB) */
  maxBodyBytes?: number;
}

export interface RunningServer {
  server: http.Server;
  /** e.g. http://127.0.0.1:8000 */
  url: string;
  port: number;
  /** stop accepting, drop open connections (their generations are cancelled) */
  close(): Promise<void>;
}

/** An HTTP error with OpenAI's error body. */
class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly type = 'invalid_request_error', readonly param: string | null = null,
    readonly code: string | null = null) {
    super(message);
  }
}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res: http.ServerResponse, e: HttpError): void {
  sendJson(res, e.status, { error: { message: e.message, type: e.type, param: e.param, code: e.code } },
    e.status === 401 ? { 'WWW-Authenticate': 'Bearer' } : {});
}

/** Map what the engine throws to an HTTP status. */
function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof InvalidRequestError) return new HttpError(400, e.message, 'invalid_request_error', e.param, e.name === 'ContextLengthError' ? 'context_length_exceeded' : null);
  if (e instanceof TemplateError || e instanceof ConfigError) return new HttpError(400, e.message, 'invalid_request_error', 'messages');
  if (e instanceof EngineOverloadedError) return new HttpError(503, e.message, 'server_error', null, 'overloaded');
  if (e instanceof TsftError) return new HttpError(500, e.message, 'server_error');
  getLogger().error(`request failed: ${(e as Error)?.stack ?? e}`);
  return new HttpError(500, `internal error: ${(e as Error)?.message ?? e}`, 'server_error');
}

function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (b: Buffer) => {
      size += b.length;
      if (size > limit) over = true;
      else parts.push(b);
    });
    req.on('end', () => (over
      ? reject(new HttpError(413, `the request body is ${size} bytes; the limit is ${limit}`))
      : resolve(Buffer.concat(parts).toString('utf8'))));
    req.on('error', reject);
  });
}

function parseJsonObject(text: string): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `the body is not valid JSON (${(e as Error).message}); send Content-Type: application/json with a JSON object`);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new HttpError(400, `the body must be a JSON object, got ${describe(body)}`);
  }
  return body as Record<string, unknown>;
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant']);

/** OpenAI messages → template messages (text parts joined; 'developer' is the system). */
function chatMessages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw new HttpError(400, `messages must be a non-empty array of {role, content}, got ${describe(v)}`, undefined, 'messages');
  return v.map((m: unknown, i) => {
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw new HttpError(400, `messages[${i}] must be an object {role, content}, got ${describe(m)}`, undefined, 'messages');
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.has(role)) {
      throw new HttpError(400, `messages[${i}].role is ${JSON.stringify(role)}; expected one of system, user, assistant`, undefined, `messages.${i}.role`);
    }
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content) && content.every((p) => p && typeof p === 'object' && (p as { type?: unknown }).type === 'text' && typeof (p as { text?: unknown }).text === 'string')) {
      text = content.map((p) => (p as { text: string }).text).join('');
    } else {
      throw new HttpError(400, `messages[${i}].content must be a string or an array of {type: "text", text} parts (tsft serves text-only models), got ${describe(content)}`,
        undefined, `messages.${i}.content`);
    }
    return { role: role === 'developer' ? 'system' : role, content: text };
  });
}

/** The RequestConfig of a chat or completion body, request fields over server defaults. */
function requestConfig(body: Record<string, unknown>, defaults: ServeOptions['defaults'] = {}): { config: RequestConfig<boolean>; explicitMaxTokens: boolean } {
  const n = body.n;
  if (n !== undefined && n !== null && n !== 1) throw new HttpError(400, `n must be 1 (tsft returns one choice per request), got ${JSON.stringify(n)}`, undefined, 'n');
  const maxTokens = body.max_completion_tokens ?? body.max_tokens;
  const init: Record<string, unknown> = { ...defaults };
  for (const [k, v] of Object.entries({ max_tokens: maxTokens, temperature: body.temperature, top_k: body.top_k, top_p: body.top_p,
    repetition_penalty: body.repetition_penalty, stop: body.stop, seed: body.seed, stream: body.stream })) {
    if (v !== undefined && v !== null) init[k] = v;
  }
  return { config: new RequestConfig(init as RequestConfigInit<boolean>), explicitMaxTokens: maxTokens !== undefined && maxTokens !== null };
}

/** Write one SSE event; waits while the socket's buffer is full (a slow reader). */
async function sseWrite(res: http.ServerResponse, data: string): Promise<void> {
  if (res.destroyed) return;
  if (!res.write(`data: ${data}\n\n`)) {
    await new Promise<void>((resolve) => {
      const done = () => { res.off('drain', done); res.off('close', done); resolve(); };
      res.on('drain', done);
      res.on('close', done);
    });
  }
}

/**
 * The request handler (usable with any http.Server).
 * @example http.createServer(createHandler(engine, { apiKey: 'sk-local' })).listen(8000, '127.0.0.1');
 */
export function createHandler(engine: PtEngine, opts: ServeOptions = {}): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  const maxBody = opts.maxBodyBytes ?? 4 << 20;
  const logger = getLogger();
  const created = Math.floor(Date.now() / 1000);

  return (req, res) => {
    const started = Date.now();
    handle(req, res).catch((e: unknown) => {
      const err = toHttpError(e);
      if (!res.headersSent) sendError(res, err);
      else if (!res.writableEnded) res.end();
    }).finally(() => logger.debug(`${req.method} ${req.url} ${res.statusCode} ${Date.now() - started}ms`));
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route = url.pathname.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    const model = opts.servedModelName ?? engine.modelName;
    const allow = (methods: string[]) => {
      if (!methods.includes(method)) throw new HttpError(405, `${method} ${route} is not supported; use ${methods.join(' or ')}`, 'invalid_request_error', null, 'method_not_allowed');
    };

    if (route === '/health') {
      allow(['GET', 'HEAD']);
      return sendJson(res, 200, { status: 'ok' });
    }
    if ((route === '/' || route === '/index.html') && opts.webUi) {
      allow(['GET', 'HEAD']);
      const html = renderWebUi({ lang: opts.webUi.lang, model, system: opts.webUi.system ?? null,
        temperature: opts.defaults?.temperature ?? null, max_tokens: opts.defaults?.max_tokens ?? null });
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': Buffer.byteLength(html), 'Cache-Control': 'no-store' });
      return void res.end(method === 'HEAD' ? undefined : html);
    }
    if (!route.startsWith('/v1/')) {
      throw new HttpError(404, `no route ${method} ${url.pathname}; the API is under /v1 (/v1/models, /v1/chat/completions, /v1/completions)` +
        (opts.webUi ? '' : ' and /health'), 'invalid_request_error', null, 'not_found');
    }
    if (opts.apiKey) {
      const auth = req.headers.authorization ?? '';
      if (auth !== `Bearer ${opts.apiKey}`) {
        throw new HttpError(401, auth ? 'invalid API key: the bearer token does not match --api_key' : 'missing API key: send the header "Authorization: Bearer <api_key>"',
          'authentication_error', null, 'invalid_api_key');
      }
    }
    if (route === '/v1/models') {
      allow(['GET']);
      return sendJson(res, 200, { object: 'list', data: [{ id: model, object: 'model', created, owned_by: 'tsft' }] });
    }
    const chat = route === '/v1/chat/completions';
    if (!chat && route !== '/v1/completions') throw new HttpError(404, `no route ${method} ${url.pathname}`, 'invalid_request_error', null, 'not_found');
    allow(['POST']);

    const body = parseJsonObject(await readBody(req, maxBody));
    if (body.model !== undefined && body.model !== model) {
      throw new HttpError(404, `the model ${JSON.stringify(body.model)} does not exist; this server serves ${JSON.stringify(model)} (GET /v1/models)`,
        'invalid_request_error', 'model', 'model_not_found');
    }
    const { config, explicitMaxTokens } = requestConfig(body, opts.defaults);
    const streamOptions = body.stream_options;
    if (streamOptions !== undefined && streamOptions !== null && (typeof streamOptions !== 'object' || Array.isArray(streamOptions))) {
      throw new HttpError(400, `stream_options must be an object, got ${describe(streamOptions)}`, undefined, 'stream_options');
    }
    const includeUsage = (streamOptions as { include_usage?: unknown } | null)?.include_usage === true;

    // a client that goes away cancels its generation
    const abort = new AbortController();
    res.on('close', () => { if (!res.writableFinished) abort.abort(); });
    const inferOpts = { signal: abort.signal, strictMaxTokens: explicitMaxTokens, modelName: model };
    let results: unknown[];
    if (chat) {
      const messages = chatMessages(body.messages);
      results = await engine.infer([{ messages }], config, inferOpts);
    } else {
      const prompt = Array.isArray(body.prompt) && body.prompt.length === 1 ? body.prompt[0] : body.prompt;
      if (typeof prompt !== 'string' || prompt.length === 0) {
        throw new HttpError(400, `prompt must be a non-empty string (one prompt per request), got ${describe(prompt)}`, undefined, 'prompt');
      }
      results = await engine.complete([prompt], config, inferOpts);
    }
    if (!config.stream) return sendJson(res, 200, results[0]);

    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
    res.flushHeaders();
    let last: { id: string; object: string; created: number; model: string; usage?: unknown } | null = null;
    try {
      for await (const chunk of results[0] as AsyncIterable<{ id: string; object: string; created: number; model: string; usage?: unknown }>) {
        last = chunk;
        await sseWrite(res, JSON.stringify(chunk));
        if (res.destroyed) break;
      }
      if (includeUsage && last?.usage) {
        await sseWrite(res, JSON.stringify({ id: last.id, object: last.object, created: last.created, model: last.model, choices: [], usage: last.usage }));
      }
    } catch (e) {
      if (!(e instanceof InferAbortedError) || !res.destroyed) {
        const err = toHttpError(e);
        await sseWrite(res, JSON.stringify({ error: { message: err.message, type: err.type, param: err.param, code: err.code } }));
      }
    }
    if (!res.destroyed) {
      await sseWrite(res, '[DONE]');
      res.end();
    }
  }
}

/**
 * Serve `engine` over HTTP; resolves once listening.
 * @example
 *   const srv = await serve(await PtEngine.create('tiny'), { port: 8000 });
 *   console.log(srv.url);   // http://127.0.0.1:8000
 *   await srv.close();
 */
export async function serve(engine: PtEngine, opts: ServeOptions = {}): Promise<RunningServer> {
  await engine.ready;
  const host = opts.host ?? '127.0.0.1';
  const port = opts.port ?? 8000;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError(`port must be an integer in [0, 65535], got ${port}`);
  const server = http.createServer(createHandler(engine, opts));
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      reject(e.code === 'EADDRINUSE' ? new ConfigError(`${host}:${port} is already in use: pass another --port (or stop what listens there)`)
        : e.code === 'EADDRNOTAVAIL' ? new ConfigError(`cannot listen on ${host}: no such local address (--host)`) : e);
    };
    server.once('error', onError);
    server.listen(port, host, () => { server.off('error', onError); resolve(); });
  });
  const actual = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    server,
    url: `http://${shown}:${actual}`,
    port: actual,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

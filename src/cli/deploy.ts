// `tsft deploy` (ms-swift's `swift deploy`): an OpenAI-compatible server over PtEngine —
// GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (SSE when streaming).
// Listens on 127.0.0.1 unless --host says otherwise; Ctrl+C stops it.

import { serve } from '../serve/server';
import { ConfigError } from '../errors';
import { getLogger } from '../utils/logger';
import { ENGINE_FLAGS, ENGINE_HELP, engineFromFlags, requestDefaults } from './infer';
import { num, parseFlags, str } from './flags';

export const HELP = `tsft deploy ${ENGINE_HELP}
    [--host 127.0.0.1] [--port 8000] [--api_key KEY] [--served_model_name NAME]
  OpenAI-compatible API: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions.`;
const FLAGS = [...ENGINE_FLAGS, 'host', 'port', 'api_key', 'served_model_name'];

/** Resolve when the process is asked to stop (Ctrl+C, SIGTERM). */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const stop = (sig: string) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve(sig);
    };
    const onInt = () => stop('SIGINT');
    const onTerm = () => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
}

export function portFlag(flags: Map<string, string[]>, dflt: number): number {
  const port = num(flags, 'port', dflt);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError(`--port must be an integer in [0, 65535], got ${port}`);
  return port;
}

export async function run(argv: readonly string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS, 'deploy');
  const defaults = requestDefaults(flags);
  const port = portFlag(flags, 8000);
  const engine = await engineFromFlags(flags, 'deploy');
  const srv = await serve(engine, {
    host: str(flags, 'host') ?? '127.0.0.1', port, apiKey: str(flags, 'api_key') ?? null,
    servedModelName: str(flags, 'served_model_name'), defaults: { temperature: defaults.temperature, max_tokens: defaults.max_tokens,
      top_k: defaults.top_k, top_p: defaults.top_p, repetition_penalty: defaults.repetition_penalty },
  });
  const model = str(flags, 'served_model_name') ?? engine.modelName;
  getLogger().info(`serving "${model}" on ${srv.url} (OpenAI API: ${srv.url}/v1/chat/completions${str(flags, 'api_key') ? ', bearer token required' : ''}); Ctrl+C stops`);
  const sig = await untilSignal();
  getLogger().info(`${sig}: shutting down`);
  await srv.close();
  await engine.close();
}

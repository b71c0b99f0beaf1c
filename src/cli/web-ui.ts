// `tsft web-ui` (ms-swift's `swift web-ui`): a chat page with streaming, system prompt, temperature and
// max tokens, stop and clear — one static page served at `/` by the deploy server (port 7860).

import { serve } from '../serve/server';
import { ConfigError } from '../errors';
import { getLogger } from '../utils/logger';
import { ENGINE_FLAGS, ENGINE_HELP, engineFromFlags, requestDefaults } from './infer';
import { portFlag, untilSignal } from './deploy';
import { parseFlags, str } from './flags';

export const HELP = `tsft web-ui ${ENGINE_HELP}
    [--host 127.0.0.1] [--port 7860] [--lang zh|en]
  A chat page at http://127.0.0.1:7860 (the OpenAI API is served beside it under /v1).`;
const FLAGS = [...ENGINE_FLAGS, 'host', 'port', 'lang'];

export async function run(argv: readonly string[]): Promise<void> {
  const flags = parseFlags(argv, FLAGS, 'web-ui');
  const lang = str(flags, 'lang') ?? 'zh';
  if (lang !== 'zh' && lang !== 'en') throw new ConfigError(`--lang must be zh or en, got "${lang}"`);
  const defaults = requestDefaults(flags);
  const port = portFlag(flags, 7860);
  const engine = await engineFromFlags(flags, 'web-ui');
  const srv = await serve(engine, {
    host: str(flags, 'host') ?? '127.0.0.1', port,
    defaults: { temperature: defaults.temperature ?? 0, max_tokens: defaults.max_tokens ?? 512 },
    webUi: { lang, system: engine.defaultTemplate.defaultSystem },
  });
  getLogger().info(`web UI on ${srv.url} (Ctrl+C stops)`);
  const sig = await untilSignal();
  getLogger().info(`${sig}: shutting down`);
  await srv.close();
  await engine.close();
}

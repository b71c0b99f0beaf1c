// `tsft <command> [--flag value ...]`: the seed's command-line path (ms-swift's `swift sft`, `swift infer`,
// `swift web-ui`, `swift deploy`, `swift export`). One file per command in src/cli, each exporting
// `run(argv)` and `HELP`; flags use ms-swift's snake_case names.

import { readFileSync } from 'fs';
import * as path from 'path';
import { shutdownDevice } from '../backend/device';
import { TsftError } from '../errors';

interface Command {
  run(argv: readonly string[]): Promise<void>;
  HELP: string;
}

/** Commands load lazily: `tsft infer` never pays for the trainer's imports. */
const COMMANDS: Record<string, () => Promise<Command>> = {
  infer: () => import('./infer'),
  sft: () => import('./sft'),
  export: () => import('./export'),
  deploy: () => import('./deploy'),
  'web-ui': () => import('./web-ui'),
};

function version(): string {
  // bin/tsft.js sets TSFT_ROOT to the package folder
  const pkg = JSON.parse(readFileSync(path.join(process.env.TSFT_ROOT ?? process.cwd(), 'package.json'), 'utf8')) as { version?: string };
  return pkg.version ?? '';
}

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h') {
    const helps = await Promise.all(Object.values(COMMANDS).map(async (load) => (await load()).HELP));
    process.stdout.write(`usage: tsft <command> [--flag value ...]   (tsft <command> --help for its flags)\n\n${helps.join('\n')}\n`);
    return 0;
  }
  if (command === '--version') {
    process.stdout.write(`tsft ${version()}\n`);
    return 0;
  }
  const load = COMMANDS[command];
  if (!load) {
    process.stderr.write(`tsft: unknown command "${command}"; available: ${Object.keys(COMMANDS).join(', ')}\n`);
    return 2;
  }
  const cmd = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(cmd.HELP + '\n');
    return 0;
  }
  try {
    await cmd.run(rest);
    return 0;
  } catch (e) {
    if (e instanceof TsftError) {
      process.stderr.write(`tsft ${command}: ${e.name}: ${e.message}\n`);
      return 1;
    }
    throw e;
  } finally {
    await shutdownDevice();
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code), (e) => {
  console.error(e);
  process.exit(1);
});

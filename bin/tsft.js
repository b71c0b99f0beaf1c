#!/usr/bin/env node
// The `tsft` command. tsft ships its TypeScript sources; tsx compiles them on the fly.
import { fileURLToPath } from 'url';
import { register } from 'tsx/esm/api';

process.env.TSFT_ROOT ??= fileURLToPath(new URL('..', import.meta.url));
register();
await import('../src/cli/main.ts');

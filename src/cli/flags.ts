// Command-line flags as ms-swift spells them: `--name value` or `--name=value`, snake_case (dashes are
// accepted and mapped to underscores), repeated flags accumulate (`--query a --query b`), and list flags
// take several values (`--dataset a b c`).

import { ConfigError } from '../errors';

export type Flags = Map<string, string[]>;

/**
 * Parse argv against the known flag names; unknown flags and missing values are ConfigErrors that say
 * which flags exist.
 * @example parseFlags(['--model', 'tiny', '--query', 'hi'], ['model', 'query'], 'infer')
 */
export function parseFlags(argv: readonly string[], known: readonly string[], command: string): Flags {
  const flags: Flags = new Map();
  let current: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--')) {
      let [name, value] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
      name = name.replace(/-/g, '_');
      if (!known.includes(name)) {
        throw new ConfigError(`tsft ${command}: unknown flag --${name}; see \`tsft ${command} --help\` (known: ${known.map((k) => '--' + k).join(', ')})`);
      }
      if (!flags.has(name)) flags.set(name, []);
      current = name;
      if (value !== undefined) flags.get(name)!.push(value);
      continue;
    }
    if (current === null) throw new ConfigError(`tsft ${command}: unexpected argument "${a}" (flags look like --name value)`);
    flags.get(current)!.push(a);
  }
  for (const [name, values] of flags) if (values.length === 0) throw new ConfigError(`tsft ${command}: --${name} needs a value`);
  return flags;
}

/** The last value of a flag, or undefined. */
export function str(flags: Flags, name: string): string | undefined {
  return flags.get(name)?.at(-1);
}

/** A numeric flag (last value), or `dflt`. */
export function num(flags: Flags, name: string, dflt: number): number {
  const v = str(flags, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new ConfigError(`--${name} must be a number, got "${v}"`);
  return n;
}

/** A boolean flag: true/false/1/0 (last value), or `dflt`. */
export function bool(flags: Flags, name: string, dflt: boolean): boolean {
  const v = str(flags, name);
  if (v === undefined) return dflt;
  if (/^(true|1|yes)$/i.test(v)) return true;
  if (/^(false|0|no)$/i.test(v)) return false;
  throw new ConfigError(`--${name} must be true or false, got "${v}"`);
}

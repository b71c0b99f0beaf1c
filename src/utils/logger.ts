// `[INFO:tsft] …` lines, as ms-swift's get_logger() prints `[INFO:swift] …`.

export type LogLevel = 'debug' | 'info' | 'warning' | 'error';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warning: 30, error: 40 };

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warning(msg: string): void;
  error(msg: string): void;
  /** warn once per distinct message (ms-swift's warning_once) */
  warningOnce(msg: string): void;
}

let level: LogLevel = (process.env.TSFT_LOG_LEVEL?.toLowerCase() as LogLevel) in ORDER
  ? (process.env.TSFT_LOG_LEVEL!.toLowerCase() as LogLevel)
  : 'info';
const seen = new Set<string>();

function emit(l: LogLevel, msg: string): void {
  if (ORDER[l] < ORDER[level]) return;
  const line = `[${l.toUpperCase()}:tsft] ${msg}`;
  // info goes to stdout (what notebooks show as output), warnings and errors to stderr
  if (ORDER[l] >= ORDER.warning) process.stderr.write(line + '\n');
  else process.stdout.write(line + '\n');
}

const logger: Logger = {
  debug: (m) => emit('debug', m),
  info: (m) => emit('info', m),
  warning: (m) => emit('warning', m),
  error: (m) => emit('error', m),
  warningOnce: (m) => {
    if (seen.has(m)) return;
    seen.add(m);
    emit('warning', m);
  },
};

/**
 * The tsft logger (`TSFT_LOG_LEVEL=debug|info|warning|error`).
 * @example
 *   const logger = getLogger();
 *   logger.info(`output_dir: ${outputDir}`);   // [INFO:tsft] output_dir: /abs/output
 */
export function getLogger(): Logger {
  return logger;
}

export function setLogLevel(l: LogLevel): void {
  level = l;
}

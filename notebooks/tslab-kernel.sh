#!/usr/bin/env bash
# Jupyter kernel for tsft's notebooks: tslab started from the repository root. tslab compiles only files
# under its working directory (its TypeScript rootDir), and Jupyter starts kernels in the notebook's
# folder — so without this, `import ... from './src'` from notebooks/ fails. Installed as kernel "tsft"
# by `npm run notebooks:install`.
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
cd "$root" || exit 1
export PYDEVD_DISABLE_FILE_VALIDATION=1
exec "$root/node_modules/.bin/tslab" "$@"

// Where tsft keeps what it makes or downloads for itself: `TSFT_CACHE`, else ~/.cache/tsft.
// Hub downloads use the hubs' own cache variables (HF_HOME, MODELSCOPE_CACHE; see src/model/hub.ts).

import * as os from 'os';
import * as path from 'path';

export function tsftCacheDir(): string {
  return process.env.TSFT_CACHE || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'tsft');
}

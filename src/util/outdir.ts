import { promises as fs } from 'node:fs';
import { UserError } from './errors.js';
import { describeFsError } from './atomic.js';

/**
 * Make `dir` usable as an output directory: create it (and its parents) when absent, accept it when
 * it is a directory, refuse anything else. Never deletes or replaces what is there: a file in the
 * way is the user's, not ours.
 */
export async function ensureOutDir(dir: string, label = '--out'): Promise<void> {
  const st = await fs.stat(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    if (e.code === 'ENOTDIR') throw new UserError(`${label} ${dir}: a parent of it is a file, not a directory`);
    throw describeFsError(e, `${label} ${dir}`);
  });
  if (st && !st.isDirectory()) throw new UserError(`${label} ${dir} is an existing file, not a directory; choose another ${label}`);
  if (st) return;
  await fs.mkdir(dir, { recursive: true }).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOTDIR' || e.code === 'EEXIST') throw new UserError(`${label} ${dir}: a parent of it is a file, not a directory`);
    throw describeFsError(e, `creating ${dir}`);
  });
}

/** 'absent' | 'dir' | 'file' (anything that is not a directory counts as a file here). */
export async function pathKind(p: string): Promise<'absent' | 'dir' | 'file'> {
  const st = await fs.stat(p).catch(() => null);
  return st === null ? 'absent' : st.isDirectory() ? 'dir' : 'file';
}

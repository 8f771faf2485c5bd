import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from './errors.js';

/** Turn ENOSPC/EACCES/… into one-line user errors that name the path. */
export function describeFsError(err: unknown, what: string): UserError | unknown {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOSPC':
      // every writer leaves complete files only, so the remedy is always the same
      return new UserError(`${what}: no space left on device; free some space and rerun the same command (what was completed is kept)`);
    case 'EDQUOT':
      return new UserError(`${what}: disk quota exceeded; free some space and rerun the same command (what was completed is kept)`);
    case 'EACCES':
    case 'EPERM':
      return new UserError(`${what}: permission denied`);
    case 'ENOENT':
      return new UserError(`${what}: no such file or directory`);
    case 'EROFS':
      return new UserError(`${what}: read-only file system`);
    case 'ENOTDIR':
      return new UserError(`${what}: a parent of the path is a file, not a directory`);
    case 'EISDIR':
      return new UserError(`${what}: is a directory`);
    default:
      return err;
  }
}

/**
 * Write a file so that it is either absent or complete: write to a temporary sibling, fsync,
 * rename. A crash or a full disk leaves the previous version (or nothing) in place.
 */
export async function writeFileAtomic(file: string, data: Uint8Array | string): Promise<void> {
  const tmp = tmpSibling(file);
  try {
    const fh = await fs.open(tmp, 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw describeFsError(err, `writing ${file}`);
  }
}

/**
 * Publish a directory atomically: the caller fills `tmpDir`, then this renames it to `finalDir`,
 * replacing an older version only once the new one is complete.
 */
export async function publishDirAtomic(tmpDir: string, finalDir: string): Promise<void> {
  const old = `${finalDir}.old-${process.pid}-${Date.now()}`;
  let moved = false;
  // only ever replace a directory (an older version of ours); a file in the way is the user's
  const st = await fs.stat(finalDir).catch(() => null);
  if (st && !st.isDirectory()) throw new UserError(`${finalDir} is an existing file, not a directory; choose another output`);
  try {
    await fs.rename(finalDir, old);
    moved = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw describeFsError(err, `replacing ${finalDir}`);
  }
  try {
    await fs.rename(tmpDir, finalDir);
  } catch (err) {
    if (moved) await fs.rename(old, finalDir).catch(() => undefined);
    throw describeFsError(err, `publishing ${finalDir}`);
  }
  if (moved) await fs.rm(old, { recursive: true, force: true });
}

export function tmpSibling(p: string): string {
  return path.join(path.dirname(p), `.${path.basename(p)}.tmp-${process.pid}-${Date.now()}`);
}

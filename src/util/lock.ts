import { promises as fs, readFileSync, unlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UserError } from './errors.js';
import { describeFsError } from './atomic.js';

/**
 * One writer per output folder. Every command that writes a folder holds `DIR/.sae-lock` for its
 * lifetime: an O_EXCL-style file (made complete elsewhere, then hard-linked into place, so no
 * reader ever sees half of it) naming the holder's pid, host, process start and command. A lock
 * whose holder is gone (kill -9, a crash, a reboot) is stale and is taken over, so no folder stays
 * locked forever; a live holder makes the second writer stop with one line naming it.
 */
export const LOCK_FILE = '.sae-lock';

/** exit status of "the folder is busy": EX_TEMPFAIL, so a script or scheduler knows to retry later */
export const LOCKED_EXIT = 75;

export interface LockHolder {
  pid: number;
  host: string;
  /** when the holder started (ISO), for people */
  since: string;
  /** the holder process's start in clock ticks since boot (Linux), so a reused pid is not mistaken for it */
  procStart: string | null;
  command: string;
  /** random per acquisition: release removes only its own file */
  token: string;
}

export interface OutDirLock {
  readonly dir: string;
  readonly file: string;
  /** remove the lock (only if it is still ours); idempotent */
  release(): Promise<void>;
}

/** Locks this process holds, by lock file: re-entrant, and removed at exit whatever the cause. */
const held = new Map<string, { holder: LockHolder; count: number }>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const [file, h] of held) removeIfOurs(file, h.holder.token);
    held.clear();
  });
}

function removeIfOurs(file: string, token: string): void {
  try {
    const cur = JSON.parse(readFileSync(file, 'utf8')) as LockHolder;
    if (cur.token === token) unlinkSync(file);
  } catch {
    // gone already, or not ours: leave it
  }
}

/** The start of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or null off Linux. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

function pidAlive(pid: number): boolean {
  if (!(pid > 0)) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Is the holder certainly gone? Only decidable on this host: its pid is not running, or runs
 * another process than the one that took the lock (the pid was reused after a crash or reboot).
 */
export function holderIsGone(h: LockHolder): boolean {
  if (h.host !== os.hostname()) return false;
  if (!pidAlive(h.pid)) return true;
  if (h.procStart !== null) {
    const now = processStart(h.pid);
    if (now !== null && now !== h.procStart) return true;
  }
  return false;
}

async function readHolder(file: string): Promise<LockHolder | null> {
  const text = await fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw describeFsError(e, `reading ${file}`);
  });
  if (text === null) return null;
  try {
    const h = JSON.parse(text) as LockHolder;
    if (Number.isSafeInteger(h.pid) && typeof h.host === 'string') return h;
  } catch {
    // fall through
  }
  // a lock file we cannot read was not written by a live sae (ours are linked in complete)
  return { pid: -1, host: os.hostname(), since: '?', procStart: null, command: 'unknown', token: '' };
}

export function describeHolder(h: LockHolder): string {
  return `${h.command} (pid ${h.pid} on ${h.host}, since ${h.since})`;
}

/**
 * Take the folder `dir` (which must exist) for `command`, e.g. 'sae harvest'. A folder held by a
 * live process is refused with one line naming it (exit 75); a stale lock is replaced. Taking a
 * folder this process already holds just counts one more holder (the demo runs stages in-process).
 */
export async function lockOutDir(dir: string, command: string, label = '--out'): Promise<OutDirLock> {
  const file = path.join(path.resolve(dir), LOCK_FILE);
  const mine = held.get(file);
  if (mine) {
    mine.count++;
    return handle(dir, file, mine.holder.token);
  }
  const holder: LockHolder = {
    pid: process.pid,
    host: os.hostname(),
    since: new Date().toISOString(),
    procStart: processStart(process.pid),
    command,
    token: `${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`,
  };
  const tmp = path.join(path.dirname(file), `${LOCK_FILE}.tmp-${holder.token}`);
  try {
    await fs.writeFile(tmp, JSON.stringify(holder) + '\n');
  } catch (e) {
    throw describeFsError(e, `${label} ${dir}: writing its lock file`);
  }
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        await fs.link(tmp, file);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw describeFsError(e, `${label} ${dir}: taking its lock file`);
      }
      const cur = await readHolder(file);
      if (cur === null) continue; // released just now: try again
      if (holderIsGone(cur) && attempt > 5) {
        throw new UserError(`${label} ${dir}: other runs keep taking its lock file ${file}; run one writer at a time`, LOCKED_EXIT);
      }
      if (!holderIsGone(cur)) {
        const other = cur.host === os.hostname() ? '' : `; if that host no longer runs it, delete ${file}`;
        throw new UserError(`${label} ${dir} is in use by ${describeHolder(cur)}: wait for it to finish or choose another ${label}${other}`, LOCKED_EXIT);
      }
      await takeOverStale(file, cur);
    }
  } finally {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
  }
  installExitHook();
  held.set(file, { holder, count: 1 });
  return handle(dir, file, holder.token);
}

/**
 * Remove a stale lock so that exactly one contender can take the folder: the stale file is moved
 * to a name of our own, and only if what moved is the stale holder we judged (not a live lock
 * another contender linked in meanwhile) is it deleted; otherwise it is put back.
 */
async function takeOverStale(file: string, stale: LockHolder): Promise<void> {
  const aside = `${file}.stale-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await fs.rename(file, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw describeFsError(e, `replacing the stale lock ${file}`);
  }
  const moved = await readHolder(aside);
  if (moved && moved.token !== stale.token && !holderIsGone(moved)) {
    // a live lock taken between our read and our rename: give it back
    await fs.link(aside, file).catch(() => undefined);
  }
  await fs.rm(aside, { force: true });
}

function handle(dir: string, file: string, token: string): OutDirLock {
  let released = false;
  return {
    dir,
    file,
    async release() {
      if (released) return;
      released = true;
      const h = held.get(file);
      if (!h || h.holder.token !== token) return;
      h.count -= 1;
      if (h.count > 0) return;
      held.delete(file);
      removeIfOurs(file, token);
    },
  };
}

/** Run `fn` holding `dir`'s lock (created by the caller), releasing it however `fn` ends. */
export async function withOutDirLock<T>(dir: string, command: string, fn: () => Promise<T>, label = '--out'): Promise<T> {
  const lock = await lockOutDir(dir, command, label);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/** Is `name` (an entry of an output folder) this module's, so that "is the folder empty?" ignores it? */
export function isLockEntry(name: string): boolean {
  return name === LOCK_FILE || name.startsWith(`${LOCK_FILE}.`);
}

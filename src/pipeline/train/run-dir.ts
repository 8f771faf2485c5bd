import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError } from '../../util/atomic.js';
import { ensureOutDir, pathKind } from '../../util/outdir.js';
import { lockOutDir, type OutDirLock } from '../../util/lock.js';
import { CHECKPOINT_DIRS, ownsFile, RUN_FILES } from '../../store/outputs.js';
import { loadCheckpoint } from '../../sae/checkpoint.js';

/**
 * A training run's --out folder: what it holds (checkpoint/, final/, metrics.jsonl, summary.json),
 * who may write it (the folder's lock), and how it is put back in order after a kill. A kill can
 * leave, besides a log with no checkpoint yet:
 * - `.checkpoint.tmp-PID-TIME/`: a checkpoint being written (complete or not);
 * - `checkpoint.old-PID-TIME/` with no `checkpoint/`: killed between publishDirAtomic's two renames;
 * - `.metrics.jsonl.tmp-PID-TIME`, `.summary.json.tmp-PID-TIME`: a file being replaced.
 * The same holds for final/.
 */

export interface RunDir {
  readonly out: string;
  /** the top folder this run created for --out (out itself or an ancestor), null when out existed */
  readonly created: string | null;
  /** set once this run starts writing metrics.jsonl: only then is the log this run's to remove */
  logStarted: boolean;
  /** the run failed: remove what it wrote that no rerun can use, and the folders it created */
  abandon(): Promise<void>;
  release(): Promise<void>;
}

/** The topmost missing folder on the way to `dir` (what mkdir -p would create), or null. */
async function firstMissing(dir: string): Promise<string | null> {
  let top: string | null = null;
  for (let p = path.resolve(dir); (await pathKind(p)) === 'absent'; p = path.dirname(p)) {
    top = p;
    if (path.dirname(p) === p) break;
  }
  return top;
}

/** Create --out when needed and take its lock for the run's lifetime. */
export async function openRunDir(out: string, command: string): Promise<RunDir> {
  const created = await firstMissing(out);
  await ensureOutDir(out);
  let lock: OutDirLock;
  try {
    lock = await lockOutDir(out, command);
  } catch (err) {
    await removeCreated(out, created);
    throw err;
  }
  const run: RunDir = {
    out,
    created,
    logStarted: false,
    release: () => lock.release(),
    async abandon() {
      // a checkpoint is resumable: keep the whole folder; without one, the log describes steps no
      // rerun will continue from (a rerun starts at step 0 and rewrites it)
      const kept = await hasCheckpoint(out);
      if (!kept && run.logStarted) await fs.rm(path.join(out, 'metrics.jsonl'), { force: true }).catch(() => undefined);
      // the lock goes first: it is an entry of the folder that removeCreated wants empty
      await lock.release();
      if (!kept) await removeCreated(out, created);
    },
  };
  return run;
}

/** rmdir, never rm -r: a folder that holds anything not ours stays. */
async function removeCreated(out: string, created: string | null): Promise<void> {
  if (!created) return;
  for (let p = path.resolve(out); ; p = path.dirname(p)) {
    try {
      await fs.rmdir(p);
    } catch {
      return;
    }
    if (p === created || path.dirname(p) === p) return;
  }
}

/** Does the folder hold a checkpoint a run can continue from (or a finished run)? */
export async function hasCheckpoint(out: string): Promise<boolean> {
  for (const sub of CHECKPOINT_DIRS) if (await ownsFile('train', path.join(out, sub))) return true;
  return false;
}

/**
 * A new run must not mix with an old one in the same directory: refuse, or clear it with force.
 * Force only removes what a run writes; anything else under those names is the user's and stops us.
 * A run killed before its first checkpoint left nothing to continue: it is cleared without force
 * ('restarted'), so its rerun starts over instead of being refused.
 */
export async function clearOrRefuse(out: string, force: boolean): Promise<'fresh' | 'restarted' | 'cleared'> {
  const present: string[] = [];
  for (const f of RUN_FILES) {
    const p = path.join(out, f);
    if ((await pathKind(p)) === 'absent') continue;
    if (!(await ownsFile('train', p))) throw new UserError(`${p} exists and was not written by sae train; choose another --out`);
    present.push(f);
  }
  if (!present.length) return 'fresh';
  const resumable = present.some((f) => CHECKPOINT_DIRS.includes(f));
  if (resumable && !force) throw new UserError(`${out} already holds a run (${present.join(', ')}); continue it with --resume ${out}, or start over with --force`);
  for (const f of present) await fs.rm(path.join(out, f), { recursive: true, force: true });
  return resumable || force ? 'cleared' : 'restarted';
}

/** What a kill leaves behind, by name; the pid and time are those of the writer (see tmpSibling). */
interface Debris {
  name: string;
  base: string;
  kind: 'old' | 'tmp';
  pid: number;
  time: number;
}

function parseDebris(name: string): Debris | null {
  const old = /^(checkpoint|final)\.old-(\d+)-(\d+)$/.exec(name);
  if (old) return { name, base: old[1], kind: 'old', pid: Number(old[2]), time: Number(old[3]) };
  const tmp = /^\.(checkpoint|final|metrics\.jsonl|summary\.json)\.tmp-(\d+)-(\d+)$/.exec(name);
  if (tmp) return { name, base: tmp[1], kind: 'tmp', pid: Number(tmp[2]), time: Number(tmp[3]) };
  return null;
}

/** Written by this very process since it started (a run sharing the folder in-process): hands off. */
function oursInFlight(d: Debris): boolean {
  return d.pid === process.pid && d.time >= Math.floor(performance.timeOrigin);
}

/**
 * Could the writer still be at work? Holding the folder's lock already rules out other processes;
 * a live pid is left alone anyway, so a reused pid costs at most a leftover, never someone's write.
 */
function writerAlive(d: Debris): boolean {
  if (d.pid === process.pid) return oursInFlight(d);
  try {
    process.kill(d.pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The step of a checkpoint folder that loads completely, else null (a write cut short). */
async function completeStep(dir: string): Promise<number | null> {
  try {
    const ck = await loadCheckpoint(dir, { withState: true });
    return ck.state?.snapshot.step ?? null;
  } catch {
    return null;
  }
}

async function stepOf(dir: string): Promise<number> {
  try {
    const s = JSON.parse(await fs.readFile(path.join(dir, 'state.json'), 'utf8')) as { step?: unknown };
    return typeof s.step === 'number' ? s.step : -1;
  } catch {
    return -1;
  }
}

/**
 * Put a run folder back in order after a kill (call it holding the folder's lock): for checkpoint/
 * and final/, the newest complete version among the folder itself, its `.old-*` copies and its
 * temporary ones takes the final name; the rest of what killed writers left is removed.
 */
export async function recoverRunDir(out: string, note: (msg: string) => void): Promise<void> {
  const names = await fs.readdir(out).catch((e) => {
    throw describeFsError(e, `reading ${out}`);
  });
  const debris = names.map(parseDebris).filter((d): d is Debris => d !== null && !oursInFlight(d));
  if (!debris.length) return;
  const used = new Set<string>();
  for (const base of CHECKPOINT_DIRS) {
    const candidates = debris.filter((d) => d.base === base);
    if (!candidates.length) continue;
    const target = path.join(out, base);
    const current = (await pathKind(target)) === 'dir';
    let best: { name: string; step: number } | null = current ? { name: base, step: await stepOf(target) } : null;
    for (const c of candidates) {
      const step = await completeStep(path.join(out, c.name));
      // on a tie the newer write wins: a temporary folder is newer than the .old-* it replaces
      if (step !== null && (!best || step > best.step || (step === best.step && best.name !== base && c.kind === 'tmp'))) best = { name: c.name, step };
    }
    if (!best || best.name === base) continue;
    await promote(out, best.name, base);
    used.add(best.name);
    note(`${target}: restored the checkpoint of step ${best.step} that an interrupted write left as ${best.name}`);
  }
  for (const d of debris) {
    if (used.has(d.name) || writerAlive(d)) continue;
    const p = path.join(out, d.name);
    await fs.rm(p, { recursive: true, force: true }).catch((e) => {
      throw describeFsError(e, `removing ${p}`);
    });
    if (d.kind === 'tmp' && CHECKPOINT_DIRS.includes(d.base)) note(`removed ${p}, a checkpoint write cut short by an interruption`);
  }
}

/** Give `from` the name `base`; an older folder there is moved aside first, so a kill in between loses neither. */
async function promote(out: string, from: string, base: string): Promise<void> {
  const target = path.join(out, base);
  const aside = path.join(out, `${base}.old-${process.pid}-${Date.now()}`);
  try {
    const older = (await pathKind(target)) === 'dir';
    if (older) await fs.rename(target, aside);
    await fs.rename(path.join(out, from), target);
    if (older) await fs.rm(aside, { recursive: true, force: true });
  } catch (e) {
    throw describeFsError(e, `restoring ${target}`);
  }
}

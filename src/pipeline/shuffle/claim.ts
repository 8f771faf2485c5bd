import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError } from '../../util/atomic.js';
import { isLockEntry } from '../../util/lock.js';
import { MANIFEST, metaToKv, type ShardManifest, type ShardMeta } from '../../store/shard-format.js';
import { isShardName, otherWriter, otherWriterError } from '../../store/outputs.js';
import { isScratchName, JOURNAL, jobDiff, readJournal, sameJob, WORK_DIR, type JobKey, type Journal } from './journal.js';

/**
 * What a shuffle's --out may hold, and what the shuffle does with it: continue its own
 * unfinished run, finish one that was killed while removing its scratch, start over in scratch
 * killed before its first journal, or refuse. `--force` replaces only what a shuffle wrote:
 * another command's folder is named and left alone, so that no journal (harvest.json, synth.json)
 * ever outlives the data it describes.
 */

export type Claim =
  /** an unfinished run of this very job: continue it */
  | { kind: 'resume'; journal: Journal }
  /** nothing to keep: start (over) */
  | { kind: 'fresh' }
  /** this job's output, complete, with scratch a kill during its removal left: finish removing it */
  | { kind: 'complete'; manifest: ShardManifest };

export interface ClaimRequest {
  out: string;
  /** --out as the user gave it, for messages */
  label: string;
  job: JobKey;
  /** the metadata this job's output carries */
  outMeta: ShardMeta;
  force: boolean;
}

/** Entries of the output folder, sorted, without the lock this run holds there. */
export async function listOut(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).filter((n) => !isLockEntry(n)).sort();
  } catch (err) {
    throw describeFsError(err, `reading ${dir}`);
  }
}

export async function claimOut(r: ClaimRequest): Promise<Claim> {
  const { out, label, job, force } = r;
  const work = path.join(out, WORK_DIR);
  const entries = await listOut(out);
  let journal = entries.includes(WORK_DIR) ? await readJournal(work, force) : null;
  if (journal && !sameJob(journal.job, job)) {
    if (!force) throw new UserError(`${label} holds an unfinished shuffle with other settings (${jobDiff(journal.job, job)}); rerun that command to finish it, or add --force to start over`);
    journal = null;
  }
  if (journal) return { kind: 'resume', journal };

  await refuseForeign(out, label);
  if (force) {
    await removeShuffleOutput(out, entries);
    return { kind: 'fresh' };
  }
  const ownScratch = entries.includes(WORK_DIR) && (await onlyScratch(work));
  const manifest = entries.includes(MANIFEST) ? await readManifest(path.join(out, MANIFEST)) : null;
  if (manifest) {
    const diff = await finishedDiff(out, manifest, r);
    if (diff) throw new UserError(`${label} holds another shuffle (${diff}); choose another --out, or --force to replace it`);
    // the run was killed after its manifest went out, while removing its scratch
    if (ownScratch) return { kind: 'complete', manifest };
    const n = manifest.shards.length;
    throw new UserError(`${label} already holds this shuffle, complete (${manifest.rows} rows in ${n} shard${n === 1 ? '' : 's'}); --force to redo it`);
  }
  // A run killed before its first journal leaves an empty (or half-journaled) shuffle-work and
  // nothing else: its own scratch, so the rerun starts over in it.
  const other = entries.find((n) => n !== WORK_DIR || !ownScratch);
  if (other) throw new UserError(`--out ${label} is not empty (it has ${other}); add --force to replace a shuffle's output there, or choose another --out`);
  await removeShuffleOutput(out, entries);
  return { kind: 'fresh' };
}

/** Does the scratch folder hold only what a shuffle writes there? */
async function onlyScratch(work: string): Promise<boolean> {
  const names = await fs.readdir(work).catch(() => null);
  return names !== null && names.every(isScratchName);
}

async function readManifest(file: string): Promise<ShardManifest | null> {
  try {
    const m = JSON.parse(await fs.readFile(file, 'utf8')) as ShardManifest;
    return m && Array.isArray(m.shards) && m.meta && typeof m.meta === 'object' ? m : null;
  } catch {
    return null;
  }
}

/**
 * Refuse another command's output, whatever --force says: its marks (harvest.json, synth.json)
 * name the command whose --force may replace it; shards whose metadata is not a shuffle's are
 * named by what they hold. Shards of unknown origin are not refused here: they are only in the
 * way of a rerun without --force.
 */
async function refuseForeign(out: string, label: string): Promise<void> {
  const w = await otherWriter(out, 'shuffle');
  if (!w || w.writer === 'other') return;
  if (!w.meta) throw otherWriterError(w, label);
  throw new UserError(`--out ${label} holds activation shards not written by sae shuffle (${w.evidence}: ${w.meta.model} ${w.meta.hook}), which sae shuffle --force does not replace; choose another --out`);
}

/** Why a finished shuffle in `out` is not this job's output, or null when it is. */
async function finishedDiff(out: string, m: ShardManifest, r: ClaimRequest): Promise<string | null> {
  const was = m.meta.extras ?? {};
  const now = r.outMeta.extras ?? {};
  if (was['shuffle.source'] !== now['shuffle.source']) return `input ${was['shuffle.source']} there, ${now['shuffle.source']} here`;
  if (was['shuffle.seed'] !== now['shuffle.seed']) return `--seed ${was['shuffle.seed']} there, ${now['shuffle.seed']} here`;
  if (was['shuffle.rows'] !== now['shuffle.rows']) return `${was['shuffle.rows']} input rows there, ${now['shuffle.rows']} here`;
  if (was['shuffle.buckets'] !== now['shuffle.buckets']) return `${was['shuffle.buckets']} buckets there, ${now['shuffle.buckets']} here: another --memory`;
  const rows = m.shards.map((s) => s.rows);
  const N = Number(now['shuffle.rows']);
  const k = r.job.shardRows;
  const want = Array.from({ length: Math.ceil(N / k) }, (_, i) => Math.min(k, N - i * k));
  if (JSON.stringify(rows) !== JSON.stringify(want)) return `--shard-rows ${rows[0]} there, ${r.job.shardRows} here`;
  let same = false;
  try {
    same = JSON.stringify(metaToKv(m.meta)) === JSON.stringify(metaToKv(r.outMeta));
  } catch {
    // metadata that does not validate is not this job's
  }
  if (!same) return `the input's metadata differs`;
  // an input rewritten since (a new harvest into the same folder) is another shuffle's input
  const made = (await fs.stat(path.join(out, MANIFEST))).mtimeMs;
  if (r.job.inputs.some((f) => f.mtimeMs > made)) return `its input changed after it was made`;
  for (const s of m.shards) {
    if (!(await fs.stat(path.join(out, s.file)).catch(() => null))) return `${s.file} listed in its manifest is missing`;
  }
  return null;
}

/** What a shuffle (through ShardWriter and writeFileAtomic) puts in its output folder. */
function isShuffleOutput(name: string): boolean {
  return name === MANIFEST || name === WORK_DIR || isShardName(name) || /^\.(shard-\d+\.parquet|manifest\.json)\.tmp-/.test(name);
}

/**
 * Remove a shuffle's output. The manifest goes first, so that the folder never looks complete
 * while half-deleted; then the journal, so that no journal vouches for shards already gone; the
 * shards last. A kill at any point leaves a state a rerun resumes or a --force rerun clears.
 */
export async function removeShuffleOutput(out: string, entries: string[]): Promise<void> {
  const rank = (n: string) => (n === MANIFEST ? 0 : n === WORK_DIR ? 1 : 2);
  const ours = entries.filter(isShuffleOutput).sort((a, b) => rank(a) - rank(b));
  const rm = async (p: string) =>
    fs.rm(p, { recursive: true, force: true }).catch((e) => {
      throw describeFsError(e, `removing ${p}`);
    });
  for (const n of ours) {
    if (n === WORK_DIR) await fs.rm(path.join(out, WORK_DIR, JOURNAL), { force: true }).catch(() => undefined);
    await rm(path.join(out, n));
  }
}

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError, writeFileAtomic } from '../../util/atomic.js';
import type { RngState } from '../../util/rng.js';
import { formatBytes } from './plan.js';

/**
 * The shuffle's scratch folder OUT/shuffle-work/ and the journal in it that makes a run
 * resumable: what job it belongs to, which pass it is in, and how far pass 1 got.
 */

export { SHUFFLE_WORK as WORK_DIR } from '../../store/outputs.js';
export const JOURNAL = 'journal.json';
const JOURNAL_FORMAT = 'sae-shuffle-journal/1';

/** What must not change between a run and its resumption. */
export interface JobKey {
  source: string;
  inputs: { file: string; rows: number; bytes: number; mtimeMs: number }[];
  seed: number;
  memory: number;
  shardRows: number;
  buckets: number;
}

export interface Journal {
  format: string;
  job: JobKey;
  phase: 'scatter' | 'gather';
  /** input files fully dealt */
  filesDone: number;
  /** rows in each bucket file that are durable */
  bucketFill: number[];
  rng: RngState;
}

export function newJournal(job: JobKey, buckets: number, rng: RngState): Journal {
  return { format: JOURNAL_FORMAT, job, phase: 'scatter', filesDone: 0, bucketFill: new Array<number>(buckets).fill(0), rng };
}

export function bucketPath(work: string, b: number): string {
  return path.join(work, `bucket-${String(b).padStart(5, '0')}.bin`);
}

/** What a shuffle puts in its scratch folder: bucket files, the journal and its temp files. */
export function isScratchName(name: string): boolean {
  return /^bucket-\d+\.bin$/.test(name) || name === JOURNAL || name.startsWith(`.${JOURNAL}.tmp-`);
}

/**
 * The journal in `work`, or null when there is none. A damaged one is an error unless `force`
 * (which starts over anyway).
 */
export async function readJournal(work: string, force = false): Promise<Journal | null> {
  const file = path.join(work, JOURNAL);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw describeFsError(err, `reading ${file}`);
  }
  let j: Journal;
  try {
    j = JSON.parse(text) as Journal;
  } catch {
    if (force) return null;
    throw new UserError(`${file}: malformed JSON; add --force to start the shuffle over`);
  }
  if (j?.format !== JOURNAL_FORMAT || !j.job || !Array.isArray(j.bucketFill) || !Array.isArray(j.rng)) {
    if (force) return null;
    throw new UserError(`${file}: not a shuffle journal (format ${JSON.stringify(j?.format)}); add --force to start the shuffle over`);
  }
  return j;
}

export async function writeJournal(work: string, j: Journal): Promise<void> {
  await writeFileAtomic(path.join(work, JOURNAL), JSON.stringify(j) + '\n');
}

export function sameJob(a: JobKey, b: JobKey): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The first setting on which an unfinished job and this one differ, for the message. */
export function jobDiff(was: JobKey, now: JobKey): string {
  if (was.source !== now.source) return `input ${was.source}, now ${now.source}`;
  if (JSON.stringify(was.inputs) !== JSON.stringify(now.inputs)) return `the input files changed since it began`;
  if (was.seed !== now.seed) return `--seed ${was.seed}, now ${now.seed}`;
  if (was.memory !== now.memory) return `--memory ${formatBytes(was.memory)}, now ${formatBytes(now.memory)}`;
  if (was.shardRows !== now.shardRows) return `--shard-rows ${was.shardRows}, now ${now.shardRows}`;
  return `${was.buckets} buckets, now ${now.buckets}`;
}

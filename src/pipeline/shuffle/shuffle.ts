import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError } from '../../util/atomic.js';
import { ensureOutDir, pathKind } from '../../util/outdir.js';
import { lockOutDir, type OutDirLock } from '../../util/lock.js';
import { openShards, type ShardSet } from '../../store/shard-set.js';
import { hasRawStats, type ShardFileEntry, type ShardManifest, type ShardMeta } from '../../store/shard-format.js';
import { formatBytes, planShuffle, recordLayout, type RecordLayout, type ShufflePlan } from './plan.js';
import { WORK_DIR, type JobKey } from './journal.js';
import { claimOut } from './claim.js';
import { BadInputData, gather, scatter, type PassContext, type ShuffleProgress } from './passes.js';

export { WORK_DIR } from './journal.js';
export { BadInputData, ShuffleInterrupted, ShuffleStopped, type ShuffleProgress } from './passes.js';

/**
 * `sae shuffle`: a full external shuffle of activation shards within a memory budget (SPEC §1).
 *
 * Pass 1 reads the input in order and deals every row into one of K fixed-size bucket files
 * (BucketSampler, seeded); pass 2 loads one bucket at a time, permutes it (Fisher–Yates, seeded
 * per bucket) and appends it to the output shards. Scratch lives in OUT/shuffle-work/ and is
 * removed at the end.
 *
 * Resumable: pass 1 checkpoints after every input file (bucket files fsynced, then
 * journal.json replaced atomically: rows per bucket and the RNG state); a rerun truncates the
 * buckets to the journal and continues with the next file. Pass 2 keeps completed output shards
 * (renamed into place only when whole) and restarts at the first missing one. Since every
 * random draw depends only on the seed and the position, a resumed run writes the same bytes as
 * an uninterrupted one.
 *
 * What --out may already hold, and what a rerun does with it, is src/pipeline/shuffle/claim.ts's; the
 * passes are src/pipeline/shuffle/passes.ts's.
 */

const DEFAULT_SHARD_ROWS = 65536;

export interface StatfsResult {
  bavail: number | bigint;
  bsize: number | bigint;
}

export interface ShuffleOptions {
  /** input: a shard folder (with manifest.json) or a .parquet file */
  data: string;
  out: string;
  /** memory budget in bytes for the row buffers */
  memory: number;
  seed?: number;
  /** rows per output shard (default 65536) */
  shardRows?: number;
  /** replace what an earlier shuffle left in out (shards, manifest, scratch) instead of refusing; never another command's output */
  force?: boolean;
  allowNoManifest?: boolean;
  progress?: ShuffleProgress;
  /** free space on the filesystem of a path (default fs.statfs); injectable for tests */
  statfs?: (p: string) => Promise<StatfsResult>;
  /** the input already opened (shards announced on a pipe); `data` then only names it */
  set?: ShardSet;
  /** called for every completed output shard, in order (those kept from an interrupted run first) */
  onShard?: (entry: ShardFileEntry, file: string) => void | Promise<void>;
  /** testing: stop as a kill would, after this many rows are dealt (pass 1) or shards written (pass 2) in this run */
  stopAfter?: { dealtRows?: number; outputShards?: number };
  /** when aborted (Ctrl-C), the run stops at its next safe point with ShuffleInterrupted */
  signal?: AbortSignal;
  /** testing: after this many input files are dealt, wait for `signal` to abort */
  pauseAfterFiles?: number;
}

export interface ShuffleSummary {
  out: string;
  rows: number;
  shards: number;
  buckets: number;
  /** rows per bucket (the largest), held in memory in pass 2 */
  bucketCapacity: number;
  /** rows per bucket write buffer in pass 1 */
  scatterRows: number;
  /** bytes of the one buffer both passes use */
  arenaBytes: number;
  scratchBytes: number;
  /** estimated peak of scratch + output on disk */
  peakDiskBytes: number;
  /** whether this run continued an interrupted one */
  resumed: boolean;
  manifest: ShardManifest;
}

const quiet: ShuffleProgress = { line: () => undefined, tick: () => undefined };

export async function shuffleShards(opts: ShuffleOptions): Promise<ShuffleSummary> {
  const progress = opts.progress ?? quiet;
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new UserError(`--seed must be an integer, got ${seed}`);
  // as sae train's seed: one convention across commands, so a pipeline's seed is valid everywhere
  if (seed < 0) throw new UserError(`--seed must be ≥ 0, got ${seed}`);
  const shardRows = opts.shardRows ?? DEFAULT_SHARD_ROWS;
  if (!Number.isSafeInteger(shardRows) || shardRows < 1) throw new UserError(`--shard-rows must be a positive integer, got ${shardRows}`);
  if (!Number.isSafeInteger(opts.memory) || opts.memory < 1) throw new UserError(`--memory must be a positive number of bytes, got ${opts.memory}`);
  const source = path.resolve(opts.data);
  const out = path.resolve(opts.out);
  if (source === out) throw new UserError(`--out ${opts.out} is the input folder; choose another --out`);

  const set = opts.set ?? (await openShards(opts.data, { allowNoManifest: opts.allowNoManifest }));
  const meta = set.meta;
  const layout = recordLayout(meta.d, meta.dtype, hasRawStats(meta));
  const plan = planShuffle(set.rows, layout, opts.memory);
  const inputs = await Promise.all(
    set.files.map(async (f) => {
      const st = await fs.stat(f.path);
      return { file: path.resolve(f.path), rows: f.rows, bytes: st.size, mtimeMs: st.mtimeMs };
    }),
  );
  const job: JobKey = { source, inputs, seed, memory: opts.memory, shardRows, buckets: plan.buckets };
  const outMeta: ShardMeta = {
    ...meta,
    extras: {
      ...meta.extras,
      'shuffle.seed': String(seed),
      'shuffle.source': source,
      'shuffle.rows': String(set.rows),
      'shuffle.buckets': String(plan.buckets),
    },
  };

  const createdOut = (await pathKind(out)) === 'absent';
  await ensureOutDir(out, '--out');
  let lock: OutDirLock;
  try {
    lock = await lockOutDir(opts.out, 'sae shuffle');
  } catch (err) {
    if (createdOut) await fs.rmdir(out).catch(() => undefined);
    throw err;
  }
  try {
    return await shuffleInto(opts, { set, meta, layout, plan, inputs, job, outMeta, out, seed, shardRows, progress });
  } catch (err) {
    // rmdir removes only an empty folder: one this run created and that holds nothing (not even
    // scratch to resume from), as after a refusal for disk space or unreadable input rows. The
    // lock file sits inside it, so it goes first.
    await lock.release();
    if (createdOut) await fs.rmdir(out).catch(() => undefined);
    throw err;
  } finally {
    await lock.release();
  }
}

interface ShuffleJob {
  set: ShardSet;
  meta: ShardMeta;
  layout: RecordLayout;
  plan: ShufflePlan;
  inputs: JobKey['inputs'];
  job: JobKey;
  outMeta: ShardMeta;
  out: string;
  seed: number;
  shardRows: number;
  progress: ShuffleProgress;
}

async function shuffleInto(opts: ShuffleOptions, x: ShuffleJob): Promise<ShuffleSummary> {
  const { set, meta, layout, plan, inputs, job, outMeta, out, seed, shardRows, progress } = x;
  const work = path.join(out, WORK_DIR);
  const claim = await claimOut({ out, label: opts.out, job, outMeta, force: !!opts.force });

  // Disk: scratch = every row once; pass 2 frees a bucket once its rows are in completed shards,
  // so the peak is about one copy plus one bucket and one shard in flight.
  const inputBytes = inputs.reduce((a, f) => a + f.bytes, 0);
  const outputBytes = Math.ceil(inputBytes * 1.01) + 65536;
  const outPerRow = outputBytes / set.rows;
  const peak = Math.ceil(Math.max(plan.scratchBytes, outputBytes) + plan.capacity * layout.bytes + Math.min(shardRows, set.rows) * outPerRow);
  const summary = (manifest: ShardManifest, resumed: boolean): ShuffleSummary => ({
    out: opts.out,
    rows: manifest.rows,
    shards: manifest.shards.length,
    buckets: plan.buckets,
    bucketCapacity: plan.capacity,
    scatterRows: plan.scatterRows,
    arenaBytes: plan.arenaBytes,
    scratchBytes: plan.scratchBytes,
    peakDiskBytes: peak,
    resumed,
    manifest,
  });

  if (claim.kind === 'complete') {
    // killed while removing its scratch: the output was already whole, so finishing is all that is left
    progress.line(`shuffle: ${opts.out} holds this shuffle, complete; removing the scratch an interrupted run left in ${WORK_DIR}/`);
    await fs.rm(work, { recursive: true, force: true }).catch((e) => {
      throw describeFsError(e, `removing ${work}`);
    });
    for (const e of claim.manifest.shards) await opts.onShard?.(e, path.join(out, e.file));
    return summary(claim.manifest, true);
  }
  let journal = claim.kind === 'resume' ? claim.journal : null;
  const resumed = journal !== null;
  const present = resumed ? (await dirBytes(work)) + (await dirBytes(out, /^shard-\d+\.parquet$/)) : 0;
  const need = Math.max(0, peak - present);
  const free = await freeBytes(out, opts.statfs);
  progress.line(
    `shuffle: ${set.rows} rows × d=${meta.d} ${meta.dtype} from ${set.files.length} file${set.files.length === 1 ? '' : 's'} → ` +
      `${plan.buckets} bucket${plan.buckets === 1 ? '' : 's'} of ≤${plan.capacity} rows (buffer ${formatBytes(plan.arenaBytes)} of --memory ${formatBytes(opts.memory)}); ` +
      `disk: scratch ${formatBytes(plan.scratchBytes)}, output ≈${formatBytes(outputBytes)}, peak ≈${formatBytes(peak)}` +
      `${resumed ? `, ${formatBytes(present)} already written` : ''}; ${formatBytes(free)} free${resumed ? '; resuming' : ''}`,
  );
  if (free < need) {
    throw new UserError(`not enough disk space for the shuffle in ${opts.out}: it needs ${formatBytes(need)} more (scratch ${formatBytes(plan.scratchBytes)} + output ≈${formatBytes(outputBytes)}, peak ≈${formatBytes(peak)}) but ${formatBytes(free)} is free`);
  }

  const ctx: PassContext = {
    set,
    plan,
    layout,
    work,
    out,
    job,
    outMeta,
    shardRows,
    seed,
    arena: new ArrayBuffer(plan.arenaBytes),
    progress,
    signal: opts.signal,
    pauseAfterFiles: opts.pauseAfterFiles,
    stopAfter: opts.stopAfter,
    onShard: opts.onShard,
  };
  if (!journal || journal.phase === 'scatter') {
    await fs.mkdir(work, { recursive: true }).catch((e) => {
      throw describeFsError(e, `creating ${work}`);
    });
    try {
      journal = await scatter(ctx, journal);
    } catch (err) {
      // no output shard exists before the scatter ends, so the scratch is all there is to drop
      if (err instanceof BadInputData) await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
  }
  const manifest = await gather(ctx);
  await fs.rm(work, { recursive: true, force: true });
  return summary(manifest, resumed);
}

async function dirBytes(dir: string, only?: RegExp): Promise<number> {
  let total = 0;
  for (const n of await fs.readdir(dir).catch(() => [] as string[])) {
    if (only && !only.test(n)) continue;
    const st = await fs.stat(path.join(dir, n)).catch(() => null);
    if (st?.isFile()) total += st.size;
  }
  return total;
}

async function freeBytes(dir: string, statfs?: (p: string) => Promise<StatfsResult>): Promise<number> {
  let st: StatfsResult;
  try {
    st = await (statfs ?? ((p: string) => fs.statfs(p)))(dir);
  } catch (err) {
    throw describeFsError(err, `checking free space of ${dir}`);
  }
  return Number(st.bavail) * Number(st.bsize);
}


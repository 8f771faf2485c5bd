import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { describeFsError, writeFileAtomic } from '../util/atomic.js';
import { ensureOutDir, pathKind } from '../util/outdir.js';
import { Rng, type RngState } from '../util/rng.js';
import { openShards, readRows, type ShardSet } from '../store/reader.js';
import { hasRawStats, MANIFEST, metaToKv, shardFileName, ShardWriter, type ShardFileEntry, type ShardManifest, type ShardMeta } from '../store/shards.js';
import { decode16, encode16 } from '../store/dtype.js';
import { BucketSampler, formatBytes, planShuffle, recordLayout, type RecordLayout, type ShufflePlan } from './plan.js';

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
 */

export const WORK_DIR = 'shuffle-work';
const JOURNAL = 'journal.json';
const JOURNAL_FORMAT = 'sae-shuffle-journal/1';
const DEFAULT_SHARD_ROWS = 65536;

export interface StatfsResult {
  bavail: number | bigint;
  bsize: number | bigint;
}

export interface ShuffleProgress {
  line(text: string): void;
  tick(done: number, total: number, info?: string): void;
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
  /** remove what an earlier shuffle left in out (shards, manifest, scratch) instead of refusing */
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

/** Thrown by the stopAfter hook: the run stopped as if killed, leaving its scratch behind. */
/**
 * The input's rows are unreadable (NaN, a corrupt shard): unlike a kill or a full disk, a rerun
 * cannot get past this, so the scratch dealt so far is removed instead of kept for a resume.
 */
export class BadInputData extends UserError {}

export class ShuffleStopped extends Error {
  constructor(where: string) {
    super(`shuffle stopped (testing hook) ${where}`);
    this.name = 'ShuffleStopped';
  }
}

/** What must not change between a run and its resumption. */
interface JobKey {
  source: string;
  inputs: { file: string; rows: number; bytes: number; mtimeMs: number }[];
  seed: number;
  memory: number;
  shardRows: number;
  buckets: number;
}

interface Journal {
  format: string;
  job: JobKey;
  phase: 'scatter' | 'gather';
  /** input files fully dealt */
  filesDone: number;
  /** rows in each bucket file that are durable */
  bucketFill: number[];
  rng: RngState;
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
  try {
    return await shuffleInto(opts, { set, meta, layout, plan, inputs, job, outMeta, out, seed, shardRows, progress });
  } catch (err) {
    // rmdir removes only an empty folder: one this run created and that holds nothing (not even
    // scratch to resume from), as after a refusal for disk space or unreadable input rows
    if (createdOut) await fs.rmdir(out).catch(() => undefined);
    throw err;
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
  let journal = await readJournal(work);
  if (journal && !sameJob(journal.job, job)) {
    if (!opts.force) {
      throw new UserError(`${opts.out} holds an unfinished shuffle with other settings (${jobDiff(journal.job, job)}); rerun that command to finish it, or add --force to start over`);
    }
    journal = null;
  }
  const resumed = journal !== null;
  if (!journal) {
    const entries = await listDir(out);
    if (entries.length) {
      if (!opts.force) throw new UserError(`--out ${opts.out} is not empty (it has ${entries[0]}); add --force to replace a shuffle's output there, or choose another --out`);
      await removeShuffleOutput(out, entries);
    }
  }

  // Disk: scratch = every row once; pass 2 frees a bucket once its rows are in completed shards,
  // so the peak is about one copy plus one bucket and one shard in flight.
  const inputBytes = inputs.reduce((a, f) => a + f.bytes, 0);
  const outputBytes = Math.ceil(inputBytes * 1.01) + 65536;
  const outPerRow = outputBytes / set.rows;
  const peak = Math.ceil(Math.max(plan.scratchBytes, outputBytes) + plan.capacity * layout.bytes + Math.min(shardRows, set.rows) * outPerRow);
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

  const arena = new ArrayBuffer(plan.arenaBytes);
  if (!journal || journal.phase === 'scatter') {
    await fs.mkdir(work, { recursive: true }).catch((e) => {
      throw describeFsError(e, `creating ${work}`);
    });
    try {
      journal = await scatter(set, plan, layout, work, job, journal, arena, seed, progress, opts.stopAfter?.dealtRows);
    } catch (err) {
      // no output shard exists before the scatter ends, so the scratch is all there is to drop
      if (err instanceof BadInputData) await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
  }
  const manifest = await gather(plan, layout, work, out, outMeta, shardRows, arena, seed, progress, opts.stopAfter?.outputShards, opts.onShard);
  await fs.rm(work, { recursive: true, force: true });
  return {
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
  };
}

function bucketPath(work: string, b: number): string {
  return path.join(work, `bucket-${String(b).padStart(5, '0')}.bin`);
}

async function readJournal(work: string): Promise<Journal | null> {
  const file = path.join(work, JOURNAL);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw describeFsError(err, `reading ${file}`);
  }
  let j: Journal;
  try {
    j = JSON.parse(text) as Journal;
  } catch {
    throw new UserError(`${file}: malformed JSON; add --force to start the shuffle over`);
  }
  if (j?.format !== JOURNAL_FORMAT || !j.job || !Array.isArray(j.bucketFill) || !Array.isArray(j.rng)) {
    throw new UserError(`${file}: not a shuffle journal (format ${JSON.stringify(j?.format)}); add --force to start the shuffle over`);
  }
  return j;
}

async function writeJournal(work: string, j: Journal): Promise<void> {
  await writeFileAtomic(path.join(work, JOURNAL), JSON.stringify(j) + '\n');
}

function sameJob(a: JobKey, b: JobKey): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The first setting on which an unfinished job and this one differ, for the message. */
function jobDiff(was: JobKey, now: JobKey): string {
  if (was.source !== now.source) return `input ${was.source}, now ${now.source}`;
  if (JSON.stringify(was.inputs) !== JSON.stringify(now.inputs)) return `the input files changed since it began`;
  if (was.seed !== now.seed) return `--seed ${was.seed}, now ${now.seed}`;
  if (was.memory !== now.memory) return `--memory ${formatBytes(was.memory)}, now ${formatBytes(now.memory)}`;
  if (was.shardRows !== now.shardRows) return `--shard-rows ${was.shardRows}, now ${now.shardRows}`;
  return `${was.buckets} buckets, now ${now.buckets}`;
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).sort();
  } catch (err) {
    throw describeFsError(err, `reading ${dir}`);
  }
}

/** What a shuffle (through ShardWriter and writeFileAtomic) puts in its output folder. */
function isShuffleOutput(name: string): boolean {
  return name === MANIFEST || name === WORK_DIR || /^shard-\d+\.parquet$/.test(name) || /^\.(shard-\d+\.parquet|manifest\.json)\.tmp-/.test(name);
}

async function removeShuffleOutput(out: string, entries: string[]): Promise<void> {
  // The manifest first, so that the folder never looks complete while half-deleted.
  const ours = entries.filter(isShuffleOutput).sort((a, b) => (a === MANIFEST ? -1 : b === MANIFEST ? 1 : 0));
  for (const n of ours) {
    await fs.rm(path.join(out, n), { recursive: true, force: true }).catch((e) => {
      throw describeFsError(e, `removing ${path.join(out, n)}`);
    });
  }
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

/** Typed views of the shared buffer; records are 4-byte aligned, see RecordLayout. */
class Arena {
  readonly u8: Uint8Array;
  readonly i32: Int32Array;
  readonly f32: Float32Array;
  readonly u16: Uint16Array;
  constructor(readonly buf: ArrayBuffer) {
    this.u8 = new Uint8Array(buf);
    this.i32 = new Int32Array(buf, 0, buf.byteLength >> 2);
    this.f32 = new Float32Array(buf, 0, buf.byteLength >> 2);
    this.u16 = new Uint16Array(buf, 0, buf.byteLength >> 1);
  }
}

/** Write row r of a chunk as the record at byte offset o. */
function packRecord(a: Arena, o: number, L: RecordLayout, acts: Float32Array, r: number, tok: Int32Array, ctx: Int32Array, pos: Int32Array, mean?: Float32Array, norm?: Float32Array): void {
  const d = L.d;
  const src = acts.subarray(r * d, r * d + d);
  if (L.dtype === 'float32') a.f32.set(src, o >> 2);
  // Values read from a 16-bit shard are exact in that dtype, so re-encoding is lossless.
  else encode16(src, a.u16.subarray(o >> 1, (o >> 1) + d), d, L.dtype);
  const w = (o + L.actBytes) >> 2;
  a.i32[w] = tok[r];
  a.i32[w + 1] = ctx[r];
  a.i32[w + 2] = pos[r];
  if (L.raw) {
    a.f32[w + 3] = mean![r];
    a.f32[w + 4] = norm![r];
  }
}

async function scatter(
  set: ShardSet,
  plan: ShufflePlan,
  L: RecordLayout,
  work: string,
  job: JobKey,
  prior: Journal | null,
  buf: ArrayBuffer,
  seed: number,
  progress: ShuffleProgress,
  stopAfterRows?: number,
): Promise<Journal> {
  const K = plan.buckets;
  const B = plan.scatterRows;
  const rec = L.bytes;
  const a = new Arena(buf);
  const durable = prior ? [...prior.bucketFill] : new Array<number>(K).fill(0);
  if (durable.length !== K) throw new UserError(`${path.join(work, JOURNAL)}: lists ${durable.length} buckets, expected ${K}; add --force to start the shuffle over`);
  // Cut every bucket back to what the journal vouches for: anything after was written past the
  // last checkpoint and will be dealt again.
  for (let b = 0; b < K; b++) {
    const file = bucketPath(work, b);
    const want = durable[b] * rec;
    const size = (await fs.stat(file).catch(() => null))?.size ?? 0;
    if (size < want) throw new UserError(`${file}: holds ${size} bytes but the journal vouches for ${want}; the scratch is damaged, add --force to start the shuffle over`);
    if (size > want) await fs.truncate(file, want).catch((e) => Promise.reject(describeFsError(e, `truncating ${file}`)));
  }
  const rng = prior ? new Rng(prior.rng) : Rng.derive(seed, 'shuffle/deal');
  const sampler = new BucketSampler(plan.bucketRows.map((n, b) => n - durable[b]));
  const fill = new Int32Array(K);
  const dirty = new Uint8Array(K);
  const written = [...durable];

  const flush = async (b: number, sync: boolean): Promise<void> => {
    if (fill[b] === 0 && !(sync && dirty[b])) return;
    const file = bucketPath(work, b);
    let fh: fs.FileHandle | undefined;
    try {
      fh = await fs.open(file, 'a');
      if (fill[b] > 0) {
        const o = b * B * rec;
        await writeAll(fh, a.u8.subarray(o, o + fill[b] * rec));
        written[b] += fill[b];
        fill[b] = 0;
        dirty[b] = 1;
      }
      if (sync) {
        await fh.sync();
        dirty[b] = 0;
      }
    } catch (err) {
      throw describeFsError(err, `writing ${file}`);
    } finally {
      await fh?.close();
    }
  };

  let journal: Journal = prior ?? { format: JOURNAL_FORMAT, job, phase: 'scatter', filesDone: 0, bucketFill: durable, rng: rng.state() };
  if (!prior) await writeJournal(work, journal);
  let dealt = 0;
  let rowsDone = set.files.slice(0, journal.filesDone).reduce((s, f) => s + f.rows, 0);
  for (let fi = journal.filesDone; fi < set.files.length; fi++) {
    const f = set.files[fi];
    let start = 0;
    for (const g of f.rowGroups) {
      if (g === 0) continue;
      const c = await readRows(set, fi, start, start + g).catch((err) => {
        throw err instanceof UserError ? new BadInputData(err.message, err.exitCode) : err;
      });
      start += g;
      for (let r = 0; r < c.n; r++) {
        const b = sampler.draw(rng);
        packRecord(a, (b * B + fill[b]) * rec, L, c.acts, r, c.tokenIds, c.contextIds, c.positions, c.rawMean, c.rawNorm);
        if (++fill[b] === B) await flush(b, false);
        if (stopAfterRows !== undefined && ++dealt >= stopAfterRows) throw new ShuffleStopped(`after dealing ${dealt} rows`);
      }
      rowsDone += c.n;
      progress.tick(rowsDone, set.rows, 'rows dealt');
    }
    for (let b = 0; b < K; b++) await flush(b, true);
    journal = { ...journal, filesDone: fi + 1, bucketFill: [...written], rng: rng.state() };
    await writeJournal(work, journal);
    progress.line(`shuffle: dealt ${path.basename(f.path)} (${fi + 1}/${set.files.length} files, ${rowsDone}/${set.rows} rows)`);
  }
  for (let b = 0; b < K; b++) {
    if (written[b] !== plan.bucketRows[b]) throw new Error(`shuffle: bucket ${b} holds ${written[b]} rows, expected ${plan.bucketRows[b]}`);
  }
  journal = { ...journal, phase: 'gather' };
  await writeJournal(work, journal);
  return journal;
}

async function writeAll(fh: fs.FileHandle, data: Uint8Array): Promise<void> {
  const PIECE = 1 << 30;
  for (let o = 0; o < data.length; o += PIECE) {
    const part = data.subarray(o, Math.min(data.length, o + PIECE));
    let done = 0;
    while (done < part.length) done += (await fh.write(part, done, part.length - done)).bytesWritten;
  }
}

async function readAll(file: string, dst: Uint8Array): Promise<void> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(file, 'r');
    const size = (await fh.stat()).size;
    if (size !== dst.length) throw new UserError(`${file}: holds ${size} bytes, expected ${dst.length}; the scratch is damaged, add --force to start the shuffle over`);
    const PIECE = 1 << 30;
    let got = 0;
    while (got < dst.length) {
      const { bytesRead } = await fh.read(dst, got, Math.min(PIECE, dst.length - got), got);
      if (bytesRead === 0) throw new UserError(`${file}: shorter than expected; add --force to start the shuffle over`);
      got += bytesRead;
    }
  } catch (err) {
    throw describeFsError(err, `reading ${file}`);
  } finally {
    await fh?.close();
  }
}

/** Output shards a previous run completed: shard-00000… in sequence, each full, ours. */
async function completedShards(out: string, outMeta: ShardMeta, shardRows: number, rows: number): Promise<ShardFileEntry[]> {
  const names = new Set(await listDir(out));
  const kv = JSON.stringify(metaToKv(outMeta));
  const done: ShardFileEntry[] = [];
  for (let i = 0; names.has(shardFileName(i)); i++) {
    const file = path.join(out, shardFileName(i));
    const expect = Math.min(shardRows, rows - i * shardRows);
    const s = await openShards(file);
    if (s.rows !== expect || JSON.stringify(metaToKv(s.meta)) !== kv) {
      throw new UserError(`${file}: not a shard of this shuffle (${s.rows} rows, expected ${expect}); add --force to start the shuffle over`);
    }
    done.push({ file: shardFileName(i), rows: expect });
  }
  // A killed writer leaves its shard in progress as a temporary file.
  for (const n of names) if (/^\.shard-\d+\.parquet\.tmp-/.test(n)) await fs.rm(path.join(out, n), { force: true });
  return done;
}

async function gather(
  plan: ShufflePlan,
  L: RecordLayout,
  work: string,
  out: string,
  outMeta: ShardMeta,
  shardRows: number,
  buf: ArrayBuffer,
  seed: number,
  progress: ShuffleProgress,
  stopAfterShards?: number,
  onShard?: (entry: ShardFileEntry, file: string) => void | Promise<void>,
): Promise<ShardManifest> {
  const N = plan.rows;
  const done = await completedShards(out, outMeta, shardRows, N);
  for (const e of done) await onShard?.(e, path.join(out, e.file));
  const manifestPath = path.join(out, MANIFEST);
  if (done.length * shardRows >= N) {
    // Killed after the manifest went out but before the scratch was removed.
    const existing = await fs.readFile(manifestPath, 'utf8').catch(() => null);
    if (existing) return JSON.parse(existing) as ShardManifest;
  }
  const writer = await ShardWriter.create(out, outMeta, { rowsPerShard: shardRows, continueAfter: done, onShard: (e) => onShard?.(e, path.join(out, e.file)) });
  const d = L.d;
  const rec = L.bytes;
  const a = new Arena(buf);
  const perm = new Uint32Array(buf, plan.capacity * rec, plan.capacity);
  // Rows go to the writer through small staging buffers, a constant beside the budget.
  const G = Math.max(1, Math.min(plan.capacity, Math.floor(262144 / d)));
  const acts = new Float32Array(G * d);
  const tok = new Int32Array(G);
  const ctx = new Int32Array(G);
  const pos = new Int32Array(G);
  const mean = new Float32Array(L.raw ? G : 0);
  const norm = new Float32Array(L.raw ? G : 0);
  const raw = L.raw ? { mean, norm } : undefined;
  const startRow = done.length * shardRows;
  const shardsAtStart = done.length;
  let nextToFree = 0;
  try {
    for (let b = 0; b < plan.buckets; b++) {
      const bStart = plan.bucketStart[b];
      const n = plan.bucketRows[b];
      if (bStart + n <= startRow) {
        await fs.rm(bucketPath(work, b), { force: true });
        nextToFree = b + 1;
        continue;
      }
      await readAll(bucketPath(work, b), a.u8.subarray(0, n * rec));
      for (let i = 0; i < n; i++) perm[i] = i;
      Rng.derive(seed, `shuffle/bucket/${b}`).shuffle(perm.subarray(0, n));
      for (let i = Math.max(0, startRow - bStart); i < n; ) {
        const take = Math.min(G, n - i);
        for (let t = 0; t < take; t++) {
          const o = perm[i + t] * rec;
          if (L.dtype === 'float32') acts.set(a.f32.subarray(o >> 2, (o >> 2) + d), t * d);
          else decode16(a.u16.subarray(o >> 1, (o >> 1) + d), acts.subarray(t * d, t * d + d), d, L.dtype);
          const w = (o + L.actBytes) >> 2;
          tok[t] = a.i32[w];
          ctx[t] = a.i32[w + 1];
          pos[t] = a.i32[w + 2];
          if (raw) {
            mean[t] = a.f32[w + 3];
            norm[t] = a.f32[w + 4];
          }
        }
        await writer.append(acts.subarray(0, take * d), take, tok, ctx, pos, raw);
        i += take;
        // A bucket's file goes once all its rows sit in completed shards: a rerun never needs it.
        const safe = writer.rowsInCompletedShards;
        while (nextToFree < plan.buckets && plan.bucketStart[nextToFree] + plan.bucketRows[nextToFree] <= safe) {
          await fs.rm(bucketPath(work, nextToFree), { force: true });
          nextToFree++;
        }
        progress.tick(writer.rowsWritten, N, 'rows written');
        if (stopAfterShards !== undefined && Math.floor(safe / shardRows) - shardsAtStart >= stopAfterShards) {
          throw new ShuffleStopped(`after ${stopAfterShards} output shards`);
        }
      }
      progress.line(`shuffle: bucket ${b + 1}/${plan.buckets} written (${writer.rowsWritten}/${N} rows)`);
    }
    return await writer.close();
  } catch (err) {
    await writer.abort();
    throw err;
  }
}

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError } from '../../util/atomic.js';
import { Rng } from '../../util/rng.js';
import { writeAll } from '../../util/write-all.js';
import { openShards, type ShardSet } from '../../store/shard-set.js';
import { readRows } from '../../store/row-reader.js';
import { metaToKv, MANIFEST, shardFileName, type ShardFileEntry, type ShardManifest, type ShardMeta } from '../../store/shard-format.js';
import { ShardWriter } from '../../store/shard-writer.js';
import { decode16, encode16 } from '../../store/dtype.js';
import { BucketSampler, type RecordLayout, type ShufflePlan } from './plan.js';
import { bucketPath, JOURNAL, newJournal, writeJournal, type JobKey, type Journal } from './journal.js';
import { listOut } from './claim.js';

/**
 * The two passes of the external shuffle. Pass 1 (scatter) deals the input rows into the bucket
 * files, checkpointing the journal after every input file; pass 2 (gather) permutes one bucket
 * at a time into the output shards, freeing each bucket file once its rows sit in completed
 * shards.
 */

export interface ShuffleProgress {
  line(text: string): void;
  tick(done: number, total: number, info?: string): void;
}

/** Thrown by the stopAfter hook: the run stopped as if killed, leaving its scratch behind. */
export class ShuffleStopped extends Error {
  constructor(where: string) {
    super(`shuffle stopped (testing hook) ${where}`);
    this.name = 'ShuffleStopped';
  }
}

/** The run was asked to stop (Ctrl-C): it left a state its rerun continues from. */
export class ShuffleInterrupted extends Error {
  constructor(where: string) {
    super(`interrupted after ${where}`);
    this.name = 'ShuffleInterrupted';
  }
}

/**
 * The input's rows are unreadable (NaN, a corrupt shard): unlike a kill or a full disk, a rerun
 * cannot get past this, so the scratch dealt so far is removed instead of kept for a resume.
 */
export class BadInputData extends UserError {}

export interface PassContext {
  set: ShardSet;
  plan: ShufflePlan;
  layout: RecordLayout;
  work: string;
  out: string;
  job: JobKey;
  outMeta: ShardMeta;
  shardRows: number;
  seed: number;
  /** the one buffer both passes share */
  arena: ArrayBuffer;
  progress: ShuffleProgress;
  /** aborted: stop at the next safe point with ShuffleInterrupted */
  signal?: AbortSignal;
  /** testing: after this many input files are dealt, wait for `signal` */
  pauseAfterFiles?: number;
  stopAfter?: { dealtRows?: number; outputShards?: number };
  onShard?: (entry: ShardFileEntry, file: string) => void | Promise<void>;
}

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

export async function scatter(c: PassContext, prior: Journal | null): Promise<Journal> {
  const { set, plan, layout: L, work, job, seed, progress, signal } = c;
  const stopAfterRows = c.stopAfter?.dealtRows;
  const K = plan.buckets;
  const B = plan.scatterRows;
  const rec = L.bytes;
  const a = new Arena(c.arena);
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

  let journal: Journal = prior ?? newJournal(job, K, rng.state());
  if (!prior) await writeJournal(work, journal);
  let dealt = 0;
  let rowsDone = set.files.slice(0, journal.filesDone).reduce((s, f) => s + f.rows, 0);
  for (let fi = journal.filesDone; fi < set.files.length; fi++) {
    const f = set.files[fi];
    let start = 0;
    for (const g of f.rowGroups) {
      if (g === 0) continue;
      // anywhere is safe (the journal vouches only for checkpointed files), so stop promptly
      if (signal?.aborted) throw new ShuffleInterrupted(`dealing ${rowsDone} of ${set.rows} rows`);
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
    if (c.pauseAfterFiles === fi + 1 && signal) await pauseUntil(signal, progress);
  }
  for (let b = 0; b < K; b++) {
    if (written[b] !== plan.bucketRows[b]) throw new Error(`shuffle: bucket ${b} holds ${written[b]} rows, expected ${plan.bucketRows[b]}`);
  }
  journal = { ...journal, phase: 'gather' };
  await writeJournal(work, journal);
  return journal;
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
  const names = new Set(await listOut(out));
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

export async function gather(c: PassContext): Promise<ShardManifest> {
  const { plan, layout: L, work, out, outMeta, shardRows, seed, progress, signal, onShard } = c;
  const stopAfterShards = c.stopAfter?.outputShards;
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
  const buf = c.arena;
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
        if (signal?.aborted) throw new ShuffleInterrupted(`writing ${writer.rowsInCompletedShards} of ${N} rows`);
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

/** The testing pause: tell the test it may signal now, and wait until it has. */
async function pauseUntil(signal: AbortSignal, progress: ShuffleProgress): Promise<void> {
  progress.line('shuffle: paused (testing)');
  if (signal.aborted) return;
  // a signal listener does not keep Node's event loop alive; a timer does
  const keepAlive = setInterval(() => undefined, 1 << 30);
  try {
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
  } finally {
    clearInterval(keepAlive);
  }
}

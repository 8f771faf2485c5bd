import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { ensureOutDir, pathKind } from '../util/outdir.js';
import { HARVEST_JOURNAL as JOURNAL, isShardName, marksOf, refuseOtherWriter } from '../store/outputs.js';
import { lockOutDir, type OutDirLock } from '../util/lock.js';
import { MANIFEST, shardFileName, type ShardFileEntry, type ShardMeta } from '../store/shard-format.js';
import { ShardWriter } from '../store/shard-writer.js';
import { DEFAULT_SCALE_ROWS, sameScale, type Preprocessing } from '../store/preprocess.js';
import { openShards } from '../store/shard-set.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { parseHook } from '../lm/hooks.js';
import type { PackMode } from '../harvest/contexts.js';
import { ActivationRows, cursorAt, type ContextSpan, type RowCursor } from '../harvest/rows.js';
import { HeldRows } from '../harvest/scale.js';
import type { Precision } from '../kernels/bf16.js';

/**
 * `sae harvest` (SPEC §1, §10): documents → tokens → contexts → the host LM up to the deepest
 * hook → activations at each hook → preprocessing → Parquet shards, one shard set per hook.
 *
 * Resumable at any point: after every shard completed in all hook folders, `harvest.json` records
 * where the next row comes from (the context holding it, as a corpus position plus a token offset,
 * and the rows of that context already written). A rerun of the same command re-tokenizes from
 * there and writes the same bytes an uninterrupted run would; shards past the record (written by
 * some hooks before a kill) are ours and are replaced.
 *
 * With dataset_scale preprocessing (SPEC §3), each hook's factor s = sqrt(d) / mean‖x‖ is estimated
 * over the first `scaleRows` raw rows, held in memory until then (no shard is written before s is
 * known, and every shard records it); a resume takes s from the shards it keeps, never estimating
 * again, so that its bytes are those of an uninterrupted run.
 *
 * The rows are computed at the precision of the model's kernels (docs/precision.md), recorded in
 * the journal and as every shard's `sae.precision`; a resume at another precision is another harvest.
 */
export interface HarvestCorpus<P> {
  describe(): string;
  documents(from?: P | null): AsyncIterable<{ text: string; position: P }>;
}

export interface HarvestConfig {
  model: string;
  revision: string;
  hooks: string[];
  ctx: number;
  mode: PackMode;
  skipBos: boolean;
  maxTokens: number | null;
  shardRows: number;
  dtype: ShardMeta['dtype'];
  preprocessing: Preprocessing;
  /** dataset_scale only: raw rows the scale is estimated over (default DEFAULT_SCALE_ROWS); absent otherwise */
  scaleRows?: number;
  corpus: string;
  tokenizer: string;
  /** contexts per forward pass */
  batch: number;
  /**
   * The precision the rows are computed at: always the model's kernels' (build them with
   * lmKernelFactory(name, precision)); given here, it must be theirs. Recorded in the journal (a
   * journal without it is an fp32 harvest's) and in the shards.
   */
  precision?: Precision;
}

export interface HarvestOptions<P> {
  out: string;
  config: HarvestConfig;
  model: HookedTransformer;
  tokenizer: LmTokenizer;
  corpus: HarvestCorpus<P>;
  /** replace a finished or different harvest in `out` (only the files a harvest writes) */
  force?: boolean;
  /**
   * One call per shard of the set in a hook folder (the pipe protocol prints these): on a resume,
   * first the shards earlier runs completed, then each new one as it is completed.
   */
  onShard?: (e: { hook: string; dir: string; shard: string; rows: number }) => void | Promise<void>;
  onProgress?: (p: { rows: number; contexts: number; shards: number }) => void;
  signal?: AbortSignal;
  /** stop after this many forward batches (tests simulate a kill with it) */
  stopAfterBatches?: number;
}

export interface HarvestSummary {
  out: string;
  dirs: Record<string, string>;
  rows: number;
  contexts: number;
  shards: number;
  complete: boolean;
}


interface Journal<P> {
  format: 'sae-harvest/1';
  config: HarvestConfig;
  shards: number;
  rows: number;
  cursor: RowCursor<P> | null;
  complete: boolean;
}

/** Hook folder: the output itself for one hook, a subfolder per hook for several. */
export function hookDir(out: string, hooks: string[], hook: string): string {
  return hooks.length === 1 ? out : path.join(out, hook);
}

export async function harvest<P>(opts: HarvestOptions<P>): Promise<HarvestSummary> {
  const precision = opts.model.kernels.precision ?? 'fp32';
  if (opts.config.precision !== undefined && opts.config.precision !== precision) {
    throw new UserError(`the harvest asks for precision ${opts.config.precision} but the model's kernels (${opts.model.kernels.name}) compute at ${precision}`);
  }
  opts = { ...opts, config: { ...opts.config, precision } };
  const { config: cfg, model, tokenizer } = opts;
  for (const h of cfg.hooks) {
    const site = parseHook(h, model.cfg);
    if (site.kind === 'pattern') throw new UserError(`--hook ${h}: attention patterns are not activations to harvest`);
  }
  if (cfg.ctx > model.cfg.nPositions) throw new UserError(`--ctx ${cfg.ctx} is longer than the model's ${model.cfg.nPositions} positions`);
  if (cfg.ctx < 2) throw new UserError(`--ctx must be at least 2, got ${cfg.ctx}`);
  if (new Set(cfg.hooks).size !== cfg.hooks.length) throw new UserError('--hook: each hook once');
  // a run that fails before its first shard removes what it created (see the catch below)
  const createdOut = (await pathKind(opts.out)) === 'absent';
  await ensureOutDir(opts.out);
  // one writer per folder: two harvests into one --out would mix their shards under one manifest
  // (hook subfolders are inside it, so this lock covers them)
  const lock = await lockOutDir(opts.out, 'sae harvest');
  try {
    return await harvestLocked(opts, createdOut, lock);
  } finally {
    await lock.release();
  }
}

async function harvestLocked<P>(opts: HarvestOptions<P>, createdOut: boolean, lock: OutDirLock): Promise<HarvestSummary> {
  const { config: cfg } = opts;
  const journalFile = path.join(opts.out, JOURNAL);
  let journal = await readJournal<P>(journalFile);
  const hadJournal = journal !== null;
  // A journal that records no shard claims nothing (a run that failed or was stopped before its
  // first shard): any harvest may take the folder over, so that the corrected rerun is not refused.
  if (journal && journal.shards === 0) journal = null;
  const otherHarvest = journal && configDiff(journal.config, cfg);
  if (otherHarvest) {
    if (!opts.force) throw new UserError(`${opts.out} holds another harvest (${otherHarvest}); choose another --out, or --force to replace it`);
    journal = null;
  }
  if (journal?.complete) {
    if (!opts.force) throw new UserError(`${opts.out} already holds this harvest, complete (${journal.rows} rows); --force to redo it`);
    journal = null;
  }
  const dirs: Record<string, string> = {};
  for (const h of cfg.hooks) dirs[h] = hookDir(opts.out, cfg.hooks, h);
  if (!journal) {
    // Shards without a harvest journal are another command's output (sae shuffle, sae synth):
    // never ours to delete without --force.
    // Behind a journal that records no shard, only files a harvest never writes count (an older
    // failed run left a journal and an empty manifest; sae synth may since have written there).
    // --force replaces only a harvest's own output: a shuffle's or sae synth's folder is theirs
    for (const dir of new Set([opts.out, ...Object.values(dirs)])) await refuseOtherWriter(dir, 'harvest');
    if (!opts.force) {
      const found = await foreignOutput(opts.out, cfg.hooks, dirs, hadJournal);
      if (found) throw new UserError(`${found.dir} already contains activation shards (${found.name}); add --force to replace them or choose another --out`);
    }
    await clearHarvest(opts.out, cfg.hooks, dirs);
  }
  // a kill during an atomic journal write leaves its temp file: ours, and stale now
  for (const f of await fs.readdir(opts.out)) if (f.startsWith(`.${JOURNAL}.tmp-`)) await fs.rm(path.join(opts.out, f), { force: true });
  const createdDirs = await Promise.all(Object.values(dirs).map(async (dir) => dir !== opts.out && (await pathKind(dir)) === 'absent'));
  try {
    return await harvestInto(opts, dirs, journal, journalFile);
  } catch (err) {
    // Nothing complete was written (a bad corpus, no tokens, a full disk before the first shard):
    // leave no journal claiming the folder, and no folder this run created. Shards of a resumed
    // harvest are recorded in its journal and stay.
    if (!(await readJournal<P>(journalFile).catch(() => null))?.shards) {
      await clearHarvest(opts.out, cfg.hooks, dirs).catch(() => undefined);
      for (const [i, dir] of Object.values(dirs).entries()) if (createdDirs[i]) await fs.rmdir(dir).catch(() => undefined);
      // rmdir only removes an empty folder: anything else in it stays the user's (the lock goes first)
      if (createdOut) {
        await lock.release();
        await fs.rmdir(opts.out).catch(() => undefined);
      }
    }
    throw err;
  }
}

async function harvestInto<P>(opts: HarvestOptions<P>, dirs: Record<string, string>, journal: Journal<P> | null, journalFile: string): Promise<HarvestSummary> {
  const { config: cfg, model, tokenizer } = opts;
  const d = model.cfg.dModel;
  const done: ShardFileEntry[] = [];
  // the shards every hook completed according to the journal; anything later is redone
  const doneCount = journal?.shards ?? 0;
  const writers = new Map<string, ShardWriter>();
  const completed = new Map<string, number>();
  let rows = journal?.rows ?? 0;
  let cursor: RowCursor<P> | null = journal?.cursor ?? null;
  // contexts appended but not yet behind a completed shard
  const live: ContextSpan<P>[] = [];

  const saveJournal = async (complete: boolean) => {
    const j: Journal<P> = { format: 'sae-harvest/1', config: cfg, shards: done.length, rows: done.reduce((a, e) => a + e.rows, 0), cursor, complete };
    await writeFileAtomic(journalFile, JSON.stringify(j, null, 2) + '\n');
  };

  /** Called by each hook's writer; the journal moves once every hook has completed shard k. */
  const shardDone = async (hook: string, entry: ShardFileEntry, index: number) => {
    completed.set(hook, index + 1);
    await opts.onShard?.({ hook, dir: dirs[hook], shard: path.join(dirs[hook], entry.file), rows: entry.rows });
    if (![...completed.values()].every((c) => c === index + 1) || completed.size < cfg.hooks.length) return;
    done.push(entry);
    // the context holding the shard's last row is where a resume picks up
    cursor = cursorAt(live, done.reduce((a, e) => a + e.rows, 0));
    await saveJournal(false);
  };

  const metaFor = (hook: string, precision: Precision | undefined): ShardMeta => ({
    model: cfg.model,
    revision: cfg.revision,
    hook,
    d,
    ctx: cfg.ctx,
    dtype: cfg.dtype,
    preprocessing: cfg.preprocessing,
    tokenizer: cfg.tokenizer,
    dataset: `${cfg.corpus}; contexts ${cfg.mode}${cfg.skipBos ? ', BOS rows dropped' : ''}${cfg.maxTokens !== null ? `; first ${cfg.maxTokens} tokens` : ''}`,
    ...(precision !== undefined ? { precision } : {}),
  });
  const resumed: Record<string, ShardFileEntry[]> = {};
  const recorded: Record<string, number | undefined> = {};
  // a resume writes the precision as its shards record it: one written before precision was
  // recorded (an fp32 harvest, by the journal check) continues without the key, so that the set
  // stays uniform and its bytes are those of an uninterrupted run
  const recordedPrecision: Record<string, Precision | undefined> = {};
  for (const h of cfg.hooks) {
    const resume = journal ? await adoptShards(dirs[h], doneCount) : { entries: [], scale: undefined, precision: cfg.precision };
    resumed[h] = resume.entries;
    recorded[h] = resume.scale;
    recordedPrecision[h] = resume.precision;
    if (h === cfg.hooks[0]) done.push(...resume.entries);
    completed.set(h, resume.entries.length);
  }
  const openWriters = async (scales?: Record<string, number | undefined>) => {
    for (const h of cfg.hooks) {
      const scale = scales?.[h];
      writers.set(
        h,
        await ShardWriter.create(dirs[h], { ...metaFor(h, recordedPrecision[h]), ...(scale !== undefined ? { scale } : {}) }, {
          rowsPerShard: cfg.shardRows,
          preprocess: true,
          continueAfter: resumed[h],
          onShard: (entry, index) => shardDone(h, entry, index),
        }),
      );
    }
  };
  // dataset_scale: a resume keeps the scale its shards record; a fresh harvest holds its first rows
  // until the scale is estimated over them
  let held: HeldRows | null = null;
  if (cfg.preprocessing !== 'dataset_scale') await openWriters();
  else if (doneCount > 0) await openWriters(recorded);
  else held = new HeldRows(cfg.hooks, d, cfg.scaleRows ?? DEFAULT_SCALE_ROWS);
  const release = async (h: HeldRows) => {
    held = null;
    await openWriters(h.scales());
    for (const b of h.drain()) for (const hook of cfg.hooks) await writers.get(hook)!.append(b.acts[hook], b.n, b.tokenIds, b.contextIds, b.positions);
  };
  rows = done.reduce((a, e) => a + e.rows, 0);
  // claim the folder for this harvest before the first shard, so another harvest cannot mix in
  if (!journal) await saveJournal(false);
  // A resumed harvest reports the whole set, the shards of the killed run first and in the order
  // an uninterrupted run reports them: a pipe downstream must receive every shard the end line counts.
  for (let i = 0; i < doneCount; i++) {
    for (const h of cfg.hooks) await opts.onShard?.({ hook: h, dir: dirs[h], shard: path.join(dirs[h], resumed[h][i].file), rows: resumed[h][i].rows });
  }

  // --- the row stream, from the journal's cursor ------------------------------------------------
  const stream = new ActivationRows<P>(model, tokenizer, opts.corpus, cfg, cursor, rows);
  let batches = 0;
  let stopped = false;
  try {
    for (;;) {
      const left = cfg.maxTokens === null ? Infinity : cfg.maxTokens - rows;
      if (left <= 0) break;
      const b = await stream.next(left);
      if (!b) break;
      live.push(...b.spans);
      if (held) {
        held.hold(b);
        if (held.full) await release(held);
      } else for (const h of cfg.hooks) await writers.get(h)!.append(b.acts[h], b.n, b.tokenIds, b.contextIds, b.positions);
      rows += b.n;
      batches++;
      opts.onProgress?.({ rows, contexts: stream.contexts, shards: done.length });
      if (opts.signal?.aborted || (opts.stopAfterBatches !== undefined && batches >= opts.stopAfterBatches)) {
        stopped = true;
        break;
      }
    }
  } catch (err) {
    for (const w of writers.values()) await w.abort();
    throw err;
  }
  if (stopped) {
    // what a kill leaves: completed shards and the journal; the shard in progress (or the rows
    // held for the dataset scale) is dropped
    for (const w of writers.values()) await w.abort();
    return { out: opts.out, dirs, rows: done.reduce((a, e) => a + e.rows, 0), contexts: stream.contexts, shards: done.length, complete: false };
  }
  if (rows === 0) {
    for (const w of writers.values()) await w.abort();
    throw new UserError(noTokens(cfg, stream.tokensRead));
  }
  try {
    // a corpus shorter than scaleRows: the scale is estimated over all of it
    if (held) await release(held);
  } catch (err) {
    for (const w of writers.values()) await w.abort();
    throw err;
  }
  for (const w of writers.values()) await w.close();
  cursor = null;
  await saveJournal(true);
  return { out: opts.out, dirs, rows, contexts: stream.contexts, shards: done.length, complete: true };
}

/** Why a harvest produced no rows, with the fix when the text is merely shorter than a context. */
function noTokens(cfg: HarvestConfig, tokensRead: number): string {
  if (tokensRead > 0 && cfg.mode === 'concat') {
    return `the corpus yielded no tokens to harvest: its text is ${tokensRead} token${tokensRead === 1 ? '' : 's'}, shorter than one --ctx ${cfg.ctx} context (BOS + ${cfg.ctx - 1} tokens); add --pad to harvest short documents padded, or lower --ctx`;
  }
  return 'the corpus yielded no tokens to harvest';
}

/**
 * The first file of another command's output in `out` or a hook folder: shards, a manifest, or
 * what sae shuffle / sae synth keep beside them.
 */
async function foreignOutput(out: string, hooks: string[], dirs: Record<string, string>, onlyNonHarvest: boolean): Promise<{ dir: string; name: string } | null> {
  for (const dir of new Set([out, ...hooks.map((h) => dirs[h])])) {
    let names = (await fs.readdir(dir).catch(() => [] as string[])).sort();
    if (onlyNonHarvest) names = names.filter((n) => FOREIGN.includes(n));
    // the manifest named first: it is what makes the folder another command's data
    const name = names.find((n) => n === MANIFEST) ?? names.find((n) => isShardName(n) || FOREIGN.includes(n));
    if (name) return { dir, name };
  }
  return null;
}

/** What sae shuffle and sae synth write beside their shards: removed with them, so that a
 * harvest never leaves a dictionary or shuffle scratch that belongs to other data. */
const FOREIGN = marksOf('shuffle', 'synth');

async function readJournal<P>(file: string): Promise<Journal<P> | null> {
  const text = await fs.readFile(file, 'utf8').catch(() => null);
  if (text === null) return null;
  try {
    const j = JSON.parse(text) as Journal<P>;
    if (j.format !== 'sae-harvest/1') throw new Error();
    // a journal from before precision was recorded was an fp32 harvest's
    if (j.config && typeof j.config === 'object' && j.config.precision === undefined) j.config = { ...j.config, precision: 'fp32' };
    return j;
  } catch {
    throw new UserError(`${file}: not a harvest journal; choose another --out`);
  }
}

/** The first setting on which two harvests differ, as "key a there, b here"; null when they are the same harvest. */
function configDiff(a: HarvestConfig, b: HarvestConfig): string | null {
  // key by key, not as one string: the same settings written in another order are the same harvest
  for (const k of new Set([...Object.keys(b), ...Object.keys(a)]) as Set<keyof HarvestConfig>) {
    if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) return `${k} ${JSON.stringify(a[k]) ?? 'none'} there, ${JSON.stringify(b[k]) ?? 'none'} here`;
  }
  return null;
}

/**
 * Shards 0..n−1 of a hook folder, kept for a resume, and the dataset scale and precision they
 * record (one for all); later ones (and temp files) are ours to redo.
 */
async function adoptShards(dir: string, n: number): Promise<{ entries: ShardFileEntry[]; scale: number | undefined; precision: Precision | undefined }> {
  const entries: ShardFileEntry[] = [];
  let scale: number | undefined;
  let precision: Precision | undefined;
  for (let i = 0; i < n; i++) {
    const file = shardFileName(i);
    const set = await openShards(path.join(dir, file));
    const s = set.meta.scale;
    if (i === 0) [scale, precision] = [s, set.meta.precision];
    else if ((s === undefined) !== (scale === undefined) || (s !== undefined && !sameScale(s, scale!))) {
      throw new UserError(`${path.join(dir, file)} records dataset scale ${s ?? 'none'} but ${shardFileName(0)} ${scale ?? 'none'}; --force to redo the harvest`);
    }
    entries.push({ file, rows: set.rows });
  }
  return { entries, scale, precision };
}

/** Start afresh: remove only what a harvest writes (journal, shards, manifests, temp files). */
async function clearHarvest(out: string, hooks: string[], dirs: Record<string, string>): Promise<void> {
  await fs.rm(path.join(out, JOURNAL), { force: true });
  // `out` itself too when there are hook subfolders: a manifest left there would still read as data
  for (const dir of new Set([out, ...hooks.map((h) => dirs[h])])) {
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    // the manifest first, so that the folder never looks complete while half-deleted
    names.sort((a, b) => (a === MANIFEST ? -1 : b === MANIFEST ? 1 : 0));
    for (const n of names) {
      if (n === MANIFEST || /^shard-\d+\.parquet$/.test(n) || /^\.shard-\d+\.parquet\.tmp-/.test(n) || FOREIGN.includes(n)) {
        await fs.rm(path.join(dir, n), { force: true, recursive: true });
      }
    }
  }
}

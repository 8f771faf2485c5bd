import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { ensureOutDir } from '../util/outdir.js';
import { ShardWriter, shardFileName, type ShardFileEntry, type ShardMeta } from '../store/shards.js';
import type { Preprocessing } from '../store/preprocess.js';
import { openShards } from '../store/reader.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { parseHook } from '../lm/hooks.js';
import { ContextPacker, type PackMode, type StreamPosition } from './contexts.js';

/**
 * `sae harvest` (SPEC §1, §10): documents → tokens → contexts → the host LM up to the deepest
 * hook → activations at each hook → preprocessing → Parquet shards, one shard set per hook.
 *
 * Resumable at any point: after every shard completed in all hook folders, `harvest.json` records
 * where the next row comes from (the context holding it, as a corpus position plus a token offset,
 * and the rows of that context already written). A rerun of the same command re-tokenizes from
 * there and writes the same bytes an uninterrupted run would; shards past the record (written by
 * some hooks before a kill) are ours and are replaced.
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
  corpus: string;
  tokenizer: string;
  /** contexts per forward pass */
  batch: number;
}

export interface HarvestOptions<P> {
  out: string;
  config: HarvestConfig;
  model: HookedTransformer;
  tokenizer: LmTokenizer;
  corpus: HarvestCorpus<P>;
  /** replace a finished or different harvest in `out` (only the files a harvest writes) */
  force?: boolean;
  /** one call per shard completed in a hook folder (the pipe protocol prints these) */
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

/** Where the next row comes from. */
interface Cursor<P> {
  start: StreamPosition<P>;
  /** context index of that context */
  context: number;
  /** its rows already in completed shards */
  rowsDone: number;
}

interface Journal<P> {
  format: 'sae-harvest/1';
  config: HarvestConfig;
  shards: number;
  rows: number;
  cursor: Cursor<P> | null;
  complete: boolean;
}

export const JOURNAL = 'harvest.json';

/** Hook folder: the output itself for one hook, a subfolder per hook for several. */
export function hookDir(out: string, hooks: string[], hook: string): string {
  return hooks.length === 1 ? out : path.join(out, hook);
}

export async function harvest<P>(opts: HarvestOptions<P>): Promise<HarvestSummary> {
  const { config: cfg, model, tokenizer } = opts;
  for (const h of cfg.hooks) {
    const site = parseHook(h, model.cfg);
    if (site.kind === 'pattern') throw new UserError(`--hook ${h}: attention patterns are not activations to harvest`);
  }
  if (cfg.ctx > model.cfg.nPositions) throw new UserError(`--ctx ${cfg.ctx} is longer than the model's ${model.cfg.nPositions} positions`);
  if (cfg.ctx < 2) throw new UserError(`--ctx must be at least 2, got ${cfg.ctx}`);
  if (new Set(cfg.hooks).size !== cfg.hooks.length) throw new UserError('--hook: each hook once');
  await ensureOutDir(opts.out);
  const journalFile = path.join(opts.out, JOURNAL);
  let journal = await readJournal<P>(journalFile);
  if (journal && JSON.stringify(journal.config) !== JSON.stringify(cfg)) {
    if (!opts.force) throw new UserError(`${opts.out} holds another harvest (${configDiff(journal.config, cfg)}); choose another --out, or --force to replace it`);
    journal = null;
  }
  if (journal?.complete) {
    if (!opts.force) throw new UserError(`${opts.out} already holds this harvest, complete (${journal.rows} rows); --force to redo it`);
    journal = null;
  }
  const dirs: Record<string, string> = {};
  for (const h of cfg.hooks) dirs[h] = hookDir(opts.out, cfg.hooks, h);
  if (!journal) await clearHarvest(opts.out, cfg.hooks, dirs);
  // a kill during an atomic journal write leaves its temp file: ours, and stale now
  for (const f of await fs.readdir(opts.out)) if (f.startsWith(`.${JOURNAL}.tmp-`)) await fs.rm(path.join(opts.out, f), { force: true });

  const d = model.cfg.dModel;
  const done: ShardFileEntry[] = [];
  // the shards every hook completed according to the journal; anything later is redone
  const doneCount = journal?.shards ?? 0;
  const writers = new Map<string, ShardWriter>();
  const completed = new Map<string, number>();
  let rows = journal?.rows ?? 0;
  let cursor: Cursor<P> | null = journal?.cursor ?? null;
  // contexts appended but not yet behind a completed shard: [context, start, first row, rows]
  const live: Array<{ context: number; start: StreamPosition<P>; first: number; rows: number }> = [];

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
    const end = done.reduce((a, e) => a + e.rows, 0);
    // the context holding row end − 1 is where a resume picks up (its remaining rows, if any)
    while (live.length && live[0].first + live[0].rows <= end - 1) live.shift();
    const c = live[0];
    cursor = { start: c.start, context: c.context, rowsDone: end - c.first };
    await saveJournal(false);
  };

  const metaFor = (hook: string): ShardMeta => ({
    model: cfg.model,
    revision: cfg.revision,
    hook,
    d,
    ctx: cfg.ctx,
    dtype: cfg.dtype,
    preprocessing: cfg.preprocessing,
    tokenizer: cfg.tokenizer,
    dataset: `${cfg.corpus}; contexts ${cfg.mode}${cfg.skipBos ? ', BOS rows dropped' : ''}${cfg.maxTokens !== null ? `; first ${cfg.maxTokens} tokens` : ''}`,
  });
  for (const h of cfg.hooks) {
    const resume = journal ? await adoptShards(dirs[h], doneCount) : [];
    if (h === cfg.hooks[0]) done.push(...resume);
    completed.set(h, resume.length);
    writers.set(
      h,
      await ShardWriter.create(dirs[h], metaFor(h), {
        rowsPerShard: cfg.shardRows,
        preprocess: true,
        resume,
        onShard: (entry, index) => shardDone(h, entry, index),
      }),
    );
  }
  rows = done.reduce((a, e) => a + e.rows, 0);
  // claim the folder for this harvest before the first shard, so another harvest cannot mix in
  if (!journal) await saveJournal(false);

  // --- the stream of contexts, from the journal's cursor ---------------------------------------
  const packer = new ContextPacker<P>(cfg.ctx, tokenizer.bosId, tokenizer.eosId, cfg.mode);
  const docs = opts.corpus.documents(cursor?.start.after ?? null)[Symbol.asyncIterator]();
  let firstDoc = true;
  let lastPos: P | null = cursor?.start.after ?? null;
  let corpusEnded = false;
  let contextIndex = cursor?.context ?? 0;
  let skipRows = cursor?.rowsDone ?? 0;
  const nextContext = async () => {
    for (;;) {
      const c = packer.take();
      if (c) return c;
      if (corpusEnded) return undefined;
      const r = await docs.next();
      if (r.done) {
        corpusEnded = true;
        continue;
      }
      packer.push(tokenizer.encode(r.value.text), lastPos, firstDoc ? (cursor?.start.offset ?? 0) : 0);
      firstDoc = false;
      lastPos = r.value.position;
    }
  };

  const B = cfg.batch;
  const T = cfg.ctx;
  const ids = new Int32Array(B * T);
  const hookRows = new Float32Array(B * T * d);
  const tok = new Int32Array(B * T);
  const ctxIds = new Int32Array(B * T);
  const pos = new Int32Array(B * T);
  let batches = 0;
  let stopped = false;
  try {
    for (;;) {
      if (cfg.maxTokens !== null && rows >= cfg.maxTokens) break;
      const batch = [];
      while (batch.length < B) {
        const c = await nextContext();
        if (!c) break;
        batch.push(c);
      }
      if (!batch.length) break;
      for (let i = 0; i < batch.length; i++) ids.set(batch[i].ids, i * T);
      const res = model.run(ids.subarray(0, batch.length * T), batch.length, T, { capture: cfg.hooks });
      // which rows of which context go to the shards, in order
      let n = 0;
      const picks: Array<[number, number]> = [];
      for (let i = 0; i < batch.length; i++) {
        const c = batch[i];
        const first = cfg.skipBos ? 1 : 0;
        let from = first + skipRows;
        skipRows = 0;
        const ctxRows = c.valid - first;
        let take = c.valid - from;
        if (cfg.maxTokens !== null) take = Math.min(take, cfg.maxTokens - rows - n);
        if (take > 0) {
          live.push({ context: contextIndex, start: c.start, first: rows + n - (from - first), rows: ctxRows });
          for (let t = from; t < from + take; t++) {
            tok[n] = c.ids[t];
            ctxIds[n] = contextIndex;
            pos[n] = t;
            picks.push([i, t]);
            n++;
          }
        }
        contextIndex++;
        if (cfg.maxTokens !== null && rows + n >= cfg.maxTokens) break;
      }
      for (const h of cfg.hooks) {
        const x = res.captured[h];
        for (let r = 0; r < n; r++) {
          const [i, t] = picks[r];
          hookRows.set(x.subarray((i * T + t) * d, (i * T + t + 1) * d), r * d);
        }
        await writers.get(h)!.append(hookRows.subarray(0, n * d), n, tok, ctxIds, pos);
      }
      rows += n;
      batches++;
      opts.onProgress?.({ rows, contexts: contextIndex, shards: done.length });
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
    // what a kill leaves: completed shards and the journal; the shard in progress is dropped
    for (const w of writers.values()) await w.abort();
    return { out: opts.out, dirs, rows: done.reduce((a, e) => a + e.rows, 0), contexts: contextIndex, shards: done.length, complete: false };
  }
  for (const w of writers.values()) await w.close();
  cursor = null;
  await saveJournal(true);
  if (rows === 0) throw new UserError('the corpus yielded no tokens to harvest');
  return { out: opts.out, dirs, rows, contexts: contextIndex, shards: done.length, complete: true };
}

async function readJournal<P>(file: string): Promise<Journal<P> | null> {
  const text = await fs.readFile(file, 'utf8').catch(() => null);
  if (text === null) return null;
  try {
    const j = JSON.parse(text) as Journal<P>;
    if (j.format !== 'sae-harvest/1') throw new Error();
    return j;
  } catch {
    throw new UserError(`${file}: not a harvest journal; choose another --out`);
  }
}

function configDiff(a: HarvestConfig, b: HarvestConfig): string {
  for (const k of Object.keys(b) as Array<keyof HarvestConfig>) {
    if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) return `${k} ${JSON.stringify(a[k])} there, ${JSON.stringify(b[k])} here`;
  }
  return 'different settings';
}

/** Shards 0..n−1 of a hook folder, kept for a resume; later ones (and temp files) are ours to redo. */
async function adoptShards(dir: string, n: number): Promise<ShardFileEntry[]> {
  const keep: ShardFileEntry[] = [];
  for (let i = 0; i < n; i++) {
    const file = shardFileName(i);
    const set = await openShards(path.join(dir, file));
    keep.push({ file, rows: set.rows });
  }
  return keep;
}

/** Start afresh: remove only what a harvest writes (journal, shards, manifests, temp files). */
async function clearHarvest(out: string, hooks: string[], dirs: Record<string, string>): Promise<void> {
  await fs.rm(path.join(out, JOURNAL), { force: true });
  for (const h of hooks) {
    const dir = dirs[h];
    const names = await fs.readdir(dir).catch(() => [] as string[]);
    for (const n of names) {
      if (n === 'manifest.json' || /^shard-\d+\.parquet$/.test(n) || /^\.shard-\d+\.parquet\.tmp-/.test(n)) await fs.rm(path.join(dir, n), { force: true });
    }
  }
}

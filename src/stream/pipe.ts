import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { MANIFEST, metaToKv, type ShardMeta } from '../store/shard-format.js';
import { openShards, type ShardFile, type ShardSet } from '../store/shard-set.js';
import { readRows } from '../store/row-reader.js';
import type { DataPosition } from './batch-stream.js';
import type { BatchSource } from './prefetch.js';

/**
 * Stages chained by Unix pipes (`sae harvest` | `sae shuffle` | `sae train --data -`): an upstream
 * prints one NDJSON line per finished shard on stdout, then an end line; a downstream given `-`
 * reads them from stdin and starts on the first shard while the upstream is still writing.
 * Shards are announced only once complete (renamed into place), so nothing half-written is read.
 *
 *   {"shard": "/abs/out/shard-00003.parquet", "rows": 65536, "metadata": "<digest>"}
 *   {"end": true, "shards": 12, "rows": 786432}
 */
export interface ShardAnnouncement {
  shard: string;
  rows: number;
  metadata: string;
}

/** Short digest of a shard set's metadata: downstream stages refuse to mix sets. */
export function metaDigest(meta: ShardMeta): string {
  return createHash('sha256').update(JSON.stringify(metaToKv(meta))).digest('hex').slice(0, 16);
}

export function announceShard(a: ShardAnnouncement): string {
  return JSON.stringify({ shard: path.resolve(a.shard), rows: a.rows, metadata: a.metadata }) + '\n';
}

export function announceEnd(shards: number, rows: number): string {
  return JSON.stringify({ end: true, shards, rows }) + '\n';
}

export interface ReadAnnouncementsOptions {
  /** without an end line, wait for the upstream's folder to be completed instead of failing */
  follow?: boolean;
  pollMs?: number;
  /** where the one note about waiting goes (a line, no newline); default stderr */
  log?: (line: string) => void;
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? '' : 's'}`;

/**
 * The shards an upstream announces, in order. The end line's totals must match what arrived (a
 * resumed upstream that announced only part of its set would otherwise leave the downstream a
 * partial dataset that claims to be whole). Without an end line the upstream died: that is an
 * error, or with `follow` the folder of the last shard is watched until its manifest appears
 * (the user restarted the upstream by hand), taking each new shard as it is completed.
 */
export async function* readAnnouncements(input: Readable, opts: ReadAnnouncementsOptions = {}): AsyncGenerator<ShardAnnouncement> {
  const lines = createInterface({ input, crlfDelay: Infinity });
  let n = 0;
  let last: ShardAnnouncement | null = null;
  let ended = false;
  const seen = new Set<string>();
  let rows = 0;
  for await (const line of lines) {
    if (!line.trim()) continue;
    n++;
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new UserError(`stdin line ${n}: not an NDJSON shard announcement (pipe the output of sae harvest or sae shuffle into --data -)`);
    }
    if (v.end === true) {
      if (!Number.isSafeInteger(v.shards) || !Number.isSafeInteger(v.rows)) throw new UserError(`stdin line ${n}: malformed end line ${line.slice(0, 120)}`);
      if (v.shards !== seen.size || v.rows !== rows) {
        const where = last ? `; every shard is in ${path.dirname(last.shard)}: read that folder with --data instead of the pipe` : '';
        throw new UserError(
          `the upstream announced ${plural(v.shards as number, 'shard')} / ${plural(v.rows as number, 'row')} in its end line but ${plural(seen.size, 'shard')} / ${plural(rows, 'row')} arrived${where}`,
        );
      }
      ended = true;
      break;
    }
    if (typeof v.shard !== 'string' || !Number.isSafeInteger(v.rows) || typeof v.metadata !== 'string') throw new UserError(`stdin line ${n}: malformed shard announcement ${line.slice(0, 120)}`);
    const file = path.resolve(v.shard);
    // the same rows twice would weigh them double in a shuffle or an epoch
    if (seen.has(file)) throw new UserError(`stdin line ${n}: ${file} was announced twice; one upstream per pipe`);
    seen.add(file);
    rows += v.rows as number;
    last = { shard: v.shard, rows: v.rows as number, metadata: v.metadata };
    yield last;
  }
  if (ended) return;
  if (!opts.follow) throw new UserError(`the upstream stage ended without finishing (${n} line${n === 1 ? '' : 's'} read, no end line); rerun it, or pass --follow to wait for its folder`);
  if (!last) throw new UserError('the upstream stage ended before announcing any shard');
  // follow the folder: shard-NNNNN.parquet files appear complete (renamed), the manifest comes last
  const dir = path.dirname(last.shard);
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  // said once: a silent wait looks like a hang
  log(`the upstream ended without its end line; waiting for ${dir} to be completed (its ${MANIFEST} to appear): rerun the upstream command to finish it; Ctrl-C to stop`);
  const followed = new Set([path.basename(last.shard)]);
  for (;;) {
    const names = (await fs.readdir(dir)).filter((f) => /^shard-\d+\.parquet$/.test(f)).sort();
    for (const f of names) {
      if (followed.has(f) || f <= path.basename(last.shard)) continue;
      followed.add(f);
      const set = await openShards(path.join(dir, f));
      last = { shard: path.join(dir, f), rows: set.rows, metadata: metaDigest(set.meta) };
      yield last;
    }
    if (names.every((f) => followed.has(f) || f <= path.basename(last!.shard)) && (await fs.stat(path.join(dir, MANIFEST)).catch(() => null))) return;
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 1000));
  }
}

/**
 * Batches from announced shards through a mixing buffer (SPEC §1, streaming shuffle as SAELens
 * does): rows enter a buffer of `windowRows`; each batch takes B rows drawn uniformly from it and
 * the gaps are refilled from the stream. Once the upstream has ended, training continues in
 * epochs over every shard received, through a seeded BatchStream. Deterministic for a seed and
 * the same announced shards; not resumable (a pipe cannot be replayed): resume from the folder.
 */
export interface FirstShard {
  set: ShardSet;
  announcement: ShardAnnouncement;
}

/** Wait for the upstream's first shard: its metadata is the run's (d, hook, preprocessing). */
export async function firstShard(it: AsyncGenerator<ShardAnnouncement>): Promise<FirstShard> {
  const r = await it.next();
  if (r.done) throw new UserError('the upstream stage announced no shards');
  return { set: await openShards(r.value.shard), announcement: r.value };
}

export class PipeBatchSource implements BatchSource {
  readonly d: number;
  readonly meta: ShardMeta;
  private readonly digest: string;
  private readonly windowRows: number;
  private readonly queue: ShardSet[] = [];
  private readonly buf: Float32Array;
  private size = 0;
  private readonly rng: Rng;
  private pending: { acts: Float32Array; n: number; at: number } | null = null;
  private readonly files: ShardFile[] = [];
  private upstreamDone = false;
  private epochs: BatchSource | null = null;
  private served = 0;

  constructor(
    private readonly it: AsyncGenerator<ShardAnnouncement>,
    first: FirstShard,
    private readonly batchSize: number,
    windowRows: number,
    private readonly seed: number,
    private readonly openEpochs: (set: ShardSet) => BatchSource,
  ) {
    this.meta = first.set.meta;
    this.digest = first.announcement.metadata;
    this.d = this.meta.d;
    this.windowRows = Math.max(windowRows, batchSize);
    this.buf = new Float32Array(this.windowRows * this.d);
    this.rng = Rng.derive(seed, 'pipe-mix');
    this.files.push(...first.set.files);
    this.queue.push(first.set);
  }

  /** Move rows from announced shards into the buffer until it is full or the stream ends. */
  private async refill(): Promise<void> {
    const d = this.d;
    while (this.size < this.windowRows) {
      if (!this.pending) {
        const set = this.queue.shift() ?? (await this.nextSet());
        if (!set) return;
        const chunk = await readRows(set, 0, 0, set.rows);
        this.pending = { acts: chunk.acts, n: chunk.n, at: 0 };
      }
      const p = this.pending;
      const take = Math.min(p.n - p.at, this.windowRows - this.size);
      this.buf.set(p.acts.subarray(p.at * d, (p.at + take) * d), this.size * d);
      this.size += take;
      p.at += take;
      if (p.at === p.n) this.pending = null;
    }
  }

  private async nextSet(): Promise<ShardSet | null> {
    if (this.upstreamDone) return null;
    const r = await this.it.next();
    if (r.done) {
      this.upstreamDone = true;
      return null;
    }
    if (r.value.metadata !== this.digest) throw new UserError(`${r.value.shard}: metadata differs from the first shard's; one shard set per pipe`);
    const set = await openShards(r.value.shard);
    this.files.push(...set.files);
    return set;
  }

  async next(out: Float32Array): Promise<boolean> {
    if (this.epochs) return this.epochs.next(out);
    await this.refill();
    const d = this.d;
    const B = this.batchSize;
    if (this.size < B) {
      // the stream is over: every row has been served once; continue in epochs over all shards
      const rows = this.files.reduce((a, f) => a + f.rows, 0);
      this.epochs = this.openEpochs({ files: this.files, meta: this.meta, rows });
      return this.epochs.next(out);
    }
    for (let b = 0; b < B; b++) {
      const i = this.rng.int(this.size);
      out.set(this.buf.subarray(i * d, (i + 1) * d), b * d);
      // swap-remove keeps the buffer dense
      this.size--;
      if (i !== this.size) this.buf.copyWithin(i * d, this.size * d, (this.size + 1) * d);
    }
    this.served += B;
    return true;
  }

  position(): DataPosition {
    return { epoch: -1, window: 0, offset: 0, rowsServed: this.served, seed: this.seed, windowRows: this.windowRows, rows: 0 };
  }

  async close(): Promise<void> {
    await this.epochs?.close();
    await this.it.return(undefined);
  }
}

/**
 * Every shard an upstream announces, as one shard set (for stages that need the whole input, such
 * as a full shuffle): waits for the end line, refuses mixed metadata.
 */
export async function collectAnnounced(it: AsyncGenerator<ShardAnnouncement>): Promise<{ set: ShardSet; dir: string }> {
  const files: ShardFile[] = [];
  let meta: ShardMeta | null = null;
  let digest = '';
  let dir = '';
  for await (const a of it) {
    if (meta && a.metadata !== digest) throw new UserError(`${a.shard}: metadata differs from the first shard's; one shard set per pipe`);
    const set = await openShards(a.shard);
    if (!meta) [meta, digest, dir] = [set.meta, a.metadata, path.dirname(a.shard)];
    files.push(...set.files);
  }
  if (!meta) throw new UserError('the upstream stage announced no shards');
  return { set: { files, meta, rows: files.reduce((s, f) => s + f.rows, 0) }, dir };
}

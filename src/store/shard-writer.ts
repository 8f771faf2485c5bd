import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { KeyValue, SchemaElement } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { describeFsError, writeFileAtomic } from '../util/atomic.js';
import { ensureOutDir } from '../util/outdir.js';
import { writeAll } from '../util/write-all.js';
import { preprocessRows } from './preprocess.js';
import { DTYPE_MAX, OVERFLOW_AT, overflows, round16 } from './dtype.js';
import { ShardEncoder } from './shard-encoder.js';
import { hasRawStats, MANIFEST, metaToKv, SHARD_FORMAT, shardFileName, shardSchema, validateMeta, type ShardFileEntry, type ShardManifest, type ShardMeta } from './shard-format.js';

/**
 * Writes activation shards (SPEC §10, the layout in shard-format.ts): rows are appended, staged a
 * row group at a time, encoded by ShardEncoder and written while the next group fills; each shard
 * is renamed into place when complete and manifest.json is published last.
 */

/**
 * Row groups of about a million floats: small enough that a reader decodes one at a time without
 * a large heap (hyparquet materialises a list column as JS arrays), large enough that the footer
 * stays small.
 */
export function defaultRowGroupRows(d: number, rowsPerShard: number): number {
  return Math.max(1, Math.min(rowsPerShard, Math.floor(1_048_576 / d)));
}

export interface ShardWriterOptions {
  /** rows per shard file (default 65536) */
  rowsPerShard?: number;
  /** rows per Parquet row group (default: about a million floats) */
  rowGroupRows?: number;
  /**
   * Apply meta.preprocessing to incoming raw rows before writing. Without it the rows must
   * already be preprocessed, and center_unit_norm rows must come with their raw mean and norm.
   */
  preprocess?: boolean;
  /** replace shards and manifest already in the directory instead of refusing */
  overwrite?: boolean;
  /** how the caller's user asks for overwrite (e.g. "add --force to replace them"), for the refusal */
  overwriteHint?: string;
  /** called as each shard is completed (renamed into place), with its index */
  onShard?: (entry: ShardFileEntry, index: number) => void | Promise<void>;
  /** Parquet compression of the values (default UNCOMPRESSED: float activations barely compress) */
  codec?: 'UNCOMPRESSED' | 'SNAPPY';
  /**
   * Shards an earlier, interrupted run of the same job completed in this directory: they stay,
   * and numbering and the manifest continue after them (for resumable writers such as shuffle).
   */
  continueAfter?: readonly ShardFileEntry[];
}

interface OpenShard {
  tmp: string;
  fh: fs.FileHandle;
  enc: ShardEncoder;
  rows: number;
}

/** The buffers of one row group: what append fills and a write reads from. */
interface Staging {
  act: Float32Array;
  tok: Int32Array;
  ctx: Int32Array;
  pos: Int32Array;
  mean: Float32Array;
  norm: Float32Array;
  /** the group rounded to a 16-bit storage dtype */
  b16: Uint16Array;
}

export class ShardWriter {
  private readonly d: number;
  private readonly raw: boolean;
  private readonly rowsPerShard: number;
  private readonly groupRows: number;
  private readonly preprocess: boolean;
  private readonly codec: 'UNCOMPRESSED' | 'SNAPPY';
  private readonly schema: SchemaElement[];
  private readonly kv: KeyValue[];
  // One row group is staged here and handed to the encoder when full. Its write then proceeds
  // while the next group fills the spare buffers (allocated at the first flush), so that disk
  // time overlaps the caller's work instead of adding to it.
  private st: Staging;
  private spare: Staging | null = null;
  /** the write in flight: resolves to its error, if any, so that it is never an unhandled rejection */
  private pending: { done: Promise<unknown>; file: string } | null = null;
  private gRows = 0;
  private readonly onShard?: (entry: ShardFileEntry, index: number) => void | Promise<void>;
  private current: OpenShard | null = null;
  private readonly done: ShardFileEntry[] = [];
  private total = 0;
  private closed = false;

  private constructor(
    readonly dir: string,
    readonly meta: ShardMeta,
    opts: ShardWriterOptions,
  ) {
    this.d = meta.d;
    this.raw = hasRawStats(meta);
    this.rowsPerShard = opts.rowsPerShard ?? 65536;
    this.groupRows = Math.min(opts.rowGroupRows ?? defaultRowGroupRows(this.d, this.rowsPerShard), this.rowsPerShard);
    this.preprocess = opts.preprocess ?? false;
    this.codec = opts.codec ?? 'UNCOMPRESSED';
    this.onShard = opts.onShard;
    this.schema = shardSchema(meta);
    this.kv = metaToKv(meta);
    this.st = this.newStaging();
    for (const e of opts.continueAfter ?? []) {
      this.done.push({ ...e });
      this.total += e.rows;
    }
  }

  private newStaging(): Staging {
    const g = this.groupRows;
    return {
      act: new Float32Array(g * this.d),
      tok: new Int32Array(g),
      ctx: new Int32Array(g),
      pos: new Int32Array(g),
      mean: new Float32Array(this.raw ? g : 0),
      norm: new Float32Array(this.raw ? g : 0),
      b16: new Uint16Array(this.meta.dtype === 'float32' ? 0 : g * this.d),
    };
  }

  static async create(dir: string, meta: ShardMeta, opts: ShardWriterOptions = {}): Promise<ShardWriter> {
    validateMeta(meta, 'shard metadata');
    const rps = opts.rowsPerShard ?? 65536;
    if (!Number.isSafeInteger(rps) || rps < 1) throw new UserError(`rows per shard must be a positive integer, got ${rps}`);
    if (opts.rowGroupRows !== undefined && (!Number.isSafeInteger(opts.rowGroupRows) || opts.rowGroupRows < 1)) {
      throw new UserError(`rows per row group must be a positive integer, got ${opts.rowGroupRows}`);
    }
    await ensureOutDir(dir, 'output');
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch (err) {
      throw describeFsError(err, `reading ${dir}`);
    }
    const continued = opts.continueAfter ?? [];
    continued.forEach((e, i) => {
      if (e.file !== shardFileName(i) || !Number.isSafeInteger(e.rows) || e.rows < 1) throw new Error(`ShardWriter: bad continueAfter entry ${JSON.stringify(e)}`);
    });
    const kept = new Set(continued.map((e) => e.file));
    if (opts.continueAfter) {
      // continuing an interrupted write: later shards, temp files and a manifest are ours, unfinished
      for (const n of names) {
        if ((n === MANIFEST || /^shard-\d+\.parquet$/.test(n) || /^\.shard-\d+\.parquet\.tmp-/.test(n)) && !kept.has(n)) await fs.rm(path.join(dir, n), { force: true });
      }
      return new ShardWriter(dir, meta, opts);
    }
    const existing = names.filter((n) => n === MANIFEST || /^shard-\d+\.parquet$/.test(n));
    if (existing.length) {
      if (!opts.overwrite) throw new UserError(`${dir} already contains activation shards (${existing[0]}); ${opts.overwriteHint ?? 'remove them'} or choose another output`);
      // The manifest goes first so that the directory never looks complete while half-deleted.
      existing.sort((a, b) => (a === MANIFEST ? -1 : b === MANIFEST ? 1 : 0));
      for (const n of existing) await fs.rm(path.join(dir, n), { force: true });
    }
    return new ShardWriter(dir, meta, opts);
  }

  get rowsWritten(): number {
    return this.total + (this.current?.rows ?? 0) + this.gRows;
  }

  /** rows in shards that are complete on disk (renamed into place) */
  get rowsInCompletedShards(): number {
    return this.total;
  }

  /**
   * Append n rows (n×d, row-major). Optional per-row columns default to token_id −1, context_id
   * = global row index, position 0. `raw` carries the recorded mean/norm of rows that were
   * preprocessed with center_unit_norm elsewhere (required then, ignored with `preprocess`).
   */
  async append(
    acts: Float32Array,
    n: number,
    tokenIds?: Int32Array,
    contextIds?: Int32Array,
    positions?: Int32Array,
    raw?: { mean: Float32Array; norm: Float32Array },
  ): Promise<void> {
    if (this.closed) throw new Error('ShardWriter.append after close');
    const d = this.d;
    if (!Number.isSafeInteger(n) || n < 0) throw new UserError(`append: bad row count ${n}`);
    if (acts.length !== n * d) {
      throw new UserError(`activation rows have the wrong length: got ${acts.length} values for ${n} rows of d=${d}`);
    }
    for (const [name, col] of [
      ['token_id', tokenIds],
      ['context_id', contextIds],
      ['position', positions],
    ] as const) {
      if (col && col.length < n) throw new UserError(`append: ${name} has ${col.length} entries for ${n} rows`);
    }
    const needRaw = this.raw && !this.preprocess;
    if (needRaw && (!raw || raw.mean.length < n || raw.norm.length < n)) {
      throw new Error('ShardWriter.append: center_unit_norm rows that are already preprocessed need their raw mean and norm');
    }
    // Validate everything before staging anything, so that a rejected append leaves no partial rows.
    for (let i = 0; i < n * d; i++) {
      const v = acts[i];
      if (v - v !== 0) {
        const r = Math.floor(i / d);
        throw new UserError(`row ${this.rowsWritten + r}: activation contains ${Number.isNaN(v) ? 'NaN' : 'Inf'}`);
      }
    }
    if (this.meta.dtype !== 'float32') this.checkRange(acts, n);
    let done = 0;
    while (done < n) {
      const take = Math.min(n - done, this.groupLimit() - this.gRows);
      const g0 = this.gRows;
      this.st.act.set(acts.subarray(done * d, (done + take) * d), g0 * d);
      const base = this.rowsWritten;
      for (let i = 0; i < take; i++) {
        this.st.tok[g0 + i] = tokenIds ? tokenIds[done + i] : -1;
        this.st.ctx[g0 + i] = contextIds ? contextIds[done + i] : base + i;
        this.st.pos[g0 + i] = positions ? positions[done + i] : 0;
      }
      if (this.preprocess) {
        const view = this.st.act.subarray(g0 * d, (g0 + take) * d);
        preprocessRows(
          view,
          take,
          d,
          this.meta.preprocessing,
          this.meta.scale,
          this.raw ? this.st.mean.subarray(g0, g0 + take) : undefined,
          this.raw ? this.st.norm.subarray(g0, g0 + take) : undefined,
        );
      } else if (needRaw) {
        this.st.mean.set(raw!.mean.subarray(done, done + take), g0);
        this.st.norm.set(raw!.norm.subarray(done, done + take), g0);
      }
      this.gRows += take;
      done += take;
      if (this.gRows === this.groupLimit()) await this.flushGroup();
    }
  }

  /**
   * Refuse values that would round to ±Inf in the storage dtype, judged on the value that will be
   * stored: after dataset_scale (computed as preprocessRows does), while center_unit_norm rows
   * are within [−1, 1] and cannot overflow.
   */
  private checkRange(acts: Float32Array, n: number): void {
    const dtype = this.meta.dtype;
    const mode = this.preprocess ? this.meta.preprocessing : 'none';
    if (mode === 'center_unit_norm') return;
    const s = mode === 'dataset_scale' ? Math.fround(this.meta.scale!) : 1;
    // A magnitude test per value, the slow exact test only for values near the limit.
    const near = OVERFLOW_AT[dtype];
    for (let i = 0; i < n * this.d; i++) {
      const v = mode === 'dataset_scale' ? Math.fround(acts[i] * s) : acts[i];
      if ((v >= near || v <= -near) && overflows(v, dtype)) {
        throw new UserError(`row ${this.rowsWritten + Math.floor(i / this.d)}: activation value ${v} is out of range for ${dtype} (largest ${DTYPE_MAX[dtype]})`);
      }
    }
  }

  /** A row group never straddles two shards, so the last group of a shard may be short. */
  private groupLimit(): number {
    return Math.min(this.groupRows, this.rowsPerShard - (this.current?.rows ?? 0));
  }

  private async openShard(): Promise<OpenShard> {
    const name = shardFileName(this.done.length);
    const tmp = path.join(this.dir, `.${name}.tmp-${process.pid}`);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(tmp, 'w');
    } catch (err) {
      throw describeFsError(err, `writing ${tmp}`);
    }
    return { tmp, fh, enc: new ShardEncoder(this.schema, this.kv, this.d, this.codec), rows: 0 };
  }

  private async flushGroup(): Promise<void> {
    const n = this.gRows;
    if (n === 0) return;
    await this.settle();
    if (!this.current) this.current = await this.openShard();
    const cur = this.current;
    const d = this.d;
    const st = this.st;
    const u8 = (a: Int32Array | Float32Array | Uint16Array, len: number) => new Uint8Array(a.buffer, a.byteOffset, len * a.BYTES_PER_ELEMENT);
    // Rounding to a 16-bit dtype happens here, after preprocessing in float32.
    let list: Uint8Array;
    if (this.meta.dtype === 'float32') list = u8(st.act, n * d);
    else {
      round16(st.act, st.b16, n * d, this.meta.dtype);
      list = u8(st.b16, n * d);
    }
    const scalars: (Int32Array | Float32Array)[] = [st.tok, st.ctx, st.pos];
    if (this.raw) scalars.push(st.mean, st.norm);
    const pieces = cur.enc.rowGroup(n, list, scalars).pieces;
    // The pieces point into `st`, so it must not be refilled until this write has settled.
    this.st = this.spare ?? this.newStaging();
    this.spare = st;
    this.pending = {
      done: writeAll(cur.fh, pieces).then(
        () => null,
        (err: unknown) => err ?? new Error('write failed'),
      ),
      file: path.join(this.dir, shardFileName(this.done.length)),
    };
    cur.rows += n;
    this.gRows = 0;
    if (cur.rows >= this.rowsPerShard) await this.finishShard();
  }

  /** Wait for the row group write in flight; its failure aborts the shard. */
  private async settle(): Promise<void> {
    const w = this.pending;
    if (!w) return;
    this.pending = null;
    const err = await w.done;
    if (err) {
      await this.abort();
      throw describeFsError(err, `writing ${w.file}`);
    }
  }

  private async finishShard(): Promise<void> {
    const cur = this.current;
    if (!cur) return;
    const name = shardFileName(this.done.length);
    const final = path.join(this.dir, name);
    await this.settle();
    try {
      await writeAll(cur.fh, [cur.enc.footer()]);
      await cur.fh.sync();
      await cur.fh.close();
      await fs.rename(cur.tmp, final);
    } catch (err) {
      await this.abort();
      throw describeFsError(err, `writing ${final}`);
    }
    const entry = { file: name, rows: cur.rows };
    this.done.push(entry);
    this.total += cur.rows;
    this.current = null;
    await this.onShard?.(entry, this.done.length - 1);
  }

  /** Drop the shard in progress (its temp file); completed shards stay. */
  async abort(): Promise<void> {
    const cur = this.current;
    this.current = null;
    this.closed = true;
    // The write in flight uses the file handle; its outcome no longer matters.
    const w = this.pending;
    this.pending = null;
    if (w) await w.done;
    if (!cur) return;
    await cur.fh.close().catch(() => undefined);
    await fs.rm(cur.tmp, { force: true }).catch(() => undefined);
  }

  /** Flush the last rows, then publish manifest.json, which marks the directory complete. */
  async close(): Promise<ShardManifest> {
    if (this.closed) throw new Error('ShardWriter.close called twice');
    await this.flushGroup();
    await this.finishShard();
    this.closed = true;
    const manifest: ShardManifest = { format: SHARD_FORMAT, rows: this.total, shards: [...this.done], meta: this.meta };
    await writeFileAtomic(path.join(this.dir, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    return manifest;
  }
}

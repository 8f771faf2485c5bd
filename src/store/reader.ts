import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { parquetMetadataAsync, parquetRead, parquetSchema, type AsyncBuffer, type FileMetaData, type SchemaTree } from 'hyparquet';
import { sameModel } from '../lm/identity.js';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';
import { Rng } from '../util/rng.js';
import type { Preprocessing } from './preprocess.js';
import type { ShardDtype } from './dtype.js';
import { MANIFEST, SHARD_FORMAT, hasRawStats, kvToMeta, metaToKv, type ShardManifest, type ShardMeta } from './shards.js';
import { decodeFast, type ScalarTarget } from './shard-decoder.js';

export interface ShardFile {
  path: string;
  rows: number;
  /** rows in each Parquet row group, in order */
  rowGroups: number[];
}

export interface ShardSet {
  files: ShardFile[];
  meta: ShardMeta;
  rows: number;
}

/** Parsed footers, kept so that streaming does not re-read them; keyed by the ShardFile object. */
const footers = new WeakMap<ShardFile, FileMetaData>();

function fileBuffer(file: string, byteLength: number): AsyncBuffer {
  return {
    byteLength,
    async slice(start: number, end?: number): Promise<ArrayBuffer> {
      const stop = end ?? byteLength;
      const out = new Uint8Array(Math.max(0, stop - start));
      let fh: fs.FileHandle | undefined;
      try {
        fh = await fs.open(file, 'r');
        let got = 0;
        while (got < out.length) {
          const { bytesRead } = await fh.read(out, got, out.length - got, start + got);
          if (bytesRead === 0) throw new UserError(`${file}: truncated (ends at byte ${start + got}, expected ${stop})`);
          got += bytesRead;
        }
      } catch (err) {
        throw describeFsError(err, `reading ${file}`);
      } finally {
        await fh?.close();
      }
      return out.buffer;
    },
  };
}

function corrupt(file: string, err: unknown): UserError {
  if (err instanceof UserError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new UserError(`${file}: not a readable Parquet shard (${msg.split('\n')[0]}); truncated or corrupt?`);
}

function child(tree: SchemaTree, name: string): SchemaTree | undefined {
  return tree.children.find((c) => c.element.name === name);
}

function checkSchema(file: string, md: FileMetaData, meta: ShardMeta): void {
  const root = parquetSchema(md);
  const act = child(root, 'activation');
  let leaf = act;
  while (leaf && leaf.children.length === 1) leaf = leaf.children[0];
  if (!act || !leaf || leaf.children.length !== 0 || !leafMatches(leaf.element, meta.dtype) || act.element.converted_type !== 'LIST') {
    throw new UserError(`${file}: no activation column of type list<${meta.dtype}> (the metadata says sae.dtype=${meta.dtype})`);
  }
  const cols: [string, string][] = [
    ['token_id', 'INT32'],
    ['context_id', 'INT32'],
    ['position', 'INT32'],
  ];
  if (hasRawStats(meta)) cols.push(['raw_mean', 'FLOAT'], ['raw_norm', 'FLOAT']);
  for (const [name, type] of cols) {
    const c = child(root, name);
    if (!c || c.element.type !== type) throw new UserError(`${file}: no ${name} column of type ${type}`);
  }
}

function leafMatches(e: SchemaTree['element'], dtype: ShardDtype): boolean {
  if (dtype === 'float32') return e.type === 'FLOAT';
  if (e.type !== 'FIXED_LEN_BYTE_ARRAY' || e.type_length !== 2) return false;
  return dtype === 'float16' ? e.logical_type?.type === 'FLOAT16' : e.logical_type === undefined;
}

async function openFile(file: string): Promise<{ shard: ShardFile; meta: ShardMeta }> {
  let size: number;
  try {
    const st = await fs.stat(file);
    if (!st.isFile()) throw new UserError(`${file}: not a file`);
    size = st.size;
  } catch (err) {
    throw describeFsError(err, file);
  }
  if (size === 0) throw new UserError(`${file}: empty file`);
  let md: FileMetaData;
  try {
    md = await parquetMetadataAsync(fileBuffer(file, size));
  } catch (err) {
    throw corrupt(file, err);
  }
  const meta = kvToMeta(md.key_value_metadata, file);
  checkSchema(file, md, meta);
  const rowGroups: number[] = [];
  for (const rg of md.row_groups) {
    rowGroups.push(Number(rg.num_rows));
    // A footer that points past the end of the file means the data was cut off or overwritten.
    for (const c of rg.columns) {
      const m = c.meta_data;
      if (!m) continue;
      const start = Number(m.dictionary_page_offset ?? m.data_page_offset);
      if (start + Number(m.total_compressed_size) > size) {
        throw new UserError(`${file}: truncated (column data extends past the end of the ${size}-byte file)`);
      }
    }
  }
  const rows = rowGroups.reduce((a, b) => a + b, 0);
  if (rows !== Number(md.num_rows)) throw new UserError(`${file}: row groups hold ${rows} rows but the footer says ${md.num_rows}`);
  const shard: ShardFile = { path: file, rows, rowGroups };
  footers.set(shard, md);
  return { shard, meta };
}

/** The first key on which two shard metadata disagree, as "key=a vs b", or null. */
function metaDiff(a: ShardMeta, b: ShardMeta): string | null {
  const ka = new Map(metaToKv(a).map((e) => [e.key, e.value]));
  const kb = new Map(metaToKv(b).map((e) => [e.key, e.value]));
  for (const k of new Set([...ka.keys(), ...kb.keys()])) {
    if (ka.get(k) !== kb.get(k)) return `${k.replace(/^sae\./, '')}=${ka.get(k) ?? '(none)'} vs ${kb.get(k) ?? '(none)'}`;
  }
  return null;
}

export interface OpenShardsOptions {
  /** read a directory of .parquet files that has no manifest.json (a hand-made set) */
  allowNoManifest?: boolean;
}

/**
 * Open activation shards: a directory with manifest.json, a directory of .parquet files (read in
 * name order; only with allowNoManifest, since a writer's folder without its manifest is
 * unfinished), or a single .parquet file. Every file's footer and metadata are validated up front
 * so that a bad shard fails the run before training starts, not hours into it.
 */
export async function openShards(pathOrDir: string, opts: OpenShardsOptions = {}): Promise<ShardSet> {
  let st;
  try {
    st = await fs.stat(pathOrDir);
  } catch (err) {
    throw describeFsError(err, pathOrDir);
  }
  let names: string[];
  let manifest: ShardManifest | null = null;
  if (st.isDirectory()) {
    const mpath = path.join(pathOrDir, MANIFEST);
    let text: string | null = null;
    try {
      text = await fs.readFile(mpath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw describeFsError(err, `reading ${mpath}`);
    }
    if (text !== null) {
      try {
        manifest = JSON.parse(text) as ShardManifest;
      } catch {
        throw new UserError(`${mpath}: malformed JSON`);
      }
      if (manifest?.format !== SHARD_FORMAT || !Array.isArray(manifest.shards)) {
        throw new UserError(`${mpath}: not an sae activation manifest (format ${JSON.stringify(manifest?.format)})`);
      }
      names = manifest.shards.map((s) => {
        if (typeof s?.file !== 'string' || s.file.includes('/') || s.file.includes('\\')) {
          throw new UserError(`${mpath}: malformed shard entry ${JSON.stringify(s)}`);
        }
        return path.join(pathOrDir, s.file);
      });
    } else {
      let entries: string[];
      try {
        entries = await fs.readdir(pathOrDir);
      } catch (err) {
        throw describeFsError(err, `reading ${pathOrDir}`);
      }
      const parquet = entries.filter((n) => n.endsWith('.parquet') && !n.startsWith('.')).sort();
      if (!parquet.length) {
        // a multi-hook harvest writes one shard folder per hook: point at them instead of "nothing here"
        const sub: string[] = [];
        for (const n of entries.sort()) {
          const p = path.join(pathOrDir, n);
          if (await fs.stat(path.join(p, MANIFEST)).then((s) => s.isFile(), () => false)) sub.push(p);
        }
        if (sub.length) throw new UserError(`${pathOrDir} holds one folder per hook: ${sub.join(', ')}; pass one of them`);
        throw new UserError(`no activations in ${pathOrDir} (no ${MANIFEST} and no .parquet files)`);
      }
      // A writer publishes the manifest last: without it the folder is a killed or running write,
      // unless the user vouches for a hand-made set.
      if (!opts.allowNoManifest) {
        const temps = entries.filter((n) => n.startsWith('.') && n.includes('.tmp-')).length;
        throw new UserError(
          `${pathOrDir}: incomplete shard folder: no ${MANIFEST} (${parquet.length} .parquet file${parquet.length === 1 ? '' : 's'}` +
            `${temps ? `, ${temps} temporary file${temps === 1 ? '' : 's'} of an unfinished write` : ''}); ` +
            `rerun the command that wrote it, or pass --allow-no-manifest for a hand-made folder of Parquet files`,
        );
      }
      names = parquet.map((n) => path.join(pathOrDir, n));
    }
  } else {
    names = [pathOrDir];
  }
  const files: ShardFile[] = [];
  let meta: ShardMeta | null = null;
  for (let i = 0; i < names.length; i++) {
    const { shard, meta: m } = await openFile(names[i]);
    if (manifest && manifest.shards[i].rows !== shard.rows) {
      throw new UserError(`${names[i]}: has ${shard.rows} rows but ${MANIFEST} lists ${manifest.shards[i].rows}`);
    }
    if (meta) {
      const diff = metaDiff(meta, m);
      if (diff) throw new UserError(`${names[i]}: metadata disagrees with ${files[0].path} (${diff})`);
    } else {
      meta = m;
    }
    files.push(shard);
  }
  if (!meta) throw new UserError(`no activations in ${pathOrDir} (${MANIFEST} lists no shards)`);
  if (manifest) {
    const diff = metaDiff(manifest.meta, meta);
    if (diff) throw new UserError(`${path.join(pathOrDir, MANIFEST)}: metadata disagrees with the shards (${diff})`);
  }
  const rows = files.reduce((a, f) => a + f.rows, 0);
  if (rows === 0) throw new UserError(`no activations in ${pathOrDir} (0 rows)`);
  return { files, meta, rows };
}

export interface CompatExpect {
  d?: number;
  preprocessing?: Preprocessing;
  hook?: string;
  /** the model the activations must come from */
  model?: string;
}

// Every model comparison goes through sameModel (src/lm/identity.ts), so one place decides what
// "the same model" means.
export { sameModel };

/** Refuse data that does not fit the run, naming the first mismatch. */
export function checkCompatible(meta: ShardMeta, expect: CompatExpect): void {
  if (expect.d !== undefined && meta.d !== expect.d) throw new UserError(`shards have d=${meta.d} but the run expects d=${expect.d}`);
  if (expect.model !== undefined && !sameModel(meta.model, expect.model)) throw new UserError(`shards come from model ${meta.model} but the SAE was trained on ${expect.model}`);
  if (expect.preprocessing !== undefined && meta.preprocessing !== expect.preprocessing) {
    throw new UserError(`shards have preprocessing=${meta.preprocessing} but the run expects preprocessing=${expect.preprocessing}`);
  }
  if (expect.hook !== undefined && meta.hook !== expect.hook) throw new UserError(`shards have hook=${meta.hook} but the run expects hook=${expect.hook}`);
}

export interface RowChunk {
  /** index into set.files */
  file: number;
  /** first row of the chunk within its file */
  rowStart: number;
  n: number;
  /** n×d */
  acts: Float32Array;
  tokenIds: Int32Array;
  contextIds: Int32Array;
  positions: Int32Array;
  /** present with center_unit_norm */
  rawMean?: Float32Array;
  rawNorm?: Float32Array;
}

async function footerOf(f: ShardFile): Promise<FileMetaData> {
  let md = footers.get(f);
  if (!md) {
    md = footers.get((await openFile(f.path)).shard)!;
    footers.set(f, md);
  }
  return md;
}

type ExtraColumns = { tokenIds: Int32Array; contextIds: Int32Array; positions: Int32Array; rawMean?: Float32Array; rawNorm?: Float32Array };

/**
 * Decode rows [rowStart, rowEnd) of one file. Activations go to `acts` (row-major, starting at
 * row 0 of the buffer), widened to float32 from the storage dtype; every row is checked for
 * length d and finite values. Other columns are decoded only when asked for. The shard codec's
 * fast path (shard-decoder.ts) takes what it can; hyparquet reads whatever columns it leaves.
 */
async function decodeRows(
  f: ShardFile,
  d: number,
  dtype: ShardDtype,
  preprocessing: Preprocessing,
  rowStart: number,
  rowEnd: number,
  acts: Float32Array,
  extra?: ExtraColumns,
): Promise<void> {
  const md = await footerOf(f);
  let size: number;
  try {
    size = (await fs.stat(f.path)).size;
  } catch (err) {
    throw describeFsError(err, f.path);
  }
  const scalars: ScalarTarget[] = [];
  if (extra) {
    scalars.push({ name: 'token_id', dst: extra.tokenIds }, { name: 'context_id', dst: extra.contextIds }, { name: 'position', dst: extra.positions });
    if (extra.rawMean && extra.rawNorm) scalars.push({ name: 'raw_mean', dst: extra.rawMean }, { name: 'raw_norm', dst: extra.rawNorm });
  }
  const left = await decodeFast({ file: f.path, size, md, d, dtype, rowStart, rowEnd, acts, scalars });
  if (left.length) await decodeWithHyparquet(f, md, size, d, dtype, rowStart, rowEnd, acts, scalars, left);
  checkDecodedRows(f.path, acts, rowStart, rowEnd - rowStart, d, preprocessing);
}

/**
 * Largest |value| accepted in shards without a known row norm (`none`, `dataset_scale`). The
 * largest activations reported in real LMs ("massive activations") are around 1e4; 1e15 is eleven
 * orders beyond that, so only corrupt bytes reach it, and the squares of values below it summed
 * over d ≤ 1e6 still fit in float32 (1e30·1e6 < 3.4e38), so training and FVU stay finite.
 */
export const MAX_ABS_ACTIVATION = 1e15;
/** Relative error of a center_unit_norm row's norm beyond which the row is corrupt, not rounded:
 * bfloat16 storage moves a norm by at most 2⁻⁹ ≈ 0.002 (each value by ≤ 2⁻⁹ of itself). */
export const UNIT_NORM_TOLERANCE = 1e-2;

/**
 * Corrupt bytes in the activation column can decode to finite floats (up to 1.6e38 have been
 * seen), which the codec's NaN/Inf check passes and which then turn a loss or FVU into Infinity
 * silently. One pass over the decoded values refuses them: center_unit_norm rows must have norm 1
 * (or 0: a constant row is stored as zeros, see preprocessRows); other preprocessings get a
 * magnitude bound. `acts` holds rows [rowStart, rowStart + n) of `file` from index 0.
 */
export function checkDecodedRows(file: string, acts: Float32Array, rowStart: number, n: number, d: number, preprocessing: Preprocessing): void {
  if (preprocessing === 'center_unit_norm') {
    for (let r = 0; r < n; r++) {
      const o = r * d;
      // float64: a float32 sum of squares of a corrupt 1e38 overflows; here it stays finite
      let ss = 0;
      for (let j = 0; j < d; j++) ss += acts[o + j] * acts[o + j];
      // written as a negated comparison so that a NaN sum also fails
      if (ss !== 0 && !(Math.abs(Math.sqrt(ss) - 1) <= UNIT_NORM_TOLERANCE)) {
        throw new UserError(`${file} row ${rowStart + r}: activation has norm ${fmtNorm(Math.sqrt(ss))} but center_unit_norm rows have norm 1; the shard is corrupt`);
      }
    }
    return;
  }
  for (let i = 0; i < n * d; i++) {
    const v = acts[i];
    if (!(v <= MAX_ABS_ACTIVATION && v >= -MAX_ABS_ACTIVATION)) {
      const what = Number.isNaN(v) ? 'NaN' : Number.isFinite(v) ? `the value ${v.toExponential(2)} (beyond ±${MAX_ABS_ACTIVATION.toExponential(0)})` : 'Inf';
      throw new UserError(`${file} row ${rowStart + Math.floor(i / d)}: activation contains ${what}; the shard is corrupt`);
    }
  }
}

function fmtNorm(x: number): string {
  return Number.isFinite(x) && x < 1e6 ? x.toPrecision(4) : x.toExponential(2);
}

/** The general path: hyparquet decodes `columns` (names) of rows [rowStart, rowEnd). */
async function decodeWithHyparquet(
  f: ShardFile,
  md: FileMetaData,
  size: number,
  d: number,
  dtype: ShardDtype,
  rowStart: number,
  rowEnd: number,
  acts: Float32Array,
  scalars: readonly ScalarTarget[],
  columns: string[],
): Promise<void> {
  const flat: Record<string, Int32Array | Float32Array> = {};
  for (const s of scalars) flat[s.name] = s.dst;
  let bad: UserError | null = null;
  let seen = 0;
  // hyparquet hands FLOAT16 values over as numbers already, bfloat16 as 2-byte arrays (no logical type).
  const bf16 = dtype === 'bfloat16';
  const w32 = new Uint32Array(1);
  const wf = new Float32Array(w32.buffer);
  try {
    await parquetRead({
      file: fileBuffer(f.path, size),
      metadata: md,
      columns,
      rowStart,
      rowEnd,
      onChunk(c) {
        if (bad) return;
        // Chunks may extend beyond the requested range; keep the overlap.
        const lo = Math.max(c.rowStart, rowStart);
        const hi = Math.min(c.rowEnd, rowEnd);
        if (c.columnName === 'activation') {
          const data = c.columnData as unknown as ArrayLike<number>[];
          for (let r = lo; r < hi; r++) {
            const row = data[r - c.rowStart];
            const o = (r - rowStart) * d;
            if (!row || row.length !== d) {
              bad = new UserError(`${f.path} row ${r}: activation has ${row?.length ?? 0} values, expected d=${d}`);
              return;
            }
            for (let j = 0; j < d; j++) {
              let v: number;
              if (bf16) {
                const b = (row as unknown as ArrayLike<Uint8Array>)[j];
                w32[0] = (b[0] << 16) | (b[1] << 24);
                v = wf[0];
              } else {
                v = row[j];
              }
              if (v - v !== 0) {
                bad = new UserError(`${f.path} row ${r}: activation contains ${Number.isNaN(v) ? 'NaN' : 'Inf'}`);
                return;
              }
              acts[o + j] = v;
            }
          }
          seen += hi - lo;
        } else {
          const dst = flat[c.columnName];
          const src = c.columnData as ArrayLike<number>;
          if (dst) for (let r = lo; r < hi; r++) dst[r - rowStart] = src[r - c.rowStart];
        }
      },
    });
  } catch (err) {
    throw corrupt(f.path, err);
  }
  if (bad) throw bad;
  if (columns.includes('activation') && seen !== rowEnd - rowStart) throw new UserError(`${f.path}: expected rows ${rowStart}..${rowEnd - 1} but decoded ${seen}`);
}

/** Read rows [rowStart, rowEnd) of file `fileIndex` with every column, into fresh buffers. */
export async function readRows(set: ShardSet, fileIndex: number, rowStart: number, rowEnd: number): Promise<RowChunk> {
  const f = set.files[fileIndex];
  if (!f || rowStart < 0 || rowEnd > f.rows || rowEnd < rowStart) {
    throw new RangeError(`readRows: bad range ${rowStart}..${rowEnd} of file ${fileIndex}`);
  }
  const n = rowEnd - rowStart;
  const d = set.meta.d;
  const raw = hasRawStats(set.meta);
  const chunk: RowChunk = {
    file: fileIndex,
    rowStart,
    n,
    acts: new Float32Array(n * d),
    tokenIds: new Int32Array(n),
    contextIds: new Int32Array(n),
    positions: new Int32Array(n),
  };
  if (raw) {
    chunk.rawMean = new Float32Array(n);
    chunk.rawNorm = new Float32Array(n);
  }
  if (n > 0) await decodeRows(f, d, set.meta.dtype, set.meta.preprocessing, rowStart, rowEnd, chunk.acts, chunk);
  return chunk;
}

/** Every row of the set in file order, one Parquet row group per chunk (for shuffle and eval). */
export async function* readChunks(set: ShardSet): AsyncGenerator<RowChunk> {
  for (let i = 0; i < set.files.length; i++) {
    let start = 0;
    for (const g of set.files[i].rowGroups) {
      if (g > 0) yield await readRows(set, i, start, start + g);
      start += g;
    }
  }
}

/**
 * Where a BatchStream stands. Plain numbers so that it goes into a checkpoint as JSON; a stream
 * built from it continues exactly where the original left off.
 */
export interface DataPosition {
  epoch: number;
  /** window index within the epoch */
  window: number;
  /** rows of that (shuffled) window already served */
  offset: number;
  /** rows served since the stream began, across epochs and resumes */
  rowsServed: number;
  // What the stream's order depends on, checked on resume so that a changed dataset or setting
  // cannot silently resume into a different order.
  seed: number;
  windowRows: number;
  rows: number;
}

export interface BatchStreamOptions {
  batchSize: number;
  /** rows per shuffle window (default 16·batchSize, at least batchSize) */
  windowRows?: number;
  seed: number;
  /** start a new epoch (reshuffled) at the end instead of stopping */
  loop: boolean;
}

/**
 * The trainer's data source: shuffled batches from a ShardSet with an exactly resumable position.
 *
 * Each epoch visits the files in an order permuted by (seed, epoch) and cuts the resulting row
 * sequence into windows of windowRows consecutive rows; each window is shuffled by a permutation
 * derived from (seed, epoch, window) and batches are cut from the concatenation of shuffled
 * windows (a batch may span windows and epochs). Since a window's content and order depend on
 * nothing else, resuming re-reads one window and regenerates its permutation.
 *
 * Window shuffling mixes rows only within windowRows; rows should come from shuffled shards
 * (a full shuffle first) when the input is ordered, as harvested activations are.
 */
export class BatchStream {
  readonly d: number;
  readonly batchSize: number;
  readonly windowRows: number;
  readonly seed: number;
  readonly loop: boolean;
  private readonly set: ShardSet;
  private readonly nWindows: number;
  private epoch: number;
  private window: number;
  private offset: number;
  private served: number;
  private shardOrder: Int32Array | null = null;
  private orderEpoch = -1;
  /** start row (in the epoch's virtual row sequence) of each file in shardOrder */
  private readonly orderStart: Float64Array;
  // Allocated once: first touch of fresh memory is slow on the target VMs.
  private readonly winBuf: Float32Array;
  private readonly perm: Uint32Array;
  private winLen = 0;
  private curEpoch = -1;
  private curWindow = -1;
  private ended = false;
  private readonly groupBuf: Float32Array;
  private groupKey = '';
  private decoded = 0;

  constructor(set: ShardSet, opts: BatchStreamOptions, position?: DataPosition) {
    this.set = set;
    this.d = set.meta.d;
    const bs = opts.batchSize;
    if (!Number.isSafeInteger(bs) || bs < 1) throw new UserError(`batch size must be a positive integer, got ${bs}`);
    const wr = opts.windowRows ?? 16 * bs;
    if (!Number.isSafeInteger(wr) || wr < bs) throw new UserError(`shuffle window must be an integer of at least the batch size (${bs}) rows, got ${wr}`);
    if (!Number.isSafeInteger(opts.seed)) throw new UserError(`seed must be an integer, got ${opts.seed}`);
    this.batchSize = bs;
    this.seed = opts.seed;
    this.loop = opts.loop;
    if (set.rows <= 0) throw new UserError('no activations to stream (0 rows)');
    // A window never needs to exceed the data; capping keeps the buffer no larger than the data.
    this.windowRows = Math.min(wr, set.rows);
    this.nWindows = Math.ceil(set.rows / this.windowRows);
    this.winBuf = new Float32Array(this.windowRows * this.d);
    this.perm = new Uint32Array(this.windowRows);
    let maxGroup = 0;
    for (const f of set.files) for (const g of f.rowGroups) maxGroup = Math.max(maxGroup, g);
    this.groupBuf = new Float32Array(maxGroup * this.d);
    this.orderStart = new Float64Array(set.files.length);
    if (position) {
      const p = position;
      const mismatch = (what: string, a: number, b: number) =>
        new UserError(`cannot resume the data stream exactly: it was saved with ${what}=${a} but now ${what}=${b}`);
      if (p.seed !== this.seed) throw mismatch('seed', p.seed, this.seed);
      if (p.windowRows !== this.windowRows) throw mismatch('shuffle window rows', p.windowRows, this.windowRows);
      if (p.rows !== set.rows) throw mismatch('total rows', p.rows, set.rows);
      if (!(Number.isSafeInteger(p.epoch) && p.epoch >= 0 && Number.isSafeInteger(p.window) && p.window >= 0 && p.window < this.nWindows
        && Number.isSafeInteger(p.offset) && p.offset >= 0 && p.offset <= this.windowRows
        && Number.isSafeInteger(p.rowsServed) && p.rowsServed >= 0)) {
        throw new UserError(`cannot resume the data stream: malformed position ${JSON.stringify(p)}`);
      }
      this.epoch = p.epoch;
      this.window = p.window;
      this.offset = p.offset;
      this.served = p.rowsServed;
    } else {
      this.epoch = 0;
      this.window = 0;
      this.offset = 0;
      this.served = 0;
    }
  }

  /** rows handed out in batches so far (including before a resume) */
  get rowsServed(): number {
    return this.served;
  }

  /** rows decoded from disk by this instance */
  get rowsDecoded(): number {
    return this.decoded;
  }

  get windowsPerEpoch(): number {
    return this.nWindows;
  }

  position(): DataPosition {
    return {
      epoch: this.epoch,
      window: this.window,
      offset: this.offset,
      rowsServed: this.served,
      seed: this.seed,
      windowRows: this.windowRows,
      rows: this.set.rows,
    };
  }

  /**
   * Fill `out` (batchSize×d) with the next batch. Returns false at the end of the data when not
   * looping; the final partial batch is dropped then (and `out` holds garbage).
   */
  async next(out: Float32Array): Promise<boolean> {
    return (await this.fill(out, false)) === this.batchSize;
  }

  /**
   * Like next, but at the end of non-looping data hands out the final partial batch: returns the
   * number of rows written to `out` (batchSize until the last batch, then the remainder, then 0).
   */
  async nextRows(out: Float32Array): Promise<number> {
    return this.fill(out, true);
  }

  private async fill(out: Float32Array, partial: boolean): Promise<number> {
    const d = this.d;
    if (out.length < this.batchSize * d) throw new RangeError(`BatchStream.next: output holds ${out.length} values, need ${this.batchSize}×${d}`);
    if (this.ended) return 0;
    // Position only advances once the batch is complete, so that an aborted (dropped) batch
    // leaves position() pointing at its first row.
    let epoch = this.epoch;
    let window = this.window;
    let offset = this.offset;
    let filled = 0;
    while (filled < this.batchSize) {
      if (offset >= this.windowLength(window)) {
        window++;
        offset = 0;
        if (window === this.nWindows) {
          if (!this.loop) {
            this.ended = true;
            if (!partial || filled === 0) return 0;
            this.epoch = epoch;
            this.window = window - 1;
            this.offset = this.windowLength(window - 1);
            this.served += filled;
            return filled;
          }
          epoch++;
          window = 0;
        }
        continue;
      }
      if (!this.loadedAt(epoch, window)) await this.loadWindow(epoch, window);
      const take = Math.min(this.batchSize - filled, this.winLen - offset);
      for (let i = 0; i < take; i++) {
        const src = this.perm[offset + i] * d;
        out.set(this.winBuf.subarray(src, src + d), (filled + i) * d);
      }
      filled += take;
      offset += take;
    }
    this.epoch = epoch;
    this.window = window;
    this.offset = offset;
    this.served += this.batchSize;
    return this.batchSize;
  }

  private windowLength(window: number): number {
    return Math.min(this.set.rows, (window + 1) * this.windowRows) - window * this.windowRows;
  }

  private loadedAt(epoch: number, window: number): boolean {
    return this.curEpoch === epoch && this.curWindow === window;
  }

  private orderFor(epoch: number): Int32Array {
    if (this.orderEpoch !== epoch || !this.shardOrder) {
      const order = new Int32Array(this.set.files.length);
      for (let i = 0; i < order.length; i++) order[i] = i;
      Rng.derive(this.seed, `shard-order/${epoch}`).shuffle(order);
      let s = 0;
      for (let i = 0; i < order.length; i++) {
        this.orderStart[i] = s;
        s += this.set.files[order[i]].rows;
      }
      this.shardOrder = order;
      this.orderEpoch = epoch;
    }
    return this.shardOrder;
  }

  private async loadWindow(epoch: number, window: number): Promise<void> {
    const d = this.d;
    const order = this.orderFor(epoch);
    const lo = window * this.windowRows;
    const hi = Math.min(this.set.rows, lo + this.windowRows);
    let dst = 0;
    for (let k = 0; k < order.length && dst < hi - lo; k++) {
      const f = this.set.files[order[k]];
      const fStart = this.orderStart[k];
      const fEnd = fStart + f.rows;
      if (fEnd <= lo + dst || fStart >= hi) continue;
      // rows [a, b) of this file belong to the window
      let a = lo + dst - fStart;
      const b = Math.min(f.rows, hi - fStart);
      let gStart = 0;
      for (let g = 0; g < f.rowGroups.length && a < b; g++) {
        const gEnd = gStart + f.rowGroups[g];
        if (gEnd > a) {
          await this.loadGroup(order[k], g, gStart, f.rowGroups[g]);
          const take = Math.min(b, gEnd) - a;
          const from = (a - gStart) * d;
          this.winBuf.set(this.groupBuf.subarray(from, from + take * d), dst * d);
          dst += take;
          a += take;
        }
        gStart = gEnd;
      }
    }
    const len = hi - lo;
    for (let i = 0; i < len; i++) this.perm[i] = i;
    Rng.derive(this.seed, `window/${epoch}/${window}`).shuffle(this.perm.subarray(0, len));
    this.winLen = len;
    this.curEpoch = epoch;
    this.curWindow = window;
  }

  private async loadGroup(file: number, g: number, start: number, rows: number): Promise<void> {
    const key = `${file}/${g}`;
    if (this.groupKey === key) return;
    this.groupKey = '';
    await decodeRows(this.set.files[file], this.d, this.set.meta.dtype, this.set.meta.preprocessing, start, start + rows, this.groupBuf);
    this.groupKey = key;
    this.decoded += rows;
  }
}

import { promises as fs } from 'node:fs';
import { parquetRead, type FileMetaData } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';
import type { Preprocessing } from './preprocess.js';
import type { ShardDtype } from './dtype.js';
import { hasRawStats } from './shard-format.js';
import { corrupt, fileBuffer, footerOf, type ShardFile, type ShardSet } from './shard-set.js';
import { decodeFast } from './shard-decoder.js';
import type { ScalarTarget } from './column-plans.js';

/**
 * Reading rows of a shard set: the fast codec (shard-decoder.ts) first, hyparquet for the columns
 * it leaves, then one check of every decoded row against what the preprocessing allows.
 */

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

type ExtraColumns = { tokenIds: Int32Array; contextIds: Int32Array; positions: Int32Array; rawMean?: Float32Array; rawNorm?: Float32Array };

/**
 * Decode rows [rowStart, rowEnd) of one file. Activations go to `acts` (row-major, starting at
 * row 0 of the buffer), widened to float32 from the storage dtype; every row is checked for
 * length d and finite values. Other columns are decoded only when asked for. The shard codec's
 * fast path (shard-decoder.ts) takes what it can; hyparquet reads whatever columns it leaves.
 */
export async function decodeRows(
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

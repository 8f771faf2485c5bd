import { promises as fs } from 'node:fs';
import { parquetSchema, snappyUncompress, type ColumnMetaData, type FileMetaData, type SchemaTree } from 'hyparquet';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';
import { f16ToF32Table, type ShardDtype } from './dtype.js';
import { Encoding, LITTLE_ENDIAN, PageType } from './parquet-format.js';
import { readStruct, ThriftError, type TStruct } from './thrift.js';
import { decodeHybrid, HybridError } from './rle-hybrid.js';

/**
 * The fast read path of activation shards: for columns laid out as the shard writer lays them out
 * (a list of values, 4-byte scalars; PLAIN data pages v1 or v2, RLE levels, dictionary-encoded
 * scalars, uncompressed or SNAPPY), pages are decoded straight from the file bytes into the
 * caller's typed arrays. Nullable columns are taken too while every value is present (DuckDB and
 * pyarrow declare everything nullable). Anything else (a dictionary-encoded list, other
 * encodings, nulls, rows continued across pages) is left to hyparquet, column by column; bytes
 * that contradict the footer or themselves are an error naming the file.
 */

export interface ScalarTarget {
  name: string;
  dst: Int32Array | Float32Array;
}

export interface FastDecodeRequest {
  file: string;
  /** file size in bytes */
  size: number;
  md: FileMetaData;
  d: number;
  dtype: ShardDtype;
  rowStart: number;
  rowEnd: number;
  /** rows × d, row rowStart at index 0; omitted when only scalars are wanted */
  acts?: Float32Array;
  scalars: readonly ScalarTarget[];
}

/** A valid layout this decoder does not handle; hyparquet reads the column instead. */
class Unsupported extends Error {}

class Corrupt extends Error {}

interface ColumnPlan {
  name: string;
  path: string;
  /** bytes per value */
  width: number;
  list: boolean;
  /** the column's maximum definition level; every value must be at it */
  maxDef: number;
  /** copy `rows` rows of values from src[at…] to output row `out` (file row `fileRow`) */
  copy: (src: Uint8Array, at: number, out: number, rows: number, fileRow: number) => void;
  /** the output of a scalar column as raw 32-bit words, for dictionary pages */
  words?: Uint32Array;
}

/**
 * Decode what the fast path can of rows [rowStart, rowEnd) and return the names of the columns
 * left for the general reader (none for files the shard writer made).
 */
export async function decodeFast(req: FastDecodeRequest): Promise<string[]> {
  if (!LITTLE_ENDIAN) return [...(req.acts ? ['activation'] : []), ...req.scalars.map((s) => s.name)];
  const left: string[] = [];
  const plans: ColumnPlan[] = [];
  const root = parquetSchema(req.md);
  if (req.acts) {
    const p = activationPlan(root, req);
    if (p) plans.push(p);
    else left.push('activation');
  }
  for (const s of req.scalars) {
    const p = scalarPlan(root, s);
    if (p) plans.push(p);
    else left.push(s.name);
  }
  if (!plans.length) return left;

  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(req.file, 'r');
    const active = new Set(plans);
    let gStart = 0;
    for (let g = 0; g < req.md.row_groups.length && gStart < req.rowEnd && active.size; g++) {
      const rg = req.md.row_groups[g];
      const gRows = Number(rg.num_rows);
      const gEnd = gStart + gRows;
      if (gEnd > req.rowStart) {
        // Chunks of the wanted columns, read with one read of the span that holds them all.
        const chunks = new Map<ColumnPlan, ColumnMetaData>();
        for (const p of active) {
          const c = rg.columns.find((c) => c.meta_data?.path_in_schema.join('.') === p.path);
          const m = c?.meta_data;
          if (!c || !m || c.file_path || (p.list && m.dictionary_page_offset !== undefined) || (m.codec !== 'UNCOMPRESSED' && m.codec !== 'SNAPPY')) {
            active.delete(p);
            left.push(p.name);
          } else {
            chunks.set(p, m);
          }
        }
        if (!chunks.size) break;
        let lo = Infinity;
        let hi = 0;
        for (const m of chunks.values()) {
          const s = chunkStart(m);
          const e = s + Number(m.total_compressed_size);
          if (!(s >= 4 && e <= req.size && e >= s)) throw new UserError(`${req.file}: truncated or corrupt (a column chunk of row group ${g} lies outside the ${req.size}-byte file)`);
          lo = Math.min(lo, s);
          hi = Math.max(hi, e);
        }
        const buf = await readSpan(fh, req.file, lo, hi);
        const from = Math.max(req.rowStart, gStart) - gStart;
        const to = Math.min(req.rowEnd, gEnd) - gStart;
        for (const [p, m] of chunks) {
          try {
            decodeChunk(p, m, buf, chunkStart(m) - lo, gRows, gStart, from, to, req);
          } catch (err) {
            if (err instanceof Unsupported) {
              active.delete(p);
              left.push(p.name);
            } else if (err instanceof Corrupt || err instanceof ThriftError || err instanceof HybridError) {
              throw new UserError(`${req.file}: corrupt ${p.name} column in row group ${g} (${err.message})`);
            } else {
              throw err;
            }
          }
        }
      }
      gStart = gEnd;
    }
  } catch (err) {
    throw describeFsError(err, `reading ${req.file}`);
  } finally {
    await fh?.close().catch(() => undefined);
  }
  return left;
}

function chunkStart(m: ColumnMetaData): number {
  return Number(m.dictionary_page_offset ?? m.data_page_offset);
}

async function readSpan(fh: fs.FileHandle, file: string, start: number, end: number): Promise<Uint8Array> {
  // Not zero-filled: every byte is overwritten by the read or the read fails.
  const out = Buffer.allocUnsafeSlow(end - start);
  let got = 0;
  while (got < out.length) {
    const { bytesRead } = await fh.read(out, got, out.length - got, start + got);
    if (bytesRead === 0) throw new UserError(`${file}: truncated (ends at byte ${start + got}, expected ${end})`);
    got += bytesRead;
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

function child(tree: SchemaTree, name: string): SchemaTree | undefined {
  return tree.children.find((c) => c.element.name === name);
}

function activationPlan(root: SchemaTree, req: FastDecodeRequest): ColumnPlan | null {
  const act = child(root, 'activation');
  const list = act?.children.length === 1 ? act.children[0] : undefined;
  const leaf = list?.children.length === 1 ? list.children[0] : undefined;
  if (!act || !list || !leaf || leaf.children.length) return null;
  const optional = (t: SchemaTree) => (t.element.repetition_type === 'OPTIONAL' ? 1 : t.element.repetition_type === 'REQUIRED' ? 0 : -1);
  if (optional(act) < 0 || list.element.repetition_type !== 'REPEATED' || optional(leaf) < 0) return null;
  const maxDef = optional(act) + 1 + optional(leaf);
  const e = leaf.element;
  const ok = req.dtype === 'float32' ? e.type === 'FLOAT' : e.type === 'FIXED_LEN_BYTE_ARRAY' && e.type_length === 2;
  if (!ok) return null;
  const d = req.d;
  const acts = req.acts!;
  const file = req.file;
  const fileRowOf = (i: number, fileRow: number) => fileRow + Math.floor(i / d);
  const bad = (v: number, row: number): never => {
    throw new UserError(`${file} row ${row}: activation contains ${Number.isNaN(v) ? 'NaN' : 'Inf'}`);
  };
  let copy: ColumnPlan['copy'];
  if (req.dtype === 'float32') {
    copy = (src, at, out, rows, fileRow) => {
      const n = rows * d;
      new Uint8Array(acts.buffer, acts.byteOffset + out * d * 4, n * 4).set(src.subarray(at, at + n * 4));
      const o = out * d;
      for (let i = 0; i < n; i++) {
        const v = acts[o + i];
        if (v - v !== 0) bad(v, fileRowOf(i, fileRow));
      }
    };
  } else if (req.dtype === 'float16') {
    const t = f16ToF32Table();
    copy = (src, at, out, rows, fileRow) => {
      const n = rows * d;
      const o = out * d;
      for (let i = 0; i < n; i++) {
        const h = src[at + 2 * i] | (src[at + 2 * i + 1] << 8);
        // exponent all ones: Inf or NaN
        if ((h & 0x7c00) === 0x7c00) bad(t[h], fileRowOf(i, fileRow));
        acts[o + i] = t[h];
      }
    };
  } else {
    const w = new Uint32Array(acts.buffer, acts.byteOffset, acts.length);
    copy = (src, at, out, rows, fileRow) => {
      const n = rows * d;
      const o = out * d;
      for (let i = 0; i < n; i++) {
        const lo = src[at + 2 * i];
        const hi = src[at + 2 * i + 1];
        if ((hi & 0x7f) === 0x7f && lo & 0x80) bad(lo & 0x7f ? NaN : Infinity, fileRowOf(i, fileRow));
        w[o + i] = (lo << 16) | (hi << 24);
      }
    };
  }
  return { name: 'activation', path: 'activation.list.element', width: req.dtype === 'float32' ? 4 : 2, list: true, maxDef, copy };
}

function scalarPlan(root: SchemaTree, s: ScalarTarget): ColumnPlan | null {
  const c = child(root, s.name);
  const want = s.dst instanceof Int32Array ? 'INT32' : 'FLOAT';
  const rt = c?.element.repetition_type;
  if (!c || c.children.length || (rt !== 'REQUIRED' && rt !== 'OPTIONAL') || c.element.type !== want) return null;
  const dst = s.dst;
  return {
    name: s.name,
    path: s.name,
    width: 4,
    list: false,
    maxDef: rt === 'OPTIONAL' ? 1 : 0,
    words: new Uint32Array(dst.buffer, dst.byteOffset, dst.length),
    copy: (src, at, out, rows) => new Uint8Array(dst.buffer, dst.byteOffset + out * 4, rows * 4).set(src.subarray(at, at + rows * 4)),
  };
}

function int(s: TStruct | undefined, id: number, what: string): number {
  const v = s?.get(id);
  if (typeof v !== 'number' || v < 0 || v > 0x7fffffff) throw new Corrupt(`page header: bad ${what} ${String(v)}`);
  return v;
}

/**
 * Walk the pages of one column chunk, checking each against the footer and itself, and copy
 * the values of group rows [from, to) to the caller's arrays.
 */
function decodeChunk(p: ColumnPlan, m: ColumnMetaData, buf: Uint8Array, start: number, gRows: number, gStart: number, from: number, to: number, req: FastDecodeRequest): void {
  const end = start + Number(m.total_compressed_size);
  const want = Number(m.num_values);
  const snappy = m.codec === 'SNAPPY';
  const d = p.list ? req.d : 1;
  let pos = start;
  let values = 0;
  let rows = 0;
  let dict: Uint32Array | null = null;
  while (values < want) {
    if (pos >= end) throw new Corrupt(`the chunk ends after ${values} of its ${want} values`);
    const { value: h, next } = readStruct(buf, pos, end);
    const type = int(h, 1, 'page type');
    const unc = int(h, 2, 'uncompressed size');
    const comp = int(h, 3, 'compressed size');
    if (next + comp > end) throw new Corrupt(`a page of ${comp} bytes at byte ${next - start} overruns the ${end - start}-byte chunk`);
    const body = buf.subarray(next, next + comp);
    pos = next + comp;
    let nv: number;
    let rep: Uint8Array | null = null;
    let def: Uint8Array | null = null;
    let vals: Uint8Array;
    let encoding: number;
    if (type === PageType.DICTIONARY_PAGE) {
      const dh = h.get(7) as TStruct | undefined;
      if (p.list || dict || !(dh instanceof Map)) throw new Unsupported();
      const n = int(dh, 1, 'dictionary size');
      const e = int(dh, 2, 'dictionary encoding');
      if (e !== Encoding.PLAIN && e !== Encoding.PLAIN_DICTIONARY) throw new Unsupported();
      const page = snappy ? inflate(body, unc) : body;
      if (page.length !== n * 4) throw new Corrupt(`a dictionary of ${n} values has ${page.length} bytes`);
      dict = new Uint32Array(n);
      new Uint8Array(dict.buffer).set(page);
      continue;
    }
    if (type === PageType.DATA_PAGE_V2) {
      const v2 = h.get(8) as TStruct | undefined;
      if (!(v2 instanceof Map)) throw new Corrupt('data page v2 without its header');
      nv = int(v2, 1, 'value count');
      encoding = int(v2, 4, 'encoding');
      if (int(v2, 2, 'null count') !== 0) throw new Unsupported();
      const defLen = int(v2, 5, 'definition levels length');
      const repLen = int(v2, 6, 'repetition levels length');
      if (repLen + defLen > comp || repLen + defLen > unc) throw new Corrupt(`levels of ${repLen + defLen} bytes in a ${comp}-byte page`);
      rep = body.subarray(0, repLen);
      def = body.subarray(repLen, repLen + defLen);
      const compressed = snappy && v2.get(7) !== false;
      vals = compressed ? inflate(body.subarray(repLen + defLen), unc - repLen - defLen) : body.subarray(repLen + defLen);
      if (!compressed && unc !== comp) throw new Corrupt(`an uncompressed page of ${comp} bytes claims ${unc}`);
      if ((!p.list && repLen) || (!p.maxDef && defLen)) throw new Corrupt('levels in a column that has none');
    } else if (type === PageType.DATA_PAGE) {
      const v1 = h.get(5) as TStruct | undefined;
      if (!(v1 instanceof Map)) throw new Corrupt('data page without its header');
      nv = int(v1, 1, 'value count');
      encoding = int(v1, 2, 'encoding');
      const page = snappy ? inflate(body, unc) : body;
      if (!snappy && unc !== comp) throw new Corrupt(`an uncompressed page of ${comp} bytes claims ${unc}`);
      let at = 0;
      if (p.list || p.maxDef) {
        if ((p.maxDef && int(v1, 3, 'definition level encoding') !== Encoding.RLE) || (p.list && int(v1, 4, 'repetition level encoding') !== Encoding.RLE)) throw new Unsupported();
        const section = (): Uint8Array => {
          if (at + 4 > page.length) throw new Corrupt('levels overrun the page');
          const n = page[at] | (page[at + 1] << 8) | (page[at + 2] << 16) | (page[at + 3] << 24);
          if (n < 0 || at + 4 + n > page.length) throw new Corrupt(`levels of ${n} bytes overrun the page`);
          at += 4 + n;
          return page.subarray(at - n, at);
        };
        if (p.list) rep = section();
        if (p.maxDef) def = section();
      }
      vals = page.subarray(at);
    } else {
      throw new Unsupported();
    }
    const dictionary = encoding === Encoding.RLE_DICTIONARY || encoding === Encoding.PLAIN_DICTIONARY;
    if (encoding !== Encoding.PLAIN && !(dictionary && dict)) throw new Unsupported();
    if (values + nv > want) throw new Corrupt(`pages hold more than the ${want} values the footer lists`);
    let pageRows: number;
    // Nulls and empty lists are for hyparquet, which names the row.
    if (p.maxDef && !allAt(def ?? new Uint8Array(0), nv, p.maxDef)) throw new Unsupported();
    if (p.list) {
      pageRows = countRows(rep!, nv, d, req.file, gStart + rows);
    } else {
      pageRows = nv;
    }
    if (rows + pageRows > gRows) throw new Corrupt(`pages hold more than the ${gRows} rows of the row group`);
    const a = Math.max(from, rows);
    const b = Math.min(to, rows + pageRows);
    if (dictionary) {
      if (!vals.length) throw new Corrupt('a dictionary page without its bit width');
      const idx = new Uint32Array(nv);
      decodeHybrid(vals.subarray(1), nv, vals[0], idx);
      const words = p.words!;
      const n = dict!.length;
      for (let i = 0; i < nv; i++) if (idx[i] >= n) throw new Corrupt(`dictionary index ${idx[i]} of a ${n}-value dictionary`);
      for (let r = a; r < b; r++) words[gStart + r - req.rowStart] = dict![idx[r - rows]];
    } else {
      if (vals.length !== pageRows * d * p.width) throw new Corrupt(`a page of ${pageRows} rows has ${vals.length} bytes of values, expected ${pageRows * d * p.width}`);
      if (a < b) p.copy(vals, (a - rows) * d * p.width, gStart + a - req.rowStart, b - a, gStart + a);
    }
    values += nv;
    rows += pageRows;
  }
  if (pos > end) throw new Corrupt('pages overrun the chunk');
  if (rows !== gRows) throw new Corrupt(`pages hold ${rows} rows, the row group ${gRows}`);
}

function inflate(src: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  try {
    snappyUncompress(src, out);
  } catch (err) {
    throw new Corrupt(`SNAPPY data does not decompress (${err instanceof Error ? err.message : String(err)})`);
  }
  return out;
}

/**
 * Iterate the runs of an RLE/bit-packed hybrid stream of bit width 1: `run(value, count)` for RLE
 * runs, `bits(byte, count)` for up to 8 bit-packed values. Stops after n values.
 */
function hybridRuns(buf: Uint8Array, n: number, run: (value: number, count: number) => void, bits: (byte: number, count: number) => void): void {
  let pos = 0;
  let seen = 0;
  while (seen < n) {
    let h = 0;
    let mul = 1;
    for (;;) {
      if (pos >= buf.length) throw new Corrupt(`levels end after ${seen} of ${n} values`);
      const b = buf[pos++];
      h += (b & 0x7f) * mul;
      if (!(b & 0x80)) break;
      mul *= 128;
      if (mul > 2 ** 35) throw new Corrupt('level run header too long');
    }
    if (h % 2 === 1) {
      const groups = (h - 1) / 2;
      if (pos + groups > buf.length) throw new Corrupt('bit-packed levels overrun their section');
      for (let g = 0; g < groups && seen < n; g++) {
        const k = Math.min(8, n - seen);
        bits(buf[pos + g], k);
        seen += k;
      }
      pos += groups;
    } else {
      const count = h / 2;
      if (pos >= buf.length) throw new Corrupt('an RLE level run lacks its value');
      const value = buf[pos++];
      if (value > 1) throw new Corrupt(`level ${value} above the maximum 1`);
      if (count === 0 || seen + count > n) throw new Corrupt(`an RLE run of ${count} levels where ${n - seen} remain`);
      run(value, count);
      seen += count;
    }
  }
}

/** Whether all n definition levels equal max (the value is present at every level). */
function allAt(def: Uint8Array, n: number, max: number): boolean {
  if (max === 1) return allOnes(def, n);
  const levels = new Uint32Array(n);
  try {
    decodeHybrid(def, n, 32 - Math.clz32(max), levels);
  } catch (err) {
    throw err instanceof HybridError ? new Corrupt(`definition levels: ${err.message}`) : err;
  }
  for (let i = 0; i < n; i++) if (levels[i] !== max) return false;
  return true;
}

function allOnes(def: Uint8Array, n: number): boolean {
  let ok = true;
  hybridRuns(
    def,
    n,
    (v) => {
      if (v !== 1) ok = false;
    },
    (byte, k) => {
      if ((byte & ((1 << k) - 1)) !== (1 << k) - 1) ok = false;
    },
  );
  return ok;
}

/**
 * Rows in a page from its repetition levels (0 starts a row, 1 continues it), checking that each
 * has exactly d values; `firstRow` is the file row of the page's first row, for the message.
 */
function countRows(rep: Uint8Array, n: number, d: number, file: string, firstRow: number): number {
  let rows = 0;
  let len = 0;
  const close = (): void => {
    if (rows > 0 && len !== d) throw new UserError(`${file} row ${firstRow + rows - 1}: activation has ${len} values, expected d=${d}`);
  };
  const level = (v: number): void => {
    if (v === 0) {
      close();
      rows++;
      len = 1;
    } else {
      // A page that continues the previous page's row: valid in v1, not written by us.
      if (rows === 0) throw new Unsupported();
      len++;
    }
  };
  hybridRuns(
    rep,
    n,
    (v, count) => {
      if (v === 1) {
        if (rows === 0) throw new Unsupported();
        len += count;
      } else {
        close();
        // count rows, all but the last of one value each
        if (count > 1 && d !== 1) throw new UserError(`${file} row ${firstRow + rows}: activation has 1 values, expected d=${d}`);
        rows += count;
        len = 1;
      }
    },
    (byte, k) => {
      for (let i = 0; i < k; i++) level((byte >> i) & 1);
    },
  );
  close();
  return rows;
}

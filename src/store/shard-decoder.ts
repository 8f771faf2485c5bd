import { promises as fs } from 'node:fs';
import { parquetSchema, snappyUncompress, type ColumnMetaData, type FileMetaData, type PageHeader } from 'hyparquet';
import { parquetHeader } from 'hyparquet/src/column.js';
import { readRleBitPackedHybrid } from 'hyparquet/src/encoding.js';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';
import { LITTLE_ENDIAN, type ShardDtype } from './dtype.js';
import { activationPlan, scalarPlan, type ColumnPlan, type ScalarTarget } from './column-plans.js';

/**
 * The fast read path of activation shards: for columns laid out as the shard writer lays them out
 * (a list of values, 4-byte scalars; PLAIN data pages v1 or v2, RLE levels, dictionary-encoded
 * scalars, uncompressed or SNAPPY), pages are decoded straight from the file bytes into the
 * caller's typed arrays. Nullable columns are taken too while every value is present (DuckDB and
 * pyarrow declare everything nullable). Anything else (a dictionary-encoded list, other
 * encodings, nulls, rows continued across pages) is left to hyparquet, column by column; bytes
 * that contradict the footer or themselves are an error naming the file. Page headers and the
 * dictionary indices are parsed by hyparquet's own functions; the levels of the list column, the
 * bulk of every page, by the specialised code below.
 */

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

/** Bytes that contradict the footer or themselves; reported as a UserError naming the file. */
class Corrupt extends Error {}

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
    const p = activationPlan(root, req.file, req.d, req.dtype, req.acts);
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
            } else if (err instanceof Corrupt) {
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

function int(v: unknown, what: string): number {
  if (typeof v !== 'number' || v < 0 || v > 0x7fffffff) throw new Corrupt(`page header: bad ${what} ${String(v)}`);
  return v;
}

/** The page header at buf[pos…end) and the offset after it; any malformed header is Corrupt. */
function readHeader(buf: Uint8Array, pos: number, end: number): { h: PageHeader; next: number } {
  try {
    const reader = { view: new DataView(buf.buffer, buf.byteOffset, end), offset: pos };
    const h = parquetHeader(reader);
    return { h, next: reader.offset };
  } catch (err) {
    throw new Corrupt(`page header: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Decode out.length values of `width` bits (RLE/bit-packed hybrid); malformed input is Corrupt. */
function decodeHybrid(buf: Uint8Array, width: number, out: Uint32Array, what: string): void {
  try {
    readRleBitPackedHybrid({ view: new DataView(buf.buffer, buf.byteOffset, buf.length), offset: 0 }, width, out, buf.length);
  } catch (err) {
    throw new Corrupt(`${what}: ${err instanceof Error ? err.message : String(err)}`);
  }
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
    const { h, next } = readHeader(buf, pos, end);
    const type = h.type;
    const unc = int(h.uncompressed_page_size, 'uncompressed size');
    const comp = int(h.compressed_page_size, 'compressed size');
    if (next + comp > end) throw new Corrupt(`a page of ${comp} bytes at byte ${next - start} overruns the ${end - start}-byte chunk`);
    const body = buf.subarray(next, next + comp);
    pos = next + comp;
    let nv: number;
    let rep: Uint8Array | null = null;
    let def: Uint8Array | null = null;
    let vals: Uint8Array;
    let encoding: string | undefined;
    if (type === 'DICTIONARY_PAGE') {
      const dh = h.dictionary_page_header;
      if (p.list || dict || !dh) throw new Unsupported();
      const n = int(dh.num_values, 'dictionary size');
      if (dh.encoding !== 'PLAIN' && dh.encoding !== 'PLAIN_DICTIONARY') throw new Unsupported();
      const page = snappy ? inflate(body, unc) : body;
      if (page.length !== n * 4) throw new Corrupt(`a dictionary of ${n} values has ${page.length} bytes`);
      dict = new Uint32Array(n);
      new Uint8Array(dict.buffer).set(page);
      continue;
    }
    if (type === 'DATA_PAGE_V2') {
      const v2 = h.data_page_header_v2;
      if (!v2) throw new Corrupt('data page v2 without its header');
      nv = int(v2.num_values, 'value count');
      encoding = v2.encoding;
      if (int(v2.num_nulls, 'null count') !== 0) throw new Unsupported();
      const defLen = int(v2.definition_levels_byte_length, 'definition levels length');
      const repLen = int(v2.repetition_levels_byte_length, 'repetition levels length');
      if (repLen + defLen > comp || repLen + defLen > unc) throw new Corrupt(`levels of ${repLen + defLen} bytes in a ${comp}-byte page`);
      rep = body.subarray(0, repLen);
      def = body.subarray(repLen, repLen + defLen);
      const compressed = snappy && v2.is_compressed !== false;
      vals = compressed ? inflate(body.subarray(repLen + defLen), unc - repLen - defLen) : body.subarray(repLen + defLen);
      if (!compressed && unc !== comp) throw new Corrupt(`an uncompressed page of ${comp} bytes claims ${unc}`);
      if ((!p.list && repLen) || (!p.maxDef && defLen)) throw new Corrupt('levels in a column that has none');
    } else if (type === 'DATA_PAGE') {
      const v1 = h.data_page_header;
      if (!v1) throw new Corrupt('data page without its header');
      nv = int(v1.num_values, 'value count');
      encoding = v1.encoding;
      const page = snappy ? inflate(body, unc) : body;
      if (!snappy && unc !== comp) throw new Corrupt(`an uncompressed page of ${comp} bytes claims ${unc}`);
      let at = 0;
      if (p.list || p.maxDef) {
        if ((p.maxDef && v1.definition_level_encoding !== 'RLE') || (p.list && v1.repetition_level_encoding !== 'RLE')) throw new Unsupported();
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
    const dictionary = encoding === 'RLE_DICTIONARY' || encoding === 'PLAIN_DICTIONARY';
    if (encoding !== 'PLAIN' && !(dictionary && dict)) throw new Unsupported();
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
      const width = vals[0];
      if (width > 32) throw new Corrupt(`dictionary indices: bit width ${width}`);
      // hyparquet's bit unpacking cannot take 32-bit values (its mask overflows). No writer needs
      // them (a dictionary page holds under 2²⁹ values), so they are left like any other layout.
      if (width === 32) throw new Unsupported();
      const idx = new Uint32Array(nv);
      decodeHybrid(vals.subarray(1), width, idx, 'dictionary indices');
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
  decodeHybrid(def, 32 - Math.clz32(max), levels, 'definition levels');
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

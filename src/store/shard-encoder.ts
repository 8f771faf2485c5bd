import type { KeyValue, SchemaElement } from 'hyparquet';
import { snappyCompress } from 'hyparquet-writer/src/snappy.js';
import { CompactWriter, CType } from './thrift.js';
import { encodeHybrid, indexWidth } from './rle-hybrid.js';
import { Codec, ConvertedType, Encoding, LITTLE_ENDIAN, LogicalTypeField, PAGE_BYTES, PageType, PARQUET_MAGIC, PhysicalType, Repetition, type ShardCodec } from './parquet-format.js';

/**
 * Writes shard files directly from typed arrays: the shard schema is fixed (one required list
 * column of length d, then required 4-byte scalars), so every page is raw little-endian values
 * behind a few bytes of levels and a page header, and nothing is ever a JS value per float.
 * The result is ordinary Parquet (data page v2, PLAIN, RLE levels), as hyparquet-writer made it;
 * INT32 columns with few distinct values in a row group (context_id, position) are dictionary
 * encoded, as hyparquet-writer did, since that is most of their size.
 */

/** A leaf column of a flat schema, with what its pages need. */
export interface LeafColumn {
  path: string[];
  type: number;
  /** bytes per PLAIN value */
  width: number;
  maxRep: number;
  maxDef: number;
}

/** Leaf columns of a schema in file order, with their max repetition and definition levels. */
export function leafColumns(schema: readonly SchemaElement[]): LeafColumn[] {
  const out: LeafColumn[] = [];
  let i = 1;
  const walk = (prefix: string[], rep: number, def: number): void => {
    const e = schema[i++];
    if (!e) throw new Error('shard schema: fewer elements than num_children promise');
    const r = e.repetition_type === 'REPEATED' ? rep + 1 : rep;
    const dl = e.repetition_type === 'REQUIRED' ? def : def + 1;
    const p = [...prefix, e.name];
    if (e.num_children) {
      for (let c = 0; c < e.num_children; c++) walk(p, r, dl);
      return;
    }
    const type = physicalType(e);
    out.push({ path: p, type, width: type === PhysicalType.FIXED_LEN_BYTE_ARRAY ? e.type_length! : 4, maxRep: r, maxDef: dl });
  };
  for (let c = 0; c < (schema[0]?.num_children ?? 0); c++) walk([], 0, 0);
  return out;
}

function physicalType(e: SchemaElement): number {
  if (e.type === 'INT32') return PhysicalType.INT32;
  if (e.type === 'FLOAT') return PhysicalType.FLOAT;
  if (e.type === 'FIXED_LEN_BYTE_ARRAY' && e.type_length) return PhysicalType.FIXED_LEN_BYTE_ARRAY;
  throw new Error(`shard encoder: unsupported column type ${e.type} for ${e.name}`);
}

interface ChunkMeta {
  leaf: LeafColumn;
  start: number;
  dataPageOffset: number;
  dictionaryPageOffset?: number;
  values: number;
  compressed: number;
  uncompressed: number;
  encodings: number[];
}

interface GroupMeta {
  rows: number;
  start: number;
  bytes: number;
  chunks: ChunkMeta[];
}

export interface EncodedGroup {
  /** byte pieces to append to the file, in order */
  pieces: Uint8Array[];
  bytes: number;
}

export class ShardEncoder {
  private readonly leaves: LeafColumn[];
  private readonly listLeaf: LeafColumn;
  private offset = 0;
  private readonly groups: GroupMeta[] = [];
  /** repetition + definition levels of a page of k rows, which only depend on k */
  private readonly levelCache = new Map<number, { bytes: Uint8Array; repLen: number }>();
  private readonly header = new CompactWriter();

  constructor(
    private readonly schema: readonly SchemaElement[],
    private readonly kv: readonly KeyValue[],
    private readonly d: number,
    private readonly codec: ShardCodec = 'UNCOMPRESSED',
    private readonly createdBy = 'sae shard codec',
  ) {
    if (!LITTLE_ENDIAN) throw new Error('shard encoder: typed arrays are big-endian on this machine, Parquet is little-endian');
    this.leaves = leafColumns(schema);
    const [list, ...rest] = this.leaves;
    // The layout the page encoder assumes: a required list of required values, then flat scalars.
    if (!list || list.maxRep !== 1 || list.maxDef !== 1 || rest.some((c) => c.maxRep !== 0 || c.maxDef !== 0 || c.width !== 4)) {
      throw new Error('shard encoder: schema is not one required list column followed by required 4-byte scalars');
    }
    this.listLeaf = list;
  }

  /**
   * Encode one row group: `list` holds rows×d PLAIN values, `scalars` one column of `rows` values
   * each, in schema order. The pieces reference the caller's buffers, which must stay unchanged
   * until they are written.
   */
  rowGroup(rows: number, list: Uint8Array, scalars: readonly (Int32Array | Float32Array)[]): EncodedGroup {
    const d = this.d;
    const w = this.listLeaf.width;
    if (list.length !== rows * d * w) throw new RangeError(`shard encoder: list column has ${list.length} bytes for ${rows} rows of ${d}×${w}`);
    if (scalars.length !== this.leaves.length - 1) throw new RangeError(`shard encoder: ${scalars.length} scalar columns for ${this.leaves.length - 1} in the schema`);
    const pieces: Uint8Array[] = [];
    let bytes = 0;
    const push = (b: Uint8Array): void => {
      pieces.push(b);
      bytes += b.length;
    };
    if (this.offset === 0) {
      // the leading magic; offsets below count it through `bytes`
      push(new Uint8Array(new Uint32Array([PARQUET_MAGIC]).buffer));
    }
    const group: GroupMeta = { rows, start: this.offset + bytes, bytes: 0, chunks: [] };
    const pageRows = Math.max(1, Math.floor(PAGE_BYTES / (d * w)));
    this.leaves.forEach((leaf, c) => {
      const chunk: ChunkMeta = {
        leaf,
        start: this.offset + bytes,
        dataPageOffset: this.offset + bytes,
        values: c === 0 ? rows * d : rows,
        compressed: 0,
        uncompressed: 0,
        encodings: c === 0 ? [Encoding.PLAIN, Encoding.RLE] : [Encoding.PLAIN],
      };
      const page = (type: number, values: Uint8Array, rowsIn: number, valuesIn: number, encoding: number, levels: { bytes: Uint8Array; repLen: number } | null): void => {
        const stored = this.codec === 'SNAPPY' ? snappyCompress(values) : values;
        const levelBytes = levels ? levels.bytes.length : 0;
        const h = this.pageHeader(type, rowsIn, valuesIn, encoding, levelBytes + values.length, levelBytes + stored.length, levels?.repLen ?? 0, levelBytes - (levels?.repLen ?? 0));
        push(h);
        if (levels) push(levels.bytes);
        push(stored);
        chunk.compressed += h.length + levelBytes + stored.length;
        chunk.uncompressed += h.length + levelBytes + values.length;
      };
      if (c === 0) {
        for (let r = 0; r < rows; r += pageRows) {
          const k = Math.min(pageRows, rows - r);
          page(PageType.DATA_PAGE_V2, list.subarray(r * d * w, (r + k) * d * w), k, k * d, Encoding.PLAIN, this.levels(k));
        }
      } else {
        const col = scalars[c - 1];
        if (col.length < rows) throw new RangeError(`shard encoder: column ${leaf.path.join('.')} has ${col.length} values for ${rows} rows`);
        const data = col.subarray(0, rows);
        const dict = leaf.type === PhysicalType.INT32 && data instanceof Int32Array ? dictionaryOf(data) : null;
        if (dict) {
          chunk.dictionaryPageOffset = chunk.start;
          chunk.encodings = [Encoding.PLAIN, Encoding.RLE_DICTIONARY];
          page(PageType.DICTIONARY_PAGE, bytesOf(dict.values), 0, dict.values.length, Encoding.PLAIN, null);
          chunk.dataPageOffset = this.offset + bytes;
          page(PageType.DATA_PAGE_V2, dict.indices, rows, rows, Encoding.RLE_DICTIONARY, null);
        } else {
          const perPage = Math.max(1, Math.floor(PAGE_BYTES / 4));
          for (let r = 0; r < rows; r += perPage) {
            const k = Math.min(perPage, rows - r);
            page(PageType.DATA_PAGE_V2, bytesOf(data.subarray(r, r + k)), k, k, Encoding.PLAIN, null);
          }
        }
      }
      group.chunks.push(chunk);
    });
    group.bytes = this.offset + bytes - group.start;
    this.groups.push(group);
    this.offset += bytes;
    return { pieces, bytes };
  }

  /**
   * RLE/bit-packed hybrid levels (bit width 1) of k rows of a required list of d required values.
   * Repetition levels are a 0 then d−1 ones per row: as RLE runs (a few bytes a row) when d is
   * large, bit-packed (d bits a row) when that is shorter. Definition levels are all 1: one run.
   */
  private levels(k: number): { bytes: Uint8Array; repLen: number } {
    const hit = this.levelCache.get(k);
    if (hit) return hit;
    const d = this.d;
    const row = new CompactWriter();
    row.varint(1 << 1);
    row.byte(0);
    if (d > 1) {
      row.varint((d - 1) * 2);
      row.byte(1);
    }
    const pattern = row.bytes();
    const n = k * d;
    const groups = Math.ceil(n / 8);
    const packedHeader = new CompactWriter();
    packedHeader.varint(groups * 2 + 1);
    const packedLen = packedHeader.length + groups;
    const def = new CompactWriter();
    def.varint(n * 2);
    def.byte(1);
    const defBytes = def.bytes();
    let rep: Uint8Array;
    if (packedLen < pattern.length * k) {
      rep = new Uint8Array(packedLen);
      rep.set(packedHeader.bytes());
      const o = packedHeader.length;
      // Bits are filled least significant first; a row's first bit (level 0) stays clear.
      for (let i = 0; i < n; i++) if (i % d !== 0) rep[o + (i >>> 3)] |= 1 << (i & 7);
    } else {
      rep = new Uint8Array(pattern.length * k);
      rep.set(pattern);
      // Doubling copies: the rows are identical, so copy what is there until the run is filled.
      for (let have = pattern.length; have < rep.length; have *= 2) rep.copyWithin(have, 0, Math.min(have, rep.length - have));
    }
    const bytes = new Uint8Array(rep.length + defBytes.length);
    bytes.set(rep);
    bytes.set(defBytes, rep.length);
    const out = { bytes, repLen: rep.length };
    if (this.levelCache.size > 4) this.levelCache.clear();
    this.levelCache.set(k, out);
    return out;
  }

  private pageHeader(type: number, rows: number, values: number, encoding: number, uncompressed: number, compressed: number, repLen: number, defLen: number): Uint8Array {
    const t = this.header;
    t.reset();
    t.begin();
    t.i32(1, type);
    t.i32(2, uncompressed);
    t.i32(3, compressed);
    if (type === PageType.DICTIONARY_PAGE) {
      t.struct(7);
      t.i32(1, values);
      t.i32(2, encoding);
      t.end();
    } else {
      t.struct(8);
      t.i32(1, values);
      t.i32(2, 0);
      t.i32(3, rows);
      t.i32(4, encoding);
      t.i32(5, defLen);
      t.i32(6, repLen);
      // is_compressed defaults to true, which only matters when the column has a codec
      if (this.codec !== 'UNCOMPRESSED') t.bool(7, true);
      t.end();
    }
    t.end();
    return t.bytes();
  }

  /** The FileMetaData, its length and the closing magic: the last bytes of the file. */
  footer(): Uint8Array {
    const t = new CompactWriter();
    if (this.offset === 0) {
      // A shard with no row groups still needs its leading magic.
      t.raw(new Uint8Array(new Uint32Array([PARQUET_MAGIC]).buffer));
      this.offset = 4;
    }
    const start = t.length;
    t.begin();
    t.i32(1, 2);
    t.list(2, CType.Struct, this.schema.length);
    for (const e of this.schema) writeSchemaElement(t, e);
    t.i64(3, this.groups.reduce((a, g) => a + g.rows, 0));
    t.list(4, CType.Struct, this.groups.length);
    for (const g of this.groups) {
      t.begin();
      t.list(1, CType.Struct, g.chunks.length);
      for (const c of g.chunks) {
        t.begin();
        t.i64(2, c.start);
        t.struct(3);
        t.i32(1, c.leaf.type);
        t.list(2, CType.I32, c.encodings.length);
        for (const e of c.encodings) t.zigzag(e);
        t.list(3, CType.Binary, c.leaf.path.length);
        for (const p of c.leaf.path) t.stringValue(p);
        t.i32(4, Codec[this.codec]);
        t.i64(5, c.values);
        t.i64(6, c.uncompressed);
        t.i64(7, c.compressed);
        t.i64(9, c.dataPageOffset);
        if (c.dictionaryPageOffset !== undefined) t.i64(11, c.dictionaryPageOffset);
        t.end();
        t.end();
      }
      t.i64(2, g.chunks.reduce((a, c) => a + c.uncompressed, 0));
      t.i64(3, g.rows);
      t.i64(5, g.start);
      t.i64(6, g.bytes);
      t.end();
    }
    t.list(5, CType.Struct, this.kv.length);
    for (const { key, value } of this.kv) {
      t.begin();
      t.string(1, key);
      if (value !== undefined) t.string(2, value);
      t.end();
    }
    t.string(6, this.createdBy);
    t.end();
    const len = t.length - start;
    t.raw(new Uint8Array(new Uint32Array([len, PARQUET_MAGIC]).buffer));
    return t.bytes();
  }
}

function writeSchemaElement(t: CompactWriter, e: SchemaElement): void {
  t.begin();
  if (e.type) t.i32(1, physicalType(e));
  if (e.type_length !== undefined) t.i32(2, e.type_length);
  if (e.repetition_type) t.i32(3, Repetition[e.repetition_type]);
  t.string(4, e.name);
  if (e.num_children !== undefined) t.i32(5, e.num_children);
  if (e.converted_type !== undefined) {
    if (e.converted_type !== 'LIST') throw new Error(`shard encoder: unsupported converted type ${e.converted_type}`);
    t.i32(6, ConvertedType.LIST);
  }
  if (e.logical_type !== undefined) {
    if (e.logical_type.type !== 'FLOAT16') throw new Error(`shard encoder: unsupported logical type ${e.logical_type.type}`);
    t.struct(10);
    t.struct(LogicalTypeField.FLOAT16);
    t.end();
    t.end();
  }
  t.end();
}

function bytesOf(a: Int32Array | Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Dictionary encoding of an INT32 column when it pays: the distinct values (PLAIN) and the
 * indices (bit width byte + hybrid runs), or null when plain values would be about as small.
 */
function dictionaryOf(v: Int32Array): { values: Int32Array; indices: Uint8Array } | null {
  const n = v.length;
  if (n < 16) return null;
  const sorted = v.slice().sort();
  let u = 1;
  for (let i = 1; i < n; i++) if (sorted[i] !== sorted[i - 1]) u++;
  const width = indexWidth(u);
  // Judged on bit-packed indices, the worst case; runs only make it smaller.
  if (u * 4 + Math.ceil((n * width) / 8) + 16 > n * 3) return null;
  const values = new Int32Array(u);
  values[0] = sorted[0];
  for (let i = 1, k = 1; i < n; i++) if (sorted[i] !== sorted[i - 1]) values[k++] = sorted[i];
  const idx = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const x = v[i];
    let lo = 0;
    let hi = u - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (values[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    idx[i] = lo;
  }
  const out = new CompactWriter();
  out.byte(width);
  encodeHybrid(idx, n, width, out);
  return { values, indices: out.bytes() };
}

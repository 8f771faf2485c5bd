import type { KeyValue, SchemaElement } from 'hyparquet';
import { snappyCompress } from 'hyparquet-writer/src/snappy.js';
import { CompactWriter, CType } from './thrift.js';
import { Codec, ConvertedType, Encoding, LITTLE_ENDIAN, LogicalTypeField, PAGE_BYTES, PageType, PARQUET_MAGIC, PhysicalType, Repetition, type ShardCodec } from './parquet-format.js';

/**
 * Writes shard files directly from typed arrays: the shard schema is fixed (one required list
 * column of length d, then required 4-byte scalars), so every page is raw little-endian values
 * behind a few bytes of levels and a page header, and nothing is ever a JS value per float.
 * The result is ordinary Parquet (data page v2, PLAIN, RLE levels), as hyparquet-writer made it.
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
   * Encode one row group: `list` holds rows×d PLAIN values, `scalars` one rows×4-byte column each,
   * in schema order. The pieces reference the caller's buffers, which must stay unchanged until
   * they are written.
   */
  rowGroup(rows: number, list: Uint8Array, scalars: readonly Uint8Array[]): EncodedGroup {
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
      const data = c === 0 ? list : scalars[c - 1];
      if (c > 0 && data.length !== rows * 4) throw new RangeError(`shard encoder: column ${leaf.path.join('.')} has ${data.length} bytes for ${rows} rows`);
      const rowBytes = c === 0 ? d * w : 4;
      const perPage = c === 0 ? pageRows : Math.max(1, Math.floor(PAGE_BYTES / 4));
      const chunk: ChunkMeta = {
        leaf,
        start: this.offset + bytes,
        dataPageOffset: this.offset + bytes,
        values: c === 0 ? rows * d : rows,
        compressed: 0,
        uncompressed: 0,
        encodings: c === 0 ? [Encoding.PLAIN, Encoding.RLE] : [Encoding.PLAIN],
      };
      for (let r = 0; r < rows; r += perPage) {
        const k = Math.min(perPage, rows - r);
        const values = data.subarray(r * rowBytes, (r + k) * rowBytes);
        const levels = c === 0 ? this.levels(k) : null;
        const stored = this.codec === 'SNAPPY' ? snappyCompress(values) : values;
        const levelBytes = levels ? levels.bytes.length : 0;
        const h = this.pageHeader(k, c === 0 ? k * d : k, levelBytes + values.length, levelBytes + stored.length, levels?.repLen ?? 0, levelBytes - (levels?.repLen ?? 0));
        push(h);
        if (levels) push(levels.bytes);
        push(stored);
        chunk.compressed += h.length + levelBytes + stored.length;
        chunk.uncompressed += h.length + levelBytes + values.length;
      }
      group.chunks.push(chunk);
    });
    group.bytes = this.offset + bytes - group.start;
    this.groups.push(group);
    this.offset += bytes;
    return { pieces, bytes };
  }

  /**
   * RLE/bit-packed hybrid levels (bit width 1) of k rows of a required list of d required values:
   * repetition is a run of one 0 and a run of d−1 ones per row, definition one run of k·d ones.
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
    const def = new CompactWriter();
    def.varint(k * d * 2);
    def.byte(1);
    const defBytes = def.bytes();
    const repLen = pattern.length * k;
    const bytes = new Uint8Array(repLen + defBytes.length);
    bytes.set(pattern);
    // Doubling copies: the rows are identical, so copy what is there until the run is filled.
    for (let have = pattern.length; have < repLen; have *= 2) bytes.copyWithin(have, 0, Math.min(have, repLen - have));
    bytes.set(defBytes, repLen);
    const out = { bytes, repLen };
    if (this.levelCache.size > 4) this.levelCache.clear();
    this.levelCache.set(k, out);
    return out;
  }

  private pageHeader(rows: number, values: number, uncompressed: number, compressed: number, repLen: number, defLen: number): Uint8Array {
    const t = this.header;
    t.reset();
    t.begin();
    t.i32(1, PageType.DATA_PAGE_V2);
    t.i32(2, uncompressed);
    t.i32(3, compressed);
    t.struct(8);
    t.i32(1, values);
    t.i32(2, 0);
    t.i32(3, rows);
    t.i32(4, Encoding.PLAIN);
    t.i32(5, defLen);
    t.i32(6, repLen);
    t.bool(7, this.codec !== 'UNCOMPRESSED');
    t.end();
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

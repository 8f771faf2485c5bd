import type { Encoding, KeyValue, PageType, ParquetType, SchemaElement } from 'hyparquet';
import { CompressionCodecs, ConvertedTypes, Encodings, FieldRepetitionTypes, PageTypes, ParquetTypes } from 'hyparquet/src/constants.js';
import { ByteWriter } from 'hyparquet-writer';
import { writeRleBitPackedHybrid } from 'hyparquet-writer/src/encoding.js';
import { logicalType } from 'hyparquet-writer/src/metadata.js';
import { snappyCompress } from 'hyparquet-writer/src/snappy.js';
import { serializeTCompactProtocol } from 'hyparquet-writer/src/thrift.js';
import { LITTLE_ENDIAN } from './dtype.js';

/**
 * Writes shard files directly from typed arrays: the shard schema is fixed (one required list
 * column of length d, then required 4-byte scalars), so every page is raw little-endian values
 * behind a few bytes of levels and a page header, and nothing is ever a JS value per float.
 * The result is ordinary Parquet (data page v2, PLAIN, RLE levels), as hyparquet-writer made it;
 * INT32 columns with few distinct values in a row group (context_id, position) are dictionary
 * encoded, as hyparquet-writer did, since that is most of their size.
 *
 * Thrift serialisation, the RLE/bit-packed hybrid and the enum tables are hyparquet's and
 * hyparquet-writer's. The mapping of page headers and the footer onto Thrift fields is ours:
 * writePageHeader cannot write is_compressed = true, which our SNAPPY pages carry, and
 * writeMetadata adds column_orders, which our footers lack, so either would change the bytes.
 */

export type ShardCodec = 'UNCOMPRESSED' | 'SNAPPY';

/** "PAR1" read as a little-endian u32: the first and last four bytes of a Parquet file. */
const PARQUET_MAGIC = 0x31524150;

/**
 * Data pages hold about this many bytes of values (split at row boundaries), as hyparquet-writer
 * and most writers do, so that other readers decode a shard a megabyte at a time.
 */
const PAGE_BYTES = 1 << 20;

/** A leaf column of a flat schema, with what its pages need. */
export interface LeafColumn {
  path: string[];
  type: ParquetType;
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
    out.push({ path: p, type, width: type === 'FIXED_LEN_BYTE_ARRAY' ? e.type_length! : 4, maxRep: r, maxDef: dl });
  };
  for (let c = 0; c < (schema[0]?.num_children ?? 0); c++) walk([], 0, 0);
  return out;
}

function physicalType(e: SchemaElement): ParquetType {
  if (e.type === 'INT32' || e.type === 'FLOAT' || (e.type === 'FIXED_LEN_BYTE_ARRAY' && e.type_length)) return e.type;
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
  encodings: Encoding[];
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
        encodings: c === 0 ? ['PLAIN', 'RLE'] : ['PLAIN'],
      };
      const page = (type: PageType, values: Uint8Array, rowsIn: number, valuesIn: number, encoding: Encoding, levels: { bytes: Uint8Array; repLen: number } | null): void => {
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
          page('DATA_PAGE_V2', list.subarray(r * d * w, (r + k) * d * w), k, k * d, 'PLAIN', this.levels(k));
        }
      } else {
        const col = scalars[c - 1];
        if (col.length < rows) throw new RangeError(`shard encoder: column ${leaf.path.join('.')} has ${col.length} values for ${rows} rows`);
        const data = col.subarray(0, rows);
        const dict = leaf.type === 'INT32' && data instanceof Int32Array ? dictionaryOf(data) : null;
        if (dict) {
          chunk.dictionaryPageOffset = chunk.start;
          chunk.encodings = ['PLAIN', 'RLE_DICTIONARY'];
          page('DICTIONARY_PAGE', bytesOf(dict.values), 0, dict.values.length, 'PLAIN', null);
          chunk.dataPageOffset = this.offset + bytes;
          page('DATA_PAGE_V2', dict.indices, rows, rows, 'RLE_DICTIONARY', null);
        } else {
          const perPage = Math.max(1, Math.floor(PAGE_BYTES / 4));
          for (let r = 0; r < rows; r += perPage) {
            const k = Math.min(perPage, rows - r);
            page('DATA_PAGE_V2', bytesOf(data.subarray(r, r + k)), k, k, 'PLAIN', null);
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
    const row = new ByteWriter(16);
    row.appendVarInt(1 << 1);
    row.appendUint8(0);
    if (d > 1) {
      row.appendVarInt((d - 1) * 2);
      row.appendUint8(1);
    }
    const pattern = row.getBytes();
    const n = k * d;
    const groups = Math.ceil(n / 8);
    const packedHeader = new ByteWriter(16);
    packedHeader.appendVarInt(groups * 2 + 1);
    const packedLen = packedHeader.offset + groups;
    const def = new ByteWriter(16);
    def.appendVarInt(n * 2);
    def.appendUint8(1);
    const defBytes = def.getBytes();
    let rep: Uint8Array;
    if (packedLen < pattern.length * k) {
      rep = new Uint8Array(packedLen);
      rep.set(packedHeader.getBytes());
      const o = packedHeader.offset;
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

  /** A page header (PageHeader in parquet.thrift), serialised on its own so it can be written as a piece. */
  private pageHeader(type: PageType, rows: number, values: number, encoding: Encoding, uncompressed: number, compressed: number, repLen: number, defLen: number): Uint8Array {
    const dictionary = type === 'DICTIONARY_PAGE';
    const out = new ByteWriter(64);
    serializeTCompactProtocol(out, {
      field_1: PageTypes.indexOf(type),
      field_2: uncompressed,
      field_3: compressed,
      field_7: dictionary ? { field_1: values, field_2: Encodings.indexOf(encoding) } : undefined,
      field_8: dictionary
        ? undefined
        : {
            field_1: values,
            field_2: 0,
            field_3: rows,
            field_4: Encodings.indexOf(encoding),
            field_5: defLen,
            field_6: repLen,
            // is_compressed defaults to true, which only matters when the column has a codec
            field_7: this.codec !== 'UNCOMPRESSED' ? true : undefined,
          },
    });
    return out.getBytes();
  }

  /** The FileMetaData, its length and the closing magic: the last bytes of the file. */
  footer(): Uint8Array {
    const out = new ByteWriter();
    if (this.offset === 0) {
      // A shard with no row groups still needs its leading magic.
      out.appendUint32(PARQUET_MAGIC);
      this.offset = 4;
    }
    const start = out.offset;
    // i64 fields go in as bigints: the serialiser picks the Thrift type from the JS type.
    const i64 = BigInt;
    const codec = CompressionCodecs.indexOf(this.codec);
    serializeTCompactProtocol(out, {
      field_1: 2,
      field_2: this.schema.map(schemaElement),
      field_3: i64(this.groups.reduce((a, g) => a + g.rows, 0)),
      field_4: this.groups.map((g) => ({
        field_1: g.chunks.map((c) => ({
          field_2: i64(c.start),
          field_3: {
            field_1: ParquetTypes.indexOf(c.leaf.type),
            field_2: c.encodings.map((e) => Encodings.indexOf(e)),
            field_3: c.leaf.path,
            field_4: codec,
            field_5: i64(c.values),
            field_6: i64(c.uncompressed),
            field_7: i64(c.compressed),
            field_9: i64(c.dataPageOffset),
            field_11: c.dictionaryPageOffset === undefined ? undefined : i64(c.dictionaryPageOffset),
          },
        })),
        field_2: i64(g.chunks.reduce((a, c) => a + c.uncompressed, 0)),
        field_3: i64(g.rows),
        field_5: i64(g.start),
        field_6: i64(g.bytes),
      })),
      field_5: this.kv.map(({ key, value }) => ({ field_1: key, field_2: value })),
      field_6: this.createdBy,
    });
    out.appendUint32(out.offset - start);
    out.appendUint32(PARQUET_MAGIC);
    return out.getBytes();
  }
}

/** A SchemaElement as its Thrift struct (only the fields a shard schema uses). */
function schemaElement(e: SchemaElement): Record<`field_${number}`, unknown> {
  return {
    field_1: e.type && ParquetTypes.indexOf(physicalType(e)),
    field_2: e.type_length,
    field_3: e.repetition_type && FieldRepetitionTypes.indexOf(e.repetition_type),
    field_4: e.name,
    field_5: e.num_children,
    field_6: e.converted_type && ConvertedTypes.indexOf(e.converted_type),
    field_10: logicalType(e.logical_type),
  };
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
  const out = new ByteWriter();
  out.appendUint8(width);
  writeRleBitPackedHybrid(out, idx, width);
  return { values, indices: out.getBytes() };
}

/** Bits needed for indices 0..count−1 (at least 1: some readers mishandle width 0). */
export function indexWidth(count: number): number {
  return Math.max(1, 32 - Math.clz32(Math.max(1, count - 1)));
}

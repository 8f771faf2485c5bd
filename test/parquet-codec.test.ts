import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parquetMetadata, parquetReadObjects } from 'hyparquet';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { ShardWriter, defaultRowGroupRows } from '../src/store/shard-writer.js';
import { metaToKv, shardSchema, type ShardMeta } from '../src/store/shard-format.js';
import { openShards, type ShardSet } from '../src/store/shard-set.js';
import { readRows, readChunks } from '../src/store/row-reader.js';
import { BatchStream } from '../src/stream/batch-stream.js';
import { decodeFast } from '../src/store/shard-decoder.js';
import { parquetHeader } from 'hyparquet/src/column.js';
import { readRleBitPackedHybrid } from 'hyparquet/src/encoding.js';
import { ByteWriter } from 'hyparquet-writer';
import { writeRleBitPackedHybrid } from 'hyparquet-writer/src/encoding.js';
import { indexWidth } from '../src/store/shard-encoder.js';
import { bf16BitsToF32, f16ToF32Table, type ShardDtype } from '../src/store/dtype.js';
import { UserError } from '../src/util/errors.js';

let root: string;
let counter = 0;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-codec-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});
const fresh = () => path.join(root, `d${counter++}`);

function meta(over: Partial<ShardMeta> = {}): ShardMeta {
  return { model: 'm', revision: 'r', hook: 'h', d: 6, ctx: 16, dtype: 'float32', preprocessing: 'none', tokenizer: 't', dataset: 'x', ...over };
}

/** Values of all signs and magnitudes (kept within float16 range), deterministic. */
function values(n: number, d: number, seed = 7): Float32Array {
  const x = new Float32Array(n * d);
  let s = seed;
  for (let i = 0; i < x.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const u = s / 2 ** 32;
    x[i] = (u - 0.5) * 10 ** Math.floor((u * 1000) % 7 - 4);
  }
  return x;
}

async function userErrorOf(p: Promise<unknown>): Promise<UserError> {
  let err: unknown = null;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).not.toContain('\n');
  return err as UserError;
}

async function everything(set: ShardSet) {
  const acts: number[] = [];
  const tok: number[] = [];
  const mean: number[] = [];
  for await (const c of readChunks(set)) {
    acts.push(...c.acts);
    tok.push(...c.tokenIds);
    if (c.rawMean) mean.push(...c.rawMean);
  }
  return { acts, tok, mean };
}

/** What the fast path leaves to hyparquet when asked for every column of a whole file. */
async function leftToHyparquet(file: string, m: ShardMeta): Promise<string[]> {
  const bytes = await fs.readFile(file);
  const md = parquetMetadata(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  const n = Number(md.num_rows);
  const i32 = () => ({ dst: new Int32Array(n) });
  return decodeFast({
    file,
    size: bytes.length,
    md,
    d: m.d,
    dtype: m.dtype,
    rowStart: 0,
    rowEnd: n,
    acts: new Float32Array(n * m.d),
    scalars: [
      { name: 'token_id', ...i32() },
      { name: 'context_id', ...i32() },
      { name: 'position', ...i32() },
    ],
  });
}

/** Widen stored 16-bit bytes (as hyparquet hands bfloat16 over) to their value. */
function widen(v: unknown, dtype: ShardDtype): number {
  if (dtype === 'bfloat16') {
    const b = v as Uint8Array;
    return bf16BitsToF32(b[0] | (b[1] << 8));
  }
  return v as number;
}

/** The first data page of a column chunk: where its header, levels and values start. */
function firstPage(bytes: Uint8Array, column: string) {
  const md = parquetMetadata(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer);
  const chunk = md.row_groups[0].columns.find((c) => c.meta_data!.path_in_schema[0] === column)!.meta_data!;
  const start = Number(chunk.data_page_offset);
  const reader = { view: new DataView(bytes.buffer, bytes.byteOffset, bytes.length), offset: start };
  const v2 = parquetHeader(reader).data_page_header_v2!;
  const next = reader.offset;
  return { start, body: next, values: next + v2.definition_levels_byte_length + v2.repetition_levels_byte_length };
}

async function duck() {
  const { DuckDBInstance } = await import('@duckdb/node-api');
  const inst = await DuckDBInstance.create(':memory:');
  const con = await inst.connect();
  return {
    all: async (sql: string) => (await con.runAndReadAll(sql)).getRowObjectsJson() as Record<string, unknown>[],
    close: () => {
      con.closeSync();
      inst.closeSync();
    },
  };
}

describe('shard codec: files the writer makes', () => {
  const n = 230;

  it.each(['float32', 'float16', 'bfloat16'] as const)('%s: hyparquet and DuckDB read what our reader reads, and the footer is the shard schema', async (dtype) => {
    const dir = fresh();
    const m = meta({ dtype, preprocessing: 'center_unit_norm' });
    const x = values(n, m.d);
    const w = await ShardWriter.create(dir, m, { rowsPerShard: 100, rowGroupRows: 30, preprocess: true });
    await w.append(x, n, Int32Array.from({ length: n }, (_, i) => 3 * i - 50), Int32Array.from({ length: n }, (_, i) => i >> 4), Int32Array.from({ length: n }, (_, i) => i & 15));
    await w.close();
    const set = await openShards(dir);
    const ours = await everything(set);
    expect(ours.tok).toEqual(Array.from({ length: n }, (_, i) => 3 * i - 50));

    const db = await duck();
    try {
      let row = 0;
      for (const [fi, f] of set.files.entries()) {
        const bytes = await fs.readFile(f.path);
        const md = parquetMetadata(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer);
        expect(md.schema).toEqual(shardSchema(m));
        expect(md.key_value_metadata).toEqual(metaToKv(m));
        expect(md.row_groups.map((g) => Number(g.num_rows))).toEqual(fi < 2 ? [30, 30, 30, 10] : [30]);
        expect(await leftToHyparquet(f.path, m)).toEqual([]);

        // hyparquet, independently of our reader
        const objs = await parquetReadObjects({ file: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer, utf8: false });
        expect(objs.length).toBe(f.rows);
        for (const [i, o] of objs.entries()) {
          const r = row + i;
          expect((o.activation as unknown[]).map((v) => widen(v, dtype))).toEqual(ours.acts.slice(r * m.d, (r + 1) * m.d));
          expect([o.token_id, o.context_id, o.position]).toEqual([3 * r - 50, r >> 4, r & 15]);
          expect(o.raw_mean).toBe(ours.mean[r]);
        }

        // DuckDB
        const got = await db.all(`SELECT activation, token_id, context_id, position, raw_mean FROM read_parquet('${f.path}')`);
        expect(got.length).toBe(f.rows);
        for (const [i, o] of got.entries()) {
          const r = row + i;
          if (dtype !== 'bfloat16') expect(o.activation).toEqual(ours.acts.slice(r * m.d, (r + 1) * m.d));
          else expect((o.activation as unknown[]).length).toBe(m.d);
          expect([o.token_id, o.context_id, o.position]).toEqual([3 * r - 50, r >> 4, r & 15]);
          expect(o.raw_mean).toBe(ours.mean[r]);
        }
        row += f.rows;
      }
    } finally {
      db.close();
    }
  });

  it('reads any row range, within and across row groups, through the fast path', async () => {
    const dir = fresh();
    const m = meta({ d: 5 });
    const x = values(200, 5);
    const w = await ShardWriter.create(dir, m, { rowGroupRows: 17 });
    await w.append(x, 200);
    await w.close();
    const set = await openShards(dir);
    for (const [a, b] of [
      [0, 200],
      [3, 4],
      [16, 18],
      [33, 120],
      [199, 200],
    ]) {
      const c = await readRows(set, 0, a, b);
      expect(Array.from(c.acts)).toEqual(Array.from(x.subarray(a * 5, b * 5)));
      expect(Array.from(c.contextIds)).toEqual(Array.from({ length: b - a }, (_, i) => a + i));
    }
  });

  it('splits large row groups into pages of about a megabyte at row boundaries', async () => {
    const dir = fresh();
    const m = meta({ d: 1000 });
    const rows = 600; // 2.4 MB of float32 in one row group
    const x = values(rows, 1000);
    const w = await ShardWriter.create(dir, m, { rowGroupRows: rows });
    await w.append(x, rows);
    await w.close();
    const file = path.join(dir, 'shard-00000.parquet');
    const bytes = await fs.readFile(file);
    const objs = await parquetReadObjects({ file: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer });
    expect(objs.length).toBe(rows);
    expect(objs[599].activation).toEqual(Array.from(x.subarray(599000, 600000)));
    const c = await readRows(await openShards(dir), 0, 250, 270);
    expect(Array.from(c.acts)).toEqual(Array.from(x.subarray(250000, 270000)));
    expect(await leftToHyparquet(file, m)).toEqual([]);
  });

  it('SNAPPY pages (the codec option) are read on the fast path and by DuckDB', async () => {
    const dir = fresh();
    const m = meta({ dtype: 'float16' });
    const x = values(90, m.d);
    const w = await ShardWriter.create(dir, m, { codec: 'SNAPPY', rowGroupRows: 40 });
    await w.append(x, 90);
    await w.close();
    const file = path.join(dir, 'shard-00000.parquet');
    expect(await leftToHyparquet(file, m)).toEqual([]);
    const t = f16ToF32Table();
    const c = await readRows(await openShards(dir), 0, 0, 90);
    const db = await duck();
    try {
      const got = await db.all(`SELECT activation FROM read_parquet('${file}')`);
      expect(got.flatMap((r) => r.activation as number[])).toEqual(Array.from(c.acts));
    } finally {
      db.close();
    }
    // float16 values: every decoded value is a binary16 value
    for (const v of c.acts) expect(t.includes(v)).toBe(true);
  });
});

describe('shard codec: files from other writers go through hyparquet', () => {
  async function handMade(file: string, m: ShardMeta, acts: number[][], opts: { codec?: 'SNAPPY' | 'UNCOMPRESSED'; encoding?: 'PLAIN' }): Promise<void> {
    const k = acts.length;
    const buf = parquetWriteBuffer({
      schema: shardSchema(m),
      columnData: [
        { name: 'activation', data: acts, encoding: opts.encoding },
        { name: 'token_id', data: Int32Array.from({ length: k }, (_, i) => i % 3) },
        { name: 'context_id', data: Int32Array.from({ length: k }, (_, i) => i) },
        { name: 'position', data: Int32Array.from({ length: k }, () => 5) },
      ],
      codec: opts.codec ?? 'UNCOMPRESSED',
      statistics: false,
      kvMetadata: metaToKv(m),
    });
    await fs.writeFile(file, new Uint8Array(buf));
  }

  it('dictionary-encoded, SNAPPY-compressed columns read as written', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const m = meta({ d: 4 });
    // few distinct values, so that hyparquet-writer picks dictionary encoding
    const acts = Array.from({ length: 50 }, (_, r) => [r % 4, 1, 2, (r % 5) / 4]);
    await handMade(path.join(dir, 'a.parquet'), m, acts, { codec: 'SNAPPY' });
    // a dictionary-encoded list goes to hyparquet; dictionary-encoded integers stay on the fast path
    expect(await leftToHyparquet(path.join(dir, 'a.parquet'), m)).toEqual(['activation']);
    const set = await openShards(dir, { allowNoManifest: true });
    const c = await readRows(set, 0, 0, 50);
    expect(Array.from(c.acts)).toEqual(acts.flat());
    expect(Array.from(c.tokenIds)).toEqual(Array.from({ length: 50 }, (_, i) => i % 3));
    expect(Array.from(c.contextIds)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    const s = new BatchStream(set, { batchSize: 50, seed: 3, loop: false });
    const out = new Float32Array(200);
    expect(await s.next(out)).toBe(true);
    expect(Array.from(out).sort()).toEqual(acts.flat().sort());
  });

  it('PLAIN pages from hyparquet-writer take the fast path, with its own level runs', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const m = meta({ d: 3 });
    const acts = Array.from({ length: 40 }, (_, r) => [r, -r, r / 8]);
    const file = path.join(dir, 'b.parquet');
    await handMade(file, m, acts, { encoding: 'PLAIN' });
    expect(await leftToHyparquet(file, m)).not.toContain('activation');
    const c = await readRows(await openShards(dir, { allowNoManifest: true }), 0, 5, 40);
    expect(Array.from(c.acts)).toEqual(acts.slice(5).flat());
  });

  it('a row of the wrong length is reported with its row on the fast path too', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const m = meta({ d: 4 });
    const acts = Array.from({ length: 12 }, () => [1, 2, 3, 4]);
    acts[9] = [1, 2, 3, 4, 5];
    const file = path.join(dir, 'c.parquet');
    await handMade(file, m, acts, { encoding: 'PLAIN' });
    const set = await openShards(dir, { allowNoManifest: true });
    expect((await userErrorOf(readRows(set, 0, 0, 12))).message).toMatch(/c\.parquet row 9: activation has 5 values, expected d=4$/);
    // the fast path itself found it, not hyparquet after a fallback
    expect((await userErrorOf(leftToHyparquet(file, m))).message).toMatch(/c\.parquet row 9: activation has 5 values/);
  });

  it('a file DuckDB wrote (nullable columns, v1 pages, SNAPPY, dictionaries) takes the fast path while nothing is null', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const m = meta({ d: 3 });
    const kv = metaToKv(m)
      .map((e) => `'${e.key}': '${e.value}'`)
      .join(', ');
    const file = path.join(dir, 'duck.parquet');
    const db = await duck();
    try {
      await db.all(
        `COPY (SELECT [i::FLOAT, -i::FLOAT, (i / 4)::FLOAT] AS activation, (i % 7)::INTEGER AS token_id, i::INTEGER AS context_id, 0::INTEGER AS position FROM range(300) t(i)) TO '${file}' (FORMAT parquet, KV_METADATA {${kv}})`,
      );
    } finally {
      db.close();
    }
    expect(await leftToHyparquet(file, m)).toEqual([]);
    const set = await openShards(dir, { allowNoManifest: true });
    const c = await readRows(set, 0, 0, 300);
    expect(Array.from(c.acts)).toEqual(Array.from({ length: 300 }, (_, i) => [i, -i, i / 4]).flat());
    expect(Array.from(c.tokenIds)).toEqual(Array.from({ length: 300 }, (_, i) => i % 7));
    expect(Array.from((await readRows(set, 0, 123, 124)).contextIds)).toEqual([123]);
  });

  it('a DuckDB file with a null goes to hyparquet for that column', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const m = meta({ d: 2 });
    const kv = metaToKv(m)
      .map((e) => `'${e.key}': '${e.value}'`)
      .join(', ');
    const file = path.join(dir, 'nulls.parquet');
    const db = await duck();
    try {
      await db.all(
        `COPY (SELECT [i::FLOAT, 1::FLOAT] AS activation, CASE WHEN i = 5 THEN NULL ELSE i::INTEGER END AS token_id, i::INTEGER AS context_id, 0::INTEGER AS position FROM range(20) t(i)) TO '${file}' (FORMAT parquet, KV_METADATA {${kv}})`,
      );
    } finally {
      db.close();
    }
    expect(await leftToHyparquet(file, m)).toEqual(['token_id']);
    const c = await readRows(await openShards(dir, { allowNoManifest: true }), 0, 0, 20);
    expect(Array.from(c.acts)).toEqual(Array.from({ length: 20 }, (_, i) => [i, 1]).flat());
    expect(c.tokenIds[6]).toBe(6);
  });
});

describe('shard codec: damaged files', () => {
  async function oneShard(dtype: ShardDtype = 'float32'): Promise<{ dir: string; file: string; m: ShardMeta }> {
    const dir = fresh();
    const m = meta({ dtype });
    const w = await ShardWriter.create(dir, m, { rowGroupRows: 20 });
    await w.append(values(50, m.d), 50);
    await w.close();
    return { dir, file: path.join(dir, 'shard-00000.parquet'), m };
  }

  it('a corrupt page header is a one-line error naming the file, column and row group', async () => {
    const { dir, file } = await oneShard();
    const bytes = new Uint8Array(await fs.readFile(file));
    const { start } = firstPage(bytes, 'activation');
    bytes.fill(0xff, start, start + 12);
    await fs.writeFile(file, bytes);
    const set = await openShards(dir);
    expect((await userErrorOf(readRows(set, 0, 0, 10))).message).toMatch(/shard-00000\.parquet: corrupt activation column in row group 0 \(/);
  });

  it('a page header whose sizes overrun the column chunk is a one-line error', async () => {
    const { dir, file } = await oneShard();
    const bytes = new Uint8Array(await fs.readFile(file));
    const { start } = firstPage(bytes, 'context_id');
    // i32 fields 1 (type: one byte), 2 and 3 (sizes of 80 bytes: two-byte varints); grow both sizes
    expect([bytes[start], bytes[start + 2], bytes[start + 5]]).toEqual([0x15, 0x15, 0x15]);
    bytes[start + 3] += 4;
    bytes[start + 6] += 4;
    await fs.writeFile(file, bytes);
    const c = readRows(await openShards(dir), 0, 0, 20);
    expect((await userErrorOf(c)).message).toMatch(/shard-00000\.parquet: corrupt context_id column in row group 0 \(.*overruns.*\)$/);
  });

  it('corrupt dictionary indices are a one-line error naming the column', async () => {
    const { dir, file } = await oneShard();
    const clean = new Uint8Array(await fs.readFile(file));
    // position (all 0) is dictionary-encoded: its data page's values start with the index bit width
    const { values: at } = firstPage(clean, 'position');
    expect(clean[at]).toBe(1);
    for (const [width, why] of [
      [33, /bit width 33/],
      [31, /dictionary indices: /],
    ] as const) {
      const bytes = clean.slice();
      bytes[at] = width;
      await fs.writeFile(file, bytes);
      const c = readRows(await openShards(dir), 0, 0, 20);
      const msg = (await userErrorOf(c)).message;
      expect(msg).toMatch(/shard-00000\.parquet: corrupt position column in row group 0 \(/);
      expect(msg).toMatch(why);
    }
  });

  it('a column chunk cut short after opening is a one-line truncation error', async () => {
    const { dir, file } = await oneShard();
    const set = await openShards(dir);
    const bytes = await fs.readFile(file);
    await fs.writeFile(file, bytes.subarray(0, 200));
    expect((await userErrorOf(readRows(set, 0, 0, 50))).message).toMatch(/shard-00000\.parquet: truncated/);
  });

  it.each(['float32', 'float16', 'bfloat16'] as const)('%s: NaN and Inf in the stored values name the file and row', async (dtype) => {
    const { dir, file, m } = await oneShard(dtype);
    const bytes = new Uint8Array(await fs.readFile(file));
    const { values: at } = firstPage(bytes, 'activation');
    const w = dtype === 'float32' ? 4 : 2;
    const nan = dtype === 'float32' ? [0, 0, 0xc0, 0x7f] : dtype === 'float16' ? [0x00, 0x7e] : [0xc0, 0x7f];
    bytes.set(nan, at + (7 * m.d + 2) * w);
    const inf = dtype === 'float32' ? [0, 0, 0x80, 0x7f] : dtype === 'float16' ? [0x00, 0x7c] : [0x80, 0x7f];
    bytes.set(inf, at + (3 * m.d + 1) * w);
    await fs.writeFile(file, bytes);
    const set = await openShards(dir);
    expect((await userErrorOf(readRows(set, 0, 5, 20))).message).toMatch(/shard-00000\.parquet row 7: activation contains NaN$/);
    expect((await userErrorOf(readRows(set, 0, 0, 20))).message).toMatch(/shard-00000\.parquet row 3: activation contains Inf$/);
  });

  it('refuses exactly the bfloat16 values that round to Inf', async () => {
    const f = new Float32Array(2);
    const u = new Uint32Array(f.buffer);
    u[0] = 0x7f7f7fff; // rounds down to the largest bfloat16
    u[1] = 0xff7f8000; // a tie, rounds (to even) to −Inf
    const w = await ShardWriter.create(fresh(), meta({ d: 1, dtype: 'bfloat16' }));
    await w.append(f.subarray(0, 1), 1);
    expect((await userErrorOf(w.append(f.subarray(1, 2), 1))).message).toMatch(/^row 1: activation value .* is out of range for bfloat16/);
  });

  it('the default row groups hold about a million values', () => {
    expect(defaultRowGroupRows(768, 65536)).toBe(1365);
  });
});

describe('RLE/bit-packed hybrid indices', () => {
  // The encoder writes dictionary indices with hyparquet-writer, the fast reader decodes them with hyparquet.
  it('round-trips runs, literals and every bit width', () => {
    let seed = 5;
    const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    for (const count of [1, 2, 3, 17, 255, 256, 70000]) {
      const w = indexWidth(count);
      expect(2 ** w).toBeGreaterThanOrEqual(count);
      for (const n of [1, 7, 8, 9, 100, 1000]) {
        const v = new Uint32Array(n);
        for (let i = 0; i < n; ) {
          const run = rand() < 0.3 ? 1 + Math.floor(rand() * 40) : 1;
          v.fill(Math.floor(rand() * count), i, Math.min(n, i + run));
          i += run;
        }
        const out = new ByteWriter();
        writeRleBitPackedHybrid(out, v, w);
        const bytes = out.getBytes();
        const got = new Uint32Array(n);
        readRleBitPackedHybrid({ view: new DataView(bytes.buffer, bytes.byteOffset, bytes.length), offset: 0 }, w, got, bytes.length);
        expect(Array.from(got)).toEqual(Array.from(v));
      }
    }
  });
});

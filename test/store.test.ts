import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { ShardWriter, type ShardWriterOptions } from '../src/store/shard-writer.js';
import { metaToKv, kvToMeta, shardSchema, type ShardMeta } from '../src/store/shard-format.js';
import { openShards, type ShardSet } from '../src/store/shard-set.js';
import { checkCompatible } from '../src/store/compat.js';
import { readRows, readChunks } from '../src/store/row-reader.js';
import { BatchStream, type DataPosition } from '../src/stream/batch-stream.js';
import { preprocessRows } from '../src/store/preprocess.js';
import { UserError } from '../src/util/errors.js';

let root: string;
let counter = 0;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-store-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});
const fresh = () => path.join(root, `d${counter++}`);

function meta(over: Partial<ShardMeta> = {}): ShardMeta {
  return {
    model: 'gpt2',
    revision: 'main',
    hook: 'blocks.6.hook_resid_pre',
    d: 4,
    ctx: 64,
    dtype: 'float32',
    preprocessing: 'none',
    tokenizer: 'gpt2',
    dataset: 'test[0:100]',
    ...over,
  };
}

/** Row r is [r·10, r·10+1, …]: exact in float32 and identifiable from its first value. */
function rows(n: number, d: number, first = 0): Float32Array {
  const x = new Float32Array(n * d);
  for (let r = 0; r < n; r++) for (let j = 0; j < d; j++) x[r * d + j] = (first + r) * 10 + j;
  return x;
}

async function writeSet(dir: string, n: number, m: ShardMeta = meta(), opts: ShardWriterOptions = {}): Promise<void> {
  const w = await ShardWriter.create(dir, m, { rowsPerShard: 100, rowGroupRows: 32, ...opts });
  // Uneven appends, so that rows cross row-group and shard boundaries inside one call.
  const steps = [7, 150, 1, 90];
  for (let s = 0, done = 0; done < n; s++) {
    const k = Math.min(steps[s % steps.length], n - done);
    const tok = Int32Array.from({ length: k }, (_, i) => 1000 + done + i);
    const ctxs = Int32Array.from({ length: k }, (_, i) => Math.floor((done + i) / 64));
    const pos = Int32Array.from({ length: k }, (_, i) => (done + i) % 64);
    await w.append(rows(k, m.d, done), k, tok, ctxs, pos);
    done += k;
  }
  await w.close();
}

async function userErrorOf(p: Promise<unknown> | (() => unknown)): Promise<UserError> {
  let err: unknown = null;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).not.toContain('\n');
  return err as UserError;
}

/** Write a Parquet file with the shard schema but arbitrary (possibly invalid) rows. */
async function writeRawShard(file: string, m: ShardMeta, acts: number[][]): Promise<void> {
  const n = acts.length;
  const buf = parquetWriteBuffer({
    schema: shardSchema(m),
    columnData: [
      { name: 'activation', data: acts },
      { name: 'token_id', data: new Int32Array(n) },
      { name: 'context_id', data: new Int32Array(n) },
      { name: 'position', data: new Int32Array(n) },
    ],
    codec: 'UNCOMPRESSED',
    statistics: false,
    kvMetadata: metaToKv(m),
  });
  await fs.writeFile(file, new Uint8Array(buf));
}

async function allRows(set: ShardSet): Promise<Float32Array> {
  const out = new Float32Array(set.rows * set.meta.d);
  let at = 0;
  for await (const c of readChunks(set)) {
    out.set(c.acts, at);
    at += c.acts.length;
  }
  return out;
}

async function drain(s: BatchStream, batches: number): Promise<number[]> {
  const out = new Float32Array(s.batchSize * s.d);
  const ids: number[] = [];
  for (let b = 0; b < batches; b++) {
    if (!(await s.next(out))) break;
    for (let i = 0; i < s.batchSize; i++) ids.push(out[i * s.d] / 10);
  }
  return ids;
}

describe('shard writer and reader', () => {
  it('round-trips activations, token ids, context ids, positions and metadata', async () => {
    const dir = fresh();
    const m = meta({ extras: { note: 'x=1', seed: '7' } });
    await writeSet(dir, 250, m);
    const set = await openShards(dir);
    expect(set.rows).toBe(250);
    expect(set.meta).toEqual(m);
    expect(Array.from(await allRows(set))).toEqual(Array.from(rows(250, 4)));
    const c = await readRows(set, 1, 10, 20);
    expect(Array.from(c.tokenIds)).toEqual(Array.from({ length: 10 }, (_, i) => 1110 + i));
    expect(Array.from(c.positions)).toEqual(Array.from({ length: 10 }, (_, i) => (110 + i) % 64));
    expect(Array.from(c.contextIds)).toEqual(Array.from({ length: 10 }, (_, i) => Math.floor((110 + i) / 64)));
  });

  it('splits rows into shard-NNNNN.parquet files of rowsPerShard rows', async () => {
    const dir = fresh();
    await writeSet(dir, 250);
    const names = (await fs.readdir(dir)).sort();
    expect(names).toEqual(['manifest.json', 'shard-00000.parquet', 'shard-00001.parquet', 'shard-00002.parquet']);
    const set = await openShards(dir);
    expect(set.files.map((f) => f.rows)).toEqual([100, 100, 50]);
    // rowGroupRows 32 does not divide 100: the last group of a shard is short instead of spilling.
    expect(set.files[0].rowGroups).toEqual([32, 32, 32, 4]);
  });

  it('writes manifest.json last, listing shards, row counts, total and metadata', async () => {
    const dir = fresh();
    const m = meta();
    const w = await ShardWriter.create(dir, m, { rowsPerShard: 100, rowGroupRows: 32 });
    await w.append(rows(150, 4), 150);
    expect((await fs.readdir(dir)).includes('manifest.json')).toBe(false);
    const manifest = await w.close();
    const onDisk = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8'));
    expect(onDisk).toEqual(manifest);
    expect(manifest).toEqual({
      format: 'sae-activations/1',
      rows: 150,
      shards: [
        { file: 'shard-00000.parquet', rows: 100 },
        { file: 'shard-00001.parquet', rows: 50 },
      ],
      meta: m,
    });
    expect((await fs.readdir(dir)).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('opens a directory of .parquet files without a manifest when asked to, and a single file', async () => {
    const dir = fresh();
    await writeSet(dir, 250);
    await fs.rm(path.join(dir, 'manifest.json'));
    expect((await openShards(dir, { allowNoManifest: true })).rows).toBe(250);
    const one = await openShards(path.join(dir, 'shard-00001.parquet'));
    expect(one.rows).toBe(100);
    expect((await allRows(one))[0]).toBe(1000);
  });

  it('refuses a shard folder whose writer did not finish, naming what is missing', async () => {
    const dir = fresh();
    await writeSet(dir, 250);
    await fs.rm(path.join(dir, 'manifest.json'));
    await fs.writeFile(path.join(dir, '.shard-00003.parquet.tmp-123-456'), 'partial');
    const msg = (await userErrorOf(openShards(dir))).message;
    expect(msg).toMatch(/incomplete shard folder: no manifest\.json \(3 \.parquet files, 1 temporary file of an unfinished write\)/);
    expect(msg).toMatch(/--allow-no-manifest/);
  });

  it('stores the sae.* key-value metadata in every shard', async () => {
    const dir = fresh();
    await writeSet(dir, 10, meta({ preprocessing: 'dataset_scale', scale: 0.1 + 0.2 }));
    const set = await openShards(path.join(dir, 'shard-00000.parquet'));
    expect(set.meta.scale).toBe(0.1 + 0.2);
    expect(set.meta.preprocessing).toBe('dataset_scale');
    const kv = metaToKv(set.meta);
    expect(kv.find((e) => e.key === 'sae.format')?.value).toBe('sae-activations/1');
    expect(kv.find((e) => e.key === 'sae.d')?.value).toBe('4');
  });

  it('refuses to write into a directory that already holds shards unless asked to overwrite', async () => {
    const dir = fresh();
    await writeSet(dir, 10);
    expect((await userErrorOf(ShardWriter.create(dir, meta()))).message).toMatch(/already contains activation shards/);
    await writeSet(dir, 5, meta(), { overwrite: true });
    expect((await openShards(dir)).rows).toBe(5);
  });

  it('rejects appended rows containing NaN or Inf, or of the wrong length', async () => {
    const w = await ShardWriter.create(fresh(), meta());
    const x = rows(3, 4);
    x[6] = NaN;
    expect((await userErrorOf(w.append(x, 3))).message).toMatch(/row 1: activation contains NaN/);
    x[6] = -Infinity;
    expect((await userErrorOf(w.append(x, 3))).message).toMatch(/row 1: activation contains Inf/);
    expect((await userErrorOf(w.append(rows(3, 4), 2))).message).toMatch(/wrong length/);
  });

  it('rejects metadata with a missing key or a bad value', async () => {
    const kv = metaToKv(meta());
    expect((await userErrorOf(() => kvToMeta(kv.filter((e) => e.key !== 'sae.hook'), 'f.parquet'))).message).toBe(
      'f.parquet: metadata lacks sae.hook',
    );
    const badD = kv.map((e) => (e.key === 'sae.d' ? { key: e.key, value: '-3' } : e));
    expect((await userErrorOf(() => kvToMeta(badD, 'f.parquet'))).message).toMatch(/sae\.d="-3" is not a non-negative integer/);
    const badP = kv.map((e) => (e.key === 'sae.preprocessing' ? { key: e.key, value: 'whiten' } : e));
    expect((await userErrorOf(() => kvToMeta(badP, 'f.parquet'))).message).toMatch(/unknown preprocessing "whiten"/);
  });
});

describe('shard validation', () => {
  it('checkCompatible names a d mismatch', async () => {
    const e = await userErrorOf(() => checkCompatible(meta({ d: 512 }), { d: 768 }));
    expect(e.message).toBe('shards have d=512 but the run expects d=768');
  });

  it('checkCompatible names a preprocessing or hook mismatch', async () => {
    expect((await userErrorOf(() => checkCompatible(meta(), { preprocessing: 'center_unit_norm' }))).message).toBe(
      'shards have preprocessing=none but the run expects preprocessing=center_unit_norm',
    );
    expect((await userErrorOf(() => checkCompatible(meta(), { hook: 'blocks.0.hook_resid_pre' }))).message).toMatch(/hook=blocks\.6/);
    expect(() => checkCompatible(meta(), { d: 4, preprocessing: 'none', hook: 'blocks.6.hook_resid_pre' })).not.toThrow();
  });

  it('rejects shards whose metadata disagree', async () => {
    const a = fresh();
    const b = fresh();
    await writeSet(a, 10);
    await writeSet(b, 10, meta({ d: 8 }));
    await fs.rm(path.join(a, 'manifest.json'));
    await fs.copyFile(path.join(b, 'shard-00000.parquet'), path.join(a, 'shard-00001.parquet'));
    expect((await userErrorOf(openShards(a, { allowNoManifest: true }))).message).toMatch(/shard-00001\.parquet: metadata disagrees with .*shard-00000\.parquet \(d=4 vs 8\)/);
  });

  it('rejects a truncated Parquet file with a one-line error naming it', async () => {
    const dir = fresh();
    await writeSet(dir, 150);
    const f = path.join(dir, 'shard-00001.parquet');
    const bytes = await fs.readFile(f);
    await fs.writeFile(f, bytes.subarray(0, Math.floor(bytes.length / 2)));
    expect((await userErrorOf(openShards(dir))).message).toMatch(/shard-00001\.parquet: .*truncated/);
  });

  it('rejects a manifest whose row counts disagree with the files', async () => {
    const dir = fresh();
    await writeSet(dir, 150);
    const mf = path.join(dir, 'manifest.json');
    const m = JSON.parse(await fs.readFile(mf, 'utf8'));
    m.shards[1].rows = 60;
    await fs.writeFile(mf, JSON.stringify(m));
    expect((await userErrorOf(openShards(dir))).message).toMatch(/shard-00001\.parquet: has 50 rows but manifest\.json lists 60/);
  });

  it('rejects a manifest shard that is missing', async () => {
    const dir = fresh();
    await writeSet(dir, 150);
    await fs.rm(path.join(dir, 'shard-00001.parquet'));
    expect((await userErrorOf(openShards(dir))).message).toMatch(/shard-00001\.parquet: no such file/);
  });

  it('rejects an empty file', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'x.parquet'), '');
    expect((await userErrorOf(openShards(dir, { allowNoManifest: true }))).message).toMatch(/x\.parquet: empty file/);
  });

  it('rejects a Parquet file that is not an activation shard', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const buf = parquetWriteBuffer({ columnData: [{ name: 'a', data: [1, 2, 3], type: 'INT32' }] });
    await fs.writeFile(path.join(dir, 'other.parquet'), new Uint8Array(buf));
    expect((await userErrorOf(openShards(dir, { allowNoManifest: true }))).message).toMatch(/other\.parquet: not an sae activation shard/);
  });

  it('rejects input with no activations', async () => {
    const empty = fresh();
    await fs.mkdir(empty);
    expect((await userErrorOf(openShards(empty))).message).toMatch(/^no activations in /);
    const zero = fresh();
    await (await ShardWriter.create(zero, meta())).close();
    expect((await userErrorOf(openShards(zero))).message).toMatch(/^no activations in /);
  });

  it('names the per-hook folders of a multi-hook harvest instead of saying there are no activations', async () => {
    const mh = fresh();
    await writeSet(path.join(mh, 'blocks.1.hook_resid_pre'), 10);
    await writeSet(path.join(mh, 'blocks.2.hook_resid_pre'), 10);
    await fs.writeFile(path.join(mh, 'harvest.json'), '{}');
    expect((await userErrorOf(openShards(mh))).message).toBe(
      `${mh} holds one folder per hook: ${path.join(mh, 'blocks.1.hook_resid_pre')}, ${path.join(mh, 'blocks.2.hook_resid_pre')}; pass one of them`,
    );
  });

  it('reports NaN in a shard with the file and the row within it', async () => {
    const dir = fresh();
    await writeSet(dir, 4000, meta(), { rowsPerShard: 1000, rowGroupRows: 256 });
    await fs.rm(path.join(dir, 'manifest.json'));
    const acts = Array.from({ length: 1500 }, (_, r) => [r, r, r, r]);
    acts[1234][2] = NaN;
    await writeRawShard(path.join(dir, 'shard-00003.parquet'), meta(), acts);
    const set = await openShards(dir, { allowNoManifest: true });
    const s = new BatchStream(set, { batchSize: 100, seed: 1, loop: false });
    expect((await userErrorOf(drain(s, 1000))).message).toMatch(/shard-00003\.parquet row 1234: activation contains NaN$/);
  });

  it('refuses a corrupt center_unit_norm row whose values are finite but whose norm is not 1, naming file and row', async () => {
    const dir = fresh();
    const m = meta({ preprocessing: 'center_unit_norm' });
    const w = await ShardWriter.create(dir, m, { rowsPerShard: 100, rowGroupRows: 32, preprocess: true });
    // distinct rows after centring and scaling, so that row 37's bytes are found only once
    await w.append(Float32Array.from({ length: 800 }, (_, i) => Math.sin(i * i + 1)), 200);
    await w.close();
    // corrupt bytes as a reviewer's dd left them: huge but finite floats inside row 37 of shard 1
    const f = path.join(dir, 'shard-00001.parquet');
    const set0 = await openShards(dir);
    const good = await readRows(set0, 1, 0, 100);
    const bytes = await fs.readFile(f);
    const needle = Buffer.from(good.acts.buffer, good.acts.byteOffset + 37 * 16, 16);
    const at = bytes.indexOf(needle);
    expect(at).toBeGreaterThan(0);
    Buffer.from(new Float32Array([1.6e38, -3e37, 2, 1]).buffer).copy(bytes, at);
    await fs.writeFile(f, bytes);
    const set = await openShards(dir);
    expect((await userErrorOf(readRows(set, 1, 0, 100))).message).toMatch(/shard-00001\.parquet row 37: activation has norm 1\.63e\+38 but center_unit_norm rows have norm 1/);
    const s = new BatchStream(set, { batchSize: 50, seed: 1, loop: false });
    expect((await userErrorOf(drain(s, 1000))).message).toMatch(/shard-00001\.parquet row 37: .*norm/);
    // the constant row a preprocessing stores as zeros (norm 0) stays readable
    const zdir = fresh();
    const wz = await ShardWriter.create(zdir, m, { preprocess: true });
    await wz.append(new Float32Array([5, 5, 5, 5, 1, 2, 3, 4]), 2);
    await wz.close();
    expect(Array.from((await readRows(await openShards(zdir), 0, 0, 2)).acts.subarray(0, 4))).toEqual([0, 0, 0, 0]);
  });

  it('refuses absurd finite magnitudes in shards without a row norm (none, dataset_scale)', async () => {
    for (const pre of ['none', 'dataset_scale'] as const) {
      const dir = fresh();
      await fs.mkdir(dir);
      const m = meta({ preprocessing: pre, ...(pre === 'dataset_scale' ? { scale: 0.5 } : {}) });
      const acts = Array.from({ length: 10 }, () => [1, 2, 3, 4]);
      acts[6] = [1, 2e36, 3, 4];
      await writeRawShard(path.join(dir, 'shard-00000.parquet'), m, acts);
      const set = await openShards(dir, { allowNoManifest: true });
      expect((await userErrorOf(readRows(set, 0, 0, 10))).message).toMatch(/shard-00000\.parquet row 6: activation contains the value 2\.00e\+36 \(beyond ±1e\+15\); the shard is corrupt$/);
      expect((await readRows(set, 0, 0, 6)).acts[1]).toBe(2);
    }
  });

  it('reports a row of the wrong length with the file and row', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const acts = Array.from({ length: 10 }, () => [1, 2, 3, 4]);
    acts[7] = [1, 2, 3];
    await writeRawShard(path.join(dir, 'shard-00000.parquet'), meta(), acts);
    const set = await openShards(dir, { allowNoManifest: true });
    expect((await userErrorOf(readRows(set, 0, 0, 10))).message).toMatch(/shard-00000\.parquet row 7: activation has 3 values, expected d=4/);
  });
});

describe('preprocessing through the writer', () => {
  it('applies center_unit_norm once and records mean and norm to map rows back', async () => {
    const dir = fresh();
    const m = meta({ preprocessing: 'center_unit_norm', d: 6 });
    const raw = new Float32Array(50 * 6);
    for (let i = 0; i < raw.length; i++) raw[i] = Math.sin(i * 1.7) * 3 + (i % 6 === 0 ? 5 : 0) + Math.floor(i / 6);
    const w = await ShardWriter.create(dir, m, { preprocess: true, rowGroupRows: 16 });
    await w.append(raw.slice(), 50);
    await w.close();
    const set = await openShards(dir);
    expect(set.meta.preprocessing).toBe('center_unit_norm');
    const c = await readRows(set, 0, 0, 50);
    for (let r = 0; r < 50; r++) {
      const row = c.acts.subarray(r * 6, r * 6 + 6);
      const mean = row.reduce((a, b) => a + b, 0) / 6;
      const norm = Math.hypot(...row);
      expect(Math.abs(mean)).toBeLessThan(1e-6);
      expect(norm).toBeCloseTo(1, 5);
      for (let j = 0; j < 6; j++) expect(row[j] * c.rawNorm![r] + c.rawMean![r]).toBeCloseTo(raw[r * 6 + j], 4);
    }
  });

  it('applies dataset_scale exactly once, and reading does not re-apply it', async () => {
    const dir = fresh();
    const m = meta({ preprocessing: 'dataset_scale', scale: 2 });
    const w = await ShardWriter.create(dir, m, { preprocess: true });
    await w.append(rows(20, 4), 20);
    await w.close();
    const set = await openShards(dir);
    const got = await allRows(set);
    const want = rows(20, 4);
    preprocessRows(want, 20, 4, 'dataset_scale', 2);
    expect(Array.from(got)).toEqual(Array.from(want));
    const s = new BatchStream(set, { batchSize: 20, seed: 0, loop: false });
    const out = new Float32Array(80);
    await s.next(out);
    expect(Array.from(out).sort((a, b) => a - b)).toEqual(Array.from(want).sort((a, b) => a - b));
  });

  it('does not touch the caller\'s buffer when preprocessing', async () => {
    const w = await ShardWriter.create(fresh(), meta({ preprocessing: 'center_unit_norm' }), { preprocess: true });
    const x = rows(5, 4);
    await w.append(x, 5);
    expect(Array.from(x)).toEqual(Array.from(rows(5, 4)));
  });
});

describe('BatchStream', () => {
  let set: ShardSet;
  const N = 1000;
  beforeAll(async () => {
    const dir = fresh();
    // 7 shards (last short) with row groups that straddle windows.
    await writeSet(dir, N, meta(), { rowsPerShard: 150, rowGroupRows: 40 });
    set = await openShards(dir);
  });

  it('serves every row exactly once per epoch and drops the final partial batch', async () => {
    const s = new BatchStream(set, { batchSize: 64, windowRows: 200, seed: 3, loop: false });
    const ids = await drain(s, 1e6);
    expect(ids.length).toBe(Math.floor(N / 64) * 64);
    expect(new Set(ids).size).toBe(ids.length);
    const s2 = new BatchStream(set, { batchSize: 50, windowRows: 130, seed: 3, loop: false });
    expect((await drain(s2, 1e6)).sort((a, b) => a - b)).toEqual(Array.from({ length: N }, (_, i) => i));
  });

  it('gives the same order for the same seed', async () => {
    const a = await drain(new BatchStream(set, { batchSize: 50, windowRows: 130, seed: 11, loop: true }), 45);
    const b = await drain(new BatchStream(set, { batchSize: 50, windowRows: 130, seed: 11, loop: true }), 45);
    expect(a).toEqual(b);
  });

  it('gives a different order for a different seed', async () => {
    const a = await drain(new BatchStream(set, { batchSize: 50, windowRows: 130, seed: 11, loop: false }), 20);
    const b = await drain(new BatchStream(set, { batchSize: 50, windowRows: 130, seed: 12, loop: false }), 20);
    expect(a).not.toEqual(b);
    expect([...a].sort((x, y) => x - y)).toEqual([...b].sort((x, y) => x - y));
  });

  it('reshuffles each epoch when looping, still serving every row once per epoch', async () => {
    const ids = await drain(new BatchStream(set, { batchSize: 50, windowRows: 130, seed: 5, loop: true }), 40);
    const e0 = ids.slice(0, N);
    const e1 = ids.slice(N, 2 * N);
    expect(e1).not.toEqual(e0);
    expect([...e1].sort((x, y) => x - y)).toEqual([...e0].sort((x, y) => x - y));
    expect(new Set(e1).size).toBe(N);
  });

  it('mixes rows from across the data within a window, not just neighbours', async () => {
    const ids = await drain(new BatchStream(set, { batchSize: 100, windowRows: 500, seed: 2, loop: false }), 1);
    const spread = Math.max(...ids) - Math.min(...ids);
    expect(spread).toBeGreaterThan(300);
  });

  it('resumes from position() mid-epoch with bit-identical batches', async () => {
    const opts = { batchSize: 48, windowRows: 130, seed: 9, loop: true };
    const ref = new BatchStream(set, opts);
    await drain(ref, 7);
    const pos: DataPosition = JSON.parse(JSON.stringify(ref.position()));
    expect(pos.offset).toBeGreaterThan(0);
    const resumed = new BatchStream(set, opts, pos);
    const outA = new Float32Array(48 * 4);
    const outB = new Float32Array(48 * 4);
    for (let b = 0; b < 30; b++) {
      expect(await ref.next(outA)).toBe(true);
      expect(await resumed.next(outB)).toBe(true);
      expect(Buffer.from(outB.buffer).equals(Buffer.from(outA.buffer))).toBe(true);
    }
    expect(resumed.position()).toEqual(ref.position());
  });

  it('resumes across an epoch boundary with bit-identical batches', async () => {
    const opts = { batchSize: 48, windowRows: 130, seed: 9, loop: true };
    const ref = new BatchStream(set, opts);
    await drain(ref, 20); // 960 rows: the next batch spans epochs 0 and 1
    const pos = ref.position();
    expect(pos.epoch).toBe(0);
    const expected = await drain(ref, 15);
    expect(ref.position().epoch).toBe(1);
    const got = await drain(new BatchStream(set, opts, pos), 15);
    expect(got).toEqual(expected);
  });

  it('resumes at the end of the data and reports the end when not looping', async () => {
    const opts = { batchSize: 100, windowRows: 250, seed: 1, loop: false };
    const ref = new BatchStream(set, opts);
    await drain(ref, 10);
    const resumed = new BatchStream(set, opts, ref.position());
    expect(await resumed.next(new Float32Array(400))).toBe(false);
  });

  it('hands out the final partial batch through nextRows, each row once', async () => {
    const opts = { batchSize: 300, windowRows: 450, seed: 4, loop: false };
    const s = new BatchStream(set, opts);
    const out = new Float32Array(300 * set.meta.d);
    const sizes: number[] = [];
    const seen: number[] = [];
    for (let n; (n = await s.nextRows(out)) > 0; ) {
      sizes.push(n);
      for (let r = 0; r < n; r++) seen.push(out[r * set.meta.d]);
    }
    expect(sizes).toEqual([300, 300, 300, set.rows - 900]);
    expect(new Set(seen).size).toBe(set.rows);
    expect(s.rowsServed).toBe(set.rows);
    expect(await s.nextRows(out)).toBe(0);
  });

  it('refuses to resume with a different seed or window', async () => {
    const ref = new BatchStream(set, { batchSize: 48, windowRows: 130, seed: 9, loop: true });
    await drain(ref, 3);
    const pos = ref.position();
    expect((await userErrorOf(() => new BatchStream(set, { batchSize: 48, windowRows: 130, seed: 8, loop: true }, pos))).message).toMatch(
      /saved with seed=9 but now seed=8/,
    );
    expect((await userErrorOf(() => new BatchStream(set, { batchSize: 48, windowRows: 140, seed: 9, loop: true }, pos))).message).toMatch(
      /shuffle window rows=130/,
    );
  });

  it('counts rows served, including those before a resume', async () => {
    const ref = new BatchStream(set, { batchSize: 48, windowRows: 130, seed: 9, loop: true });
    await drain(ref, 3);
    const resumed = new BatchStream(set, { batchSize: 48, windowRows: 130, seed: 9, loop: true }, ref.position());
    await drain(resumed, 2);
    expect(resumed.rowsServed).toBe(5 * 48);
  });

  it('rejects a window smaller than the batch', async () => {
    expect((await userErrorOf(() => new BatchStream(set, { batchSize: 64, windowRows: 32, seed: 0, loop: false }))).message).toMatch(
      /at least the batch size/,
    );
  });
});

/** Every finite binary16 value, by bit pattern, computed from the definition (not the library's table). */
function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  return e === 0 ? s * m * 2 ** -24 : s * (1024 + m) * 2 ** (e - 25);
}

/** Reference round-to-nearest-even to binary16 by search over the positive values. */
function refF16(x: number): number {
  const a = Math.abs(x);
  let lo = 0;
  let hi = 0x7bff;
  if (a >= f16Value(hi)) return Math.sign(x) * f16Value(hi); // overflow is refused by the writer
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (f16Value(mid) <= a) lo = mid;
    else hi = mid;
  }
  const dl = a - f16Value(lo);
  const dh = f16Value(hi) - a;
  const h = dl < dh ? lo : dh < dl ? hi : lo % 2 === 0 ? lo : hi;
  return (x < 0 || Object.is(x, -0) ? -1 : 1) * f16Value(h);
}

/** Reference round-to-nearest-even to bfloat16: the nearer of the two truncations. */
function refBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const t = u[0] >>> 16;
  const at = (h: number) => {
    u[0] = h << 16;
    return f[0];
  };
  const lo = at(t);
  const hi = at(t + 1);
  const dl = Math.abs(x - lo);
  const dh = Math.abs(hi - x);
  return dl < dh ? lo : dh < dl ? hi : t % 2 === 0 ? lo : hi;
}

/** Values across the ranges that matter: subnormal in float16, ties, signs, large. */
function awkwardRows(n: number, d: number): Float32Array {
  const x = new Float32Array(n * d);
  const special = [0, -0, 1, -1, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -14, 2 ** -24, 3 * 2 ** -25, 1e-7, 65504, -65519, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1e-30, 3e5];
  let s = 12345;
  for (let i = 0; i < x.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const u = s / 2 ** 32;
    x[i] = i < special.length ? special[i] : (u - 0.5) * 10 ** Math.floor(u * 1000 % 9 - 5);
  }
  return x;
}

async function duck(): Promise<{ all: (sql: string) => Promise<Record<string, unknown>[]>; close: () => void }> {
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

describe('storage dtypes', () => {
  const d = 8;
  const n = 300;

  it.each(['float16', 'bfloat16'] as const)('rounds %s to nearest even and widens to float32 on every read path', async (dtype) => {
    const dir = fresh();
    const x = awkwardRows(n, d);
    if (dtype === 'float16') for (let i = 0; i < x.length; i++) if (Math.abs(x[i]) > 65504) x[i] = 1 / x[i];
    const m = meta({ d, dtype });
    const w = await ShardWriter.create(dir, m, { rowsPerShard: 128, rowGroupRows: 50 });
    await w.append(x, n, Int32Array.from({ length: n }, (_, i) => i), Int32Array.from({ length: n }, (_, i) => i >> 3), Int32Array.from({ length: n }, (_, i) => i & 7));
    await w.close();
    const ref = Float32Array.from(x, dtype === 'float16' ? refF16 : refBf16);
    const set = await openShards(dir);
    expect(set.meta.dtype).toBe(dtype);
    const got = await allRows(set);
    expect(Buffer.from(got.buffer).equals(Buffer.from(ref.buffer))).toBe(true);
    const c = await readRows(set, 1, 3, 40);
    expect(Array.from(c.acts)).toEqual(Array.from(ref.subarray((128 + 3) * d, (128 + 40) * d)));
    expect(Array.from(c.tokenIds)).toEqual(Array.from({ length: 37 }, (_, i) => 131 + i));
    const s = new BatchStream(set, { batchSize: n, seed: 1, loop: false });
    const out = new Float32Array(n * d);
    expect(await s.next(out)).toBe(true);
    const byFirst = (a: Float32Array) => Array.from({ length: n }, (_, r) => Array.from(a.subarray(r * d, r * d + d)).join(',')).sort();
    expect(byFirst(out)).toEqual(byFirst(ref));
  });

  it('preprocesses in float32 before rounding and keeps raw_mean/raw_norm in float32', async () => {
    const raw = awkwardRows(64, d).map((v) => Math.max(-1e3, Math.min(1e3, v)));
    for (const dtype of ['float16', 'bfloat16'] as const) {
      const dir = fresh();
      const w = await ShardWriter.create(dir, meta({ d, dtype, preprocessing: 'center_unit_norm' }), { preprocess: true });
      await w.append(raw.slice(), 64);
      await w.close();
      const want = raw.slice();
      const mean = new Float32Array(64);
      const norm = new Float32Array(64);
      preprocessRows(want, 64, d, 'center_unit_norm', undefined, mean, norm);
      const c = await readRows(await openShards(dir), 0, 0, 64);
      expect(Array.from(c.acts)).toEqual(Array.from(want, dtype === 'float16' ? refF16 : refBf16));
      expect(Array.from(c.rawMean!)).toEqual(Array.from(mean));
      expect(Array.from(c.rawNorm!)).toEqual(Array.from(norm));
    }
  });

  it('refuses values that would overflow float16, judged after dataset_scale', async () => {
    const w = await ShardWriter.create(fresh(), meta({ d: 2, dtype: 'float16' }));
    expect((await userErrorOf(w.append(new Float32Array([1, 65520]), 1))).message).toBe('row 0: activation value 65520 is out of range for float16 (largest 65504)');
    await w.append(new Float32Array([1, 65519]), 1); // rounds down to 65504
    const s = await ShardWriter.create(fresh(), meta({ d: 2, dtype: 'float16', preprocessing: 'dataset_scale', scale: 4 }), { preprocess: true });
    expect((await userErrorOf(s.append(new Float32Array([1, 20000]), 1))).message).toMatch(/value 80000 is out of range for float16/);
    expect((await userErrorOf(() => kvToMeta(metaToKv(meta()).map((e) => (e.key === 'sae.dtype' ? { ...e, value: 'int8' } : e)), 'f'))).message).toMatch(
      /unsupported dtype "int8" \(one of float32, float16, bfloat16\)/,
    );
  });

  it('refuses a shard whose column does not match its sae.dtype', async () => {
    const dir = fresh();
    await fs.mkdir(dir);
    const m = meta({ dtype: 'float16' });
    const buf = parquetWriteBuffer({
      schema: shardSchema(meta()),
      columnData: [
        { name: 'activation', data: [[1, 2, 3, 4]] },
        { name: 'token_id', data: new Int32Array(1) },
        { name: 'context_id', data: new Int32Array(1) },
        { name: 'position', data: new Int32Array(1) },
      ],
      kvMetadata: metaToKv(m),
    });
    await fs.writeFile(path.join(dir, 'x.parquet'), new Uint8Array(buf));
    expect((await userErrorOf(openShards(path.join(dir, 'x.parquet')))).message).toMatch(/no activation column of type list<float16> \(the metadata says sae\.dtype=float16\)/);
  });

  it('about halves the file size', async () => {
    const size: Record<string, number> = {};
    for (const dtype of ['float32', 'float16', 'bfloat16'] as const) {
      const dir = fresh();
      const w = await ShardWriter.create(dir, meta({ d: 256, dtype, preprocessing: 'center_unit_norm' }), { preprocess: true });
      await w.append(awkwardRows(512, 256).map((v) => Math.max(-1e3, Math.min(1e3, v))), 512);
      await w.close();
      size[dtype] = (await fs.stat(path.join(dir, 'shard-00000.parquet'))).size;
    }
    for (const dtype of ['float16', 'bfloat16']) {
      expect(size[dtype] / size.float32).toBeGreaterThan(0.5);
      expect(size[dtype] / size.float32).toBeLessThan(0.56);
    }
  });

  it('is read by DuckDB: float32 and float16 as FLOAT[], bfloat16 as BLOB[] decodable in SQL', async () => {
    const db = await duck();
    try {
      const x = awkwardRows(40, d).map((v) => Math.max(-1e3, Math.min(1e3, v)));
      for (const dtype of ['float32', 'float16', 'bfloat16'] as const) {
        const dir = fresh();
        const w = await ShardWriter.create(dir, meta({ d, dtype, preprocessing: 'center_unit_norm' }), { preprocess: true });
        await w.append(x.slice(), 40, Int32Array.from({ length: 40 }, (_, i) => 7 * i));
        await w.close();
        const file = path.join(dir, 'shard-00000.parquet');
        const ours = await readRows(await openShards(dir), 0, 0, 40);
        const schema = await db.all(`DESCRIBE SELECT * FROM read_parquet('${file}')`);
        expect(Object.fromEntries(schema.map((r) => [r.column_name, r.column_type]))).toEqual({
          activation: dtype === 'bfloat16' ? 'BLOB[]' : 'FLOAT[]',
          token_id: 'INTEGER',
          context_id: 'INTEGER',
          position: 'INTEGER',
          raw_mean: 'FLOAT',
          raw_norm: 'FLOAT',
        });
        let rowsSql = `SELECT activation, token_id, raw_mean, raw_norm FROM read_parquet('${file}')`;
        if (dtype === 'bfloat16') {
          // The README's recipe: bytes little-endian → u16 → sign, exponent, mantissa.
          await db.all(`CREATE OR REPLACE MACRO bf16_bits(b) AS ('0x' || substr(hex(b), 3, 2) || substr(hex(b), 1, 2))::INTEGER`);
          await db.all(
            `CREATE OR REPLACE MACRO bf16_value(u) AS CAST((CASE WHEN u >> 15 = 1 THEN -1 ELSE 1 END) * CASE WHEN (u >> 7) & 255 = 0 THEN (u & 127) * 2.0 ^ -133 ELSE (128 + (u & 127)) * 2.0 ^ (((u >> 7) & 255) - 134) END AS FLOAT)`,
          );
          rowsSql = `SELECT list_transform(activation, b -> bf16_value(bf16_bits(b))) AS activation, token_id, raw_mean, raw_norm FROM read_parquet('${file}')`;
        }
        const got = await db.all(rowsSql);
        expect(got.length).toBe(40);
        expect(got.flatMap((r) => r.activation as number[])).toEqual(Array.from(ours.acts));
        expect(got.map((r) => r.token_id)).toEqual(Array.from(ours.tokenIds));
        expect(got.map((r) => r.raw_mean)).toEqual(Array.from(ours.rawMean!));
        expect(got.map((r) => r.raw_norm)).toEqual(Array.from(ours.rawNorm!));
      }
    } finally {
      db.close();
    }
  });
});

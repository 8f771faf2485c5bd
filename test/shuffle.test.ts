import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardWriter } from '../src/store/shard-writer.js';
import type { ShardMeta } from '../src/store/shard-format.js';
import { openShards } from '../src/store/shard-set.js';
import { readChunks } from '../src/store/row-reader.js';
import { shuffleShards, ShuffleStopped, WORK_DIR, type ShuffleOptions } from '../src/pipeline/shuffle/shuffle.js';
import { BucketSampler, parseBytes, planShuffle, recordLayout } from '../src/pipeline/shuffle/plan.js';
import { Rng } from '../src/util/rng.js';
import { UserError } from '../src/util/errors.js';

const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
let root: string;
let counter = 0;
const fresh = () => path.join(root, `d${counter++}`);

const D = 6;
const N = 1000;
const IN_SHARD = 150;
// 44-byte records (6 floats, 3 ints, mean, norm): 10000 bytes make 5 buckets of 200 rows.
const MEMORY = 10000;

function meta(over: Partial<ShardMeta> = {}): ShardMeta {
  return {
    model: 'gpt2',
    revision: 'main',
    hook: 'blocks.6.hook_resid_pre',
    d: D,
    ctx: 64,
    dtype: 'float32',
    preprocessing: 'center_unit_norm',
    tokenizer: 'gpt2',
    dataset: 'test[0:1000]',
    extras: { note: 'kept' },
    ...over,
  };
}

/** Rows that differ in every column; token_id is the input row index, so origin is traceable. */
async function writeInput(dir: string, m: ShardMeta = meta(), n = N, rowsPerShard = IN_SHARD): Promise<void> {
  const w = await ShardWriter.create(dir, m, { rowsPerShard, rowGroupRows: 64, preprocess: true });
  const x = new Float32Array(n * m.d);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37) * (1 + (i % 7)) + Math.floor(i / m.d) * 0.01;
  const tok = Int32Array.from({ length: n }, (_, i) => i);
  const ctx = Int32Array.from({ length: n }, (_, i) => Math.floor(i / 64));
  const pos = Int32Array.from({ length: n }, (_, i) => i % 64);
  await w.append(x, n, tok, ctx, pos);
  await w.close();
}

/** Every row with every column, as strings, in file order. */
async function rowsOf(dir: string): Promise<string[]> {
  const set = await openShards(dir);
  const out: string[] = [];
  for await (const c of readChunks(set)) {
    for (let r = 0; r < c.n; r++) {
      const act = Array.from(c.acts.subarray(r * set.meta.d, (r + 1) * set.meta.d));
      out.push([c.tokenIds[r], c.contextIds[r], c.positions[r], c.rawMean?.[r], c.rawNorm?.[r], ...act].join(','));
    }
  }
  return out;
}

async function filesOf(dir: string): Promise<Map<string, Buffer>> {
  const m = new Map<string, Buffer>();
  for (const n of (await fs.readdir(dir)).sort()) m.set(n, await fs.readFile(path.join(dir, n)));
  return m;
}

function expectSameFiles(a: Map<string, Buffer>, b: Map<string, Buffer>): void {
  expect([...b.keys()]).toEqual([...a.keys()]);
  for (const [k, v] of a) expect(b.get(k)!.equals(v), k).toBe(true);
}

async function userErrorOf(p: Promise<unknown>): Promise<UserError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).not.toContain('\n');
  return err as UserError;
}

let input: string;
let reference: string;
let refFiles: Map<string, Buffer>;
const base = (out: string, over: Partial<ShuffleOptions> = {}): ShuffleOptions => ({ data: input, out, memory: MEMORY, seed: 5, shardRows: 128, ...over });

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-shuffle-'));
  input = path.join(root, 'input');
  await writeInput(input);
  reference = path.join(root, 'reference');
  await shuffleShards(base(reference));
  refFiles = await filesOf(reference);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('shuffle plan', () => {
  it('chooses fixed bucket sizes that fit the budget, with write buffers inside it too', () => {
    const L = recordLayout(D, 'float32', true);
    expect(L.bytes).toBe(44);
    const p = planShuffle(N, L, MEMORY);
    expect(p.buckets).toBe(5);
    expect(p.bucketRows).toEqual([200, 200, 200, 200, 200]);
    expect(p.capacity * (L.bytes + 4)).toBeLessThanOrEqual(MEMORY);
    expect(p.buckets * p.scatterRows * L.bytes).toBeLessThanOrEqual(MEMORY);
    expect(p.arenaBytes).toBeLessThanOrEqual(MEMORY);
    const q = planShuffle(1001, L, MEMORY);
    expect(q.bucketRows.reduce((a, b) => a + b, 0)).toBe(1001);
    expect(Math.max(...q.bucketRows) - Math.min(...q.bucketRows)).toBeLessThanOrEqual(1);
    // 16-bit rows take half the room: bf16 d=6 pads 12 bytes of activation to 12.
    expect(recordLayout(7, 'float16', false).bytes).toBe(16 + 12);
    expect(() => planShuffle(N, L, 500)).toThrow(/--memory 500B is too small to shuffle 1000 rows of 44 bytes; it needs at least /);
  });

  it('deals rows into buckets exactly to their sizes, uniformly', () => {
    const s = new BucketSampler([3, 0, 5, 2]);
    const rng = new Rng(1);
    const got = [0, 0, 0, 0];
    for (let i = 0; i < 10; i++) got[s.draw(rng)]++;
    expect(got).toEqual([3, 0, 5, 2]);
    expect(() => s.draw(rng)).toThrow(/full/);
    // The first draw lands in bucket b with probability room_b / total.
    const hits = [0, 0, 0];
    for (let t = 0; t < 30000; t++) hits[new BucketSampler([1, 2, 3]).draw(rng)]++;
    hits.forEach((h, b) => expect(h / 30000).toBeCloseTo((b + 1) / 6, 1));
  });

  it('parses memory sizes', () => {
    expect(parseBytes('2GB')).toBe(2 * 2 ** 30);
    expect(parseBytes('512m')).toBe(512 * 2 ** 20);
    expect(parseBytes('1.5GiB')).toBe(1.5 * 2 ** 30);
    expect(parseBytes('65536')).toBe(65536);
    expect(parseBytes('lots')).toBeNull();
    expect(parseBytes('0')).toBeNull();
  });
});

describe('sae shuffle (library)', () => {
  it('writes a permutation of the input: every row with all its columns, once', async () => {
    const a = await rowsOf(input);
    const b = await rowsOf(reference);
    expect(b.length).toBe(N);
    expect([...b].sort()).toEqual([...a].sort());
    expect(b).not.toEqual(a);
    const set = await openShards(reference);
    expect(set.files.map((f) => f.rows)).toEqual([128, 128, 128, 128, 128, 128, 128, 104]);
    expect((await fs.readdir(reference)).includes(WORK_DIR)).toBe(false);
  });

  it('keeps the metadata and records the shuffle', async () => {
    const set = await openShards(reference);
    const m = meta();
    expect(set.meta).toEqual({
      ...m,
      extras: { note: 'kept', 'shuffle.seed': '5', 'shuffle.source': path.resolve(input), 'shuffle.rows': '1000', 'shuffle.buckets': '5' },
    });
  });

  it('is deterministic for a seed and different for another', async () => {
    const again = fresh();
    const s = await shuffleShards(base(again));
    expect(s.resumed).toBe(false);
    expectSameFiles(refFiles, await filesOf(again));
    const other = fresh();
    await shuffleShards(base(other, { seed: 6 }));
    const a = await rowsOf(reference);
    const b = await rowsOf(other);
    expect(b).not.toEqual(a);
    expect([...b].sort()).toEqual([...a].sort());
  });

  it('mixes: the first output shard draws from every input shard, spread over the whole input', async () => {
    const set = await openShards(reference);
    const first = (await rowsOf(reference)).slice(0, set.files[0].rows).map((r) => Number(r.split(',')[0]));
    const from = new Set(first.map((t) => Math.floor(t / IN_SHARD)));
    expect(from.size).toBe(Math.ceil(N / IN_SHARD));
    // Mean input index of the first 128 output rows is near the middle, not near the start.
    const mean = first.reduce((x, y) => x + y, 0) / first.length;
    expect(Math.abs(mean - N / 2)).toBeLessThan(120);
  });

  it('keeps memory within the budget: K buckets, buffers sized from --memory', async () => {
    const out = fresh();
    const s = await shuffleShards(base(out));
    expect(s.buckets).toBe(5);
    expect(s.bucketCapacity).toBe(200);
    expect(s.arenaBytes).toBeLessThanOrEqual(MEMORY);
    // Stopped mid-deal: the scratch holds exactly K bucket files and the journal.
    const cut = fresh();
    await expect(shuffleShards(base(cut, { stopAfter: { dealtRows: 500 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    const work = (await fs.readdir(path.join(cut, WORK_DIR))).sort();
    expect(work).toEqual(['bucket-00000.bin', 'bucket-00001.bin', 'bucket-00002.bin', 'bucket-00003.bin', 'bucket-00004.bin', 'journal.json']);
    // A larger budget: fewer buckets.
    expect((await shuffleShards(base(fresh(), { memory: 1 << 20 }))).buckets).toBe(1);
  });

  it('resumes after an interruption in either pass with byte-identical shards', async () => {
    for (const stop of [{ dealtRows: 1 }, { dealtRows: 420 }, { dealtRows: 999 }, { outputShards: 1 }, { outputShards: 3 }]) {
      const out = fresh();
      await expect(shuffleShards(base(out, { stopAfter: stop }))).rejects.toBeInstanceOf(ShuffleStopped);
      expect((await fs.readdir(out)).includes('manifest.json')).toBe(false);
      // A killed writer would leave its shard in progress behind.
      await fs.writeFile(path.join(out, '.shard-00007.parquet.tmp-99999'), 'partial');
      const s = await shuffleShards(base(out));
      expect(s.resumed, JSON.stringify(stop)).toBe(true);
      expectSameFiles(refFiles, await filesOf(out));
    }
  });

  it('cuts bucket files back to the journal when rows were written after the last checkpoint', async () => {
    const one = fresh();
    await writeInput(one, meta(), N, N); // one input file: no checkpoint until it is dealt
    const ref = fresh();
    await shuffleShards(base(ref, { data: one }));
    const out = fresh();
    await expect(shuffleShards(base(out, { data: one, stopAfter: { dealtRows: 700 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    const journal = JSON.parse(await fs.readFile(path.join(out, WORK_DIR, 'journal.json'), 'utf8'));
    expect(journal.bucketFill).toEqual([0, 0, 0, 0, 0]);
    const sizes = await Promise.all([0, 1, 2, 3, 4].map(async (b) => (await fs.stat(path.join(out, WORK_DIR, `bucket-0000${b}.bin`))).size));
    expect(Math.min(...sizes)).toBeGreaterThan(0);
    await shuffleShards(base(out, { data: one }));
    expectSameFiles(await filesOf(ref), await filesOf(out));
  });

  it('resumes through several interruptions, also when the rerun passes --force', async () => {
    const out = fresh();
    await expect(shuffleShards(base(out, { stopAfter: { dealtRows: 300 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    await expect(shuffleShards(base(out, { stopAfter: { dealtRows: 400 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    await expect(shuffleShards(base(out, { force: true, stopAfter: { outputShards: 2 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    await expect(shuffleShards(base(out, { stopAfter: { outputShards: 2 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    expect((await shuffleShards(base(out, { force: true }))).resumed).toBe(true);
    expectSameFiles(refFiles, await filesOf(out));
  });

  it('keeps the storage dtype: float16 in, float16 out, values unchanged', async () => {
    const inp = fresh();
    await writeInput(inp, meta({ dtype: 'float16' }), 300, 100);
    const out = fresh();
    await shuffleShards({ data: inp, out, memory: 4000, seed: 1, shardRows: 100 });
    const set = await openShards(out);
    expect(set.meta.dtype).toBe('float16');
    expect([...(await rowsOf(out))].sort()).toEqual([...(await rowsOf(inp))].sort());
    const sizeIn = (await fs.stat(path.join(inp, 'shard-00000.parquet'))).size;
    const sizeOut = (await fs.stat(path.join(out, 'shard-00000.parquet'))).size;
    expect(Math.abs(sizeOut - sizeIn) / sizeIn).toBeLessThan(0.05);
  });

  it('refuses bad input and output with one-line errors', async () => {
    expect((await userErrorOf(shuffleShards(base(fresh(), { data: path.join(root, 'nope') })))).message).toMatch(/nope: no such file or directory/);
    const incomplete = fresh();
    await writeInput(incomplete, meta(), 200, 100);
    await fs.rm(path.join(incomplete, 'manifest.json'));
    expect((await userErrorOf(shuffleShards(base(fresh(), { data: incomplete })))).message).toMatch(/incomplete shard folder: no manifest\.json/);
    const file = path.join(root, 'a-file');
    await fs.writeFile(file, 'x');
    expect((await userErrorOf(shuffleShards(base(file)))).message).toMatch(/--out .*a-file is an existing file, not a directory/);
    expect((await userErrorOf(shuffleShards(base(input)))).message).toMatch(/is the input folder/);
    const tight = fresh();
    const msg = (await userErrorOf(shuffleShards(base(tight, { statfs: async () => ({ bavail: 10, bsize: 4096 }) })))).message;
    expect(msg).toMatch(/^not enough disk space for the shuffle in .*: it needs .* more \(scratch 43KB \+ output .*\) but 40KB is free$/);
    expect((await userErrorOf(shuffleShards(base(reference)))).message).toMatch(/already holds this shuffle, complete \(1000 rows in 8 shards\); --force to redo it$/);
    expect((await userErrorOf(shuffleShards(base(fresh(), { memory: 100 })))).message).toMatch(/--memory 100B is too small/);
  });

  it('refuses to resume with other settings unless --force, which starts over and removes only its own files', async () => {
    const out = fresh();
    await expect(shuffleShards(base(out, { stopAfter: { outputShards: 1 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    expect((await userErrorOf(shuffleShards(base(out, { seed: 9 })))).message).toMatch(/holds an unfinished shuffle with other settings \(--seed 5, now 9\); rerun that command to finish it, or add --force/);
    expect((await userErrorOf(shuffleShards(base(out, { memory: 20000 })))).message).toMatch(/--memory 9\.77KB, now 19\.5KB/);
    await fs.writeFile(path.join(out, 'notes.txt'), 'mine');
    const s = await shuffleShards(base(out, { seed: 6, force: true }));
    expect(s.resumed).toBe(false);
    expect(await fs.readFile(path.join(out, 'notes.txt'), 'utf8')).toBe('mine');
    const other = fresh();
    await shuffleShards(base(other, { seed: 6 }));
    const want = await filesOf(other);
    const got = await filesOf(out);
    got.delete('notes.txt');
    expectSameFiles(want, got);
  });
});

describe('unreadable input', () => {
  it('removes its scratch and the folder it created when an input row is NaN (a rerun cannot get past it)', async () => {
    const bad = fresh();
    const m = meta({ preprocessing: 'none' });
    const w = await ShardWriter.create(bad, m, { rowsPerShard: 400, rowGroupRows: 64 });
    const x = Float32Array.from({ length: 1000 * m.d }, (_, i) => i % 97);
    x[700 * m.d + 2] = 12345.5; // a value found only once in the bytes
    await w.append(x, 1000);
    await w.close();
    const f = path.join(bad, 'shard-00001.parquet');
    const bytes = await fs.readFile(f);
    const at = bytes.indexOf(Buffer.from(new Float32Array([12345.5]).buffer));
    expect(at).toBeGreaterThan(0);
    Buffer.from(new Float32Array([NaN]).buffer).copy(bytes, at);
    await fs.writeFile(f, bytes);
    const out = fresh();
    expect((await userErrorOf(shuffleShards(base(out, { data: bad })))).message).toMatch(/shard-00001\.parquet row 300: activation contains NaN/);
    await expect(fs.stat(out)).rejects.toThrow();
    // into a folder of the user's: the scratch goes, the folder and its files stay
    const mine = fresh();
    await fs.mkdir(mine);
    await fs.writeFile(path.join(mine, 'notes.txt'), 'mine');
    await userErrorOf(shuffleShards(base(mine, { data: bad })));
    expect(await fs.readdir(mine)).toEqual(['notes.txt']);
  });

  it('rejects a negative --seed as sae train does', async () => {
    const out = fresh();
    expect((await userErrorOf(shuffleShards(base(out, { seed: -1 })))).message).toBe('--seed must be ≥ 0, got -1');
    await expect(fs.stat(out)).rejects.toThrow();
  });
});

describe('sae shuffle (CLI)', () => {
  const sae = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });

  it('prints the output folder, states the disk it needs, and matches the library byte for byte', () => {
    const out = fresh();
    const r = sae('shuffle', '--data', input, '--out', out, '--memory', String(MEMORY), '--seed', '5', '--shard-rows', '128');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(out + '\n');
    expect(r.stderr).toMatch(/5 buckets of ≤200 rows .*disk: scratch 43KB, output ≈.*, peak ≈.*free/);
    return filesOf(out).then((f) => expectSameFiles(refFiles, f));
  });

  it('prints nothing on stderr with --quiet, only the output folder on stdout', () => {
    const out = fresh();
    const r = sae('shuffle', '--data', input, '--out', out, '--memory', String(MEMORY), '--seed', '5', '--shard-rows', '128', '--quiet');
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(out + '\n');
  });

  it('one-line errors for a bad --memory and an --out that is a file', async () => {
    const r = sae('shuffle', '--data', input, '--out', fresh(), '--memory', 'lots');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toBe('sae: error: --memory must be a size such as 512MB or 2GB, got "lots"\n');
    const file = path.join(root, 'cli-file');
    await fs.writeFile(file, 'x');
    const f = sae('shuffle', '--data', input, '--out', file);
    expect(f.stderr.trim().split('\n')).toHaveLength(1);
    expect(f.stderr).toMatch(/^sae: error: --out .* is an existing file/);
  });

  it('killed mid-run, the same command finishes with the same bytes', async () => {
    const big = fresh();
    await writeInput(big, meta({ d: 32 }), 24000, 1000);
    const args = ['shuffle', '--data', big, '--memory', '400KB', '--seed', '2', '--shard-rows', '1000'];
    const ref = fresh();
    expect(sae(...args, '--out', ref).status).toBe(0);
    const out = fresh();
    const child = spawn(process.execPath, [bin, ...args, '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (b: Buffer) => {
        err += b.toString();
        if (/dealt shard-00003/.test(err) && !child.killed) child.kill('SIGKILL');
      });
      child.on('close', (c) => resolve(c));
    });
    expect(code).toBeNull();
    expect((await fs.readdir(out)).includes('manifest.json')).toBe(false);
    const r = sae(...args, '--out', out);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/resuming/);
    expectSameFiles(await filesOf(ref), await filesOf(out));
  });
});

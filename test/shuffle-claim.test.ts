import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardWriter } from '../src/store/shard-writer.js';
import type { ShardMeta } from '../src/store/shard-format.js';
import { shuffleShards, ShuffleStopped, WORK_DIR, type ShuffleOptions } from '../src/pipeline/shuffle/shuffle.js';
import { writeSynth } from '../src/pipeline/synth.js';
import { LOCK_FILE, lockOutDir } from '../src/util/lock.js';
import { UserError } from '../src/util/errors.js';

// Issue 16: what a shuffle's --out may hold (its own finished or half-removed output, scratch of a
// run killed at its first or last step, another command's data, a lock), and Ctrl-C.
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
let root: string;
let counter = 0;
const fresh = () => path.join(root, `d${counter++}`);

const D = 6;
const N = 1000;
// 44-byte records: 10000 bytes make 5 buckets of 200 rows; 128-row shards make 8 output shards.
const MEMORY = 10000;
const meta: ShardMeta = {
  model: 'gpt2',
  revision: 'main',
  hook: 'blocks.6.hook_resid_pre',
  d: D,
  ctx: 64,
  dtype: 'float32',
  preprocessing: 'center_unit_norm',
  tokenizer: 'gpt2',
  dataset: 'test[0:1000]',
  extras: {},
};

async function writeInput(dir: string): Promise<void> {
  const w = await ShardWriter.create(dir, meta, { rowsPerShard: 150, rowGroupRows: 64, preprocess: true });
  const x = Float32Array.from({ length: N * D }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)));
  await w.append(x, N, Int32Array.from({ length: N }, (_, i) => i), new Int32Array(N), new Int32Array(N));
  await w.close();
}

async function filesOf(dir: string): Promise<Map<string, Buffer>> {
  const m = new Map<string, Buffer>();
  for (const n of (await fs.readdir(dir)).sort()) {
    const p = path.join(dir, n);
    if ((await fs.stat(p)).isFile()) m.set(n, await fs.readFile(p));
    else m.set(n + '/', Buffer.alloc(0));
  }
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
const args = (out: string, ...more: string[]) => ['shuffle', '--data', input, '--out', out, '--memory', String(MEMORY), '--seed', '5', '--shard-rows', '128', ...more];
const sae = (...a: string[]) => spawnSync(process.execPath, [bin, ...a], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });

function expectOneLineError(r: ReturnType<typeof sae>, code: number, pattern: RegExp): void {
  expect(r.status).toBe(code);
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('sae: error:'));
  expect(errors).toHaveLength(1);
  expect(errors[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

/** The shard lines and end line a --ndjson run printed. */
function announced(stdout: string): { shards: string[]; end: { shards: number; rows: number } } {
  const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const end = lines.pop()!;
  expect(end.end).toBe(true);
  return { shards: lines.map((l) => path.basename(l.shard as string)), end: { shards: end.shards as number, rows: end.rows as number } };
}
const ALL_SHARDS = Array.from({ length: 8 }, (_, i) => `shard-0000${i}.parquet`);

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-shuffle-claim-'));
  input = path.join(root, 'input');
  await writeInput(input);
  reference = path.join(root, 'reference');
  await shuffleShards(base(reference));
  refFiles = await filesOf(reference);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('a finished shuffle', () => {
  it("rerun, says the folder already holds this shuffle, complete, with exit 2 as harvest's rerun does", async () => {
    const out = fresh();
    await shuffleShards(base(out));
    const r = sae(...args(out));
    expectOneLineError(r, 2, /^sae: error: .* already holds this shuffle, complete \(1000 rows in 8 shards\); --force to redo it$/);
    expectSameFiles(refFiles, await filesOf(out));
  });

  it('rerun with other settings, names them as another shuffle', async () => {
    const out = fresh();
    await shuffleShards(base(out));
    const msg = (await userErrorOf(shuffleShards(base(out, { seed: 6 })))).message;
    expect(msg).toMatch(/ holds another shuffle \(--seed 5 there, 6 here\); choose another --out, or --force to replace it$/);
    expectSameFiles(refFiles, await filesOf(out));
  });
});

describe("--force replaces only a shuffle's output", () => {
  it("refuses a harvest's folder, naming it, and removes nothing (its journal keeps its data)", async () => {
    const out = fresh();
    await writeInput(out);
    await fs.writeFile(path.join(out, 'harvest.json'), JSON.stringify({ format: 'sae-harvest/1', config: {}, shards: 7, rows: N, cursor: null, complete: true }));
    const before = await filesOf(out);
    const msg = (await userErrorOf(shuffleShards(base(out, { force: true })))).message;
    expect(msg).toMatch(/ holds a harvest \(harvest\.json\), which only sae harvest --force may replace; choose another --out$/);
    expectSameFiles(before, await filesOf(out));
  });

  it("refuses a synth's folder, naming it, and removes nothing", async () => {
    const out = fresh();
    await writeSynth({ out, d: 8, fTrue: 16, kTrue: 2, rows: 300, rowsPerShard: 100, seed: 1 });
    const before = await filesOf(out);
    const msg = (await userErrorOf(shuffleShards(base(out, { force: true })))).message;
    expect(msg).toMatch(/ holds synthetic activations from sae synth \(synth\.json\), which only sae synth --force may replace; choose another --out$/);
    expectSameFiles(before, await filesOf(out));
  });

  it('refuses activation shards that no shuffle wrote (no shuffle metadata), and removes nothing', async () => {
    const out = fresh();
    await writeInput(out);
    const before = await filesOf(out);
    const msg = (await userErrorOf(shuffleShards(base(out, { force: true })))).message;
    expect(msg).toMatch(/holds activation shards not written by sae shuffle \(manifest\.json: gpt2 blocks\.6\.hook_resid_pre\)/);
    expectSameFiles(before, await filesOf(out));
  });
});

describe('a shuffle killed at its first or last step continues on rerun', () => {
  it('an empty shuffle-work (killed before its first journal) is its own scratch: the rerun starts over in it', async () => {
    const out = fresh();
    await fs.mkdir(path.join(out, WORK_DIR), { recursive: true });
    const r = sae(...args(out));
    expect(r.status, r.stderr).toBe(0);
    expectSameFiles(refFiles, await filesOf(out));
  });

  it('a shuffle-work holding only a half-written first journal is its own scratch too', async () => {
    const out = fresh();
    await fs.mkdir(path.join(out, WORK_DIR), { recursive: true });
    await fs.writeFile(path.join(out, WORK_DIR, '.journal.json.tmp-12345'), '{"format":"sae-shu');
    expect((await shuffleShards(base(out))).resumed).toBe(false);
    expectSameFiles(refFiles, await filesOf(out));
  });

  it('killed while removing its scratch at the end: the rerun finishes removing it and reports the shuffle complete', async () => {
    // what a kill part-way through removing shuffle-work leaves: the journal gone, a bucket left
    for (const left of [['bucket-00004.bin'], []]) {
      const out = fresh();
      await shuffleShards(base(out));
      await fs.mkdir(path.join(out, WORK_DIR));
      for (const f of left) await fs.writeFile(path.join(out, WORK_DIR, f), Buffer.alloc(44 * 200, 7));
      const r = sae(...args(out));
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toBe(out + '\n');
      expect(r.stderr).toMatch(/shuffle: 1000 rows in 8 shards/);
      expectSameFiles(refFiles, await filesOf(out));
    }
  });
});

describe('shuffle --ndjson resumed', () => {
  it('announces every shard of its set, those written before the interruption first, and its end line counts the whole set', async () => {
    const out = fresh();
    await expect(shuffleShards(base(out, { stopAfter: { outputShards: 3 } }))).rejects.toBeInstanceOf(ShuffleStopped);
    const r = sae(...args(out, '--ndjson'));
    expect(r.status, r.stderr).toBe(0);
    expect(announced(r.stdout)).toEqual({ shards: ALL_SHARDS, end: { shards: 8, rows: N } });
    expectSameFiles(refFiles, await filesOf(out));
  });

  it('announces the whole set when it only had to finish removing its scratch', async () => {
    const out = fresh();
    await shuffleShards(base(out));
    await fs.mkdir(path.join(out, WORK_DIR));
    const r = sae(...args(out, '--ndjson'));
    expect(r.status, r.stderr).toBe(0);
    expect(announced(r.stdout)).toEqual({ shards: ALL_SHARDS, end: { shards: 8, rows: N } });
  });
});

describe('Ctrl-C', () => {
  it('stops at a safe point, says how to continue and exits 130; the rerun finishes with the same bytes', async () => {
    const out = fresh();
    // the testing hook pauses after the second input file until the signal comes: no race
    const child = spawn(process.execPath, [bin, ...args(out)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0', SAE_TEST_SHUFFLE_PAUSE_AFTER_FILES: '2' } });
    let err = '';
    let stdout = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (b: Buffer) => {
        err += b.toString();
        if (/paused \(testing\)/.test(err) && !child.killed) child.kill('SIGINT');
      });
      child.on('close', (c) => resolve(c));
    });
    expect(code).toBe(130);
    expect(stdout).toBe('');
    expect(err.trim().split('\n').pop()).toMatch(/^shuffle: interrupted after dealing 300 of 1000 rows; rerun the same command to continue$/);
    expect(err).not.toMatch(/sae: error|\n\s+at /);
    expect((await fs.readdir(out)).sort()).toEqual([WORK_DIR]);
    const r = sae(...args(out));
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/resuming/);
    expectSameFiles(refFiles, await filesOf(out));
  });
});

describe('the output folder lock', () => {
  it('a second shuffle into a folder in use fails with exit 75 naming the holder, and changes nothing', async () => {
    const out = fresh();
    await fs.mkdir(out);
    const lock = await lockOutDir(out, 'sae shuffle');
    try {
      const r = sae(...args(out));
      expectOneLineError(r, 75, new RegExp(`is in use by sae shuffle \\(pid ${process.pid} on `));
      expect(await fs.readdir(out)).toEqual([LOCK_FILE]);
    } finally {
      await lock.release();
    }
  });

  it('a stale lock (its holder is gone) is taken over, and released when the shuffle ends', async () => {
    const out = fresh();
    await fs.mkdir(out);
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
    const holder = { pid: Number(dead.stdout.toString()), host: os.hostname(), since: '2026-01-01T00:00:00.000Z', procStart: null, command: 'sae shuffle', token: 'old' };
    await fs.writeFile(path.join(out, LOCK_FILE), JSON.stringify(holder));
    const r = sae(...args(out));
    expect(r.status, r.stderr).toBe(0);
    expectSameFiles(refFiles, await filesOf(out));
  });
});

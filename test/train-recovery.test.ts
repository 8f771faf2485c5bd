import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSynth } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { readSafetensors } from '../src/util/safetensors.js';
import { ShardWriter } from '../src/store/shard-writer.js';
import type { ShardMeta } from '../src/store/shard-format.js';
import { openShards } from '../src/store/shard-set.js';
import { announceEnd, announceShard, metaDigest } from '../src/stream/pipe.js';

// Kills at the moments that matter, simulated by building the folder a kill there leaves.
let root: string;
let data: string;
let whole: string;
let counter = 0;
const fresh = () => path.join(root, `r${counter++}`);
const short = { activation: 'mutual', width: 64, k: 3, batchSize: 128, steps: 40, rankInterval: 5, nfmCoef: 0.01, nfmSample: 16, logEvery: 5, checkpointEvery: 1000, deadWindow: 512 };

/** A pid that no process has: a child that has already exited. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '0']).pid!;
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-recovery-'));
  data = path.join(root, 'synth');
  await writeSynth({ out: data, d: 32, fTrue: 64, kTrue: 3, rows: 8192, seed: 1, rowsPerShard: 2048 });
  whole = (await train({ data, out: path.join(root, 'whole'), config: short })).final!;
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function sameWeights(a: string, b: string): Promise<boolean> {
  const x = (await readSafetensors(path.join(a, 'sae.safetensors'))).tensors;
  const y = (await readSafetensors(path.join(b, 'sae.safetensors'))).tensors;
  return ['W_enc', 'W_dec', 'b_enc', 'b_dec'].every((n) => {
    const u = x[n].data as Float32Array;
    const v = y[n].data as Float32Array;
    return Buffer.from(u.buffer, u.byteOffset, u.byteLength).equals(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
  });
}

async function loggedSteps(out: string): Promise<number[]> {
  const text = await fs.readFile(path.join(out, 'metrics.jsonl'), 'utf8');
  return text.trim().split('\n').map((l) => JSON.parse(l).step);
}

/** The folder of a run killed at step 10, before its first checkpoint (--checkpoint-every 1000). */
async function killedBeforeFirstCheckpoint(): Promise<string> {
  const out = fresh();
  await train({ data, out, config: short, stopAfterSteps: 10 });
  await fs.rm(path.join(out, 'checkpoint'), { recursive: true });
  expect(await fs.readdir(out)).toEqual(['metrics.jsonl']);
  return out;
}

const ALL_STEPS = [5, 10, 15, 20, 25, 30, 35, 40];

describe('a run killed before its first checkpoint', () => {
  it('its plain rerun starts from step 0, says so, and gives the weights of an uninterrupted run', async () => {
    const out = await killedBeforeFirstCheckpoint();
    const notes: string[] = [];
    const s = await train({ data, out, config: short, onNote: (m) => notes.push(m) });
    expect(notes).toContain(`${out} has no checkpoint yet: starting from step 0`);
    expect(s.steps).toBe(40);
    expect(await sameWeights(whole, s.final!)).toBe(true);
    expect(await loggedSteps(out)).toEqual(ALL_STEPS);
  });

  it('its --resume rerun starts from step 0, says so, and gives the weights of an uninterrupted run', async () => {
    const out = await killedBeforeFirstCheckpoint();
    const notes: string[] = [];
    const s = await train({ data, out, config: short, resume: out, onNote: (m) => notes.push(m) });
    expect(notes).toContain(`${out} has no checkpoint yet: starting from step 0`);
    expect(await sameWeights(whole, s.final!)).toBe(true);
    expect(await loggedSteps(out)).toEqual(ALL_STEPS);
  });

  it('--resume of the empty folder a kill right after creating it leaves starts from step 0', async () => {
    const out = fresh();
    await fs.mkdir(out);
    const s = await train({ data, out, config: short, resume: out });
    expect(await sameWeights(whole, s.final!)).toBe(true);
  });
});

/** Interrupted at step 17 with its checkpoint written. */
async function cutAt17(): Promise<string> {
  const out = fresh();
  await train({ data, out, config: short, stopAfterSteps: 17 });
  return out;
}

describe('a kill between the two renames that publish a checkpoint', () => {
  it('restores checkpoint.old-PID-TIME when checkpoint/ is missing, and the resume is bit-exact', async () => {
    const out = await cutAt17();
    await fs.rename(path.join(out, 'checkpoint'), path.join(out, `checkpoint.old-${deadPid()}-${Date.now()}`));
    const notes: string[] = [];
    const s = await train({ data, out, config: short, resume: out, onNote: (m) => notes.push(m) });
    expect(notes.some((m) => /restored the checkpoint of step 17/.test(m))).toBe(true);
    expect(await sameWeights(whole, s.final!)).toBe(true);
    expect(await loggedSteps(out)).toEqual(ALL_STEPS);
    expect((await fs.readdir(out)).sort()).toEqual(['checkpoint', 'final', 'metrics.jsonl', 'summary.json']);
  });

  it('prefers the complete new temporary checkpoint over the .old one it was replacing', async () => {
    const out = await cutAt17();
    const at17 = path.join(root, `copy${counter++}`);
    await fs.cp(path.join(out, 'checkpoint'), at17, { recursive: true });
    await train({ data, out, config: short, resume: out, stopAfterSteps: 8 });
    // publishing step 25: checkpoint(17) moved aside, the complete new one not yet renamed
    const pid = deadPid();
    await fs.rename(path.join(out, 'checkpoint'), path.join(out, `.checkpoint.tmp-${pid}-${Date.now()}`));
    await fs.rename(at17, path.join(out, `checkpoint.old-${pid}-${Date.now() - 1}`));
    let stepsRun = 0;
    const s = await train({ data, out, config: short, resume: out, onStep: () => stepsRun++ });
    expect(stepsRun).toBe(15);
    expect(await sameWeights(whole, s.final!)).toBe(true);
    expect(await loggedSteps(out)).toEqual(ALL_STEPS);
    expect((await fs.readdir(out)).filter((f) => f.includes('.old-') || f.includes('.tmp-'))).toEqual([]);
  });

  it('restores the checkpoint for a plain rerun too, which is then told to --resume rather than starting over', async () => {
    const out = await cutAt17();
    await fs.rename(path.join(out, 'checkpoint'), path.join(out, `checkpoint.old-${deadPid()}-${Date.now()}`));
    await expect(train({ data, out, config: short })).rejects.toThrow(/already holds a run \(checkpoint, metrics\.jsonl\); continue it with --resume/);
    expect(await fs.readdir(path.join(out, 'checkpoint'))).toContain('state.json');
  });
});

describe('a kill while a checkpoint is being written', () => {
  it('the resumed run removes the partial .checkpoint.tmp-* a killed writer left', async () => {
    const out = await cutAt17();
    const partial = path.join(out, `.checkpoint.tmp-${deadPid()}-${Date.now()}`);
    await fs.mkdir(partial);
    await fs.copyFile(path.join(out, 'checkpoint', 'sae.safetensors'), path.join(partial, 'sae.safetensors'));
    const s = await train({ data, out, config: short, resume: out });
    await expect(fs.stat(partial)).rejects.toThrow();
    expect(await sameWeights(whole, s.final!)).toBe(true);
  });

  it('a rerun removes the partial .checkpoint.tmp-* of a run killed during its first checkpoint, and starts from step 0', async () => {
    const out = await killedBeforeFirstCheckpoint();
    const partial = path.join(out, `.checkpoint.tmp-${deadPid()}-${Date.now()}`);
    await fs.mkdir(partial);
    await fs.writeFile(path.join(partial, 'sae.safetensors'), 'cut');
    const s = await train({ data, out, config: short });
    await expect(fs.stat(partial)).rejects.toThrow();
    expect(await sameWeights(whole, s.final!)).toBe(true);
  });

  it('leaves a temporary checkpoint alone while the process that writes it is alive', async () => {
    const out = await cutAt17();
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
    try {
      const partial = path.join(out, `.checkpoint.tmp-${child.pid}-${Date.now()}`);
      await fs.mkdir(partial);
      await fs.writeFile(path.join(partial, 'sae.safetensors'), 'being written');
      await train({ data, out, config: short, resume: out });
      expect(await fs.readFile(path.join(partial, 'sae.safetensors'), 'utf8')).toBe('being written');
    } finally {
      child.kill();
    }
  });
});

const nanMeta: ShardMeta = { model: 'synthetic', revision: '', hook: 'synthetic', d: 8, ctx: 1, dtype: 'float32', preprocessing: 'none', tokenizer: '', dataset: 'nan-test' };

/** 1000 rows in shards of 400, row 700 (shard 1, row 300) holding a NaN. */
async function nanShards(): Promise<string> {
  const dir = fresh();
  const w = await ShardWriter.create(dir, nanMeta, { rowsPerShard: 400, rowGroupRows: 64 });
  const x = Float32Array.from({ length: 1000 * nanMeta.d }, (_, i) => Math.sin(i) + (i % 5));
  x[700 * nanMeta.d + 2] = 12345.5; // a value found only once in the bytes
  await w.append(x, 1000);
  await w.close();
  const f = path.join(dir, 'shard-00001.parquet');
  const bytes = await fs.readFile(f);
  const at = bytes.indexOf(Buffer.from(new Float32Array([12345.5]).buffer));
  expect(at).toBeGreaterThan(0);
  Buffer.from(new Float32Array([NaN]).buffer).copy(bytes, at);
  await fs.writeFile(f, bytes);
  return dir;
}

// a window of one batch reads shard 1 only after a few logged steps: the failure comes mid-run
const nanRun = { activation: 'topk', width: 16, k: 2, batchSize: 100, steps: 30, shuffleWindow: 100, logEvery: 1, checkpointEvery: 1000, deadWindow: 100 };

describe('a run that fails early', () => {
  it('on a NaN shard, removes the folder it created (and the parents it created)', async () => {
    const bad = await nanShards();
    const top = fresh();
    const out = path.join(top, 'runs', 'x');
    await expect(train({ data: bad, out, config: nanRun })).rejects.toThrow(/shard-00001\.parquet row 300: activation contains NaN/);
    await expect(fs.stat(top)).rejects.toThrow();
  });

  it('on a NaN shard, in a folder of the user’s, leaves the folder as it was and its rerun is accepted', async () => {
    const bad = await nanShards();
    const out = fresh();
    await fs.mkdir(out);
    await fs.writeFile(path.join(out, 'notes.txt'), 'mine');
    await expect(train({ data: bad, out, config: nanRun })).rejects.toThrow(/activation contains NaN/);
    expect(await fs.readdir(out)).toEqual(['notes.txt']);
    const s = await train({ data, out, config: short });
    expect(await sameWeights(whole, s.final!)).toBe(true);
  });

  it('fed by a pipe that ends without its end line, leaves no folder, and its rerun runs', async () => {
    const set = await openShards(data);
    const lines = set.files.map((f) => announceShard({ shard: f.path, rows: f.rows, metadata: metaDigest(set.meta) }));
    expect(lines.length).toBeGreaterThan(1);
    const out = fresh();
    await expect(train({ data: '-', input: Readable.from(lines.slice(0, 2)), out, config: { ...short, shuffleWindow: 128 } })).rejects.toThrow(/ended without finishing/);
    await expect(fs.stat(out)).rejects.toThrow();
    const s = await train({ data: '-', input: Readable.from([...lines, announceEnd(lines.length, set.rows)]), out, config: { ...short, shuffleWindow: 128 } });
    expect(s.steps).toBe(40);
  });

  it('fed by a pipe that mixes shard sets, leaves no folder', async () => {
    const set = await openShards(data);
    const other = await openShards(await nanShards());
    const lines = [set.files[0], other.files[0]].map((f, i) => announceShard({ shard: f.path, rows: f.rows, metadata: metaDigest((i ? other : set).meta) }));
    const out = fresh();
    await expect(train({ data: '-', input: Readable.from([...lines, announceEnd(2, set.files[0].rows + other.files[0].rows)]), out, config: { ...short, shuffleWindow: 128 } })).rejects.toThrow(/metadata differs from the first shard's/);
    await expect(fs.stat(out)).rejects.toThrow();
  });
});

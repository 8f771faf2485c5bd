import { spawnSync } from 'node:child_process';
import { promises as fs, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { parquetReadObjects } from 'hyparquet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dyingFeatures } from '../src/sae/zipf.js';
import { fitZipf } from '../src/eval/zipf-fit.js';
import { FEATURE_COLUMNS } from '../src/eval/features.js';
import { saveRunEval } from '../src/eval/summary.js';
import { openShards } from '../src/store/shard-set.js';
import { kernelFactory } from '../src/kernels/index.js';

// `sae eval` as a user meets it: the compiled CLI (npm test builds dist/) on a small SAE trained on `sae synth` data.
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const F = 128;
let root: string;
let data: string;
let ckpt: string;

function sae(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectUserError(r: ReturnType<typeof sae>, pattern: RegExp) {
  expect(r.code).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^sae: error: /);
  expect(lines[0]).toMatch(pattern);
}

function evalJson(...extra: string[]) {
  const r = sae('eval', '--checkpoint', ckpt, '--data', data, '--json', ...extra);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

function parseCsv(text: string): Record<string, string>[] {
  const [head, ...rows] = text.trim().split('\n');
  const cols = head.split(',');
  return rows.map((line) => Object.fromEntries(line.split(',').map((v, i) => [cols[i], v])));
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-eval-'));
  data = path.join(root, 'synth');
  expect(sae('synth', '--out', data, '--d', '16', '--features', '32', '--k', '2', '--rows', '2048', '--seed', '3').code).toBe(0);
  const t = sae('train', '--data', data, '--out', path.join(root, 'run'), '--activation', 'mutual', '--width', String(F), '--k', '2', '--batch-size', '128', '--steps', '30', '--quiet');
  expect(t.code, t.stderr).toBe(0);
  ckpt = t.stdout.trim();
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae eval --json (schema sae-eval/1)', () => {
  it('has the documented keys with sane values', () => {
    const j = evalJson('--dictionary', data);
    expect(j).toMatchObject({ schema: 'sae-eval/1', architecture: 'mutual', d: 16, width: F, rows: 2048, neverFiredWindowTokens: 2048, featuresOut: null });
    expect(j.l0).toBeCloseTo(2, 9);
    expect(j.l0Histogram.reduce((a: number, b: number) => a + b, 0)).toBe(2048);
    expect(j.l0Histogram.reduce((a: number, n: number, i: number) => a + n * i, 0) / 2048).toBeCloseTo(j.l0, 9);
    expect(j.mse).toBeGreaterThan(0);
    expect(j.fvu).toBeGreaterThan(0);
    expect(j.fvu).toBeLessThan(1);
    expect(j.explainedVariance).toBeCloseTo(1 - j.fvu, 12);
    expect(j.neverFiredFraction).toBeGreaterThanOrEqual(0);
    expect(j.neverFiredFraction).toBeLessThan(0.5);
    // Definition 3.1: only the bottom quartile can be dying
    expect(j.dyingFraction).toBeGreaterThanOrEqual(0);
    expect(j.dyingFraction).toBeLessThanOrEqual(0.25);
    expect(j.dyingZipf).toEqual({ alpha: 1, beta: 6.8, source: 'checkpoint' });
    expect(j.densityCurve.ranks).toEqual(Array.from({ length: F }, (_, i) => i + 1));
    expect(j.densityCurve.density.reduce((a: number, b: number) => a + b, 0)).toBeCloseTo(j.l0, 9);
    expect(j.zipfFit.all.rankRange).toEqual([1, F]);
    expect(j.zipfFit.all.n + j.zipfFit.all.excludedZeros).toBe(F);
    expect(j.zipfFit.all.alpha).toBeGreaterThan(0);
    expect(j.zipfFit.ranks100to20000.rankRange).toEqual([100, F]);
    expect(j.zipfFit.betaGrid).toEqual({ from: 0, to: 100, points: 191 });
    expect(Object.keys(j.recovery).sort()).toEqual(['fractionRecovered', 'meanMaxCos', 'reverseFractionExplained', 'reverseMeanMaxCos', 'threshold']);
  });

  it('a run’s eval.json (what sae report reads) is the object `sae eval` prints for it', async () => {
    const run = path.dirname(ckpt);
    // the same kernels as the CLI's default, so that the sums agree to the last bit
    const saved = await saveRunEval(run, await openShards(data), { data, kernels: kernelFactory('auto') });
    expect(JSON.parse(await fs.readFile(path.join(run, 'eval.json'), 'utf8'))).toEqual(saved);
    const printed = evalJson();
    expect({ ...saved, checkpoint: null }).toEqual({ ...printed, checkpoint: null });
  });

  it('prints the same object with and without --json', () => {
    const plain = sae('eval', '--checkpoint', ckpt, '--data', data);
    expect(plain.code).toBe(0);
    expect(JSON.parse(plain.stdout)).toEqual(evalJson());
  });

  it('fits its Zipf curves to the densities it exports', async () => {
    const out = path.join(root, 'fit.csv');
    const j = evalJson('--features-out', out);
    const density = parseCsv(await fs.readFile(out, 'utf8')).map((r) => Number(r.density));
    expect(j.zipfFit.all).toEqual(fitZipf(density));
    expect(j.zipfFit.ranks100to20000).toEqual(fitZipf(density, 100, 20000));
  });
});

describe('sae eval --features-out', () => {
  it('writes a CSV with one row per feature and the documented columns', async () => {
    const out = path.join(root, 'features.csv');
    const j = evalJson('--features-out', out);
    expect(j.featuresOut).toBe(out);
    const text = await fs.readFile(out, 'utf8');
    expect(text.split('\n')[0]).toBe(FEATURE_COLUMNS.join(','));
    const rows = parseCsv(text);
    expect(rows).toHaveLength(F);
    expect(rows.map((r) => Number(r.feature))).toEqual(Array.from({ length: F }, (_, i) => i));
    expect(rows.map((r) => Number(r.rank)).sort((a, b) => a - b)).toEqual(Array.from({ length: F }, (_, i) => i + 1));
    const never = rows.filter((r) => r.never_fired === 'true');
    expect(never.length / F).toBe(j.neverFiredFraction);
    // a never-fired feature has no activation statistics; a fired one has mean ≤ max
    for (const r of never) expect([r.mean_activation, r.max_activation, r.density]).toEqual(['', '', '0']);
    for (const r of rows.filter((x) => x.never_fired === 'false')) expect(Number(r.mean_activation)).toBeLessThanOrEqual(Number(r.max_activation));
    // training renormalises decoder rows to unit norm
    for (const r of rows) expect(Number(r.decoder_norm)).toBeCloseTo(1, 5);
  });

  it('writes Parquet with one row per feature that hyparquet and DuckDB read', async () => {
    const out = path.join(root, 'features.parquet');
    evalJson('--features-out', out);
    const bytes = await fs.readFile(out);
    const rows = await parquetReadObjects({ file: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer });
    expect(rows).toHaveLength(F);
    expect(Object.keys(rows[0])).toEqual([...FEATURE_COLUMNS]);
    const db = await (await DuckDBInstance.create(':memory:')).connect();
    const cols = (await db.runAndReadAll(`DESCRIBE SELECT * FROM read_parquet('${out}')`)).getRows().map((r) => [r[0], r[1]]);
    expect(cols).toEqual([
      ['feature', 'INTEGER'],
      ['rank', 'INTEGER'],
      ['density', 'DOUBLE'],
      ['mean_activation', 'DOUBLE'],
      ['max_activation', 'DOUBLE'],
      ['decoder_norm', 'DOUBLE'],
      ['dying', 'BOOLEAN'],
      ['never_fired', 'BOOLEAN'],
    ]);
    const [[n]] = (await db.runAndReadAll(`SELECT count(*) FROM read_parquet('${out}')`)).getRows();
    expect(Number(n)).toBe(F);
  });

  it('reports the dying fraction of Definition 3.1 over the exported densities', async () => {
    const out = path.join(root, 'dying.parquet');
    const j = evalJson('--features-out', out);
    const bytes = await fs.readFile(out);
    const rows = (await parquetReadObjects({ file: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer })) as { density: number; dying: boolean }[];
    const { mask, count } = dyingFeatures(rows.map((r) => r.density), j.dyingZipf.alpha, j.dyingZipf.beta);
    expect(j.dyingFraction).toBe(count / F);
    expect(rows.map((r) => r.dying)).toEqual(Array.from(mask, (v) => v === 1));
  });
});

describe('sae eval: bad input gets one line and a non-zero exit', () => {
  it('--features-out in a folder that does not exist, before evaluating', async () => {
    expectUserError(sae('eval', '--checkpoint', ckpt, '--data', data, '--features-out', path.join(root, 'nope', 'f.csv')), /--features-out .*nope.*does not exist/);
    await expect(fs.stat(path.join(root, 'nope'))).rejects.toThrow();
  });

  it('--features-out with a name that is neither .parquet nor .csv', () =>
    expectUserError(sae('eval', '--checkpoint', ckpt, '--data', data, '--features-out', path.join(root, 'f.txt')), /must end in \.parquet or \.csv/));

  it('an empty eval set', async () => {
    const empty = path.join(root, 'empty');
    await fs.mkdir(empty);
    expectUserError(sae('eval', '--checkpoint', ckpt, '--data', empty), /no activations/);
  });

  it('shards whose d does not match the SAE', () => {
    const other = path.join(root, 'd8');
    expect(sae('synth', '--out', other, '--d', '8', '--features', '16', '--k', '2', '--rows', '256', '--seed', '1').code).toBe(0);
    expectUserError(sae('eval', '--checkpoint', ckpt, '--data', other), /shards have d=8 but the run expects d=16/);
  });
});

describe('sae eval --features-out never replaces a file it did not write', () => {
  it('refuses an existing file that is not a feature table unless --force, and replaces its own on a rerun', async () => {
    for (const ext of ['csv', 'parquet']) {
      const f = path.join(root, `precious.${ext}`);
      await fs.writeFile(f, 'precious\n');
      expectUserError(sae('eval', '--checkpoint', ckpt, '--data', data, '--features-out', f), /exists and is not an earlier output of this command; add --force/);
      expect(await fs.readFile(f, 'utf8')).toBe('precious\n');
      // a rerun over its own output is expected
      const mine = path.join(root, `mine.${ext}`);
      expect(sae('eval', '--checkpoint', ckpt, '--data', data, '--features-out', mine).code).toBe(0);
      expect(sae('eval', '--checkpoint', ckpt, '--data', data, '--features-out', mine).code).toBe(0);
      expect(sae('eval', '--checkpoint', ckpt, '--data', data, '--features-out', f, '--force').code).toBe(0);
      expect(await fs.readFile(f, 'utf8')).not.toBe('precious\n');
    }
  }, 60_000);
});

describe('sae eval --dictionary', () => {
  it('accepts the synth folder’s dictionary.safetensors itself', () => {
    const viaDir = evalJson('--dictionary', data);
    const viaFile = evalJson('--dictionary', path.join(data, 'dictionary.safetensors'));
    expect(viaFile.recovery).toEqual(viaDir.recovery);
  });

  it('names the folder to pass for any other file, in one line', async () => {
    const other = path.join(root, 'other.bin');
    await fs.writeFile(other, 'x');
    expectUserError(sae('eval', '--checkpoint', ckpt, '--data', data, '--dictionary', other), /is a file; pass the `sae synth` output folder/);
  });
});

describe('sae export', () => {
  it('says a JumpReLU export given as --checkpoint is already one, in one line', () => {
    const jr = path.join(root, 'jr-once');
    expect(sae('export', '--checkpoint', ckpt, '--data', data, '--out', jr, '--batches', '2').code).toBe(0);
    expectUserError(sae('export', '--checkpoint', jr, '--data', data, '--out', path.join(root, 'jr-twice')), /is already a JumpReLU export/);
  });
});

describe('eval and export check the shards’ preprocessing against the checkpoint', () => {
  // same d, hook and model, but raw activations: an SAE trained on center_unit_norm inputs gives FVU > 1 there
  it('eval refuses shards harvested with another preprocessing, in one line', () => {
    const raw = path.join(root, 'raw');
    expect(sae('synth', '--out', raw, '--d', '16', '--features', '32', '--k', '2', '--rows', '2048', '--seed', '3', '--preprocessing', 'none').code).toBe(0);
    expectUserError(sae('eval', '--checkpoint', ckpt, '--data', raw), /shards have preprocessing=none but the run expects preprocessing=center_unit_norm/);
  });

  it('export refuses to calibrate thresholds on shards with another preprocessing', async () => {
    const raw = path.join(root, 'raw-export');
    expect(sae('synth', '--out', raw, '--d', '16', '--features', '32', '--k', '2', '--rows', '2048', '--seed', '3', '--preprocessing', 'none').code).toBe(0);
    const out = path.join(root, 'jr-raw');
    expectUserError(sae('export', '--checkpoint', ckpt, '--data', raw, '--out', out), /shards have preprocessing=none but the run expects preprocessing=center_unit_norm/);
    expect(existsSync(out)).toBe(false);
  });
});

describe('sae eval refuses shards from another model', () => {
  it('names both models in one line', async () => {
    const { spawnSync } = await import('node:child_process');
    const os = await import('node:os');
    const { promises: fsp } = await import('node:fs');
    const pathm = await import('node:path');
    const bin = pathm.resolve(__dirname, '..', 'bin', 'run.js');
    const fx = pathm.resolve(__dirname, '..', 'fixtures', 'hf-tiny');
    const root = await fsp.mkdtemp(pathm.join(os.tmpdir(), 'sae-eval-model-'));
    const run = (...a: string[]) => spawnSync(process.execPath, [bin, ...a], { encoding: 'utf8' });
    expect(run('harvest', '--model', pathm.join(fx, 'gpt2'), '--hook', 'blocks.1.hook_resid_pre', '--out', pathm.join(root, 'a'), '--max-tokens', '1500', '--quiet').status).toBe(0);
    expect(run('harvest', '--model', pathm.join(fx, 'gpt-neox'), '--hook', 'blocks.1.hook_resid_pre', '--out', pathm.join(root, 'b'), '--max-tokens', '1500', '--quiet').status).toBe(0);
    expect(run('train', '--data', pathm.join(root, 'a'), '--out', pathm.join(root, 'sae'), '--width', '128', '--k', '4', '--batch-size', '128', '--steps', '3', '--quiet').status).toBe(0);
    const r = run('eval', '--checkpoint', pathm.join(root, 'sae'), '--data', pathm.join(root, 'b'));
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/shards come from model .*gpt-neox but the SAE was trained on .*gpt2/);
    await fsp.rm(root, { recursive: true, force: true });
  });
});

import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import { promises as fs, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import {
  writeSynth,
  loadDictionary,
  makeDictionary,
  firingProbabilities,
  resolveSynthParams,
  SynthGenerator,
} from '../src/pipeline/synth.js';
import { featureRecovery } from '../src/eval/recovery.js';
import { openShards } from '../src/store/shard-set.js';
import { readChunks } from '../src/store/row-reader.js';
import { UserError } from '../src/util/errors.js';
import { Rng } from '../src/util/rng.js';
import Synth from '../src/commands/synth.js';

let root: string;
let counter = 0;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-synth-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});
const fresh = () => path.join(root, `s${counter++}`);

async function readAll(dir: string): Promise<{ acts: Float32Array; mean: Float32Array[]; norm: Float32Array[] }> {
  const set = await openShards(dir);
  const acts = new Float32Array(set.rows * set.meta.d);
  const mean: Float32Array[] = [];
  const norm: Float32Array[] = [];
  let at = 0;
  for await (const c of readChunks(set)) {
    acts.set(c.acts, at);
    at += c.acts.length;
    if (c.rawMean) mean.push(c.rawMean);
    if (c.rawNorm) norm.push(c.rawNorm);
  }
  return { acts, mean, norm };
}

describe('synthetic data', () => {
  it('is deterministic for a seed, byte for byte, whatever the shard size', async () => {
    const a = fresh();
    const b = fresh();
    await writeSynth({ out: a, rows: 3000, seed: 5, rowsPerShard: 1000 });
    await writeSynth({ out: b, rows: 3000, seed: 5, rowsPerShard: 3000 });
    const ra = await readAll(a);
    const rb = await readAll(b);
    expect(Buffer.from(ra.acts.buffer).equals(Buffer.from(rb.acts.buffer))).toBe(true);
    expect(await fs.readFile(path.join(a, 'dictionary.safetensors'))).toEqual(await fs.readFile(path.join(b, 'dictionary.safetensors')));
  });

  it('differs between seeds', async () => {
    const a = fresh();
    const b = fresh();
    await writeSynth({ out: a, rows: 500, seed: 1 });
    await writeSynth({ out: b, rows: 500, seed: 2 });
    expect(Array.from((await readAll(a)).acts)).not.toEqual(Array.from((await readAll(b)).acts));
  });

  it('dictionary rows are unit norm and zero mean', () => {
    const d = 32;
    const G = makeDictionary(100, d, 7);
    for (let i = 0; i < 100; i++) {
      const row = G.subarray(i * d, (i + 1) * d);
      expect(Math.hypot(...row)).toBeCloseTo(1, 5);
      expect(Math.abs(row.reduce((s, v) => s + v, 0))).toBeLessThan(1e-5);
    }
  });

  it('firing probabilities follow 1/(i+beta)^alpha and sum to k', () => {
    const p = firingProbabilities(100, 5, 1.2, 3);
    expect(p.reduce((s, v) => s + v, 0)).toBeCloseTo(5, 9);
    expect(p[0] / p[9]).toBeCloseTo(Math.pow((10 + 3) / (1 + 3), 1.2), 9);
  });

  it('clips probabilities at 1 and still sums to k', () => {
    const p = firingProbabilities(10, 6, 2, 0);
    expect(p[0]).toBe(1);
    expect(p.reduce((s, v) => s + v, 0)).toBeCloseTo(6, 9);
  });

  it('fires each feature with its probability (including the thinned tail)', () => {
    const P = resolveSynthParams({ fTrue: 2000, kTrue: 6, difficultySigma: 0, seed: 3 });
    const p = firingProbabilities(P.fTrue, P.kTrue, P.alpha, P.beta);
    const gen = new SynthGenerator(P, makeDictionary(P.fTrue, P.d, 3), p);
    const n = 20000;
    const hits = new Float64Array(P.fTrue);
    for (let s = 0; s < n; s++) {
      const k = gen.draw();
      for (let t = 0; t < k; t++) hits[gen.active[t]]++;
    }
    // Buckets of ranks, so every comparison has enough counts for a 5σ binomial bound.
    for (const [lo, hi] of [[0, 1], [1, 4], [4, 16], [16, 64], [64, 256], [256, 1000], [1000, 2000]]) {
      let want = 0;
      let got = 0;
      for (let i = lo; i < hi; i++) {
        want += p[i] * n;
        got += hits[i];
      }
      expect(Math.abs(got - want)).toBeLessThan(5 * Math.sqrt(want) + 0.003 * n);
    }
  });

  it('has a mean active count close to k with the difficulty multiplier', async () => {
    const out = fresh();
    const s = await writeSynth({ out, rows: 20000, kTrue: 8, difficultySigma: 0.5, seed: 4 });
    expect(Math.abs(s.meanActive - 8) / 8).toBeLessThan(0.05);
    const dict = await loadDictionary(out);
    const counts = dict.activeCount!;
    expect(counts.reduce((a, b) => a + b, 0) / counts.length).toBeCloseTo(s.meanActive, 9);
  });

  it('varies the active count more with a difficulty multiplier than without', async () => {
    const spread = (c: Int32Array) => {
      const m = c.reduce((a, b) => a + b, 0) / c.length;
      return c.reduce((a, b) => a + (b - m) ** 2, 0) / c.length;
    };
    const a = fresh();
    const b = fresh();
    await writeSynth({ out: a, rows: 8000, difficultySigma: 0, seed: 4 });
    await writeSynth({ out: b, rows: 8000, difficultySigma: 1, seed: 4 });
    const va = spread((await loadDictionary(a)).activeCount!);
    const vb = spread((await loadDictionary(b)).activeCount!);
    expect(vb).toBeGreaterThan(2 * va);
  });

  it('gives every sample at least one active feature', async () => {
    const out = fresh();
    await writeSynth({ out, rows: 5000, kTrue: 0.5, seed: 2 });
    const counts = (await loadDictionary(out)).activeCount!;
    expect(Math.min(...counts)).toBe(1);
  });

  it('writes preprocessed shards with synthetic metadata, G and the parameters beside them', async () => {
    const out = fresh();
    const s = await writeSynth({ out, rows: 700, d: 16, fTrue: 40, kTrue: 3, seed: 9, rowsPerShard: 300 });
    expect(s.shards).toBe(3);
    const set = await openShards(out);
    expect(set.meta.model).toBe('synthetic');
    expect(set.meta.hook).toBe('synthetic');
    expect(set.meta.preprocessing).toBe('center_unit_norm');
    expect(set.meta.extras?.fTrue).toBe('40');
    expect(set.meta.extras?.seed).toBe('9');
    const { acts } = await readAll(out);
    for (let r = 0; r < 700; r++) {
      const row = acts.subarray(r * 16, r * 16 + 16);
      expect(Math.hypot(...row)).toBeCloseTo(1, 5);
      expect(Math.abs(row.reduce((a, b) => a + b, 0))).toBeLessThan(1e-5);
    }
    const dict = await loadDictionary(out);
    expect([dict.fTrue, dict.d]).toEqual([40, 16]);
    expect(Array.from(dict.G)).toEqual(Array.from(makeDictionary(40, 16, 9)));
    expect(dict.params?.kTrue).toBe(3);
    const json = JSON.parse(await fs.readFile(path.join(out, 'synth.json'), 'utf8'));
    expect(json.params.seed).toBe(9);
  });

  it('keeps the features intact under center_unit_norm: a noiseless row is a positive mix of G rows', async () => {
    const out = fresh();
    await writeSynth({ out, rows: 200, d: 16, fTrue: 8, kTrue: 1, difficultySigma: 0, noise: 0, seed: 1 });
    const { acts, mean } = await readAll(out);
    const G = (await loadDictionary(out)).G;
    // the raw rows were already zero-mean, so centring removed nothing
    for (const m of mean) for (const v of m) expect(Math.abs(v)).toBeLessThan(1e-6);
    const counts = (await loadDictionary(out)).activeCount!;
    for (let r = 0; r < 200; r++) {
      if (counts[r] !== 1) continue;
      const row = acts.subarray(r * 16, r * 16 + 16);
      let best = -1;
      for (let i = 0; i < 8; i++) {
        let c = 0;
        for (let j = 0; j < 16; j++) c += row[j] * G[i * 16 + j];
        best = Math.max(best, c);
      }
      expect(best).toBeCloseTo(1, 5);
    }
  });

  it('scales the data so that the mean row norm is sqrt(d) with dataset_scale', async () => {
    const out = fresh();
    await writeSynth({ out, rows: 4096, d: 16, preprocessing: 'dataset_scale', seed: 3 });
    const set = await openShards(out);
    expect(set.meta.scale).toBeGreaterThan(0);
    const { acts } = await readAll(out);
    let total = 0;
    for (let r = 0; r < 4096; r++) total += Math.hypot(...acts.subarray(r * 16, r * 16 + 16));
    expect(total / 4096).toBeCloseTo(4, 4);
  });

  it('rejects bad options with a message naming the option', () => {
    expect(() => resolveSynthParams({ fTrue: 10, kTrue: 11 })).toThrow(UserError);
    expect(() => resolveSynthParams({ fTrue: 10, kTrue: 11 })).toThrow(/^k must be in \(0, features=10\]/);
    expect(() => resolveSynthParams({ d: 1 })).toThrow(/^d must be an integer ≥ 2/);
    expect(() => resolveSynthParams({ rows: 2.5 })).toThrow(/^rows must be an integer/);
    expect(() => resolveSynthParams({ noise: -1 })).toThrow(/^noise must be ≥ 0/);
    expect(() => resolveSynthParams({ magnitudeMin: 2, magnitudeMax: 1 })).toThrow(/^magnitude-max must be/);
  });

  it('generates 65536×64 rows quickly', async () => {
    const t0 = performance.now();
    await writeSynth({ out: fresh(), rows: 65536, seed: 1 });
    // Generous bound for slow CI machines; typically about a second.
    expect(performance.now() - t0).toBeLessThan(8000);
  });
});

describe('featureRecovery', () => {
  const d = 24;
  const G = makeDictionary(50, d, 1);

  it('is 1 in every direction when the decoder is G (in any order and scale)', () => {
    const W = new Float32Array(50 * d);
    for (let i = 0; i < 50; i++) for (let j = 0; j < d; j++) W[(49 - i) * d + j] = 3 * G[i * d + j];
    const m = featureRecovery(G, 50, W, 50, d);
    expect(m.meanMaxCos).toBeCloseTo(1, 6);
    expect(m.fractionRecovered).toBe(1);
    expect(m.reverseMeanMaxCos).toBeCloseTo(1, 6);
    expect(m.reverseFractionExplained).toBe(1);
  });

  it('is low for a random decoder', () => {
    const rng = new Rng(4);
    const W = Float32Array.from({ length: 50 * d }, () => rng.normal());
    const m = featureRecovery(G, 50, W, 50, d);
    expect(m.meanMaxCos).toBeLessThan(0.6);
    expect(m.fractionRecovered).toBe(0);
  });

  it('does not count a decoder row pointing opposite to a feature', () => {
    const W = G.map((v) => -v);
    const m = featureRecovery(G, 50, W, 50, d);
    expect(m.fractionRecovered).toBe(0);
  });

  it('separates the directions: extra junk features lower only the reverse score', () => {
    const rng = new Rng(5);
    const W = new Float32Array(100 * d);
    W.set(G);
    for (let i = 50 * d; i < 100 * d; i++) W[i] = rng.normal();
    const m = featureRecovery(G, 50, W, 100, d);
    expect(m.fractionRecovered).toBe(1);
    expect(m.reverseFractionExplained).toBeCloseTo(0.5, 6);
  });

  it('counts features above the threshold only', () => {
    // Half the decoder rows are G rows tilted to cosine 0.8 with their feature.
    const W = new Float64Array(50 * d);
    const rng = new Rng(6);
    for (let i = 0; i < 50; i++) {
      const g = G.subarray(i * d, (i + 1) * d);
      if (i % 2 === 0) {
        for (let j = 0; j < d; j++) W[i * d + j] = g[j];
        continue;
      }
      const v = Float64Array.from({ length: d }, () => rng.normal());
      const dot = v.reduce((s, x, j) => s + x * g[j], 0);
      for (let j = 0; j < d; j++) v[j] -= dot * g[j];
      const nv = Math.hypot(...v);
      for (let j = 0; j < d; j++) W[i * d + j] = 0.8 * g[j] + 0.6 * (v[j] / nv);
    }
    const m = featureRecovery(G, 50, W, 50, d, 0.9);
    expect(m.fractionRecovered).toBeCloseTo(0.5, 6);
    expect(featureRecovery(G, 50, W, 50, d, 0.75).fractionRecovered).toBe(1);
  });
});

const repo = path.join(import.meta.dirname, '..');

/** Run the command class in-process, capturing what it writes. */
async function runSynth(argv: string[]): Promise<{ stdout: string; stderr: string; exit: number }> {
  let stdout = '';
  let stderr = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((c) => ((stdout += String(c)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((c) => ((stderr += String(c)), true));
  let exit = 0;
  try {
    await Synth.run(argv, repo);
  } catch (err) {
    exit = (err as { oclif?: { exit?: number } }).oclif?.exit ?? 1;
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
  return { stdout, stderr, exit };
}

/** Another process holding `dir`'s output lock until killed (the compiled lock module, as the CLI uses it). */
async function holdLock(dir: string, command: string): Promise<ChildProcess> {
  const js = path.join(repo, 'dist', 'util', 'lock.js');
  const c = spawn(process.execPath, ['--input-type=module', '-e', `import { lockOutDir } from ${JSON.stringify(js)}; await lockOutDir(${JSON.stringify(dir)}, ${JSON.stringify(command)}); console.log('held'); setInterval(() => {}, 1000);`]);
  await new Promise<void>((resolve, reject) => {
    c.stdout!.once('data', () => resolve());
    c.once('exit', (code) => reject(new Error(`lock holder exited with ${code}`)));
  });
  return c;
}

describe('sae synth command', () => {
  it('writes shards and prints the summary with the manifest as JSON', async () => {
    const out = fresh();
    const r = await runSynth(['--out', out, '--rows', '300', '--d', '8', '--features', '20', '--k', '2.5', '--json']);
    expect(r.exit).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.rows).toBe(300);
    expect(s.params.kTrue).toBe(2.5);
    expect(s.manifest.meta.d).toBe(8);
    expect((await openShards(out)).rows).toBe(300);
  });

  it('prints the output directory on stdout and a summary on stderr without --json', async () => {
    const out = fresh();
    const r = await runSynth(['--out', out, '--rows', '100']);
    expect(r.stdout).toBe(out + '\n');
    expect(r.stderr).toMatch(/^synth: 100 rows × d=64 from 256 features/);
  });

  it('rejects an out-of-range value with a one-line error naming the flag', async () => {
    const r = await runSynth(['--out', fresh(), '--k', '0']);
    expect(r.exit).toBe(2);
    expect(r.stderr).toBe('sae: error: --k must be in (0, features=256], got 0\n');
  });

  it('leaves no empty output folder behind when a flag value is rejected', async () => {
    const out = fresh();
    const r = await runSynth(['--out', out, '--d', '0']);
    expect(r.exit).toBe(2);
    expect(existsSync(out)).toBe(false);
    // a folder the user made stays
    const mine = fresh();
    await fs.mkdir(mine, { recursive: true });
    expect((await runSynth(['--out', mine, '--d', '0'])).exit).toBe(2);
    expect(existsSync(mine)).toBe(true);
  });

  it('refuses a harvest\'s folder even with --force, and leaves its journal and shards alone', async () => {
    const out = fresh();
    await fs.mkdir(out, { recursive: true });
    await fs.writeFile(path.join(out, 'harvest.json'), '{"format":"sae-harvest/1","shards":3}');
    const r = await runSynth(['--out', out, '--rows', '50', '--force']);
    expect(r.exit).toBe(2);
    expect(r.stderr).toMatch(/^sae: error: --out .* holds a harvest \(harvest\.json\), which only sae harvest --force may replace; choose another --out\n$/);
    expect(existsSync(path.join(out, 'harvest.json'))).toBe(true);
    expect(existsSync(path.join(out, 'manifest.json'))).toBe(false);
  });

  it('refuses a shuffle\'s output even with --force', async () => {
    const out = fresh();
    await fs.mkdir(path.join(out, 'shuffle-work'), { recursive: true });
    const r = await runSynth(['--out', out, '--rows', '50', '--force']);
    expect(r.exit).toBe(2);
    expect(r.stderr).toMatch(/holds a shuffle's output \(shuffle-work\/\), which only sae shuffle --force may replace/);
  });

  it('refuses an --out another live process is writing, naming it (exit 75), and leaves it untouched', async () => {
    const out = fresh();
    await fs.mkdir(out, { recursive: true });
    const holder = await holdLock(out, 'sae harvest');
    try {
      const r = await runSynth(['--out', out, '--rows', '50']);
      expect(r.exit).toBe(75);
      expect(r.stderr).toMatch(new RegExp(`^sae: error: --out .* is in use by sae harvest \\(pid ${holder.pid} on .*\n$`));
      expect((await fs.readdir(out)).filter((f) => !f.startsWith('.sae-lock'))).toEqual([]);
    } finally {
      holder.kill();
    }
  });

  it('rejects a value that is not a number with a one-line error', async () => {
    const r = await runSynth(['--out', fresh(), '--noise', 'lots']);
    expect(r.exit).toBe(2);
    expect(r.stderr).toBe('sae: error: --noise must be a number, got "lots"\n');
  });

  it('refuses to overwrite existing shards without --force', async () => {
    const out = fresh();
    await runSynth(['--out', out, '--rows', '50']);
    const r = await runSynth(['--out', out, '--rows', '50']);
    expect(r.exit).toBe(2);
    expect(r.stderr).toMatch(/^sae: error: .*already contains activation shards/);
    expect((await runSynth(['--out', out, '--rows', '60', '--force'])).exit).toBe(0);
    expect((await openShards(out)).rows).toBe(60);
  });
});

const built = existsSync(path.join(repo, 'dist', 'commands', 'synth.js'));

describe.skipIf(!built)('sae synth (built CLI)', () => {
  it('runs from bin/run.js', async () => {
    const out = fresh();
    const { stdout } = await promisify(execFile)('node', [path.join(repo, 'bin', 'run.js'), 'synth', '--out', out, '--rows', '300', '--json']);
    expect(JSON.parse(stdout).rows).toBe(300);
  });
});

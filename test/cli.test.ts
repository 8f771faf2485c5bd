import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The CLI as a user meets it: the compiled bin (npm test builds it first).
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
let root: string;
let data: string;

function sae(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Run `sae args…`, press Ctrl-C once it logs `step n`, and return its exit code. */
async function interruptAt(args: string[], n: number): Promise<number | null> {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  return new Promise<number | null>((resolve) => {
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
      if (new RegExp(`step ${n} `).test(err) && !child.killed) child.kill('SIGINT');
    });
    child.on('close', (c) => resolve(c));
  });
}

function expectUserError(r: ReturnType<typeof sae>, pattern: RegExp) {
  expect(r.code).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^sae: error: /);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-cli-'));
  data = path.join(root, 'synth');
  const r = sae('synth', '--out', data, '--d', '16', '--features', '32', '--k', '2', '--rows', '4096', '--seed', '3');
  expect(r.code).toBe(0);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae synth | train | eval | export', () => {
  it('chains through stdout: train prints the final checkpoint, eval prints JSON', () => {
    const t = sae('train', '--data', data, '--out', path.join(root, 'run'), '--activation', 'mutual', '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '30', '--quiet');
    expect(t.code).toBe(0);
    const ckpt = t.stdout.trim();
    expect(ckpt).toBe(path.join(root, 'run', 'final'));
    const e = sae('eval', '--checkpoint', ckpt, '--data', data, '--dictionary', data);
    expect(e.code).toBe(0);
    const res = JSON.parse(e.stdout);
    expect(res.l0).toBeCloseTo(2, 5);
    // 30 steps of a 64-wide SAE on 32 true features: far from converged, far better than nothing
    expect(res.fvu).toBeGreaterThan(0.01);
    expect(res.fvu).toBeLessThan(0.9);
    // random unit vectors in d=16 reach ≈ 0.5 against 64 rows; training must beat that clearly
    expect(res.recovery.meanMaxCos).toBeGreaterThan(0.6);
    expect(res.recovery.meanMaxCos).toBeLessThanOrEqual(1);
    const x = sae('export', '--checkpoint', ckpt, '--data', data, '--out', path.join(root, 'jr'), '--batches', '4');
    expect(x.code).toBe(0);
    const j = JSON.parse(sae('eval', '--checkpoint', path.join(root, 'jr'), '--data', data).stdout);
    expect(j.architecture).toBe('jumprelu');
    // thresholds calibrated on batch selections keep L0 at the training budget k = 2
    expect(Math.abs(j.l0 - 2)).toBeLessThan(0.25);
    const pf = path.join(root, 'jr-pf');
    expect(sae('export', '--checkpoint', ckpt, '--data', data, '--out', pf, '--batches', '4', '--thresholds', 'per-feature').code).toBe(0);
    const q = JSON.parse(sae('eval', '--checkpoint', pf, '--data', data).stdout);
    expect(Math.abs(q.l0 - 2)).toBeLessThan(0.25);
  });

  it('export never overwrites the checkpoint it reads, nor a folder that is not an export', async () => {
    const t = sae('train', '--data', data, '--out', path.join(root, 'exp'), '--activation', 'mutual', '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '3', '--quiet');
    const ckpt = t.stdout.trim();
    expectUserError(sae('export', '--checkpoint', ckpt, '--data', data, '--out', ckpt), /must differ/);
    const keep = path.join(root, 'precious');
    await fs.mkdir(keep, { recursive: true });
    await fs.writeFile(path.join(keep, 'notes.txt'), 'mine');
    expectUserError(sae('export', '--checkpoint', ckpt, '--data', data, '--out', keep), /not an exported checkpoint/);
    expect(await fs.readFile(path.join(keep, 'notes.txt'), 'utf8')).toBe('mine');
    const out = path.join(root, 'exp-jr');
    expect(sae('export', '--checkpoint', ckpt, '--data', data, '--out', out, '--batches', '2').code).toBe(0);
    expectUserError(sae('export', '--checkpoint', ckpt, '--data', data, '--out', out, '--batches', '2'), /--force/);
    expect(sae('export', '--checkpoint', ckpt, '--data', data, '--out', out, '--batches', '2', '--force').code).toBe(0);
  });

  it('eval evaluates every row, the last partial batch included, and names its dead count by its window', () => {
    const t = sae('train', '--data', data, '--out', path.join(root, 'ev'), '--activation', 'mutual', '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '3', '--quiet');
    const all = JSON.parse(sae('eval', '--checkpoint', t.stdout.trim(), '--data', data, '--batch-size', '1000').stdout);
    expect(all).toMatchObject({ rows: 4096, batches: 5, lastBatchRows: 96, neverFiredWindowTokens: 4096 });
    expect(all.neverFiredFraction).toBeGreaterThanOrEqual(0);
    expect(all).not.toHaveProperty('deadFraction');
    const some = JSON.parse(sae('eval', '--checkpoint', t.stdout.trim(), '--data', data, '--batch-size', '1000', '--max-rows', '1500').stdout);
    expect(some).toMatchObject({ rows: 1500, batches: 2, lastBatchRows: 500 });
    // the partial batch is selected with its own budget: k per token on average
    expect(some.l0).toBeCloseTo(2, 5);
  });

  it('the demo’s MC → FC fine-tune is the same phase 2 as --finetune-steps', async () => {
    const demo = path.join(root, 'demo');
    expect(sae('demo', '--out', demo, '--steps', '10').code).toBe(0);
    const fromDemo = JSON.parse(await fs.readFile(path.join(demo, 'mutual-feature', 'final', 'cfg.json'), 'utf8')).sae_train.config;
    const t = sae('train', '--data', data, '--out', path.join(root, 'ft-flag'), '--activation', 'mutual', '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '2', '--finetune-steps', '1', '--quiet');
    const fromFlag = JSON.parse(await fs.readFile(path.join(t.stdout.trim(), 'cfg.json'), 'utf8')).sae_train.config;
    const shape = (ph: { activation: string; auxKCoef: number; auxZipfCoef: number }) => ({ activation: ph.activation, auxKCoef: ph.auxKCoef, auxZipfCoef: ph.auxZipfCoef });
    expect(fromDemo.phases.map(shape)).toEqual([{ activation: 'feature', auxKCoef: 0, auxZipfCoef: 0 }]);
    expect(fromFlag.phases.map(shape)).toEqual(fromDemo.phases.map(shape));
  });

  it('train --json prints a machine-readable summary', () => {
    const t = sae('train', '--data', data, '--out', path.join(root, 'j'), '--activation', 'topk', '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '5', '--json', '--quiet');
    expect(t.code).toBe(0);
    const s = JSON.parse(t.stdout);
    expect(s.steps).toBe(5);
    expect(s.last.activation).toBe('topk');
  });
});

describe('bad input gets one line and a non-zero exit', () => {
  it('an unknown command, listing the commands', () => {
    const r = sae('trian', '--data', 'x');
    expectUserError(r, /unknown command "trian"; the commands are .*train/);
    expect(r.code).toBe(2);
    expectUserError(sae('model', 'foo'), /unknown command "model foo"/);
  });
  const base = () => ['train', '--data', data, '--out', path.join(root, 'bad'), '--width', '64', '--batch-size', '128', '--steps', '2'];

  it('unknown activation, listing only trainable ones', () => {
    const r = sae(...base(), '--activation', 'softmax');
    expectUserError(r, /activation must be one of relu, topk, batchtopk, mutual, feature; got "softmax"/);
  });
  it('jumprelu for training, pointing at sae export', () => expectUserError(sae(...base(), '--activation', 'jumprelu'), /inference-only.*`sae export`/));
  it('--lr 0 instead of the default', () => expectUserError(sae(...base(), '--lr', '0'), /lr must be > 0 \(omit it, or give "auto"/));
  it('--width 0 instead of the default', () =>
    expectUserError(sae('train', '--data', data, '--out', path.join(root, 'bad'), '--batch-size', '128', '--steps', '2', '--width', '0'), /width must be > 0 \(omit it, or give "auto"/));
  it('a malformed --append-phase', () => expectUserError(sae(...base(), '--append-phase', 'feature'), /--append-phase expects ACTIVATION:STEPS/));
  it('k ≥ F', () => expectUserError(sae(...base(), '--k', '64'), /k must be < width/));
  it('k < 1', () => expectUserError(sae(...base(), '--k', '0'), /k must be ≥ 1/));
  it('m_max < 1', () => expectUserError(sae(...base(), '--m-max', '-2'), /mMax/));
  it('a flag that is not a number', () => expectUserError(sae(...base(), '--lr', 'fast'), /--lr expects a number or auto/));
  it('a fractional integer flag', () => expectUserError(sae(...base(), '--k', '2.5'), /--k expects a whole number/));
  it('an unknown flag', () => expectUserError(sae(...base(), '--learning-rate', '1'), /learning-rate/));
  it('missing input', () => expectUserError(sae('train', '--data', path.join(root, 'none'), '--out', path.join(root, 'bad')), /none/));

  it('an empty input directory', async () => {
    const empty = path.join(root, 'empty');
    await fs.mkdir(empty, { recursive: true });
    expectUserError(sae('train', '--data', empty, '--out', path.join(root, 'bad')), /empty|no (activations|shards|parquet)/i);
  });

  it('unknown config keys in a config file', async () => {
    const f = path.join(root, 'cfg.json');
    await fs.writeFile(f, JSON.stringify({ k: 2, warmup: 10 }));
    expectUserError(sae(...base(), '--config', f), /unknown key "warmup"/);
  });

  it('a missing checkpoint on --resume', () => expectUserError(sae(...base(), '--resume', path.join(root, 'nothing')), /no such directory/));

  it('shards with another preprocessing than the run expects', () =>
    expectUserError(sae(...base(), '--expect-preprocessing', 'none'), /preprocessing/));
});

describe('outputs: nothing the user made is deleted or overwritten', () => {
  async function userFile(name: string) {
    const f = path.join(root, name);
    await fs.writeFile(f, 'notes\n');
    return f;
  }

  it('export refuses an --out that is a file and leaves it as it was', async () => {
    const t = sae('train', '--data', data, '--out', path.join(root, 'out-exp'), '--activation', 'mutual', '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '2', '--quiet');
    const f = await userFile('export-target');
    expectUserError(sae('export', '--checkpoint', t.stdout.trim(), '--data', data, '--out', f, '--batches', '1'), /is an existing file, not a directory/);
    expect(await fs.readFile(f, 'utf8')).toBe('notes\n');
  });

  it('train refuses an --out that is a file with one line', async () => {
    const f = await userFile('train-target');
    expectUserError(sae('train', '--data', data, '--out', f, '--width', '64', '--batch-size', '128', '--steps', '2'), /--out .*train-target is an existing file, not a directory/);
    expect(await fs.readFile(f, 'utf8')).toBe('notes\n');
  });

  it('synth refuses an --out that is a file with one line', async () => {
    const f = await userFile('synth-target');
    expectUserError(sae('synth', '--out', f, '--rows', '64'), /--out .*synth-target is an existing file, not a directory/);
    expect(await fs.readFile(f, 'utf8')).toBe('notes\n');
  });

  it('synth refuses an existing shard set and says how to replace it', () => expectUserError(sae('synth', '--out', data, '--rows', '64'), /already contains activation shards.*--force/));

  it('demo refuses an --out that is a file, or a folder that is not the demo’s', async () => {
    const f = await userFile('demo-target');
    expectUserError(sae('demo', '--out', f, '--steps', '10'), /is an existing file, not a directory/);
    const dir = path.join(root, 'my-folder');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'thesis.tex'), 'x');
    expectUserError(sae('demo', '--out', dir, '--steps', '10'), /not empty and not a demo directory/);
    expect(await fs.readdir(dir)).toEqual(['thesis.tex']);
  });

  it('train --force refuses to delete a run-named entry that sae did not write', async () => {
    const out = path.join(root, 'not-a-run');
    await fs.mkdir(out);
    await fs.writeFile(path.join(out, 'summary.json'), 'my own summary, not JSON');
    expectUserError(sae('train', '--data', data, '--out', out, '--width', '64', '--batch-size', '128', '--steps', '2', '--force'), /summary\.json exists and was not written by sae train/);
    expect(await fs.readFile(path.join(out, 'summary.json'), 'utf8')).toBe('my own summary, not JSON');
  });
});

describe('incomplete shard folders', () => {
  it('are refused with what is missing, and read on request as hand-made folders', async () => {
    const partial = path.join(root, 'killed-synth');
    expect(sae('synth', '--out', partial, '--d', '16', '--features', '32', '--k', '2', '--rows', '768', '--rows-per-shard', '256', '--seed', '3').code).toBe(0);
    // what a kill -9 mid-write leaves: some shards, a temporary file, no manifest
    await fs.rm(path.join(partial, 'manifest.json'));
    await fs.rm(path.join(partial, 'shard-00002.parquet'));
    await fs.writeFile(path.join(partial, '.shard-00002.parquet.tmp-99-1'), 'partial');
    const args = ['train', '--data', partial, '--out', path.join(root, 'on-partial'), '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '2', '--quiet'];
    expectUserError(sae(...args), /killed-synth: incomplete shard folder: no manifest\.json \(2 \.parquet files, 1 temporary file.*--allow-no-manifest/);
    expect(sae(...args, '--allow-no-manifest').code).toBe(0);
  });
});

describe('resuming phased runs from the command line', () => {
  it('the same command plus --resume continues a run interrupted in phase 1, bit for bit', async () => {
    const args = ['--data', data, '--activation', 'mutual', '--width', '64', '--k', '2', '--batch-size', '64', '--steps', '300', '--finetune-steps', '20', '--log-every', '1', '--checkpoint-every', '1000'];
    const cut = path.join(root, 'phased-cut');
    expect(await interruptAt(['train', '--out', cut, ...args], 5)).toBe(130);
    const resumed = sae('train', '--out', cut, ...args, '--resume', cut, '--json', '--quiet');
    expect(resumed.code).toBe(0);
    const s = JSON.parse(resumed.stdout);
    expect(s.activations).toEqual(['mutual', 'feature']);
    expect(s.steps).toBe(320);
    expect(sae('train', '--out', path.join(root, 'phased-whole'), ...args, '--quiet').code).toBe(0);
    const a = await fs.readFile(path.join(cut, 'final', 'sae.safetensors'));
    const b = await fs.readFile(path.join(root, 'phased-whole', 'final', 'sae.safetensors'));
    expect(a.equals(b)).toBe(true);
  });

  it('another activation on resume is refused, naming --append-phase, which then adds the phase', async () => {
    const out = path.join(root, 'append');
    const common = ['--data', data, '--width', '64', '--k', '2', '--batch-size', '64', '--quiet'];
    expect(sae('train', '--out', out, ...common, '--activation', 'mutual', '--steps', '6').code).toBe(0);
    expectUserError(sae('train', '--out', out, ...common, '--resume', out, '--activation', 'feature', '--steps', '4'), /phase 1 of the checkpoint's run is mutual.*--append-phase feature:STEPS/);
    const r = sae('train', '--out', out, ...common, '--resume', out, '--append-phase', 'feature:4', '--json');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.activations).toEqual(['mutual', 'feature']);
    expect(s.steps).toBe(10);
  });
});

describe('resuming on other data', () => {
  it('is refused when the shards hold other activations with the same row count, and allowed from a moved copy', async () => {
    const out = path.join(root, 'resume-data');
    const common = ['--width', '64', '--k', '2', '--batch-size', '64', '--quiet'];
    expect(sae('train', '--data', data, '--out', out, ...common, '--steps', '4').code).toBe(0);
    // same d, rows and layout; other rows (another seed)
    const other = path.join(root, 'synth-other-seed');
    expect(sae('synth', '--out', other, '--d', '16', '--features', '32', '--k', '2', '--rows', '4096', '--seed', '4').code).toBe(0);
    expectUserError(sae('train', '--data', other, '--out', out, ...common, '--resume', out, '--steps', '8'), /holds other activations than the checkpoint was trained on.*--init-from/);
    const moved = path.join(root, 'synth-moved');
    await fs.cp(data, moved, { recursive: true });
    expect(sae('train', '--data', moved, '--out', out, ...common, '--resume', out, '--steps', '8').code).toBe(0);
  });
});

describe('interrupting a run', () => {
  it('Ctrl-C writes a resumable checkpoint, exits 130, and resuming matches an uninterrupted run bit for bit', async () => {
    const args = ['--data', data, '--activation', 'mutual', '--width', '64', '--k', '2', '--batch-size', '64', '--steps', '400', '--log-every', '1', '--checkpoint-every', '1000', '--rank-interval', '7'];
    const cut = path.join(root, 'sigint');
    const child = spawn(process.execPath, [bin, 'train', '--out', cut, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (b: Buffer) => {
        err += b.toString();
        if (/step 5 /.test(err) && !child.killed) child.kill('SIGINT');
      });
      child.on('close', (c) => resolve(c));
    });
    expect(code).toBe(130);
    expect(err).toMatch(/interrupt/);
    const state = JSON.parse(await fs.readFile(path.join(cut, 'checkpoint', 'state.json'), 'utf8'));
    expect(state.step).toBeGreaterThanOrEqual(5);
    expect(state.step).toBeLessThan(400);
    await expect(fs.stat(path.join(cut, 'final'))).rejects.toThrow();

    const resumed = sae('train', '--out', cut, '--resume', cut, '--data', data, '--quiet');
    expect(resumed.code).toBe(0);
    const whole = sae('train', '--out', path.join(root, 'uncut'), ...args, '--quiet');
    expect(whole.code).toBe(0);
    const a = await fs.readFile(path.join(cut, 'final', 'sae.safetensors'));
    const b = await fs.readFile(path.join(root, 'uncut', 'final', 'sae.safetensors'));
    expect(a.equals(b)).toBe(true);
  });
});

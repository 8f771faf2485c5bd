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
    expect(res.fvu).toBeGreaterThan(0);
    expect(res.recovery.meanMaxCos).toBeGreaterThan(0);
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

  it('train --json prints a machine-readable summary', () => {
    const t = sae('train', '--data', data, '--out', path.join(root, 'j'), '--activation', 'topk', '--width', '64', '--k', '2', '--batch-size', '128', '--steps', '5', '--json', '--quiet');
    expect(t.code).toBe(0);
    const s = JSON.parse(t.stdout);
    expect(s.steps).toBe(5);
    expect(s.last.activation).toBe('topk');
  });
});

describe('bad input gets one line and a non-zero exit', () => {
  const base = () => ['train', '--data', data, '--out', path.join(root, 'bad'), '--width', '64', '--batch-size', '128', '--steps', '2'];

  it('unknown activation', () => expectUserError(sae(...base(), '--activation', 'softmax'), /unknown activation "softmax"/));
  it('k ≥ F', () => expectUserError(sae(...base(), '--k', '64'), /k must be < width/));
  it('k < 1', () => expectUserError(sae(...base(), '--k', '0'), /k must be ≥ 1/));
  it('m_max < 1', () => expectUserError(sae(...base(), '--m-max', '-2'), /mMax/));
  it('a flag that is not a number', () => expectUserError(sae(...base(), '--lr', 'fast'), /--lr expects a number/));
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

import { execFile, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSynth } from '../src/pipeline/synth.js';
import { lockOutDir, LOCK_FILE } from '../src/util/lock.js';
import { DEFAULTS } from '../src/sae/config.js';
import { formatStepLog, LOG_LINE_MAX } from '../src/pipeline/train/log-line.js';
import type { StepReport } from '../src/sae/trainer.js';

// `sae train` as a user runs it: bin/run.js on the compiled dist/ (npm run build:ts first).
const repo = path.resolve(__dirname, '..');
let root: string;
let data: string;
let counter = 0;
const fresh = () => path.join(root, `o${counter++}`);

function sae(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(repo, 'bin', 'run.js'), ...args], { env: { ...process.env, NO_COLOR: '1' } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const trainArgs = (out: string, steps = 6) => ['train', '--data', data, '--out', out, '--activation', 'mutual', '--width', '64', '--k', '3', '--batch-size', '128', '--steps', String(steps), '--dead-window', '512', '--prefetch', '0'];

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-train-cli-'));
  data = path.join(root, 'synth');
  await writeSynth({ out: data, d: 32, fTrue: 64, kTrue: 3, rows: 2048, seed: 1 });
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('sae train --help', () => {
  it('states the default --activation', async () => {
    const { code, stdout } = await sae(['train', '--help']);
    expect(code).toBe(0);
    const help = stdout.replace(/\s+/g, ' ');
    expect(help).toMatch(new RegExp(`--activation=<value> relu \\| topk \\| batchtopk \\| mutual \\| feature \\(default ${DEFAULTS.activation}[;)]`));
  });
});

describe('the --out lock', () => {
  it('a second training into a folder another one holds fails with exit 75, naming the holder', async () => {
    const out = fresh();
    await fs.mkdir(out);
    const lock = await lockOutDir(out, 'sae train');
    try {
      const r = await sae(trainArgs(out));
      expect(r.code).toBe(75);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^sae: error: --out ${out} is in use by sae train \\(pid ${process.pid} on ${os.hostname()}, since `))]);
      expect(await fs.readdir(out)).toEqual([LOCK_FILE]);
    } finally {
      await lock.release();
    }
  });

  it('takes over the stale lock of a process that is gone', async () => {
    const out = fresh();
    await fs.mkdir(out);
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    await fs.writeFile(path.join(out, LOCK_FILE), JSON.stringify({ pid: dead, host: os.hostname(), since: new Date().toISOString(), procStart: null, command: 'sae train', token: 'stale' }) + '\n');
    const r = await sae(trainArgs(out));
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(path.join(out, 'final'));
    expect((await fs.readdir(out)).sort()).toEqual(['final', 'metrics.jsonl', 'summary.json']);
  });
});

describe('the periodic log line', () => {
  it(`fits in ${LOG_LINE_MAX} columns, as printed by sae train`, async () => {
    const r = await sae([...trainArgs(fresh(), 12), '--log-every', '1']);
    expect(r.code).toBe(0);
    const steps = r.stderr.split('\n').filter((l) => l.startsWith('step '));
    expect(steps).toHaveLength(12);
    for (const l of steps) expect(l.length, l).toBeLessThanOrEqual(LOG_LINE_MAX);
    expect(steps[11]).toMatch(/^step 12 mutual loss \S+ fvu \S+ L0 \S+ dead \S+%\/512 dying \S+% \S+ tok\/s$/);
  });

  it(`fits in ${LOG_LINE_MAX} columns with every field at its widest`, () => {
    const widest = {
      step: 9_999_999, phase: 2, activation: 'batchtopk', total: 1.2345e-42, recon: 1e-9, fvu: 1.2345e-42, l0: 12345.678,
      auxK: 123.4, auxZipf: 5e-7, l1: 0, nfm: 0, nfmInf: 0, lr: 1.2345e-5, gradNorm: 1e9, deadFraction: 0.999, dyingFraction: 0.876,
      tokens: 9e12, deadWindow: 9_876_543_210, tokensPerSec: 9_876_543_210,
    } as unknown as StepReport & { deadWindow: number; tokensPerSec: number };
    const line = formatStepLog(widest);
    expect(line.length, line).toBeLessThanOrEqual(LOG_LINE_MAX);
    expect(line).toBe('step 9999999 batchtopk loss 1.2e-42 fvu 1.2e-42 L0 1.2e+4 dead 99.9%/9880M dying 87.6% 9880M tok/s');
  });
});

import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backendFactory } from '../src/sae/backend.js';
import { cudaStatus, gpuPresent } from '../src/kernels/cuda.js';
import type { TrainingBackendFactory } from '../src/sae/backend.js';
import { batches, recordTrace, SCENARIOS, trainer } from './helpers/trainer-trace.js';

// The CUDA backend (issue 12 part 2) does not exist yet. What is tested here without a GPU: the
// build hook finds nvcc or says it is missing and never breaks the CPU build, and `--kernels cuda`
// fails in one line. The GPU tests at the end run wherever an NVIDIA GPU is present or
// SAE_REQUIRE_CUDA=1 asks for them: there they fail until the backend is built and right, so a
// GPU machine never passes by skipping them.

const root = path.resolve(import.meta.dirname, '..');
const script = path.join(root, 'scripts', 'build-cuda.mjs');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'sae-cuda-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Run the hook with only `env` (no inherited PATH, so the machine's own nvcc is out of sight). */
function hook(name: string, env: Record<string, string>) {
  const out = path.join(tmp, name);
  const r = spawnSync(process.execPath, [script, '--out-dir', out], { encoding: 'utf8', env: { PATH: path.join(tmp, 'empty'), ...env } });
  const status = existsSync(path.join(out, 'cuda-status.json')) ? (JSON.parse(readFileSync(path.join(out, 'cuda-status.json'), 'utf8')) as { built: boolean; reason: string; nvcc: string | null }) : null;
  return { rc: r.status, lines: r.stderr.trim().split('\n'), stdout: r.stdout, status, built: existsSync(path.join(out, 'sae_cuda.node')) };
}

/** A stand-in nvcc that only answers --version, in dir/nvcc. */
function fakeNvcc(dir: string, release: string): string {
  mkdirSync(dir, { recursive: true });
  const f = path.join(dir, 'nvcc');
  writeFileSync(f, `#!/bin/sh\necho "Cuda compilation tools, release ${release}, V${release}.99"\n`);
  chmodSync(f, 0o755);
  return dir;
}

describe('scripts/build-cuda.mjs', () => {
  it('without nvcc prints one line, records why, builds nothing and exits 0', () => {
    const r = hook('none', {});
    expect(r.rc).toBe(0);
    expect(r.lines).toEqual([expect.stringMatching(/^sae: CUDA backend not built \(no nvcc at build time: CUDA_HOME is unset and nvcc is not on PATH\); the CPU kernels are unaffected$/)]);
    expect(r.stdout).toBe('');
    expect(r.status).toMatchObject({ built: false, nvcc: null });
    expect(r.built).toBe(false);
  });

  it('fails without nvcc when SAE_REQUIRE_CUDA=1 (a GPU machine that must have the backend)', () => {
    const r = hook('required', { SAE_REQUIRE_CUDA: '1' });
    expect(r.rc).toBe(1);
    expect(r.lines).toHaveLength(1);
    expect(r.lines[0]).toContain('SAE_REQUIRE_CUDA=1, failing');
  });

  it('names a CUDA_HOME that has no nvcc', () => {
    const r = hook('bad-home', { CUDA_HOME: path.join(tmp, 'no-such-cuda') });
    expect(r.rc).toBe(0);
    expect(r.lines[0]).toContain(`CUDA_HOME=${path.join(tmp, 'no-such-cuda')} has no working bin/nvcc`);
  });

  it('finds nvcc on PATH, or under CUDA_HOME first, and says there are no CUDA sources to build yet', () => {
    const onPath = hook('on-path', { PATH: fakeNvcc(path.join(tmp, 'path-bin'), '12.4') });
    expect(onPath.rc).toBe(0);
    expect(onPath.lines).toEqual([expect.stringContaining('nvcc 12.4 found on PATH, but this version of sae has no CUDA backend to build yet')]);
    expect(onPath.status).toMatchObject({ built: false, nvcc: 'nvcc' });
    const home = path.join(tmp, 'cuda-home');
    fakeNvcc(path.join(home, 'bin'), '12.6');
    const underHome = hook('home', { CUDA_HOME: home, PATH: path.join(tmp, 'path-bin') });
    expect(underHome.lines[0]).toContain(`nvcc 12.6 found at ${path.join(home, 'bin', 'nvcc')}`);
    expect(underHome.built).toBe(false);
  });
});

describe('sae train --kernels cuda', () => {
  it('fails before reading data, in one line that says what is missing', () => {
    const out = path.join(tmp, 'run');
    const r = spawnSync(process.execPath, [path.join(root, 'bin', 'run.js'), 'train', '--kernels', 'cuda', '--data', path.join(tmp, 'no-data'), '--out', out], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    // (oclif may print its own warnings around it, e.g. where typescript is not installed)
    const errors = r.stderr.trim().split('\n').filter((l) => l.includes('error'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^sae: error: --kernels cuda: CUDA backend unavailable.*(not built|exists but).*; use --kernels native or reference$/);
    expect(existsSync(out)).toBe(false);
  });
});

// ------------------------------------------------------------------------------ on a GPU only

const gpu = gpuPresent();
const required = process.env.SAE_REQUIRE_CUDA === '1';
const skip = !gpu.present && !required;
const skipNote = skip ? ` — skipped: ${gpu.how}, and SAE_REQUIRE_CUDA is not 1` : '';

describe.skipIf(skip)(`the CUDA backend on the GPU${skipNote}`, () => {
  const cuda = (): TrainingBackendFactory => backendFactory('cuda');

  it('is built and sees the GPU', () => {
    expect(cudaStatus().reason).toBeNull();
    expect(cudaStatus().available).toBe(true);
  });

  it('gives the same numbers run to run, and resumes bit for bit', () => {
    const a = recordTrace({ backend: cuda() });
    expect(recordTrace({ backend: cuda() })).toEqual(a);
    const full = (a['mc-fc'] as { steps: unknown[] }).steps;
    for (const cut of [3, 6]) expect((a[`mc-fc-resumed-at-${cut}`] as { steps: unknown[] }).steps).toEqual(full.slice(cut));
  });

  // float32 on another summation order: as native against reference (test/native-kernels.test.ts),
  // losses within 1e-4 relative and the weights' movement within 2 % of the CPU run's
  for (const [name, { config, steps }] of Object.entries(SCENARIOS)) {
    it(`${name}: trains close to the native CPU backend`, () => {
      const xs = batches(5, steps);
      const run = (source: TrainingBackendFactory) => {
        const t = trainer(config, steps, { backend: source });
        t.init(xs[0]);
        const w0 = t.params.Wdec.slice();
        const losses = xs.map((x) => t.trainStep(x).total);
        return { losses, w0, w: t.params.Wdec.slice() };
      };
      const g = run(cuda());
      const c = run(backendFactory('native'));
      g.losses.forEach((l, i) => expect(Math.abs(l - c.losses[i]) / Math.abs(c.losses[i]), `loss at step ${i + 1}`).toBeLessThan(1e-4));
      let diff = 0;
      let moved = 0;
      for (let i = 0; i < g.w.length; i++) {
        diff += (g.w[i] - c.w[i]) ** 2;
        moved += (c.w[i] - c.w0[i]) ** 2;
      }
      expect(Math.sqrt(diff / moved)).toBeLessThan(0.02);
    });
  }
});

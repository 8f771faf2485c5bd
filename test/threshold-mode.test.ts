import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// Appendix B's gap made visible (issue 19 part 8): a Mutual Choice SAE evaluated in batch mode
// (its training selection) and through its JumpReLU export one token at a time, side by side, by
// sae eval (L0, FVU) and sae splice-eval (L0, FVU, loss recovered).

const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const MODEL = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2-brown');
let dir: string;

function sae(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: dir, env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
function ok(r: ReturnType<typeof sae>): string {
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-threshold-mode-'));
  ok(sae('harvest', '--model', MODEL, '--hook', 'blocks.2.hook_resid_pre', '--out', 'acts', '--max-tokens', '20000'));
  ok(sae('train', '--data', 'acts', '--out', 'run', '--activation', 'mutual', '--k', '8', '--batch-size', '512', '--steps', '150'));
  ok(sae('export', '--checkpoint', 'run', '--data', 'acts', '--out', 'jumprelu', '--batches', '8'));
}, 120_000);

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('batch mode beside threshold mode', () => {
  it('sae eval --exported reports both modes’ L0 and FVU and their gap', () => {
    const out = JSON.parse(ok(sae('eval', '--checkpoint', 'run', '--data', 'acts', '--exported', 'jumprelu')));
    const t = out.thresholdMode;
    expect(out.l0).toBeGreaterThan(6);
    expect(out.l0).toBeLessThan(10);
    // calibrated to the batch L0 on these rows: close, not equal
    expect(Math.abs(t.l0 - out.l0) / out.l0).toBeLessThan(0.25);
    expect(t.fvu).toBeGreaterThan(0);
    expect(t.l0Gap).toBeCloseTo(t.l0 - out.l0, 12);
    expect(t.fvuGap).toBeCloseTo(t.fvu - out.fvu, 12);
  }, 60_000);

  it('sae splice-eval --exported reports L0, FVU and loss recovered for both, and the gap in each', () => {
    const out = JSON.parse(ok(sae('splice-eval', '--checkpoint', 'run', '--exported', 'jumprelu', '--model', MODEL, '--max-tokens', '2000', '--json')));
    const [batch, thr] = out.spliced;
    expect(batch.label).toBe('batch');
    expect(thr.label).toBe('jumprelu');
    for (const s of [batch, thr]) {
      expect(s.l0).toBeGreaterThan(0);
      expect(s.fvu).toBeGreaterThan(0);
      expect(s.fvu).toBeLessThan(1);
    }
    // Mutual Choice keeps k·B entries of a batch: its mean L0 on the spliced tokens is k
    expect(batch.l0).toBeCloseTo(8, 0);
    expect(out.gap.l0).toBeCloseTo(thr.l0 - batch.l0, 12);
    expect(out.gap.fvu).toBeCloseTo(thr.fvu - batch.fvu, 12);
    expect(out.gap.lossRecovered).toBeCloseTo(thr.lossRecovered - batch.lossRecovered, 12);
  }, 60_000);

  it('refuses an --exported folder that is not a JumpReLU export, in one line', () => {
    const r = sae('eval', '--checkpoint', 'run', '--data', 'acts', '--exported', 'run');
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/not a JumpReLU export/);
  }, 60_000);
});

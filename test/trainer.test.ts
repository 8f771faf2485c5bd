import { describe, expect, it } from 'vitest';
import { resolveConfig, learningRate, defaultLr, finetunePhase } from '../src/sae/config.js';
import { Trainer } from '../src/sae/trainer.js';
import { Rng } from '../src/util/rng.js';
import { resumeConfig } from '../src/sae/train.js';

const d = 16;
const F = 48;
const B = 64;

function batches(seed: number, n: number): Float32Array[] {
  const rng = new Rng(seed);
  const out: Float32Array[] = [];
  for (let s = 0; s < n; s++) {
    const x = new Float32Array(B * d);
    for (let i = 0; i < x.length; i++) x[i] = rng.normal();
    out.push(x);
  }
  return out;
}

function run(activation: string, seed: number, steps = 6, extra: Record<string, unknown> = {}) {
  const cfg = resolveConfig({ activation, k: 4, width: F, batchSize: B, steps, seed, rankInterval: 2, lr: 1e-2, nfmCoef: 0.01, nfmSample: 8, ...extra });
  const t = new Trainer({ cfg, d, F, deadWindow: B * 2 });
  const data = batches(99, steps);
  t.init(data[0]);
  const norms: number[] = [];
  for (const x of data) {
    t.trainStep(x);
    for (let j = 0; j < F; j++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += t.params.Wdec[j * d + i] ** 2;
      norms.push(Math.sqrt(s));
    }
  }
  return { t, norms };
}

describe('Trainer', () => {
  for (const act of ['relu', 'topk', 'batchtopk', 'mutual', 'feature']) {
    it(`keeps decoder rows at unit norm after every step (${act})`, () => {
      const { norms } = run(act, 1);
      for (const n of norms) expect(Math.abs(n - 1)).toBeLessThan(1e-5);
    });
  }

  it('gives bit-identical weights for the same seed and data', () => {
    const a = run('mutual', 5).t.params;
    const b = run('mutual', 5).t.params;
    expect(Buffer.from(a.Wdec.buffer).equals(Buffer.from(b.Wdec.buffer))).toBe(true);
    expect(Buffer.from(a.WencT.buffer).equals(Buffer.from(b.WencT.buffer))).toBe(true);
    expect(Buffer.from(a.bDec.buffer).equals(Buffer.from(b.bDec.buffer))).toBe(true);
  });

  it('gives different weights for a different seed', () => {
    const a = run('topk', 5).t.params;
    const b = run('topk', 6).t.params;
    expect(Buffer.from(a.Wdec.buffer).equals(Buffer.from(b.Wdec.buffer))).toBe(false);
  });

  it('resumes from a snapshot to the same weights as an uninterrupted run', () => {
    const data = batches(3, 8);
    const cfg = resolveConfig({ activation: 'mutual', k: 4, width: F, batchSize: B, steps: 8, seed: 2, rankInterval: 3, lr: 1e-2 });
    const full = new Trainer({ cfg, d, F, deadWindow: B });
    full.init(data[0]);
    for (const x of data) full.trainStep(x);

    const first = new Trainer({ cfg, d, F, deadWindow: B });
    first.init(data[0]);
    for (const x of data.slice(0, 5)) first.trainStep(x);
    const snap = first.snapshot();
    const second = new Trainer({ cfg, d, F, deadWindow: B, params: { ...first.params, WencT: first.params.WencT.slice(), bEnc: first.params.bEnc.slice(), Wdec: first.params.Wdec.slice(), bDec: first.params.bDec.slice() } });
    second.restore(snap);
    for (const x of data.slice(5)) second.trainStep(x);
    expect(Buffer.from(second.params.Wdec.buffer).equals(Buffer.from(full.params.Wdec.buffer))).toBe(true);
    expect(Buffer.from(second.params.WencT.buffer).equals(Buffer.from(full.params.WencT.buffer))).toBe(true);
  });

  it('switches from Mutual Choice to Feature Choice at the phase boundary', () => {
    const cfg = resolveConfig({ activation: 'mutual', steps: 3, phases: [{ activation: 'feature', steps: 2 }], k: 4, width: F, batchSize: B, rankInterval: 2 });
    const t = new Trainer({ cfg, d, F, deadWindow: B });
    const data = batches(4, 5);
    t.init(data[0]);
    const acts = data.map((x) => t.trainStep(x));
    expect(acts.map((r) => r.activation)).toEqual(['mutual', 'mutual', 'mutual', 'feature', 'feature']);
    // phase 2 of the paper: no auxiliary losses
    expect(acts[4].auxK).toBe(0);
    expect(acts[4].auxZipf).toBe(0);
  });

  it('Mutual Choice uses exactly k·B codes per batch', () => {
    const { t } = run('mutual', 1, 1);
    const r = t.trainStep(batches(7, 1)[0]);
    expect(r.l0 * B).toBe(4 * B);
  });

  it('reports every loss term, FVU and learning rate', () => {
    const { t } = run('mutual', 1, 1);
    const r = t.trainStep(batches(8, 1)[0]);
    for (const key of ['total', 'recon', 'auxK', 'auxZipf', 'nfm', 'fvu', 'l0', 'lr', 'gradNorm', 'deadFraction', 'dyingFraction'] as const) {
      expect(Number.isFinite(r[key])).toBe(true);
    }
    expect(r.nfm).toBeGreaterThan(0);
    expect(r.fvu).toBeGreaterThan(0);
  });
});

describe('learning-rate schedule', () => {
  it('scales the default with width as Gao et al. (2e-4 at 16384 features)', () => {
    expect(defaultLr(16384)).toBeCloseTo(2e-4, 12);
    expect(defaultLr(65536)).toBeCloseTo(1e-4, 12);
  });

  it('gives each phase its own schedule, so a phase added on resume matches one configured up front', () => {
    const upFront = resolveConfig({ steps: 100, lrDecayStart: 0.5, phases: [finetunePhase(40)] });
    const mcOnly = resolveConfig({ steps: 100, lrDecayStart: 0.5 });
    const added = resumeConfig(mcOnly, {}, 100, [finetunePhase(40)]);
    for (let t = 0; t < 140; t++) expect(learningRate(added, 1, t)).toBe(learningRate(upFront, 1, t));
    // MC decays to ~0 at its end; the fine-tune starts again from the base rate
    expect(learningRate(upFront, 1, 99)).toBeCloseTo(0.02);
    expect(learningRate(upFront, 1, 100)).toBe(1);
  });

  it('warms up linearly and decays linearly to zero over the tail', () => {
    const cfg = resolveConfig({ steps: 100, lrWarmupSteps: 10, lrDecay: 'linear', lrDecayStart: 0.8 });
    expect(learningRate(cfg, 1, 0)).toBeCloseTo(0.1);
    expect(learningRate(cfg, 1, 9)).toBeCloseTo(1);
    expect(learningRate(cfg, 1, 50)).toBe(1);
    expect(learningRate(cfg, 1, 90)).toBeCloseTo(0.5);
    expect(learningRate(cfg, 1, 99)).toBeCloseTo(0.05);
  });
});

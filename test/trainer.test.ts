import { describe, expect, it } from 'vitest';
import { resolveConfig, learningRate, defaultLr, finetunePhase } from '../src/sae/config.js';
import { Trainer } from '../src/sae/trainer.js';
import { Rng } from '../src/util/rng.js';
import { resumeConfig } from '../src/sae/resume.js';
import { zipfShares } from '../src/sae/capacities.js';

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

/**
 * A Feature Choice trainer on all-positive affinities (positive x, positive W_enc, b_dec = 0, a
 * learning rate too small to change that), so each feature fires on exactly its capacity of tokens
 * and the density counts read the capacities back. Ranks stay the identity (no re-ranking).
 */
function capacityProbe(extra: Record<string, unknown>, dims: { d: number; F: number; B: number }, steps: number) {
  const cfg = resolveConfig({ activation: 'feature', batchSize: dims.B, width: dims.F, steps, lr: 1e-12, bDecInit: 'zero', rankInterval: 10_000, ...extra });
  const t = new Trainer({ cfg, d: dims.d, F: dims.F, deadWindow: dims.B });
  t.init();
  // weights go in through the backend (its state may live on a device)
  const p = t.params;
  t.backend.writeParams({ ...p, WencT: p.WencT.map((v) => Math.abs(v) + 0.01) });
  const rng = new Rng(1);
  const x = new Float32Array(dims.B * dims.d);
  const l0: number[] = [];
  for (let s = 0; s < steps; s++) {
    for (let i = 0; i < x.length; i++) x[i] = 0.1 + Math.abs(rng.normal());
    l0.push(t.trainStep(x).l0 * dims.B);
  }
  return { t, l0, counts: t.featureStats().cumulativeCounts };
}

describe('Feature Choice capacities in training (SPEC §5 "Rounding")', () => {
  const tiny = { d: 4, F: 4, B: 3 };
  const zipfTiny = { k: 2, zipfAlpha: 1, zipfBeta: 0, mMax: 3 };

  it('--capacity-rounding floor reproduces Algorithm 1 exactly (k=2, F=4, B=3, α=1, β=0)', () => {
    // zipf_sum = 25/12, N = 6/(25/12) = 2.88; m = ⌊2.88, 1.44, 0.96, 0.72⌋ = 2, 1, 0, 0 every batch
    const { l0, counts } = capacityProbe({ ...zipfTiny, capacityRounding: 'floor' }, tiny, 5);
    expect(l0).toEqual([3, 3, 3, 3, 3]);
    expect([...counts]).toEqual([10, 5, 0, 0]);
  });

  it('carry (the default) spends the whole budget M = k·B in every batch and stays within one slot of each share', () => {
    const { l0, counts } = capacityProbe(zipfTiny, tiny, 25);
    expect(new Set(l0)).toEqual(new Set([6]));
    // shares 2.88, 1.44, 0.96, 0.72 per batch: after 25 batches 72, 36, 24, 18
    [72, 36, 24, 18].forEach((owed, j) => expect(Math.abs(counts[j] - owed)).toBeLessThan(1));
  });

  it('carry realises uniform capacities when M/F is not whole: every feature fires, each within one slot of T·M/F', () => {
    // k=4, B=64, F=48: M/F = 256/48 = 5.33…
    const { l0, counts } = capacityProbe({ k: 4, capacities: 'uniform' }, { d: 8, F: 48, B: 64 }, 9);
    expect(new Set(l0)).toEqual(new Set([256]));
    for (const c of counts) expect(Math.abs(c - (9 * 256) / 48)).toBeLessThan(1);
  });

  it('resumes Feature Choice bit for bit with credits in flight', () => {
    const cfg = resolveConfig({ activation: 'feature', k: 4, width: F, batchSize: B, steps: 9, seed: 2, rankInterval: 3, lr: 1e-2 });
    const data = batches(13, 9);
    const full = new Trainer({ cfg, d, F, deadWindow: B });
    full.init(data[0]);
    for (const x of data) full.trainStep(x);

    const first = new Trainer({ cfg, d, F, deadWindow: B });
    first.init(data[0]);
    for (const x of data.slice(0, 5)) first.trainStep(x);
    const snap = first.snapshot();
    // credits are in flight: fractional, not all zero
    expect(snap.capacityCredit.some((c) => c !== 0 && !Number.isInteger(c))).toBe(true);
    const second = new Trainer({ cfg, d, F, deadWindow: B, params: { ...first.params, WencT: first.params.WencT.slice(), bEnc: first.params.bEnc.slice(), Wdec: first.params.Wdec.slice(), bDec: first.params.bDec.slice() } });
    second.restore(snap);
    for (const x of data.slice(5)) second.trainStep(x);
    expect(Buffer.from(second.params.Wdec.buffer).equals(Buffer.from(full.params.Wdec.buffer))).toBe(true);
    expect(Buffer.from(second.params.WencT.buffer).equals(Buffer.from(full.params.WencT.buffer))).toBe(true);
    expect(Buffer.from(second.snapshot().capacityCredit.buffer).equals(Buffer.from(full.snapshot().capacityCredit.buffer))).toBe(true);
  });

  it('starts Feature Choice credits from zero after a Mutual Choice phase', () => {
    const cfg = resolveConfig({ activation: 'mutual', steps: 3, phases: [{ activation: 'feature', steps: 1 }], k: 4, width: F, batchSize: B, rankInterval: 100 });
    const t = new Trainer({ cfg, d, F, deadWindow: B });
    const data = batches(4, 4);
    t.init(data[0]);
    for (const x of data.slice(0, 3)) t.trainStep(x);
    expect(t.snapshot().capacityCredit.every((c) => c === 0)).toBe(true);
    t.trainStep(data[3]);
    // one Feature Choice batch from zero: credit = share − capacity for every feature
    const share = zipfShares(4, F, B, cfg.zipfAlpha, cfg.zipfBeta, B).byRank;
    const credit = t.snapshot().capacityCredit;
    for (let j = 0; j < F; j++) expect(share[j] - credit[j]).toBe(Math.round(share[j] - credit[j]));
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

import { describe, expect, it } from 'vitest';
import { Rng } from '../src/util/rng.js';
import { ZIPF_BETA_GRID, densityCurve, densityFits, fitZipf, zipfAt, zipfCurve } from '../src/eval/zipf-fit.js';

/** density of rank r = C·(r + β)^−α, shuffled onto features so the fit must sort them itself */
function zipfDensities(F: number, alpha: number, beta: number, C = 0.3, seed = 1): Float64Array {
  const byRank = Array.from({ length: F }, (_, i) => C * Math.pow(i + 1 + beta, -alpha));
  return Float64Array.from(new Rng(seed).shuffle(Int32Array.from(byRank.keys())), (r) => byRank[r]);
}

describe('Zipf fit of the density curve (SPEC §9)', () => {
  it('recovers α, β and c exactly when β is on the grid, with R² = 1', () => {
    const fit = fitZipf(zipfDensities(2000, 1.3, 6.8));
    expect(fit.beta).toBe(6.8);
    expect(Math.abs(fit.alpha! / 1.3 - 1)).toBeLessThan(1e-6);
    expect(fit.c).toBeCloseTo(Math.log(0.3), 6);
    expect(fit.r2).toBeCloseTo(1, 9);
    expect(fit).toMatchObject({ n: 2000, excludedZeros: 0, rankRange: [1, 2000], note: null });
  });

  it('finds an off-grid β within one grid step', () => {
    const fit = fitZipf(zipfDensities(5000, 0.9, 23.4));
    expect(Math.abs(fit.beta! - 23.4)).toBeLessThanOrEqual(1);
    expect(fit.alpha!).toBeCloseTo(0.9, 1);
    expect(fit.r2!).toBeGreaterThan(0.9999);
  });

  it('reports R² below 1 on noisy densities', () => {
    const rng = new Rng(7);
    const d = zipfDensities(3000, 1, 2).map((v) => v * Math.exp(0.5 * (rng.next() - 0.5)));
    const fit = fitZipf(d);
    expect(fit.r2!).toBeLessThan(0.999);
    expect(fit.r2!).toBeGreaterThan(0.5);
  });

  it('leaves zero densities out of the log fit and counts them', () => {
    const d = Float64Array.from([...zipfDensities(500, 1.1, 3), 0, 0, 0, 0, 0, 0, 0]);
    const fit = fitZipf(d);
    expect(fit).toMatchObject({ n: 500, excludedZeros: 7, rankRange: [1, 507], beta: 3 });
    expect(fit.alpha!).toBeCloseTo(1.1, 9);
  });

  it('explains why there is no fit when every density is zero', () => {
    const fit = fitZipf(new Float64Array(300));
    expect(fit).toMatchObject({ alpha: null, beta: null, c: null, r2: null, n: 0, excludedZeros: 300 });
    expect(fit.note).toMatch(/no fit: 0 features with density > 0/);
  });

  it('fits ranks 100..20,000 only, clipped to the width', () => {
    // a curve that is Zipf with α = 2 from rank 100 on, but flat above it: only the tail fit sees α = 2
    const byRank = Array.from({ length: 3000 }, (_, i) => (i + 1 < 100 ? 1 : Math.pow(i + 1 + 5, -2) * Math.pow(105, 2)));
    const tail = fitZipf(byRank, 100, 20000);
    expect(tail).toMatchObject({ rankRange: [100, 3000], n: 2901, beta: 5 });
    expect(tail.alpha!).toBeCloseTo(2, 9);
    expect(Math.abs(fitZipf(byRank).alpha! - 2)).toBeGreaterThan(0.1);
  });

  it('calls ranks 100..20,000 not applicable below 100 features', () => {
    const fit = fitZipf(zipfDensities(64, 1, 1), 100, 20000);
    expect(fit).toMatchObject({ alpha: null, r2: null, n: 0, rankRange: null });
    expect(fit.note).toMatch(/not applicable: 64 features/);
  });

  it('says so when the best β is at the top of the grid', () => {
    const fit = fitZipf(zipfDensities(2000, 1, 400));
    expect(fit.beta).toBe(100);
    expect(fit.note).toMatch(/top of its grid \(100\)/);
  });

  it('uses a fixed β grid from 0 to 100, fine near 0', () => {
    expect(ZIPF_BETA_GRID[0]).toBe(0);
    expect(ZIPF_BETA_GRID.at(-1)).toBe(100);
    expect(ZIPF_BETA_GRID).toContain(6.8);
    expect(ZIPF_BETA_GRID[1] - ZIPF_BETA_GRID[0]).toBeCloseTo(0.1, 12);
  });
});

// ported from the report's former fit of its own (a log-spaced β grid up to 10⁴): the same
// expectations hold on this grid
describe('the fitted curve `sae report` draws', () => {
  it('recovers α and β of an exact Zipf curve', () => {
    const dens = Array.from({ length: 2000 }, (_, i) => 0.3 * Math.pow(i + 1 + 10, -1.2));
    const f = zipfCurve(fitZipf(dens))!;
    expect(f.alpha).toBeCloseTo(1.2, 1);
    expect(f.beta).toBeGreaterThan(7);
    expect(f.beta).toBeLessThan(14);
    expect(f.r2).toBeGreaterThan(0.999);
    expect(zipfAt(f, 100) / dens[99]).toBeCloseTo(1, 1);
    const mid = zipfCurve(densityFits(dens).ranks100to20000)!;
    expect([mid.rankFrom, mid.rankTo, mid.n]).toEqual([100, 2000, 1901]);
    expect(mid.alpha).toBeCloseTo(1.2, 1);
  });

  it('leaves out zero densities and needs 3 points', () => {
    expect(zipfCurve(fitZipf([0.5, 0.1, 0, 0]))).toBeNull();
    expect(zipfCurve(fitZipf([0.5, 0.2, 0.1, 0]))!.n).toBe(3);
  });

  it('spans the ranks with density > 0', () => {
    const f = zipfCurve(fitZipf([0, 0.5, 0.2, 0.1, 0.05, 0]))!;
    expect([f.rankFrom, f.rankTo, f.n]).toEqual([1, 4, 4]);
  });
});

describe('density curve for JSON', () => {
  it('keeps every rank of a small curve, sorted densest first', () => {
    const c = densityCurve([0.1, 0.5, 0, 0.2]);
    expect(c).toEqual({ ranks: [1, 2, 3, 4], density: [0.5, 0.2, 0.1, 0] });
  });

  it('subsamples a wide curve to at most 512 log-spaced ranks, first and last included', () => {
    const c = densityCurve(zipfDensities(100000, 1, 1));
    expect(c.ranks.length).toBeLessThanOrEqual(512);
    expect(c.ranks.length).toBeGreaterThan(300);
    expect(c.ranks[0]).toBe(1);
    expect(c.ranks.at(-1)).toBe(100000);
    for (let i = 1; i < c.ranks.length; i++) expect(c.ranks[i]).toBeGreaterThan(c.ranks[i - 1]);
    for (let i = 1; i < c.density.length; i++) expect(c.density[i]).toBeLessThanOrEqual(c.density[i - 1]);
  });
});

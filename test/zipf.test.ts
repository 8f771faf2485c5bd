import { describe, expect, it } from 'vitest';
import { UserError } from '../src/util/errors.js';
import { Rng } from '../src/util/rng.js';
import {
  capacitiesByFeature,
  densityRanking,
  dyingFeatures,
  uniformCapacities,
  zipfCapacities,
  zipfExpectedShare,
} from '../src/sae/zipf.js';

const zipf = (i: number, alpha: number, beta: number): number => 1 / Math.pow(i + beta, alpha);

/**
 * Densities by rank whose actual/expected ratio is exactly ratios[i-1] for ranks i ≥ 2: if
 * Σ c_i·Zipf(i) = Σ Zipf(i) the observed total equals the Zipf total, so expected(i) = Zipf(i); rank 1
 * takes whatever c_1 makes that hold.
 */
function densitiesWithRatios(ratios: number[], alpha: number, beta: number): number[] {
  const F = ratios.length;
  let slack = 0;
  for (let i = 2; i <= F; i++) slack += (1 - ratios[i - 1]) * zipf(i, alpha, beta);
  const c = [1 + slack / zipf(1, alpha, beta), ...ratios.slice(1)];
  return c.map((ci, r) => ci * zipf(r + 1, alpha, beta));
}

/** Place densities-by-rank onto features through a permutation, so mask indexing is exercised. */
function scatter(byRank: number[], rng: Rng): { density: Float64Array; featureOfRank: Int32Array } {
  const featureOfRank = rng.shuffle(Int32Array.from(byRank.keys()));
  const density = new Float64Array(byRank.length);
  byRank.forEach((d, r) => (density[featureOfRank[r]] = d));
  return { density, featureOfRank };
}

function dyingRanks(mask: Uint8Array, featureOfRank: Int32Array): number[] {
  const ranks: number[] = [];
  featureOfRank.forEach((j, r) => {
    if (mask[j] === 1) ranks.push(r + 1);
  });
  return ranks;
}

/** Definition 3.1 read literally, each condition on its own. */
function literalDying(density: ArrayLike<number>, alpha: number, beta: number): Set<number> {
  const F = density.length;
  const order = [...Array(F).keys()].sort((a, b) => density[b] - density[a] || a - b);
  let Z = 0;
  let total = 0;
  for (let i = 1; i <= F; i++) Z += zipf(i, alpha, beta);
  for (let j = 0; j < F; j++) total += density[j];
  const underUsed = (i: number): boolean => (total > 0 ? density[order[i - 1]] / ((zipf(i, alpha, beta) / Z) * total) : 0) < 0.6;
  const dying = (i: number): boolean => {
    if (!(i > (3 / 4) * F) || !underUsed(i)) return false;
    for (let j = i + 1; j <= F; j++) if (!dying(j)) return false;
    return true;
  };
  const out = new Set<number>();
  for (let i = 1; i <= F; i++) if (dying(i)) out.add(order[i - 1]);
  return out;
}

describe('zipfCapacities (Algorithm 1)', () => {
  it('matches hand arithmetic for k=2, F=4, B=3, α=1, β=0', () => {
    // zipf_sum = 1 + 1/2 + 1/3 + 1/4 = 25/12; N = 2·3 / (25/12) = 72/25 = 2.88
    // m = floor(2.88/1, 2.88/2, 2.88/3, 2.88/4) = floor(2.88, 1.44, 0.96, 0.72) = 2, 1, 0, 0
    expect([...zipfCapacities(2, 4, 3, 1, 0, 3)]).toEqual([2, 1, 0, 0]);
  });

  it('matches hand arithmetic for k=4, F=4, B=5, α=2, β=0.5', () => {
    // zipf_sum = 4/9 + 4/25 + 4/49 + 4/81 ≈ 0.444444 + 0.16 + 0.081633 + 0.049383 = 0.735460
    // N = 20 / 0.735460 ≈ 27.1939; m_i = N·(i+0.5)^-2 ≈ 12.086, 4.351, 2.220, 1.343 → 12, 4, 2, 1
    expect([...zipfCapacities(4, 4, 5, 2, 0.5, 5 * 100)]).toEqual([12, 4, 2, 1]);
  });

  it('caps every capacity at m_max', () => {
    // same numbers as above with m_max = 5: min(12, 5) = 5
    expect([...zipfCapacities(4, 4, 5, 2, 0.5, 5)]).toEqual([5, 4, 2, 1]);
  });

  it('loses nothing to the floor when every N/(i+β)^α is whole (k=1, F=3, B=13, α=1, β=1)', () => {
    // zipf_sum = 1/2 + 1/3 + 1/4 = 13/12; N = 13 / (13/12) = 12; m = 12/2, 12/3, 12/4 = 6, 4, 3
    expect([...zipfCapacities(1, 3, 13, 1, 1, 13)]).toEqual([6, 4, 3]);
  });

  it('never hands out more than k·B in total', () => {
    const rng = new Rng(21);
    for (let t = 0; t < 300; t++) {
      const k = 1 + rng.int(64);
      const F = 1 + rng.int(2000);
      const B = 1 + rng.int(2000);
      const m = zipfCapacities(k, F, B, 0.2 + 2 * rng.next(), -0.99 + 10 * rng.next(), 1 + rng.int(B));
      expect(m.reduce((s, x) => s + x, 0)).toBeLessThanOrEqual(k * B);
    }
  });

  it('gives denser ranks at least as much capacity as sparser ones', () => {
    const m = zipfCapacities(32, 1000, 1536, 1, 6.8, 1536);
    for (let r = 1; r < m.length; r++) expect(m[r]).toBeLessThanOrEqual(m[r - 1]);
  });

  it.each([
    ['k < 1', () => zipfCapacities(0, 4, 3, 1, 0, 3)],
    ['F < 1', () => zipfCapacities(2, 0, 3, 1, 0, 3)],
    ['B < 1', () => zipfCapacities(2, 4, 0, 1, 0, 3)],
    ['m_max < 1', () => zipfCapacities(2, 4, 3, 1, 0, 0)],
    ['α ≤ 0', () => zipfCapacities(2, 4, 3, 0, 0, 3)],
    ['β ≤ -1', () => zipfCapacities(2, 4, 3, 1, -1, 3)],
    ['non-integer F', () => zipfCapacities(2, 4.5, 3, 1, 0, 3)],
    ['NaN α', () => zipfCapacities(2, 4, 3, NaN, 0, 3)],
  ])('rejects %s with a one-line UserError', (_name, call) => {
    expect(call).toThrow(UserError);
    try {
      call();
    } catch (e) {
      expect((e as Error).message).not.toContain('\n');
    }
  });
});

describe('uniformCapacities', () => {
  it('sums to k·B exactly and differs across features by at most one', () => {
    const rng = new Rng(22);
    for (let t = 0; t < 300; t++) {
      const k = 1 + rng.int(64);
      const B = 1 + rng.int(3000);
      const F = 1 + rng.int(5000);
      const m = uniformCapacities(k, B, F);
      expect(m.reduce((s, x) => s + x, 0)).toBe(k * B);
      expect(Math.max(...m) - Math.min(...m)).toBeLessThanOrEqual(1);
    }
  });

  it('gives the remainder one each to the lowest-index features', () => {
    // M = 1·10 = 10 over 4 features: 2 each, remainder 2 to features 0 and 1
    expect([...uniformCapacities(1, 10, 4)]).toEqual([3, 3, 2, 2]);
  });

  it('is exactly M/F when that is whole', () => {
    expect([...uniformCapacities(2, 6, 3)]).toEqual([4, 4, 4]);
  });

  it('rejects a k·B that is not a whole number', () => {
    expect(() => uniformCapacities(1.5, 3, 2)).toThrow(UserError);
  });
});

describe('zipfExpectedShare', () => {
  it('sums to one', () => {
    const p = zipfExpectedShare(500, 1, 6.8);
    expect(p.reduce((s, x) => s + x, 0)).toBeCloseTo(1, 12);
  });

  it('is proportional to (i+β)^-α', () => {
    const p = zipfExpectedShare(6, 1.5, 2);
    for (let i = 2; i <= 6; i++) expect(p[i - 1] / p[0]).toBeCloseTo(Math.pow((1 + 2) / (i + 2), 1.5), 12);
  });
});

describe('densityRanking and capacitiesByFeature', () => {
  it('ranks densest first and breaks ties by lower feature index', () => {
    expect([...densityRanking([0.1, 0.3, 0.1, 0.5, 0.3])]).toEqual([3, 1, 4, 0, 2]);
  });

  it('places each rank\'s capacity on the feature holding that rank', () => {
    // feature 3 is rank 1, feature 1 rank 2, feature 0 rank 3, feature 2 rank 4
    expect([...capacitiesByFeature(Int32Array.from([9, 5, 2, 1]), Int32Array.from([3, 1, 0, 2]))]).toEqual([2, 5, 1, 9]);
  });
});

describe('dyingFeatures (Definition 3.1)', () => {
  it('marks a bottom-quartile feature under 0.6 of its Zipf expectation (hand case)', () => {
    // F=4, α=1, β=0: only rank 4 is in the bottom quartile (4 > 3). Zipf share of rank 4 is
    // (1/4)/(25/12) = 0.12; total density 0.5+0.25+0.2+0.05 = 1, so expected 0.12 and 0.05/0.12 ≈ 0.42.
    const { mask, count } = dyingFeatures([0.2, 0.05, 0.5, 0.25], 1, 0);
    expect(count).toBe(1);
    expect([...mask]).toEqual([0, 1, 0, 0]);
  });

  it('spares a bottom-quartile feature at or above 0.6 of its expectation (hand case)', () => {
    // as above with rank 4 at 0.08: total 1.03, expected 0.12·1.03 = 0.1236, ratio ≈ 0.65
    expect(dyingFeatures([0.2, 0.08, 0.5, 0.25], 1, 0).count).toBe(0);
  });

  it('spares every feature ranked at or above 3F/4, however under-used', () => {
    // F=8: 3F/4 = 6, so rank 6 is spared and ranks 7, 8 are dying
    const rng = new Rng(23);
    const { density, featureOfRank } = scatter(densitiesWithRatios([1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], 1, 0), rng);
    expect(dyingRanks(dyingFeatures(density, 1, 0).mask, featureOfRank)).toEqual([7, 8]);
  });

  it('marks the whole bottom quartile when every feature there is under-used', () => {
    const ratios = [...Array(9).fill(1), 0.5, 0.4, 0.3];
    const { density, featureOfRank } = scatter(densitiesWithRatios(ratios, 2, 0), new Rng(24));
    expect(dyingRanks(dyingFeatures(density, 2, 0).mask, featureOfRank)).toEqual([10, 11, 12]);
  });

  it('marks nothing when the bottom feature is not under-used, though features above it are', () => {
    // ratios of ranks 10, 11, 12 = 0.5, 0.55, 0.62: only rank 12 fails the ratio test
    const ratios = [...Array(9).fill(1), 0.5, 0.55, 0.62];
    const { density, featureOfRank } = scatter(densitiesWithRatios(ratios, 2, 0), new Rng(25));
    expect(dyingRanks(dyingFeatures(density, 2, 0).mask, featureOfRank)).toEqual([]);
  });

  it('stops at a feature between the bottom and 3F/4 that is not under-used (condition 3 cuts the set)', () => {
    // ratios of ranks 10, 11, 12 = 0.55, 0.62, 0.3: rank 10 passes the ratio test but rank 11 does not
    const ratios = [...Array(9).fill(1), 0.55, 0.62, 0.3];
    const { density, featureOfRank } = scatter(densitiesWithRatios(ratios, 2, 0), new Rng(26));
    expect(dyingRanks(dyingFeatures(density, 2, 0).mask, featureOfRank)).toEqual([12]);
  });

  it('marks nothing when densities follow the Zipf curve exactly', () => {
    for (const [F, alpha, beta] of [
      [4, 1, 0],
      [100, 1, 6.8],
      [1000, 0.7, 2],
      [37, 2.5, -0.5],
    ]) {
      const density = Array.from(zipfExpectedShare(F, alpha, beta), (p) => 0.37 * p);
      expect(dyingFeatures(density, alpha, beta).count).toBe(0);
    }
  });

  it('marks the bottom quartile when nothing has fired at all', () => {
    // all ties: ranks follow feature index, so ranks 7 and 8 are features 6 and 7
    expect([...dyingFeatures(new Float64Array(8), 1, 6.8).mask]).toEqual([0, 0, 0, 0, 0, 0, 1, 1]);
  });

  it('agrees with Definition 3.1 read literally, and the set is a suffix of the ranking', () => {
    const rng = new Rng(27);
    for (let t = 0; t < 300; t++) {
      const F = 1 + rng.int(40);
      const alpha = 0.5 + rng.next();
      const beta = -0.5 + 8 * rng.next();
      const share = zipfExpectedShare(F, alpha, beta);
      // Zipf-like with multiplicative noise heavy enough to push some bottom features under 0.6
      const density = Array.from(share, (p) => p * Math.exp(rng.normal()) * (rng.int(5) === 0 ? 0 : 1));
      const { mask, count } = dyingFeatures(density, alpha, beta);
      const expected = literalDying(density, alpha, beta);
      expect(new Set([...mask.keys()].filter((j) => mask[j] === 1))).toEqual(expected);
      expect(count).toBe(expected.size);
      const order = densityRanking(density);
      for (let r = F - count; r < F; r++) expect(mask[order[r]]).toBe(1);
    }
  });

  it('uses a ranking passed in instead of computing its own', () => {
    const density = [0.2, 0.05, 0.5, 0.25];
    // a caller's stale ranking that puts feature 0 last: its ratio 0.2/0.12 fails, so nothing is dying
    expect(dyingFeatures(density, 1, 0, Int32Array.from([2, 3, 1, 0])).count).toBe(0);
    expect(dyingFeatures(density, 1, 0, densityRanking(density)).count).toBe(1);
  });
});

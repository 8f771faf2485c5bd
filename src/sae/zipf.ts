/**
 * Zipf feature-density model (sections 3.2, 4.3, appendix G): Feature Choice capacities by density
 * rank, the expected density share of each rank, and the dying-feature set of Definition 3.1.
 * Ranks are 1-based in the paper; arrays "by rank" hold rank r at index r − 1.
 */
import { UserError } from '../util/errors.js';

/**
 * Zipf Feature Choice capacities by density rank: Algorithm 1 of appendix G, computed exactly as
 * written (float64, sum in rank order, then floor) so results match the paper's reference.
 */
export function zipfCapacities(k: number, F: number, B: number, alpha: number, beta: number, mMax: number): Int32Array {
  if (!(Number.isFinite(k) && k >= 1)) throw new UserError(`zipf capacities: k must be ≥ 1, got ${k}`);
  checkWhole('F', F);
  checkWhole('batch size B', B);
  checkWhole('m_max', mMax);
  checkZipf(alpha, beta);
  const m = new Int32Array(F);
  const N = (k * B) / zipfSum(F, alpha, beta);
  for (let i = 1; i <= F; i++) {
    // Algorithm 1 line 5: m_i = min(floor(N / (i+β)^α), m_max)
    m[i - 1] = Math.min(Math.floor(N / Math.pow(i + beta, alpha)), mMax);
  }
  return m;
}

/**
 * Uniform Feature Choice (section 4.3): m_j = M/F with M = k·B, indexed by feature. When M/F is not
 * a whole number we floor it and hand the remainder out one each to the lowest-index features, so
 * that Σ m_j = k·B exactly (our decision; the paper only says m = M/F).
 */
export function uniformCapacities(k: number, B: number, F: number): Int32Array {
  if (!(Number.isFinite(k) && k >= 1)) throw new UserError(`uniform capacities: k must be ≥ 1, got ${k}`);
  checkWhole('batch size B', B);
  checkWhole('F', F);
  const M = k * B;
  if (!Number.isSafeInteger(M)) throw new UserError(`uniform capacities: k·B must be a whole number, got ${M}`);
  const base = Math.floor(M / F);
  const extra = M - base * F;
  const m = new Int32Array(F).fill(base);
  for (let j = 0; j < extra; j++) m[j]++;
  return m;
}

/** Zipf(i) normalised to sum to 1 over ranks 1..F (section 4.3, eq. 4): share of firings expected at each rank. */
export function zipfExpectedShare(F: number, alpha: number, beta: number): Float64Array {
  checkWhole('F', F);
  checkZipf(alpha, beta);
  const sum = zipfSum(F, alpha, beta);
  const p = new Float64Array(F);
  for (let i = 1; i <= F; i++) p[i - 1] = 1 / Math.pow(i + beta, alpha) / sum;
  return p;
}

/** order[r] = feature index of density rank r + 1: densest first, ties → lower feature index first. */
export function densityRanking(density: ArrayLike<number>): Int32Array {
  const order = new Int32Array(density.length);
  for (let j = 0; j < order.length; j++) order[j] = j;
  return order.sort((a, b) => density[b] - density[a] || a - b);
}

/** Capacities by rank → capacities by feature index, following a density ranking. */
export function capacitiesByFeature(capByRank: Int32Array, order: Int32Array): Int32Array {
  if (capByRank.length !== order.length) {
    throw new RangeError(`capacitiesByFeature: ${capByRank.length} capacities for ${order.length} ranked features`);
  }
  const cap = new Int32Array(order.length);
  for (let r = 0; r < order.length; r++) cap[order[r]] = capByRank[r];
  return cap;
}

/** Ratio of actual to expected density below which a bottom-quartile feature is dying (Definition 3.1). */
export const DYING_RATIO = 0.6;

/**
 * Dying features (Definition 3.1, SPEC §6). The expected density of rank i is Zipf share(i) × the
 * observed total density. Condition 3 makes the set a suffix of the ranking, so walk up from the
 * bottom rank and stop at the first rank that is not in the bottom quartile or not under-used.
 *
 * With no firings at all the ratio is taken as 0, so the whole bottom quartile is dying: every
 * feature is dead then anyway, and aux_zipf should push on the bottom of the ranking.
 *
 * `order` (from densityRanking) may be passed to share a ranking the caller already holds; mask is by
 * feature index.
 */
export function dyingFeatures(
  density: ArrayLike<number>,
  alpha: number,
  beta: number,
  order?: Int32Array,
): { mask: Uint8Array; count: number } {
  const F = density.length;
  const ranking = order ?? densityRanking(density);
  if (ranking.length !== F) throw new RangeError(`dyingFeatures: ranking of ${ranking.length} for ${F} features`);
  const mask = new Uint8Array(F);
  if (F === 0) return { mask, count: 0 };
  const share = zipfExpectedShare(F, alpha, beta);
  let total = 0;
  for (let j = 0; j < F; j++) total += density[j];
  let count = 0;
  // condition 1, i > 3F/4 (1-based rank), compared in integers
  for (let i = F; 4 * i > 3 * F; i--) {
    const j = ranking[i - 1];
    const expected = share[i - 1] * total;
    const ratio = total > 0 ? density[j] / expected : 0;
    // condition 2; failing it here also ends the suffix (condition 3)
    if (!(ratio < DYING_RATIO)) break;
    mask[j] = 1;
    count++;
  }
  return { mask, count };
}

function zipfSum(F: number, alpha: number, beta: number): number {
  // Algorithm 1 line 2: Σ_{i=1..F} 1/(i+β)^α
  let s = 0;
  for (let i = 1; i <= F; i++) s += 1 / Math.pow(i + beta, alpha);
  return s;
}

function checkWhole(name: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new UserError(`zipf: ${name} must be a whole number ≥ 1, got ${n}`);
}

function checkZipf(alpha: number, beta: number): void {
  if (!(Number.isFinite(alpha) && alpha > 0)) throw new UserError(`zipf: exponent α must be > 0, got ${alpha}`);
  if (!(Number.isFinite(beta) && beta > -1)) throw new UserError(`zipf: bias β must be > -1, got ${beta}`);
}

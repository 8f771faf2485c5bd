/**
 * The one Zipf fit of the sorted feature-density curve (SPEC §9, figure 3 of the paper), which
 * `sae eval` prints and `sae report` draws:
 *
 *   log density(r) = c − α · log(r + β)
 *
 * with r the 1-based density rank (1 = densest). For each β of a fixed grid, c and α are the
 * closed-form least-squares line of log density against log(r + β); the β with the smallest
 * residual sum of squares wins (ties → the smaller β). R² is in log space.
 *
 * Features with density 0 have no logarithm: they are left out of the fit and counted in
 * `excludedZeros`. With fewer than 3 positive densities in the rank range there is no fit; the
 * numbers are null and `note` says why. `note` also flags a β at the top of the grid.
 */

/**
 * The β grid: 0 to 10 in steps of 0.1, then 11 to 100 in steps of 1 (191 values). Fine near 0
 * where the curve's head is sensitive to β (the paper's β = 6.8 is on it, as is English text's
 * 2.7 in its §7.1), coarse above, where a step of 1 moves the fit little; a β at the top is
 * flagged in `note` rather than searched further. Values are i/10 and whole numbers, so they are
 * exact decimals and a printed β reads as the grid point it is.
 */
export const ZIPF_BETA_GRID: readonly number[] = Object.freeze([
  ...Array.from({ length: 101 }, (_, i) => i / 10),
  ...Array.from({ length: 90 }, (_, i) => 11 + i),
]);

export interface ZipfFit {
  /** exponent α (null when there is no fit) */
  alpha: number | null;
  /** rank offset β from ZIPF_BETA_GRID (null when there is no fit) */
  beta: number | null;
  /** intercept c in log density (natural log) */
  c: number | null;
  /** R² of the fit in log space; null when there is no fit or every fitted density is equal */
  r2: number | null;
  /** features fitted (positive density, rank within rankRange) */
  n: number;
  /** features within rankRange left out because their density is 0 */
  excludedZeros: number;
  /** the 1-based ranks fitted, inclusive: [first, last]; null when the range holds no rank */
  rankRange: [number, number] | null;
  /** why there is no fit, or null */
  note: string | null;
}

/**
 * Fit the Zipf curve to densities (any order: they are sorted here, densest first), over ranks
 * `fromRank..toRank` (1-based, inclusive, clipped to the number of features).
 */
export function fitZipf(density: ArrayLike<number>, fromRank = 1, toRank = Infinity): ZipfFit {
  const F = density.length;
  const sorted = Float64Array.from(density).sort().reverse();
  const none = (note: string, rankRange: [number, number] | null, n = 0, excludedZeros = 0): ZipfFit => ({
    alpha: null,
    beta: null,
    c: null,
    r2: null,
    n,
    excludedZeros,
    rankRange,
    note,
  });
  const lo = Math.max(1, fromRank);
  const hi = Math.min(F, toRank);
  if (F < lo) return none(`not applicable: ${F} features, fewer than rank ${lo}`, null);
  const range: [number, number] = [lo, hi];
  const ranks: number[] = [];
  const y: number[] = [];
  let zeros = 0;
  for (let r = lo; r <= hi; r++) {
    const v = sorted[r - 1];
    if (v > 0 && Number.isFinite(v)) {
      ranks.push(r);
      y.push(Math.log(v));
    } else zeros++;
  }
  const n = ranks.length;
  if (n < 3) return none(`no fit: ${n} feature${n === 1 ? '' : 's'} with density > 0 in ranks ${lo}..${hi} (${zeros} never fired); at least 3 are needed`, range, n, zeros);
  let yMean = 0;
  for (const v of y) yMean += v;
  yMean /= n;
  let ssTot = 0;
  for (const v of y) ssTot += (v - yMean) ** 2;
  let best: { alpha: number; beta: number; c: number; ssRes: number } | null = null;
  const x = new Float64Array(n);
  for (const beta of ZIPF_BETA_GRID) {
    let xMean = 0;
    for (let i = 0; i < n; i++) xMean += x[i] = Math.log(ranks[i] + beta);
    xMean /= n;
    let sxx = 0;
    let sxy = 0;
    for (let i = 0; i < n; i++) {
      sxx += (x[i] - xMean) ** 2;
      sxy += (x[i] - xMean) * (y[i] - yMean);
    }
    const slope = sxy / sxx;
    const c = yMean - slope * xMean;
    let ssRes = 0;
    for (let i = 0; i < n; i++) ssRes += (y[i] - c - slope * x[i]) ** 2;
    if (!best || ssRes < best.ssRes) best = { alpha: -slope, beta, c, ssRes };
  }
  const b = best!;
  return {
    alpha: b.alpha,
    beta: b.beta,
    c: b.c,
    r2: ssTot > 0 ? 1 - b.ssRes / ssTot : null,
    n,
    excludedZeros: zeros,
    rankRange: range,
    note:
      ssTot <= 0
        ? 'every fitted density is equal: R² is undefined'
        : b.beta === ZIPF_BETA_GRID[ZIPF_BETA_GRID.length - 1]
          ? `β is at the top of its grid (${b.beta}): the least-squares β may be larger`
          : null,
  };
}

/** SPEC §9 / figure 3: the fit over all features and over ranks 100..20,000. */
export function densityFits(density: ArrayLike<number>): { all: ZipfFit; ranks100to20000: ZipfFit } {
  return { all: fitZipf(density), ranks100to20000: fitZipf(density, 100, 20000) };
}

/** A fit that found a curve, with the first and last ranks it drew on: what a plot of it needs. */
export interface ZipfCurve {
  alpha: number;
  beta: number;
  c: number;
  r2: number | null;
  rankFrom: number;
  rankTo: number;
  n: number;
}

/** The curve a fit found, or null when it found none. */
export function zipfCurve(fit: ZipfFit): ZipfCurve | null {
  if (fit.alpha === null || fit.beta === null || fit.c === null || !fit.rankRange) return null;
  // densities are finite and ≥ 0: sorted densest first, the n positive ones of the range lead it
  const rankFrom = fit.rankRange[0];
  return { alpha: fit.alpha, beta: fit.beta, c: fit.c, r2: fit.r2, rankFrom, rankTo: rankFrom + fit.n - 1, n: fit.n };
}

/** The fitted density at a 1-based rank. */
export function zipfAt(curve: ZipfCurve, rank: number): number {
  return Math.exp(curve.c - curve.alpha * Math.log(rank + curve.beta));
}

/**
 * The sorted density curve at at most `maxPoints` ranks, log-spaced in rank (rank 1 and the last
 * rank always included), for plots and JSON; the full curve is in the per-feature export.
 */
export function densityCurve(density: ArrayLike<number>, maxPoints = 512): { ranks: number[]; density: number[] } {
  const F = density.length;
  const sorted = Float64Array.from(density).sort().reverse();
  const ranks: number[] = [];
  if (F > 0) {
    if (F <= maxPoints) for (let r = 1; r <= F; r++) ranks.push(r);
    else {
      const step = Math.log(F) / (maxPoints - 1);
      for (let i = 0; i < maxPoints; i++) {
        const r = i === maxPoints - 1 ? F : Math.round(Math.exp(i * step));
        if (r !== ranks[ranks.length - 1]) ranks.push(r);
      }
    }
  }
  return { ranks, density: ranks.map((r) => sorted[r - 1]) };
}

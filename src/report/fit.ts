/**
 * Minimal Zipf fit of a sorted feature-density curve (SPEC §9, figure 3):
 * log density = c − α·log(rank + β), least squares in log space over a grid of β with c and α in
 * closed form. Kept isolated so that it can be swapped for the evaluation's own fit.
 */
export interface ZipfFit {
  alpha: number;
  beta: number;
  c: number;
  /** R² in log space over the fitted ranks */
  r2: number;
  /** 1-based ranks fitted (inclusive); only features with density > 0 take part */
  rankFrom: number;
  rankTo: number;
  n: number;
}

/** β grid: 0, then 0.1 … 10⁴ log-spaced; a fit only tries β up to its highest fitted rank (a larger β
 * bends the curve into an exponential, which is not what figure 3 reads). */
export const BETA_GRID: number[] = [0, ...Array.from({ length: 61 }, (_, i) => Math.pow(10, -1 + i / 12))];

/**
 * Fit densities sorted densest first (index 0 = rank 1). Ranks outside [rankFrom, rankTo] and
 * densities ≤ 0 are left out. Null when fewer than 3 points remain.
 */
export function fitZipf(sortedDensity: ArrayLike<number>, opts: { rankFrom?: number; rankTo?: number } = {}): ZipfFit | null {
  const from = Math.max(1, opts.rankFrom ?? 1);
  const to = Math.min(sortedDensity.length, opts.rankTo ?? sortedDensity.length);
  const ranks: number[] = [];
  const ys: number[] = [];
  for (let r = from; r <= to; r++) {
    const v = sortedDensity[r - 1];
    if (v > 0 && Number.isFinite(v)) {
      ranks.push(r);
      ys.push(Math.log(v));
    }
  }
  const n = ys.length;
  if (n < 3) return null;
  const yMean = ys.reduce((a, b) => a + b, 0) / n;
  let ssTot = 0;
  for (const y of ys) ssTot += (y - yMean) ** 2;
  let best: ZipfFit | null = null;
  let bestSse = Infinity;
  for (const beta of BETA_GRID) {
    if (beta > ranks[n - 1]) break;
    // y = c + s·x with x = log(rank + β), s = −α
    let xMean = 0;
    for (const r of ranks) xMean += Math.log(r + beta);
    xMean /= n;
    let sxx = 0;
    let sxy = 0;
    for (let i = 0; i < n; i++) {
      const dx = Math.log(ranks[i] + beta) - xMean;
      sxx += dx * dx;
      sxy += dx * (ys[i] - yMean);
    }
    if (!(sxx > 0)) continue;
    const s = sxy / sxx;
    const c = yMean - s * xMean;
    let sse = 0;
    for (let i = 0; i < n; i++) sse += (ys[i] - c - s * Math.log(ranks[i] + beta)) ** 2;
    if (sse < bestSse) {
      bestSse = sse;
      best = { alpha: -s, beta, c, r2: ssTot > 0 ? 1 - sse / ssTot : 1, rankFrom: ranks[0], rankTo: ranks[n - 1], n };
    }
  }
  return best;
}

/** The fitted density at a 1-based rank. */
export function zipfAt(fit: ZipfFit, rank: number): number {
  return Math.exp(fit.c - fit.alpha * Math.log(rank + fit.beta));
}

import type { FloatArray } from '../util/arrays.js';

export interface RecoveryMetrics {
  /** mean over true features of the best cosine with any learned decoder row */
  meanMaxCos: number;
  /** fraction of true features whose best cosine is ≥ threshold */
  fractionRecovered: number;
  /** mean over learned features of the best cosine with any true feature */
  reverseMeanMaxCos: number;
  /** fraction of learned features whose best cosine with a true feature is ≥ threshold */
  reverseFractionExplained: number;
  threshold: number;
}

function unitRows(a: FloatArray, n: number, d: number): Float64Array {
  const out = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += a[i * d + j] * a[i * d + j];
    // A zero row (e.g. a never-trained feature) has no direction; it stays zero, cosine 0.
    const inv = ss > 0 ? 1 / Math.sqrt(ss) : 0;
    for (let j = 0; j < d; j++) out[i * d + j] = a[i * d + j] * inv;
  }
  return out;
}

/**
 * Feature recovery against a known dictionary (SPEC §11). Cosines are signed: SAE features fire
 * with positive coefficients only, so a decoder row pointing opposite to g_i does not represent
 * feature i. Rows of both matrices are normalised first.
 */
export function featureRecovery(
  G: FloatArray,
  fTrue: number,
  Wdec: FloatArray,
  F: number,
  d: number,
  threshold = 0.9,
): RecoveryMetrics {
  if (G.length < fTrue * d || Wdec.length < F * d) throw new RangeError('featureRecovery: matrix smaller than its declared shape');
  if (fTrue < 1 || F < 1) throw new RangeError('featureRecovery: need at least one feature on each side');
  const g = unitRows(G, fTrue, d);
  const w = unitRows(Wdec, F, d);
  const bestTrue = new Float64Array(fTrue).fill(-Infinity);
  const bestLearned = new Float64Array(F).fill(-Infinity);
  for (let i = 0; i < fTrue; i++) {
    const gi = i * d;
    for (let k = 0; k < F; k++) {
      const wk = k * d;
      let c = 0;
      for (let j = 0; j < d; j++) c += g[gi + j] * w[wk + j];
      if (c > bestTrue[i]) bestTrue[i] = c;
      if (c > bestLearned[k]) bestLearned[k] = c;
    }
  }
  const summarise = (best: Float64Array) => {
    let sum = 0;
    let hit = 0;
    for (const c of best) {
      sum += c;
      if (c >= threshold) hit++;
    }
    return [sum / best.length, hit / best.length];
  };
  const [meanMaxCos, fractionRecovered] = summarise(bestTrue);
  const [reverseMeanMaxCos, reverseFractionExplained] = summarise(bestLearned);
  return { meanMaxCos, fractionRecovered, reverseMeanMaxCos, reverseFractionExplained, threshold };
}

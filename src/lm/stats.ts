/** Summary statistics of a hook's activations [rows × d]: what `sae model run` prints per hook. */
export interface ActivationStats {
  rows: number;
  d: number;
  mean: number;
  std: number;
  min: number;
  max: number;
  /** mean L2 norm of a row (a token's activation vector) */
  meanNorm: number;
}

export function activationStats(x: Float32Array, rows: number, d: number): ActivationStats {
  let sum = 0;
  let sumSq = 0;
  let min = Infinity;
  let max = -Infinity;
  let norms = 0;
  for (let r = 0; r < rows; r++) {
    let sq = 0;
    for (let j = 0; j < d; j++) {
      const v = x[r * d + j];
      sum += v;
      sq += v * v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
    sumSq += sq;
    norms += Math.sqrt(sq);
  }
  const n = rows * d;
  const mean = sum / n;
  return { rows, d, mean, std: Math.sqrt(Math.max(0, sumSq / n - mean * mean)), min, max, meanNorm: norms / rows };
}

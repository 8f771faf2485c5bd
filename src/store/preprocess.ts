import { UserError } from '../util/errors.js';

/**
 * Input normalisations (SPEC §3). `center_unit_norm` is the paper's (section 5); `dataset_scale`
 * is SAELens' `normalize_activations="expected_average_only_in"`; `none` keeps raw activations.
 */
export type Preprocessing = 'center_unit_norm' | 'none' | 'dataset_scale';

export const PREPROCESSINGS: readonly Preprocessing[] = ['center_unit_norm', 'none', 'dataset_scale'];

export function isPreprocessing(s: unknown): s is Preprocessing {
  return typeof s === 'string' && (PREPROCESSINGS as readonly string[]).includes(s);
}

/**
 * Normalise n rows of width d in place.
 *
 * center_unit_norm: x' = (x − mean(x)) / ‖x − mean(x)‖ per row. The mean and norm go to
 * meanOut/normOut when given, so that x_raw = x' · norm + mean. A row that is constant (zero after
 * centring) stays zero with norm 0, which the inverse maps back exactly.
 * dataset_scale: x' = x · scale. none: untouched.
 */
export function preprocessRows(
  x: Float32Array,
  n: number,
  d: number,
  mode: Preprocessing,
  scale?: number,
  meanOut?: Float32Array,
  normOut?: Float32Array,
): void {
  if (x.length < n * d) throw new RangeError(`preprocessRows: buffer holds ${x.length} values, need ${n}×${d}`);
  switch (mode) {
    case 'none':
      return;
    case 'dataset_scale': {
      if (scale === undefined || !Number.isFinite(scale) || scale <= 0) {
        throw new RangeError(`preprocessRows: dataset_scale needs a positive finite scale, got ${scale}`);
      }
      const s = Math.fround(scale);
      for (let i = 0; i < n * d; i++) x[i] *= s;
      return;
    }
    case 'center_unit_norm': {
      for (let r = 0; r < n; r++) {
        const o = r * d;
        // float64 accumulators: a float32 running sum over d=768..4096 loses digits the unit
        // norm then amplifies.
        let sum = 0;
        for (let j = 0; j < d; j++) sum += x[o + j];
        const mean = sum / d;
        let ss = 0;
        for (let j = 0; j < d; j++) {
          const c = x[o + j] - mean;
          ss += c * c;
        }
        const norm = Math.sqrt(ss);
        if (norm > 0) {
          const inv = 1 / norm;
          for (let j = 0; j < d; j++) x[o + j] = (x[o + j] - mean) * inv;
        } else {
          for (let j = 0; j < d; j++) x[o + j] = 0;
        }
        if (meanOut) meanOut[r] = mean;
        if (normOut) normOut[r] = norm;
      }
      return;
    }
    default:
      throw new RangeError(`preprocessRows: unknown preprocessing ${String(mode)}`);
  }
}

/**
 * Map preprocessed rows (typically reconstructions) back to the raw activation space in place:
 * the inverse of preprocessRows given the recorded per-row mean/norm or the dataset scale.
 */
export function unpreprocessRows(
  x: Float32Array,
  n: number,
  d: number,
  mode: Preprocessing,
  scale?: number,
  mean?: ArrayLike<number>,
  norm?: ArrayLike<number>,
): void {
  switch (mode) {
    case 'none':
      return;
    case 'dataset_scale': {
      if (scale === undefined || !Number.isFinite(scale) || scale <= 0) {
        throw new RangeError(`unpreprocessRows: dataset_scale needs a positive finite scale, got ${scale}`);
      }
      const inv = 1 / scale;
      for (let i = 0; i < n * d; i++) x[i] *= inv;
      return;
    }
    case 'center_unit_norm': {
      if (!mean || !norm || mean.length < n || norm.length < n) {
        throw new RangeError('unpreprocessRows: center_unit_norm needs the per-row mean and norm');
      }
      for (let r = 0; r < n; r++) {
        const o = r * d;
        const m = mean[r];
        const s = norm[r];
        for (let j = 0; j < d; j++) x[o + j] = x[o + j] * s + m;
      }
      return;
    }
    default:
      throw new RangeError(`unpreprocessRows: unknown preprocessing ${String(mode)}`);
  }
}

/**
 * Rows the dataset scale is estimated over unless told otherwise (harvest and live training,
 * `--scale-rows`). SAELens averages over ~1000 batches (about 4M tokens); the mean row norm
 * settles long before that (its relative error falls as 1/√contexts), and a harvest holds these
 * rows in memory until the estimate is made: 32768 rows are 100 MB per hook at d = 768.
 */
export const DEFAULT_SCALE_ROWS = 32768;

/**
 * Relative tolerance within which two dataset scales are one: a scale is recorded exactly
 * (String(number) in shard metadata, JSON in cfg.json), so this forgives only a float32 round trip.
 */
export const SCALE_RTOL = 1e-6;

export function sameScale(a: number, b: number): boolean {
  return Math.abs(a - b) <= SCALE_RTOL * Math.max(Math.abs(a), Math.abs(b));
}

/**
 * The dataset scale over the first `limit` raw rows offered (SAELens'
 * `estimated_norm_scaling_factor` convention): sqrt(d) / mean‖x‖. Rows arrive in pieces; those
 * past the limit are ignored, so the estimate depends only on the first `limit` rows of the stream.
 */
export class ScaleEstimator {
  private total = 0;
  /** rows taken so far (at most the limit) */
  rows = 0;

  constructor(
    readonly d: number,
    readonly limit: number,
  ) {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new UserError(`the dataset scale needs at least one row to be estimated over, got ${limit}`);
  }

  get full(): boolean {
    return this.rows >= this.limit;
  }

  /** Take rows of x (n×d) up to the limit; returns how many were taken. */
  add(x: Float32Array, n: number): number {
    const d = this.d;
    const take = Math.min(n, this.limit - this.rows);
    for (let r = 0; r < take; r++) {
      let ss = 0;
      const o = r * d;
      for (let j = 0; j < d; j++) ss += x[o + j] * x[o + j];
      this.total += Math.sqrt(ss);
    }
    this.rows += take;
    return take;
  }

  scale(): number {
    if (this.rows < 1) throw new UserError('cannot estimate the dataset scale from an empty sample');
    const meanNorm = this.total / this.rows;
    if (!(meanNorm > 0) || !Number.isFinite(meanNorm)) {
      throw new UserError(`cannot estimate the dataset scale: mean row norm of the sample is ${meanNorm}`);
    }
    return Math.sqrt(this.d) / meanNorm;
  }
}

/**
 * The constant that makes E‖x‖ = sqrt(d) over a sample of raw rows (SAELens'
 * `estimated_norm_scaling_factor` convention): sqrt(d) / mean‖x‖.
 */
export function datasetScale(sample: Float32Array, n: number, d: number): number {
  if (n < 1) throw new UserError('cannot estimate the dataset scale from an empty sample');
  const e = new ScaleEstimator(d, n);
  e.add(sample, n);
  return e.scale();
}

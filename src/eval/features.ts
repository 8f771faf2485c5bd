import { parquetWriteBuffer } from 'hyparquet-writer';
import type { FloatArray } from '../util/arrays.js';
import { writeFileAtomic } from '../util/atomic.js';
import { UserError } from '../util/errors.js';
import { checkOutFile, FEATURE_COLUMNS } from '../store/outputs.js';
import { densityRanking, dyingFeatures } from '../sae/zipf.js';

/**
 * Per-feature statistics of an evaluation, one row per feature in feature order. Columns (the same
 * names in CSV and Parquet):
 *
 * - feature: index 0..F−1
 * - rank: 1-based density rank (1 = densest; ties → lower feature index first)
 * - density: fraction of evaluated tokens the feature fired on
 * - mean_activation: mean activation over the tokens it fired on (null/empty if it never fired)
 * - max_activation: largest activation (null/empty if it never fired)
 * - decoder_norm: L2 norm of its decoder row
 * - dying: Definition 3.1 over these densities with the checkpoint's Zipf α, β
 * - never_fired: did not fire on any evaluated token
 *
 * (The names are kept with the other outputs' marks: they are how a rerun recognises its table.)
 */
export { FEATURE_COLUMNS };

export interface FeatureTable {
  feature: Int32Array;
  rank: Int32Array;
  density: Float64Array;
  meanActivation: Float64Array;
  maxActivation: Float64Array;
  decoderNorm: Float64Array;
  dying: Uint8Array;
  neverFired: Uint8Array;
  dyingCount: number;
}

export function featureTable(
  density: Float64Array,
  meanActive: Float64Array,
  maxActive: Float64Array,
  Wdec: FloatArray,
  d: number,
  zipf: { alpha: number; beta: number },
): FeatureTable {
  const F = density.length;
  const order = densityRanking(density);
  const rank = new Int32Array(F);
  for (let r = 0; r < F; r++) rank[order[r]] = r + 1;
  const decoderNorm = new Float64Array(F);
  for (let j = 0; j < F; j++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += Wdec[j * d + i] ** 2;
    decoderNorm[j] = Math.sqrt(ss);
  }
  const dying = dyingFeatures(density, zipf.alpha, zipf.beta, order);
  return {
    feature: Int32Array.from({ length: F }, (_, j) => j),
    rank,
    density,
    meanActivation: meanActive,
    maxActivation: maxActive,
    decoderNorm,
    dying: dying.mask,
    neverFired: Uint8Array.from(density, (v) => (v === 0 ? 1 : 0)),
    dyingCount: dying.count,
  };
}

const nullable = (v: number): number | null => (Number.isNaN(v) ? null : v);

export function featuresCsv(t: FeatureTable): string {
  const lines = [FEATURE_COLUMNS.join(',')];
  const num = (v: number) => (Number.isNaN(v) ? '' : String(v));
  for (let j = 0; j < t.feature.length; j++) {
    lines.push(
      [t.feature[j], t.rank[j], t.density[j], num(t.meanActivation[j]), num(t.maxActivation[j]), t.decoderNorm[j], t.dying[j] ? 'true' : 'false', t.neverFired[j] ? 'true' : 'false'].join(','),
    );
  }
  return lines.join('\n') + '\n';
}

export function featuresParquet(t: FeatureTable): Uint8Array {
  const buf = parquetWriteBuffer({
    columnData: [
      { name: 'feature', data: t.feature, type: 'INT32', nullable: false },
      { name: 'rank', data: t.rank, type: 'INT32', nullable: false },
      { name: 'density', data: t.density, type: 'DOUBLE', nullable: false },
      { name: 'mean_activation', data: Array.from(t.meanActivation, nullable), type: 'DOUBLE' },
      { name: 'max_activation', data: Array.from(t.maxActivation, nullable), type: 'DOUBLE' },
      { name: 'decoder_norm', data: t.decoderNorm, type: 'DOUBLE', nullable: false },
      { name: 'dying', data: Array.from(t.dying, (v) => v === 1), type: 'BOOLEAN', nullable: false },
      { name: 'never_fired', data: Array.from(t.neverFired, (v) => v === 1), type: 'BOOLEAN', nullable: false },
    ],
  });
  return new Uint8Array(buf);
}

/** The format a --features-out name asks for, or a one-line error. */
export function featuresFormat(file: string): 'parquet' | 'csv' {
  const lower = file.toLowerCase();
  if (lower.endsWith('.parquet')) return 'parquet';
  if (lower.endsWith('.csv')) return 'csv';
  throw new UserError(`--features-out ${file}: the name must end in .parquet or .csv`);
}

export async function writeFeatures(file: string, t: FeatureTable): Promise<void> {
  await writeFileAtomic(file, featuresFormat(file) === 'parquet' ? featuresParquet(t) : featuresCsv(t));
}

/**
 * Check, before any work (and again just before writing), that --features-out can be written: a
 * known format in an existing folder, and not someone else's file (an earlier feature table, CSV
 * header or Parquet columns ours, may be replaced; anything else needs --force).
 */
export async function checkFeaturesOut(file: string, force = false): Promise<void> {
  featuresFormat(file);
  await checkOutFile(file, '--features-out', 'eval', force);
}

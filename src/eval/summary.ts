/**
 * The `sae-eval/1` object: what `sae eval` prints and what a run's `eval.json` holds, built in one
 * place so that the demo (which saves it next to its runs for the report) and the command agree.
 */
import { openSae, type Sae } from '../sae/sae.js';
import { DEFAULTS } from '../sae/config.js';
import type { ShardSet } from '../store/shard-set.js';
import type { KernelFactory } from '../kernels/types.js';
import { writeFileAtomic } from '../util/atomic.js';
import { evaluateSae, type EvalResult } from './evaluate.js';
import { featureTable, type FeatureTable } from './features.js';
import { densityCurve, densityFits, ZIPF_BETA_GRID } from './zipf-fit.js';
import * as path from 'node:path';

export const EVAL_SCHEMA = 'sae-eval/1';

/** The Zipf prior Definition 3.1 uses: the SAE's own, or the defaults for one without a training config. */
export function dyingPrior(sae: Sae): { alpha: number; beta: number; source: string } {
  if (!sae.trainConfig) return { alpha: DEFAULTS.zipfAlpha, beta: DEFAULTS.zipfBeta, source: 'default' };
  return { alpha: sae.trainConfig.zipfAlpha, beta: sae.trainConfig.zipfBeta, source: 'checkpoint' };
}

export function evalSummary(
  sae: Sae,
  res: EvalResult,
  opts: { data: string; batchSize: number; featuresOut?: string | null },
): { json: Record<string, unknown>; table: FeatureTable } {
  const zipf = dyingPrior(sae);
  const table = featureTable(res.density, res.meanActive, res.maxActive, sae.params.Wdec, sae.d, zipf);
  const F = sae.F;
  const json: Record<string, unknown> = {
    schema: EVAL_SCHEMA,
    checkpoint: sae.dir,
    data: opts.data,
    architecture: sae.cfg.architecture,
    d: sae.d,
    width: F,
    // the arithmetic of this evaluation, and of the training it measures (a record: either evaluates any SAE)
    precision: res.precision,
    trainedPrecision: sae.trainedPrecision,
    rows: res.rows,
    l0: res.l0,
    l0Histogram: res.l0Histogram,
    mse: res.mse,
    fvu: res.fvu,
    explainedVariance: 1 - res.fvu,
    batchSize: opts.batchSize,
    batches: res.batches,
    lastBatchRows: res.lastBatchRows,
    // not training's "dead" (no firing in its last deadWindow tokens): never fired on these rows
    neverFiredFraction: res.neverFiredFraction,
    neverFiredWindowTokens: res.rows,
    dyingFraction: table.dyingCount / F,
    dyingZipf: zipf,
    densityCurve: densityCurve(res.density),
    zipfFit: {
      betaGrid: { from: ZIPF_BETA_GRID[0], to: ZIPF_BETA_GRID[ZIPF_BETA_GRID.length - 1], points: ZIPF_BETA_GRID.length },
      ...densityFits(res.density),
    },
    featuresOut: opts.featuresOut ?? null,
  };
  return { json, table };
}

/**
 * Evaluate a run's final weights on shards and save the result as `RUN/eval.json`, the file `sae
 * report` reads its features-per-token figure and L0/FVU from when it is given no --data.
 */
export async function saveRunEval(
  runDir: string,
  set: ShardSet,
  opts: { data: string; maxRows?: number; kernels?: KernelFactory },
): Promise<Record<string, unknown>> {
  const sae = await openSae(runDir);
  sae.checkData(set.meta);
  const res = await evaluateSae(sae.params, set, sae.selection(), { batchSize: sae.batchSize, maxRows: opts.maxRows, kernels: opts.kernels });
  const { json } = evalSummary(sae, res, { data: opts.data, batchSize: sae.batchSize });
  await writeFileAtomic(path.join(runDir, 'eval.json'), JSON.stringify(json) + '\n');
  return json;
}

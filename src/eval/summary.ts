/**
 * The `sae-eval/1` object: what `sae eval` prints and what a run's `eval.json` holds, built in one
 * place so that the demo (which saves it next to its runs for the report) and the command agree.
 */
import type { LoadedCheckpoint } from '../sae/checkpoint.js';
import { checkpointConfig } from '../sae/checkpoint.js';
import { DEFAULTS } from '../sae/config.js';
import { findCheckpoint } from '../sae/checkpoint.js';
import { loadCheckpoint } from '../sae/checkpoint.js';
import { selectionForCheckpoint } from '../sae/inference.js';
import { checkCompatible, type ShardSet } from '../store/reader.js';
import type { Preprocessing } from '../store/preprocess.js';
import type { KernelFactory } from '../kernels/types.js';
import { writeFileAtomic } from '../util/atomic.js';
import { evaluateSae, type EvalResult } from './evaluate.js';
import { featureTable, type FeatureTable } from './features.js';
import { densityCurve, fitZipf, ZIPF_BETA_GRID } from './zipf-fit.js';
import * as path from 'node:path';

export const EVAL_SCHEMA = 'sae-eval/1';

/** The Zipf prior Definition 3.1 uses: the checkpoint's own, or the defaults for one without a training config. */
export function dyingPrior(ck: LoadedCheckpoint): { alpha: number; beta: number; source: string } {
  if (!ck.cfg.sae_train) return { alpha: DEFAULTS.zipfAlpha, beta: DEFAULTS.zipfBeta, source: 'default' };
  const c = checkpointConfig(ck);
  return { alpha: c.zipfAlpha, beta: c.zipfBeta, source: 'checkpoint' };
}

/** The training batch size: batch selections are evaluated in batches of it. */
export function trainingBatchSize(ck: LoadedCheckpoint): number {
  return (ck.cfg.sae_train?.config?.batchSize as number | undefined) ?? 1536;
}

export function evalSummary(
  ck: LoadedCheckpoint,
  res: EvalResult,
  opts: { data: string; batchSize: number; featuresOut?: string | null },
): { json: Record<string, unknown>; table: FeatureTable } {
  const zipf = dyingPrior(ck);
  const table = featureTable(res.density, res.meanActive, res.maxActive, ck.params.Wdec, ck.cfg.d_in, zipf);
  const F = ck.cfg.d_sae;
  const json: Record<string, unknown> = {
    schema: EVAL_SCHEMA,
    checkpoint: ck.dir,
    data: opts.data,
    architecture: ck.cfg.architecture,
    d: ck.cfg.d_in,
    width: F,
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
      all: fitZipf(res.density),
      ranks100to20000: fitZipf(res.density, 100, 20000),
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
  const ck = await loadCheckpoint(await findCheckpoint(runDir), { withState: 'if-present' });
  checkCompatible(set.meta, { d: ck.cfg.d_in, hook: ck.cfg.hook_name, model: ck.cfg.model_name, preprocessing: ck.cfg.normalize_activations as Preprocessing });
  const batchSize = trainingBatchSize(ck);
  const res = await evaluateSae(ck.params, set, selectionForCheckpoint(ck), { batchSize, maxRows: opts.maxRows, kernels: opts.kernels });
  const { json } = evalSummary(ck, res, { data: opts.data, batchSize });
  await writeFileAtomic(path.join(runDir, 'eval.json'), JSON.stringify(json) + '\n');
  return json;
}

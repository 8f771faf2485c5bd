import type { KernelFactory, SaeParams, Selection } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { BatchStream, type ShardSet } from '../store/reader.js';
import { UserError } from '../util/errors.js';
import { allocCodes } from './selection.js';
import { capacitiesByFeature, uniformCapacities, zipfCapacities } from './zipf.js';
import { phaseOfStep } from './config.js';
import { checkpointConfig, type LoadedCheckpoint } from './checkpoint.js';

/**
 * The batch selection a checkpoint runs with at inference (appendix B: batch inference exactly as
 * in training), or its JumpReLU thresholds once exported.
 */
export function selectionForCheckpoint(ck: LoadedCheckpoint): (B: number) => Selection {
  const F = ck.cfg.d_sae;
  if (ck.threshold) {
    const threshold = ck.threshold;
    return () => ({ kind: 'jumprelu', threshold });
  }
  if (!ck.cfg.sae_train) throw new UserError(`checkpoint ${ck.dir}: no training config and no thresholds; cannot tell its activation`);
  const cfg = checkpointConfig(ck);
  // the activation of the phase the weights were last trained in, not the last phase configured
  const act = phaseOfStep(cfg, ck.cfg.sae_train.step).activation;
  switch (act) {
    case 'topk':
      return () => ({ kind: 'topk', k: cfg.k });
    case 'mutual':
    case 'batchtopk':
      return (B) => ({ kind: 'mutual', M: cfg.k * B });
    case 'relu':
      return () => ({ kind: 'relu' });
    case 'feature': {
      const order = ck.state?.snapshot.order ?? Int32Array.from({ length: F }, (_, i) => i);
      return (B) => ({
        kind: 'feature',
        capacity:
          cfg.capacities === 'uniform'
            ? uniformCapacities(cfg.k, B, F)
            : capacitiesByFeature(zipfCapacities(cfg.k, F, B, cfg.zipfAlpha, cfg.zipfBeta, cfg.mMax > 0 ? Math.min(cfg.mMax, B) : B), order),
      });
    }
    default:
      throw new UserError(`checkpoint ${ck.dir}: activation ${act} has no batch selection`);
  }
}

export interface Calibration {
  /** per-feature JumpReLU thresholds θ_j */
  threshold: Float32Array;
  /** one BatchTopK-style global threshold */
  globalThreshold: number;
  batches: number;
  /** mean active features per token under the batch selection on the calibration rows */
  batchL0: number;
}

/**
 * Appendix B / SPEC §5: thresholds for single-token inference from batch selections. For each
 * calibration batch, feature j's cut is the smallest affinity it was selected with; θ_j is the mean
 * cut over the batches where j was selected (features never selected get the global threshold),
 * and the global threshold is the mean of the batches' smallest selected affinity (the BatchTopK
 * rule). Expected L0 should then match training; `sae eval` on the export measures it.
 */
export async function calibrateThresholds(
  p: SaeParams,
  set: ShardSet,
  selectionFor: (B: number) => Selection,
  opts: { batchSize: number; batches: number; seed?: number; kernels?: KernelFactory },
): Promise<Calibration> {
  const { d, F } = p;
  const B = Math.min(opts.batchSize, set.rows);
  const k = (opts.kernels ?? createReferenceKernels)({ d, F, maxB: B });
  const stream = new BatchStream(set, { batchSize: B, windowRows: Math.max(B, 16 * B), seed: opts.seed ?? 0, loop: false });
  const x = new Float32Array(B * d);
  const enc = { xc: new Float32Array(B * d), codes: allocCodes(B, B * 64), aux: [] };
  const sum = new Float64Array(F);
  const hits = new Float64Array(F);
  const batchMin = new Float64Array(F);
  let globalSum = 0;
  let n = 0;
  let nnz = 0;
  while (n < opts.batches && (await stream.next(x))) {
    k.encodeSelect(p, x, B, selectionFor(B), [], enc);
    const c = enc.codes;
    batchMin.fill(Infinity);
    let gmin = Infinity;
    for (let e = 0; e < c.nnz; e++) {
      const j = c.index[e];
      const v = c.value[e];
      if (v < batchMin[j]) batchMin[j] = v;
      if (v < gmin) gmin = v;
    }
    for (let j = 0; j < F; j++) {
      if (batchMin[j] === Infinity) continue;
      sum[j] += batchMin[j];
      hits[j]++;
    }
    if (gmin < Infinity) globalSum += gmin;
    nnz += c.nnz;
    n++;
  }
  if (n === 0) throw new UserError('no calibration batch could be read; lower --batch-size');
  const globalThreshold = globalSum / n;
  const threshold = new Float32Array(F);
  for (let j = 0; j < F; j++) threshold[j] = hits[j] > 0 ? sum[j] / hits[j] : globalThreshold;
  return { threshold, globalThreshold, batches: n, batchL0: nnz / (n * B) };
}

import type { KernelFactory, SaeParams, Selection } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { BatchStream } from '../stream/batch-stream.js';
import type { ShardSet } from '../store/shard-set.js';
import { UserError } from '../util/errors.js';
import { allocCodes } from '../kernels/selection.js';
import type { CarriedCapacities } from './capacities.js';
import { phaseOfStep, TRAINABLE } from './config.js';
import { checkpointConfig, type LoadedCheckpoint } from './checkpoint.js';
import { batchSelection, carriedCapacities, identityOrder } from './selection-policy.js';

/**
 * The batch selection a checkpoint runs with at inference (appendix B: batch inference exactly as
 * in training), or its JumpReLU thresholds once exported. Each call gives a fresh source: Feature
 * Choice's carried credits start from zero for each pass over data.
 */
export function selectionForCheckpoint(ck: LoadedCheckpoint): (B: number) => Selection {
  const F = ck.cfg.d_sae;
  if (ck.threshold) {
    const threshold = ck.threshold;
    return () => ({ kind: 'jumprelu', threshold });
  }
  if (!ck.cfg.sae_train) {
    // a foreign SAE (./formats): its architecture says how it selects
    const k = ck.cfg.activation_fn_kwargs?.k;
    if (ck.cfg.architecture === 'topk' && Number.isInteger(k) && k > 0) return () => ({ kind: 'topk', k });
    if (ck.cfg.architecture === 'relu') return () => ({ kind: 'relu' });
    throw new UserError(`checkpoint ${ck.dir}: no training config and no thresholds; cannot tell its activation`);
  }
  const cfg = checkpointConfig(ck);
  // the activation of the phase the weights were last trained in, not the last phase configured
  const act = phaseOfStep(cfg, ck.cfg.sae_train.step).activation;
  if (!TRAINABLE.includes(act)) throw new UserError(`checkpoint ${ck.dir}: activation ${act} has no batch selection`);
  const byIndex = identityOrder(F);
  const fc = { order: ck.state?.snapshot.order ?? byIndex, byIndex, carried: null as CarriedCapacities | null, capacity: new Int32Array(F) };
  const carry = act === 'feature' && cfg.capacityRounding === 'carry';
  let carriedB = 0;
  return (B) => {
    // SPEC §5 "Rounding": each call is one batch; shares are realised in expectation over the
    // batches evaluated, from zero credit (a batch of another size starts afresh)
    if (carry && carriedB !== B) {
      fc.carried = carriedCapacities(cfg, F, B);
      carriedB = B;
    }
    return batchSelection(act, cfg, F, B, fc)!; // every TRAINABLE activation has one
  };
}

export interface Calibration {
  /** per-feature JumpReLU thresholds θ_j */
  threshold: Float32Array;
  /** one BatchTopK-style global threshold */
  globalThreshold: number;
  batches: number;
  /** mean active features per token under the batch selection on the calibration rows */
  batchL0: number;
  /** per feature, the fraction of calibration tokens the batch selection chose it on */
  density: Float32Array;
}

/**
 * Appendix B / SPEC §5: thresholds for single-token inference from batch selections, so that the
 * expected L0 matches training.
 * - per feature: θ_j is the (n_j+1)-th largest affinity of feature j over the calibration tokens,
 *   n_j the number of times the batch selection chose j there, so that z'_j > θ_j fires exactly as
 *   often as in training on those tokens (ties aside). Found in a second pass with a Feature Choice
 *   selection of capacity n_j+1 per batch: a feature's overall top n_j+1 lie in its per-batch tops.
 * - global (the BatchTopK rule): the mean over batches of the batch selection's cut, i.e. its
 *   smallest selected affinity (0 when the selection took every positive entry).
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
  const streamOpts = { batchSize: B, windowRows: Math.max(B, 16 * B), seed: opts.seed ?? 0, loop: false };
  const x = new Float32Array(B * d);
  const enc = { xc: new Float32Array(B * d), codes: allocCodes(B, B * 64), aux: [] };
  const fired = new Float64Array(F);
  let globalSum = 0;
  let n = 0;
  let nnz = 0;
  let stream = new BatchStream(set, streamOpts);
  while (n < opts.batches && (await stream.next(x))) {
    const sel = selectionFor(B);
    k.encodeSelect(p, x, B, sel, [], enc);
    const c = enc.codes;
    let gmin = Infinity;
    for (let e = 0; e < c.nnz; e++) {
      fired[c.index[e]]++;
      if (c.value[e] < gmin) gmin = c.value[e];
    }
    // a selection that did not use its whole budget took every positive entry: its cut was 0
    if (sel.kind === 'mutual' && c.nnz < sel.M) gmin = 0;
    if (gmin < Infinity) globalSum += gmin;
    nnz += c.nnz;
    n++;
  }
  if (n === 0) throw new UserError('no calibration batch could be read; lower --batch-size');

  // second pass over the same batches: each feature's n_j+1 largest affinities
  const want = new Int32Array(F);
  for (let j = 0; j < F; j++) want[j] = Math.min(fired[j] + 1, n * B);
  const perBatch = Int32Array.from(want, (w) => Math.min(w, B));
  const top: number[][] = Array.from({ length: F }, () => []);
  stream = new BatchStream(set, streamOpts);
  for (let b = 0; b < n && (await stream.next(x)); b++) {
    k.encodeSelect(p, x, B, { kind: 'feature', capacity: perBatch }, [], enc);
    const c = enc.codes;
    for (let e = 0; e < c.nnz; e++) top[c.index[e]].push(c.value[e]);
    for (let j = 0; j < F; j++) {
      if (top[j].length > 2 * want[j]) top[j] = top[j].sort((u, v) => v - u).slice(0, want[j]);
    }
  }
  const threshold = new Float32Array(F);
  for (let j = 0; j < F; j++) {
    const vals = top[j].sort((u, v) => v - u);
    // fewer positive affinities than n_j+1: every positive one fires, as in the batch selection
    threshold[j] = vals.length >= want[j] ? vals[want[j] - 1] : 0;
  }
  const density = Float32Array.from(fired, (f) => f / (n * B));
  return { threshold, globalThreshold: globalSum / n, batches: n, batchL0: nnz / (n * B), density };
}

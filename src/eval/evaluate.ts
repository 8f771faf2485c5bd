import type { KernelFactory, SaeParams, Selection } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { allocCodes } from '../kernels/selection.js';
import { BatchStream } from '../stream/batch-stream.js';
import type { ShardSet } from '../store/shard-set.js';
import { UserError } from '../util/errors.js';
import type { Precision } from '../kernels/bf16.js';

export interface EvalResult {
  /** the arithmetic of the encoder GEMM: the kernels' (docs/precision.md) */
  precision: Precision;
  rows: number;
  /** mean active features per token (SPEC §9) */
  l0: number;
  /** histogram of active features per token: counts[n] = tokens with n active (last bin = ≥ len-1) */
  l0Histogram: number[];
  mse: number;
  /** Σ‖x−x̂‖² / Σ‖x−mean(x)‖² over all evaluated rows */
  fvu: number;
  /**
   * fraction of features that never fired on the evaluated rows (SPEC §9: evaluation's dead window
   * is the evaluated tokens; training's "dead" uses its own window of recent tokens)
   */
  neverFiredFraction: number;
  /** batches evaluated; the last one holds lastBatchRows rows (≤ the batch size) */
  batches: number;
  lastBatchRows: number;
  /** firing frequency per feature, in feature order */
  density: Float64Array;
  /** per feature: mean activation over the tokens it fired on (NaN when it never fired) */
  meanActive: Float64Array;
  /** per feature: largest activation on the evaluated rows (NaN when it never fired) */
  maxActive: Float64Array;
}

/**
 * Batch evaluation of an SAE on shards (SPEC §9) with the selection it was trained with, applied in
 * batches exactly as in training (appendix B's batch inference). `kernels` (default: the fp32
 * reference kernels) set the precision: kernelFactory(name, 'bf16') evaluates in bf16, whatever
 * precision the SAE was trained at.
 */
export async function evaluateSae(
  p: SaeParams,
  set: ShardSet,
  selectionFor: (B: number) => Selection,
  opts: { batchSize: number; maxRows?: number; kernels?: KernelFactory; seed?: number },
): Promise<EvalResult> {
  const { d, F } = p;
  if (set.meta.d !== d) throw new UserError(`shards have d=${set.meta.d} but the SAE expects d=${d}`);
  const B = Math.min(opts.batchSize, set.rows);
  if (B < 1) throw new UserError('no rows to evaluate');
  const k = (opts.kernels ?? createReferenceKernels)({ d, F, maxB: B });
  const stream = new BatchStream(set, { batchSize: B, windowRows: B, seed: opts.seed ?? 0, loop: false });
  const x = new Float32Array(B * d);
  const xhat = new Float32Array(B * d);
  const enc = { xc: new Float32Array(B * d), codes: allocCodes(B, B * 64), aux: [] };
  const fired = new Float64Array(F);
  const actSum = new Float64Array(F);
  const actMax = new Float64Array(F).fill(-Infinity);
  const hist = new Array<number>(129).fill(0);
  const maxRows = opts.maxRows ?? Infinity;
  let rows = 0;
  let sse = 0;
  // FVU needs Σ‖x − mean‖² over everything evaluated: accumulate Σx and Σ‖x‖² in float64
  const sum = new Float64Array(d);
  let sumSq = 0;
  let batches = 0;
  let lastBatchRows = 0;
  // every row counts, the last partial batch included: it is selected as a batch of its own size
  for (;;) {
    const n = Math.min(await stream.nextRows(x), maxRows - rows);
    if (n <= 0) break;
    k.encodeSelect(p, x, n, selectionFor(n), [], enc);
    k.decode(p, enc.codes, xhat, true);
    for (let i = 0; i < n * d; i++) {
      sse += (x[i] - xhat[i]) ** 2;
      sumSq += x[i] * x[i];
      sum[i % d] += x[i];
    }
    const c = enc.codes;
    for (let b = 0; b < n; b++) {
      const active = c.rowPtr[b + 1] - c.rowPtr[b];
      hist[Math.min(active, hist.length - 1)]++;
    }
    for (let e = 0; e < c.nnz; e++) {
      const j = c.index[e];
      const v = c.value[e];
      fired[j]++;
      actSum[j] += v;
      if (v > actMax[j]) actMax[j] = v;
    }
    rows += n;
    batches++;
    lastBatchRows = n;
  }
  if (rows === 0) throw new UserError('no rows to evaluate');
  let meanSq = 0;
  for (let i = 0; i < d; i++) meanSq += (sum[i] / rows) ** 2;
  const variance = sumSq - rows * meanSq;
  let nnz = 0;
  let dead = 0;
  for (let j = 0; j < F; j++) {
    nnz += fired[j];
    if (fired[j] === 0) {
      dead++;
      actSum[j] = NaN;
      actMax[j] = NaN;
    } else actSum[j] /= fired[j];
    fired[j] /= rows;
  }
  while (hist.length > 1 && hist[hist.length - 1] === 0) hist.pop();
  return { precision: k.precision ?? 'fp32', rows, l0: nnz / rows, l0Histogram: hist, mse: sse / rows, fvu: variance > 0 ? sse / variance : sse > 0 ? Infinity : 0, neverFiredFraction: dead / F, density: fired, meanActive: actSum, maxActive: actMax, batches, lastBatchRows };
}

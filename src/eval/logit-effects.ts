/**
 * What a feature writes to the logits (issue 20): its decoder row through the final LayerNorm's
 * scale and the unembedding, e_j = (W_dec[j] ⊙ γ_f) · W_Uᵀ, the direct effect on every output
 * token's logit. LayerNorm's centring and its 1/σ are left out as SAE-Vis and Neuronpedia leave
 * them out: σ is a positive per-token scalar that rescales every logit alike, so the ranking of
 * promoted and suppressed tokens does not depend on it.
 *
 * One GEMM per block of features through the LM's own kernels (F × d × V: 0.9 TFLOP for GPT-2
 * small and 24,576 features), keeping only each row's n largest and n smallest entries.
 */
import type { LmKernels } from '../kernels/lm-types.js';

export interface LogitEffects {
  n: number;
  /** [F × n] token ids and effects, largest first */
  promotedIds: Int32Array;
  promoted: Float32Array;
  /** [F × n] token ids and effects, most negative first */
  suppressedIds: Int32Array;
  suppressed: Float32Array;
}

/**
 * Wdec [F × d], lnScale [d] (γ of the final LayerNorm), unembed: the model's W_U, [Vrows × d]
 * ('out_in', as stored) or [d × Vrows] ('in_out', what the LM's own unembedding GEMM packs
 * fastest); only ids < V (the tokenizer's vocabulary: Pythia pads its rows) are ranked.
 */
export function logitEffects(
  kernels: LmKernels,
  Wdec: ArrayLike<number>,
  F: number,
  d: number,
  lnScale: Float32Array,
  unembed: Float32Array,
  layout: 'in_out' | 'out_in',
  Vrows: number,
  V: number,
  n: number,
  block = 256,
): LogitEffects {
  const keep = Math.min(n, V, Vrows);
  const out: LogitEffects = {
    n: keep,
    promotedIds: new Int32Array(F * keep),
    promoted: new Float32Array(F * keep),
    suppressedIds: new Int32Array(F * keep),
    suppressed: new Float32Array(F * keep),
  };
  const x = new Float32Array(block * d);
  const y = new Float32Array(block * Vrows);
  for (let j0 = 0; j0 < F; j0 += block) {
    const b = Math.min(block, F - j0);
    for (let r = 0; r < b; r++) for (let i = 0; i < d; i++) x[r * d + i] = Wdec[(j0 + r) * d + i] * lnScale[i];
    kernels.linear(x.subarray(0, b * d), b, d, unembed, Vrows, layout, null, y.subarray(0, b * Vrows));
    // ids the model has no row for (a tokenizer's added tokens) have no logit to rank
    for (let r = 0; r < b; r++) extremes(y.subarray(r * Vrows, r * Vrows + Math.min(V, Vrows)), keep, out, (j0 + r) * keep);
  }
  return out;
}

/** The `keep` largest and smallest entries of row (ties: lower id first), by insertion into two sorted lists. */
function extremes(row: Float32Array, keep: number, out: LogitEffects, at: number): void {
  const hiV = new Float64Array(keep).fill(-Infinity);
  const hiI = new Int32Array(keep).fill(-1);
  const loV = new Float64Array(keep).fill(Infinity);
  const loI = new Int32Array(keep).fill(-1);
  for (let t = 0; t < row.length; t++) {
    const v = row[t];
    if (v > hiV[keep - 1]) {
      let i = keep - 1;
      while (i > 0 && hiV[i - 1] < v) {
        hiV[i] = hiV[i - 1];
        hiI[i] = hiI[i - 1];
        i--;
      }
      hiV[i] = v;
      hiI[i] = t;
    }
    if (v < loV[keep - 1]) {
      let i = keep - 1;
      while (i > 0 && loV[i - 1] > v) {
        loV[i] = loV[i - 1];
        loI[i] = loI[i - 1];
        i--;
      }
      loV[i] = v;
      loI[i] = t;
    }
  }
  out.promotedIds.set(hiI, at);
  out.promoted.set(hiV, at);
  out.suppressedIds.set(loI, at);
  out.suppressed.set(loV, at);
}

import type { KernelFactory, SaeParams, Selection } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { allocCodes } from '../kernels/selection.js';
import { preprocessRows, type Preprocessing } from '../store/preprocess.js';
import { UserError } from '../util/errors.js';
import type { HookedTransformer } from '../lm/model.js';

export interface SpliceSae {
  label: string;
  params: SaeParams;
  /** the selection for a batch of B rows (batch-dependent selections use the training batch size) */
  selectionFor: (B: number) => Selection;
  /** rows per SAE batch */
  batchSize: number;
  /** how the SAE's inputs were preprocessed (checkpoint normalize_activations) */
  preprocessing: Preprocessing;
  /** dataset_scale's factor (cfg.json dataset_scale), required with it: x' = x · scale in, x̂ / scale out */
  scale?: number;
}

/** The final normalized residual of a run: [n×d], or one row [1×d] shared by every position. */
export interface RunOutput {
  normed: Float32Array;
  broadcast: boolean;
}

/** testing: replace the reconstruction by a function of the raw activations */
export type ReconstructOverride = (x: Float32Array, n: number, d: number) => void;

/**
 * The runs of the host LM that differ from the clean one at the hook: with an SAE's reconstruction
 * spliced in, or the activation ablated. Each continues the clean run from the hook (its prefix is
 * shared at a residual-stream hook) and returns the final normalized residual.
 */
/** What an SAE's reconstructions on the spliced rows came to, in its own (preprocessed) space. */
export interface ReconStats {
  rows: number;
  /** active features summed over the rows */
  nnz: number;
  /** Σ‖x' − x̂'‖² */
  sse: number;
  /** Σ x' per dimension and Σ‖x'‖², for the variance in FVU */
  sum: Float64Array;
  sumSq: number;
}

/** L0 and FVU of ReconStats (FVU = Σ‖x' − x̂'‖² / Σ‖x' − x̄'‖², as sae eval computes it). */
export function reconSummary(s: ReconStats): { l0: number; fvu: number } {
  let mean2 = 0;
  for (const v of s.sum) mean2 += v * v;
  const variance = s.sumSq - mean2 / Math.max(s.rows, 1);
  return { l0: s.rows ? s.nnz / s.rows : NaN, fvu: variance > 0 ? s.sse / variance : NaN };
}

export class SpliceRunner {
  /** per SAE, its reconstructions' L0 and FVU on every row it reconstructed */
  readonly stats: ReconStats[];
  private readonly d: number;
  private readonly kernels: ReturnType<KernelFactory>[];
  private readonly buf: { x: Float32Array; rows: Float32Array; mean: Float32Array; norm: Float32Array; xhat: Float32Array };

  constructor(
    private readonly model: HookedTransformer,
    private readonly hook: string,
    /** a residual-stream hook: runs start there, and a constant ablation is one position's run */
    private readonly residual: boolean,
    /** the positions run, shared with the clean run */
    private readonly ids: Int32Array,
    private readonly saes: SpliceSae[],
    kernels: KernelFactory | undefined,
    private readonly override?: ReconstructOverride,
  ) {
    const d = (this.d = model.cfg.dModel);
    const N = ids.length;
    // the reconstruction is part of the run it is spliced into: one precision for the LM and the SAE
    const precision = model.kernels.precision ?? 'fp32';
    this.kernels = saes.map((s) => (kernels ?? ((shape) => createReferenceKernels(shape, { precision })))({ d, F: s.params.F, maxB: s.batchSize }));
    for (const k of this.kernels) {
      if ((k.precision ?? 'fp32') !== precision) throw new UserError(`the SAE's kernels (${k.name}) compute at ${k.precision ?? 'fp32'} but the model's (${model.kernels.name}) at ${precision}: give both the same precision`);
    }
    this.stats = saes.map(() => ({ rows: 0, nnz: 0, sse: 0, sum: new Float64Array(d), sumSq: 0 }));
    const maxSaeB = Math.max(1, ...saes.map((s) => s.batchSize));
    this.buf = { x: new Float32Array(N * d), rows: new Float32Array(N * d), mean: new Float32Array(N), norm: new Float32Array(N), xhat: new Float32Array(maxSaeB * d) };
  }

  /** Run from the hook with x there; returns the final normalized residual [n×d]. */
  private runWith(B: number, Tn: number, x: Float32Array): Float32Array {
    const idv = this.ids.subarray(0, B * Tn);
    const r = this.residual
      ? this.model.run(idv, B, Tn, { start: { hook: this.hook, x }, capture: ['ln_final.hook_normalized'] })
      : this.model.run(idv, B, Tn, { replace: { [this.hook]: x }, capture: ['ln_final.hook_normalized'] });
    return r.captured['ln_final.hook_normalized'];
  }

  /** SAE `si` spliced in: the rows marked in `recon` of the clean activations x [B·Tn × d] reconstructed. */
  spliced(si: number, B: number, Tn: number, x: Float32Array, recon: Uint8Array): RunOutput {
    const n = B * Tn;
    const xs = this.buf.x.subarray(0, n * this.d);
    xs.set(x);
    reconstructRows(this.saes[si], this.kernels[si], xs, recon, n, this.d, this.buf, this.stats[si], this.override);
    return { normed: this.runWith(B, Tn, xs).slice(), broadcast: false };
  }

  /**
   * An ablation that writes one vector c at every position. At a residual-stream hook everything
   * after it then sees the same input at every position, and attention over identical values
   * returns that value whatever the weights: every position's output is the same, so one position
   * computes the whole run (a [1×d] row). At other hooks the run is computed in full.
   */
  ablated(B: number, Tn: number, c: Float32Array): RunOutput {
    if (this.residual) return { normed: this.runWith(1, 1, c).slice(), broadcast: true };
    const xs = this.buf.x.subarray(0, B * Tn * this.d);
    for (let i = 0; i < B * Tn; i++) xs.set(c, i * this.d);
    return { normed: this.runWith(B, Tn, xs).slice(), broadcast: false };
  }
}

/** The mean of the rows marked in `recon` (the mean-ablation vector; zeros when none is marked). */
export function meanOfRows(x: Float32Array, recon: Uint8Array, n: number, d: number): Float32Array {
  const mean = new Float64Array(d);
  let cnt = 0;
  for (let i = 0; i < n; i++) if (recon[i]) {
    cnt++;
    for (let j = 0; j < d; j++) mean[j] += x[i * d + j];
  }
  return Float32Array.from(mean, (v) => (cnt ? v / cnt : 0));
}

/** Replace the rows marked in `recon` by the SAE's reconstruction, mapped back to raw units. */
function reconstructRows(
  sae: SpliceSae,
  k: ReturnType<KernelFactory>,
  xs: Float32Array,
  recon: Uint8Array,
  n: number,
  d: number,
  buf: { rows: Float32Array; mean: Float32Array; norm: Float32Array; xhat: Float32Array },
  stats: ReconStats,
  override?: ReconstructOverride,
): void {
  // gather the rows to reconstruct
  let m = 0;
  const idx = new Int32Array(n);
  for (let i = 0; i < n; i++) if (recon[i]) {
    buf.rows.set(xs.subarray(i * d, (i + 1) * d), m * d);
    idx[m++] = i;
  }
  if (override) {
    const rows = buf.rows.subarray(0, m * d);
    override(rows, m, d);
    for (let r = 0; r < m; r++) xs.set(rows.subarray(r * d, (r + 1) * d), idx[r] * d);
    return;
  }
  preprocessRows(buf.rows, m, d, sae.preprocessing, sae.scale, buf.mean, buf.norm);
  const enc = { xc: new Float32Array(sae.batchSize * d), codes: allocCodes(sae.batchSize, sae.batchSize * 64), aux: [] };
  for (let r0 = 0; r0 < m; r0 += sae.batchSize) {
    const b = Math.min(sae.batchSize, m - r0);
    const chunk = buf.rows.subarray(r0 * d, (r0 + b) * d);
    k.encodeSelect(sae.params, chunk, b, sae.selectionFor(b), [], enc);
    k.decode(sae.params, enc.codes, buf.xhat, true);
    stats.rows += b;
    stats.nnz += enc.codes.nnz;
    for (let r = 0; r < b; r++) {
      const dst = idx[r0 + r] * d;
      for (let j = 0; j < d; j++) {
        const v = buf.xhat[r * d + j];
        const xp = chunk[r * d + j];
        stats.sse += (xp - v) * (xp - v);
        stats.sum[j] += xp;
        stats.sumSq += xp * xp;
        // SPEC §3: x_raw_hat = x_hat · norm + mean (center_unit_norm); ÷ scale (dataset_scale)
        xs[dst + j] = sae.preprocessing === 'center_unit_norm' ? v * buf.norm[r0 + r] + buf.mean[r0 + r] : sae.preprocessing === 'dataset_scale' ? v / sae.scale! : v;
      }
    }
  }
}

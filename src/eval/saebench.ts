/**
 * SAEBench's `core` eval (issue 19 part 7): sae_bench/evals/core/main.py of sae-bench 0.6.0
 * (commit 8042bb3), written in its output format (test/schemas/saebench-core.schema.json states the structure). CE, KL
 * and their scores come from one splice-eval run, which measures them as get_recons_loss does
 * (zero ablation, KL(clean ‖ run), averages over positions holding no special token); the
 * reconstruction, shrinkage and sparsity metrics from a second pass over the same contexts, as
 * SAEBench resets its activation store and reads the text again, in raw activation units (SAELens'
 * encode/decode normalise and denormalise internally; here the SAE's preprocessing is applied and
 * inverted). Formulas follow SAEBench exactly, also where they are not what their names say, so
 * numbers compare with its files: `explained_variance` divides by E‖x‖² − (E‖x‖²/d)² (variance
 * about ≈ zero; fixed in SAELens 6.45.1, not in SAEBench 8042bb3) and `mse` divides each token's
 * ‖x − x̂‖² by its batch's token count. The conventional values go to eval_result_unstructured.
 */
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { FloatArray } from '../util/arrays.js';
import type { KernelFactory, SaeParams, SparseCodes } from '../kernels/types.js';
import type { LmKernels } from '../kernels/lm-types.js';
import { allocCodes } from '../kernels/selection.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { preprocessRows, unpreprocessRows } from '../store/preprocess.js';
import { writeFileAtomic } from '../util/atomic.js';
import { UserError } from '../util/errors.js';
import { HeldOutContexts } from './splice-contexts.js';
import type { SpliceResult, SpliceSae } from './splice.js';

/** The SAEBench commit whose core eval and schema this follows (sae-bench 0.6.0). */
export const SAEBENCH_COMMIT = '8042bb3828c6340da8d12062324e92b2077c571c';
export const SAEBENCH_VERSION = '0.6.0';

/** One batch's share of the reconstruction metrics; x and x̂ are its kept rows in raw units. */
export interface BatchStats {
  n: number;
  d: number;
  sumNormIn: number;
  sumNormOut: number;
  sumL2Ratio: number;
  /** the batch's relative reconstruction bias (SAEBench takes one per batch) */
  rrb: number;
  /** Σ‖x − x̂‖² */
  sumRss: number;
  sumEvLegacy: number;
  sumCos: number;
  /** Σ x per dimension and Σ‖x‖², for the conventional variance */
  sum: Float64Array;
  sumSq: number;
}

/** One batch of n rows (x raw, x̂ its reconstruction in raw units): main.py get_sparsity_and_variance_metrics, per batch. */
export function batchStats(x: FloatArray, xhat: FloatArray, n: number, d: number): BatchStats {
  const mean = new Float64Array(d);
  for (let i = 0; i < n * d; i++) mean[i % d] += x[i];
  for (let j = 0; j < d; j++) mean[j] /= n;
  const s: BatchStats = { n, d, sumNormIn: 0, sumNormOut: 0, sumL2Ratio: 0, rrb: 0, sumRss: 0, sumEvLegacy: 0, sumCos: 0, sum: new Float64Array(d), sumSq: 0 };
  let sumOutSq = 0, sumDot = 0;
  for (let r = 0; r < n; r++) {
    let xx = 0, hh = 0, xh = 0, rss = 0, centred = 0;
    for (let j = 0; j < d; j++) {
      const a = x[r * d + j], b = xhat[r * d + j];
      xx += a * a;
      hh += b * b;
      xh += a * b;
      rss += (a - b) ** 2;
      centred += (a - mean[j]) ** 2;
      s.sum[j] += a;
    }
    const normIn = Math.sqrt(xx), normOut = Math.sqrt(hh);
    s.sumNormIn += normIn;
    s.sumNormOut += normOut;
    // l2_ratio: an input norm below 1e-4 is taken as 1
    s.sumL2Ratio += normOut / (Math.abs(normIn) < 1e-4 ? 1 : normIn);
    sumOutSq += hh;
    sumDot += xh;
    s.sumRss += rss;
    s.sumSq += xx;
    // explained_variance_legacy: per token, against the batch's own mean
    s.sumEvLegacy += 1 - rss / centred;
    // cossim: x/‖x‖ · x̂/‖x̂‖ (NaN for a zero row, as in torch)
    s.sumCos += xh / (normIn * normOut);
  }
  // relative_reconstruction_bias (arXiv 2404.16014 eq. 10): E‖x̂‖² / E⟨x, x̂⟩ over the batch
  s.rrb = sumOutSq / n / (sumDot / n);
  return s;
}

/**
 * SAEBench's reconstruction and shrinkage metrics, plus two that are not SAEBench's:
 * explained_variance_conventional = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over every token (SPEC §9's FVU;
 * SAELens ≥ 6.45.1), and mse_per_token = the mean over tokens of ‖x − x̂‖² (sae eval's mse).
 */
export type ReconstructionMetrics = Record<
  'l2_norm_in' | 'l2_norm_out' | 'l2_ratio' | 'relative_reconstruction_bias' | 'explained_variance' | 'explained_variance_legacy' | 'mse' | 'cossim' | 'explained_variance_conventional' | 'mse_per_token',
  number
>;

/** The batches combined as main.py get_sparsity_and_variance_metrics aggregates them ("Aggregate scalar metrics"). */
export function reconstructionMetrics(batches: readonly BatchStats[]): ReconstructionMetrics {
  const bs = batches.filter((b) => b.n > 0);
  const N = bs.reduce((a, b) => a + b.n, 0);
  const total = (f: (b: BatchStats) => number) => bs.reduce((a, b) => a + f(b), 0);
  const perBatch = (f: (b: BatchStats) => number) => total(f) / bs.length;
  // explained_variance (8042bb3): 1 − mean_b E_b‖x − x̂‖² / (mean_b E_b‖x‖² − (mean_b mean_j E_b[x_j²])²)
  const meanSumSq = perBatch((b) => b.sumSq / b.n);
  const meanActPerDim = perBatch((b) => b.sumSq / b.n / b.d);
  const residual = perBatch((b) => b.sumRss / b.n);
  const d = bs[0]?.d ?? 0;
  const sum = new Float64Array(d);
  for (const b of bs) for (let j = 0; j < d; j++) sum[j] += b.sum[j];
  let mean2 = 0;
  for (const v of sum) mean2 += v * v;
  const variance = total((b) => b.sumSq) - mean2 / N;
  return {
    l2_norm_in: total((b) => b.sumNormIn) / N,
    l2_norm_out: total((b) => b.sumNormOut) / N,
    l2_ratio: total((b) => b.sumL2Ratio) / N,
    relative_reconstruction_bias: perBatch((b) => b.rrb),
    explained_variance: 1 - residual / (meanSumSq - meanActPerDim ** 2),
    explained_variance_legacy: total((b) => b.sumEvLegacy) / N,
    // mse: each token's ‖x − x̂‖² over the batch's token count, then the mean over tokens
    mse: total((b) => b.sumRss / b.n) / N,
    cossim: total((b) => b.sumCos) / N,
    explained_variance_conventional: 1 - total((b) => b.sumRss) / variance,
    mse_per_token: total((b) => b.sumRss) / N,
  };
}

/** Sparsity and per-feature firing over the kept tokens: main.py get_sparsity_and_variance_metrics (l0, l1, featurewise density). */
export class FeatureStats {
  tokens = 0;
  l0Sum = 0;
  l1Sum = 0;
  /** tokens each feature fired on (activation > 0) */
  readonly fired: Float64Array;
  /** contexts ("prompts") each feature fired in */
  readonly contextsFired: Float64Array;
  private readonly lastContext: Float64Array;

  constructor(readonly F: number) {
    this.fired = new Float64Array(F);
    this.contextsFired = new Float64Array(F);
    this.lastContext = new Float64Array(F).fill(-1);
  }

  /** Add the codes of rows in context order: row b of `codes` belongs to context ctxOf[b]. */
  add(codes: SparseCodes, ctxOf: ArrayLike<number>): void {
    for (let b = 0; b < codes.B; b++) {
      for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) {
        const v = codes.value[e], j = codes.index[e];
        if (v !== 0) this.l0Sum++;
        this.l1Sum += v;
        if (v > 0) {
          this.fired[j]++;
          if (this.lastContext[j] !== ctxOf[b]) this.contextsFired[j]++;
          this.lastContext[j] = ctxOf[b];
        }
      }
      this.tokens++;
    }
  }

  density(): Float64Array {
    return Float64Array.from(this.fired, (v) => v / this.tokens);
  }
}

/** Frequency metrics of the feature densities: main.py calculate_misc_metrics. */
export function densityMetrics(density: ArrayLike<number>): Record<'frac_alive' | 'freq_over_1_percent' | 'freq_over_10_percent' | 'normalized_freq_over_1_percent' | 'normalized_freq_over_10_percent', number> {
  const F = density.length;
  let alive = 0, over1 = 0, over10 = 0, sum = 0, sum1 = 0, sum10 = 0;
  for (let j = 0; j < F; j++) {
    const v = density[j];
    sum += v;
    if (v > 0) alive++;
    if (v > 0.01) { over1++; sum1 += v; }
    if (v > 0.1) { over10++; sum10 += v; }
  }
  const normalized = (part: number) => (sum > 0 ? part / sum : 0);
  return { frac_alive: alive / F, freq_over_1_percent: over1 / F, freq_over_10_percent: over10 / F, normalized_freq_over_1_percent: normalized(sum1), normalized_freq_over_10_percent: normalized(sum10) };
}

type Gemm = LmKernels['linear'];

/**
 * Per row of rows [F×d], the largest cosine with any other row: main.py calculate_max_cosine_sim
 * (rows normalised as torch.nn.functional.normalize, eps 1e-12). `gemm` (a kernel's linear) does
 * the F×F products in blocks; without it, plain loops.
 */
export function maxCosineSims(rows: FloatArray, F: number, d: number, gemm?: Gemm): Float64Array {
  const u = new Float32Array(F * d);
  for (let j = 0; j < F; j++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += rows[j * d + i] ** 2;
    const inv = 1 / Math.max(Math.sqrt(ss), 1e-12);
    for (let i = 0; i < d; i++) u[j * d + i] = rows[j * d + i] * inv;
  }
  const out = new Float64Array(F).fill(-Infinity);
  const C = Math.max(1, Math.min(F, Math.floor((1 << 22) / Math.max(F, 1))));
  const sims = new Float32Array(C * F);
  for (let c0 = 0; c0 < F; c0 += C) {
    const c = Math.min(C, F - c0);
    if (gemm) gemm(u.subarray(c0 * d, (c0 + c) * d), c, d, u, F, 'out_in', null, sims);
    else for (let a = 0; a < c; a++) for (let b = 0; b < F; b++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += u[(c0 + a) * d + i] * u[b * d + i];
      sims[a * F + b] = s;
    }
    for (let a = 0; a < c; a++) for (let b = 0; b < F; b++) if (b !== c0 + a && sims[a * F + b] > out[c0 + a]) out[c0 + a] = sims[a * F + b];
  }
  return out;
}

/** Per-feature weight statistics: main.py get_featurewise_weight_based_metrics (W_enc column j = our WencT row j). */
export function weightMetrics(p: SaeParams, gemm?: Gemm): { encoder_bias: Float64Array; encoder_norm: Float64Array; encoder_decoder_cosine_sim: Float64Array; max_encoder_cosine_sim: Float64Array; max_decoder_cosine_sim: Float64Array } {
  const { F, d } = p;
  const encoder_norm = new Float64Array(F);
  const cos = new Float64Array(F);
  for (let j = 0; j < F; j++) {
    let ee = 0, dd = 0, ed = 0;
    for (let i = 0; i < d; i++) {
      const e = p.WencT[j * d + i], w = p.Wdec[j * d + i];
      ee += e * e;
      dd += w * w;
      ed += e * w;
    }
    encoder_norm[j] = Math.sqrt(ee);
    cos[j] = ed / (Math.sqrt(ee) * Math.sqrt(dd));
  }
  return { encoder_bias: Float64Array.from(p.bEnc), encoder_norm, encoder_decoder_cosine_sim: cos, max_encoder_cosine_sim: maxCosineSims(p.WencT, F, d, gemm), max_decoder_cosine_sim: maxCosineSims(p.Wdec, F, d, gemm) };
}

export interface PassResult {
  batches: BatchStats[];
  features: FeatureStats;
  /** LM batches run, contexts, kept tokens */
  lmBatches: number;
  contexts: number;
  tokens: number;
  /** in the SAE's own (preprocessed) space, as splice-eval reports them for its spliced tokens */
  saeSpace: { l0: number; fvu: number };
}

/**
 * SAEBench's second pass (get_sparsity_and_variance_metrics) over the contexts spliceEval reads
 * with the same ctx, batch and maxTokens: per LM batch, the hook's activations at the positions
 * that hold no special token, through the SAE in chunks of its batch size exactly as splice-eval
 * reconstructs them (so batch-dependent selections pick the same features), mapped back to raw units.
 */
export async function sparsityVariancePass<P>(o: {
  model: HookedTransformer;
  tokenizer: LmTokenizer;
  corpus: { documents(from?: P | null): AsyncIterable<{ text: string; position: P }> };
  hook: string;
  sae: SpliceSae;
  ctx: number;
  batch: number;
  maxTokens: number;
  kernels: KernelFactory;
  onProgress?: (tokens: number) => void;
}): Promise<PassResult> {
  const { sae } = o;
  const d = o.model.cfg.dModel, Tr = o.ctx - 1, N = o.batch * Tr;
  const texts = new HeldOutContexts(o.corpus, o.tokenizer, o.ctx, o.batch, false);
  const k = o.kernels({ d, F: sae.params.F, maxB: sae.batchSize });
  const raw = new Float32Array(N * d), pre = new Float32Array(N * d), xhat = new Float32Array(N * d);
  const mean = new Float32Array(N), norm = new Float32Array(N), ctxOf = new Float64Array(N);
  const enc = { xc: new Float32Array(sae.batchSize * d), codes: allocCodes(sae.batchSize, sae.batchSize * 64), aux: [] };
  const res: PassResult = { batches: [], features: new FeatureStats(sae.params.F), lmBatches: 0, contexts: 0, tokens: 0, saeSpace: { l0: 0, fvu: 0 } };
  const sp = { sse: 0, sum: new Float64Array(d), sumSq: 0 };
  while (res.tokens < o.maxTokens) {
    const B = await texts.take(o.maxTokens - res.tokens);
    if (B === 0) break;
    const n = B * Tr;
    const x = o.model.run(texts.ids.subarray(0, n), B, Tr, { capture: [o.hook] }).captured[o.hook];
    let m = 0;
    for (let i = 0; i < n; i++) if (texts.counts(texts.ids[i])) {
      raw.set(x.subarray(i * d, (i + 1) * d), m * d);
      ctxOf[m++] = res.contexts + Math.floor(i / Tr);
    }
    pre.set(raw.subarray(0, m * d));
    preprocessRows(pre, m, d, sae.preprocessing, sae.scale, mean, norm);
    for (let r0 = 0; r0 < m; r0 += sae.batchSize) {
      const b = Math.min(sae.batchSize, m - r0);
      const out = xhat.subarray(r0 * d, (r0 + b) * d);
      k.encodeSelect(sae.params, pre.subarray(r0 * d, (r0 + b) * d), b, sae.selectionFor(b), [], enc);
      k.decode(sae.params, enc.codes, out, true);
      res.features.add(enc.codes, ctxOf.subarray(r0, r0 + b));
    }
    for (let i = 0; i < m * d; i++) {
      sp.sse += (pre[i] - xhat[i]) ** 2;
      sp.sum[i % d] += pre[i];
      sp.sumSq += pre[i] * pre[i];
    }
    unpreprocessRows(xhat, m, d, sae.preprocessing, sae.scale, mean, norm);
    if (m > 0) res.batches.push(batchStats(raw, xhat, m, d));
    res.tokens += m;
    res.contexts += B;
    res.lmBatches++;
    o.onProgress?.(res.tokens);
    if (texts.exhausted) break;
  }
  if (res.tokens === 0) throw new UserError('the evaluation text yielded no tokens to count');
  let mean2 = 0;
  for (const v of sp.sum) mean2 += v * v;
  res.saeSpace = { l0: res.features.l0Sum / res.tokens, fvu: sp.sse / (sp.sumSq - mean2 / res.tokens) };
  return res;
}

/** SAEBench's output (eval_output_schema_core.json), with every optional part filled. */
export type SaebenchCore = {
  eval_type_id: 'core';
  eval_config: {
    model_name: string; llm_dtype: string; batch_size_prompts: number; n_eval_reconstruction_batches: number; n_eval_sparsity_variance_batches: number;
    dataset: string; context_size: number; compute_kl: boolean; compute_ce_loss: boolean; compute_l2_norms: boolean; compute_sparsity_metrics: boolean;
    compute_variance_metrics: boolean; compute_featurewise_density_statistics: boolean; compute_featurewise_weight_based_metrics: boolean;
    exclude_special_tokens_from_reconstruction: boolean; verbose: boolean;
  };
  eval_id: string;
  datetime_epoch_millis: number;
  eval_result_metrics: {
    model_behavior_preservation: { kl_div_score: number; kl_div_with_ablation: number; kl_div_with_sae: number };
    model_performance_preservation: { ce_loss_score: number; ce_loss_with_ablation: number; ce_loss_with_sae: number; ce_loss_without_sae: number };
    reconstruction_quality: { explained_variance: number; explained_variance_legacy: number; mse: number; cossim: number };
    shrinkage: { l2_norm_in: number; l2_norm_out: number; l2_ratio: number; relative_reconstruction_bias: number };
    sparsity: { l0: number; l1: number };
    token_stats: { total_tokens_eval_reconstruction: number; total_tokens_eval_sparsity_variance: number };
    misc_metrics: ReturnType<typeof densityMetrics> & { average_max_encoder_cosine_sim: number; average_max_decoder_cosine_sim: number };
  };
  eval_result_details: {
    index: number; feature_density: number; consistent_activation_heuristic: number; encoder_bias: number; encoder_norm: number;
    encoder_decoder_cosine_sim: number; max_decoder_cosine_sim: number; max_encoder_cosine_sim: number;
  }[];
  eval_result_unstructured: Record<string, unknown>;
  sae_bench_commit_hash: string;
  sae_lens_id: string | null;
  sae_lens_release_id: string | null;
  sae_lens_version: string | null;
  sae_cfg_dict: Record<string, unknown> | null;
};

/** NaN (and ±∞, which JSON cannot hold) → −1: main.py replace_nans_with_negative_one. */
export const finiteOrMinusOne = (v: number): number => (Number.isFinite(v) ? v : -1);

/** main.py convert_feature_metrics rounds per-feature values to DEFAULT_FLOAT_PRECISION = 10 places. */
const round10 = (v: number): number => (Number.isFinite(v) ? Number(v.toFixed(10)) : -1);
function average(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s / a.length;
}

/** The core eval output, as main.py save_single_eval_result assembles it. */
export function coreOutput(o: {
  splice: SpliceResult;
  pass: PassResult;
  params: SaeParams;
  cfg: Record<string, unknown>;
  modelName: string;
  dataset: string;
  ctx: number;
  batchPrompts: number;
  weights: ReturnType<typeof weightMetrics>;
  unstructured: Record<string, unknown>;
  now?: number;
}): SaebenchCore {
  const { splice: s, pass } = o;
  const run = s.spliced[0];
  const rec = reconstructionMetrics(pass.batches);
  const density = pass.features.density();
  const w = o.weights;
  const f = finiteOrMinusOne;
  return {
    eval_type_id: 'core',
    eval_config: {
      model_name: o.modelName, llm_dtype: s.precision === 'bf16' ? 'bfloat16' : 'float32', batch_size_prompts: o.batchPrompts,
      n_eval_reconstruction_batches: pass.lmBatches, n_eval_sparsity_variance_batches: pass.lmBatches, dataset: o.dataset, context_size: o.ctx,
      compute_kl: true, compute_ce_loss: true, compute_l2_norms: true, compute_sparsity_metrics: true, compute_variance_metrics: true,
      compute_featurewise_density_statistics: true, compute_featurewise_weight_based_metrics: true,
      exclude_special_tokens_from_reconstruction: s.specialTokens === 'excluded', verbose: false,
    },
    eval_id: randomUUID(),
    datetime_epoch_millis: o.now ?? Date.now(),
    eval_result_metrics: {
      // main.py get_downstream_reconstruction_metrics: the scores are ratios of the averages
      model_behavior_preservation: { kl_div_score: f((s.zeroKl - run.kl) / s.zeroKl), kl_div_with_ablation: f(s.zeroKl), kl_div_with_sae: f(run.kl) },
      model_performance_preservation: {
        ce_loss_score: f((s.zeroLoss - run.loss) / (s.zeroLoss - s.cleanLoss)), ce_loss_with_ablation: f(s.zeroLoss), ce_loss_with_sae: f(run.loss), ce_loss_without_sae: f(s.cleanLoss),
      },
      reconstruction_quality: { explained_variance: f(rec.explained_variance), explained_variance_legacy: f(rec.explained_variance_legacy), mse: f(rec.mse), cossim: f(rec.cossim) },
      shrinkage: { l2_norm_in: f(rec.l2_norm_in), l2_norm_out: f(rec.l2_norm_out), l2_ratio: f(rec.l2_ratio), relative_reconstruction_bias: f(rec.relative_reconstruction_bias) },
      sparsity: { l0: f(pass.features.l0Sum / pass.tokens), l1: f(pass.features.l1Sum / pass.tokens) },
      token_stats: { total_tokens_eval_reconstruction: s.tokens, total_tokens_eval_sparsity_variance: pass.tokens },
      misc_metrics: {
        ...densityMetrics(density),
        average_max_encoder_cosine_sim: f(average(w.max_encoder_cosine_sim)),
        average_max_decoder_cosine_sim: f(average(w.max_decoder_cosine_sim)),
      },
    },
    eval_result_details: Array.from(density, (v, j) => ({
      index: j,
      feature_density: round10(v),
      consistent_activation_heuristic: round10(pass.features.fired[j] / pass.features.contextsFired[j]),
      encoder_bias: round10(w.encoder_bias[j]),
      encoder_norm: round10(w.encoder_norm[j]),
      encoder_decoder_cosine_sim: round10(w.encoder_decoder_cosine_sim[j]),
      max_decoder_cosine_sim: round10(w.max_decoder_cosine_sim[j]),
      max_encoder_cosine_sim: round10(w.max_encoder_cosine_sim[j]),
    })),
    eval_result_unstructured: {
      ...o.unstructured,
      explained_variance_conventional: f(rec.explained_variance_conventional),
      mse_per_token: f(rec.mse_per_token),
      sae_space: { l0: f(pass.saeSpace.l0), fvu: f(pass.saeSpace.fvu) },
      loss_recovered_percent: f(run.lossRecovered),
    },
    sae_bench_commit_hash: SAEBENCH_COMMIT,
    sae_lens_id: null,
    sae_lens_release_id: null,
    sae_lens_version: null,
    sae_cfg_dict: o.cfg,
  };
}

/** Is `v` a SAEBench core eval output (ours or SAEBench's own)? */
export function isCoreOutput(v: unknown): boolean {
  const o = v as Partial<SaebenchCore> | null;
  return typeof o === 'object' && o !== null && o.eval_type_id === 'core' && typeof o.eval_result_metrics === 'object' && typeof o.sae_bench_commit_hash === 'string';
}

/**
 * Check, before any work and again before writing, that --saebench can be written: its folder
 * exists, and an existing file is replaced only when it is an earlier core eval output (or with --force).
 */
export async function checkSaebenchOut(file: string, force: boolean): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  const dst = await fs.stat(dir).catch(() => null);
  if (!dst?.isDirectory()) throw new UserError(`--saebench ${file}: ${dst ? `${dir} is not a folder` : 'its folder does not exist'}`);
  const st = await fs.stat(file).catch(() => null);
  if (!st) return;
  if (st.isDirectory()) throw new UserError(`--saebench ${file} is a folder; give a file name`);
  if (force) return;
  const ours = st.size < 256 << 20 && isCoreOutput(await fs.readFile(file, 'utf8').then((t) => JSON.parse(t) as unknown).catch(() => null));
  if (!ours) throw new UserError(`--saebench ${file} exists and is not an earlier SAEBench core eval output; add --force to replace it`);
}

export const writeSaebench = (file: string, out: SaebenchCore): Promise<void> => writeFileAtomic(file, JSON.stringify(out, null, 2) + '\n');

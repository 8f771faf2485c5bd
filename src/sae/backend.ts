/**
 * The training-backend seam (issue 12 part 1): an implementation that owns one SAE's whole training
 * state where its kernels run (host memory for the CPU, device memory for a GPU) and advances it
 * one batch at a time. The trainer keeps only the host-side policy: phases, the learning-rate
 * schedule, the RNG, density ranking every rankInterval steps, the dying set, Feature Choice's
 * carried capacities, and the run's counters.
 *
 * What crosses the seam, per call (F = width, d = input dimension, B = batch rows, s = NFM sample):
 *
 *   every step, in:   the batch B×d, the selection (scalars, or F int32 capacities for Feature
 *                     Choice), two optional aux requests (scalars), s int32 NFM indices, the
 *                     optimiser's scalars
 *   every step, out:  the loss terms, the gradient norm, the batch variance and the dead count
 *                     (scalars)
 *   every rankInterval steps:  density out (F float64), then the dying mask in (F bytes)
 *   checkpoints, evaluation, resume:  weights, Adam moments, feature statistics, either way
 *
 * Never B×F (there is no dense code matrix anywhere) and never F×d outside checkpoints and
 * evaluation: the codes, gradients, moments and the dead mask stay with the backend.
 *
 * Tensor layout is SaeParams' (src/kernels/types.ts): WencT F×d (row j = encoder direction of
 * feature j), bEnc F, Wdec F×d (unit rows), bDec d; moments are in tensors() order
 * [WencT, bEnc, Wdec, bDec].
 */
import type { OptimizerHyper, SaeParams, Selection } from '../kernels/types.js';
import type { LossTerms } from './objective.js';
import type { FeatureStatsState } from './density.js';
import { cpuBackend } from './backend-cpu.js';
import { cudaStatus } from '../kernels/cuda.js';
import { cudaUnavailable, kernelFactory, type KernelName } from '../kernels/index.js';
import type { Precision } from '../kernels/bf16.js';

/** One auxiliary reconstruction loss of SPEC §7, as the trainer asks for it. */
export interface AuxSpec {
  /** k_aux: per-token TopK over the eligible features */
  k: number;
  /** loss coefficient (> 0) */
  coef: number;
}

/** Everything one optimiser step needs besides the state the backend holds. */
export interface StepRequest {
  /** B×d row-major preprocessed activations, in host memory (read during the call only). */
  x: Float32Array;
  /** rows in x, 1 ≤ B ≤ maxB */
  B: number;
  /**
   * The batch's selection (SPEC §5), capacities already resolved: topk {k}, mutual {M = k·B},
   * feature {capacity: Int32Array(F) by feature index}, relu. Read during the call only.
   */
  selection: Selection;
  /** λ₁ of the ReLU SAE's L1 penalty; 0 for TopK-style selections */
  l1Coef: number;
  /**
   * aux_k over the dead features: the backend applies it when its dead set (features silent for
   * deadWindow tokens, from its own statistics before this batch) is not empty. null = off.
   */
  auxK: AuxSpec | null;
  /**
   * aux_zipf over the dying set last given to setDying; applied when that set is not empty. The
   * gradient order is fixed: aux_k's before aux_zipf's. null = off.
   */
  auxZipf: AuxSpec | null;
  /** features sampled for the NFM losses this step, ascending (appendix C); empty = off */
  nfmSample: Int32Array;
  nfmCoef: number;
  nfmInfCoef: number;
  /** AdamW settings of this step (lr from the schedule, 1-based step for bias correction) and clipping */
  optimizer: OptimizerHyper;
}

export interface StepResult {
  /**
   * false when the loss was not finite: then nothing changed (weights, moments, statistics, the
   * gradient buffers are as before the call) and the trainer stops the run.
   */
  applied: boolean;
  /** loss terms of SPEC §7, each a batch mean; l0 = selected entries / B; sse = Σ‖x − x̂‖² */
  terms: LossTerms;
  /** global gradient norm before clipping (SPEC §8); NaN when not applied */
  gradNorm: number;
  /** Σ_b ‖x_b − x̄‖² in float64 (FVU = terms.sse / batchVariance, SPEC §9); NaN when not applied */
  batchVariance: number;
  /** features dead after this batch's statistics update (window deadWindow tokens) */
  deadCount: number;
}

/** What a backend is created with. */
export interface BackendInit {
  d: number;
  F: number;
  /** largest batch step() will see */
  maxB: number;
  /** largest selection the run can make (entries per batch), for buffer sizing */
  maxNnz: number;
  /** k_aux, for sizing the aux selections' buffers */
  auxK: number;
  /** SPEC §6: a feature is dead when it has not fired in this many tokens */
  deadWindow: number;
  /** γ of the density EMA (TrainConfig.densityEma) */
  densityEma: number;
  /**
   * Initial weights; zeros when absent. Ownership passes to the backend: the CPU backend keeps
   * these very arrays as its state, a device backend uploads them. The caller must not use them
   * afterwards (read the weights back with readParams).
   */
  params?: SaeParams;
}

/**
 * One SAE's training state and its step. Reads return host arrays the caller must treat as
 * read-only and that stay valid until the next call that changes the state (step or a write):
 * the CPU backend hands out its own arrays, a device backend fresh copies. Writes copy.
 */
export interface TrainingBackend {
  /** e.g. 'cpu/native', 'cpu/reference', 'cuda' */
  readonly name: string;
  /** where the state lives */
  readonly device: 'cpu' | 'cuda';
  readonly d: number;
  readonly F: number;

  /**
   * One optimiser step (SPEC §8): encode and select, the losses and their gradients (recon, L1,
   * aux_k, aux_zipf, NFM), decoder-gradient projection, clipping, AdamW, decoder renormalisation,
   * then the feature statistics take this batch's codes (an entry fires its feature when > 0).
   */
  step(req: StepRequest): StepResult;

  /** Bias-corrected density EMA per feature, F float64 (SPEC §6); read every rankInterval steps. */
  readDensity(): Float64Array;
  /** The dying set (F bytes, 1 = dying) for aux_zipf, after each re-ranking and on restore. */
  setDying(mask: Uint8Array): void;

  /** Weights WencT F×d, bEnc F, Wdec F×d, bDec d: at checkpoints and evaluation. */
  readParams(): SaeParams;
  writeParams(p: SaeParams): void;
  /** Adam first and second moments, four tensors each in tensors() order: at checkpoints. */
  readOptimizer(): { m: Float32Array[]; v: Float32Array[] };
  writeOptimizer(m: readonly Float32Array[], v: readonly Float32Array[]): void;
  /** Feature statistics (EMA, last firing, lifetime counts, token count), bit-exact across save/load. */
  readStats(): FeatureStatsState;
  writeStats(s: FeatureStatsState): void;

  /** Release what the backend holds outside the JS heap (device memory); no-op on the CPU. */
  dispose(): void;
}

export type TrainingBackendFactory = (init: BackendInit) => TrainingBackend;

/**
 * Where training state lives and steps run, for a name (this file): the CPU backend
 * over kernelFactory(name, precision) for reference, native and auto; 'cuda' the CUDA backend, which fails
 * with its reason until it exists. 'auto' would pick CUDA where it is available (never, in this
 * version: cudaStatus explains).
 */
export function backendFactory(name: KernelName, precision: Precision = 'fp32'): TrainingBackendFactory {
  if (name === 'cuda' || (name === 'auto' && cudaStatus().available)) return cudaBackend();
  return cpuBackend(kernelFactory(name, precision));
}

/** The CUDA training backend: issue 12 part 2 puts the addon's backend here; until then, the reason it is missing. */
function cudaBackend(): TrainingBackendFactory {
  throw cudaUnavailable();
}

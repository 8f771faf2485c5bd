import type { FloatArray } from '../util/arrays.js';
import type { Precision } from './bf16.js';

/**
 * SAE parameters (SPEC §4) in the layout the hot path wants. The encoder is stored transposed
 * (F×d, one contiguous row per feature) so that the sparse encoder gradient touches whole rows;
 * checkpoints transpose back to SAELens' W_enc [d_in, d_sae].
 */
export interface SaeParams {
  readonly d: number;
  readonly F: number;
  /** F×d, row j = encoder direction of feature j (= column j of W_enc). */
  readonly WencT: FloatArray;
  /** F */
  readonly bEnc: FloatArray;
  /** F×d, row j = decoder direction of feature j, unit norm after every step. */
  readonly Wdec: FloatArray;
  /** d */
  readonly bDec: FloatArray;
}

/**
 * Sparse codes z in CSR form by token: token b owns entries rowPtr[b] .. rowPtr[b+1]-1, sorted by
 * feature index ascending (the canonical order makes results comparable across kernels).
 * value holds z = ReLU(z') of selected entries (always > 0 for TopK-style selections).
 */
export interface SparseCodes {
  B: number;
  nnz: number;
  /** B+1 */
  rowPtr: Int32Array;
  /** capacity ≥ nnz */
  index: Int32Array;
  /** capacity ≥ nnz */
  value: FloatArray;
}

/** The sparsifying activations of SPEC §5, as the kernel sees them (capacities already resolved). */
export type Selection =
  | { kind: 'relu' }
  | { kind: 'topk'; k: number }
  /** Mutual Choice / BatchTopK in training: the M largest positive entries of the whole B×F matrix. */
  | { kind: 'mutual'; M: number }
  /** Feature Choice: feature j takes its capacity[j] largest positive tokens (capacity indexed by feature, not rank). */
  | { kind: 'feature'; capacity: Int32Array }
  /** JumpReLU inference: z'_j > threshold[j]. */
  | { kind: 'jumprelu'; threshold: FloatArray }
  /** BatchTopK inference: z' > one global threshold. */
  | { kind: 'globalThreshold'; threshold: number };

/** A per-token TopK restricted to a feature subset (aux_k over dead, aux_zipf over dying features). */
export interface AuxRequest {
  /** F, 1 = eligible */
  mask: Uint8Array;
  k: number;
}

export interface EncodeOutput {
  /** B×d: x − b_dec, kept for the encoder gradient. */
  xc: FloatArray;
  codes: SparseCodes;
  /** one per AuxRequest, same order */
  aux: SparseCodes[];
}

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step number, for bias correction */
  step: number;
  /** multiplies the gradient first (gradient-norm clipping folds in here) */
  gradScale: number;
}

/** AdamW's settings plus the clipping the fused update applies itself. */
export type OptimizerHyper = Omit<AdamWHyper, 'gradScale'> & {
  /** clip the global gradient norm to this; 0 = no clipping */
  maxGradNorm: number;
};

/**
 * The one seam for the numeric hot path (issue 2 §9). The trainer only talks to this interface; the
 * reference implementation is plain loops and is the oracle for every faster implementation. An
 * instance owns its scratch buffers, sized once for (d, F, maxB), and reuses them every step.
 *
 * Nothing here ever materialises a dense B×F code matrix or its gradient: decode and backward
 * work on the selected entries only.
 */
export interface SaeKernels {
  readonly name: string;
  /** The precision rule these kernels follow (docs/precision.md); absent = 'fp32'. */
  readonly precision?: Precision;
  /** z' = (x − b_dec)·W_enc + b_enc, then the selection and the aux selections (SPEC §4–5). */
  encodeSelect(p: SaeParams, x: FloatArray, B: number, sel: Selection, aux: readonly AuxRequest[], out: EncodeOutput): void;
  /** out (B×d) = codes·W_dec (+ b_dec when withBias). */
  decode(p: SaeParams, codes: SparseCodes, out: FloatArray, withBias: boolean): void;
  /**
   * Given dL/dx̂ (B×d) for a decode of these codes: gWdec[j] += z_bj·dOut[b] for each entry, and
   * dz[e] = dOut[b]·W_dec[j] for entry e (dz aligned with codes.value).
   */
  decodeBackward(p: SaeParams, codes: SparseCodes, dOut: FloatArray, gWdec: FloatArray, dz: FloatArray): void;
  /** Straight-through the selection: gWencT[j] += dz·xc[b], gBenc[j] += dz, gBdec −= dz·WencT[j]. */
  encoderBackward(p: SaeParams, xc: FloatArray, codes: SparseCodes, dz: FloatArray, g: SaeParams): void;
  /** Σ a² in float64 (gradient-norm clipping). */
  sumSquares(a: FloatArray): number;
  /** Decoupled-weight-decay Adam on one tensor; reads grad·gradScale and leaves grad zeroed. */
  adamw(param: FloatArray, grad: FloatArray, m: FloatArray, v: FloatArray, h: AdamWHyper, decay: boolean): void;
  /** Remove from each decoder-row gradient its component parallel to the (unit) row (SPEC §4). */
  projectDecoderGrad(Wdec: FloatArray, gWdec: FloatArray, F: number, d: number): void;
  /** Rescale each decoder row to unit L2 norm. */
  normalizeDecoderRows(Wdec: FloatArray, F: number, d: number): void;
  /**
   * The whole parameter update of SPEC §4 and §8: project the decoder gradient, clip the global
   * gradient norm, AdamW on the four tensors (decay on W_enc and W_dec only; m and v in
   * tensors() order), renormalise the decoder rows. Leaves g zeroed; returns the norm before
   * clipping. `composedOptimizerStep` defines it from the primitives above; an implementation may
   * fuse the passes.
   */
  optimizerStep(p: SaeParams, g: SaeParams, m: readonly FloatArray[], v: readonly FloatArray[], h: OptimizerHyper): number;
}

export interface KernelShape {
  d: number;
  F: number;
  /** largest batch the instance will see */
  maxB: number;
}

export type KernelFactory = (shape: KernelShape) => SaeKernels;

/**
 * An SAE's codes over a stream of rows (issue 20: `sae encode`, `sae features`). Rows arrive in
 * whatever blocks their source yields (a forward pass of contexts, a shard's page); codes leave in
 * blocks of whole SAE batches, in row order, each row with the token it came from.
 *
 * - 'batch': the SAE's own selection (TopK, Mutual or Feature Choice) over batches of exactly its
 *   training batch size B (appendix B: batch inference as in training); only the stream's last
 *   batch may be smaller. A token's codes therefore depend on the B − 1 tokens batched with it.
 * - 'threshold': the exported JumpReLU thresholds (SPEC §5, appendix B), z'_j > θ_j per token:
 *   what a single-token user gets, independent of any other token.
 *
 * Memory is one batch of rows and codes, whatever the stream's length.
 */
import type { KernelFactory, SaeKernels, Selection, SparseCodes } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { allocCodes } from '../kernels/selection.js';
import { preprocessRows } from '../store/preprocess.js';
import type { Sae } from '../sae/sae.js';
import { UserError } from '../util/errors.js';

export const ENCODE_MODES = ['batch', 'threshold'] as const;
export type EncodeMode = (typeof ENCODE_MODES)[number];

/** Where each row came from: its token, the context holding it and its position there. */
export interface RowOrigin {
  tokenId: Int32Array;
  context: Int32Array;
  position: Int32Array;
}

/** One block of encoded rows (views into buffers the next call reuses). */
export interface EncodedBlock extends RowOrigin {
  n: number;
  /** absolute index of the block's first row in the stream */
  first: number;
  /** the rows' codes, CSR by row, feature ids ascending (../kernels/types.ts) */
  codes: SparseCodes;
}

export interface CodeStreamOptions {
  mode: EncodeMode;
  /** kernels for the encoder (default: the reference kernels) */
  kernels?: KernelFactory;
  /**
   * the rows are already in the SAE's input space (activation shards: preprocessed at harvest);
   * otherwise they are the hook's raw activations and get the SAE's preprocessing here (SPEC §3)
   */
  preprocessed: boolean;
}

/** The selection a mode runs an SAE with; refuses threshold mode on an SAE that has no thresholds. */
export function modeSelection(sae: Sae, mode: EncodeMode): { selectionFor: (B: number) => Selection; batchSize: number } {
  if (mode === 'threshold') {
    if (!sae.threshold) throw new UserError(`${sae.dir} has no JumpReLU thresholds: --mode threshold needs an exported SAE (sae export), or use --mode batch`);
    const threshold = sae.threshold;
    // per token, so any block size gives the same codes; one SAE batch's worth at a time
    return { selectionFor: () => ({ kind: 'jumprelu', threshold }), batchSize: sae.batchSize };
  }
  return { selectionFor: sae.selection(), batchSize: sae.batchSize };
}

export class CodeStream {
  readonly batchSize: number;
  private readonly d: number;
  private readonly kernels: SaeKernels;
  private readonly selectionFor: (B: number) => Selection;
  private readonly x: Float32Array;
  private readonly origin: RowOrigin;
  private readonly enc: { xc: Float32Array; codes: SparseCodes; aux: SparseCodes[] };
  private held = 0;
  private emitted = 0;

  constructor(
    private readonly sae: Sae,
    private readonly opts: CodeStreamOptions,
  ) {
    const { selectionFor, batchSize } = modeSelection(sae, opts.mode);
    this.selectionFor = selectionFor;
    const B = (this.batchSize = batchSize);
    const d = (this.d = sae.d);
    this.kernels = (opts.kernels ?? createReferenceKernels)({ d, F: sae.F, maxB: B });
    this.x = new Float32Array(B * d);
    this.origin = { tokenId: new Int32Array(B), context: new Int32Array(B), position: new Int32Array(B) };
    const k = sae.trainConfig?.k ?? 32;
    this.enc = { xc: new Float32Array(B * d), codes: allocCodes(B, Math.max(B * k * 2, 1024)), aux: [] };
  }

  /**
   * Add n rows (n×d) with their origins; `onBlock` gets each batch the rows complete, before this
   * returns. The block's views are valid until onBlock returns.
   */
  push(rows: Float32Array, n: number, origin: RowOrigin, onBlock: (b: EncodedBlock) => void): void {
    const { d, batchSize: B } = this;
    for (let r = 0; r < n; ) {
      const take = Math.min(n - r, B - this.held);
      this.x.set(rows.subarray(r * d, (r + take) * d), this.held * d);
      this.origin.tokenId.set(origin.tokenId.subarray(r, r + take), this.held);
      this.origin.context.set(origin.context.subarray(r, r + take), this.held);
      this.origin.position.set(origin.position.subarray(r, r + take), this.held);
      this.held += take;
      r += take;
      if (this.held === B) this.encodeHeld(onBlock);
    }
  }

  /** Encode the rows still held (the stream's last, smaller batch). */
  flush(onBlock: (b: EncodedBlock) => void): void {
    if (this.held > 0) this.encodeHeld(onBlock);
  }

  /** rows encoded so far */
  get rows(): number {
    return this.emitted;
  }

  private encodeHeld(onBlock: (b: EncodedBlock) => void): void {
    const n = this.held;
    const { d, sae } = this;
    const x = this.x.subarray(0, n * d);
    if (!this.opts.preprocessed) preprocessRows(x, n, d, sae.preprocessing, sae.scale);
    this.kernels.encodeSelect(sae.params, x, n, this.selectionFor(n), [], this.enc);
    const o = this.origin;
    onBlock({ n, first: this.emitted, codes: this.enc.codes, tokenId: o.tokenId.subarray(0, n), context: o.context.subarray(0, n), position: o.position.subarray(0, n) });
    this.emitted += n;
    this.held = 0;
  }
}

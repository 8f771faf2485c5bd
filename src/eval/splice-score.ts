import type { HookedTransformer } from '../lm/model.js';
import type { RunOutput } from './splice-runs.js';

/** Rows of logits materialised at once, all runs together: one unembedding GEMM per chunk keeps
 * the packing of its weights amortised, and memory bounded at LOGIT_ROWS × V floats. */
const LOGIT_ROWS = 768;

/** Where a run's summed next-token CE and KL(clean ‖ run) go. */
export interface RunSums {
  loss: number;
  kl: number;
}

/**
 * Next-token cross-entropy and KL(clean ‖ run) (SPEC §9) at the counted positions of a batch, for
 * the clean run and every other run, summed into each run's sums. The logits of the counted rows
 * are computed chunk by chunk (every full run's rows of a chunk in one GEMM); a broadcast run's
 * one row of logits serves every position.
 */
export class LogitScorer {
  private readonly d: number;
  private readonly V: number;
  private readonly unembed: ReturnType<HookedTransformer['unembedInOut']>;
  // allocated once: the stacked normalized rows of every run for one chunk, and their logits
  private readonly stack: Float32Array;
  private readonly logits: Float32Array;
  private readonly ce: Float32Array;
  private readonly kl: Float32Array;
  private readonly targets: Int32Array;

  constructor(private readonly model: HookedTransformer) {
    this.d = model.cfg.dModel;
    this.V = model.cfg.vocab;
    this.stack = new Float32Array(LOGIT_ROWS * this.d);
    this.logits = new Float32Array(LOGIT_ROWS * this.V);
    this.ce = new Float32Array(LOGIT_ROWS);
    this.kl = new Float32Array(LOGIT_ROWS);
    this.targets = new Int32Array(LOGIT_ROWS);
    this.unembed = model.unembedInOut();
  }

  /**
   * Score the positions `at[0..nc)` (each predicting `next[at[i]]`): the clean run's CE is added to
   * `clean.loss`, each other run's CE and KL to its `acc`.
   */
  score(normClean: Float32Array, others: (RunOutput & { acc: RunSums })[], at: Int32Array, nc: number, next: Int32Array, clean: { loss: number }): void {
    const { model, d, V } = this;
    const full = others.filter((o) => !o.broadcast);
    const single = others.filter((o) => o.broadcast).map((o) => ({ ...o, ...this.rowLogits(o.normed) }));
    const chunk = Math.max(1, Math.floor(LOGIT_ROWS / (1 + full.length)));
    for (let from = 0; from < nc; from += chunk) {
      const rows = Math.min(chunk, nc - from);
      const targets = this.targets.subarray(0, rows);
      for (let r = 0; r < rows; r++) targets[r] = next[at[from + r]];
      // one GEMM for the chunk's rows of every full run: block 0 clean, block 1 + f run f
      const blocks = [normClean, ...full.map((o) => o.normed)];
      blocks.forEach((nm, k) => {
        for (let r = 0; r < rows; r++) this.stack.set(nm.subarray(at[from + r] * d, (at[from + r] + 1) * d), (k * rows + r) * d);
      });
      const L = this.logits.subarray(0, blocks.length * rows * V);
      model.kernels.linear(this.stack.subarray(0, blocks.length * rows * d), blocks.length * rows, d, this.unembed, V, 'in_out', null, L);
      const Lc = L.subarray(0, rows * V);
      const ce = this.ce.subarray(0, rows);
      const kl = this.kl.subarray(0, rows);
      model.kernels.crossEntropy(Lc, rows, V, targets, ce);
      for (let r = 0; r < rows; r++) clean.loss += ce[r];
      full.forEach((o, f) => {
        const Lq = L.subarray((1 + f) * rows * V, (2 + f) * rows * V);
        model.kernels.crossEntropy(Lq, rows, V, targets, ce);
        model.kernels.klDivergence(Lc, Lq, rows, V, false, kl);
        for (let r = 0; r < rows; r++) {
          o.acc.loss += ce[r];
          o.acc.kl += kl[r];
        }
      });
      for (const o of single) {
        // CE = lse − logit[target] of the one row every position shares
        model.kernels.klDivergence(Lc, o.l, rows, V, true, kl);
        for (let r = 0; r < rows; r++) {
          o.acc.loss += o.lse - o.l[targets[r]];
          o.acc.kl += kl[r];
        }
      }
    }
  }

  /** logits of one broadcast row and its log-sum-exp */
  private rowLogits(normed: Float32Array): { l: Float32Array; lse: number } {
    const { model, d, V } = this;
    const l = new Float32Array(V);
    model.kernels.linear(normed, 1, d, this.unembed, V, 'in_out', null, l);
    const ce = new Float32Array(1);
    model.kernels.crossEntropy(l, 1, V, new Int32Array(1), ce);
    return { l, lse: ce[0] + l[0] };
  }
}

import { UserError } from '../util/errors.js';
import { ScaleEstimator } from '../store/preprocess.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { ActivationRows, type RowBatch, type RowOptions, type RowSource } from './rows.js';

/**
 * The dataset scale of `dataset_scale` preprocessing (SPEC §3, SAELens'
 * `normalize_activations="expected_average_only_in"`): s = sqrt(d) / mean‖x‖ over the first
 * `limit` raw rows of the row stream, one s per hook.
 */

/** A batch of rows held back, copied out of the row stream's reused buffers. */
export interface HeldBatch {
  n: number;
  acts: Record<string, Float32Array>;
  tokenIds: Int32Array;
  contextIds: Int32Array;
  positions: Int32Array;
}

/**
 * Rows a harvest holds in memory until the scale of every hook is known: nothing can be written
 * before it (every shard records it), so the first `limit` rows wait here, then go to the writers.
 */
export class HeldRows {
  private readonly held: HeldBatch[] = [];
  private readonly est: Record<string, ScaleEstimator>;

  constructor(
    private readonly hooks: string[],
    d: number,
    limit: number,
  ) {
    this.est = Object.fromEntries(hooks.map((h) => [h, new ScaleEstimator(d, limit)]));
  }

  /** the estimate has its rows: what comes next goes straight to the writers */
  get full(): boolean {
    return this.est[this.hooks[0]].full;
  }

  hold(b: RowBatch<unknown>): void {
    for (const h of this.hooks) this.est[h].add(b.acts[h], b.n);
    this.held.push({
      n: b.n,
      acts: Object.fromEntries(this.hooks.map((h) => [h, b.acts[h].slice()])),
      tokenIds: b.tokenIds.slice(),
      contextIds: b.contextIds.slice(),
      positions: b.positions.slice(),
    });
  }

  /** each hook's scale, over the rows held up to the limit (all of them when the stream ended first) */
  scales(): Record<string, number> {
    return Object.fromEntries(this.hooks.map((h) => [h, this.est[h].scale()]));
  }

  /** the held batches in order, released as they are taken */
  *drain(): Generator<HeldBatch> {
    while (this.held.length) yield this.held.shift()!;
  }
}

/**
 * Estimate the scale of each hook over the first `limit` rows of the corpus by running the host LM
 * over them (training from the model: the rows are harvested again for training, so this pass
 * only keeps their norms). Fewer rows when the corpus is shorter.
 */
export async function estimateScales<P>(model: HookedTransformer, tokenizer: LmTokenizer, corpus: RowSource<P>, opts: RowOptions, limit: number): Promise<Record<string, number>> {
  const d = model.cfg.dModel;
  const est = Object.fromEntries(opts.hooks.map((h) => [h, new ScaleEstimator(d, limit)]));
  const rows = new ActivationRows<P>(model, tokenizer, corpus, opts);
  const first = est[opts.hooks[0]];
  while (!first.full) {
    const b = await rows.next(limit - first.rows);
    if (!b) break;
    for (const h of opts.hooks) est[h].add(b.acts[h], b.n);
  }
  if (first.rows === 0) throw new UserError('the corpus yielded no tokens to estimate the dataset scale over');
  return Object.fromEntries(opts.hooks.map((h) => [h, est[h].scale()]));
}

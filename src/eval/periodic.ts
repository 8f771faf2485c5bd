import type { KernelFactory } from '../kernels/types.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { spliceEval, type SpliceSae } from './splice.js';

/**
 * A measurement taken every few steps while an SAE trains, as SAELens' trainer calls the evaluator
 * it is given: the job hands it the SAE as it stands (the trainer's state is not touched) and logs
 * the record it returns to metrics.jsonl as {step, kind, ...record}.
 */
export interface TrainingEvaluator {
  /** steps between measurements; the last step is measured too */
  every: number;
  /** the record's kind in metrics.jsonl */
  kind: string;
  evaluate(sae: SpliceSae): Promise<{ record: Record<string, unknown>; note: string }>;
}

/** The host LM and the hook the SAE is spliced into. */
export interface SpliceSite {
  model: HookedTransformer;
  tokenizer: LmTokenizer;
  hook: string;
  ctx: number;
  /** contexts per forward pass */
  batch: number;
}

/** Splice-eval (SPEC §9) on held-out text: loss recovered and KL score of the SAE as it stands. */
export function spliceEvaluator<P>(
  site: SpliceSite,
  opts: { every: number; maxTokens: number; corpus: { documents(from?: P | null): AsyncIterable<{ text: string; position: P }> }; kernels?: KernelFactory },
): TrainingEvaluator {
  return {
    every: opts.every,
    kind: 'splice',
    async evaluate(sae) {
      const r = await spliceEval({ ...site, saes: [sae], corpus: opts.corpus, maxTokens: opts.maxTokens, kernels: opts.kernels });
      const s = r.spliced[0];
      const record = { tokens: r.tokens, cleanLoss: r.cleanLoss, zeroLoss: r.zeroLoss, loss: s.loss, lossRecovered: s.lossRecovered, kl: s.kl, klScore: s.klScore, specialTokens: r.specialTokens };
      const note = `loss recovered ${s.lossRecovered.toFixed(2)}% (clean ${r.cleanLoss.toFixed(4)}, spliced ${s.loss.toFixed(4)}, zero ${r.zeroLoss.toFixed(4)}) over ${r.tokens} held-out tokens`;
      return { record, note };
    },
  };
}

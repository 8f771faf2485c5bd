import { UserError } from '../util/errors.js';
import type { KernelFactory } from '../kernels/types.js';
import type { Precision } from '../kernels/bf16.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { parseHook } from '../lm/hooks.js';
import { HeldOutContexts } from './splice-contexts.js';
import { SpliceRunner, meanOfRows, reconSummary, type ReconStats, type ReconstructOverride, type RunOutput, type SpliceSae } from './splice-runs.js';
import { LogitScorer, type RunSums } from './splice-score.js';

export type { SpliceSae } from './splice-runs.js';

export interface SpliceOptions<P> {
  model: HookedTransformer;
  tokenizer: LmTokenizer;
  corpus: { documents(from?: P | null): AsyncIterable<{ text: string; position: P }> };
  hook: string;
  saes: SpliceSae[];
  ctx: number;
  /** contexts per forward pass */
  batch: number;
  maxTokens: number;
  /** count special-token positions too (and reconstruct them) */
  includeSpecial?: boolean;
  meanAblation?: boolean;
  /**
   * the SAEs' kernels (default: the reference kernels). One precision runs the LM and the SAEs:
   * the model's kernels' (lmKernelFactory(name, precision)); SAE kernels of another are refused.
   */
  kernels?: KernelFactory;
  onProgress?: (tokens: number) => void;
  /** testing: replace the reconstruction by a function of the raw activations */
  reconstructOverride?: ReconstructOverride;
}

export interface SpliceRun {
  label: string;
  loss: number;
  kl: number;
  lossRecovered: number;
  klScore: number;
  /** mean active features per reconstructed token, and FVU in the SAE's preprocessed space, on the spliced rows (absent under a reconstruction override) */
  l0?: number;
  fvu?: number;
}

export interface SpliceResult {
  hook: string;
  tokens: number;
  contexts: number;
  specialTokens: 'excluded' | 'included';
  /** the arithmetic of every run (docs/precision.md): the model's kernels', which the SAEs' share */
  precision: Precision;
  cleanLoss: number;
  zeroLoss: number;
  zeroKl: number;
  meanAblation?: { loss: number; kl: number };
  spliced: SpliceRun[];
}

/**
 * Splice-eval (SPEC §9): the host LM's next-token cross-entropy on held-out text, clean, with the
 * hook's activation replaced by the SAE's reconstruction (preprocessing inverted with each
 * token's own mean and norm, SPEC §3), and with it zeroed (optionally mean-ablated):
 *
 *   loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean)
 *   KL score       = (KL_zero − KL_spliced) / KL_zero,   KL = KL(clean ‖ run) of the next-token distributions
 *
 * Each CE and KL is averaged over the counted positions first; ratios are taken of the averages.
 * Special tokens (BOS/EOS/padding) by default as SAELens' evals: their activation is kept in the
 * spliced run (not reconstructed) and positions holding them are left out of every average; the
 * ablated runs still ablate them. The clean run's prefix up to a residual-stream hook is shared.
 */
export async function spliceEval<P>(opts: SpliceOptions<P>): Promise<SpliceResult> {
  const residual = checkSite(opts);
  const { model } = opts;
  const T = opts.ctx;
  // A context's last token is only a target: no later position attends to it and its own
  // prediction has nothing to score, so every run covers the first T − 1 positions.
  const Tr = T - 1;
  const texts = new HeldOutContexts(opts.corpus, opts.tokenizer, T, opts.batch, !!opts.includeSpecial);
  const runner = new SpliceRunner(model, opts.hook, residual, texts.ids, opts.saes, opts.kernels, opts.reconstructOverride);
  const scorer = new LogitScorer(model);
  const sums: Sums = { clean: { loss: 0 }, zero: { loss: 0, kl: 0 }, mean: { loss: 0, kl: 0 }, spliced: opts.saes.map(() => ({ loss: 0, kl: 0 })) };
  let counted = 0;
  let contexts = 0;
  while (counted < opts.maxTokens) {
    const B = await texts.take(opts.maxTokens - counted);
    if (B === 0) break;
    contexts += B;
    counted += evaluateBatch(opts, texts, runner, scorer, B, Tr, sums);
    opts.onProgress?.(counted);
    if (texts.exhausted) break;
  }
  if (counted === 0) throw new UserError('the evaluation text yielded no tokens to count');
  return spliceResult(opts, sums, counted, contexts, opts.reconstructOverride ? null : runner.stats);
}

/** The hook can be spliced into this model at this context length; returns whether it is on the residual stream. */
function checkSite<P>(opts: SpliceOptions<P>): boolean {
  const cfg = opts.model.cfg;
  const d = cfg.dModel;
  const site = parseHook(opts.hook, cfg);
  if (site.kind === 'pattern') throw new UserError(`hook ${opts.hook}: attention patterns cannot be spliced`);
  for (const s of opts.saes) if (s.params.d !== d) throw new UserError(`SAE ${s.label} has d_in ${s.params.d} but ${opts.hook} of this model has d=${d}`);
  if (opts.ctx > cfg.nPositions) throw new UserError(`--ctx ${opts.ctx} is longer than the model's ${cfg.nPositions} positions`);
  if (opts.ctx < 2) throw new UserError(`--ctx ${opts.ctx} leaves no next token to predict (at least 2)`);
  return site.kind === 'resid_pre' || site.kind === 'resid_post';
}

/** CE and KL sums over the counted positions, per run. */
interface Sums {
  clean: { loss: number };
  zero: RunSums;
  mean: RunSums;
  spliced: RunSums[];
}

/** Run a batch of B contexts clean, spliced and ablated, and add its scores to `sums`; returns the positions counted. */
function evaluateBatch<P>(opts: SpliceOptions<P>, texts: HeldOutContexts<P>, runner: SpliceRunner, scorer: LogitScorer, B: number, Tr: number, sums: Sums): number {
  const d = opts.model.cfg.dModel;
  const n = B * Tr;
  const ids = texts.ids;
  const clean = opts.model.run(ids.subarray(0, n), B, Tr, { capture: [opts.hook, 'ln_final.hook_normalized'] });
  const x = clean.captured[opts.hook];
  // positions that count: (by default) those holding no special token; they are also the ones
  // reconstructed
  const count = new Uint8Array(n);
  for (let i = 0; i < n; i++) count[i] = texts.counts(ids[i]) ? 1 : 0;
  const recon = count;
  // every run besides the clean one, with where its sums go
  const others: (RunOutput & { acc: RunSums })[] = opts.saes.map((_, si) => ({ ...runner.spliced(si, B, Tr, x, recon), acc: sums.spliced[si] }));
  // this batch's ablation sums, added to the totals once the batch is scored
  const z = { loss: 0, kl: 0 };
  others.push({ ...runner.ablated(B, Tr, new Float32Array(d)), acc: z });
  const m = { loss: 0, kl: 0 };
  if (opts.meanAblation) others.push({ ...runner.ablated(B, Tr, meanOfRows(x, recon, n, d)), acc: m });
  // only the counted positions get logits (not a context's last position, nor special tokens)
  const at = new Int32Array(n);
  let nc = 0;
  for (let i = 0; i < n; i++) if (count[i]) at[nc++] = i;
  scorer.score(clean.captured['ln_final.hook_normalized'], others, at, nc, texts.next, sums.clean);
  sums.zero.loss += z.loss;
  sums.zero.kl += z.kl;
  sums.mean.loss += m.loss;
  sums.mean.kl += m.kl;
  return nc;
}

/** SPEC §9: each average over the counted positions first, then the ratios of the averages. */
function spliceResult<P>(opts: SpliceOptions<P>, sums: Sums, counted: number, contexts: number, stats: ReconStats[] | null): SpliceResult {
  const cleanLoss = sums.clean.loss / counted;
  const zeroLoss = sums.zero.loss / counted;
  const zeroKl = sums.zero.kl / counted;
  return {
    hook: opts.hook,
    tokens: counted,
    contexts,
    specialTokens: opts.includeSpecial ? 'included' : 'excluded',
    precision: opts.model.kernels.precision ?? 'fp32',
    cleanLoss,
    zeroLoss,
    zeroKl,
    meanAblation: opts.meanAblation ? { loss: sums.mean.loss / counted, kl: sums.mean.kl / counted } : undefined,
    spliced: opts.saes.map((s, si) => {
      const loss = sums.spliced[si].loss / counted;
      const klv = sums.spliced[si].kl / counted;
      return {
        label: s.label,
        loss,
        kl: klv,
        lossRecovered: (100 * (zeroLoss - loss)) / (zeroLoss - cleanLoss),
        klScore: zeroKl > 0 ? (zeroKl - klv) / zeroKl : NaN,
        ...(stats ? reconSummary(stats[si]) : {}),
      };
    }),
  };
}

import { UserError } from '../util/errors.js';
import type { KernelFactory, SaeParams, Selection } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { allocCodes } from '../kernels/selection.js';
import { preprocessRows, type Preprocessing } from '../store/preprocess.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { parseHook } from '../lm/hooks.js';
import { ContextPacker } from '../harvest/contexts.js';

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
/** Rows of logits materialised at once, all runs together: one unembedding GEMM per chunk keeps
 * the packing of its weights amortised, and memory bounded at LOGIT_ROWS × V floats. */
const LOGIT_ROWS = 768;

export interface SpliceSae {
  label: string;
  params: SaeParams;
  /** the selection for a batch of B rows (batch-dependent selections use the training batch size) */
  selectionFor: (B: number) => Selection;
  /** rows per SAE batch */
  batchSize: number;
  /** how the SAE's inputs were preprocessed (checkpoint normalize_activations) */
  preprocessing: Preprocessing;
  scale?: number;
}

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
  kernels?: KernelFactory;
  onProgress?: (tokens: number) => void;
  /** testing: replace the reconstruction by a function of the raw activations */
  reconstructOverride?: (x: Float32Array, n: number, d: number) => void;
}

interface Ablated {
  /** the final normalized residual: [n×d], or one row [1×d] shared by every position */
  normed: Float32Array;
  broadcast: boolean;
}

export interface SpliceRun {
  label: string;
  loss: number;
  kl: number;
  lossRecovered: number;
  klScore: number;
}

export interface SpliceResult {
  hook: string;
  tokens: number;
  contexts: number;
  specialTokens: 'excluded' | 'included';
  cleanLoss: number;
  zeroLoss: number;
  zeroKl: number;
  meanAblation?: { loss: number; kl: number };
  spliced: SpliceRun[];
}

export async function spliceEval<P>(opts: SpliceOptions<P>): Promise<SpliceResult> {
  const { model, tokenizer } = opts;
  const cfg = model.cfg;
  const d = cfg.dModel;
  const site = parseHook(opts.hook, cfg);
  if (site.kind === 'pattern') throw new UserError(`hook ${opts.hook}: attention patterns cannot be spliced`);
  for (const s of opts.saes) if (s.params.d !== d) throw new UserError(`SAE ${s.label} has d_in ${s.params.d} but ${opts.hook} of this model has d=${d}`);
  if (opts.ctx > cfg.nPositions) throw new UserError(`--ctx ${opts.ctx} is longer than the model's ${cfg.nPositions} positions`);
  const residual = site.kind === 'resid_pre' || site.kind === 'resid_post';
  if (opts.ctx < 2) throw new UserError(`--ctx ${opts.ctx} leaves no next token to predict (at least 2)`);
  const T = opts.ctx;
  // A context's last token is only a target: no later position attends to it and its own
  // prediction has nothing to score, so every run covers the first T − 1 positions.
  const Tr = T - 1;
  const Bmax = opts.batch;
  const N = Bmax * Tr;
  const V = cfg.vocab;
  const special = new Set([tokenizer.bosId, tokenizer.eosId]);
  const kernels = opts.saes.map((s) => (opts.kernels ?? createReferenceKernels)({ d, F: s.params.F, maxB: s.batchSize }));
  const maxSaeB = Math.max(1, ...opts.saes.map((s) => s.batchSize));
  const buf = {
    x: new Float32Array(N * d),
    rows: new Float32Array(N * d),
    mean: new Float32Array(N),
    norm: new Float32Array(N),
    xhat: new Float32Array(maxSaeB * d),
    zero: new Float32Array(residual ? d : N * d),
    // allocated once: the stacked normalized rows of every run for one chunk, and their logits
    stack: new Float32Array(LOGIT_ROWS * d),
    logits: new Float32Array(LOGIT_ROWS * V),
    ce: new Float32Array(LOGIT_ROWS),
    kl: new Float32Array(LOGIT_ROWS),
    targets: new Int32Array(LOGIT_ROWS),
  };
  const unembed = model.unembedInOut();
  const sums = { clean: 0, zero: 0, zeroKl: 0, mean: 0, meanKl: 0, spliced: opts.saes.map(() => ({ loss: 0, kl: 0 })) };
  let counted = 0;
  let contexts = 0;

  const packer = new ContextPacker<P>(T, tokenizer.bosId, tokenizer.eosId, 'concat');
  const docs = opts.corpus.documents(null)[Symbol.asyncIterator]();
  let ended = false;
  let lastPos: P | null = null;
  const packed = new Int32Array(Bmax * T);
  /** the positions run [B×Tr] and the token each predicts */
  const ids = new Int32Array(N);
  const next = new Int32Array(N);

  /** Run from the hook with x there; returns the final normalized residual [n×d]. */
  const runWith = (B: number, Tn: number, x: Float32Array): Float32Array => {
    const idv = ids.subarray(0, B * Tn);
    const r = residual
      ? model.run(idv, B, Tn, { start: { hook: opts.hook, x }, capture: ['ln_final.hook_normalized'] })
      : model.run(idv, B, Tn, { replace: { [opts.hook]: x }, capture: ['ln_final.hook_normalized'] });
    return r.captured['ln_final.hook_normalized'];
  };
  /**
   * An ablation that writes one vector c at every position. At a residual-stream hook everything
   * after it then sees the same input at every position, and attention over identical values
   * returns that value whatever the weights: every position's output is the same, so one position
   * computes the whole run (a [1×d] row). At other hooks the run is computed in full.
   */
  const ablate = (B: number, c: Float32Array): Ablated => {
    if (residual) return { normed: runWith(1, 1, c).slice(), broadcast: true };
    const xs = buf.x.subarray(0, B * Tr * d);
    for (let i = 0; i < B * Tr; i++) xs.set(c, i * d);
    return { normed: runWith(B, Tr, xs).slice(), broadcast: false };
  };
  /** logits of one broadcast row and its log-sum-exp */
  const rowLogits = (normed: Float32Array) => {
    const l = new Float32Array(V);
    model.kernels.linear(normed, 1, d, unembed, V, 'in_out', null, l);
    const ce = new Float32Array(1);
    model.kernels.crossEntropy(l, 1, V, new Int32Array(1), ce);
    return { l, lse: ce[0] + l[0] };
  };

  while (counted < opts.maxTokens) {
    let B = 0;
    // positions this batch will count, known per context as it is taken: the last batch stops
    // filling once --max-tokens is reached, so at most one context's worth is evaluated beyond it
    let expected = counted;
    while (B < Bmax && expected < opts.maxTokens) {
      const c = packer.take();
      if (c) {
        packed.set(c.ids, B * T);
        for (let t = 0; t < Tr; t++) if (opts.includeSpecial || !special.has(c.ids[t])) expected++;
        B++;
        continue;
      }
      if (ended) break;
      const r = await docs.next();
      if (r.done) ended = true;
      else {
        packer.push(tokenizer.encode(r.value.text), lastPos);
        lastPos = r.value.position;
      }
    }
    if (B === 0) break;
    contexts += B;
    const n = B * Tr;
    for (let b = 0; b < B; b++) {
      ids.set(packed.subarray(b * T, b * T + Tr), b * Tr);
      next.set(packed.subarray(b * T + 1, (b + 1) * T), b * Tr);
    }
    const clean = model.run(ids.subarray(0, n), B, Tr, { capture: [opts.hook, 'ln_final.hook_normalized'] });
    const x = clean.captured[opts.hook];
    const normClean = clean.captured['ln_final.hook_normalized'];
    // positions that count: (by default) those holding no special token; they are also the ones
    // reconstructed
    const count = new Uint8Array(n);
    for (let i = 0; i < n; i++) count[i] = opts.includeSpecial || !special.has(ids[i]) ? 1 : 0;
    const recon = count;
    // every run besides the clean one, with where its sums go
    const others: { normed: Float32Array; broadcast: boolean; acc: { loss: number; kl: number } }[] = [];
    for (let si = 0; si < opts.saes.length; si++) {
      const xs = buf.x.subarray(0, n * d);
      xs.set(x);
      reconstructRows(opts.saes[si], kernels[si], xs, recon, n, d, buf, opts.reconstructOverride);
      others.push({ normed: runWith(B, Tr, xs).slice(), broadcast: false, acc: sums.spliced[si] });
    }
    const z = { loss: 0, kl: 0 };
    others.push({ ...ablate(B, buf.zero.subarray(0, d)), acc: z });
    const m = { loss: 0, kl: 0 };
    if (opts.meanAblation) {
      const mean = new Float64Array(d);
      let cnt = 0;
      for (let i = 0; i < n; i++) if (recon[i]) {
        cnt++;
        for (let j = 0; j < d; j++) mean[j] += x[i * d + j];
      }
      others.push({ ...ablate(B, Float32Array.from(mean, (v) => (cnt ? v / cnt : 0))), acc: m });
    }
    const full = others.filter((o) => !o.broadcast);
    const single = others.filter((o) => o.broadcast).map((o) => ({ ...o, ...rowLogits(o.normed) }));
    // only the counted positions get logits (not a context's last position, nor special tokens)
    const at = new Int32Array(n);
    let nc = 0;
    for (let i = 0; i < n; i++) if (count[i]) at[nc++] = i;
    const chunk = Math.max(1, Math.floor(LOGIT_ROWS / (1 + full.length)));
    for (let from = 0; from < nc; from += chunk) {
      const rows = Math.min(chunk, nc - from);
      const targets = buf.targets.subarray(0, rows);
      for (let r = 0; r < rows; r++) targets[r] = next[at[from + r]];
      // one GEMM for the chunk's rows of every full run: block 0 clean, block 1 + f run f
      const blocks = [normClean, ...full.map((o) => o.normed)];
      blocks.forEach((nm, k) => {
        for (let r = 0; r < rows; r++) buf.stack.set(nm.subarray(at[from + r] * d, (at[from + r] + 1) * d), (k * rows + r) * d);
      });
      const L = buf.logits.subarray(0, blocks.length * rows * V);
      model.kernels.linear(buf.stack.subarray(0, blocks.length * rows * d), blocks.length * rows, d, unembed, V, 'in_out', null, L);
      const Lc = L.subarray(0, rows * V);
      const ce = buf.ce.subarray(0, rows);
      const kl = buf.kl.subarray(0, rows);
      model.kernels.crossEntropy(Lc, rows, V, targets, ce);
      for (let r = 0; r < rows; r++) sums.clean += ce[r];
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
    sums.zero += z.loss;
    sums.zeroKl += z.kl;
    sums.mean += m.loss;
    sums.meanKl += m.kl;
    counted += nc;
    opts.onProgress?.(counted);
    if (ended && packer.pending === 0) break;
  }
  if (counted === 0) throw new UserError('the evaluation text yielded no tokens to count');
  const cleanLoss = sums.clean / counted;
  const zeroLoss = sums.zero / counted;
  const zeroKl = sums.zeroKl / counted;
  return {
    hook: opts.hook,
    tokens: counted,
    contexts,
    specialTokens: opts.includeSpecial ? 'included' : 'excluded',
    cleanLoss,
    zeroLoss,
    zeroKl,
    meanAblation: opts.meanAblation ? { loss: sums.mean / counted, kl: sums.meanKl / counted } : undefined,
    spliced: opts.saes.map((s, si) => {
      const loss = sums.spliced[si].loss / counted;
      const klv = sums.spliced[si].kl / counted;
      return { label: s.label, loss, kl: klv, lossRecovered: (100 * (zeroLoss - loss)) / (zeroLoss - cleanLoss), klScore: zeroKl > 0 ? (zeroKl - klv) / zeroKl : NaN };
    }),
  };
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
  override?: (x: Float32Array, n: number, d: number) => void,
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
    for (let r = 0; r < b; r++) {
      const dst = idx[r0 + r] * d;
      for (let j = 0; j < d; j++) {
        const v = buf.xhat[r * d + j];
        // SPEC §3: x_raw_hat = x_hat · norm + mean (center_unit_norm); ÷ scale (dataset_scale)
        xs[dst + j] = sae.preprocessing === 'center_unit_norm' ? v * buf.norm[r0 + r] + buf.mean[r0 + r] : sae.preprocessing === 'dataset_scale' ? v / (sae.scale ?? 1) : v;
      }
    }
  }
}



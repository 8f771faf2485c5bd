import { UserError } from '../util/errors.js';
import type { KernelFactory, SaeParams, Selection } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { allocCodes } from '../sae/selection.js';
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
/** Rows of logits materialised at once: bounds memory at a few × LOGIT_ROWS × V. */
const LOGIT_ROWS = 256;

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
  const T = opts.ctx;
  const Bmax = opts.batch;
  const N = Bmax * T;
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
    zero: new Float32Array(N * d),
    // allocated once: LOGIT_ROWS rows of logits and of the clean run's probabilities
    logits: new Float32Array(LOGIT_ROWS * V),
    pClean: new Float32Array(LOGIT_ROWS * V),
    negH: new Float64Array(LOGIT_ROWS),
    ce: new Float32Array(LOGIT_ROWS),
    targets: new Int32Array(LOGIT_ROWS),
  };
  const sums = { clean: 0, zero: 0, zeroKl: 0, mean: 0, meanKl: 0, spliced: opts.saes.map(() => ({ loss: 0, kl: 0 })) };
  let counted = 0;
  let contexts = 0;

  const packer = new ContextPacker<P>(T, tokenizer.bosId, tokenizer.eosId, 'concat');
  const docs = opts.corpus.documents(null)[Symbol.asyncIterator]();
  let ended = false;
  let lastPos: P | null = null;
  const ids = new Int32Array(N);

  /** Run from the hook with x there; returns the final normalized residual [n×d]. */
  const runWith = (B: number, x: Float32Array): Float32Array => {
    const idv = ids.subarray(0, B * T);
    const r = residual
      ? model.run(idv, B, T, { start: { hook: opts.hook, x }, capture: ['ln_final.hook_normalized'] })
      : model.run(idv, B, T, { replace: { [opts.hook]: x }, capture: ['ln_final.hook_normalized'] });
    return r.captured['ln_final.hook_normalized'];
  };

  while (counted < opts.maxTokens) {
    let B = 0;
    while (B < Bmax) {
      const c = packer.take();
      if (c) {
        ids.set(c.ids, B * T);
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
    const n = B * T;
    const clean = model.run(ids.subarray(0, n), B, T, { capture: [opts.hook, 'ln_final.hook_normalized'] });
    const x = clean.captured[opts.hook];
    const normClean = clean.captured['ln_final.hook_normalized'];
    // positions that count: predict ids[t+1], and (by default) hold no special token
    const count = new Uint8Array(n);
    const recon = new Uint8Array(n);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const i = b * T + t;
        const isSpecial = special.has(ids[i]);
        recon[i] = opts.includeSpecial || !isSpecial ? 1 : 0;
        count[i] = t < T - 1 && recon[i] ? 1 : 0;
      }
    }
    const runs: Float32Array[] = [];
    for (let si = 0; si < opts.saes.length; si++) {
      const xs = buf.x.subarray(0, n * d);
      xs.set(x);
      reconstructRows(opts.saes[si], kernels[si], xs, recon, n, d, buf, opts.reconstructOverride);
      runs.push(runWith(B, xs).slice());
    }
    const zero = runWith(B, buf.zero.subarray(0, n * d)).slice();
    let meanRun: Float32Array | null = null;
    if (opts.meanAblation) {
      const mean = new Float64Array(d);
      let m = 0;
      for (let i = 0; i < n; i++) if (recon[i]) {
        m++;
        for (let j = 0; j < d; j++) mean[j] += x[i * d + j];
      }
      const xm = buf.x.subarray(0, n * d);
      for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) xm[i * d + j] = m ? mean[j] / m : 0;
      meanRun = runWith(B, xm).slice();
    }
    for (let from = 0; from < n; from += LOGIT_ROWS) {
      const rows = Math.min(LOGIT_ROWS, n - from);
      const targets = buf.targets.subarray(0, rows);
      for (let r = 0; r < rows; r++) targets[r] = count[from + r] ? ids[from + r + 1] : 0;
      // logits of `rows` rows, and per row CE = lse − logit[target] from the kernel (so lse too)
      const logitsOf = (normed: Float32Array) => {
        const L = buf.logits.subarray(0, rows * V);
        model.kernels.linear(normed.subarray(from * d, (from + rows) * d), rows, d, model.weights.unembed, V, 'out_in', null, L);
        model.kernels.crossEntropy(L, rows, V, targets, buf.ce);
        return L;
      };
      // clean: probabilities p and entropy term Σ p log p of each counted row, kept for the KLs
      const Lc = logitsOf(normClean);
      for (let r = 0; r < rows; r++) {
        if (!count[from + r]) continue;
        const lse = buf.ce[r] + Lc[r * V + targets[r]];
        sums.clean += buf.ce[r];
        const p = buf.pClean.subarray(r * V, (r + 1) * V);
        let h = 0;
        for (let j = 0; j < V; j++) {
          const lp = Lc[r * V + j] - lse;
          const e = Math.exp(lp);
          p[j] = e;
          h += e * lp;
        }
        buf.negH[r] = h;
      }
      // another run: its CE, and KL(clean ‖ run) = Σ p log p − Σ p l_q + lse_q
      const other = (normed: Float32Array, acc: { loss: number; kl: number }) => {
        const Lq = logitsOf(normed);
        for (let r = 0; r < rows; r++) {
          if (!count[from + r]) continue;
          acc.loss += buf.ce[r];
          const lse = buf.ce[r] + Lq[r * V + targets[r]];
          const p = buf.pClean.subarray(r * V, (r + 1) * V);
          let dot = 0;
          for (let j = 0; j < V; j++) dot += p[j] * Lq[r * V + j];
          acc.kl += buf.negH[r] - dot + lse;
        }
      };
      runs.forEach((r, si) => other(r, sums.spliced[si]));
      const z = { loss: 0, kl: 0 };
      other(zero, z);
      sums.zero += z.loss;
      sums.zeroKl += z.kl;
      if (meanRun) {
        const m = { loss: 0, kl: 0 };
        other(meanRun, m);
        sums.mean += m.loss;
        sums.meanKl += m.kl;
      }
    }
    for (let i = 0; i < n; i++) counted += count[i];
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



/**
 * `sae features` (issue 20): one pass of the host LM over a corpus, every SAE given encoding the
 * hook's activations, and per feature the evidence a reader needs (../eval/feature-pass.ts), its
 * logit effects (../eval/logit-effects.ts), and the feature browser over it all
 * (../report/browser/). The folder is built beside --out under a hidden name and renamed into
 * place complete: a killed pass leaves no half-written browser.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { KernelFactory } from '../kernels/types.js';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import { ActivationRows, type RowSource } from '../harvest/rows.js';
import type { Sae } from '../sae/sae.js';
import { CodeStream, type EncodeMode } from '../eval/encode.js';
import { FeaturePass, round4 } from '../eval/feature-pass.js';
import { logitEffects, type LogitEffects } from '../eval/logit-effects.js';
import { fitZipf } from '../eval/zipf-fit.js';
import { densityRanking } from '../sae/zipf.js';
import { FEATURES_SCHEMA, type FeatureIndex, type FeaturePage, type FeaturesManifest, type TextsData, type TokenKind } from '../eval/feature-data.js';
import { browserHtml, dataPaths, featureScript, indexScript, textsScript, vocabScript } from '../report/browser/page.js';
import { FEATURES_MANIFEST, ownsFolder } from '../store/outputs.js';
import { publishDirAtomic, tmpSibling } from '../util/atomic.js';
import { UserError } from '../util/errors.js';

export interface FeaturesSaeInput {
  label: string;
  sae: Sae;
  mode: EncodeMode;
}

export interface FeaturesOptions<P> {
  out: string;
  force?: boolean;
  model: HookedTransformer;
  /** the model as the manifest names it */
  modelName: string;
  tokenizer: LmTokenizer;
  corpus: RowSource<P>;
  saes: FeaturesSaeInput[];
  kernels?: KernelFactory;
  maxTokens: number;
  ctx: number;
  /** contexts per forward pass */
  batch: number;
  skipBos: boolean;
  top: number;
  samples: number;
  bands: number;
  before: number;
  after: number;
  texts: number;
  /** promoted and suppressed tokens per feature */
  logits: number;
  seed: number;
  onProgress?: (tokens: number) => void;
  info?: (line: string) => void;
}

export interface FeaturesResult {
  out: string;
  index: string;
  manifest: FeaturesManifest;
}

/** Refuse an --out that is something else's, before any work. */
export async function checkFeaturesOut(out: string, force: boolean): Promise<void> {
  const st = await fs.stat(out).catch(() => null);
  if (!st) return;
  if (!st.isDirectory()) throw new UserError(`--out ${out} is a file; give a folder`);
  const entries = (await fs.readdir(out)).filter((e) => !e.startsWith('.'));
  if (entries.length === 0 || force || ownsFolder('features', entries)) return;
  throw new UserError(`--out ${out} exists and is not an earlier sae features folder; add --force to replace it`);
}

export async function features<P>(o: FeaturesOptions<P>): Promise<FeaturesResult> {
  const t0 = Date.now();
  await checkFeaturesOut(o.out, o.force ?? false);
  await removeStaleTemps(o.out);
  // the folder grows under a hidden name from the start: a pass killed at any point leaves only that, which the next run clears
  const tmp = tmpSibling(o.out);
  await fs.mkdir(tmp, { recursive: true });
  try {
    return await pass(o, tmp, t0);
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

async function pass<P>(o: FeaturesOptions<P>, tmp: string, t0: number): Promise<FeaturesResult> {
  const { model, tokenizer } = o;
  const hook = o.saes[0].sae.hook;
  const V = tokenizer.vocabSize;
  const vocab = Array.from({ length: V }, (_, id) => tokenizer.decode([id]));
  const kindById = vocab.map(kindOfText);
  const specialIds = new Set([tokenizer.bosId, tokenizer.eosId]);
  const passes = o.saes.map(
    (s) =>
      new FeaturePass({
        F: s.sae.F, top: o.top, samples: o.samples, bands: o.bands, before: o.before, after: o.after, texts: o.texts, seed: o.seed,
        kindOfId: (id) => kindById[id] ?? 'continuation', specialIds,
      }),
  );
  const streams = o.saes.map((s) => new CodeStream(s.sae, { mode: s.mode, kernels: o.kernels, preprocessed: false }));
  const rows = new ActivationRows(model, tokenizer, o.corpus, { hooks: [hook], ctx: o.ctx, mode: 'concat', skipBos: o.skipBos, batch: o.batch, model: o.modelName });
  let n = 0;
  while (n < o.maxTokens) {
    const b = await rows.next(o.maxTokens - n);
    if (!b) break;
    const origin = { tokenId: b.tokenIds, context: b.contextIds, position: b.positions };
    streams.forEach((s, i) => s.push(b.acts[hook], b.n, origin, (blk) => passes[i].add(blk)));
    n += b.n;
    o.onProgress?.(n);
  }
  if (n === 0) throw new UserError(rows.tokensRead === 0 ? 'the corpus has no text: no token to look at' : `the corpus's text is shorter than one context of ${o.ctx} tokens; lower --ctx`);
  streams.forEach((s, i) => {
    s.flush((blk) => passes[i].add(blk));
    passes[i].end();
  });
  o.info?.(`features: ${n} tokens in ${rows.contexts} contexts through ${o.modelName} at ${hook} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
  return writeFolder(o, tmp, t0, { vocab, passes, streams, tokens: n, contexts: rows.contexts });
}

async function writeFolder<P>(
  o: FeaturesOptions<P>,
  tmp: string,
  t0: number,
  r: { vocab: string[]; passes: FeaturePass[]; streams: CodeStream[]; tokens: number; contexts: number },
): Promise<FeaturesResult> {
  const { model } = o;
  const { vocab, passes, streams } = r;
  const V = vocab.length;
  const hook = o.saes[0].sae.hook;
  const writer = new FileWriter(tmp);
  let manifest: FeaturesManifest;
  try {
    const saesOut: FeaturesManifest['saes'] = [];
    for (let i = 0; i < o.saes.length; i++) {
      const { label, sae, mode } = o.saes[i];
      const pass = passes[i];
      const t1 = Date.now();
      const effects = logitEffects(model.kernels, sae.params.Wdec, sae.F, sae.d, model.weights.lnFinal.w, model.unembedInOut(), 'in_out', model.weights.unembed.length / sae.d, V, o.logits);
      o.info?.(`features: ${label}: logit effects of ${sae.F} features over ${V} tokens (${((Date.now() - t1) / 1000).toFixed(1)}s)`);
      const index = featureIndex(label, pass, effects);
      await writer.write(path.join(label, 'index.json'), JSON.stringify(index));
      await writer.write(dataPaths.index(label), indexScript(label, index));
      for (let j = 0; j < sae.F; j++) await writer.write(dataPaths.feature(label, j), featureScript(label, featurePage(j, pass, index, effects)));
      saesOut.push({
        label, checkpoint: sae.dir, F: sae.F, d: sae.d, activation: activationOf(sae, mode), mode,
        batchSize: streams[i].batchSize, l0: pass.tokens ? pass.nnz / pass.tokens : 0,
      });
    }
    await writer.write(dataPaths.vocab, vocabScript({ tokens: vocab }));
    await writer.write(dataPaths.texts, textsScript(textsData(o.saes.map((s) => s.label), passes)));
    manifest = {
      schema: FEATURES_SCHEMA, model: o.modelName, hook, corpus: o.corpus.describe(), tokens: r.tokens, contexts: r.contexts, ctx: o.ctx,
      before: o.before, after: o.after, precision: model.kernels.precision ?? 'fp32', saes: saesOut, seconds: (Date.now() - t0) / 1000,
    };
    await writer.write(FEATURES_MANIFEST, JSON.stringify(manifest, null, 2) + '\n');
    await writer.write('index.html', browserHtml(manifest));
    await writer.done();
  } catch (err) {
    await writer.settle();
    throw err;
  }
  await publishDirAtomic(tmp, o.out);
  return { out: o.out, index: path.join(o.out, 'index.html'), manifest };
}

/** Writes many small files a few at a time (24,576 feature pages are most of the folder). */
class FileWriter {
  private readonly pending = new Set<Promise<void>>();
  private readonly dirs = new Set<string>();
  private failed: unknown = null;
  constructor(private readonly root: string) {}

  async write(rel: string, text: string): Promise<void> {
    if (this.failed) throw this.failed;
    const file = path.join(this.root, rel);
    const dir = path.dirname(file);
    if (!this.dirs.has(dir)) {
      await fs.mkdir(dir, { recursive: true });
      this.dirs.add(dir);
    }
    const p: Promise<void> = fs.writeFile(file, text).then(
      () => void this.pending.delete(p),
      (err) => {
        this.failed ??= err;
        this.pending.delete(p);
      },
    );
    this.pending.add(p);
    if (this.pending.size >= 32) await Promise.race(this.pending);
  }

  async done(): Promise<void> {
    await this.settle();
    if (this.failed) throw this.failed;
  }

  /** every write begun has ended (so that a failed pass's folder can be removed whole) */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.pending]);
  }
}

/**
 * What passes killed earlier left beside --out (their process is gone): the hidden folder a pass
 * grows, removed; and publishDirAtomic's `OUT.old-PID-TIME`, the earlier folder set aside for the
 * swap, put back when the kill fell between the swap's two renames (--out is missing), else removed.
 */
async function removeStaleTemps(out: string): Promise<void> {
  const dir = path.dirname(path.resolve(out));
  const base = path.basename(out);
  const pidOf = (rest: string) => Number(rest.split('-')[0]);
  for (const e of await fs.readdir(dir).catch(() => [] as string[])) {
    const tmp = e.startsWith(`.${base}.tmp-`) ? e.slice(base.length + 6) : null;
    const old = e.startsWith(`${base}.old-`) ? e.slice(base.length + 5) : null;
    const pid = pidOf(tmp ?? old ?? '');
    if (!Number.isInteger(pid) || pid === process.pid || alive(pid)) continue;
    if (old !== null && !(await fs.stat(out).catch(() => null))) await fs.rename(path.join(dir, e), path.resolve(out));
    else await fs.rm(path.join(dir, e), { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Token kinds for the appendix-D figure, by a token's text alone (specials are told by place). */
export function kindOfText(text: string): TokenKind {
  // a byte piece of a multi-byte character decodes to U+FFFD alone: part of a word, not a symbol
  if (text.includes('\uFFFD')) return /^\s/u.test(text) ? 'word' : 'continuation';
  if (/^[\s\p{P}\p{S}]*$/u.test(text)) return 'punctuation';
  if (/^\s/u.test(text)) return 'word';
  return 'continuation';
}

function activationOf(sae: Sae, mode: EncodeMode): string {
  if (mode === 'threshold' || sae.threshold) return 'jumprelu';
  return sae.trainConfig ? sae.trainConfig.activation : (sae.cfg.architecture ?? 'unknown');
}

function featureIndex(label: string, pass: FeaturePass, e: LogitEffects): FeatureIndex {
  const F = pass.F;
  const T = Math.max(pass.tokens, 1);
  const density = Array.from(pass.count, (c) => c / T);
  const order = densityRanking(density);
  const zipfRank = new Array<number>(F);
  for (let r = 0; r < F; r++) zipfRank[order[r]] = r + 1;
  const fit = fitZipf(density);
  return {
    label, F, tokens: pass.tokens,
    density: density.map(round4),
    maxActivation: Array.from(pass.max, round4),
    meanActivation: Array.from(pass.count, (c, j) => (c ? round4(pass.sum[j] / c) : 0)),
    zipfRank,
    shared: Array.from(pass.count, (c, j) => (c ? round4(pass.sharedSum[j] / c) : 0)),
    topToken: Array.from({ length: F }, (_, j) => pass.topToken(j)),
    promoted: Array.from({ length: F }, (_, j) => Array.from(e.promotedIds.subarray(j * e.n, j * e.n + Math.min(3, e.n)))),
    zipf: fit.alpha !== null && fit.beta !== null ? { alpha: fit.alpha, beta: fit.beta, r2: fit.r2 } : null,
    perToken: { all: pass.perToken, byKind: pass.perTokenByKind },
  };
}

function featurePage(j: number, pass: FeaturePass, idx: FeatureIndex, e: LogitEffects): FeaturePage {
  const pick = (ids: Int32Array, vals: Float32Array): [number, number][] => Array.from({ length: e.n }, (_, i) => [ids[j * e.n + i], round4(vals[j * e.n + i])]);
  return {
    id: j, density: idx.density[j], maxActivation: idx.maxActivation[j], meanActivation: idx.meanActivation[j], zipfRank: idx.zipfRank[j], shared: idx.shared[j],
    count: pass.count[j],
    top: pass.topExamples(j),
    quantiles: pass.quantileBands(j),
    histogram: pass.histogram(j),
    logits: { promoted: pick(e.promotedIds, e.promoted), suppressed: pick(e.suppressedIds, e.suppressed) },
  };
}

/** The per-token view: the first contexts, with what every SAE gave each token (the passes saw the same tokens). */
function textsData(labels: string[], passes: FeaturePass[]): TextsData {
  const first = passes[0].texts;
  return {
    labels,
    texts: first.map((t, i) => ({
      context: t.context,
      ids: t.ids,
      kinds: t.kinds,
      features: Object.fromEntries(labels.map((l, s) => [l, passes[s].texts[i].features.map((f) => f.map(([id, v]) => [id, round4(v)] as [number, number]))])),
    })),
  };
}

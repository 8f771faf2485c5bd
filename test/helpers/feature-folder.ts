/**
 * A synthetic `sae features` folder (src/eval/feature-data.ts): manifest, vocabulary, texts, each
 * SAE's index and the feature pages asked for, with the browser's index.html. Deterministic for a
 * seed; what it wrote comes back so a test can check the page against it.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  FEATURES_SCHEMA, TOKEN_KINDS,
  type FeatureExample, type FeatureIndex, type FeaturePage, type FeaturesManifest, type TextsData, type TokenKind, type VocabData,
} from '../../src/eval/feature-data.js';
import { browserHtml, dataPaths, featureScript, indexScript, textsScript, vocabScript } from '../../src/report/browser/page.js';
import { Rng } from '../../src/util/rng.js';

export interface FeatureFolderOptions {
  saes: { label: string; F: number; activation?: string }[];
  /** vocabulary size before planted tokens (default 2000) */
  vocabSize?: number;
  /** feature pages to write, per label; default: every feature of an SAE with F ≤ 2000, none above */
  pages?: Record<string, number[]>;
  /** tokens appended to the vocabulary and made the top token of one feature */
  plant?: { label: string; id: number; token: string }[];
  texts?: number;
  ctx?: number;
  seed?: number;
}

export interface FeatureFolder {
  dir: string;
  manifest: FeaturesManifest;
  vocab: VocabData;
  texts: TextsData;
  indices: Record<string, FeatureIndex>;
  /** the pages written, by label and id */
  pages: Record<string, Map<number, FeaturePage>>;
  /** the vocabulary id of each planted token, in the order given */
  planted: number[];
}

const SYLLABLES = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'po', 'si', 'du', 'fe', 'go', 'hu'];
const PUNCT = ['.', ',', ';', '!', '?', ':', '(', ')', '"', '-'];

/** Token text with spaces, newlines and punctuation; no "z" or "b", so a planted " zebra" is unique. */
function syntheticVocab(n: number): string[] {
  const out = ['<|endoftext|>'];
  for (let i = 1; i < n; i++) {
    if (i % 97 === 0) out.push('\n');
    else if (i % 11 === 0) out.push(PUNCT[i % PUNCT.length]);
    else {
      let w = '';
      for (let x = i; x > 0 || w === ''; x = Math.floor(x / SYLLABLES.length)) w += SYLLABLES[x % SYLLABLES.length];
      out.push(i % 3 === 0 ? w : ' ' + w);
    }
  }
  return out;
}

function kindOf(tok: string, position: number): TokenKind {
  if (position === 0) return 'bos';
  if (PUNCT.includes(tok.trim())) return 'punctuation';
  return tok.startsWith(' ') ? 'word' : 'continuation';
}

const round = (x: number) => Number(x.toPrecision(4));

function syntheticIndex(label: string, F: number, base: number, seed: number): FeatureIndex {
  const rng = Rng.derive(seed, `index/${label}`);
  const density: number[] = [], maxActivation: number[] = [], meanActivation: number[] = [], shared: number[] = [];
  const topToken: number[] = [], promoted: number[][] = [];
  for (let f = 0; f < F; f++) {
    const dead = f % 50 === 49;
    density.push(dead ? 0 : round(0.3 * Math.pow(1 + rng.int(F), -0.9)));
    const max = dead ? 0 : round(0.5 + 9.5 * rng.next());
    maxActivation.push(max);
    meanActivation.push(round(max * (0.2 + 0.4 * rng.next())));
    shared.push(dead ? 0 : round(5 + 55 * rng.next()));
    topToken.push(dead ? -1 : 1 + rng.int(base - 1));
    promoted.push([0, 1, 2].map(() => 1 + rng.int(base - 1)));
  }
  const byDensity = density.map((_, f) => f).sort((a, b) => density[b] - density[a] || a - b);
  const zipfRank = new Array<number>(F);
  byDensity.forEach((f, r) => (zipfRank[f] = r + 1));
  const hist = (scale: number) => Array.from({ length: 12 }, (_, n) => Math.round(scale * 1000 * Math.exp(-((n - 5) ** 2) / 8)));
  const byKind = Object.fromEntries(TOKEN_KINDS.map((k, i) => [k, hist(0.1 + 0.2 * i)])) as Record<TokenKind, number[]>;
  return {
    label, F, tokens: 100_000, density, maxActivation, meanActivation, zipfRank, shared, topToken, promoted,
    zipf: { alpha: 0.9, beta: -1.2, r2: 0.97 }, perToken: { all: hist(1), byKind },
  };
}

function syntheticExample(rng: Rng, value: number, base: number, before: number, after: number): FeatureExample {
  const n = before + 1 + after;
  const ids = Array.from({ length: n }, () => 1 + rng.int(base - 1));
  // every other token silent, the rest below the activating one, so shading has both to show
  const acts = ids.map((_, i) => (i === before ? value : i % 2 === 0 ? 0 : round(value * (0.05 + 0.9 * rng.next()))));
  return { context: rng.int(1000), position: before + rng.int(100), ids, acts, at: before, value };
}

function syntheticPage(idx: FeatureIndex, id: number, base: number, m: FeaturesManifest, seed: number): FeaturePage {
  const rng = Rng.derive(seed, `page/${idx.label}/${id}`);
  const max = idx.maxActivation[id];
  const ex = (v: number) => syntheticExample(rng, round(v), base, m.before, m.after);
  const top = max > 0 ? Array.from({ length: 5 }, (_, i) => ex(max * (1 - 0.1 * i))) : [];
  if (top.length && idx.topToken[id] >= 0) top[0].ids[top[0].at] = idx.topToken[id];
  const bands = max > 0 ? ['low', 'mid', 'high'].map((label, b) => ({ label, from: round((max * b) / 3), to: round((max * (b + 1)) / 3) })) : [];
  const edges = max > 0 ? Array.from({ length: 21 }, (_, i) => round(max * Math.pow(10, -3 + (3 * i) / 20))) : [];
  return {
    id, density: idx.density[id], maxActivation: max, meanActivation: idx.meanActivation[id], zipfRank: idx.zipfRank[id],
    shared: idx.shared[id], count: Math.round(idx.density[id] * idx.tokens), top,
    quantiles: bands.map((b) => ({ ...b, examples: [0, 1].map(() => ex(b.from + (b.to - b.from) * rng.next())) })),
    histogram: { edges, counts: edges.slice(1).map((_, i) => Math.round(100 * Math.exp(-((i - 12) ** 2) / 20))) },
    logits: {
      promoted: idx.promoted[id].map((t, i) => [t, round(2 - 0.3 * i)] as [number, number]),
      suppressed: [0, 1, 2, 3].map((i) => [1 + rng.int(base - 1), round(-2 + 0.3 * i)] as [number, number]),
    },
  };
}

function syntheticTexts(labels: string[], Fs: number[], vocab: string[], base: number, n: number, ctx: number, seed: number): TextsData {
  const rng = Rng.derive(seed, 'texts');
  const texts: TextsData['texts'] = [];
  for (let c = 0; c < n; c++) {
    const ids = [0, ...Array.from({ length: ctx - 1 }, () => 1 + rng.int(base - 1))];
    const features: Record<string, [number, number][][]> = {};
    labels.forEach((l, s) => {
      features[l] = ids.map((_, i) => {
        const k = i === 0 ? 0 : rng.int(4 + 8 * s);
        const picked = new Set<number>();
        while (picked.size < k) picked.add(rng.int(Fs[s]));
        return [...picked].map((f) => [f, round(0.1 + 5 * rng.next())] as [number, number]).sort((a, b) => b[1] - a[1]);
      });
    });
    texts.push({ context: c, ids, kinds: ids.map((t, i) => kindOf(vocab[t], i)), features });
  }
  return { labels, texts };
}

async function put(dir: string, rel: string, text: string): Promise<void> {
  const p = path.join(dir, rel);
  await fs.mkdir(path.dirname(p), { recursive: true });
  await fs.writeFile(p, text);
}

export async function writeFeatureFolder(dir: string, opts: FeatureFolderOptions): Promise<FeatureFolder> {
  const seed = opts.seed ?? 1;
  const base = opts.vocabSize ?? 2000;
  const ctx = opts.ctx ?? 32;
  const tokens = syntheticVocab(base);
  const planted = (opts.plant ?? []).map((p) => tokens.push(p.token) - 1);
  const manifest: FeaturesManifest = {
    schema: FEATURES_SCHEMA, model: 'synthetic-lm', hook: 'blocks.0.hook_resid_post', corpus: 'synthetic', tokens: 100_000,
    contexts: 100_000 / ctx, ctx, before: 6, after: 3, precision: 'fp32', seconds: 1,
    saes: opts.saes.map((s) => ({
      label: s.label, checkpoint: `/runs/${s.label}`, F: s.F, d: 64, activation: s.activation ?? 'topk', mode: 'batch',
      batchSize: 4096, l0: 32,
    })),
  };
  const vocab: VocabData = { tokens };
  const indices: Record<string, FeatureIndex> = {};
  const pages: Record<string, Map<number, FeaturePage>> = {};
  for (const s of opts.saes) {
    const idx = syntheticIndex(s.label, s.F, base, seed);
    (opts.plant ?? []).forEach((p, i) => {
      if (p.label === s.label) idx.topToken[p.id] = planted[i];
    });
    indices[s.label] = idx;
    await put(dir, dataPaths.index(s.label), indexScript(s.label, idx));
    await put(dir, path.join(s.label, 'index.json'), JSON.stringify(idx));
    const ids = opts.pages?.[s.label] ?? (s.F <= 2000 ? Array.from({ length: s.F }, (_, f) => f) : []);
    pages[s.label] = new Map();
    await Promise.all(
      ids.map((id) => {
        const page = syntheticPage(idx, id, base, manifest, seed);
        pages[s.label].set(id, page);
        return put(dir, dataPaths.feature(s.label, id), featureScript(s.label, page));
      }),
    );
  }
  const texts = syntheticTexts(opts.saes.map((s) => s.label), opts.saes.map((s) => s.F), tokens, base, opts.texts ?? 3, ctx, seed);
  await put(dir, dataPaths.vocab, vocabScript(vocab));
  await put(dir, dataPaths.texts, textsScript(texts));
  await put(dir, 'features.json', JSON.stringify(manifest, null, 2));
  await put(dir, 'index.html', browserHtml(manifest));
  return { dir, manifest, vocab, texts, indices, pages, planted };
}

/**
 * What `sae features` writes (issue 20) and the feature browser reads: the contract between the
 * pass that collects per-feature evidence (./feature-pass.ts) and the static page that shows it
 * (../report/browser/). Plain JSON shapes; token text travels once, in the vocabulary, and every
 * other place names tokens by id.
 *
 * The folder:
 *
 *   OUT/features.json            FeaturesManifest (pure JSON, for programs)
 *   OUT/index.html               the browser: opens from file:// or any static host
 *   OUT/data/vocab.js            saeBrowser.vocab(VocabData)
 *   OUT/data/texts.js            saeBrowser.texts(TextsData)            the per-token view
 *   OUT/<label>/index.json       FeatureIndex (pure JSON)
 *   OUT/data/<label>/index.js    saeBrowser.index("<label>", FeatureIndex)
 *   OUT/data/<label>/f/<id>.js   saeBrowser.feature("<label>", <id>, FeaturePage)
 *
 * Browsers refuse fetch() on file:// pages, so the page reads its data through <script> elements:
 * each .js file is one call of a global `saeBrowser` with a JSON literal as its last argument
 * (a program reads it as the JSON between the first `,{` / `(` and the final `);`; the pure
 * JSON files above say the same for the manifest and the index).
 */

export const FEATURES_SCHEMA = 'sae-features/1';

/** The kinds of token the appendix-D figure colours by. */
export const TOKEN_KINDS = ['bos', 'eos', 'word', 'continuation', 'punctuation'] as const;
export type TokenKind = (typeof TOKEN_KINDS)[number];

export interface FeaturesManifest {
  schema: typeof FEATURES_SCHEMA;
  model: string;
  hook: string;
  /** what the corpus was (Corpus.describe()) */
  corpus: string;
  /** tokens (rows) encoded by every SAE */
  tokens: number;
  contexts: number;
  ctx: number;
  /** tokens shown before and after the activating token in an example */
  before: number;
  after: number;
  precision: 'fp32' | 'bf16';
  saes: FeaturesSae[];
  /** seconds the pass took */
  seconds: number;
}

export interface FeaturesSae {
  /** a short name, unique in the folder: its subfolder and the browser's run selector */
  label: string;
  /** the checkpoint folder it was read from */
  checkpoint: string;
  F: number;
  d: number;
  /** topk | mutual | feature | jumprelu | relu ...: how the codes were selected */
  activation: string;
  /** 'batch': the SAE's selection at its training batch size; 'threshold': its JumpReLU export, per token */
  mode: 'batch' | 'threshold';
  batchSize: number;
  /** mean active features per token */
  l0: number;
}

/** Per-feature summary, one entry per feature in feature order (column arrays keep 24,576 features small). */
export interface FeatureIndex {
  label: string;
  F: number;
  tokens: number;
  /** fraction of tokens the feature fired on */
  density: number[];
  /** largest activation (0 when it never fired) */
  maxActivation: number[];
  /** mean activation over the tokens it fired on (0 when it never fired) */
  meanActivation: number[];
  /** 1-based rank by density, densest first (ties: lower id first), the x of the Zipf curve */
  zipfRank: number[];
  /** mean number of other features active on the tokens it fired on */
  shared: number[];
  /** id of the token at the maximum of its top example (−1 when it never fired) */
  topToken: number[];
  /** ids of its three most promoted output tokens */
  promoted: number[][];
  /** the Zipf fit of density against rank (SPEC §7), null when too few features fired */
  zipf: { alpha: number; beta: number; r2: number | null } | null;
  /** appendix D: perToken.all[n] = tokens that got n active features; byKind the same per token kind */
  perToken: { all: number[]; byKind: Record<TokenKind, number[]> };
}

/** One example: a window of a context around the token where the feature fired. */
export interface FeatureExample {
  /** index of the context in the pass, and the activating token's position in it */
  context: number;
  position: number;
  /** token ids of the window */
  ids: number[];
  /** the feature's activation on each of them (0 where it did not fire) */
  acts: number[];
  /** index into ids of the activating token */
  at: number;
  value: number;
}

export interface FeaturePage {
  id: number;
  density: number;
  maxActivation: number;
  meanActivation: number;
  zipfRank: number;
  shared: number;
  /** firings counted */
  count: number;
  /** its largest activations, largest first */
  top: FeatureExample[];
  /** a uniform sample of its firings, cut into bands by activation, lowest band first */
  quantiles: { label: string; from: number; to: number; examples: FeatureExample[] }[];
  /** activations on the tokens it fired on: counts[i] lie in [edges[i], edges[i+1]) */
  histogram: { edges: number[]; counts: number[] };
  /** W_dec row through the final LayerNorm's scale and the unembedding: [token id, logit effect] */
  logits: { promoted: [number, number][]; suppressed: [number, number][] };
}

/** Token text by id, as the tokenizer decodes each one alone. */
export interface VocabData {
  tokens: string[];
}

/** The per-token view: the first few contexts, every token with the features each SAE gave it. */
export interface TextsData {
  labels: string[];
  texts: {
    context: number;
    ids: number[];
    kinds: TokenKind[];
    /** per label, per token: [feature id, activation] pairs, largest first */
    features: Record<string, [number, number][][]>;
  }[];
}

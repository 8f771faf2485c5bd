/**
 * Per-feature evidence from one pass over encoded tokens (issue 20, `sae features`): density, mean
 * and max activation, an activation histogram, the top N examples by activation, a uniform sample
 * of firings to cut into activation bands (the top alone misleads: it shows what a feature does at
 * its most extreme, not what it usually does), how many other features share its tokens, and per
 * token the number of features it got (appendix D).
 *
 * Everything is bounded in the corpus size: the top N is a min-heap per feature and the sample a
 * bottom-R by a hash of (feature, token), both over a preallocated pool of example windows. A
 * window is copied when a firing enters a heap, which needs the whole context around it: blocks of
 * codes are held back until the context of their last token is complete.
 */
import type { SparseCodes } from '../kernels/types.js';
import type { EncodedBlock } from './encode.js';
import { TOKEN_KINDS, type FeatureExample, type TokenKind } from './feature-data.js';

export interface FeaturePassOptions {
  F: number;
  /** examples kept by activation */
  top: number;
  /** firings sampled uniformly (cut into `bands` bands at the end) */
  samples: number;
  bands: number;
  /** tokens shown before and after the activating one */
  before: number;
  after: number;
  /** contexts whose every token's features are kept (the per-token view) */
  texts: number;
  seed: number;
  /** token id → kind (word start, continuation, punctuation); specials are told by position */
  kindOfId: (id: number) => TokenKind;
  specialIds: ReadonlySet<number>;
}

/**
 * Histogram edges: quarter-octaves from 2^−24 to 2^16, wide enough for unit-norm inputs and for raw
 * residual streams alike; anything beyond falls into the end bins.
 */
export const HIST_BINS = 160;
const HIST_LO = -24;
const HIST_PER_OCTAVE = 4;
export function histEdges(): number[] {
  return Array.from({ length: HIST_BINS + 1 }, (_, i) => 2 ** (HIST_LO + i / HIST_PER_OCTAVE));
}
function histBin(v: number): number {
  const b = Math.floor((Math.log2(v) - HIST_LO) * HIST_PER_OCTAVE);
  return b < 0 ? 0 : b >= HIST_BINS ? HIST_BINS - 1 : b;
}

/** A uniform key in [0, 2^32) for (feature, row): the bottom-R keys of a feature are a uniform sample of its firings. */
export function sampleKey(seed: number, j: number, row: number): number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(j + 1, 0xc2b2ae35) ^ Math.imul(row + 0x27d4eb2f, 0x165667b1);
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Bytes a pass preallocates for F features: the example pool, the heaps and sample keys, the histograms. */
export function featurePassBytes(F: number, o: { top: number; samples: number; before: number; after: number }): number {
  const slots = F * (o.top + o.samples);
  return slots * ((o.before + 1 + o.after) * 8 + 12) + F * (o.top + o.samples) * 4 + F * HIST_BINS * 4;
}

export interface TextRecord {
  context: number;
  ids: number[];
  kinds: TokenKind[];
  features: [number, number][][];
}

export class FeaturePass {
  readonly F: number;
  /** tokens counted */
  tokens = 0;
  nnz = 0;
  readonly count: Float64Array;
  readonly sum: Float64Array;
  readonly max: Float32Array;
  readonly sharedSum: Float64Array;
  readonly hist: Uint32Array;
  readonly perToken: number[] = [];
  readonly perTokenByKind: Record<TokenKind, number[]>;
  readonly texts: TextRecord[] = [];
  private readonly W: number;
  /** example pool: slot s holds W token ids (−1: outside the context) and the feature's activations */
  private readonly slotIds: Int32Array;
  private readonly slotActs: Float32Array;
  private readonly slotValue: Float32Array;
  private readonly slotContext: Int32Array;
  private readonly slotPosition: Int32Array;
  /** top heap of feature j: slots j·top .. j·top + topSize[j] − 1 in heap order by value (min first) */
  private readonly topSize: Int32Array;
  private readonly topHeap: Int32Array;
  /** sample of feature j: slots base + j·samples + i, keys in sampleKeys */
  private readonly sampleSize: Int32Array;
  private readonly sampleKeys: Uint32Array;
  private readonly sampleBase: number;
  /** per feature, its largest activation in the context being counted and the row (−1: none yet) */
  private readonly ctxBest: Float32Array;
  private readonly ctxBestRow: Int32Array;
  private readonly touched: number[] = [];
  /** held rows: the tail of the stream whose last context may continue in the next block */
  private held: { n: number; first: number; tokenId: Int32Array; context: Int32Array; position: Int32Array; rowPtr: Int32Array; index: Int32Array; value: Float32Array };

  constructor(private readonly o: FeaturePassOptions) {
    const F = (this.F = o.F);
    this.W = o.before + 1 + o.after;
    this.count = new Float64Array(F);
    this.sum = new Float64Array(F);
    this.max = new Float32Array(F);
    this.sharedSum = new Float64Array(F);
    this.hist = new Uint32Array(F * HIST_BINS);
    this.perTokenByKind = Object.fromEntries(TOKEN_KINDS.map((k) => [k, [] as number[]])) as unknown as Record<TokenKind, number[]>;
    const slots = F * (o.top + o.samples);
    this.slotIds = new Int32Array(slots * this.W);
    this.slotActs = new Float32Array(slots * this.W);
    this.slotValue = new Float32Array(slots);
    this.slotContext = new Int32Array(slots);
    this.slotPosition = new Int32Array(slots);
    this.topSize = new Int32Array(F);
    this.topHeap = new Int32Array(F * o.top);
    this.sampleSize = new Int32Array(F);
    this.sampleKeys = new Uint32Array(F * o.samples);
    this.sampleBase = F * o.top;
    this.ctxBest = new Float32Array(F);
    this.ctxBestRow = new Int32Array(F).fill(-1);
    this.held = { n: 0, first: 0, tokenId: new Int32Array(0), context: new Int32Array(0), position: new Int32Array(0), rowPtr: new Int32Array(1), index: new Int32Array(0), value: new Float32Array(0) };
  }

  /** Add one block of encoded rows (in stream order). */
  add(b: EncodedBlock): void {
    this.append(b.n, b.first, b, b.codes);
    // the last context may continue in the next block: hold its rows back
    const h = this.held;
    let m = h.n;
    while (m > 0 && h.context[m - 1] === h.context[h.n - 1]) m--;
    this.process(m);
  }

  /** The stream ended: every held row is complete. */
  end(): void {
    this.process(this.held.n);
  }

  private append(n: number, first: number, o: { tokenId: Int32Array; context: Int32Array; position: Int32Array }, c: SparseCodes): void {
    const h = this.held;
    const N = h.n + n;
    const nnz = h.rowPtr[h.n] + c.rowPtr[n];
    const grow = <T extends Int32Array | Float32Array>(a: T, size: number): T => {
      if (a.length >= size) return a;
      const b = new (a.constructor as new (n: number) => T)(Math.max(size, Math.ceil(a.length * 1.5)));
      b.set(a);
      return b;
    };
    h.tokenId = grow(h.tokenId, N);
    h.context = grow(h.context, N);
    h.position = grow(h.position, N);
    h.rowPtr = grow(h.rowPtr, N + 1);
    h.index = grow(h.index, nnz);
    h.value = grow(h.value, nnz);
    if (h.n === 0) h.first = first;
    h.tokenId.set(o.tokenId.subarray(0, n), h.n);
    h.context.set(o.context.subarray(0, n), h.n);
    h.position.set(o.position.subarray(0, n), h.n);
    const base = h.rowPtr[h.n];
    for (let r = 1; r <= n; r++) h.rowPtr[h.n + r] = base + c.rowPtr[r];
    h.index.set(c.index.subarray(0, c.rowPtr[n]), base);
    h.value.set(c.value.subarray(0, c.rowPtr[n]), base);
    h.n = N;
  }

  /** Count rows [0, m) of the held ones, whose contexts are complete, and drop them. */
  private process(m: number): void {
    const h = this.held;
    const { o } = this;
    for (let r = 0; r < m; r++) {
      const a = h.rowPtr[r];
      const e = h.rowPtr[r + 1];
      const c = e - a;
      const kind = this.kindAt(r);
      bump(this.perToken, c);
      bump(this.perTokenByKind[kind], c);
      this.tokens++;
      this.nnz += c;
      const row = h.first + r;
      for (let q = a; q < e; q++) {
        const j = h.index[q];
        const v = h.value[q];
        this.count[j]++;
        this.sum[j] += v;
        this.sharedSum[j] += c - 1;
        if (v > this.max[j]) this.max[j] = v;
        this.hist[j * HIST_BINS + histBin(v)]++;
        // a context offers each feature once, at its maximum there: the top N are N texts, not N neighbouring tokens of one
        if (this.ctxBestRow[j] < 0) this.touched.push(j);
        if (this.ctxBestRow[j] < 0 || v > this.ctxBest[j]) {
          this.ctxBest[j] = v;
          this.ctxBestRow[j] = r;
        }
        if (o.samples > 0) this.offerSample(j, sampleKey(o.seed, j, row), r, v);
      }
      if (h.context[r] < o.texts) this.keepText(r, kind);
      // the context's last row: its maxima enter the top heaps (every row of it is held, so windows are whole)
      if (r + 1 === m || h.context[r + 1] !== h.context[r]) {
        for (const j of this.touched) {
          this.offerTop(j, this.ctxBest[j], this.ctxBestRow[j]);
          this.ctxBestRow[j] = -1;
        }
        this.touched.length = 0;
      }
    }
    // shift the rest to the front
    const rest = h.n - m;
    const cut = h.rowPtr[m];
    h.tokenId.copyWithin(0, m, h.n);
    h.context.copyWithin(0, m, h.n);
    h.position.copyWithin(0, m, h.n);
    h.index.copyWithin(0, cut, h.rowPtr[h.n]);
    h.value.copyWithin(0, cut, h.rowPtr[h.n]);
    for (let r = 0; r <= rest; r++) h.rowPtr[r] = h.rowPtr[m + r] - cut;
    h.first += m;
    h.n = rest;
  }

  /**
   * Special tokens by place (BOS opens a context), others by their text; a word's first token also
   * follows a special one (BOS, or an EOS between documents), which may not be a row (--skip-bos).
   */
  private kindAt(r: number): TokenKind {
    const h = this.held;
    const id = h.tokenId[r];
    if (this.o.specialIds.has(id)) return h.position[r] === 0 ? 'bos' : 'eos';
    const k = this.o.kindOfId(id);
    if (k !== 'continuation') return k;
    const firstOfContext = r === 0 || h.context[r - 1] !== h.context[r];
    if (firstOfContext ? h.position[r] === 1 : this.o.specialIds.has(h.tokenId[r - 1])) return 'word';
    return k;
  }

  private keepText(r: number, kind: TokenKind): void {
    const h = this.held;
    const ctx = h.context[r];
    let t = this.texts[this.texts.length - 1];
    if (!t || t.context !== ctx) this.texts.push((t = { context: ctx, ids: [], kinds: [], features: [] }));
    t.ids.push(h.tokenId[r]);
    t.kinds.push(kind);
    const f: [number, number][] = [];
    for (let q = h.rowPtr[r]; q < h.rowPtr[r + 1]; q++) f.push([h.index[q], h.value[q]]);
    f.sort((x, y) => y[1] - x[1] || x[0] - y[0]);
    t.features.push(f);
  }

  private offerTop(j: number, v: number, r: number): void {
    const N = this.o.top;
    if (N === 0) return;
    const heap = this.topHeap;
    const base = j * N;
    const size = this.topSize[j];
    if (size < N) {
      // a new slot, sifted up
      const slot = base + size;
      this.fill(slot, j, v, r);
      let i = size;
      heap[base + i] = slot;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (this.slotValue[heap[base + p]] <= v) break;
        heap[base + i] = heap[base + p];
        heap[base + p] = slot;
        i = p;
      }
      this.topSize[j] = size + 1;
      return;
    }
    // a context equal to the smallest kept does not displace it (which of equal ones stays is unspecified)
    if (v <= this.slotValue[heap[base]]) return;
    const slot = heap[base];
    this.fill(slot, j, v, r);
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= N) break;
      const rr = l + 1;
      let c = l;
      if (rr < N && this.slotValue[heap[base + rr]] < this.slotValue[heap[base + l]]) c = rr;
      if (this.slotValue[heap[base + c]] >= v) break;
      heap[base + i] = heap[base + c];
      heap[base + c] = slot;
      i = c;
    }
  }

  private offerSample(j: number, key: number, r: number, v: number): void {
    const R = this.o.samples;
    const base = j * R;
    const size = this.sampleSize[j];
    if (size < R) {
      this.sampleKeys[base + size] = key;
      this.fill(this.sampleBase + base + size, j, v, r);
      this.sampleSize[j] = size + 1;
      return;
    }
    // replace the largest key when this one is smaller (R is small: a scan)
    let worst = 0;
    for (let i = 1; i < R; i++) if (this.sampleKeys[base + i] > this.sampleKeys[base + worst]) worst = i;
    if (key >= this.sampleKeys[base + worst]) return;
    this.sampleKeys[base + worst] = key;
    this.fill(this.sampleBase + base + worst, j, v, r);
  }

  /** Copy the window of held row r for feature j into a slot. */
  private fill(slot: number, j: number, v: number, r: number): void {
    const h = this.held;
    const { before } = this.o;
    const W = this.W;
    this.slotValue[slot] = v;
    this.slotContext[slot] = h.context[r];
    this.slotPosition[slot] = h.position[r];
    const ctx = h.context[r];
    for (let w = 0; w < W; w++) {
      const q = r - before + w;
      const inside = q >= 0 && q < h.n && h.context[q] === ctx;
      this.slotIds[slot * W + w] = inside ? h.tokenId[q] : -1;
      this.slotActs[slot * W + w] = inside ? (q === r ? v : this.actOf(q, j)) : 0;
    }
  }

  /** feature j's activation on held row q (0 when not selected there): a binary search of the row's ascending ids */
  private actOf(q: number, j: number): number {
    const h = this.held;
    let lo = h.rowPtr[q];
    let hi = h.rowPtr[q + 1] - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const x = h.index[mid];
      if (x === j) return h.value[mid];
      if (x < j) lo = mid + 1;
      else hi = mid - 1;
    }
    return 0;
  }

  private example(slot: number): FeatureExample {
    const W = this.W;
    const ids: number[] = [];
    const acts: number[] = [];
    let at = 0;
    for (let w = 0; w < W; w++) {
      const id = this.slotIds[slot * W + w];
      if (id < 0) continue;
      if (w === this.o.before) at = ids.length;
      ids.push(id);
      acts.push(round4(this.slotActs[slot * W + w]));
    }
    return { context: this.slotContext[slot], position: this.slotPosition[slot], ids, acts, at, value: round4(this.slotValue[slot]) };
  }

  /** Feature j's top examples, largest first (ties: earlier context first). */
  topExamples(j: number): FeatureExample[] {
    const N = this.o.top;
    const slots = Array.from(this.topHeap.subarray(j * N, j * N + this.topSize[j]));
    slots.sort((a, b) => this.slotValue[b] - this.slotValue[a] || this.slotContext[a] - this.slotContext[b] || this.slotPosition[a] - this.slotPosition[b]);
    return slots.map((s) => this.example(s));
  }

  /** Feature j's sampled firings in `bands` bands of equal size by activation, lowest first. */
  quantileBands(j: number): { label: string; from: number; to: number; examples: FeatureExample[] }[] {
    const R = this.o.samples;
    const n = this.sampleSize[j];
    if (n === 0) return [];
    const slots = Array.from({ length: n }, (_, i) => this.sampleBase + j * R + i);
    slots.sort((a, b) => this.slotValue[a] - this.slotValue[b] || this.slotContext[a] - this.slotContext[b] || this.slotPosition[a] - this.slotPosition[b]);
    const bands = Math.min(this.o.bands, n);
    const out = [];
    for (let b = 0; b < bands; b++) {
      const lo = Math.floor((b * n) / bands);
      const hi = Math.floor(((b + 1) * n) / bands);
      const part = slots.slice(lo, hi);
      const pct = (x: number) => Math.round((100 * x) / bands);
      out.push({
        label: `${pct(b)}–${pct(b + 1)} % of its sampled firings`,
        from: round4(this.slotValue[part[0]]),
        to: round4(this.slotValue[part[part.length - 1]]),
        // within a band, highest first (what a reader scans)
        examples: part.reverse().map((s) => this.example(s)),
      });
    }
    return out;
  }

  /** Feature j's histogram, trimmed to the bins it used. */
  histogram(j: number): { edges: number[]; counts: number[] } {
    const row = this.hist.subarray(j * HIST_BINS, (j + 1) * HIST_BINS);
    let a = 0;
    while (a < HIST_BINS && row[a] === 0) a++;
    if (a === HIST_BINS) return { edges: [], counts: [] };
    let e = HIST_BINS;
    while (row[e - 1] === 0) e--;
    const edges = histEdges();
    return { edges: edges.slice(a, e + 1).map(round4), counts: Array.from(row.subarray(a, e)) };
  }

  /** The id of the token at the maximum of feature j's top example (−1 when it never fired). */
  topToken(j: number): number {
    const top = this.topExamples(j);
    return top.length ? top[0].ids[top[0].at] : -1;
  }
}

function bump(a: number[], i: number): void {
  while (a.length <= i) a.push(0);
  a[i]++;
}

/** 4 significant digits: examples are for the eye, and JSON stays small. */
export function round4(v: number): number {
  return v === 0 || !Number.isFinite(v) ? v : Number(v.toPrecision(4));
}

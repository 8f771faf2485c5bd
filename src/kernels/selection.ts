/**
 * Reference selections (SPEC §5): plain, obviously-correct code that every faster kernel is checked
 * against. Each one reads the affinities z' (B×F, row-major) and writes SparseCodes in canonical
 * order (by token, then feature index ascending) holding the selected z' values.
 *
 * Every selection keeps only entries with z' > 0: TopK∘ReLU is the optimal allocation under the
 * Monotonic Importance Heuristic (appendix H), so a non-positive entry is never worth selecting.
 * Ties at a selection boundary are broken by the lower index so that selected counts are exact and
 * the output is a pure function of the input (SPEC §5).
 */
import type { FloatArray, FloatCtor } from '../util/arrays.js';
import { ctorOf } from '../util/arrays.js';
import type { Selection, SparseCodes } from './types.js';

export function allocCodes(B: number, capacity: number, ctor: FloatCtor = Float32Array): SparseCodes {
  checkCount('B', B);
  checkCount('capacity', capacity);
  return {
    B,
    nnz: 0,
    rowPtr: new Int32Array(B + 1),
    index: new Int32Array(capacity),
    value: new ctor(capacity),
  };
}

/**
 * Make room for `capacity` entries. Grows by at least half again so that a buffer reused across
 * steps with slowly rising nnz (relu) is reallocated only a few times; existing entries are kept.
 */
export function ensureCapacity(codes: SparseCodes, capacity: number): void {
  checkCount('capacity', capacity);
  const have = codes.index.length;
  if (have >= capacity && codes.value.length >= capacity) return;
  const size = Math.max(capacity, Math.ceil(have * 1.5));
  const index = new Int32Array(size);
  index.set(codes.index);
  const value = new (ctorOf(codes.value))(size);
  value.set(codes.value);
  codes.index = index;
  codes.value = value;
}

/** Token choice (TopK): each token keeps its ≤ k largest positive affinities; ties → lower feature index. */
export function topK(pre: FloatArray, B: number, F: number, k: number, out: SparseCodes): void {
  checkShape(pre, B, F);
  checkCount('k', k);
  perTokenTopK(pre, B, F, Math.min(k, F), null, out);
}

/** The per-token TopK shared by token choice and the aux selections; mask null = every feature. */
function perTokenTopK(pre: FloatArray, B: number, F: number, kk: number, mask: Uint8Array | null, out: SparseCodes): void {
  const best = new KeepBest(kk);
  const chosen = new Float64Array(B * kk);
  let n = 0;
  for (let b = 0; b < B; b++) {
    best.clear();
    const row = b * F;
    for (let j = 0; j < F; j++) {
      const v = pre[row + j];
      if (v > 0 && (mask === null || mask[j] !== 0)) best.offer(v, j);
    }
    for (let e = 0; e < best.size; e++) chosen[n++] = row + best.keys[e];
  }
  emitFlat(pre, B, F, chosen.subarray(0, n), out);
}

/**
 * Mutual Choice (section 4.1: TopK over dim (0, 1)): exactly min(M, #positive) entries of the whole
 * batch, the largest first; ties → lower flat index b·F + j. Also BatchTopK's training selection.
 */
export function mutualChoice(pre: FloatArray, B: number, F: number, M: number, out: SparseCodes): void {
  checkShape(pre, B, F);
  checkCount('M', M);
  const best = new KeepBest(Math.min(M, B * F));
  const total = B * F;
  for (let p = 0; p < total; p++) {
    const v = pre[p];
    if (v > 0) best.offer(v, p);
  }
  emitFlat(pre, B, F, best.keys.slice(0, best.size), out);
}

/**
 * Feature Choice (section 4.1: TopK over dim 0 with k = m_j): feature j keeps its
 * min(capacity[j], #positive in column j) largest tokens; ties → lower token index.
 * `capacity` is indexed by feature (resolve ranks first with capacitiesByFeature).
 */
export function featureChoice(pre: FloatArray, B: number, F: number, capacity: Int32Array, out: SparseCodes): void {
  checkShape(pre, B, F);
  if (capacity.length !== F) throw new RangeError(`featureChoice: capacity has ${capacity.length} entries, expected F=${F}`);
  let bound = 0;
  let widest = 0;
  for (let j = 0; j < F; j++) {
    const m = Math.min(Math.max(capacity[j], 0), B);
    bound += m;
    widest = Math.max(widest, m);
  }
  const chosen = new Float64Array(bound);
  const best = new KeepBest(widest);
  let n = 0;
  for (let j = 0; j < F; j++) {
    best.reset(Math.min(Math.max(capacity[j], 0), B));
    for (let b = 0; b < B; b++) {
      const v = pre[b * F + j];
      if (v > 0) best.offer(v, b);
    }
    for (let e = 0; e < best.size; e++) chosen[n++] = best.keys[e] * F + j;
  }
  emitFlat(pre, B, F, chosen.subarray(0, n), out);
}

/** Standard SAE: every positive affinity (sparsity comes from the L1 penalty, SPEC §5). */
export function reluSelect(pre: FloatArray, B: number, F: number, out: SparseCodes): void {
  thresholdSelect(pre, B, F, 0, out);
}

/**
 * Inference with a calibrated threshold (appendix B): z'_j > θ_j (JumpReLU) or z' > θ (global,
 * BatchTopK). A negative threshold still never selects z' ≤ 0, like every other selection here.
 */
export function thresholdSelect(
  pre: FloatArray,
  B: number,
  F: number,
  threshold: FloatArray | number,
  out: SparseCodes,
): void {
  checkShape(pre, B, F);
  const perFeature = typeof threshold === 'number' ? null : threshold;
  if (perFeature && perFeature.length !== F) {
    throw new RangeError(`thresholdSelect: threshold has ${perFeature.length} entries, expected F=${F}`);
  }
  const global = typeof threshold === 'number' ? threshold : 0;
  const cut = (j: number): number => Math.max(perFeature ? perFeature[j] : global, 0);
  let count = 0;
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < F; j++) if (pre[b * F + j] > cut(j)) count++;
  }
  prepareRows(out, B);
  ensureCapacity(out, count);
  // Row-major scan visits entries in canonical order already.
  let n = 0;
  for (let b = 0; b < B; b++) {
    out.rowPtr[b] = n;
    for (let j = 0; j < F; j++) {
      const v = pre[b * F + j];
      if (v > cut(j)) {
        out.index[n] = j;
        out.value[n] = v;
        n++;
      }
    }
  }
  out.rowPtr[B] = n;
  out.nnz = n;
}

/**
 * Per-token TopK restricted to features with mask[j] = 1: aux_k over dead features, aux_zipf over
 * dying ones (SPEC §7, section 4.2). Ties → lower feature index.
 */
export function maskedTopK(
  pre: FloatArray,
  B: number,
  F: number,
  mask: Uint8Array,
  k: number,
  out: SparseCodes,
): void {
  checkShape(pre, B, F);
  checkCount('k', k);
  if (mask.length !== F) throw new RangeError(`maskedTopK: mask has ${mask.length} entries, expected F=${F}`);
  let eligible = 0;
  for (let j = 0; j < F; j++) if (mask[j] !== 0) eligible++;
  perTokenTopK(pre, B, F, Math.min(k, eligible), mask, out);
}

/** Dispatch on the Selection kinds of SPEC §5 (capacities and thresholds already resolved). */
export function select(pre: FloatArray, B: number, F: number, sel: Selection, out: SparseCodes): void {
  switch (sel.kind) {
    case 'relu':
      return reluSelect(pre, B, F, out);
    case 'topk':
      return topK(pre, B, F, sel.k, out);
    case 'mutual':
      return mutualChoice(pre, B, F, sel.M, out);
    case 'feature':
      return featureChoice(pre, B, F, sel.capacity, out);
    case 'jumprelu':
      return thresholdSelect(pre, B, F, sel.threshold, out);
    case 'globalThreshold':
      return thresholdSelect(pre, B, F, sel.threshold, out);
    default: {
      const never: never = sel;
      throw new Error(`select: unknown selection ${JSON.stringify(never)}`);
    }
  }
}

/**
 * Keeps the `cap` best (value, key) pairs offered, where better = larger value, then smaller key.
 * Keys are unique, so this is a strict total order and the kept set is exactly the top `cap`.
 * A binary heap with the worst kept pair at the root gives O(log cap) per offer.
 */
class KeepBest {
  values: Float64Array;
  keys: Float64Array;
  size = 0;
  private cap: number;

  constructor(cap: number) {
    this.cap = cap;
    this.values = new Float64Array(cap);
    this.keys = new Float64Array(cap);
  }

  clear(): void {
    this.size = 0;
  }

  /** Reuse for a smaller or equal capacity (the arrays were sized for the widest). */
  reset(cap: number): void {
    if (cap > this.values.length) throw new RangeError('KeepBest.reset: capacity beyond allocation');
    this.cap = cap;
    this.size = 0;
  }

  offer(value: number, key: number): void {
    if (this.size < this.cap) {
      let i = this.size++;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (!worse(value, key, this.values[parent], this.keys[parent])) break;
        this.values[i] = this.values[parent];
        this.keys[i] = this.keys[parent];
        i = parent;
      }
      this.values[i] = value;
      this.keys[i] = key;
      return;
    }
    if (this.cap === 0 || !worse(this.values[0], this.keys[0], value, key)) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= this.size) break;
      const r = l + 1;
      const c = r < this.size && worse(this.values[r], this.keys[r], this.values[l], this.keys[l]) ? r : l;
      if (!worse(this.values[c], this.keys[c], value, key)) break;
      this.values[i] = this.values[c];
      this.keys[i] = this.keys[c];
      i = c;
    }
    this.values[i] = value;
    this.keys[i] = key;
  }
}

function worse(va: number, ka: number, vb: number, kb: number): boolean {
  return va < vb || (va === vb && ka > kb);
}

/**
 * Write the entries at the given flat positions (b·F + j, any order) into `out`. Sorting the flat
 * positions ascending is exactly the canonical order: by token, then by feature index.
 */
function emitFlat(pre: FloatArray, B: number, F: number, flat: Float64Array, out: SparseCodes): void {
  flat.sort();
  prepareRows(out, B);
  ensureCapacity(out, flat.length);
  let e = 0;
  for (let b = 0; b < B; b++) {
    out.rowPtr[b] = e;
    const end = (b + 1) * F;
    while (e < flat.length && flat[e] < end) {
      const p = flat[e];
      out.index[e] = p - b * F;
      out.value[e] = pre[p];
      e++;
    }
  }
  out.rowPtr[B] = e;
  out.nnz = e;
}

/** rowPtr may be longer than B+1 when a buffer sized for a larger batch is reused. */
function prepareRows(out: SparseCodes, B: number): void {
  out.B = B;
  if (out.rowPtr.length < B + 1) out.rowPtr = new Int32Array(B + 1);
}

function checkShape(pre: FloatArray, B: number, F: number): void {
  checkCount('B', B);
  checkCount('F', F);
  if (pre.length < B * F) throw new RangeError(`affinities hold ${pre.length} values, need B·F=${B * F}`);
}

function checkCount(name: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${name} must be a non-negative integer, got ${n}`);
}

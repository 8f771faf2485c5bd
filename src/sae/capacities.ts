/**
 * Feature Choice capacities realised in expectation (SPEC §5, "Rounding"). Algorithm 1 of appendix
 * G floors each capacity, which shuts wide SAEs' sparse ranks out entirely (capacity 0 can never
 * fire). Here each feature keeps its exact share m_i = min(N/(i+β)^α, m_max) and carries the
 * fractional part from batch to batch as a credit (systematic rounding): every batch hands out
 * exactly its whole number of slots, and a feature's capacities summed over T batches stay within
 * one slot of the sum of its shares.
 */
import { UserError } from '../util/errors.js';

/** How a Feature Choice share becomes a whole capacity: `carry` (ours, the default) or `floor` (Algorithm 1 as printed). */
export type CapacityRounding = 'carry' | 'floor';
export const CAPACITY_ROUNDINGS: readonly CapacityRounding[] = ['carry', 'floor'];

/** Shares by rank and their total per batch; `total` is exactly k·B unless m_max clips a share. */
export interface Shares {
  byRank: Float64Array;
  total: number;
}

/**
 * Zipf shares by density rank: Algorithm 1 lines 1–5 without the floor (float64, sum in rank
 * order, as zipfCapacities), each capped at m_max. Unclipped shares sum to k·B by construction of
 * N, so the total is taken as k·B exactly rather than as a float sum that is off in the last bits.
 */
export function zipfShares(k: number, F: number, B: number, alpha: number, beta: number, mMax: number): Shares {
  checkArgs(k, F, B, mMax);
  if (!(Number.isFinite(alpha) && alpha > 0)) throw new UserError(`zipf: exponent α must be > 0, got ${alpha}`);
  if (!(Number.isFinite(beta) && beta > -1)) throw new UserError(`zipf: bias β must be > -1, got ${beta}`);
  let zipfSum = 0;
  for (let i = 1; i <= F; i++) zipfSum += 1 / Math.pow(i + beta, alpha);
  const N = (k * B) / zipfSum;
  const byRank = new Float64Array(F);
  let clipped = false;
  let total = 0;
  for (let i = 1; i <= F; i++) {
    // SPEC §5: m_i = min(N/(i+β)^α, m_max), kept fractional
    const m = N / Math.pow(i + beta, alpha);
    if (m > mMax) clipped = true;
    byRank[i - 1] = Math.min(m, mMax);
    total += byRank[i - 1];
  }
  return { byRank, total: clipped ? total : k * B };
}

/** Uniform shares (section 4.3): M/F for every feature, capped at m_max. */
export function uniformShares(k: number, F: number, B: number, mMax: number): Shares {
  checkArgs(k, F, B, mMax);
  const M = k * B;
  const m = M / F;
  return m > mMax ? { byRank: new Float64Array(F).fill(mMax), total: F * mMax } : { byRank: new Float64Array(F).fill(m), total: M };
}

/** The state a resume needs: credit by feature index, and the batch total's own credit. */
export interface CreditState {
  credit: Float64Array;
  batchCredit: number;
}

/**
 * Capacities that carry fractional credit across batches. With w_j = c_j + s_j (credit plus share,
 * s_j the share of feature j's current rank), a batch of target Q = ⌊G + Σ s⌋ slots (G the batch
 * credit) gives every feature ⌊w_j⌋ (at least 0) and one more to the Q − Σ⌊w_j⌋ features with the
 * largest fractional part (ties → lower rank, then lower feature index). The new credit is
 * c_j = w_j − m_j ∈ (−1, 1): a feature is never more than one slot ahead of or behind its shares.
 *
 * No capacity exceeds m_max. Credits are keyed by feature index, so a re-ranking moves them with
 * the features. A positive credit on a rank whose share m_max clips is forfeited (it could never be
 * spent there), and taken off G with it so that Σ_j c_j = G throughout.
 *
 * The rounding cannot always meet both the per-feature bounds and the batch target (Σ⌊w_j⌋ > Q, or
 * too few features left below their ceiling); then the bounds win and G carries the difference to
 * later batches. We have not seen that happen, even under adversarial re-rankings (tests).
 */
export class CarriedCapacities {
  readonly F: number;
  readonly shares: Shares;
  readonly mMax: number;
  readonly credit: Float64Array;
  batchCredit = 0;
  /** slots handed out by the last call, and the target it aimed for */
  lastSlots = 0;
  lastTarget = 0;
  private readonly w: Float64Array;
  private readonly frac: Float64Array;
  /** ties at the cut, as ranks: reuses frac's memory once the cut is found */
  private readonly ties: Int32Array;
  /** the ranking last seen, and each feature's share and rank under it (rebuilt when it changes) */
  private readonly seenOrder: Int32Array;
  private readonly shareOf: Float64Array;
  private readonly rankOf: Int32Array;

  constructor(shares: Shares, mMax: number) {
    this.F = shares.byRank.length;
    this.shares = shares;
    this.mMax = mMax;
    this.credit = new Float64Array(this.F);
    this.w = new Float64Array(this.F);
    this.frac = new Float64Array(this.F);
    this.ties = new Int32Array(this.frac.buffer);
    this.seenOrder = new Int32Array(this.F).fill(-1);
    this.shareOf = new Float64Array(this.F);
    this.rankOf = new Int32Array(this.F);
  }

  /** Index shares and ranks by feature, so that a batch reads every array in feature order (cache-friendly at large F). */
  private follow(order: Int32Array): void {
    const { F, seenOrder } = this;
    let same = true;
    for (let r = 0; r < F && same; r++) same = seenOrder[r] === order[r];
    if (same) return;
    seenOrder.set(order);
    const s = this.shares.byRank;
    for (let r = 0; r < F; r++) {
      this.shareOf[order[r]] = s[r];
      this.rankOf[order[r]] = r;
    }
  }

  /**
   * This batch's capacities by feature index, written into `out`. `order[r]` is the feature of
   * rank r + 1 (densityRanking); it decides which share a feature gets and breaks ties.
   */
  next(order: Int32Array, out: Int32Array): Int32Array {
    const { F, credit: c, w, frac, mMax } = this;
    if (order.length !== F || out.length !== F) throw new RangeError(`CarriedCapacities: ${order.length} ranks / ${out.length} outputs for ${F} features`);
    this.follow(order);
    const { shareOf: s, rankOf, ties } = this;
    let G = this.batchCredit;
    let floorSum = 0;
    for (let j = 0; j < F; j++) {
      let x = c[j] + s[j];
      if (s[j] >= mMax && x > mMax) {
        G -= x - mMax; // a rank clipped at m_max can never spend credit: forfeit it
        x = mMax;
      }
      w[j] = x;
      const m = x <= 0 ? 0 : x >= mMax ? mMax : Math.floor(x);
      out[j] = m;
      floorSum += m;
    }
    // tolerance: G + total is a whole number up to float rounding when nothing is clipped
    const target = Math.floor(G + this.shares.total + 1e-9);
    let extra = target - floorSum;
    if (extra > 0) {
      // the features with a fractional part left, and the extra-th largest such part
      let n = 0;
      for (let j = 0; j < F; j++) {
        const f = w[j] - out[j];
        if (f > 0 && out[j] < mMax) frac[n++] = f;
      }
      if (extra > n) extra = n;
      const cut = extra === n ? 0 : kthLargest(frac, n, extra);
      // every feature strictly above the cut, then the ties at the cut in rank order
      let given = 0;
      let nt = 0;
      for (let j = 0; j < F; j++) {
        const f = w[j] - out[j];
        if (!(f > 0 && f >= cut && out[j] < mMax)) continue;
        if (f > cut) {
          out[j]++;
          given++;
        } else ties[nt++] = rankOf[j];
      }
      if (given < extra) {
        const byRank = ties.subarray(0, nt).sort();
        for (let i = 0; given < extra; i++, given++) out[order[byRank[i]]]++;
      }
    } else if (extra < 0) {
      extra = 0; // the bounds win over the target; G carries the excess
    }
    const slots = floorSum + extra;
    for (let j = 0; j < F; j++) c[j] = w[j] - out[j];
    this.batchCredit = G + this.shares.total - slots;
    this.lastSlots = slots;
    this.lastTarget = target;
    return out;
  }

  state(): CreditState {
    return { credit: this.credit.slice(), batchCredit: this.batchCredit };
  }

  restore(s: CreditState): void {
    if (s.credit.length !== this.F) throw new RangeError(`CarriedCapacities: credit for ${s.credit.length} features, expected ${this.F}`);
    this.credit.set(s.credit);
    this.batchCredit = s.batchCredit;
  }
}

/** The k-th largest (1-based) of a[0..n), by an in-place quickselect (median-of-three pivots): O(n). */
function kthLargest(a: Float64Array, n: number, k: number): number {
  let lo = 0;
  let hi = n - 1;
  const want = k - 1; // index in descending order
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const x = a[lo], y = a[mid], z = a[hi];
    const pivot = x > y ? (y > z ? y : x > z ? z : x) : x > z ? x : y > z ? z : y;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return a[want];
  }
  return a[want];
}

function checkArgs(k: number, F: number, B: number, mMax: number): void {
  if (!(Number.isFinite(k) && k >= 1)) throw new UserError(`capacities: k must be ≥ 1, got ${k}`);
  for (const [name, v] of [['F', F], ['batch size B', B], ['m_max', mMax]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) throw new UserError(`capacities: ${name} must be a whole number ≥ 1, got ${v}`);
  }
}

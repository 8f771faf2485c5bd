import { describe, expect, it } from 'vitest';
import { Rng } from '../src/util/rng.js';
import { CarriedCapacities, uniformShares, zipfShares, type Shares } from '../src/sae/capacities.js';
import { zipfCapacities } from '../src/sae/zipf.js';

const identity = (F: number): Int32Array => Int32Array.from({ length: F }, (_, i) => i);

/** Run T batches with a fixed ranking; per-feature running sums of capacities and of shares. */
function runFixed(shares: Shares, mMax: number, T: number, order: Int32Array) {
  const F = shares.byRank.length;
  const cc = new CarriedCapacities(shares, mMax);
  const cap = new Int32Array(F);
  const given = new Float64Array(F);
  const slots: number[] = [];
  let maxCap = 0;
  for (let t = 0; t < T; t++) {
    cc.next(order, cap);
    let sum = 0;
    for (let j = 0; j < F; j++) {
      given[j] += cap[j];
      sum += cap[j];
      maxCap = Math.max(maxCap, cap[j]);
    }
    slots.push(sum);
  }
  const owed = new Float64Array(F);
  for (let r = 0; r < F; r++) owed[order[r]] = T * shares.byRank[r];
  return { given, owed, slots, maxCap, cc };
}

function maxDeviation(given: Float64Array, owed: Float64Array): number {
  let worst = 0;
  for (let j = 0; j < given.length; j++) worst = Math.max(worst, Math.abs(given[j] - owed[j]));
  return worst;
}

describe('zipfShares and uniformShares', () => {
  it('are Algorithm 1 before its floor: flooring the shares gives zipfCapacities', () => {
    for (const [k, F, B, mMax] of [[2, 4, 3, 3], [4, 4, 5, 5], [32, 24576, 1536, 1536], [4, 4096, 256, 8]]) {
      const s = zipfShares(k, F, B, 1, 6.8, mMax).byRank;
      expect(Int32Array.from(s, Math.floor)).toEqual(zipfCapacities(k, F, B, 1, 6.8, mMax));
    }
  });

  it('total exactly k·B when m_max clips nothing, and the clipped sum when it does', () => {
    expect(zipfShares(32, 24576, 1536, 1, 6.8, 1536).total).toBe(32 * 1536);
    const clipped = zipfShares(4, 4096, 256, 1, 6.8, 8);
    expect(clipped.total).toBeLessThan(4 * 256);
    expect(clipped.total).toBeCloseTo(clipped.byRank.reduce((a, b) => a + b, 0), 9);
    expect(uniformShares(4, 4096, 256, 256)).toEqual({ byRank: new Float64Array(4096).fill(0.25), total: 1024 });
    expect(uniformShares(8, 4, 4, 2).total).toBe(8);
  });
});

describe('CarriedCapacities (capacities in expectation)', () => {
  it('uses exactly M slots in every batch (Zipf, F 4096, B 256, k 4)', () => {
    const { slots } = runFixed(zipfShares(4, 4096, 256, 1, 6.8, 256), 256, 200, identity(4096));
    expect(new Set(slots)).toEqual(new Set([1024]));
  });

  it('uses exactly M slots in every batch when M/F is not whole (uniform, m = 0.25)', () => {
    const { slots } = runFixed(uniformShares(4, 4096, 256, 256), 256, 50, identity(4096));
    expect(new Set(slots)).toEqual(new Set([1024]));
  });

  it('uses ⌊T·M′⌋ slots over T batches when m_max clips the shares to a fractional total M′', () => {
    const shares = zipfShares(4, 4096, 256, 1, 6.8, 8);
    const { slots, maxCap } = runFixed(shares, 8, 300, identity(4096));
    let sum = 0;
    slots.forEach((n, t) => {
      sum += n;
      expect(sum).toBe(Math.floor((t + 1) * shares.total + 1e-9));
    });
    expect(maxCap).toBeLessThanOrEqual(8);
  });

  it("keeps each feature's capacities over T batches within one slot of T × its share (Zipf)", () => {
    const rng = new Rng(3);
    const order = rng.shuffle(identity(4096));
    for (const T of [1, 7, 64, 333]) {
      const { given, owed } = runFixed(zipfShares(4, 4096, 256, 1, 6.8, 256), 256, T, order);
      expect(maxDeviation(given, owed)).toBeLessThan(1);
    }
  });

  it("keeps each feature's capacities over T batches within one slot of T × its share (uniform)", () => {
    for (const T of [1, 3, 10, 101]) {
      const { given, owed } = runFixed(uniformShares(3, 1000, 7, 7), 7, T, identity(1000));
      expect(maxDeviation(given, owed)).toBeLessThan(1);
    }
  });

  it('gives every feature a slot within a few batches: none is shut out, however wide', () => {
    // F 24,576, B 1,536, k 32: Algorithm 1's floor gives 75 % of these features capacity 0
    const F = 24576;
    const { given } = runFixed(zipfShares(32, F, 1536, 1, 6.8, 1536), 1536, 30, identity(F));
    expect(given.every((g) => g >= 1)).toBe(true);
  });

  it('gives the extra slot to the largest fraction, ties to the lower rank (hand case)', () => {
    // shares 1.5, 0.75, 0.5, 0.25 (total 3): floors 1, 0, 0, 0; two extras go to fractions 0.75 and
    // then 0.5 vs 0.5 — rank 1 (feature 2) beats rank 3 (feature 0)
    const cc = new CarriedCapacities({ byRank: Float64Array.from([1.5, 0.75, 0.5, 0.25]), total: 3 }, 4);
    const order = Int32Array.from([2, 3, 0, 1]);
    expect([...cc.next(order, new Int32Array(4))]).toEqual([0, 0, 2, 1]);
    expect([...cc.credit]).toEqual([0.5, 0.25, -0.5, -0.25]);
    // next batch: w = 1.0, 0.5, 1.0, 0.5 → floors 1, 0, 1, 0 and one extra: the 0.5 of rank 2 (feature 3)
    expect([...cc.next(order, new Int32Array(4))]).toEqual([1, 0, 1, 1]);
  });

  it('moves credits with features when the ranking changes, keeps every credit within (−1, 1) and every capacity within m_max', () => {
    // adversarial re-rankings: reversed, shuffled, and by credit (the most owed gets the smallest share)
    const F = 512;
    const rng = new Rng(11);
    for (const [mode, mMax] of [['reverse', 16], ['shuffle', 16], ['by-credit', 16], ['shuffle', 2], ['by-credit', 2]] as const) {
      const shares = zipfShares(4, F, 16, 1, 6.8, mMax);
      const cc = new CarriedCapacities(shares, mMax);
      const cap = new Int32Array(F);
      let order = identity(F);
      let worst = 0;
      let drift = 0;
      let missed = 0;
      for (let t = 0; t < 1500; t++) {
        if (mode === 'reverse') order.reverse();
        else if (mode === 'shuffle') order = rng.shuffle(order);
        else order = Int32Array.from(identity(F)).sort((a, b) => cc.credit[b] - cc.credit[a] || a - b);
        const before = cc.credit.slice();
        cc.next(order, cap);
        if (cc.lastSlots !== cc.lastTarget) missed++;
        for (let r = 0; r < F; r++) {
          const j = order[r];
          // the credit a feature carried is the one it spends from: c′ = c + s(rank) − m
          // (unless m_max clips the rank: its credit is forfeited)
          if (shares.byRank[r] < mMax) drift = Math.max(drift, Math.abs(cc.credit[j] - (before[j] + shares.byRank[r] - cap[j])));
          if (cap[j] > mMax) worst = Infinity;
          worst = Math.max(worst, Math.abs(cc.credit[j]));
        }
      }
      expect(missed).toBe(0);
      expect(drift).toBeLessThan(1e-12);
      expect(worst).toBeLessThan(1);
    }
  });

  it('is deterministic and resumes from its state bit for bit, credits in flight', () => {
    const F = 300;
    const shares = zipfShares(3, F, 10, 1, 6.8, 10);
    const order = new Rng(5).shuffle(identity(F));
    const a = new CarriedCapacities(shares, 10);
    const cap = new Int32Array(F);
    for (let t = 0; t < 7; t++) a.next(order, cap);
    const b = new CarriedCapacities(shares, 10);
    b.restore(a.state());
    const capB = new Int32Array(F);
    for (let t = 0; t < 20; t++) {
      a.next(order, cap);
      b.next(order, capB);
      expect(capB).toEqual(cap);
    }
    expect(Buffer.from(b.credit.buffer).equals(Buffer.from(a.credit.buffer))).toBe(true);
    expect(b.batchCredit).toBe(a.batchCredit);
  });

  it('stays O(F) fast at a million features', () => {
    const F = 1 << 20;
    const cc = new CarriedCapacities(zipfShares(32, F, 4096, 1, 6.8, 4096), 4096);
    const order = identity(F);
    const cap = new Int32Array(F);
    cc.next(order, cap);
    const t0 = performance.now();
    for (let t = 0; t < 5; t++) cc.next(order, cap);
    expect(cc.lastSlots).toBe(32 * 4096);
    expect((performance.now() - t0) / 5).toBeLessThan(250);
  });
});

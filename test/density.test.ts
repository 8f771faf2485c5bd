import { describe, expect, it } from 'vitest';
import type { SparseCodes } from '../src/kernels/types.js';
import { FeatureStats } from '../src/sae/density.js';
import { UserError } from '../src/util/errors.js';
import { Rng } from '../src/util/rng.js';

/** Codes from per-token lists of firing features (value 1 each unless given). */
function codesOf(tokens: number[][], values?: number[][]): SparseCodes {
  const rowPtr = new Int32Array(tokens.length + 1);
  const index: number[] = [];
  const value: number[] = [];
  tokens.forEach((feats, b) => {
    feats.forEach((j, e) => {
      index.push(j);
      value.push(values ? values[b][e] : 1);
    });
    rowPtr[b + 1] = index.length;
  });
  return { B: tokens.length, nnz: index.length, rowPtr, index: Int32Array.from(index), value: Float32Array.from(value) };
}

function randomCodes(rng: Rng, B: number, F: number): SparseCodes {
  const tokens: number[][] = [];
  for (let b = 0; b < B; b++) tokens.push([...Array(F).keys()].filter(() => rng.int(4) === 0));
  return codesOf(tokens);
}

describe('density', () => {
  it('is 0 for every feature before the first update', () => {
    expect([...new FeatureStats(3).density]).toEqual([0, 0, 0]);
  });

  it('equals the batch firing fraction after the first update (bias-corrected)', () => {
    const s = new FeatureStats(3, { emaDecay: 0.99 });
    // feature 0 fires on 3 of 4 tokens, feature 1 on 1, feature 2 never
    s.update(codesOf([[0], [0, 1], [0], []]), 4);
    expect(s.density[0]).toBeCloseTo(0.75, 12);
    expect(s.density[1]).toBeCloseTo(0.25, 12);
    expect(s.density[2]).toBe(0);
  });

  it('follows d ← γ·d + (1−γ)·f with bias correction 1 − γ^t', () => {
    const s = new FeatureStats(1, { emaDecay: 0.5 });
    s.update(codesOf([[0], [0]]), 2); // f = 1: raw 0.5
    s.update(codesOf([[], []]), 2); // f = 0: raw 0.25; corrected 0.25 / (1 − 0.25) = 1/3
    expect(s.density[0]).toBeCloseTo(1 / 3, 12);
  });

  it('stays at a constant firing fraction', () => {
    const s = new FeatureStats(2);
    for (let t = 0; t < 50; t++) s.update(codesOf([[0], [1], [0], []]), 4);
    expect(s.density[0]).toBeCloseTo(0.5, 12);
    expect(s.density[1]).toBeCloseTo(0.25, 12);
  });

  it('uses the default decay 0.99', () => {
    expect(new FeatureStats(1).emaDecay).toBe(0.99);
  });

  it('does not count an entry whose value is not positive as a firing', () => {
    const s = new FeatureStats(2);
    s.update(codesOf([[0, 1]], [[0, 2]]), 1);
    expect([...s.cumulativeCounts]).toEqual([0, 1]);
    expect(s.density[0]).toBe(0);
  });

  it('rejects a decay outside [0, 1)', () => {
    expect(() => new FeatureStats(2, { emaDecay: 1 })).toThrow(UserError);
    expect(() => new FeatureStats(2, { emaDecay: -0.1 })).toThrow(UserError);
  });

  it('rejects codes whose batch size differs from B', () => {
    expect(() => new FeatureStats(2).update(codesOf([[0]]), 2)).toThrow(RangeError);
  });
});

describe('firing history', () => {
  it('records the token position of each feature\'s latest firing', () => {
    const s = new FeatureStats(3);
    s.update(codesOf([[0], [1], [0], []]), 4); // positions 1..4
    s.update(codesOf([[], [1]]), 2); // positions 5..6
    expect([...s.lastFired]).toEqual([3, 6, 0]);
    expect(s.tokensSeen).toBe(6);
  });

  it('counts every firing of every feature and how many have ever fired', () => {
    const s = new FeatureStats(4);
    s.update(codesOf([[0, 2], [2], [2]]), 3);
    s.update(codesOf([[0]]), 1);
    expect([...s.cumulativeCounts]).toEqual([2, 0, 3, 0]);
    expect(s.firedEver()).toBe(2);
  });
});

describe('dead features', () => {
  it('a feature that never fired is not dead before deadWindow tokens have been seen', () => {
    const s = new FeatureStats(2);
    s.update(codesOf([[0], [0], [0]]), 3);
    const mask = new Uint8Array(2);
    expect(s.deadMask(4, mask)).toBe(0);
    expect([...mask]).toEqual([0, 0]);
  });

  it('a feature that never fired is dead once deadWindow tokens have been seen', () => {
    const s = new FeatureStats(2);
    s.update(codesOf([[0], [0], [0], [0]]), 4);
    const mask = new Uint8Array(2);
    expect(s.deadMask(4, mask)).toBe(1);
    expect([...mask]).toEqual([0, 1]);
  });

  it('a feature is dead exactly when it has not fired in the last deadWindow tokens', () => {
    const s = new FeatureStats(1);
    s.update(codesOf([[0], [], []]), 3); // fired at position 1; 2 tokens since
    const mask = new Uint8Array(1);
    expect(s.deadMask(3, mask)).toBe(0);
    s.update(codesOf([[]]), 1); // 3 tokens since its firing
    expect(s.deadMask(3, mask)).toBe(1);
    s.update(codesOf([[0]]), 1); // fires again: alive
    expect(s.deadMask(3, mask)).toBe(0);
  });

  it('reports the dead fraction as dead features over F', () => {
    const s = new FeatureStats(4);
    s.update(codesOf([[0], [1], [], []]), 4);
    // window 3: feature 0 fired 3 tokens ago (dead), feature 1 two ago (alive), 2 and 3 never (dead)
    expect(s.deadFraction(3)).toBe(0.75);
    expect(s.deadFraction(10)).toBe(0);
  });
});

describe('state', () => {
  it('round-trips through JSON to identical statistics', () => {
    const rng = new Rng(31);
    const s = new FeatureStats(17, { emaDecay: 0.9 });
    for (let t = 0; t < 20; t++) s.update(randomCodes(rng, 8, 17), 8);
    const r = FeatureStats.fromState(JSON.parse(JSON.stringify(s.toState())));
    expect(r.emaDecay).toBe(0.9);
    expect(r.tokensSeen).toBe(s.tokensSeen);
    expect(r.updates).toBe(s.updates);
    expect(r.density).toEqual(s.density);
    expect(r.lastFired).toEqual(s.lastFired);
    expect(r.cumulativeCounts).toEqual(s.cumulativeCounts);
  });

  it('a resumed instance stays bit-identical to an uninterrupted one', () => {
    const rng = new Rng(32);
    const batches = Array.from({ length: 30 }, () => randomCodes(rng, 6, 11));
    const straight = new FeatureStats(11);
    for (const c of batches) straight.update(c, 6);
    let resumed = new FeatureStats(11);
    for (const c of batches.slice(0, 13)) resumed.update(c, 6);
    resumed = FeatureStats.fromState(JSON.parse(JSON.stringify(resumed.toState())));
    for (const c of batches.slice(13)) resumed.update(c, 6);
    expect(resumed.toState()).toEqual(straight.toState());
    expect(resumed.density).toEqual(straight.density);
  });

  it('rejects a state whose arrays do not match its width', () => {
    const state = new FeatureStats(4).toState();
    expect(() => FeatureStats.fromState({ ...state, F: 5 })).toThrow(UserError);
  });
});

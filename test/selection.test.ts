import { describe, expect, it } from 'vitest';
import type { SparseCodes, Selection } from '../src/kernels/types.js';
import {
  allocCodes,
  ensureCapacity,
  featureChoice,
  maskedTopK,
  mutualChoice,
  reluSelect,
  select,
  thresholdSelect,
  topK,
} from '../src/kernels/selection.js';
import { Rng } from '../src/util/rng.js';

interface Entry {
  b: number;
  j: number;
  v: number;
}

/** Coarse values make ties common; zeros and negatives must never be picked. */
function randomAffinities(rng: Rng, B: number, F: number, coarse: boolean): Float32Array {
  const pre = new Float32Array(B * F);
  for (let i = 0; i < pre.length; i++) pre[i] = coarse ? (rng.int(7) - 3) * 0.5 : rng.normal();
  return pre;
}

function randomShapes(seed: number, count: number): { rng: Rng; B: number; F: number; coarse: boolean }[] {
  const rng = new Rng(seed);
  const shapes = [];
  for (let t = 0; t < count; t++) shapes.push({ rng, B: 1 + rng.int(9), F: 1 + rng.int(12), coarse: t % 2 === 0 });
  return shapes;
}

function entriesOf(codes: SparseCodes): Entry[] {
  const out: Entry[] = [];
  for (let b = 0; b < codes.B; b++) {
    for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) out.push({ b, j: codes.index[e], v: codes.value[e] });
  }
  return out;
}

function positives(pre: Float32Array, B: number, F: number): Entry[] {
  const out: Entry[] = [];
  for (let b = 0; b < B; b++) for (let j = 0; j < F; j++) if (pre[b * F + j] > 0) out.push({ b, j, v: pre[b * F + j] });
  return out;
}

const canonical = (a: Entry, c: Entry): number => a.b - c.b || a.j - c.j;

/** Brute force: sort a group by value desc, then by the tie key asc, and keep the first n. */
function largest(group: Entry[], n: number, tieKey: (e: Entry) => number): Entry[] {
  return [...group].sort((a, c) => c.v - a.v || tieKey(a) - tieKey(c)).slice(0, n);
}

function oracleTopK(pre: Float32Array, B: number, F: number, k: number, mask?: Uint8Array): Entry[] {
  const all = positives(pre, B, F).filter((e) => !mask || mask[e.j] === 1);
  const out: Entry[] = [];
  for (let b = 0; b < B; b++) out.push(...largest(all.filter((e) => e.b === b), k, (e) => e.j));
  return out.sort(canonical);
}

function oracleMutual(pre: Float32Array, B: number, F: number, M: number): Entry[] {
  return largest(positives(pre, B, F), M, (e) => e.b * F + e.j).sort(canonical);
}

function oracleFeature(pre: Float32Array, B: number, F: number, cap: Int32Array): Entry[] {
  const all = positives(pre, B, F);
  const out: Entry[] = [];
  for (let j = 0; j < F; j++) out.push(...largest(all.filter((e) => e.j === j), cap[j], (e) => e.b));
  return out.sort(canonical);
}

function expectCanonicalCsr(codes: SparseCodes, B: number, F: number): void {
  expect(codes.B).toBe(B);
  expect(codes.rowPtr[0]).toBe(0);
  expect(codes.rowPtr[B]).toBe(codes.nnz);
  for (let b = 0; b < B; b++) {
    expect(codes.rowPtr[b + 1]).toBeGreaterThanOrEqual(codes.rowPtr[b]);
    for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) {
      expect(codes.index[e]).toBeGreaterThanOrEqual(0);
      expect(codes.index[e]).toBeLessThan(F);
      if (e > codes.rowPtr[b]) expect(codes.index[e]).toBeGreaterThan(codes.index[e - 1]);
    }
  }
}

function randomCapacities(rng: Rng, B: number, F: number): Int32Array {
  const cap = new Int32Array(F);
  for (let j = 0; j < F; j++) cap[j] = rng.int(B + 2);
  return cap;
}

function randomMask(rng: Rng, F: number): Uint8Array {
  const mask = new Uint8Array(F);
  for (let j = 0; j < F; j++) mask[j] = rng.int(2);
  return mask;
}

/** One instance of every selection kind, for the properties all of them share. */
function everySelection(rng: Rng, B: number, F: number): { name: string; run: (pre: Float32Array, out: SparseCodes) => void }[] {
  const k = 1 + rng.int(F);
  const M = rng.int(B * F + 2);
  const cap = randomCapacities(rng, B, F);
  const thr = new Float32Array(F).map(() => rng.normal());
  const mask = randomMask(rng, F);
  return [
    { name: 'topk', run: (pre, out) => topK(pre, B, F, k, out) },
    { name: 'mutual', run: (pre, out) => mutualChoice(pre, B, F, M, out) },
    { name: 'feature', run: (pre, out) => featureChoice(pre, B, F, cap, out) },
    { name: 'relu', run: (pre, out) => reluSelect(pre, B, F, out) },
    { name: 'jumprelu', run: (pre, out) => thresholdSelect(pre, B, F, thr, out) },
    { name: 'global', run: (pre, out) => thresholdSelect(pre, B, F, -0.5, out) },
    { name: 'masked', run: (pre, out) => maskedTopK(pre, B, F, mask, k, out) },
  ];
}

describe('codes buffers', () => {
  it('allocCodes gives an empty CSR of the requested capacity and float type', () => {
    const c = allocCodes(3, 5, Float64Array);
    expect(c.B).toBe(3);
    expect(c.nnz).toBe(0);
    expect(c.rowPtr.length).toBe(4);
    expect(c.index.length).toBe(5);
    expect(c.value).toBeInstanceOf(Float64Array);
    expect(allocCodes(1, 1).value).toBeInstanceOf(Float32Array);
  });

  it('ensureCapacity grows index and value, keeps their contents and the value type', () => {
    const c = allocCodes(1, 2, Float64Array);
    c.index.set([4, 7]);
    c.value.set([0.25, 0.5]);
    ensureCapacity(c, 10);
    expect(c.index.length).toBeGreaterThanOrEqual(10);
    expect(c.value.length).toBeGreaterThanOrEqual(10);
    expect(c.value).toBeInstanceOf(Float64Array);
    expect([...c.index.subarray(0, 2)]).toEqual([4, 7]);
    expect([...c.value.subarray(0, 2)]).toEqual([0.25, 0.5]);
  });

  it('a selection grows an undersized output buffer itself', () => {
    const pre = new Float32Array([1, 2, 3, 4, 5, 6]);
    const out = allocCodes(1, 0);
    reluSelect(pre, 2, 3, out);
    expect(out.nnz).toBe(6);
    expect([...out.value.subarray(0, 6)]).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('a buffer sized for a larger batch is reused for a smaller one', () => {
    const out = allocCodes(8, 64);
    topK(new Float32Array([3, 1, 2, 5]), 2, 2, 1, out);
    expect(out.B).toBe(2);
    expect(entriesOf(out)).toEqual([
      { b: 0, j: 0, v: 3 },
      { b: 1, j: 1, v: 5 },
    ]);
  });
});

describe('token choice (topk)', () => {
  it('selects at most k entries per token', () => {
    for (const { rng, B, F, coarse } of randomShapes(1, 200)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const k = 1 + rng.int(F + 1);
      const out = allocCodes(B, 0);
      topK(pre, B, F, k, out);
      for (let b = 0; b < B; b++) expect(out.rowPtr[b + 1] - out.rowPtr[b]).toBeLessThanOrEqual(k);
    }
  });

  it('selects exactly the k largest positive entries of each token', () => {
    for (const { rng, B, F, coarse } of randomShapes(2, 300)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const k = 1 + rng.int(F + 1);
      const out = allocCodes(B, 0);
      topK(pre, B, F, k, out);
      expect(entriesOf(out)).toEqual(oracleTopK(pre, B, F, k));
    }
  });

  it('breaks ties at the boundary in favour of the lower feature index', () => {
    const out = allocCodes(1, 0);
    topK(new Float32Array([1, 2, 2, 2, 0.5]), 1, 5, 2, out);
    expect([...out.index.subarray(0, out.nnz)]).toEqual([1, 2]);
  });

  it('takes fewer than k when a token has fewer positive entries', () => {
    const out = allocCodes(1, 0);
    topK(new Float32Array([-1, 0, 3, -2]), 1, 4, 3, out);
    expect(entriesOf(out)).toEqual([{ b: 0, j: 2, v: 3 }]);
  });
});

describe('mutual choice', () => {
  it('selects exactly min(M, #positive) entries over the whole batch', () => {
    for (const { rng, B, F, coarse } of randomShapes(3, 300)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const M = rng.int(B * F + 3);
      const out = allocCodes(B, 0);
      mutualChoice(pre, B, F, M, out);
      expect(out.nnz).toBe(Math.min(M, positives(pre, B, F).length));
    }
  });

  it('selects the M largest entries of the batch, as a brute-force sort finds them', () => {
    for (const { rng, B, F, coarse } of randomShapes(4, 300)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const M = rng.int(B * F + 3);
      const out = allocCodes(B, 0);
      mutualChoice(pre, B, F, M, out);
      expect(entriesOf(out)).toEqual(oracleMutual(pre, B, F, M));
    }
  });

  it('breaks ties at the boundary in favour of the lower flat index b·F + j', () => {
    const out = allocCodes(2, 0);
    // every entry equals 1: the first three in row-major order win
    mutualChoice(new Float32Array([1, 1, 1, 1]), 2, 2, 3, out);
    expect(entriesOf(out)).toEqual([
      { b: 0, j: 0, v: 1 },
      { b: 0, j: 1, v: 1 },
      { b: 1, j: 0, v: 1 },
    ]);
  });

  it('lets one token take many entries and another none', () => {
    const out = allocCodes(2, 0);
    mutualChoice(new Float32Array([5, 4, 3, 0.1, 0.2, 0.3]), 2, 3, 3, out);
    expect([...out.rowPtr.subarray(0, 3)]).toEqual([0, 3, 3]);
  });
});

describe('feature choice', () => {
  it('selects feature j at most m_j times, and exactly m_j times when it has ≥ m_j positive tokens', () => {
    for (const { rng, B, F, coarse } of randomShapes(5, 300)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const cap = randomCapacities(rng, B, F);
      const out = allocCodes(B, 0);
      featureChoice(pre, B, F, cap, out);
      const used = new Int32Array(F);
      for (let e = 0; e < out.nnz; e++) used[out.index[e]]++;
      for (let j = 0; j < F; j++) {
        let pos = 0;
        for (let b = 0; b < B; b++) if (pre[b * F + j] > 0) pos++;
        expect(used[j]).toBe(Math.min(cap[j], pos));
      }
    }
  });

  it('gives each feature its largest positive tokens, as a brute-force sort finds them', () => {
    for (const { rng, B, F, coarse } of randomShapes(6, 300)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const cap = randomCapacities(rng, B, F);
      const out = allocCodes(B, 0);
      featureChoice(pre, B, F, cap, out);
      expect(entriesOf(out)).toEqual(oracleFeature(pre, B, F, cap));
    }
  });

  it('breaks ties at the boundary in favour of the lower token index', () => {
    const out = allocCodes(4, 0);
    // column 0 is 2,3,3,3 over tokens 0..3; capacity 2 takes tokens 1 and 2
    featureChoice(new Float32Array([2, 0, 3, 0, 3, 0, 3, 0]), 4, 2, new Int32Array([2, 5]), out);
    expect(entriesOf(out)).toEqual([
      { b: 1, j: 0, v: 3 },
      { b: 2, j: 0, v: 3 },
    ]);
  });

  it('selects nothing for a feature of capacity 0', () => {
    const out = allocCodes(2, 0);
    featureChoice(new Float32Array([1, 2, 3, 4]), 2, 2, new Int32Array([0, 1]), out);
    expect(entriesOf(out)).toEqual([{ b: 1, j: 1, v: 4 }]);
  });
});

describe('relu and threshold selections', () => {
  it('relu selects every positive entry and nothing else', () => {
    for (const { rng, B, F, coarse } of randomShapes(7, 100)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const out = allocCodes(B, 1);
      reluSelect(pre, B, F, out);
      expect(entriesOf(out)).toEqual(positives(pre, B, F));
    }
  });

  it('jumprelu selects z\'_j strictly above the threshold of feature j', () => {
    const out = allocCodes(2, 0);
    const thr = new Float32Array([0.5, 2]);
    thresholdSelect(new Float32Array([0.5, 3, 0.75, 2]), 2, 2, thr, out);
    expect(entriesOf(out)).toEqual([
      { b: 0, j: 1, v: 3 },
      { b: 1, j: 0, v: 0.75 },
    ]);
  });

  it('a global threshold selects z\' strictly above it', () => {
    const out = allocCodes(2, 0);
    thresholdSelect(new Float32Array([0.5, 3, 0.75, 2]), 2, 2, 0.75, out);
    expect(entriesOf(out)).toEqual([
      { b: 0, j: 1, v: 3 },
      { b: 1, j: 1, v: 2 },
    ]);
  });

  it('a negative threshold still selects only positive entries', () => {
    const out = allocCodes(1, 0);
    thresholdSelect(new Float32Array([-0.5, 0, 0.25]), 1, 3, -1, out);
    expect(entriesOf(out)).toEqual([{ b: 0, j: 2, v: 0.25 }]);
  });
});

describe('masked topk (aux selections)', () => {
  it('picks only features whose mask is set', () => {
    for (const { rng, B, F, coarse } of randomShapes(8, 200)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const mask = randomMask(rng, F);
      const out = allocCodes(B, 0);
      maskedTopK(pre, B, F, mask, 1 + rng.int(F), out);
      for (let e = 0; e < out.nnz; e++) expect(mask[out.index[e]]).toBe(1);
    }
  });

  it('is per-token topk over the masked features, as a brute-force sort finds it', () => {
    for (const { rng, B, F, coarse } of randomShapes(9, 300)) {
      const pre = randomAffinities(rng, B, F, coarse);
      const mask = randomMask(rng, F);
      const k = 1 + rng.int(F);
      const out = allocCodes(B, 0);
      maskedTopK(pre, B, F, mask, k, out);
      expect(entriesOf(out)).toEqual(oracleTopK(pre, B, F, k, mask));
    }
  });

  it('selects nothing when no feature is masked in', () => {
    const out = allocCodes(1, 0);
    maskedTopK(new Float32Array([1, 2, 3]), 1, 3, new Uint8Array(3), 2, out);
    expect(out.nnz).toBe(0);
  });
});

describe('properties shared by every selection', () => {
  it('never selects a non-positive entry', () => {
    for (const { rng, B, F, coarse } of randomShapes(10, 150)) {
      const pre = randomAffinities(rng, B, F, coarse);
      for (const s of everySelection(rng, B, F)) {
        const out = allocCodes(B, 0);
        s.run(pre, out);
        for (let e = 0; e < out.nnz; e++) expect(out.value[e], s.name).toBeGreaterThan(0);
      }
    }
  });

  it('stores the affinity z\' of each selected entry as its value', () => {
    for (const { rng, B, F, coarse } of randomShapes(11, 100)) {
      const pre = randomAffinities(rng, B, F, coarse);
      for (const s of everySelection(rng, B, F)) {
        const out = allocCodes(B, 0);
        s.run(pre, out);
        for (const { b, j, v } of entriesOf(out)) expect(v, s.name).toBe(pre[b * F + j]);
      }
    }
  });

  it('writes canonical CSR: rowPtr from 0 to nnz, features ascending within each token', () => {
    for (const { rng, B, F, coarse } of randomShapes(12, 150)) {
      const pre = randomAffinities(rng, B, F, coarse);
      for (const s of everySelection(rng, B, F)) {
        const out = allocCodes(B, 0);
        s.run(pre, out);
        expectCanonicalCsr(out, B, F);
      }
    }
  });

  it('gives identical output on repeated calls, into a fresh or a reused buffer', () => {
    for (const { rng, B, F } of randomShapes(13, 100)) {
      const pre = randomAffinities(rng, B, F, true);
      const reused = allocCodes(B, 0);
      for (const s of everySelection(rng, B, F)) {
        const first = allocCodes(B, 0);
        s.run(pre, first);
        s.run(pre, reused);
        expect(entriesOf(reused), s.name).toEqual(entriesOf(first));
        expect(reused.nnz).toBe(first.nnz);
      }
    }
  });
});

describe('select dispatch', () => {
  it('routes every Selection kind to its reference selection', () => {
    const rng = new Rng(14);
    const B = 5;
    const F = 7;
    const pre = randomAffinities(rng, B, F, true);
    const cap = randomCapacities(rng, B, F);
    const thr = new Float32Array(F).map(() => rng.normal());
    const cases: [Selection, (out: SparseCodes) => void][] = [
      [{ kind: 'relu' }, (o) => reluSelect(pre, B, F, o)],
      [{ kind: 'topk', k: 2 }, (o) => topK(pre, B, F, 2, o)],
      [{ kind: 'mutual', M: 9 }, (o) => mutualChoice(pre, B, F, 9, o)],
      [{ kind: 'feature', capacity: cap }, (o) => featureChoice(pre, B, F, cap, o)],
      [{ kind: 'jumprelu', threshold: thr }, (o) => thresholdSelect(pre, B, F, thr, o)],
      [{ kind: 'globalThreshold', threshold: 0.6 }, (o) => thresholdSelect(pre, B, F, 0.6, o)],
    ];
    for (const [sel, direct] of cases) {
      const viaSelect = allocCodes(B, 0);
      const viaDirect = allocCodes(B, 0);
      select(pre, B, F, sel, viaSelect);
      direct(viaDirect);
      expect(entriesOf(viaSelect), sel.kind).toEqual(entriesOf(viaDirect));
    }
  });
});

// The host LM's native ops against the float64 reference, for Node's test runner (see
// helpers.mjs): linear (both layouts, ragged shapes, several k-blocks), layerNorm, GELU (tanh and
// erf), add, rotary, causal attention with and without the pattern, cross-entropy; bit-identical
// run to run. The tolerances are those of test/lm-kernels.test.ts; the shapes are smaller (qemu)
// but keep every tail: sizes that are not multiples of the tile (8 × 8 on NEON) or of the vector
// width, K past one k-block (256), T past one query block (64). Run: node test/emulated/lm.test.mjs
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { expectWithin, imp, normal, requireNative, Rng, sameBits } from './helpers.mjs';

const { info } = await requireNative();
const { createNativeLmKernels, nativeLmKernelsFor } = await imp('kernels/lm-native.js');
const { createReferenceLmKernels } = await imp('kernels/lm-reference.js');
const ref = createReferenceLmKernels();

/** Linear's outputs vs the reference, within float32 rounding of the K-term sums Σ|x||w| + |bias|. */
function checkLinear(k, rng, n, K, m, layout, withBias = true) {
  const x = normal(rng, n * K);
  const W = normal(rng, K * m, 1 / Math.sqrt(K));
  const bias = withBias ? normal(rng, m, 0.1) : null;
  const want = new Float32Array(n * m);
  const got = new Float32Array(n * m).fill(NaN);
  ref.linear(x, n, K, W, m, layout, bias, want);
  k.linear(x, n, K, W, m, layout, bias, got);
  const xn = new Float64Array(n), wn = new Float64Array(m);
  for (let i = 0; i < n; i++) for (let p = 0; p < K; p++) xn[i] += x[i * K + p] ** 2;
  for (let p = 0; p < K; p++) for (let j = 0; j < m; j++) wn[j] += W[layout === 'in_out' ? p * m + j : j * K + p] ** 2;
  expectWithin(got, want, 1e-6, (i) => Math.sqrt(xn[Math.floor(i / m)] * wn[i % m]) + (bias ? Math.abs(bias[i % m]) : 0), 0, `linear ${n}×${K}×${m} ${layout}`);
}

describe(`native LM ops match the reference (${info.isas.join(', ')})`, () => {
  for (const isa of info.isas) {
    const nat = nativeLmKernelsFor(isa);

    it(`linear, both layouts, with and without bias, ragged shapes and several k-blocks (${isa})`, () => {
      const rng = new Rng(1);
      for (const [n, K, m] of [[1, 1, 1], [3, 5, 7], [7, 33, 29], [13, 17, 40], [31, 300, 95], [6, 256, 16], [20, 513, 33], [9, 64, 700]]) {
        for (const layout of ['in_out', 'out_in']) {
          checkLinear(nat, rng, n, K, m, layout, true);
          checkLinear(nat, rng, n, K, m, layout, false);
        }
      }
    });

    it(`layerNorm over rows of d (768 and ragged), in place too (${isa})`, () => {
      const rng = new Rng(2);
      for (const [n, d] of [[1, 1], [5, 7], [8, 768], [9, 100]]) {
        const x = normal(rng, n * d, 3);
        for (let i = 0; i < x.length; i++) x[i] += 2;
        const w = normal(rng, d), b = normal(rng, d);
        const want = new Float32Array(n * d);
        const got = new Float32Array(n * d);
        ref.layerNorm(x, n, d, w, b, 1e-5, want);
        nat.layerNorm(x, n, d, w, b, 1e-5, got);
        expectWithin(got, want, 1e-6, (i) => Math.abs(want[i]) + Math.abs(w[i % d]) + Math.abs(b[i % d]), 0, `layerNorm ${n}×${d}`);
        const inPlace = x.slice();
        nat.layerNorm(inPlace, n, d, w, b, 1e-5, inPlace);
        assert.ok(sameBits(inPlace, got), 'in place gives the same bits');
      }
    });

    it(`gelu tanh within 1e-5 relative and erf within float32 precision over [−6, 6] (${isa})`, () => {
      const n = 20_003;
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = -6 + (12 * i) / (n - 1);
      for (const kind of ['tanh', 'erf']) {
        const want = x.slice();
        const got = x.slice();
        ref.gelu(want, n, kind);
        nat.gelu(got, n, kind);
        const tol = kind === 'tanh' ? 1e-5 : isa === 'sse2' ? 4e-6 : 6e-7;
        expectWithin(got, want, tol, (i) => Math.abs(want[i]), 1e-30, `gelu ${kind}`);
      }
    });

    it(`gelu leaves values past n untouched, any length (${isa})`, () => {
      for (const n of [0, 1, 3, 17]) {
        const x = Float32Array.from({ length: n + 2 }, (_, i) => i - 2);
        const want = x.slice();
        ref.gelu(want, n, 'erf');
        nat.gelu(x, n, 'erf');
        expectWithin(x, want, 1e-6, (i) => Math.abs(want[i]), 0, `gelu n=${n}`);
        assert.equal(x[n], n - 2);
        assert.equal(x[n + 1], n - 1);
      }
    });

    it(`add adds the first n values exactly (${isa})`, () => {
      const rng = new Rng(3);
      for (const n of [0, 5, 10_001]) {
        const a = normal(rng, n + 1), b = normal(rng, n + 1);
        const want = a.slice();
        ref.add(want, b, n);
        nat.add(a, b, n);
        assert.ok(sameBits(a, want), `add n=${n}`);
      }
    });

    it(`rotary: Pythia-70m (hd 64, dims 16), full head, T=1, ragged (${isa})`, () => {
      const rng = new Rng(4);
      for (const [B, T, H, hd, dims] of [[1, 20, 8, 64, 16], [1, 5, 2, 8, 8], [3, 1, 4, 64, 16], [2, 33, 3, 20, 6]]) {
        const x = normal(rng, B * T * H * hd);
        const want = x.slice();
        const got = x.slice();
        ref.rotary(want, B, T, H, hd, dims, 10000);
        nat.rotary(got, B, T, H, hd, dims, 10000);
        expectWithin(got, want, 1e-6, () => 4, 0, 'rotary');
        for (let r = 0; r < B * T * H; r++) for (let e = dims; e < hd; e++) assert.equal(got[r * hd + e], x[r * hd + e]);
      }
    });

    it(`attention with pattern at GPT-2 head size and ragged shapes, T past one query block (${isa})`, () => {
      const rng = new Rng(5);
      for (const [B, T, H, hd] of [[1, 20, 2, 64], [1, 1, 2, 8], [1, 70, 1, 20], [3, 7, 1, 5], [1, 67, 1, 64]]) {
        const size = B * T * H * hd;
        const q = normal(rng, size), k = normal(rng, size), v = normal(rng, size);
        const want = new Float32Array(size), got = new Float32Array(size).fill(NaN);
        const pw = new Float32Array(B * H * T * T), pg = new Float32Array(B * H * T * T).fill(NaN);
        ref.attention(q, k, v, B, T, H, hd, want, pw);
        nat.attention(q, k, v, B, T, H, hd, got, pg);
        expectWithin(got, want, 2e-6, () => 1, 0, `attention ${B}×${T}×${H}×${hd}`);
        expectWithin(pg, pw, 2e-6, (i) => pw[i] + 1e-3, 0, 'pattern');
        for (let b = 0; b < B * H; b++) for (let t = 0; t < T; t++) for (let s = t + 1; s < T; s++) assert.equal(pg[(b * T + t) * T + s], 0);
        const noPattern = new Float32Array(size);
        nat.attention(q, k, v, B, T, H, hd, noPattern, null);
        assert.ok(sameBits(noPattern, got), 'the same output without the pattern');
      }
    });

    // klDivergence arrives with the splice-eval work on main; tested here wherever it exists
    if (typeof nat.klDivergence === 'function') {
      it(`klDivergence matches float64 for near and far distributions, per row and broadcast (${isa})`, () => {
        const rng = new Rng(11);
        for (const [n, V, spread] of [[2, 50257, 1e-3], [2, 5003, 1], [4, 7, 0.5], [2, 1, 1], [5, 33, 2]]) {
          const p = normal(rng, n * V, 8);
          const q = Float32Array.from(p, (v) => v + spread * (rng.next() - 0.5));
          for (const broadcast of [false, true]) {
            const want = new Float32Array(n), got = new Float32Array(n);
            ref.klDivergence(p, q, n, V, broadcast, want);
            nat.klDivergence(p, q, n, V, broadcast, got);
            expectWithin(got, want, 1e-5, (i) => want[i], 2e-6, `klDivergence ${n}×${V} spread ${spread} broadcast ${broadcast}`);
            if (!broadcast) {
              nat.klDivergence(p, p, n, V, false, got);
              for (let i = 0; i < n; i++) assert.ok(Math.abs(got[i]) < 1e-6, 'KL of a distribution against itself');
            }
          }
        }
      });
    }

    it(`crossEntropy over a wide row and tiny V (${isa})`, () => {
      const rng = new Rng(7);
      for (const [n, V] of [[2, 5003], [3, 1], [5, 3], [2, 17]]) {
        const logits = normal(rng, n * V, 4);
        const targets = Int32Array.from({ length: n }, (_, i) => (i * 7919) % V);
        const want = new Float32Array(n), got = new Float32Array(n);
        ref.crossEntropy(logits, n, V, targets, want);
        nat.crossEntropy(logits, n, V, targets, got);
        expectWithin(got, want, 1e-6, (i) => Math.abs(want[i]) + 1, 0, `crossEntropy ${n}×${V}`);
      }
    });
  }

  it('linear, attention and crossEntropy at GPT-2-small sizes (d 768, K 3072, T 300, V 50257)', () => {
    const rng = new Rng(8);
    const nat = createNativeLmKernels();
    checkLinear(nat, rng, 12, 768, 2304, 'in_out');
    checkLinear(nat, rng, 9, 3072, 768, 'in_out');
    checkLinear(nat, rng, 2, 768, 5003, 'out_in', false);
    // one head at T 300 (several query blocks); the reference on the prefix 0..t gives row t
    const [T, hd] = [300, 64];
    const q = normal(rng, T * hd), k = normal(rng, T * hd), v = normal(rng, T * hd);
    const got = new Float32Array(T * hd);
    nat.attention(q, k, v, 1, T, 1, hd, got, null);
    for (const t of [0, 63, 64, 200, 299]) {
      const n = t + 1;
      const want = new Float32Array(n * hd);
      ref.attention(q.subarray(0, n * hd), k.subarray(0, n * hd), v.subarray(0, n * hd), 1, n, 1, hd, want);
      expectWithin(got.subarray(t * hd, n * hd), want.subarray(t * hd), 2e-6, () => 1, 0, `attention row ${t}`);
    }
    const V = 50257;
    const logits = normal(rng, 2 * V, 4);
    const targets = Int32Array.from([3, 50256]);
    const want = new Float32Array(2), out = new Float32Array(2);
    ref.crossEntropy(logits, 2, V, targets, want);
    nat.crossEntropy(logits, 2, V, targets, out);
    expectWithin(out, want, 1e-6, (i) => Math.abs(want[i]) + 1, 0, 'crossEntropy V=50257');
  });

  it('rejects short arrays, aliasing linear outputs and targets outside the vocabulary', () => {
    const nat = createNativeLmKernels();
    const x = new Float32Array(6);
    assert.throws(() => nat.linear(x, 2, 3, new Float32Array(5), 2, 'in_out', null, new Float32Array(4)), /W holds 5 values, need 6/);
    assert.throws(() => nat.linear(x, 2, 3, new Float32Array(6), 2, 'in_out', null, x), /alias/);
    assert.throws(() => nat.crossEntropy(new Float32Array(6), 2, 3, new Int32Array([0, 3]), new Float32Array(2)), /target/);
  });

  it('gives bit-identical results run to run', () => {
    const everyOp = () => {
      const nat = createNativeLmKernels();
      const rng = new Rng(10);
      const [B, T, H, hd, d] = [2, 20, 4, 16, 64];
      const n = B * T;
      const x = normal(rng, n * d), W = normal(rng, d * 3 * d, 0.1), b = normal(rng, 3 * d);
      const qkv = new Float32Array(n * 3 * d);
      nat.linear(x, n, d, W, 3 * d, 'in_out', b, qkv);
      const q = qkv.slice(0, n * d), k = qkv.slice(n * d, 2 * n * d), v = qkv.slice(2 * n * d);
      nat.rotary(q, B, T, H, hd, 8, 10000);
      const out = new Float32Array(n * d), pat = new Float32Array(B * H * T * T);
      nat.attention(q, k, v, B, T, H, hd, out, pat);
      const ln = new Float32Array(n * d);
      nat.layerNorm(out, n, d, W.subarray(0, d), b.subarray(0, d), 1e-5, ln);
      nat.gelu(ln, ln.length, 'erf');
      nat.add(ln, x, ln.length);
      const logits = new Float32Array(n * 300);
      nat.linear(ln, n, d, normal(rng, 300 * d, 0.1), 300, 'out_in', null, logits);
      const loss = new Float32Array(n);
      nat.crossEntropy(logits, n, 300, Int32Array.from({ length: n }, (_, i) => (i * 37) % 300), loss);
      return [qkv, q, out, pat, ln, logits, loss];
    };
    const a = everyOp(), b = everyOp();
    for (let i = 0; i < a.length; i++) assert.ok(sameBits(a[i], b[i]), `result ${i}`);
  });
});

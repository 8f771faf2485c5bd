// The host LM's native ops (issue 8) against the float64 reference, written once for two runners:
// test/lm-kernels.test.ts (vitest, against src/, size 'full': GPT-2-small and Pythia-70m shapes)
// and test/emulated/lm.test.mjs (Node's runner under qemu, against dist/, size 'emulated': smaller
// shapes that keep every tail: sizes that are not multiples of the tile (8 × 8 on NEON) or of the
// vector width, K past one k-block (256), T past one query block (64)). The kernel modules come in
// as `m`, the runner's describe/it as `t`; assertions are node:assert.
//
// Tolerances are relative to the size of the terms summed (float32 accumulation of K terms
// against float64), i.e. the float32 precision of the result.
import assert from 'node:assert/strict';
import { expectWithin, normal, sameBits } from './measures.mjs';

const SIZES = {
  full: {
    linear: [[1, 1, 1], [3, 5, 7], [7, 33, 29], [13, 17, 40], [31, 300, 95], [6, 256, 16], [50, 513, 33]],
    layerNorm: [[1, 1], [5, 7], [64, 768], [9, 100]],
    gelu: 120_003,
    add: [0, 5, 100_001],
    rotary: [[2, 64, 8, 64, 16], [1, 5, 2, 8, 8], [3, 1, 4, 64, 16], [2, 33, 3, 20, 6]],
    attention: [[2, 64, 12, 64], [1, 1, 2, 8], [1, 150, 3, 20], [3, 7, 1, 5], [1, 70, 2, 64]],
    longAttention: { T: 2048, rows: [0, 1, 63, 64, 1000, 2047] },
    crossEntropy: [[4, 50257], [3, 1], [5, 3], [2, 17]],
    klDivergence: [[3, 50257, 1e-3], [3, 50257, 1], [4, 7, 0.5], [2, 1, 1], [5, 33, 2]],
    // GPT-2-small QKV, MLP in/out (K 3072) and the unembedding (out_in, m 50257)
    gpt2Linear: [[64, 768, 2304, 'in_out'], [64, 768, 3072, 'in_out'], [64, 3072, 768, 'in_out'], [3, 768, 50257, 'out_in', false]],
    // Pythia-70m: d 512, MLP 2048, nn.Linear layout
    pythiaLinear: [[40, 512, 1536, 'out_in'], [40, 2048, 512, 'out_in']],
    repeat: { B: 2, T: 40, H: 4, hd: 16, d: 64, V: 1000 },
  },
  emulated: {
    linear: [[1, 1, 1], [3, 5, 7], [7, 33, 29], [13, 17, 40], [31, 300, 95], [6, 256, 16], [20, 513, 33], [9, 64, 700]],
    layerNorm: [[1, 1], [5, 7], [8, 768], [9, 100]],
    gelu: 20_003,
    add: [0, 5, 10_001],
    rotary: [[1, 20, 8, 64, 16], [1, 5, 2, 8, 8], [3, 1, 4, 64, 16], [2, 33, 3, 20, 6]],
    attention: [[1, 20, 2, 64], [1, 1, 2, 8], [1, 70, 1, 20], [3, 7, 1, 5], [1, 67, 1, 64]],
    longAttention: { T: 300, rows: [0, 63, 64, 200, 299] },
    crossEntropy: [[2, 5003], [3, 1], [5, 3], [2, 17]],
    klDivergence: [[2, 50257, 1e-3], [2, 5003, 1], [4, 7, 0.5], [2, 1, 1], [5, 33, 2]],
    gpt2Linear: [[12, 768, 2304, 'in_out'], [9, 3072, 768, 'in_out'], [2, 768, 5003, 'out_in', false]],
    pythiaLinear: [[4, 512, 1536, 'out_in'], [3, 2048, 512, 'out_in']],
    repeat: { B: 2, T: 20, H: 4, hd: 16, d: 64, V: 300 },
  },
};

/** Registers the checks. m: Rng, createReferenceLmKernels, createNativeLmKernels, nativeLmKernelsFor. */
export function defineLmKernelChecks(t, m, isas, size) {
  const { describe, it } = t;
  const { Rng, createNativeLmKernels, nativeLmKernelsFor } = m;
  const ref = m.createReferenceLmKernels();
  const S = SIZES[size];

  /** Linear's outputs vs the reference, within float32 rounding of the K-term sums Σ|x||w| + |bias|. */
  function checkLinear(k, rng, n, K, mm, layout, withBias = true) {
    const x = normal(rng, n * K);
    const W = normal(rng, K * mm, 1 / Math.sqrt(K));
    const bias = withBias ? normal(rng, mm, 0.1) : null;
    const want = new Float32Array(n * mm);
    const got = new Float32Array(n * mm).fill(NaN);
    ref.linear(x, n, K, W, mm, layout, bias, want);
    k.linear(x, n, K, W, mm, layout, bias, got);
    // the rounding of a K-term sum is bounded relative to Σ_k |x_ik|·|w_kj| ≤ ‖x_i‖·‖w_j‖ (Cauchy–Schwarz)
    const xn = new Float64Array(n), wn = new Float64Array(mm);
    for (let i = 0; i < n; i++) for (let p = 0; p < K; p++) xn[i] += x[i * K + p] ** 2;
    for (let p = 0; p < K; p++) for (let j = 0; j < mm; j++) wn[j] += W[layout === 'in_out' ? p * mm + j : j * K + p] ** 2;
    expectWithin(got, want, 1e-6, (i) => Math.sqrt(xn[Math.floor(i / mm)] * wn[i % mm]) + (bias ? Math.abs(bias[i % mm]) : 0), 0, `linear ${n}×${K}×${mm} ${layout}`);
  }

  /**
   * Linear under precision bf16 vs the reference bf16 linear (docs/precision.md): the same rounded
   * operands, summed in another order, so within 2·(K−1)·2^-24·Σ_p|x̃_p·w̃_p| + 2^-24·|bias| per
   * element; Σ_p|x̃_p·w̃_p| ≤ ‖x̃_i‖·‖w̃_j‖ ≤ (1 + 2^-8)²·‖x_i‖·‖w_j‖.
   */
  function bf16Case(refBf16, rng, n, K, mm, layout) {
    const x = normal(rng, n * K);
    const W = normal(rng, K * mm, 1 / Math.sqrt(K));
    const bias = normal(rng, mm, 0.1);
    const want = new Float32Array(n * mm);
    refBf16.linear(x, n, K, W, mm, layout, bias, want);
    return { x, W, bias, want, n, K, mm, layout };
  }
  function checkLinearBf16(k, c) {
    const { x, W, bias, want, n, K, mm, layout } = c;
    const got = new Float32Array(n * mm).fill(NaN);
    k.linear(x, n, K, W, mm, layout, bias, got);
    const xn = new Float64Array(n), wn = new Float64Array(mm);
    for (let i = 0; i < n; i++) for (let p = 0; p < K; p++) xn[i] += x[i * K + p] ** 2;
    for (let p = 0; p < K; p++) for (let j = 0; j < mm; j++) wn[j] += W[layout === 'in_out' ? p * mm + j : j * K + p] ** 2;
    const U = 2 ** -24;
    expectWithin(got, want, 2 * Math.max(K - 1, 0) * U * 1.01, (i) => Math.sqrt(xn[Math.floor(i / mm)] * wn[i % mm]), U * 0.5, `bf16 linear ${n}×${K}×${mm} ${layout} on ${k.name}`);
  }

  function attentionInputs(rng, B, T, H, hd) {
    const size = B * T * H * hd;
    return { q: normal(rng, size), k: normal(rng, size), v: normal(rng, size) };
  }

  describe('native LM ops match the reference', () => {
    for (const isa of isas) {
      const k = () => nativeLmKernelsFor(isa);

      it(`linear, both layouts, with and without bias, at small and ragged shapes (${isa})`, () => {
        const rng = new Rng(1);
        const nat = k();
        for (const [n, K, mm] of S.linear) {
          for (const layout of ['in_out', 'out_in']) {
            checkLinear(nat, rng, n, K, mm, layout, true);
            checkLinear(nat, rng, n, K, mm, layout, false);
          }
        }
      });

      it(`layerNorm over rows of d (768 and ragged), in place too (${isa})`, () => {
        const rng = new Rng(2);
        const nat = k();
        for (const [n, d] of S.layerNorm) {
          const x = normal(rng, n * d, 3);
          for (let i = 0; i < x.length; i++) x[i] += 2; // a non-zero mean
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

      it(`gelu tanh matches within 1e-5 relative and erf within float32 precision over [−6, 6] (${isa})`, () => {
        const nat = k();
        const n = S.gelu;
        const x = new Float32Array(n);
        for (let i = 0; i < n; i++) x[i] = -6 + (12 * i) / (n - 1);
        for (const kind of ['tanh', 'erf']) {
          const want = x.slice();
          const got = x.slice();
          ref.gelu(want, n, kind);
          nat.gelu(got, n, kind);
          // relative to the value itself: both tails included (erf: a few ulp; SSE2 has no FMA)
          const tol = kind === 'tanh' ? 1e-5 : isa === 'sse2' ? 4e-6 : 6e-7;
          expectWithin(got, want, tol, (i) => Math.abs(want[i]), 1e-30, `gelu ${kind}`);
        }
      });

      it(`gelu leaves values past n untouched and handles lengths that are not a multiple of the vector width (${isa})`, () => {
        const nat = k();
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
        const nat = k();
        for (const n of S.add) {
          const a = normal(rng, n + 1), b = normal(rng, n + 1);
          const want = a.slice();
          ref.add(want, b, n);
          nat.add(a, b, n);
          assert.ok(sameBits(a, want), `add n=${n}`);
        }
      });

      it(`rotary: Pythia-70m (hd 64, rotary_pct 0.25 → dims 16), full head, and T=1 (${isa})`, () => {
        const rng = new Rng(4);
        const nat = k();
        for (const [B, T, H, hd, dims] of S.rotary) {
          const x = normal(rng, B * T * H * hd);
          const want = x.slice();
          const got = x.slice();
          ref.rotary(want, B, T, H, hd, dims, 10000);
          nat.rotary(got, B, T, H, hd, dims, 10000);
          expectWithin(got, want, 1e-6, () => 4, 0, 'rotary');
          // features past dims are not touched
          for (let r = 0; r < B * T * H; r++) for (let e = dims; e < hd; e++) assert.equal(got[r * hd + e], x[r * hd + e]);
        }
      });

      it(`attention with pattern at GPT-2 head size and at ragged shapes, T past one query block (${isa})`, () => {
        const rng = new Rng(5);
        const nat = k();
        for (const [B, T, H, hd] of S.attention) {
          const { q, k: kk, v } = attentionInputs(rng, B, T, H, hd);
          const want = new Float32Array(q.length), got = new Float32Array(q.length).fill(NaN);
          const pw = new Float32Array(B * H * T * T), pg = new Float32Array(B * H * T * T).fill(NaN);
          ref.attention(q, kk, v, B, T, H, hd, want, pw);
          nat.attention(q, kk, v, B, T, H, hd, got, pg);
          expectWithin(got, want, 2e-6, () => 1, 0, `attention ${B}×${T}×${H}×${hd}`);
          expectWithin(pg, pw, 2e-6, (i) => pw[i] + 1e-3, 0, 'pattern');
          // masked entries are exactly zero
          for (let b = 0; b < B * H; b++) for (let tt = 0; tt < T; tt++) for (let s = tt + 1; s < T; s++) assert.equal(pg[(b * T + tt) * T + s], 0);
          const noPattern = new Float32Array(q.length);
          nat.attention(q, kk, v, B, T, H, hd, noPattern, null);
          assert.ok(sameBits(noPattern, got), 'the same output without the pattern');
        }
      });

      it(`attention at T=${S.longAttention.T} keeps the reference's numbers (one head, hd 64, sampled rows) (${isa})`, () => {
        const rng = new Rng(6);
        const nat = k();
        const [B, T, H, hd] = [1, S.longAttention.T, 1, 64];
        const { q, k: kk, v } = attentionInputs(rng, B, T, H, hd);
        const got = new Float32Array(q.length);
        nat.attention(q, kk, v, B, T, H, hd, got, null);
        // the reference on the prefix 0..t gives query t's row (causality): check a few rows
        for (const tt of S.longAttention.rows) {
          const n = tt + 1;
          const want = new Float32Array(n * hd);
          ref.attention(q.subarray(0, n * hd), kk.subarray(0, n * hd), v.subarray(0, n * hd), 1, n, 1, hd, want);
          expectWithin(got.subarray(tt * hd, n * hd), want.subarray(tt * hd), 2e-6, () => 1, 0, `attention row ${tt}`);
        }
      });

      it(`crossEntropy over a wide row and tiny V (${isa})`, () => {
        const rng = new Rng(7);
        const nat = k();
        for (const [n, V] of S.crossEntropy) {
          const logits = normal(rng, n * V, 4);
          const targets = Int32Array.from({ length: n }, (_, i) => (i * 7919) % V);
          const want = new Float32Array(n), got = new Float32Array(n);
          ref.crossEntropy(logits, n, V, targets, want);
          nat.crossEntropy(logits, n, V, targets, got);
          expectWithin(got, want, 1e-6, (i) => Math.abs(want[i]) + 1, 0, `crossEntropy ${n}×${V}`);
        }
      });

      it(`klDivergence matches float64 for near and far distributions, per row and broadcast (${isa})`, () => {
        const rng = new Rng(11);
        const nat = k();
        for (const [n, V, spread] of S.klDivergence) {
          // logits of size ~8 (like an LM's) and q = p + spread·noise: KL from ~1e-7 to ~1
          const p = normal(rng, n * V, 8);
          const q = Float32Array.from(p, (v) => v + spread * (rng.next() - 0.5));
          for (const broadcast of [false, true]) {
            const want = new Float32Array(n), got = new Float32Array(n);
            ref.klDivergence(p, q, n, V, broadcast, want);
            nat.klDivergence(p, q, n, V, broadcast, got);
            expectWithin(got, want, 1e-5, (i) => want[i], 2e-6, `klDivergence ${n}×${V} spread ${spread} broadcast ${broadcast}`);
            // a distribution against itself: exactly nothing to pay
            if (!broadcast) {
              nat.klDivergence(p, p, n, V, false, got);
              for (let i = 0; i < n; i++) assert.ok(Math.abs(got[i]) < 1e-6, 'KL of a distribution against itself');
            }
          }
        }
      });
    }

    it('linear in bf16 on every bf16 unit of every instruction set (emulated where there is none) agrees with the reference bf16 linear', () => {
      const refBf16 = m.createReferenceLmKernels({ precision: 'bf16' });
      const rng = new Rng(12);
      const cases = [];
      for (const [n, K, mm] of S.linear) for (const layout of ['in_out', 'out_in']) cases.push(bf16Case(refBf16, rng, n, K, mm, layout));
      for (const [n, K, mm, layout] of S.gpt2Linear.slice(0, 2)) cases.push(bf16Case(refBf16, rng, n, K, mm, layout));
      let ran = 0;
      for (const isa of isas) {
        for (const unit of ['amx', 'avx512bf16', 'bfmmla', 'emulated']) {
          let nat;
          try {
            nat = nativeLmKernelsFor(isa, { precision: 'bf16', bf16Unit: unit });
          } catch (e) {
            if (/not available/.test(String(e))) continue; // a unit this CPU or table lacks
            throw e;
          }
          for (const c of cases) checkLinearBf16(nat, c);
          ran++;
        }
      }
      assert.ok(ran >= isas.length, 'every instruction set runs bf16 at least emulated');
    });

    it('linear at GPT-2-small shapes: QKV, MLP in/out (K 3072), and the unembedding (out_in)', () => {
      const rng = new Rng(8);
      const nat = createNativeLmKernels();
      for (const [n, K, mm, layout, bias] of S.gpt2Linear) checkLinear(nat, rng, n, K, mm, layout, bias);
    });

    it('linear at Pythia-70m shapes (d 512, MLP 2048, nn.Linear layout)', () => {
      const rng = new Rng(9);
      const nat = createNativeLmKernels();
      for (const [n, K, mm, layout] of S.pythiaLinear) checkLinear(nat, rng, n, K, mm, layout);
    });

    it('rejects short arrays, aliasing linear outputs and targets outside the vocabulary', () => {
      const nat = createNativeLmKernels();
      const x = new Float32Array(6);
      assert.throws(() => nat.linear(x, 2, 3, new Float32Array(5), 2, 'in_out', null, new Float32Array(4)), /W holds 5 values, need 6/);
      assert.throws(() => nat.linear(x, 2, 3, new Float32Array(6), 2, 'in_out', null, x), /alias/);
      assert.throws(() => nat.crossEntropy(new Float32Array(6), 2, 3, new Int32Array([0, 3]), new Float32Array(2)), /target/);
      assert.throws(() => nat.rotary(new Float32Array(64), 1, 1, 1, 64, 65, 10000), /dims/);
      assert.throws(() => nat.attention(x, x, x, 1, 2, 1, 4, new Float32Array(8), null), /q holds 6 values/);
    });
  });

  describe('native LM ops are deterministic', () => {
    /** Every op once on fixed inputs. */
    function everyOp(nat) {
      const rng = new Rng(10);
      const { B, T, H, hd, d, V } = S.repeat;
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
      const logits = new Float32Array(n * V);
      nat.linear(ln, n, d, normal(rng, V * d, 0.1), V, 'out_in', null, logits);
      const loss = new Float32Array(n);
      nat.crossEntropy(logits, n, V, Int32Array.from({ length: n }, (_, i) => (i * 37) % V), loss);
      return [qkv, q, out, pat, ln, logits, loss];
    }

    it('gives bit-identical results run to run, and from a second instance', () => {
      const nat = createNativeLmKernels();
      const a = everyOp(nat), b = everyOp(nat), c = everyOp(createNativeLmKernels());
      for (let i = 0; i < a.length; i++) {
        assert.ok(sameBits(a[i], b[i]), `result ${i}`);
        assert.ok(sameBits(a[i], c[i]), `result ${i}, second instance`);
      }
    });
  });
}

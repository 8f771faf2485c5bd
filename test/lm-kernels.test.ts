import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import type { LmKernels } from '../src/kernels/lm-types.js';
import { createReferenceLmKernels } from '../src/kernels/lm-reference.js';
import { createNativeLmKernels, nativeLmKernelsFor } from '../src/kernels/lm-native.js';
import { nativeAddonPath, nativeAvailable, nativeInfo, nativeLoadError } from '../src/kernels/native.js';
import { lmKernelFactory } from '../src/kernels/index.js';
import { Rng } from '../src/util/rng.js';

// The host LM's native ops (issue 8) against the float64 reference: every op at small shapes, at
// GPT-2-small and Pythia-70m shapes and at the edges; bit-identical run to run and for any thread
// count. Tolerances are relative to the size of the terms summed (float32 accumulation of K terms
// against float64), i.e. the float32 precision of the result.

const available = nativeAvailable();
const isas = available ? nativeInfo()!.isas : [];
// Where the native build is required (CI), a missing addon fails here instead of skipping below.
const required = process.env.SAE_REQUIRE_NATIVE === '1';
const skip = !available && !required;
if (skip) console.warn(`native LM kernel tests skipped: ${nativeLoadError()}`);

describe('the native LM kernels', () => {
  it.runIf(required)('load wherever SAE_REQUIRE_NATIVE=1 demands it', () => {
    expect(nativeLoadError()).toBeNull();
  });
});

// ------------------------------------------------------------------------------------ helpers

const ref = createReferenceLmKernels();

function normal(rng: Rng, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = scale * rng.normal();
  return a;
}

/** |got − want| ≤ tol·scale[i] + atol everywhere; reports the worst index on failure. */
function expectClose(got: Float32Array, want: Float32Array, tol: number, scale: (i: number) => number = () => 1, atol = 0): void {
  expect(got.length).toBe(want.length);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < got.length; i++) {
    const excess = Math.abs(got[i] - want[i]) - (tol * scale(i) + atol);
    if (!(excess <= worstExcess) || Number.isNaN(got[i])) {
      worst = i;
      worstExcess = Number.isNaN(got[i]) ? Infinity : excess;
    }
  }
  if (worst >= 0) expect.fail(`element ${worst}: got ${got[worst]}, want ${want[worst]} (tolerance ${tol}·${scale(worst)} + ${atol})`);
}

/** Linear's outputs vs the reference, within float32 rounding of the K-term sums Σ|x||w| + |bias|. */
function checkLinear(k: LmKernels, rng: Rng, n: number, K: number, m: number, layout: 'in_out' | 'out_in', withBias = true): void {
  const x = normal(rng, n * K);
  const W = normal(rng, K * m, 1 / Math.sqrt(K));
  const bias = withBias ? normal(rng, m, 0.1) : null;
  const want = new Float32Array(n * m);
  const got = new Float32Array(n * m).fill(NaN);
  ref.linear(x, n, K, W, m, layout, bias, want);
  k.linear(x, n, K, W, m, layout, bias, got);
  // the rounding of a K-term sum is bounded relative to Σ_k |x_ik|·|w_kj| ≤ ‖x_i‖·‖w_j‖ (Cauchy–Schwarz)
  const xn = new Float64Array(n), wn = new Float64Array(m);
  for (let i = 0; i < n; i++) for (let p = 0; p < K; p++) xn[i] += x[i * K + p] ** 2;
  for (let p = 0; p < K; p++) for (let j = 0; j < m; j++) wn[j] += W[layout === 'in_out' ? p * m + j : j * K + p] ** 2;
  expectClose(got, want, 1e-6, (i) => Math.sqrt(xn[Math.floor(i / m)] * wn[i % m]) + (bias ? Math.abs(bias[i % m]) : 0));
}

function attentionInputs(rng: Rng, B: number, T: number, H: number, hd: number) {
  const size = B * T * H * hd;
  return { q: normal(rng, size), k: normal(rng, size), v: normal(rng, size) };
}

function hashOf(...arrays: Float32Array[]): string {
  let h = 0x811c9dc5;
  for (const a of arrays) {
    const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    for (let i = 0; i < u.length; i++) h = Math.imul(h ^ u[i], 0x01000193) >>> 0;
  }
  return h.toString(16);
}

// ---------------------------------------------------------------------------------- each op

describe.skipIf(skip)('native LM ops match the reference', () => {
  for (const isa of isas) {
    const k = () => nativeLmKernelsFor(isa);

    it(`linear, both layouts, with and without bias, at small and ragged shapes (${isa})`, () => {
      const rng = new Rng(1);
      const nat = k();
      for (const [n, K, m] of [[1, 1, 1], [3, 5, 7], [7, 33, 29], [13, 17, 40], [31, 300, 95], [6, 256, 16], [50, 513, 33]]) {
        for (const layout of ['in_out', 'out_in'] as const) {
          checkLinear(nat, rng, n, K, m, layout, true);
          checkLinear(nat, rng, n, K, m, layout, false);
        }
      }
    });

    it(`layerNorm over rows of d (768 and ragged), in place too (${isa})`, () => {
      const rng = new Rng(2);
      const nat = k();
      for (const [n, d] of [[1, 1], [5, 7], [64, 768], [9, 100]]) {
        const x = normal(rng, n * d, 3);
        for (let i = 0; i < x.length; i++) x[i] += 2;  // a non-zero mean
        const w = normal(rng, d), b = normal(rng, d);
        const want = new Float32Array(n * d);
        const got = new Float32Array(n * d);
        ref.layerNorm(x, n, d, w, b, 1e-5, want);
        nat.layerNorm(x, n, d, w, b, 1e-5, got);
        expectClose(got, want, 1e-6, (i) => Math.abs(want[i]) + Math.abs(w[i % d]) + Math.abs(b[i % d]));
        const inPlace = x.slice();
        nat.layerNorm(inPlace, n, d, w, b, 1e-5, inPlace);
        expect(Array.from(inPlace)).toEqual(Array.from(got));
      }
    });

    it(`gelu tanh matches within 1e-5 relative and erf within float32 precision over [−6, 6] (${isa})`, () => {
      const nat = k();
      const n = 120_003;
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = -6 + (12 * i) / (n - 1);
      for (const kind of ['tanh', 'erf'] as const) {
        const want = x.slice();
        const got = x.slice();
        ref.gelu(want, n, kind);
        nat.gelu(got, n, kind);
        // relative to the value itself: both tails included (erf: a few ulp; SSE2 has no FMA)
        const tol = kind === 'tanh' ? 1e-5 : isa === 'sse2' ? 4e-6 : 6e-7;
        expectClose(got, want, tol, (i) => Math.abs(want[i]), 1e-30);
      }
    });

    it(`gelu leaves values past n untouched and handles lengths that are not a multiple of the vector width (${isa})`, () => {
      const nat = k();
      for (const n of [0, 1, 3, 17]) {
        const x = Float32Array.from({ length: n + 2 }, (_, i) => i - 2);
        const want = x.slice();
        ref.gelu(want, n, 'erf');
        nat.gelu(x, n, 'erf');
        expectClose(x, want, 1e-6, (i) => Math.abs(want[i]));
        expect(x[n]).toBe(n - 2);
        expect(x[n + 1]).toBe(n - 1);
      }
    });

    it(`add adds the first n values exactly (${isa})`, () => {
      const rng = new Rng(3);
      const nat = k();
      for (const n of [0, 5, 100_001]) {
        const a = normal(rng, n + 1), b = normal(rng, n + 1);
        const want = a.slice();
        ref.add(want, b, n);
        nat.add(a, b, n);
        expect(Array.from(a)).toEqual(Array.from(want));
      }
    });

    it(`rotary: Pythia-70m (hd 64, rotary_pct 0.25 → dims 16), full head, and T=1 (${isa})`, () => {
      const rng = new Rng(4);
      const nat = k();
      for (const [B, T, H, hd, dims] of [[2, 64, 8, 64, 16], [1, 5, 2, 8, 8], [3, 1, 4, 64, 16], [2, 33, 3, 20, 6]]) {
        const x = normal(rng, B * T * H * hd);
        const want = x.slice();
        const got = x.slice();
        ref.rotary(want, B, T, H, hd, dims, 10000);
        nat.rotary(got, B, T, H, hd, dims, 10000);
        expectClose(got, want, 1e-6, () => 4);
        // features past dims are not touched
        for (let r = 0; r < B * T * H; r++) for (let e = dims; e < hd; e++) expect(got[r * hd + e]).toBe(x[r * hd + e]);
      }
    });

    it(`attention with pattern at GPT-2 shape (12 heads, hd 64, T 64) and at ragged shapes (${isa})`, () => {
      const rng = new Rng(5);
      const nat = k();
      for (const [B, T, H, hd] of [[2, 64, 12, 64], [1, 1, 2, 8], [1, 150, 3, 20], [3, 7, 1, 5], [1, 70, 2, 64]]) {
        const { q, k: kk, v } = attentionInputs(rng, B, T, H, hd);
        const want = new Float32Array(q.length), got = new Float32Array(q.length).fill(NaN);
        const pw = new Float32Array(B * H * T * T), pg = new Float32Array(B * H * T * T).fill(NaN);
        ref.attention(q, kk, v, B, T, H, hd, want, pw);
        nat.attention(q, kk, v, B, T, H, hd, got, pg);
        expectClose(got, want, 2e-6, () => 1);
        expectClose(pg, pw, 2e-6, (i) => pw[i] + 1e-3);
        // masked entries are exactly zero
        for (let b = 0; b < B * H; b++) for (let t = 0; t < T; t++) for (let s = t + 1; s < T; s++) expect(pg[(b * T + t) * T + s]).toBe(0);
        const noPattern = new Float32Array(q.length);
        nat.attention(q, kk, v, B, T, H, hd, noPattern, null);
        expect(Array.from(noPattern)).toEqual(Array.from(got));
      }
    });

    it(`attention at T=2048 keeps the reference's numbers (one head, hd 64, sampled rows) (${isa})`, () => {
      const rng = new Rng(6);
      const nat = k();
      const [B, T, H, hd] = [1, 2048, 1, 64];
      const { q, k: kk, v } = attentionInputs(rng, B, T, H, hd);
      const got = new Float32Array(q.length);
      nat.attention(q, kk, v, B, T, H, hd, got, null);
      // the reference on the prefix 0..t gives query t's row (causality): check a few rows
      for (const t of [0, 1, 63, 64, 1000, 2047]) {
        const n = t + 1;
        const want = new Float32Array(n * hd);
        ref.attention(q.subarray(0, n * hd), kk.subarray(0, n * hd), v.subarray(0, n * hd), 1, n, 1, hd, want);
        expectClose(got.subarray(t * hd, n * hd), want.subarray(t * hd), 2e-6, () => 1);
      }
    });

    it(`crossEntropy over rows of V = 50257 and tiny V (${isa})`, () => {
      const rng = new Rng(7);
      const nat = k();
      for (const [n, V] of [[4, 50257], [3, 1], [5, 3], [2, 17]]) {
        const logits = normal(rng, n * V, 4);
        const targets = Int32Array.from({ length: n }, (_, i) => (i * 7919) % V);
        const want = new Float32Array(n), got = new Float32Array(n);
        ref.crossEntropy(logits, n, V, targets, want);
        nat.crossEntropy(logits, n, V, targets, got);
        expectClose(got, want, 1e-6, (i) => Math.abs(want[i]) + 1, 0);
      }
    });

    it(`klDivergence matches float64 for near and far distributions, per row and broadcast (${isa})`, () => {
      const rng = new Rng(11);
      const nat = k();
      for (const [n, V, spread] of [[3, 50257, 1e-3], [3, 50257, 1], [4, 7, 0.5], [2, 1, 1], [5, 33, 2]] as const) {
        // logits of size ~8 (like an LM's) and q = p + spread·noise: KL from ~1e-7 to ~1
        const p = normal(rng, n * V, 8);
        const q = Float32Array.from(p, (v) => v + spread * (rng.next() - 0.5));
        for (const broadcast of [false, true]) {
          const want = new Float32Array(n), got = new Float32Array(n);
          ref.klDivergence(p, q, n, V, broadcast, want);
          nat.klDivergence(p, q, n, V, broadcast, got);
          for (let i = 0; i < n; i++) expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(2e-6 + 1e-5 * want[i]);
          // a distribution against itself: exactly nothing to pay
          if (!broadcast) {
            nat.klDivergence(p, p, n, V, false, got);
            for (let i = 0; i < n; i++) expect(Math.abs(got[i])).toBeLessThan(1e-6);
          }
        }
      }
    });
  }

  it('linear at GPT-2-small shapes: QKV, MLP in/out (K 3072), and the unembedding (out_in, m 50257)', () => {
    const rng = new Rng(8);
    const nat = createNativeLmKernels();
    checkLinear(nat, rng, 64, 768, 2304, 'in_out');
    checkLinear(nat, rng, 64, 768, 3072, 'in_out');
    checkLinear(nat, rng, 64, 3072, 768, 'in_out');
    checkLinear(nat, rng, 3, 768, 50257, 'out_in', false);
  });

  it('linear at Pythia-70m shapes (d 512, MLP 2048, nn.Linear layout)', () => {
    const rng = new Rng(9);
    const nat = createNativeLmKernels();
    checkLinear(nat, rng, 40, 512, 1536, 'out_in');
    checkLinear(nat, rng, 40, 2048, 512, 'out_in');
  });

  it('rejects short arrays, aliasing linear outputs and targets outside the vocabulary', () => {
    const nat = createNativeLmKernels();
    const x = new Float32Array(6);
    expect(() => nat.linear(x, 2, 3, new Float32Array(5), 2, 'in_out', null, new Float32Array(4))).toThrow(/W holds 5 values, need 6/);
    expect(() => nat.linear(x, 2, 3, new Float32Array(6), 2, 'in_out', null, x)).toThrow(/alias/);
    expect(() => nat.crossEntropy(new Float32Array(6), 2, 3, new Int32Array([0, 3]), new Float32Array(2))).toThrow(/target/);
    expect(() => nat.rotary(new Float32Array(64), 1, 1, 1, 64, 65, 10000)).toThrow(/dims/);
    expect(() => nat.attention(x, x, x, 1, 2, 1, 4, new Float32Array(8), null)).toThrow(/q holds 6 values/);
  });
});

// ------------------------------------------------------------------------------- determinism

describe.skipIf(skip)('native LM ops are deterministic', () => {
  /** Every op once on fixed inputs, hashed (the same computation as the child processes below). */
  function everyOp(nat: LmKernels): string {
    const rng = new Rng(10);
    const [B, T, H, hd, d] = [2, 40, 4, 16, 64];
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
    const logits = new Float32Array(n * 1000);
    nat.linear(ln, n, d, normal(rng, 1000 * d, 0.1), 1000, 'out_in', null, logits);
    const loss = new Float32Array(n);
    nat.crossEntropy(logits, n, 1000, Int32Array.from({ length: n }, (_, i) => (i * 37) % 1000), loss);
    return hashOf(qkv, q, out, pat, ln, logits, loss);
  }

  it('gives bit-identical results run to run', () => {
    const nat = createNativeLmKernels();
    expect(everyOp(nat)).toBe(everyOp(nat));
    expect(everyOp(createNativeLmKernels())).toBe(everyOp(nat));
  });

  it('gives the same results with one thread as with the default pool (and with three), at GPT-2 shapes', () => {
    // Work is split by whole rows, outputs or attention units, so the thread count must not change
    // a single bit. The pool size is fixed per process: hash the same computation in child
    // processes that load the addon directly.
    const script = `
      import { createRequire } from 'node:module';
      import { createHash } from 'node:crypto';
      const A = createRequire(import.meta.url)(${JSON.stringify(nativeAddonPath())});
      let s = 12345;
      const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296) - 0.5;
      const f = (n) => { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = rnd(); return a; };
      const h = A.lmCreate(null);
      const hash = createHash('sha256');
      const put = (t) => hash.update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength));
      const B = 2, T = 64, H = 12, hd = 64, d = 768, n = B * T;
      const x = f(n * d), Wqkv = f(d * 3 * d), bqkv = f(3 * d), qkv = new Float32Array(n * 3 * d);
      A.lmLinear(h, x, n, d, Wqkv, 3 * d, true, bqkv, qkv); put(qkv);
      const q = qkv.slice(0, n * d), k = qkv.slice(n * d, 2 * n * d), v = qkv.slice(2 * n * d);
      A.lmRotary(h, q, B, T, H, hd, 16, 10000); put(q);
      const out = new Float32Array(n * d), pat = new Float32Array(B * H * T * T);
      A.lmAttention(h, q, k, v, B, T, H, hd, out, pat); put(out); put(pat);
      const up = new Float32Array(n * 3072);
      A.lmLinear(h, out, n, d, f(d * 3072), 3072, true, f(3072), up); put(up);
      A.lmGelu(h, up, up.length, false); put(up);
      const down = new Float32Array(n * d);
      A.lmLinear(h, up, n, 3072, f(3072 * d), d, false, null, down); put(down);
      A.lmAdd(h, down, x, down.length); put(down);
      const ln = new Float32Array(n * d);
      A.lmLayerNorm(h, down, n, d, f(d), f(d), 1e-5, ln); put(ln);
      const V = 50257, rows = 3, logits = new Float32Array(rows * V);
      A.lmLinear(h, ln, rows, d, f(V * d), V, false, null, logits); put(logits);
      const loss = new Float32Array(rows);
      A.lmCrossEntropy(h, logits, rows, V, new Int32Array([1, 50256, 777]), loss); put(loss);
      console.log(hash.digest('hex'));
    `;
    const run = (threads: string | undefined) => {
      const env = { ...process.env };
      if (threads) env.SAE_THREADS = threads;
      else delete env.SAE_THREADS;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.trim();
    };
    const base = run(undefined);
    expect(base).toMatch(/^[0-9a-f]{64}$/);
    expect(run('1')).toBe(base);
    expect(run('3')).toBe(base);
  });
});

// ---------------------------------------------------------------------------------- factory

describe('lmKernelFactory', () => {
  it('"reference" gives the reference LM kernels', () => {
    expect(lmKernelFactory('reference').name).toBe('reference');
  });

  it.skipIf(skip)('"native" and "auto" give the native LM kernels', () => {
    expect(lmKernelFactory('native').name).toBe('native');
    expect(lmKernelFactory('auto').name).toBe('native');
  });

  it('rejects unknown names like kernelFactory does', () => {
    expect(() => lmKernelFactory('gpu' as never)).toThrow(/unknown kernels "gpu" \(auto, reference, native or cuda\)/);
  });
});

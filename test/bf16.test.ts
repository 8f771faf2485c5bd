import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  Bf16Scratch,
  PRECISIONS,
  bf16FromF32Bits,
  bf16Gemm,
  fromBf16Bits,
  isPrecision,
  packBf16,
  parsePrecision,
  roundBf16,
  roundBf16Array,
  toBf16Bits,
  unpackBf16,
} from '../src/kernels/bf16.js';
import { createReferenceKernels } from '../src/kernels/reference.js';
import { createReferenceLmKernels } from '../src/kernels/lm-reference.js';
import { kernelFactory, lmKernelFactory } from '../src/kernels/index.js';
import { allocCodes } from '../src/kernels/selection.js';
import type { EncodeOutput, SaeParams, SparseCodes } from '../src/kernels/types.js';
import { HookedTransformer } from '../src/lm/model.js';
import { readSafetensors } from '../src/util/safetensors.js';
import { UserError } from '../src/util/errors.js';
import { Rng } from '../src/util/rng.js';

// An independent view of float32 bits: DataView, not the module's typed-array scratch.
const dv = new DataView(new ArrayBuffer(4));
function f32FromBits(bits: number): number {
  dv.setUint32(0, bits >>> 0);
  return dv.getFloat32(0);
}
function bitsOfF32(x: number): number {
  dv.setFloat32(0, x);
  return dv.getUint32(0);
}

/**
 * Second formulation, in float64 arithmetic on values: the bf16 grid near |x| has spacing
 * 2^(e−7) for e = max(⌊log2|x|⌋, −126) (8 significant bits; the subnormal grid 2^-133 below
 * 2^-126); x / spacing is exact, rounded half to even, scaled back; 2^128 and beyond is Inf.
 */
function oracleRound(x: number): number {
  if (Number.isNaN(x) || !Number.isFinite(x) || x === 0) return x;
  const ax = Math.abs(x);
  let e = Math.floor(Math.log2(ax));
  while (2 ** e > ax) e--;
  while (2 ** (e + 1) <= ax) e++;
  const ulp = 2 ** (Math.max(e, -126) - 7);
  const q = ax / ulp;
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r += 1;
  const v = r * ulp >= 2 ** 128 ? Infinity : r * ulp;
  return x < 0 ? -v : v;
}

/** bf16FromF32Bits(bits) agrees with the oracle (NaN: quiet NaN of the same sign). */
function agrees(bits: number): boolean {
  const h = bf16FromF32Bits(bits);
  if (h < 0 || h > 0xffff || !Number.isInteger(h)) return false;
  const x = f32FromBits(bits);
  if (Number.isNaN(x)) return (h & 0x7f80) === 0x7f80 && (h & 0x0040) !== 0 && h >>> 15 === bits >>> 31;
  return Object.is(f32FromBits(h << 16), oracleRound(x));
}

describe('bf16 rounding', () => {
  // [float32 bits, bf16 bits], worked out by hand
  const table: Array<[number, number, string]> = [
    [0x3f800000, 0x3f80, '1.0 exact'],
    [0x3f808000, 0x3f80, 'tie, even kept half → down'],
    [0x3f818000, 0x3f82, 'tie, odd kept half → up'],
    [0x3f808001, 0x3f81, 'halfway + 1 ulp → up'],
    [0x3f807fff, 0x3f80, 'halfway − 1 ulp → down'],
    [0x3f81ffff, 0x3f82, 'just below the next even'],
    [0xbf808000, 0xbf80, 'negative tie, even'],
    [0xbf818000, 0xbf82, 'negative tie, odd'],
    [0x3fff8000, 0x4000, 'tie carries into the exponent (→ 2.0)'],
    [0x7f7fffff, 0x7f80, 'max finite float32 → +Inf'],
    [0xff7fffff, 0xff80, '−max finite float32 → −Inf'],
    [0x7f7f7fff, 0x7f7f, 'stays the max finite bf16'],
    [0x7f7f8000, 0x7f80, 'tie above the max finite bf16 (odd) → +Inf'],
    [0x7f7e8000, 0x7f7e, 'tie near the top, even → stays'],
    [0x7f800000, 0x7f80, '+Inf'],
    [0xff800000, 0xff80, '−Inf'],
    [0x00000000, 0x0000, '+0'],
    [0x80000000, 0x8000, '−0'],
    [0x80000001, 0x8000, 'tiny negative subnormal → −0'],
    [0x00000001, 0x0000, 'smallest subnormal → +0'],
    [0x00008000, 0x0000, 'subnormal tie, even → down'],
    [0x00018000, 0x0002, 'subnormal tie, odd → up'],
    [0x00008001, 0x0001, 'subnormal halfway + 1 ulp'],
    [0x007f7fff, 0x007f, 'subnormal down'],
    [0x007fffff, 0x0080, 'largest subnormal → smallest normal'],
    [0x7fc00000, 0x7fc0, 'quiet NaN'],
    [0x7f800001, 0x7fc0, 'signalling NaN whose carry would make Inf → quiet NaN'],
    [0x7fbfffff, 0x7fff, 'signalling NaN keeps its top payload, made quiet'],
    [0x7fffffff, 0x7fff, 'NaN, all ones'],
    [0xff800001, 0xffc0, 'negative signalling NaN'],
    [0xffc00001, 0xffc0, 'negative quiet NaN'],
  ];
  for (const [bits, want, what] of table) {
    it(`0x${bits.toString(16).padStart(8, '0')} → 0x${want.toString(16).padStart(4, '0')} (${what})`, () => {
      expect(bf16FromF32Bits(bits)).toBe(want);
      expect(agrees(bits)).toBe(true);
      const x = f32FromBits(bits);
      if (!Number.isNaN(x)) {
        expect(toBf16Bits(x)).toBe(want);
        expect(Object.is(roundBf16(x), f32FromBits(want << 16))).toBe(true);
      } else {
        expect(Number.isNaN(roundBf16(x))).toBe(true);
      }
    });
  }

  it('agrees with the float64 formulation on a million random float32 bit patterns', () => {
    const rng = new Rng(18);
    const bad: string[] = [];
    for (let t = 0; t < 1_000_000; t++) {
      const bits = rng.nextU32();
      if (!agrees(bits) && bad.length < 5) bad.push(bits.toString(16));
    }
    expect(bad).toEqual([]);
  });

  it('agrees on every kept half with the dropped half at 0, 0x7fff, 0x8000, 0x8001 and 0xffff', () => {
    const bad: string[] = [];
    for (let hi = 0; hi < 0x10000; hi++) {
      for (const lo of [0, 0x7fff, 0x8000, 0x8001, 0xffff]) {
        const bits = ((hi << 16) | lo) >>> 0;
        if (!agrees(bits) && bad.length < 5) bad.push(bits.toString(16));
      }
    }
    expect(bad).toEqual([]);
  });

  it('rounds a float64 through its float32 value', () => {
    // 1 + 2^-8 + 2^-40 is above the bf16 tie in float64 but is the tie itself in float32 → even (1.0)
    expect(roundBf16(1 + 2 ** -8 + 2 ** -40)).toBe(1);
    expect(roundBf16(1 + 2 ** -8 + 2 ** -20)).toBe(1 + 2 ** -7);
  });

  it('rounds arrays into a reused buffer, and packs and unpacks bit patterns', () => {
    const rng = new Rng(3);
    const src = Float32Array.from({ length: 1000 }, () => rng.normal() * 2 ** (rng.int(60) - 30));
    src[0] = NaN;
    src[1] = -0;
    src[2] = Infinity;
    const dst = new Float32Array(1000);
    expect(roundBf16Array(src, dst)).toBe(dst);
    for (let i = 0; i < src.length; i++) expect(Object.is(dst[i], oracleRound(src[i])), `${i}`).toBe(true);
    const packed = packBf16(src, new Uint16Array(1000));
    for (let i = 0; i < src.length; i++) expect(packed[i]).toBe(bf16FromF32Bits(bitsOfF32(src[i])));
    const back = unpackBf16(packed, new Float32Array(1000));
    for (let i = 0; i < src.length; i++) expect(Object.is(back[i], dst[i])).toBe(true);
    expect(fromBf16Bits(0x3f81)).toBe(1 + 2 ** -7);
    // in place, and bf16 values are fixed points
    const copy = dst.slice();
    roundBf16Array(copy, copy);
    expect(copy).toEqual(dst);
    expect(() => roundBf16Array(src, new Float32Array(10))).toThrow(RangeError);
  });

  it('names the precisions', () => {
    expect(PRECISIONS).toEqual(['fp32', 'bf16']);
    expect(isPrecision('bf16')).toBe(true);
    expect(isPrecision('fp16')).toBe(false);
    expect(parsePrecision('fp32')).toBe('fp32');
    expect(() => parsePrecision('tf32')).toThrow(UserError);
  });
});

/** Σ_p bf16(a)·bf16(b) in float64 (exact up to float64's rounding), and Σ|products|. */
function exactGemm(A: Float32Array, B: Float32Array, M: number, N: number, K: number, nk: boolean, bias: Float32Array | null) {
  const exact = new Float64Array(M * N);
  const mag = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = bias ? bias[j] : 0;
      let m = bias ? Math.abs(bias[j]) : 0;
      for (let p = 0; p < K; p++) {
        const prod = roundBf16(A[i * K + p]) * roundBf16(nk ? B[j * K + p] : B[p * N + j]);
        s += prod;
        m += Math.abs(prod);
      }
      exact[i * N + j] = s;
      mag[i * N + j] = m;
    }
  }
  return { exact, mag };
}

describe('the reference bf16 GEMM', () => {
  it('equals the float64 sum of the rounded products within float32 accumulation error, both layouts bit-identical', () => {
    const rng = new Rng(7);
    const scratch = new Bf16Scratch();
    for (const [M, N, K] of [[1, 1, 1], [3, 5, 7], [8, 16, 64], [5, 9, 513]]) {
      const A = Float32Array.from({ length: M * K }, () => rng.normal());
      const Bnk = Float32Array.from({ length: N * K }, () => rng.normal());
      const Bkn = new Float32Array(K * N);
      for (let j = 0; j < N; j++) for (let p = 0; p < K; p++) Bkn[p * N + j] = Bnk[j * K + p];
      const bias = Float32Array.from({ length: N }, () => rng.normal());
      for (const b of [null, bias]) {
        const c1 = new Float32Array(M * N);
        const c2 = new Float32Array(M * N);
        bf16Gemm(A, Bnk, c1, M, N, K, 'nk', b, scratch);
        bf16Gemm(A, Bkn, c2, M, N, K, 'kn', b);
        expect(c2).toEqual(c1);
        const { exact, mag } = exactGemm(A, Bnk, M, N, K, true, b);
        for (let i = 0; i < M * N; i++) {
          expect(Math.abs(c1[i] - exact[i]), `${M}×${N}×${K} [${i}]`).toBeLessThanOrEqual((K + 1) * 2 ** -24 * mag[i]);
        }
      }
    }
  });

  it('rounds each accumulation step to float32, in the order p = 0..K−1', () => {
    // 2^24 + 1 is a float32 tie (→ 2^24, even): summed in float64 the result would be 2^24 + 2
    const A = new Float32Array([1, 1, 1]);
    const B = new Float32Array([2 ** 24, 1, 1]);
    const c = new Float64Array(1);
    bf16Gemm(A, B, c, 1, 1, 3, 'nk');
    expect(c[0]).toBe(2 ** 24);
    bf16Gemm(A, B, c, 1, 1, 3, 'kn');
    expect(c[0]).toBe(2 ** 24);
    // the other order gives the other answer: the order is part of the definition
    bf16Gemm(A, new Float32Array([1, 1, 2 ** 24]), c, 1, 1, 3, 'nk');
    expect(c[0]).toBe(2 ** 24 + 2);
  });

  it('rounds the operands, not the bias, and writes float32 values into a float64 C', () => {
    const A = new Float32Array([f32FromBits(0x3f808001)]); // → 1 + 2^-7
    const B = new Float32Array([1]);
    const bias = new Float32Array([2 ** -20]); // not a bf16 concern: added in float32
    const c = new Float64Array(1);
    bf16Gemm(A, B, c, 1, 1, 1, 'nk', bias);
    expect(c[0]).toBe(Math.fround(1 + 2 ** -7 + 2 ** -20));
  });

  it('reuses its scratch', () => {
    const s = new Bf16Scratch();
    const A = new Float32Array(12).fill(1);
    bf16Gemm(A, A, new Float32Array(9), 3, 3, 4, 'nk', null, s);
    const [a, b] = [s.a, s.b];
    bf16Gemm(A, A, new Float32Array(9), 3, 3, 4, 'kn', null, s);
    expect(s.a).toBe(a);
    expect(s.b).toBe(b);
  });
});

function entries(codes: SparseCodes): Map<number, number> {
  const m = new Map<number, number>();
  for (let b = 0; b < codes.B; b++) for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) m.set(b * 1e6 + codes.index[e], codes.value[e]);
  return m;
}

describe('the reference SAE kernels under bf16', () => {
  const d = 96;
  const F = 40;
  const B = 12;
  const rng = new Rng(11);
  const p: SaeParams = {
    d,
    F,
    WencT: Float32Array.from({ length: F * d }, () => rng.normal() / Math.sqrt(d)),
    bEnc: Float32Array.from({ length: F }, () => 0.1 * rng.normal()),
    Wdec: Float32Array.from({ length: F * d }, () => rng.normal()),
    bDec: Float32Array.from({ length: d }, () => 0.1 * rng.normal()),
  };
  const x = Float32Array.from({ length: B * d }, () => rng.normal());
  const out = (): EncodeOutput => ({ xc: new Float32Array(B * d), codes: allocCodes(B, B * F), aux: [] });

  it('computes the encoder affinities with bf16Gemm, and they differ from fp32 within the rule\'s bound', () => {
    const k16 = createReferenceKernels({ d, F, maxB: B }, { precision: 'bf16' });
    const k32 = createReferenceKernels({ d, F, maxB: B });
    expect([k16.name, k16.precision, k32.name, k32.precision]).toEqual(['reference-bf16', 'bf16', 'reference', 'fp32']);
    const o16 = out();
    const o32 = out();
    k16.encodeSelect(p, x, B, { kind: 'relu' }, [], o16);
    k32.encodeSelect(p, x, B, { kind: 'relu' }, [], o32);
    expect(o16.xc).toEqual(o32.xc); // x − b_dec stays float32
    const z = new Float32Array(B * F);
    bf16Gemm(o32.xc, p.WencT, z, B, F, d, 'nk', p.bEnc);
    const e16 = entries(o16.codes);
    const e32 = entries(o32.codes);
    let maxRel = 0;
    for (let b = 0; b < B; b++) {
      for (let j = 0; j < F; j++) {
        const key = b * 1e6 + j;
        if (z[b * F + j] > 0) expect(e16.get(key)).toBe(z[b * F + j]);
        else expect(e16.has(key)).toBe(false);
        let mag = 0;
        for (let i = 0; i < d; i++) mag += Math.abs(o32.xc[b * d + i] * p.WencT[j * d + i]);
        // each operand within 2^-8 relative → each product within 2^-7 + 2^-16; plus float32 sums
        const bound = (2 ** -7 + 2 ** -16 + (d + 2) * 2 ** -24) * mag * 1.01 + 2 ** -23 * Math.abs(p.bEnc[j]);
        const diff = Math.abs((e16.get(key) ?? 0) - (e32.get(key) ?? 0));
        if (e16.has(key) && e32.has(key)) maxRel = Math.max(maxRel, diff / mag);
        expect(diff, `(${b}, ${j})`).toBeLessThanOrEqual(bound);
      }
    }
    console.log(`SAE encoder bf16 vs fp32: max |Δz'| / Σ|x·w| = ${maxRel.toExponential(3)} (2^${Math.log2(maxRel).toFixed(2)})`);
    // the rounding is really there: typical relative errors are ~2^-9 of Σ|x·w|, far above float32's
    expect(maxRel).toBeGreaterThan(2 ** -14);
    expect(maxRel).toBeLessThan(2 ** -7);
  });

  it('is deterministic, and float64 gradient-check buffers hold float32 affinities', () => {
    const k16 = createReferenceKernels({ d, F, maxB: B }, { precision: 'bf16' });
    const a = out();
    const b = out();
    k16.encodeSelect(p, x, B, { kind: 'topk', k: 5 }, [], a);
    k16.encodeSelect(p, x, B, { kind: 'topk', k: 5 }, [], b);
    expect(b.codes.value).toEqual(a.codes.value);
    const p64: SaeParams = { d, F, WencT: Float64Array.from(p.WencT), bEnc: Float64Array.from(p.bEnc), Wdec: Float64Array.from(p.Wdec), bDec: Float64Array.from(p.bDec) };
    const o64: EncodeOutput = { xc: new Float64Array(B * d), codes: allocCodes(B, B * 5, Float64Array), aux: [] };
    createReferenceKernels({ d, F, maxB: B }, { precision: 'bf16' }).encodeSelect(p64, Float64Array.from(x), B, { kind: 'topk', k: 5 }, [], o64);
    for (let e = 0; e < o64.codes.nnz; e++) expect(Math.fround(o64.codes.value[e])).toBe(o64.codes.value[e]);
  });

  it('is reached through kernelFactory, and fp32 stays the very same factory', () => {
    expect(kernelFactory('reference')).toBe(createReferenceKernels);
    expect(kernelFactory('reference', 'fp32')).toBe(createReferenceKernels);
    expect(kernelFactory('reference', 'bf16')({ d, F, maxB: B }).precision).toBe('bf16');
    expect(lmKernelFactory('reference', 'bf16').name).toBe('reference-bf16');
    expect(lmKernelFactory('reference').precision).toBe('fp32');
    expect(() => kernelFactory('cuda', 'bf16')).toThrow(UserError);
    expect(() => lmKernelFactory('cuda', 'bf16')).toThrow(UserError);
    expect(kernelFactory('auto', 'bf16')({ d, F, maxB: B }).precision).toBe('bf16');
    expect(lmKernelFactory('auto', 'bf16').precision).toBe('bf16');
  });
});

const FIXTURES = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny');

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const family of ['gpt2', 'gpt-neox'] as const) {
  describe(`the reference LM under bf16 (${family} fixture)`, () => {
    let m32: HookedTransformer;
    let m16: HookedTransformer;
    let ref: Record<string, Float32Array>;
    let ids: Int32Array;
    const B = 2;
    const T = 16;

    beforeAll(async () => {
      const dir = path.join(FIXTURES, family);
      m32 = await HookedTransformer.load(dir, createReferenceLmKernels());
      m16 = await HookedTransformer.load(dir, createReferenceLmKernels({ precision: 'bf16' }));
      const f = await readSafetensors(path.join(dir, 'reference.safetensors'));
      ref = {};
      for (const [name, t] of Object.entries(f.tensors)) if (t.dtype === 'F32') ref[name] = t.data as Float32Array;
      ids = Int32Array.from(f.tensors.input_ids.data as BigInt64Array, (v) => Number(v));
    });

    it('gives logits and losses close to fp32, and the same bits every run', () => {
      const r32 = m32.run(ids, B, T, { logits: true, loss: true });
      const r16 = m16.run(ids, B, T, { logits: true, loss: true });
      const again = m16.run(ids, B, T, { logits: true, loss: true });
      expect(again.logits).toEqual(r16.logits);
      expect(again.lossPerToken).toEqual(r16.lossPerToken);
      expect(maxAbsDiff(r32.logits!, ref.logits)).toBeLessThan(1e-4); // fp32 unchanged
      const dLogits = maxAbsDiff(r16.logits!, r32.logits!);
      const dLossTok = maxAbsDiff(r16.lossPerToken!, r32.lossPerToken!);
      const dLoss = Math.abs(r16.loss! - r32.loss!);
      let scale = 0;
      for (const v of r32.logits!) scale = Math.max(scale, Math.abs(v));
      console.log(`${family} bf16 vs fp32: max |Δlogit| ${dLogits.toExponential(3)} (max |logit| ${scale.toFixed(3)}), max |Δ per-token CE| ${dLossTok.toExponential(3)}, |Δ mean CE| ${dLoss.toExponential(3)} (fp32 CE ${r32.loss!.toFixed(5)})`);
      expect(dLogits).toBeGreaterThan(0); // bf16 really ran
      expect(dLogits).toBeLessThan(LOGIT_TOL[family]);
      expect(dLossTok).toBeLessThan(LOSS_TOL[family]);
      expect(dLoss).toBeLessThan(MEAN_LOSS_TOL[family]);
    });
  });
}

// Measured (B = 2, T = 16; docs/precision.md): max |Δlogit| 0.0717 (gpt2) and 0.0677 (gpt-neox),
// max |Δ per-token CE| 0.0467 and 0.0379, |Δ mean CE| 0.0020 and 0.00048; about 3–5× headroom.
const LOGIT_TOL: Record<string, number> = { gpt2: 0.25, 'gpt-neox': 0.25 };
const LOSS_TOL: Record<string, number> = { gpt2: 0.15, 'gpt-neox': 0.15 };
const MEAN_LOSS_TOL: Record<string, number> = { gpt2: 0.01, 'gpt-neox': 0.005 };

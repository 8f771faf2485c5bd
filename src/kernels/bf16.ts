/**
 * bfloat16 (issue 18): the precision rule's arithmetic, defined once in plain TypeScript.
 *
 * bf16 is float32's upper 16 bits: sign, the same 8-bit exponent, 7 stored mantissa bits (8
 * significant bits, unit roundoff 2^-8). Under `precision: 'bf16'` the operands of the big GEMMs
 * are rounded to bf16 with round-to-nearest-even and their products are summed in float32; every
 * other value stays float32 (docs/precision.md states the rule). This file holds the rounding, the
 * bit packing, and the reference GEMM that the reference kernels run and the native kernels are
 * checked against.
 */
import type { FloatArray } from '../util/arrays.js';
import { UserError } from '../util/errors.js';

export type Precision = 'fp32' | 'bf16';

export const PRECISIONS: readonly Precision[] = ['fp32', 'bf16'];

export function isPrecision(v: unknown): v is Precision {
  return v === 'fp32' || v === 'bf16';
}

/** A precision from a flag or a file; one-line UserError otherwise. */
export function parsePrecision(v: unknown): Precision {
  if (isPrecision(v)) return v;
  throw new UserError(`unknown precision "${String(v)}" (${PRECISIONS.join(' or ')})`);
}

/**
 * The bf16 bit pattern (0..0xffff) of the float32 whose bit pattern is `bits` (0..2^32−1), rounded
 * to nearest, ties to even on the 16 dropped bits. The one rule covers every class: adding
 * 0x7fff + (lsb of the kept half) carries into the kept half exactly when the dropped half is above
 * 0x8000, or equal to it with an odd kept half; a carry out of the mantissa raises the exponent
 * (the largest finite values round to ±Inf as RNE says), subnormals round on the same bits, ±0 and
 * ±Inf are fixed points. NaN is the exception (the carry could turn it into Inf): it keeps its sign
 * and top payload bits and is made quiet, so it stays NaN.
 */
export function bf16FromF32Bits(bits: number): number {
  const b = bits >>> 0;
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x0040;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bf16 bit pattern of x, taken as a float32 first (a float64 argument is rounded to float32, RNE). */
export function toBf16Bits(x: number): number {
  f32[0] = x;
  return bf16FromF32Bits(u32[0]);
}

/** The value of a bf16 bit pattern (exact in float32 and float64). */
export function fromBf16Bits(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

/** x rounded to bf16 (via float32, as toBf16Bits), as a number. NaN stays NaN, ±0 and ±Inf stay. */
export function roundBf16(x: number): number {
  f32[0] = x;
  u32[0] = bf16FromF32Bits(u32[0]) << 16;
  return f32[0];
}

/**
 * dst[i] = roundBf16(src[i]) for i < n, into a buffer the caller reuses (nothing is allocated);
 * dst may be src when src is a Float32Array. Returns dst.
 */
export function roundBf16Array(src: FloatArray, dst: Float32Array, n = src.length): Float32Array {
  if (dst.length < n || src.length < n) throw new RangeError(`roundBf16Array: ${n} values, src ${src.length}, dst ${dst.length}`);
  for (let i = 0; i < n; i++) {
    f32[0] = src[i];
    u32[0] = bf16FromF32Bits(u32[0]) << 16;
    dst[i] = f32[0];
  }
  return dst;
}

/** dst[i] = the bf16 bit pattern of src[i] for i < n (what a bf16 tensor stores). Returns dst. */
export function packBf16(src: FloatArray, dst: Uint16Array, n = src.length): Uint16Array {
  if (dst.length < n || src.length < n) throw new RangeError(`packBf16: ${n} values, src ${src.length}, dst ${dst.length}`);
  for (let i = 0; i < n; i++) {
    f32[0] = src[i];
    dst[i] = bf16FromF32Bits(u32[0]);
  }
  return dst;
}

/** dst[i] = the float32 value of bf16 pattern src[i] for i < n, bit for bit (NaN payloads kept). Returns dst. */
export function unpackBf16(src: Uint16Array, dst: Float32Array, n = src.length): Float32Array {
  if (dst.length < n || src.length < n) throw new RangeError(`unpackBf16: ${n} values, src ${src.length}, dst ${dst.length}`);
  const out = new Uint32Array(dst.buffer, dst.byteOffset, n);
  for (let i = 0; i < n; i++) out[i] = src[i] << 16;
  return dst;
}

/**
 * How the second GEMM operand is stored: 'kn' = B[K×N] (C = A·B; GPT-2's Conv1D, 'in_out'),
 * 'nk' = B[N×K] (C = A·Bᵀ; nn.Linear, the tied unembedding, the SAE's W_encᵀ).
 */
export type GemmLayout = 'kn' | 'nk';

/** Reused rounded copies of the operands (one per kernel instance), grown on demand. */
export class Bf16Scratch {
  a = new Float32Array(0);
  b = new Float32Array(0);
  private sums = new Float32Array(0);

  /** A and B rounded to bf16 (the first na, nb values), in this scratch's buffers. */
  round(A: FloatArray, na: number, B: FloatArray, nb: number): { a: Float32Array; b: Float32Array } {
    if (this.a.length < na) this.a = new Float32Array(na);
    if (this.b.length < nb) this.b = new Float32Array(nb);
    return { a: roundBf16Array(A, this.a, na), b: roundBf16Array(B, this.b, nb) };
  }

  /** A float32 row of at least n running sums. */
  acc(n: number): Float32Array {
    if (this.sums.length < n) this.sums = new Float32Array(n);
    return this.sums;
  }
}

/**
 * The reference bf16 GEMM: C[M×N] = bf16(A[M×K]) · bf16(B) (+ bias), B laid out per `layout`,
 * A row-major with row stride K, C row-major with row stride N.
 *
 * Accumulation, fixed here so that every machine gets the same bits: for each (i, j), s starts at
 * +0 and takes the products in order p = 0, 1, …, K−1, each step s ← fp32(s + a_ip·b_pj); the
 * float32 bias (never rounded to bf16) is added last, c_ij = fp32(s + bias_j). A product of two
 * bf16 values has at most 16 significant bits, so it is exact in float64 and, within float32's
 * exponent range, in float32; Math.fround of the float64 sum is then one correctly rounded float32
 * addition (53 ≥ 2·24 + 2, so the double rounding is harmless) — each step equals a float32
 * fused multiply-add, and equally a float32 multiply then add. Both layouts take the same order and
 * give the same bits.
 *
 * A native kernel (AVX512-BF16's VDPBF16PS adds pairs of products, AMX's TDPBF16PS a row of 32,
 * blocked and multithreaded loops split K) sums the same exact products in another order; any
 * order's float32 sum is within (K−1)·2^-24·Σ_p|a_ip·b_pj| of the exact one (Higham's bound),
 * so a native result must lie within 2·(K−1)·2^-24·Σ_p|a_ip·b_pj| of this one (plus 2^-24·|bias|
 * for the last addition). Those instructions also treat bf16 subnormal inputs and float32
 * subnormal results as zero, and VCVTNEPS2BF16 flushes float32 subnormal inputs to ±0 (otherwise
 * it rounds exactly as bf16FromF32Bits); the reference does not flush (docs/precision.md says how
 * a native test allows for it).
 *
 * C may be a Float64Array (the float64 gradient-check kernels); it then holds the float32 values.
 * `scratch` keeps the rounded operands between calls; without it they are allocated per call.
 */
export function bf16Gemm(
  A: FloatArray,
  B: FloatArray,
  C: FloatArray,
  M: number,
  N: number,
  K: number,
  layout: GemmLayout,
  bias: FloatArray | null = null,
  scratch: Bf16Scratch = new Bf16Scratch(),
): void {
  if (A.length < M * K || B.length < K * N || C.length < M * N) throw new RangeError(`bf16Gemm: operands too short for ${M}×${K}·${K}×${N}`);
  if (bias && bias.length < N) throw new RangeError(`bf16Gemm: bias has ${bias.length} < ${N} values`);
  const { a, b } = scratch.round(A, M * K, B, K * N);
  const fround = Math.fround;
  if (layout === 'nk') {
    for (let i = 0; i < M; i++) {
      const ao = i * K;
      for (let j = 0; j < N; j++) {
        const bo = j * K;
        let s = 0;
        for (let p = 0; p < K; p++) s = fround(s + a[ao + p] * b[bo + p]);
        C[i * N + j] = bias ? fround(s + bias[j]) : s;
      }
    }
    return;
  }
  // 'kn': the same per-element order (p ascending), looped i, p, j so that B is read by rows;
  // acc is a Float32Array, so each store rounds to float32 exactly as fround does.
  const acc = scratch.acc(N);
  for (let i = 0; i < M; i++) {
    acc.fill(0, 0, N);
    const ao = i * K;
    for (let p = 0; p < K; p++) {
      const ap = a[ao + p];
      const bo = p * N;
      for (let j = 0; j < N; j++) acc[j] += ap * b[bo + j];
    }
    for (let j = 0; j < N; j++) C[i * N + j] = bias ? fround(acc[j] + bias[j]) : acc[j];
  }
}

/**
 * Storage dtypes of the activation column (SPEC §10: shards record their dtype). Activations are
 * computed and preprocessed in float32 and rounded once, when written; readers widen back to
 * float32, which is exact.
 *
 * float16: IEEE 754 binary16, stored as the Parquet FLOAT16 logical type (FIXED_LEN_BYTE_ARRAY(2),
 * little-endian), which pyarrow and DuckDB read as floats.
 * bfloat16: the high 16 bits of the float32 bit pattern, stored as FIXED_LEN_BYTE_ARRAY(2),
 * little-endian, without a logical type (Parquet has none for it): float32 bits = u16 << 16.
 */
export type ShardDtype = 'float32' | 'float16' | 'bfloat16';

export const SHARD_DTYPES: readonly ShardDtype[] = ['float32', 'float16', 'bfloat16'];

export function isShardDtype(s: unknown): s is ShardDtype {
  return typeof s === 'string' && (SHARD_DTYPES as readonly string[]).includes(s);
}

/** Bytes per stored activation value. */
export function dtypeBytes(dtype: ShardDtype): 2 | 4 {
  return dtype === 'float32' ? 4 : 2;
}

/** Whether typed-array views already are the stored (Parquet's little-endian) byte layout. */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Largest finite value of each dtype, for messages. */
export const DTYPE_MAX: Record<ShardDtype, number> = {
  float32: 3.4028234663852886e38,
  float16: 65504,
  bfloat16: 3.3895313892515355e38,
};

// One scratch word to reinterpret float32 bits; the toolkit is single-threaded per isolate.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 → binary16 bits, round to nearest, ties to even; overflow gives ±Inf, NaN a quiet NaN. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x7f800000) return sign | 0x7c00 | (a > 0x7f800000 ? 0x200 : 0);
  // 65520 = 65504 + half an ulp: from here on, ties-to-even rounds up to Inf.
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a < 0x38800000) {
    // Below 2^-14 binary16 is subnormal with a fixed spacing of 2^-24; |x|·2^24 is exact in float64.
    const scaled = Math.abs(f32[0]) * 16777216;
    let m = Math.floor(scaled);
    const rem = scaled - m;
    if (rem > 0.5 || (rem === 0.5 && (m & 1) === 1)) m++;
    return sign | m; // m = 1024 is the smallest normal, which is the right bit pattern
  }
  const e = (a >>> 23) - 127 + 15;
  const mant = a & 0x7fffff;
  let bits = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa increments the exponent, which is what rounding up should do.
  if (rem > 0x1000 || (rem === 0x1000 && (bits & 1) === 1)) bits++;
  return sign | bits;
}

let f16Table: Float32Array | null = null;

/** binary16 bits → value (exact in float32), through a 65536-entry table built on first use. */
export function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  f16Table = t;
  return t;
}

/** float32 → bfloat16 bits (the high half), round to nearest, ties to even; NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40;
  // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly when the dropped
  // half is above the midpoint, or at it with an odd kept half; overflow lands on Inf.
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

/** Round n float32 values to 16-bit patterns of `dtype` (float16 or bfloat16). */
export function encode16(src: ArrayLike<number>, dst: Uint16Array, n: number, dtype: ShardDtype): void {
  if (dtype === 'float16') for (let i = 0; i < n; i++) dst[i] = f32ToF16Bits(src[i]);
  else if (dtype === 'bfloat16') for (let i = 0; i < n; i++) dst[i] = f32ToBf16Bits(src[i]);
  else throw new RangeError(`encode16: ${dtype} is not a 16-bit dtype`);
}

/**
 * Round n float32 values to `dtype` bit patterns: encode16 for whole row groups, with the common
 * cases inlined on the float32 bits (the per-value functions cost more than the rest of a write).
 */
export function round16(src: Float32Array, dst: Uint16Array, n: number, dtype: ShardDtype): void {
  // Int32 rather than Uint32 words: V8 keeps them small integers, where words with the sign bit
  // set would become doubles; the bit operations below give the same results either way.
  const u = new Int32Array(src.buffer, src.byteOffset, n);
  if (dtype === 'bfloat16') {
    for (let i = 0; i < n; i++) {
      const x = u[i];
      dst[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  } else if (dtype === 'float16') {
    for (let i = 0; i < n; i++) {
      const x = u[i];
      const a = x & 0x7fffffff;
      // Normal binary16 results only; subnormals, overflow and NaN take the careful path.
      if (a >= 0x38800000 && a < 0x477ff000) {
        // Rebias the exponent (127 → 15) and round to nearest even by adding just under half an
        // ulp plus the kept lowest bit, as f32ToBf16Bits does; no branch on the dropped bits,
        // which are random and would mispredict half the time.
        dst[i] = ((x >>> 16) & 0x8000) | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
      } else {
        dst[i] = f32ToF16Bits(src[i]);
      }
    }
  } else {
    throw new RangeError(`round16: ${dtype} is not a 16-bit dtype`);
  }
}

/** Widen n 16-bit patterns of `dtype` to float32 (exact). */
export function decode16(src: Uint16Array, dst: Float32Array, n: number, dtype: ShardDtype): void {
  if (dtype === 'float16') {
    const t = f16ToF32Table();
    for (let i = 0; i < n; i++) dst[i] = t[src[i]];
  } else if (dtype === 'bfloat16') {
    const w = new Uint32Array(dst.buffer, dst.byteOffset, n);
    for (let i = 0; i < n; i++) w[i] = src[i] << 16;
  } else {
    throw new RangeError(`decode16: ${dtype} is not a 16-bit dtype`);
  }
}

/**
 * The smallest magnitude that rounds to ±Inf in each dtype (max + half an ulp, which ties to
 * even round up): 65520 for float16, bits 0x7f7f8000 for bfloat16.
 */
export const OVERFLOW_AT: Record<ShardDtype, number> = {
  float32: Infinity,
  float16: 65520,
  bfloat16: 3.39617752923046e38,
};

/** Whether rounding finite x to `dtype` overflows to ±Inf. */
export function overflows(x: number, dtype: ShardDtype): boolean {
  if (dtype === 'float16') return (f32ToF16Bits(x) & 0x7c00) === 0x7c00;
  if (dtype === 'bfloat16') return (f32ToBf16Bits(x) & 0x7f80) === 0x7f80;
  return false;
}

import { CompactWriter } from './thrift.js';

/**
 * Parquet's RLE/bit-packed hybrid encoding of small unsigned integers (dictionary indices here;
 * the list levels have their own specialised code in the encoder and decoder). Runs of 8 or more
 * equal values become RLE runs; everything else goes out in bit-packed groups of 8.
 */

export class HybridError extends Error {}

/** Bits needed for indices 0..count−1 (at least 1: some readers mishandle width 0). */
export function indexWidth(count: number): number {
  return Math.max(1, 32 - Math.clz32(Math.max(1, count - 1)));
}

export function encodeHybrid(v: ArrayLike<number>, n: number, width: number, out: CompactWriter): void {
  const vb = (width + 7) >> 3;
  let litStart = 0;
  let litGroups = 0;
  const flushLiterals = (): void => {
    if (!litGroups) return;
    out.varint(litGroups * 2 + 1);
    const packed = new Uint8Array(litGroups * width);
    let bit = 0;
    for (let k = 0; k < litGroups * 8; k++) {
      const i = litStart + k;
      const x = i < n ? v[i] : 0;
      for (let b = 0; b < width; b++, bit++) if ((x >>> b) & 1) packed[bit >> 3] |= 1 << (bit & 7);
    }
    out.raw(packed);
    litGroups = 0;
  };
  let i = 0;
  while (i < n) {
    let j = i + 1;
    while (j < n && v[j] === v[i]) j++;
    if (j - i >= 8) {
      flushLiterals();
      out.varint((j - i) * 2);
      for (let b = 0; b < vb; b++) out.byte((v[i] >>> (8 * b)) & 0xff);
      i = j;
    } else {
      // A group of 8 may swallow the start of the next run; that run is then just shorter.
      if (!litGroups) litStart = i;
      litGroups++;
      i += 8;
    }
  }
  flushLiterals();
}

/** Decode n values of `width` bits from buf into out; malformed or short input is a HybridError. */
export function decodeHybrid(buf: Uint8Array, n: number, width: number, out: Uint32Array): void {
  if (width < 0 || width > 32) throw new HybridError(`bit width ${width}`);
  const vb = (width + 7) >> 3;
  let pos = 0;
  let seen = 0;
  while (seen < n) {
    let h = 0;
    let mul = 1;
    for (;;) {
      if (pos >= buf.length) throw new HybridError(`indices end after ${seen} of ${n} values`);
      const b = buf[pos++];
      h += (b & 0x7f) * mul;
      if (!(b & 0x80)) break;
      mul *= 128;
      if (mul > 2 ** 35) throw new HybridError('run header too long');
    }
    if (h % 2 === 1) {
      const groups = (h - 1) / 2;
      const bytes = groups * width;
      if (pos + bytes > buf.length) throw new HybridError('bit-packed run overruns its page');
      const k = Math.min(groups * 8, n - seen);
      let bit = pos * 8;
      for (let i = 0; i < k; i++) {
        let x = 0;
        for (let b = 0; b < width; b++, bit++) x |= ((buf[bit >> 3] >> (bit & 7)) & 1) << b;
        out[seen + i] = x >>> 0;
      }
      seen += k;
      pos += bytes;
    } else {
      const count = h / 2;
      if (pos + vb > buf.length) throw new HybridError('RLE run lacks its value');
      let x = 0;
      for (let b = 0; b < vb; b++) x += buf[pos + b] * 2 ** (8 * b);
      pos += vb;
      if (count === 0 || seen + count > n) throw new HybridError(`RLE run of ${count} where ${n - seen} values remain`);
      out.fill(x, seen, seen + count);
      seen += count;
    }
  }
}

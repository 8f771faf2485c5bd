import { UserError } from '../util/errors.js';
import { ITEMSIZE, numel, type RawTensor } from '../util/safetensors.js';

// The checkpoint dtypes and their sizes are the safetensors ones, whichever reader produced the tensor.
export { ITEMSIZE, numel, type RawTensor, type SafetensorsDtype as WeightDtype } from '../util/safetensors.js';

/** Float tensors widened (or copied) to float32; anything else is not a weight. */
export function toFloat32(t: RawTensor, name = 'tensor'): Float32Array {
  const n = numel(t.shape);
  if (t.bytes.length !== n * ITEMSIZE[t.dtype]) throw new UserError(`${name}: ${t.bytes.length} bytes for ${t.dtype} ${JSON.stringify(t.shape)}`);
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  const out = new Float32Array(n);
  switch (t.dtype) {
    case 'F32':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      return out;
    case 'F64':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      return out;
    case 'F16':
      for (let i = 0; i < n; i++) out[i] = halfToFloat(dv.getUint16(2 * i, true));
      return out;
    case 'BF16': {
      // bfloat16 is the top half of a float32
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = dv.getUint16(2 * i, true) << 16;
      return out;
    }
    default:
      throw new UserError(`${name}: dtype ${t.dtype} is not a floating-point weight`);
  }
}

/** IEEE 754 binary16 → number (subnormals, infinities and NaN included). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

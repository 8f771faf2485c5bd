import type { FloatArray, FloatCtor } from '../util/arrays.js';
import type { SaeParams } from './types.js';

/** The parameters' memory layout: W_encᵀ [F×d], b_enc [F], W_dec [F×d], b_dec [d], each one flat array. */
export function allocParams(d: number, F: number, Ctor: FloatCtor = Float32Array): SaeParams {
  return { d, F, WencT: new Ctor(F * d), bEnc: new Ctor(F), Wdec: new Ctor(F * d), bDec: new Ctor(d) };
}

/** The four tensors in a fixed order, for loops over parameters, moments and gradients. */
export function tensors(p: SaeParams): FloatArray[] {
  return [p.WencT, p.bEnc, p.Wdec, p.bDec];
}

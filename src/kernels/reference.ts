import type { FloatArray } from '../util/arrays.js';
import { ctorOf } from '../util/arrays.js';
import { maskedTopK, select } from './selection.js';
import { composedOptimizerStep } from './optimizer.js';
import { Bf16Scratch, bf16Gemm, type Precision } from './bf16.js';
import type {
  AdamWHyper,
  AuxRequest,
  OptimizerHyper,
  EncodeOutput,
  KernelShape,
  SaeKernels,
  SaeParams,
  Selection,
  SparseCodes,
} from './types.js';

/**
 * The reference kernels: straight loops, one obvious line per formula. They define what every
 * faster implementation must compute (tests compare against them) and run the float64 gradient
 * checks. The dense B×F affinity matrix exists here (the selection needs it); the codes and every
 * gradient are sparse.
 *
 * `precision: 'bf16'` (docs/precision.md) changes one thing: the encoder GEMM (x − b_dec)·W_enc
 * takes both operands rounded to bf16 and sums the products in float32 (`bf16Gemm`). x − b_dec, the
 * bias b_enc, the selection, decode, every gradient (they read the float32 x − b_dec and weights)
 * and the optimizer are as under 'fp32', which is the default and unchanged.
 */
export function createReferenceKernels(shape: KernelShape, opts: { precision?: Precision } = {}): SaeKernels {
  const { d, F, maxB } = shape;
  const precision = opts.precision ?? 'fp32';
  const bf16 = precision === 'bf16' ? new Bf16Scratch() : null;
  let pre: FloatArray | undefined;

  function affinities(p: SaeParams, x: FloatArray, B: number, xc: FloatArray): FloatArray {
    if (B > maxB) throw new RangeError(`batch ${B} exceeds kernel capacity ${maxB}`);
    const Ctor = ctorOf(x);
    if (!pre || !(pre instanceof Ctor)) pre = new Ctor(maxB * F);
    const z = pre;
    // SPEC §4: z' = (x − b_dec)·W_enc + b_enc
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < d; i++) xc[b * d + i] = x[b * d + i] - p.bDec[i];
    }
    if (bf16) {
      bf16Gemm(xc, p.WencT, z, B, F, d, 'nk', p.bEnc, bf16);
      return z;
    }
    for (let b = 0; b < B; b++) {
      const xo = b * d;
      for (let j = 0; j < F; j++) {
        const wo = j * d;
        let s = 0;
        for (let i = 0; i < d; i++) s += xc[xo + i] * p.WencT[wo + i];
        z[b * F + j] = s + p.bEnc[j];
      }
    }
    return z;
  }

  return {
    name: precision === 'fp32' ? 'reference' : `reference-${precision}`,
    precision,

    encodeSelect(p: SaeParams, x: FloatArray, B: number, sel: Selection, aux: readonly AuxRequest[], out: EncodeOutput): void {
      const z = affinities(p, x, B, out.xc);
      select(z, B, F, sel, out.codes);
      for (let a = 0; a < aux.length; a++) maskedTopK(z, B, F, aux[a].mask, aux[a].k, out.aux[a]);
    },

    decode(p: SaeParams, codes: SparseCodes, out: FloatArray, withBias: boolean): void {
      for (let b = 0; b < codes.B; b++) {
        const oo = b * d;
        for (let i = 0; i < d; i++) out[oo + i] = withBias ? p.bDec[i] : 0;
        for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) {
          const wo = codes.index[e] * d;
          const v = codes.value[e];
          for (let i = 0; i < d; i++) out[oo + i] += v * p.Wdec[wo + i];
        }
      }
    },

    decodeBackward(p: SaeParams, codes: SparseCodes, dOut: FloatArray, gWdec: FloatArray, dz: FloatArray): void {
      for (let b = 0; b < codes.B; b++) {
        const go = b * d;
        for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) {
          const wo = codes.index[e] * d;
          const v = codes.value[e];
          let s = 0;
          for (let i = 0; i < d; i++) {
            s += dOut[go + i] * p.Wdec[wo + i];
            gWdec[wo + i] += v * dOut[go + i];
          }
          dz[e] = s;
        }
      }
    },

    encoderBackward(p: SaeParams, xc: FloatArray, codes: SparseCodes, dz: FloatArray, g: SaeParams): void {
      for (let b = 0; b < codes.B; b++) {
        const xo = b * d;
        for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) {
          const j = codes.index[e];
          const wo = j * d;
          const gz = dz[e];
          g.bEnc[j] += gz;
          for (let i = 0; i < d; i++) {
            g.WencT[wo + i] += gz * xc[xo + i];
            g.bDec[i] -= gz * p.WencT[wo + i];
          }
        }
      }
    },

    sumSquares(a: FloatArray): number {
      let s = 0;
      for (let i = 0; i < a.length; i++) s += a[i] * a[i];
      return s;
    },

    adamw(param: FloatArray, grad: FloatArray, m: FloatArray, v: FloatArray, h: AdamWHyper, decay: boolean): void {
      // Loshchilov & Hutter: decoupled decay θ ← θ − lr·wd·θ, then the bias-corrected Adam step.
      const c1 = 1 - Math.pow(h.beta1, h.step);
      const c2 = 1 - Math.pow(h.beta2, h.step);
      const shrink = decay ? 1 - h.lr * h.weightDecay : 1;
      for (let i = 0; i < param.length; i++) {
        const g = grad[i] * h.gradScale;
        m[i] = h.beta1 * m[i] + (1 - h.beta1) * g;
        v[i] = h.beta2 * v[i] + (1 - h.beta2) * g * g;
        const mh = m[i] / c1;
        const vh = v[i] / c2;
        param[i] = param[i] * shrink - (h.lr * mh) / (Math.sqrt(vh) + h.eps);
        grad[i] = 0;
      }
    },

    projectDecoderGrad(Wdec: FloatArray, gWdec: FloatArray, Fr: number, dr: number): void {
      for (let j = 0; j < Fr; j++) {
        const o = j * dr;
        let dot = 0;
        let nn = 0;
        for (let i = 0; i < dr; i++) {
          dot += Wdec[o + i] * gWdec[o + i];
          nn += Wdec[o + i] * Wdec[o + i];
        }
        if (nn === 0) continue;
        const c = dot / nn;
        for (let i = 0; i < dr; i++) gWdec[o + i] -= c * Wdec[o + i];
      }
    },

    normalizeDecoderRows(Wdec: FloatArray, Fr: number, dr: number): void {
      for (let j = 0; j < Fr; j++) {
        const o = j * dr;
        let nn = 0;
        for (let i = 0; i < dr; i++) nn += Wdec[o + i] * Wdec[o + i];
        if (nn === 0) continue;
        const inv = 1 / Math.sqrt(nn);
        for (let i = 0; i < dr; i++) Wdec[o + i] *= inv;
      }
    },

    optimizerStep(p: SaeParams, g: SaeParams, m: readonly FloatArray[], v: readonly FloatArray[], h: OptimizerHyper): number {
      return composedOptimizerStep(this, p, g, m, v, h);
    },
  };
}

import type { FloatArray } from '../util/arrays.js';
import { ctorOf } from '../util/arrays.js';
import type { AuxRequest, EncodeOutput, SaeKernels, SaeParams, Selection, SparseCodes } from '../kernels/types.js';
import { allocCodes } from '../kernels/selection.js';

/** One auxiliary reconstruction loss of SPEC §7 (aux_k over dead, aux_zipf over dying features). */
export interface AuxLossSpec {
  name: 'auxK' | 'auxZipf';
  /** F, 1 = feature may take part */
  mask: Uint8Array;
  k: number;
  coef: number;
}

export interface ObjectiveSpec {
  selection: Selection;
  /** λ₁ of the ReLU SAE's L1 penalty λ₁ Σ_j z_j‖W_dec,j‖ (SPEC §5); 0 for TopK-style selections */
  l1Coef: number;
  aux: AuxLossSpec[];
  /** features sampled for the NFM losses this step (appendix C); empty = off */
  nfmSample: Int32Array;
  nfmCoef: number;
  nfmInfCoef: number;
  /**
   * The residual the aux losses explain, treated as a constant (stop-gradient). Default: x − x̂ of
   * this very pass. Gradient checks pass the unperturbed residual so that finite differences see
   * the same detached target the analytic gradient assumes.
   */
  auxResidual?: FloatArray;
}

export interface LossTerms {
  total: number;
  recon: number;
  l1: number;
  auxK: number;
  auxZipf: number;
  nfm: number;
  nfmInf: number;
  /** mean number of selected features per token */
  l0: number;
  /** Σ‖x − x̂‖² over the batch, for FVU */
  sse: number;
}

/** Scratch for one forward/backward pass, sized once for (maxB, d, F) and reused every step. */
export interface Workspace {
  enc: EncodeOutput;
  xhat: FloatArray;
  dOut: FloatArray;
  ehat: FloatArray;
  /** the detached residual e = x − x̂ the aux losses explain, kept in float64 as it was computed */
  res: FloatArray;
  dz: FloatArray;
  dzAux: FloatArray[];
}

export function allocWorkspace(d: number, maxB: number, codeCapacity: number, auxSlots: number, auxCapacity: number, Ctor: typeof Float32Array | typeof Float64Array = Float32Array): Workspace {
  const aux: SparseCodes[] = [];
  const dzAux: FloatArray[] = [];
  for (let a = 0; a < auxSlots; a++) {
    aux.push(allocCodes(maxB, auxCapacity, Ctor));
    dzAux.push(new Ctor(auxCapacity));
  }
  return {
    enc: { xc: new Ctor(maxB * d), codes: allocCodes(maxB, codeCapacity, Ctor), aux },
    xhat: new Ctor(maxB * d),
    dOut: new Ctor(maxB * d),
    ehat: new Ctor(maxB * d),
    res: new Float64Array(maxB * d),
    dz: new Ctor(codeCapacity),
    dzAux,
  };
}

function ensureLen(buf: FloatArray, n: number): FloatArray {
  return buf.length >= n ? buf : new (ctorOf(buf))(Math.max(n, Math.ceil(buf.length * 1.5)));
}

/**
 * Loss terms of SPEC §7 and their gradients, accumulated into g (which must be zero on entry or
 * hold gradients to add to). The one place the objective is written down: the trainer and the
 * finite-difference tests both call it.
 */
export function lossAndGrad(k: SaeKernels, p: SaeParams, g: SaeParams, x: FloatArray, B: number, spec: ObjectiveSpec, ws: Workspace): LossTerms {
  const { d } = p;
  const auxReqs: AuxRequest[] = spec.aux.map((a) => ({ mask: a.mask, k: a.k }));
  while (ws.enc.aux.length < auxReqs.length) {
    ws.enc.aux.push(allocCodes(B, B * 8, ctorOf(x)));
    ws.dzAux.push(new (ctorOf(x))(B * 8));
  }
  const enc = { xc: ws.enc.xc, codes: ws.enc.codes, aux: ws.enc.aux.slice(0, auxReqs.length) };
  k.encodeSelect(p, x, B, spec.selection, auxReqs, enc);
  const codes = enc.codes;

  // reconstruction: mean over the batch of ‖x − x̂‖² (SPEC §7)
  k.decode(p, codes, ws.xhat, true);
  // one pass over B×d: the squared error, dL/dx̂ and b_dec's direct gradient Σ_b dL/dx̂_b
  let sse = 0;
  const n = B * d;
  const c2 = 2 / B;
  const gb = new Float64Array(d);
  for (let b = 0; b < B; b++) {
    const o = b * d;
    for (let i = 0; i < d; i++) {
      const r = ws.xhat[o + i] - x[o + i];
      sse += r * r;
      const gr = c2 * r;
      ws.dOut[o + i] = gr;
      gb[i] += gr;
    }
  }
  const recon = sse / B;
  for (let i = 0; i < d; i++) g.bDec[i] += gb[i];
  ws.dz = ensureLen(ws.dz, codes.nnz);
  k.decodeBackward(p, codes, ws.dOut, g.Wdec, ws.dz);

  // L1 on z_j‖W_dec,j‖ (SPEC §5, ReLU SAE); the norm's gradient is parallel to the row
  let l1 = 0;
  if (spec.l1Coef > 0) {
    const rowNorm = new Float64Array(p.F);
    const zSum = new Float64Array(p.F);
    for (let j = 0; j < p.F; j++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += p.Wdec[j * d + i] ** 2;
      rowNorm[j] = Math.sqrt(s);
    }
    for (let e = 0; e < codes.nnz; e++) {
      const j = codes.index[e];
      l1 += codes.value[e] * rowNorm[j];
      zSum[j] += codes.value[e];
      ws.dz[e] += (spec.l1Coef * rowNorm[j]) / B;
    }
    l1 /= B;
    for (let j = 0; j < p.F; j++) {
      if (zSum[j] === 0 || rowNorm[j] === 0) continue;
      const c = (spec.l1Coef * zSum[j]) / B / rowNorm[j];
      for (let i = 0; i < d; i++) g.Wdec[j * d + i] += c * p.Wdec[j * d + i];
    }
  }
  k.encoderBackward(p, enc.xc, codes, ws.dz, g);

  // aux_k / aux_zipf (SPEC §7, paper §2.5, §4.2): reconstruct the detached residual e = x − x̂ from
  // the top k_aux eligible features. Normalised as openai/sparse_autoencoder's train.py does
  // (normalized_mse): Σ_b‖ê_b − e_b‖² / Σ_b‖e_b − ē‖², ē the batch mean of the residual.
  let resReady = false;
  let resVar = 0;
  const residual = (): FloatArray => {
    const res = spec.auxResidual ?? ws.res;
    if (!resReady) {
      if (!spec.auxResidual) for (let i = 0; i < n; i++) ws.res[i] = x[i] - ws.xhat[i];
      resVar = batchVariance(res, B, d);
      resReady = true;
    }
    return res;
  };
  const out: LossTerms = { total: 0, recon, l1, auxK: 0, auxZipf: 0, nfm: 0, nfmInf: 0, l0: codes.nnz / B, sse };
  for (let a = 0; a < spec.aux.length; a++) {
    const ac = enc.aux[a];
    if (ac.nnz === 0 || spec.aux[a].coef === 0) continue;
    k.decode(p, ac, ws.ehat, false);
    const res = residual();
    // a batch whose residual has no variance has nothing to explain (openai's nan_to_num)
    if (!(resVar > 0)) continue;
    let diff = 0;
    for (let i = 0; i < n; i++) diff += (ws.ehat[i] - res[i]) ** 2;
    out[spec.aux[a].name] += diff / resVar;
    // ws.ehat becomes dL/dê in place
    const c = (2 * spec.aux[a].coef) / resVar;
    for (let i = 0; i < n; i++) ws.ehat[i] = c * (ws.ehat[i] - res[i]);
    ws.dzAux[a] = ensureLen(ws.dzAux[a], ac.nnz);
    k.decodeBackward(p, ac, ws.ehat, g.Wdec, ws.dzAux[a]);
    k.encoderBackward(p, enc.xc, ac, ws.dzAux[a], g);
  }

  if (spec.nfmSample.length > 1 && (spec.nfmCoef > 0 || spec.nfmInfCoef > 0)) {
    const r = nfmLosses(p.Wdec, d, spec.nfmSample, spec.nfmCoef, spec.nfmInfCoef, g.Wdec);
    out.nfm = r.nfm;
    out.nfmInf = r.nfmInf;
  }

  out.total =
    recon + spec.l1Coef * l1 + spec.aux.reduce((s, a) => s + a.coef * out[a.name], 0) + spec.nfmCoef * out.nfm + spec.nfmInfCoef * out.nfmInf;
  return out;
}

/**
 * nfm_loss = ‖ŴŴᵀ‖_F and nfm_inf_loss = (1/s) Σ_i max_{j≠i} (ŴŴᵀ)_ij over a sample of s decoder
 * rows (appendix C, SPEC §7), with Ŵ the row-normalised decoder; gradients (times the coefficients)
 * are added to gWdec through the normalisation.
 */
export function nfmLosses(Wdec: FloatArray, d: number, sample: Int32Array, coef: number, infCoef: number, gWdec: FloatArray | null): { nfm: number; nfmInf: number } {
  const s = sample.length;
  const W = new Float64Array(s * d);
  const norms = new Float64Array(s);
  for (let a = 0; a < s; a++) {
    const o = sample[a] * d;
    let nn = 0;
    for (let i = 0; i < d; i++) nn += Wdec[o + i] ** 2;
    norms[a] = Math.sqrt(nn) || 1;
    for (let i = 0; i < d; i++) W[a * d + i] = Wdec[o + i] / norms[a];
  }
  const G = new Float64Array(s * s);
  let fro = 0;
  for (let a = 0; a < s; a++) {
    for (let b = a; b < s; b++) {
      let dot = 0;
      for (let i = 0; i < d; i++) dot += W[a * d + i] * W[b * d + i];
      G[a * s + b] = dot;
      G[b * s + a] = dot;
      fro += a === b ? dot * dot : 2 * dot * dot;
    }
  }
  const nfm = Math.sqrt(fro);
  const argmax = new Int32Array(s);
  let inf = 0;
  for (let a = 0; a < s; a++) {
    let best = -Infinity;
    let bi = -1;
    for (let b = 0; b < s; b++) {
      if (b !== a && G[a * s + b] > best) {
        best = G[a * s + b];
        bi = b;
      }
    }
    argmax[a] = bi;
    inf += best;
  }
  const nfmInf = inf / s;
  if (gWdec) {
    // dL/dŴ, then through ŵ = w/‖w‖: dL/dw = (I − ŵŵᵀ)·dL/dŵ / ‖w‖
    const dW = new Float64Array(s * d);
    if (coef !== 0 && nfm > 0) {
      for (let a = 0; a < s; a++) {
        for (let b = 0; b < s; b++) {
          const c = (2 * coef * G[a * s + b]) / nfm;
          for (let i = 0; i < d; i++) dW[a * d + i] += c * W[b * d + i];
        }
      }
    }
    if (infCoef !== 0) {
      for (let a = 0; a < s; a++) {
        const b = argmax[a];
        const c = infCoef / s;
        for (let i = 0; i < d; i++) {
          dW[a * d + i] += c * W[b * d + i];
          dW[b * d + i] += c * W[a * d + i];
        }
      }
    }
    for (let a = 0; a < s; a++) {
      let dot = 0;
      for (let i = 0; i < d; i++) dot += dW[a * d + i] * W[a * d + i];
      const o = sample[a] * d;
      for (let i = 0; i < d; i++) gWdec[o + i] += (dW[a * d + i] - dot * W[a * d + i]) / norms[a];
    }
  }
  return { nfm, nfmInf };
}

/** Σ_b ‖x_b − mean_b(x)‖² in float64: FVU's denominator (SPEC §9) and the aux losses' normaliser. */
export function batchVariance(x: FloatArray, B: number, d: number): number {
  // one pass: Σ_i (Σ_b x² − (Σ_b x)²/B)
  const s1 = new Float64Array(d);
  const s2 = new Float64Array(d);
  for (let b = 0; b < B; b++) {
    const o = b * d;
    for (let i = 0; i < d; i++) {
      const v = x[o + i];
      s1[i] += v;
      s2[i] += v * v;
    }
  }
  let s = 0;
  for (let i = 0; i < d; i++) s += s2[i] - (s1[i] * s1[i]) / B;
  return Math.max(0, s);
}

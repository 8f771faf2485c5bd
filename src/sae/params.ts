import type { FloatArray } from '../util/arrays.js';
import type { SaeParams } from '../kernels/types.js';
import { Rng } from '../util/rng.js';

/**
 * SPEC §4 initialisation: decoder rows random unit vectors, W_enc = W_decᵀ, b_enc = 0,
 * b_dec = 0 or the mean of a sample of inputs (Gao et al. / openai use the geometric median; the
 * mean is what SPEC asks for).
 */
export function initParams(p: SaeParams, seed: number, bDecInit?: { sample: FloatArray; n: number }): void {
  const { d, F } = p;
  const rng = Rng.derive(seed, 'init');
  for (let j = 0; j < F; j++) {
    let nn = 0;
    for (let i = 0; i < d; i++) {
      const v = rng.normal();
      p.Wdec[j * d + i] = v;
      nn += v * v;
    }
    const inv = 1 / Math.sqrt(nn);
    for (let i = 0; i < d; i++) p.Wdec[j * d + i] *= inv;
  }
  p.WencT.set(p.Wdec);
  p.bEnc.fill(0);
  p.bDec.fill(0);
  if (bDecInit && bDecInit.n > 0) {
    const { sample, n } = bDecInit;
    for (let b = 0; b < n; b++) for (let i = 0; i < d; i++) p.bDec[i] += sample[b * d + i];
    for (let i = 0; i < d; i++) p.bDec[i] /= n;
  }
}

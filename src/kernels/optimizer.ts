import type { FloatArray } from '../util/arrays.js';
import type { OptimizerHyper, SaeKernels, SaeParams } from './types.js';
import { tensors } from './params.js';

/**
 * The parameter update written from the kernel primitives, pass by pass: the definition of
 * `SaeKernels.optimizerStep` and the oracle for fused versions.
 */
export function composedOptimizerStep(
  k: Pick<SaeKernels, 'projectDecoderGrad' | 'sumSquares' | 'adamw' | 'normalizeDecoderRows'>,
  p: SaeParams,
  g: SaeParams,
  m: readonly FloatArray[],
  v: readonly FloatArray[],
  h: OptimizerHyper,
): number {
  const { F, d } = p;
  // SPEC §4: the decoder gradient loses its component along each (unit) row before the step
  k.projectDecoderGrad(p.Wdec, g.Wdec, F, d);
  const gs = tensors(g);
  let sq = 0;
  for (const t of gs) sq += k.sumSquares(t);
  const gradNorm = Math.sqrt(sq);
  const gradScale = h.maxGradNorm > 0 && gradNorm > h.maxGradNorm ? h.maxGradNorm / gradNorm : 1;
  const hyper = { lr: h.lr, beta1: h.beta1, beta2: h.beta2, eps: h.eps, weightDecay: h.weightDecay, step: h.step, gradScale };
  const ps = tensors(p);
  // weight decay on the matrices only, not the biases
  for (let i = 0; i < ps.length; i++) k.adamw(ps[i], gs[i], m[i], v[i], hyper, i === 0 || i === 2);
  k.normalizeDecoderRows(p.Wdec, F, d);
  return gradNorm;
}

/**
 * The training backend on the CPU: the state in host typed arrays, the step composed from any
 * `SaeKernels` (reference or native) exactly as the trainer composed it before the backend seam
 * existed, so results are bit-identical to that code (test/trainer-golden.test.ts).
 */
import type { KernelFactory, SaeKernels, SaeParams } from '../kernels/types.js';
import type { BackendInit, StepRequest, StepResult, TrainingBackend, TrainingBackendFactory } from './backend.js';
import { allocParams, tensors } from '../kernels/params.js';
import { allocWorkspace, batchVariance, lossAndGrad, type AuxLossSpec, type Workspace } from './objective.js';
import { FeatureStats, type FeatureStatsState } from './density.js';

export class CpuTrainingBackend implements TrainingBackend {
  readonly name: string;
  readonly device = 'cpu' as const;
  readonly d: number;
  readonly F: number;
  /** the kernels every step runs on (bench/train.mjs times them through this) */
  readonly kernels: SaeKernels;
  /** scratch of the last step: codes, aux codes, x̂ … (bench/train.mjs reads the aux sizes) */
  readonly ws: Workspace;
  private readonly p: SaeParams;
  private readonly g: SaeParams;
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private stats: FeatureStats;
  private readonly deadWindow: number;
  private readonly deadMask: Uint8Array;
  private readonly dying: Uint8Array;
  private dyingCount = 0;

  constructor(kernels: KernelFactory, init: BackendInit) {
    const { d, F, maxB } = init;
    this.d = d;
    this.F = F;
    this.kernels = kernels({ d, F, maxB });
    this.name = `cpu/${this.kernels.name}`;
    if (init.params && (init.params.d !== d || init.params.F !== F)) throw new Error(`backend: weights are ${init.params.F}×${init.params.d}, expected ${F}×${d}`);
    this.p = init.params ?? allocParams(d, F);
    this.g = allocParams(d, F);
    this.m = tensors(this.p).map((t) => new Float32Array(t.length));
    this.v = tensors(this.p).map((t) => new Float32Array(t.length));
    this.ws = allocWorkspace(d, maxB, init.maxNnz, 2, maxB * Math.min(init.auxK, F), Float32Array);
    this.stats = new FeatureStats(F, { emaDecay: init.densityEma });
    this.deadWindow = init.deadWindow;
    this.deadMask = new Uint8Array(F);
    this.dying = new Uint8Array(F);
  }

  step(req: StepRequest): StepResult {
    const { kernels: k, p, g, ws } = this;
    const { x, B } = req;
    const aux: AuxLossSpec[] = [];
    const deadBefore = this.stats.deadMask(this.deadWindow, this.deadMask);
    if (req.auxK && deadBefore > 0) aux.push({ name: 'auxK', mask: this.deadMask, k: req.auxK.k, coef: req.auxK.coef });
    if (req.auxZipf && this.dyingCount > 0) aux.push({ name: 'auxZipf', mask: this.dying, k: req.auxZipf.k, coef: req.auxZipf.coef });
    const terms = lossAndGrad(k, p, g, x, B, { selection: req.selection, l1Coef: req.l1Coef, aux, nfmSample: req.nfmSample, nfmCoef: req.nfmCoef, nfmInfCoef: req.nfmInfCoef }, ws);
    if (!Number.isFinite(terms.total)) {
      // leave the state as it was: the gradients are the only thing lossAndGrad wrote
      for (const t of tensors(g)) t.fill(0);
      return { applied: false, terms, gradNorm: NaN, batchVariance: NaN, deadCount: deadBefore };
    }
    const gradNorm = k.optimizerStep(p, g, this.m, this.v, req.optimizer);
    this.stats.update(ws.enc.codes, B);
    return { applied: true, terms, gradNorm, batchVariance: batchVariance(x, B, this.d), deadCount: this.stats.deadMask(this.deadWindow, this.deadMask) };
  }

  readDensity(): Float64Array {
    return this.stats.density;
  }

  setDying(mask: Uint8Array): void {
    if (mask.length !== this.F) throw new Error(`backend: dying mask of ${mask.length} for F=${this.F}`);
    this.dying.set(mask);
    let n = 0;
    for (let j = 0; j < this.F; j++) n += this.dying[j] ? 1 : 0;
    this.dyingCount = n;
  }

  readParams(): SaeParams {
    return this.p;
  }

  writeParams(src: SaeParams): void {
    if (src.d !== this.d || src.F !== this.F) throw new Error(`backend: weights are ${src.F}×${src.d}, expected ${this.F}×${this.d}`);
    const dst = tensors(this.p);
    tensors(src).forEach((t, i) => dst[i].set(t));
  }

  readOptimizer(): { m: Float32Array[]; v: Float32Array[] } {
    return { m: this.m, v: this.v };
  }

  writeOptimizer(m: readonly Float32Array[], v: readonly Float32Array[]): void {
    if (m.length !== this.m.length || v.length !== this.v.length) throw new Error(`backend: ${m.length} and ${v.length} moment tensors, expected ${this.m.length}`);
    for (let i = 0; i < this.m.length; i++) {
      this.m[i].set(m[i]);
      this.v[i].set(v[i]);
    }
  }

  readStats(): FeatureStatsState {
    return this.stats.toState();
  }

  writeStats(s: FeatureStatsState): void {
    const stats = FeatureStats.fromState(s);
    if (stats.F !== this.F) throw new Error(`backend: statistics for F=${stats.F}, expected ${this.F}`);
    this.stats = stats;
  }

  dispose(): void {}
}

/** A backend factory on the CPU over the given kernels. */
export function cpuBackend(kernels: KernelFactory): TrainingBackendFactory {
  return (init) => new CpuTrainingBackend(kernels, init);
}

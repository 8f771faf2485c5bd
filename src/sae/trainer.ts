import type { KernelFactory, SaeKernels, SaeParams, Selection } from '../kernels/types.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { Rng, type RngState } from '../util/rng.js';
import { UserError } from '../util/errors.js';
import { allocParams, initParams, tensors } from './params.js';
import { allocWorkspace, batchVariance, lossAndGrad, type AuxLossSpec, type LossTerms, type Workspace } from './objective.js';
import { FeatureStats } from './density.js';
import { capacitiesByFeature, densityRanking, dyingFeatures, uniformCapacities, zipfCapacities } from './zipf.js';
import { CarriedCapacities, uniformShares, zipfShares } from './capacities.js';
import { allPhases, baseLearningRate, learningRate, phaseAt, type PhaseConfig, type TrainConfig, featureCap } from './config.js';

/** Everything besides the weights that an exact resume needs (SPEC §10). */
export interface TrainerSnapshot {
  step: number;
  tokens: number;
  rng: RngState;
  lastRankStep: number;
  /** density rank order (order[r] = feature of rank r+1) in force */
  order: Int32Array;
  dying: Uint8Array;
  /** Feature Choice credits by feature index and the batch total's credit (zeros unless capacityRounding is carry) */
  capacityCredit: Float64Array;
  batchCredit: number;
  stats: ReturnType<FeatureStats['toState']>;
  /** Adam first and second moments, same order as tensors(params) */
  m: Float32Array[];
  v: Float32Array[];
}

export interface StepReport extends LossTerms {
  step: number;
  phase: number;
  activation: string;
  lr: number;
  gradNorm: number;
  fvu: number;
  deadFraction: number;
  dyingFraction: number;
  tokens: number;
}

/**
 * One SAE training run's numeric state and its step (SPEC §8): loss and gradients through the
 * kernel seam, decoder-gradient projection, gradient-norm clipping, AdamW, decoder renormalisation,
 * density statistics, periodic density ranking (Zipf capacities, dying set).
 */
export class Trainer {
  readonly cfg: TrainConfig;
  readonly d: number;
  readonly F: number;
  readonly params: SaeParams;
  readonly kernels: SaeKernels;
  readonly baseLr: number;
  readonly deadWindow: number;
  private readonly grads: SaeParams;
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private readonly ws: Workspace;
  private readonly phases: PhaseConfig[];
  private readonly deadMask: Uint8Array;
  private stats: FeatureStats;
  private rng: Rng;
  private order: Int32Array;
  private dying: Uint8Array;
  private dyingCount = 0;
  /** Feature Choice capacities in expectation (capacityRounding carry), and this batch's capacities */
  private readonly carried: CarriedCapacities | null;
  private readonly identityOrder: Int32Array;
  private readonly capacity: Int32Array;
  private lastRankStep = 0;
  step = 0;
  tokens = 0;

  constructor(opts: { cfg: TrainConfig; d: number; F: number; deadWindow: number; kernels?: KernelFactory; params?: SaeParams }) {
    const { cfg, d, F } = opts;
    this.cfg = cfg;
    this.d = d;
    this.F = F;
    this.deadWindow = opts.deadWindow;
    this.phases = allPhases(cfg);
    const B = cfg.batchSize;
    this.kernels = (opts.kernels ?? createReferenceKernels)({ d, F, maxB: B });
    this.params = opts.params ?? allocParams(d, F);
    this.grads = allocParams(d, F);
    this.m = tensors(this.params).map((t) => new Float32Array(t.length));
    this.v = tensors(this.params).map((t) => new Float32Array(t.length));
    this.baseLr = baseLearningRate(cfg, F);
    const maxNnz = Math.max(...this.phases.map((ph) => (ph.activation === 'relu' ? B * Math.min(F, 64) : cfg.k * B)));
    this.ws = allocWorkspace(d, B, maxNnz, 2, B * Math.min(this.auxK(), F), Float32Array);
    this.deadMask = new Uint8Array(F);
    this.stats = new FeatureStats(F, { emaDecay: cfg.densityEma });
    this.rng = Rng.derive(cfg.seed, 'trainer');
    this.order = identity(F);
    this.dying = new Uint8Array(F);
    this.identityOrder = identity(F);
    this.capacity = new Int32Array(F);
    // credits start at zero and move only in Feature Choice phases: a switch from Mutual Choice starts from zero
    const fc = this.phases.some((ph) => ph.activation === 'feature');
    this.carried = fc && cfg.capacityRounding === 'carry' ? new CarriedCapacities(this.shares(B), featureCap(cfg, B)) : null;
  }

  private shares(B: number) {
    const { cfg, F } = this;
    const mMax = featureCap(cfg, B);
    return cfg.capacities === 'uniform' ? uniformShares(cfg.k, F, B, mMax) : zipfShares(cfg.k, F, B, cfg.zipfAlpha, cfg.zipfBeta, mMax);
  }

  /** Fresh weights (SPEC §4), b_dec from the first batch's mean when configured. */
  init(firstBatch?: Float32Array): void {
    initParams(this.params, this.cfg.seed, this.cfg.bDecInit === 'mean' && firstBatch ? { sample: firstBatch, n: this.cfg.batchSize } : undefined);
  }

  /** SPEC §7: k_aux = 512 by default, never more than F/2. */
  auxK(): number {
    return Math.max(1, Math.min(this.cfg.auxK, Math.floor(this.F / 2)));
  }

  phaseAt(step: number): { index: number; phase: PhaseConfig } {
    return phaseAt(this.cfg, step);
  }

  private selectionFor(phase: PhaseConfig, B: number): Selection {
    const { cfg, F } = this;
    switch (phase.activation) {
      case 'topk':
        return { kind: 'topk', k: cfg.k };
      case 'mutual':
      case 'batchtopk':
        return { kind: 'mutual', M: cfg.k * B };
      case 'relu':
        return { kind: 'relu' };
      case 'feature': {
        // SPEC §5 "Rounding": shares realised in expectation; uniform shares tie-break by feature index
        if (this.carried) return { kind: 'feature', capacity: this.carried.next(cfg.capacities === 'uniform' ? this.identityOrder : this.order, this.capacity) };
        if (cfg.capacities === 'uniform') return { kind: 'feature', capacity: uniformCapacities(cfg.k, B, F) };
        // SPEC §5 / algorithm 1: capacities by density rank, mapped onto features by the current ranking
        const byRank = zipfCapacities(cfg.k, F, B, cfg.zipfAlpha, cfg.zipfBeta, featureCap(cfg, B));
        return { kind: 'feature', capacity: capacitiesByFeature(byRank, this.order) };
      }
      default:
        throw new Error(`activation ${phase.activation} cannot be trained`);
    }
  }

  /** Re-rank features by running density and recompute the dying set (definition 3.1). */
  private rerank(): void {
    this.order = densityRanking(this.stats.density);
    const dy = dyingFeatures(this.stats.density, this.cfg.zipfAlpha, this.cfg.zipfBeta, this.order);
    this.dying = dy.mask;
    this.dyingCount = dy.count;
    this.lastRankStep = this.step;
  }

  /** One optimiser step on a batch of B×d preprocessed activations. */
  trainStep(x: Float32Array): StepReport {
    const { cfg, d, F, kernels: k, params: p, grads: g } = this;
    const B = cfg.batchSize;
    if (this.step > 0 && this.step - this.lastRankStep >= cfg.rankInterval) this.rerank();
    const { index: phaseIndex, phase } = this.phaseAt(this.step);

    const aux: AuxLossSpec[] = [];
    const deadCount = this.stats.deadMask(this.deadWindow, this.deadMask);
    if (phase.auxKCoef > 0 && deadCount > 0) aux.push({ name: 'auxK', mask: this.deadMask, k: this.auxK(), coef: phase.auxKCoef });
    if (phase.auxZipfCoef > 0 && this.dyingCount > 0) aux.push({ name: 'auxZipf', mask: this.dying, k: this.auxK(), coef: phase.auxZipfCoef });

    const nfmOn = cfg.nfmCoef > 0 || cfg.nfmInfCoef > 0;
    const terms = lossAndGrad(k, p, g, x, B, {
      selection: this.selectionFor(phase, B),
      l1Coef: phase.activation === 'relu' ? cfg.l1Coef : 0,
      aux,
      nfmSample: nfmOn ? sampleWithoutReplacement(this.rng, F, Math.min(cfg.nfmSample, F)) : new Int32Array(0),
      nfmCoef: cfg.nfmCoef,
      nfmInfCoef: cfg.nfmInfCoef,
    }, this.ws);
    if (!Number.isFinite(terms.total)) throw new UserError(`loss became ${terms.total} at step ${this.step + 1}; the run diverged (lower --lr or check the data)`);

    const lr = learningRate(cfg, this.baseLr, this.step);
    const gradNorm = k.optimizerStep(p, g, this.m, this.v, {
      lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weightDecay: cfg.weightDecay, step: this.step + 1, maxGradNorm: cfg.maxGradNorm,
    });

    this.stats.update(this.ws.enc.codes, B);
    this.step += 1;
    this.tokens += B;

    return {
      ...terms,
      step: this.step,
      phase: phaseIndex,
      activation: phase.activation,
      lr,
      gradNorm,
      fvu: terms.sse / batchVariance(x, B, d),
      deadFraction: this.stats.deadMask(this.deadWindow, this.deadMask) / F,
      dyingFraction: this.dyingCount / F,
      tokens: this.tokens,
    };
  }

  featureStats(): FeatureStats {
    return this.stats;
  }

  snapshot(): TrainerSnapshot {
    return {
      step: this.step,
      tokens: this.tokens,
      rng: this.rng.state(),
      lastRankStep: this.lastRankStep,
      order: this.order.slice(),
      dying: this.dying.slice(),
      capacityCredit: this.carried ? this.carried.credit.slice() : new Float64Array(this.F),
      batchCredit: this.carried ? this.carried.batchCredit : 0,
      stats: this.stats.toState(),
      m: this.m.map((a) => a.slice()),
      v: this.v.map((a) => a.slice()),
    };
  }

  /** Restore a snapshot taken by `snapshot()` (weights are restored separately, into params). */
  restore(s: TrainerSnapshot, opts: { optimizer: boolean } = { optimizer: true }): void {
    if (s.order.length !== this.F || s.dying.length !== this.F) throw new Error('snapshot width mismatch');
    this.stats = FeatureStats.fromState(s.stats);
    this.order = s.order.slice();
    this.dying = s.dying.slice();
    this.dyingCount = this.dying.reduce((a, b) => a + b, 0);
    if (!opts.optimizer) return;
    if (s.capacityCredit.length !== this.F) throw new Error('snapshot width mismatch');
    this.carried?.restore({ credit: s.capacityCredit, batchCredit: s.batchCredit });
    this.step = s.step;
    this.tokens = s.tokens;
    this.rng = new Rng(s.rng);
    this.lastRankStep = s.lastRankStep;
    for (let i = 0; i < this.m.length; i++) {
      this.m[i].set(s.m[i]);
      this.v[i].set(s.v[i]);
    }
  }
}

function identity(n: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  return a;
}

/** Floyd's algorithm: s distinct indices in [0, n), sorted (NFM feature sample, appendix C). */
export function sampleWithoutReplacement(rng: Rng, n: number, s: number): Int32Array {
  const chosen = new Set<number>();
  for (let j = n - s; j < n; j++) {
    const t = rng.int(j + 1);
    chosen.add(chosen.has(t) ? j : t);
  }
  return Int32Array.from([...chosen].sort((a, b) => a - b));
}

import type { KernelFactory, SaeKernels, SaeParams, Selection } from '../kernels/types.js';
import type { TrainingBackend, TrainingBackendFactory } from './backend.js';
import { cpuBackend, CpuTrainingBackend } from './backend-cpu.js';
import { createReferenceKernels } from '../kernels/reference.js';
import { Rng, type RngState } from '../util/rng.js';
import { UserError } from '../util/errors.js';
import { allocParams } from '../kernels/params.js';
import { initParams } from './params.js';
import type { LossTerms, Workspace } from './objective.js';
import { FeatureStats } from './density.js';
import { densityRanking, dyingFeatures } from './zipf.js';
import type { CarriedCapacities } from './capacities.js';
import { batchSelection, carriedCapacities } from './selection-policy.js';
import { allPhases, baseLearningRate, learningRate, phaseAt, type PhaseConfig, type TrainConfig } from './config.js';

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
 * One SAE training run's host-side policy and its step (SPEC §8). The numeric state (weights,
 * gradients, Adam moments, feature statistics, codes) lives in a TrainingBackend
 * (src/sae/backend.ts) that may keep it on a device; the trainer resolves what each step asks
 * for (the phase, the selection with Feature Choice's carried capacities, the aux losses, the NFM
 * sample, the learning rate) and, every rankInterval steps, re-ranks features by the backend's
 * density (Zipf capacities, dying set). Per step only the batch, O(F) small vectors and scalars
 * cross the seam; weights only at checkpoints and evaluation.
 */
export class Trainer {
  readonly cfg: TrainConfig;
  readonly d: number;
  readonly F: number;
  readonly backend: TrainingBackend;
  readonly baseLr: number;
  readonly deadWindow: number;
  private readonly phases: PhaseConfig[];
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

  /**
   * backend: where the state lives (default: the CPU backend over `kernels`, themselves the
   * reference kernels by default); give one or the other. params: initial weights, handed over to
   * the backend (see BackendInit.params).
   */
  constructor(opts: { cfg: TrainConfig; d: number; F: number; deadWindow: number; kernels?: KernelFactory; backend?: TrainingBackendFactory; params?: SaeParams }) {
    const { cfg, d, F } = opts;
    if (opts.kernels && opts.backend) throw new Error('Trainer: give kernels or a backend, not both');
    this.cfg = cfg;
    this.d = d;
    this.F = F;
    this.deadWindow = opts.deadWindow;
    this.phases = allPhases(cfg);
    const B = cfg.batchSize;
    const maxNnz = Math.max(...this.phases.map((ph) => (ph.activation === 'relu' ? B * Math.min(F, 64) : cfg.k * B)));
    const factory = opts.backend ?? cpuBackend(opts.kernels ?? createReferenceKernels);
    this.backend = factory({ d, F, maxB: B, maxNnz, auxK: this.auxK(), deadWindow: opts.deadWindow, densityEma: cfg.densityEma, params: opts.params });
    this.baseLr = baseLearningRate(cfg, F);
    this.rng = Rng.derive(cfg.seed, 'trainer');
    this.order = identity(F);
    this.dying = new Uint8Array(F);
    this.identityOrder = identity(F);
    this.capacity = new Int32Array(F);
    // credits start at zero and move only in Feature Choice phases: a switch from Mutual Choice starts from zero
    const fc = this.phases.some((ph) => ph.activation === 'feature');
    this.carried = fc && cfg.capacityRounding === 'carry' ? carriedCapacities(cfg, F, B) : null;
  }

  /**
   * The weights as they stand, in host memory: read-only, and stale after the next step (a device
   * backend copies them over on every read, so read at checkpoints and evaluation only).
   */
  get params(): SaeParams {
    return this.backend.readParams();
  }

  /** The CPU backend's kernels (bench/train.mjs times them); undefined on a device backend. */
  get kernels(): SaeKernels | undefined {
    return this.backend instanceof CpuTrainingBackend ? this.backend.kernels : undefined;
  }

  /** The CPU backend's scratch of the last step (bench/train.mjs reports aux sizes); undefined on a device backend. */
  get ws(): Workspace | undefined {
    return this.backend instanceof CpuTrainingBackend ? this.backend.ws : undefined;
  }

  /** Fresh weights (SPEC §4), b_dec from the first batch's mean when configured. */
  init(firstBatch?: Float32Array): void {
    const p = allocParams(this.d, this.F);
    initParams(p, this.cfg.seed, this.cfg.bDecInit === 'mean' && firstBatch ? { sample: firstBatch, n: this.cfg.batchSize } : undefined);
    this.backend.writeParams(p);
  }

  /** SPEC §7: k_aux = 512 by default, never more than F/2. */
  auxK(): number {
    return Math.max(1, Math.min(this.cfg.auxK, Math.floor(this.F / 2)));
  }

  phaseAt(step: number): { index: number; phase: PhaseConfig } {
    return phaseAt(this.cfg, step);
  }

  private selectionFor(phase: PhaseConfig, B: number): Selection {
    const fc = { order: this.order, byIndex: this.identityOrder, carried: this.carried, capacity: this.capacity };
    const selection = batchSelection(phase.activation, this.cfg, this.F, B, fc);
    if (!selection) throw new Error(`activation ${phase.activation} cannot be trained`);
    return selection;
  }

  /** Re-rank features by running density and recompute the dying set (definition 3.1). */
  private rerank(): void {
    const density = this.backend.readDensity();
    this.order = densityRanking(density);
    const dy = dyingFeatures(density, this.cfg.zipfAlpha, this.cfg.zipfBeta, this.order);
    this.setDying(dy.mask, dy.count);
    this.lastRankStep = this.step;
  }

  private setDying(mask: Uint8Array, count: number): void {
    this.dying = mask;
    this.dyingCount = count;
    this.backend.setDying(mask);
  }

  /** One optimiser step on a batch of B×d preprocessed activations. */
  trainStep(x: Float32Array): StepReport {
    const { cfg, F } = this;
    const B = cfg.batchSize;
    if (this.step > 0 && this.step - this.lastRankStep >= cfg.rankInterval) this.rerank();
    const { index: phaseIndex, phase } = this.phaseAt(this.step);

    const nfmOn = cfg.nfmCoef > 0 || cfg.nfmInfCoef > 0;
    const selection = this.selectionFor(phase, B);
    const nfmSample = nfmOn ? sampleWithoutReplacement(this.rng, F, Math.min(cfg.nfmSample, F)) : new Int32Array(0);
    const lr = learningRate(cfg, this.baseLr, this.step);
    const r = this.backend.step({
      x,
      B,
      selection,
      l1Coef: phase.activation === 'relu' ? cfg.l1Coef : 0,
      // aux_k applies while dead features exist (the backend's statistics); aux_zipf while the ranking finds dying ones
      auxK: phase.auxKCoef > 0 ? { k: this.auxK(), coef: phase.auxKCoef } : null,
      auxZipf: phase.auxZipfCoef > 0 && this.dyingCount > 0 ? { k: this.auxK(), coef: phase.auxZipfCoef } : null,
      nfmSample,
      nfmCoef: cfg.nfmCoef,
      nfmInfCoef: cfg.nfmInfCoef,
      optimizer: { lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weightDecay: cfg.weightDecay, step: this.step + 1, maxGradNorm: cfg.maxGradNorm },
    });
    const terms = r.terms;
    if (!r.applied || !Number.isFinite(terms.total)) throw new UserError(`loss became ${terms.total} at step ${this.step + 1}; the run diverged (lower --lr or check the data)`);

    this.step += 1;
    this.tokens += B;

    return {
      // the terms in LossTerms' order: metrics.jsonl keeps its key order
      total: terms.total,
      recon: terms.recon,
      l1: terms.l1,
      auxK: terms.auxK,
      auxZipf: terms.auxZipf,
      nfm: terms.nfm,
      nfmInf: terms.nfmInf,
      l0: terms.l0,
      sse: terms.sse,
      step: this.step,
      phase: phaseIndex,
      activation: phase.activation,
      lr,
      gradNorm: r.gradNorm,
      fvu: terms.sse / r.batchVariance,
      deadFraction: r.deadCount / F,
      dyingFraction: this.dyingCount / F,
      tokens: this.tokens,
    };
  }

  /** The feature statistics as they stand: a host copy (reports and summaries, not every step). */
  featureStats(): FeatureStats {
    return FeatureStats.fromState(this.backend.readStats());
  }

  /**
   * Everything besides the weights that an exact resume needs. moments: false leaves m and v empty
   * (for a selection at evaluation, which needs the ranking only: no F×d copies off the backend).
   */
  snapshot(opts: { moments: boolean } = { moments: true }): TrainerSnapshot {
    const { m, v } = opts.moments ? this.backend.readOptimizer() : { m: [], v: [] };
    return {
      step: this.step,
      tokens: this.tokens,
      rng: this.rng.state(),
      lastRankStep: this.lastRankStep,
      order: this.order.slice(),
      dying: this.dying.slice(),
      capacityCredit: this.carried ? this.carried.credit.slice() : new Float64Array(this.F),
      batchCredit: this.carried ? this.carried.batchCredit : 0,
      stats: this.backend.readStats(),
      m: m.map((a) => a.slice()),
      v: v.map((a) => a.slice()),
    };
  }

  /** Restore a snapshot taken by `snapshot()` (weights are restored separately, through the constructor's params). */
  restore(s: TrainerSnapshot, opts: { optimizer: boolean } = { optimizer: true }): void {
    if (s.order.length !== this.F || s.dying.length !== this.F) throw new Error('snapshot width mismatch');
    this.backend.writeStats(s.stats);
    this.order = s.order.slice();
    const dying = s.dying.slice();
    this.setDying(dying, dying.reduce((a, b) => a + b, 0));
    if (!opts.optimizer) return;
    if (s.capacityCredit.length !== this.F) throw new Error('snapshot width mismatch');
    this.carried?.restore({ credit: s.capacityCredit, batchCredit: s.batchCredit });
    this.step = s.step;
    this.tokens = s.tokens;
    this.rng = new Rng(s.rng);
    this.lastRankStep = s.lastRankStep;
    this.backend.writeOptimizer(s.m, s.v);
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

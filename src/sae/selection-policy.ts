/**
 * The one mapping from an activation to the kernels' batch Selection (SPEC §5). Training asks it
 * for each phase's batches and inference for the phase a checkpoint was last trained in, so a
 * checkpoint is evaluated with exactly the selection it was trained with (appendix B).
 */
import type { Selection } from '../kernels/types.js';
import { capacitiesByFeature, uniformCapacities, zipfCapacities } from './zipf.js';
import { CarriedCapacities, uniformShares, zipfShares } from './capacities.js';
import { featureCap, type Activation, type TrainConfig } from './config.js';

/** What Feature Choice carries from batch to batch; the other selections need none of it. */
export interface FeatureChoiceState {
  /** order[r] = feature of density rank r + 1: the ranking Zipf capacities follow */
  order: Int32Array;
  /** the identity ranking: uniform shares break their ties by feature index */
  byIndex: Int32Array;
  /** capacityRounding carry: the credits carried between batches; null under Algorithm 1's floor */
  carried: CarriedCapacities | null;
  /** where carried capacities are written */
  capacity: Int32Array;
}

/** SPEC §5 "Rounding": Feature Choice's shares of one batch of B tokens, carried over batches from zero credit. */
export function carriedCapacities(cfg: TrainConfig, F: number, B: number): CarriedCapacities {
  const mMax = featureCap(cfg, B);
  const shares = cfg.capacities === 'uniform' ? uniformShares(cfg.k, F, B, mMax) : zipfShares(cfg.k, F, B, cfg.zipfAlpha, cfg.zipfBeta, mMax);
  return new CarriedCapacities(shares, mMax);
}

/**
 * The selection of one batch of B tokens under `activation`; null for an activation with no batch
 * selection (jumprelu: its thresholds are the selection), for the caller to refuse in its words.
 */
export function batchSelection(activation: Activation, cfg: TrainConfig, F: number, B: number, fc: FeatureChoiceState): Selection | null {
  switch (activation) {
    case 'topk':
      return { kind: 'topk', k: cfg.k };
    case 'mutual':
    case 'batchtopk':
      return { kind: 'mutual', M: cfg.k * B };
    case 'relu':
      return { kind: 'relu' };
    case 'feature': {
      // SPEC §5 "Rounding": shares realised in expectation
      if (fc.carried) return { kind: 'feature', capacity: fc.carried.next(cfg.capacities === 'uniform' ? fc.byIndex : fc.order, fc.capacity) };
      if (cfg.capacities === 'uniform') return { kind: 'feature', capacity: uniformCapacities(cfg.k, B, F) };
      // SPEC §5 / algorithm 1: capacities by density rank, mapped onto features by the ranking in force
      const byRank = zipfCapacities(cfg.k, F, B, cfg.zipfAlpha, cfg.zipfBeta, featureCap(cfg, B));
      return { kind: 'feature', capacity: capacitiesByFeature(byRank, fc.order) };
    }
    default:
      return null;
  }
}

/** The identity ranking of F features. */
export function identityOrder(F: number): Int32Array {
  return Int32Array.from({ length: F }, (_, i) => i);
}

import { UserError } from '../util/errors.js';
import type { Preprocessing } from '../store/preprocess.js';
import { PRECISIONS, type Precision } from '../kernels/bf16.js';

/**
 * Training configuration: typed, defaulted and validated here and only here. CLI flags and
 * `--config` JSON files are both turned into a partial config and passed through `resolveConfig`,
 * so flags, files and defaults cannot disagree.
 */

export const ACTIVATIONS = ['relu', 'topk', 'batchtopk', 'mutual', 'feature', 'jumprelu'] as const;
export type Activation = (typeof ACTIVATIONS)[number];
export const TRAINABLE: readonly Activation[] = ['relu', 'topk', 'batchtopk', 'mutual', 'feature'];

export type Capacities = 'zipf' | 'uniform';
/** A value the toolkit derives (from the width, the run length, …) unless the user sets one. */
export type Auto = 'auto';
export type LrDecay = 'none' | 'linear' | 'cosine';

/** What may change between the phases of one run (SPEC §8 phased training). */
export interface PhaseConfig {
  activation: Activation;
  steps: number;
  auxKCoef: number;
  auxZipfCoef: number;
}

export interface TrainConfig {
  /** phase 1's activation (and the only one when `phases` is empty) */
  activation: Activation;
  /** d_sae; auto → expansion × d */
  width: number | Auto;
  expansion: number;
  /** mean active features per token; the batch budget is M = k·B (SPEC §5) */
  k: number;
  capacities: Capacities;
  /**
   * how Feature Choice shares become whole capacities (SPEC §5 "Rounding"): 'carry' realises each
   * share in expectation with a per-feature credit carried across batches, every batch using the
   * whole budget; 'floor' is Algorithm 1 as printed (wide SAEs get features of capacity 0)
   */
  capacityRounding: 'carry' | 'floor';
  zipfAlpha: number;
  zipfBeta: number;
  /** Feature Choice cap per feature per batch; auto → B (no cap) */
  mMax: number | Auto;
  /** recompute density ranks (Zipf capacities, dying set) every this many steps */
  rankInterval: number;
  densityEma: number;
  batchSize: number;
  /** phase 1's steps (and the only phase when `phases` is empty) */
  steps: number;
  /** later phases; phase 2 of the paper is {activation: 'feature', auxKCoef: 0, auxZipfCoef: 0} */
  phases: PhaseConfig[];
  /** auto → width-scaled 2e-4 / sqrt(F / 2^14) (Gao et al., SPEC §8) */
  lr: number | Auto;
  lrWarmupSteps: number;
  lrDecay: LrDecay;
  /** fraction of the total steps after which decay starts */
  lrDecayStart: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm: number;
  l1Coef: number;
  auxK: number;
  /** auto → 1/32 for TopK-style selections, 0 for relu and feature; resolved to a number by resolveConfig */
  auxKCoef: number | Auto;
  /** auto → 1/32 for mutual (the paper's phase 1), 0 otherwise (BatchTopK has none by default, SPEC §5) */
  auxZipfCoef: number | Auto;
  /** tokens without firing before a feature counts as dead; auto → min(10M, tokens of the run / 4) */
  deadWindow: number | Auto;
  nfmCoef: number;
  nfmInfCoef: number;
  nfmSample: number;
  bDecInit: 'zero' | 'mean';
  seed: number;
  /** shuffle-buffer size in rows; auto → 16 batches */
  shuffleWindow: number | Auto;
  checkpointEvery: number;
  logEvery: number;
  /** preprocessing the shards must carry (SPEC §3); 'any' accepts what the shards record */
  expectPreprocessing: Preprocessing | 'any';
  /**
   * the arithmetic of the encoder GEMM, and of the host LM when training from it (docs/precision.md);
   * the weights are fp32 either way, so a checkpoint evaluates at any precision, but a resumed run
   * keeps the one it started with
   */
  precision: Precision;
}

export const DEFAULTS: TrainConfig = {
  activation: 'topk',
  width: 'auto',
  expansion: 8,
  k: 32,
  capacities: 'zipf',
  capacityRounding: 'carry',
  zipfAlpha: 1.0,
  zipfBeta: 6.8,
  mMax: 'auto',
  rankInterval: 100,
  densityEma: 0.99,
  batchSize: 1536,
  steps: 10_000,
  phases: [],
  lr: 'auto',
  lrWarmupSteps: 0,
  lrDecay: 'linear',
  lrDecayStart: 0.8,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  weightDecay: 1e-5,
  maxGradNorm: 1.0,
  l1Coef: 5,
  auxK: 512,
  auxKCoef: 'auto',
  auxZipfCoef: 'auto',
  deadWindow: 'auto',
  nfmCoef: 0,
  nfmInfCoef: 0,
  nfmSample: 256,
  bDecInit: 'mean',
  seed: 0,
  shuffleWindow: 'auto',
  checkpointEvery: 1000,
  logEvery: 10,
  expectPreprocessing: 'any',
  precision: 'fp32',
};

type Kind = 'int' | 'num' | 'str' | 'phases';
const KINDS: Record<keyof TrainConfig, Kind> = {
  activation: 'str', width: 'int', expansion: 'num', k: 'int', capacities: 'str', capacityRounding: 'str', zipfAlpha: 'num', zipfBeta: 'num',
  mMax: 'int', rankInterval: 'int', densityEma: 'num', batchSize: 'int', steps: 'int', phases: 'phases', lr: 'num',
  lrWarmupSteps: 'int', lrDecay: 'str', lrDecayStart: 'num', beta1: 'num', beta2: 'num', eps: 'num', weightDecay: 'num',
  maxGradNorm: 'num', l1Coef: 'num', auxK: 'int', auxKCoef: 'num', auxZipfCoef: 'num', deadWindow: 'int', nfmCoef: 'num',
  nfmInfCoef: 'num', nfmSample: 'int', bDecInit: 'str', seed: 'int', shuffleWindow: 'int', checkpointEvery: 'int',
  logEvery: 'int', expectPreprocessing: 'str', precision: 'str',
};

/**
 * Keys whose default is derived ('auto'). An explicit value must be a real setting: 0 is never a
 * stand-in for the default (a user who types --lr 0 does not mean the width-scaled rate).
 */
export const AUTO_KEYS = ['width', 'lr', 'mMax', 'auxKCoef', 'auxZipfCoef', 'deadWindow', 'shuffleWindow'] as const satisfies ReadonlyArray<keyof TrainConfig>;
export const isAutoKey = (key: string): boolean => (AUTO_KEYS as readonly string[]).includes(key);

function bad(msg: string): never {
  throw new UserError(`config: ${msg}`);
}

function checkNumber(key: string, v: unknown, int: boolean, auto = false): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(`${key} must be a finite number${auto ? ' or "auto"' : ''}, got ${JSON.stringify(v)}`);
  if (int && !Number.isInteger(v)) bad(`${key} must be an integer, got ${v}`);
  return v;
}

function oneOf<T extends string>(key: string, v: unknown, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !allowed.includes(v as T)) bad(`${key} must be one of ${allowed.join(', ')}; got ${JSON.stringify(v)}`);
  return v as T;
}

/** An activation that training can use; jumprelu is reached through `sae export` instead. */
export function checkTrainable(v: unknown, key = 'activation'): Activation {
  if (v === 'jumprelu') bad(`${key} jumprelu is inference-only: train with ${TRAINABLE.join(', ')}, then calibrate thresholds with \`sae export\``);
  return oneOf(key, v, TRAINABLE);
}

function resolvePhase(i: number, raw: unknown, base: TrainConfig): PhaseConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad(`phases[${i}] must be an object`);
  const allowed = ['activation', 'steps', 'auxKCoef', 'auxZipfCoef'];
  for (const key of Object.keys(raw)) if (!allowed.includes(key)) bad(`unknown key phases[${i}].${key} (allowed: ${allowed.join(', ')})`);
  const r = raw as Record<string, unknown>;
  const ph: PhaseConfig = {
    activation: checkTrainable(r.activation ?? base.activation, `phases[${i}].activation`),
    steps: checkNumber(`phases[${i}].steps`, r.steps, true),
    auxKCoef: checkNumber(`phases[${i}].auxKCoef`, r.auxKCoef ?? 0, false),
    auxZipfCoef: checkNumber(`phases[${i}].auxZipfCoef`, r.auxZipfCoef ?? 0, false),
  };
  if (ph.steps < 1) bad(`phases[${i}].steps must be ≥ 1`);
  return ph;
}

/** Merge partial configs (later wins) over the defaults and validate the result. */
export function resolveConfig(...parts: Array<Record<string, unknown> | undefined>): TrainConfig {
  const merged: Record<string, unknown> = { ...DEFAULTS };
  for (const part of parts) {
    if (!part) continue;
    for (const [key, v] of Object.entries(part)) {
      if (v === undefined) continue;
      if (!Object.hasOwn(KINDS, key)) bad(`unknown key "${key}"`);
      merged[key] = v;
    }
  }
  const c = {} as Record<string, unknown>;
  for (const [key, kind] of Object.entries(KINDS)) {
    const v = merged[key];
    if (v === 'auto' && isAutoKey(key)) c[key] = v;
    else if (kind === 'int' || kind === 'num') c[key] = checkNumber(key, v, kind === 'int', isAutoKey(key));
    else c[key] = v;
  }
  const cfg = c as unknown as TrainConfig;
  checkTrainable(cfg.activation);
  oneOf('capacities', cfg.capacities, ['zipf', 'uniform']);
  oneOf('capacityRounding', cfg.capacityRounding, ['carry', 'floor']);
  oneOf('lrDecay', cfg.lrDecay, ['none', 'linear', 'cosine']);
  oneOf('bDecInit', cfg.bDecInit, ['zero', 'mean']);
  oneOf('expectPreprocessing', cfg.expectPreprocessing, ['any', 'center_unit_norm', 'none', 'dataset_scale']);
  oneOf('precision', cfg.precision, PRECISIONS);
  if (!Array.isArray(cfg.phases)) bad('phases must be an array');
  cfg.phases = (cfg.phases as unknown[]).map((ph, i) => resolvePhase(i, ph, cfg));
  const pos = (key: keyof TrainConfig) => {
    const v = cfg[key];
    if (v === 'auto') return;
    if (!((v as number) > 0)) bad(`${key} must be > 0${isAutoKey(key) ? ' (omit it, or give "auto", for the default)' : ''}, got ${v}`);
  };
  const nonneg = (key: keyof TrainConfig) => {
    const v = cfg[key];
    if (v === 'auto') return;
    if (!((v as number) >= 0)) bad(`${key} must be ≥ 0${isAutoKey(key) ? ' (omit it, or give "auto", for the default)' : ''}, got ${v}`);
  };
  (['batchSize', 'steps', 'expansion', 'zipfAlpha', 'rankInterval', 'logEvery', 'checkpointEvery', 'auxK', 'nfmSample', 'width', 'lr', 'mMax', 'deadWindow', 'shuffleWindow'] as const).forEach(pos);
  (['lrWarmupSteps', 'weightDecay', 'maxGradNorm', 'l1Coef', 'auxKCoef', 'auxZipfCoef', 'nfmCoef', 'nfmInfCoef', 'seed'] as const).forEach(nonneg);
  // Feature Choice cannot leave a feature dead, and the paper trains it without auxiliary losses
  if (cfg.auxKCoef === 'auto') cfg.auxKCoef = cfg.activation === 'relu' || cfg.activation === 'feature' ? 0 : 1 / 32;
  if (cfg.auxZipfCoef === 'auto') cfg.auxZipfCoef = cfg.activation === 'mutual' ? 1 / 32 : 0;
  if (cfg.k < 1) bad(`k must be ≥ 1, got ${cfg.k}`);
  if (cfg.zipfBeta <= -1) bad(`zipfBeta must be > -1, got ${cfg.zipfBeta}`);
  if (!(cfg.densityEma >= 0 && cfg.densityEma < 1)) bad(`densityEma must be in [0, 1), got ${cfg.densityEma}`);
  if (!(cfg.beta1 >= 0 && cfg.beta1 < 1) || !(cfg.beta2 >= 0 && cfg.beta2 < 1)) bad('beta1 and beta2 must be in [0, 1)');
  if (!(cfg.eps > 0)) bad(`eps must be > 0, got ${cfg.eps}`);
  if (!(cfg.lrDecayStart >= 0 && cfg.lrDecayStart <= 1)) bad(`lrDecayStart must be in [0, 1], got ${cfg.lrDecayStart}`);
  for (const ph of allPhases(cfg)) checkTrainable(ph.activation);
  return cfg;
}

/** Checks that need the input width d (known once the shards are opened). */
export function resolveWidth(cfg: TrainConfig, d: number): number {
  const F = cfg.width === 'auto' ? Math.round(cfg.expansion * d) : cfg.width;
  if (F < 2) bad(`width must be ≥ 2, got ${F}`);
  // typed arrays hold at most 2^31 − 1 elements: W (F×d) and the affinities of a batch (B×F)
  if (F * d > 2 ** 31 - 1 || cfg.batchSize * F > 2 ** 31 - 1) bad(`width ${F} is too large for d=${d} and batch ${cfg.batchSize}`);
  if (cfg.k >= F) bad(`k must be < width (k=${cfg.k}, width=${F})`);
  return F;
}

/** SPEC §8: the learning rate scaled with width as Gao et al. recommend (2e-4 at 2^14 latents). */
export function defaultLr(F: number): number {
  return 2e-4 / Math.sqrt(F / 2 ** 14);
}

/** The configured learning rate, or the width-scaled default. */
export function baseLearningRate(cfg: TrainConfig, F: number): number {
  return cfg.lr === 'auto' ? defaultLr(F) : cfg.lr;
}

/** Feature Choice's per-feature cap m_max for a batch of B tokens (SPEC §5: B when not set). */
export function featureCap(cfg: TrainConfig, B: number): number {
  return cfg.mMax === 'auto' ? B : Math.min(cfg.mMax, B);
}

/** Shuffle-buffer rows: the configured number, or 16 batches. */
export function shuffleWindowRows(cfg: TrainConfig): number {
  return cfg.shuffleWindow === 'auto' ? 16 * cfg.batchSize : cfg.shuffleWindow;
}

/**
 * The paper's phase 2 (SPEC §8): Feature Choice fine-tune without auxiliary losses, continuing from
 * phase 1's weights. The one definition behind --finetune-steps, the demo and --append-phase.
 */
export function finetunePhase(steps: number, activation: Activation = 'feature'): PhaseConfig {
  return { activation, steps, auxKCoef: 0, auxZipfCoef: 0 };
}

export function allPhases(cfg: TrainConfig): PhaseConfig[] {
  // resolveConfig has replaced 'auto' aux coefficients by numbers
  return [{ activation: cfg.activation, steps: cfg.steps, auxKCoef: cfg.auxKCoef as number, auxZipfCoef: cfg.auxZipfCoef as number }, ...cfg.phases];
}

export function totalSteps(cfg: TrainConfig): number {
  return allPhases(cfg).reduce((s, p) => s + p.steps, 0);
}

/** The phase that global 0-based step t belongs to, with the step it starts at. */
export function phaseAt(cfg: TrainConfig, t: number): { index: number; start: number; phase: PhaseConfig } {
  const phases = allPhases(cfg);
  let start = 0;
  for (let i = 0; i < phases.length; i++) {
    if (t < start + phases[i].steps || i === phases.length - 1) return { index: i, start, phase: phases[i] };
    start += phases[i].steps;
  }
  throw new Error('unreachable');
}

/** The phase in force after `step` completed steps (a checkpoint's weights come from it). */
export function phaseOfStep(cfg: TrainConfig, step: number): PhaseConfig {
  return phaseAt(cfg, Math.max(0, step - 1)).phase;
}

/**
 * Learning rate at global 0-based step t. Each phase has its own schedule: linear warm-up, constant,
 * then decay to 0 over the phase's tail. A fine-tune phase therefore gets the same schedule whether
 * it was configured up front or added by a later `--resume --activation …`.
 */
export function learningRate(cfg: TrainConfig, base: number, t: number): number {
  const { start, phase } = phaseAt(cfg, t);
  const total = phase.steps;
  const u = t - start;
  let lr = base;
  if (cfg.lrWarmupSteps > 0 && u < cfg.lrWarmupSteps) lr *= (u + 1) / cfg.lrWarmupSteps;
  const decayFrom = Math.floor(cfg.lrDecayStart * total);
  if (cfg.lrDecay !== 'none' && u >= decayFrom && total > decayFrom) {
    const frac = (u - decayFrom) / (total - decayFrom);
    lr *= cfg.lrDecay === 'linear' ? 1 - frac : 0.5 * (1 + Math.cos(Math.PI * frac));
  }
  return lr;
}

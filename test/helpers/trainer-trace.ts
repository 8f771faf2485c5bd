/**
 * A trace of the Trainer for the golden test (test/trainer-golden.test.ts): every number of every
 * step report, a hash of the weights after every step, and hashes of the whole resumable state at
 * the end, for a set of small runs that reach every code path the trainer has (each selection,
 * aux_k and aux_zipf with dead and dying features, NFM, L1, clipping, warm-up, Zipf and uniform
 * capacities with both roundings and a cap, the MC→FC phase switch, exact resume in either phase
 * and --init-from's stats-only restore).
 *
 * It touches the Trainer only through the API it had before the training-backend refactor
 * (constructor with kernels and params, init, trainStep, params, snapshot, restore,
 * featureStats), so the same helper recorded the expected values on the old code and checks the
 * new code against them. JSON numbers round-trip exactly, so the comparison is bit for bit.
 */
import { createHash } from 'node:crypto';
import type { KernelFactory, SaeParams } from '../../src/kernels/types.js';
import type { TrainingBackendFactory } from '../../src/sae/backend.js';
import { resolveConfig } from '../../src/sae/config.js';
import { Trainer, type TrainerSnapshot } from '../../src/sae/trainer.js';
import { Rng } from '../../src/util/rng.js';

const d = 16;
const F = 64;
const B = 48;
/** the runs' sizes: input dimension, width, batch rows */
export const DIMS = { d, F, B } as const;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type Trace = Record<string, Json>;

/** The runs: name → config (over a shared base) and how many steps. */
const BASE = { k: 4, width: F, batchSize: B, seed: 11, rankInterval: 2, lr: 1e-2, auxK: 8 };
export const SCENARIOS: Record<string, { config: Record<string, unknown>; steps: number }> = {
  topk: { config: { activation: 'topk', auxKCoef: 1 / 32, nfmCoef: 0.01, nfmInfCoef: 0.02, nfmSample: 8 }, steps: 7 },
  batchtopk: { config: { activation: 'batchtopk', auxKCoef: 1 / 32, auxZipfCoef: 1 / 16 }, steps: 7 },
  // auto aux coefficients (both 1/32), clipping that bites, warm-up
  mutual: { config: { activation: 'mutual', maxGradNorm: 0.05, lrWarmupSteps: 3, nfmCoef: 0.01, nfmSample: 8 }, steps: 8 },
  'feature-zipf-carry': { config: { activation: 'feature', auxZipfCoef: 1 / 32 }, steps: 8 },
  'feature-zipf-floor-capped': { config: { activation: 'feature', capacityRounding: 'floor', mMax: 6 }, steps: 6 },
  'feature-uniform-carry': { config: { activation: 'feature', capacities: 'uniform', auxKCoef: 1 / 32 }, steps: 6 },
  relu: { config: { activation: 'relu', l1Coef: 0.5, bDecInit: 'zero' }, steps: 6 },
  'mc-fc': { config: { activation: 'mutual', steps: 4, phases: [{ activation: 'feature', steps: 4 }], lrDecayStart: 0.5 }, steps: 8 },
};

/** Batches with an offset (so b_dec's mean init matters) and uneven scales (so features die). */
export function batches(seed: number, n: number): Float32Array[] {
  const rng = new Rng(seed);
  const scale = Float32Array.from({ length: d }, (_, i) => 0.2 + (i % 5));
  return Array.from({ length: n }, () => {
    const x = new Float32Array(B * d);
    for (let b = 0; b < B; b++) for (let i = 0; i < d; i++) x[b * d + i] = 0.3 + scale[i] * rng.normal();
    return x;
  });
}

function hash(...arrays: ArrayBufferView[]): string {
  const h = createHash('sha256');
  for (const a of arrays) h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  return h.digest('hex').slice(0, 24);
}

const paramsHash = (p: SaeParams) => hash(p.WencT, p.bEnc, p.Wdec, p.bDec);

function copyParams(p: SaeParams): SaeParams {
  return { d: p.d, F: p.F, WencT: p.WencT.slice(), bEnc: p.bEnc.slice(), Wdec: p.Wdec.slice(), bDec: p.bDec.slice() };
}

function stateTrace(t: Trainer): Trace {
  const s: TrainerSnapshot = t.snapshot();
  return {
    params: paramsHash(t.params),
    step: s.step,
    tokens: s.tokens,
    rng: s.rng,
    lastRankStep: s.lastRankStep,
    order: hash(s.order),
    dying: hash(s.dying),
    capacityCredit: hash(s.capacityCredit),
    batchCredit: s.batchCredit,
    stats: createHash('sha256').update(JSON.stringify(s.stats)).digest('hex').slice(0, 24),
    m: hash(...s.m),
    v: hash(...s.v),
    cumulativeCounts: hash(t.featureStats().cumulativeCounts),
  };
}

function steps(t: Trainer, xs: Float32Array[]): Trace[] {
  return xs.map((x) => {
    const r = t.trainStep(x) as unknown as Record<string, Json>;
    const keys = Object.keys(r).sort();
    return { ...Object.fromEntries(keys.map((k) => [k, r[k]])), params: paramsHash(t.params) };
  });
}

/** What a Trainer runs on: kernels (then the CPU backend over them) or a backend. */
export type Source = { kernels: KernelFactory } | { backend: TrainingBackendFactory };

/** A Trainer for one of the runs (exported for test/backend.test.ts and the GPU tests). */
export function trainer(config: Record<string, unknown>, steps: number, source: Source | KernelFactory, params?: SaeParams): Trainer {
  const cfg = resolveConfig({ ...BASE, steps, ...config });
  return new Trainer({ cfg, d, F, deadWindow: B, ...(typeof source === 'function' ? { kernels: source } : source), params });
}

/** The whole trace for one kernel implementation (or backend). */
export function recordTrace(kernels: KernelFactory | Source): Trace {
  const out: Trace = {};
  for (const [name, { config, steps: n }] of Object.entries(SCENARIOS)) {
    const xs = batches(5, n);
    const t = trainer(config, n, kernels);
    t.init(xs[0]);
    out[name] = { init: paramsHash(t.params), steps: steps(t, xs), end: stateTrace(t) };
  }

  // exact resume of the MC→FC run, cut in phase 1 (step 3) and in phase 2 (step 6): the resumed
  // trace must equal the tail of 'mc-fc' above, and is recorded on its own as well
  const mcfc = SCENARIOS['mc-fc'];
  for (const cut of [3, 6]) {
    const xs = batches(5, mcfc.steps);
    const first = trainer(mcfc.config, mcfc.steps, kernels);
    first.init(xs[0]);
    steps(first, xs.slice(0, cut));
    const snap = first.snapshot();
    const second = trainer(mcfc.config, mcfc.steps, kernels, copyParams(first.params));
    second.restore(snap);
    out[`mc-fc-resumed-at-${cut}`] = { steps: steps(second, xs.slice(cut)), end: stateTrace(second) };
  }

  // --init-from: a Mutual Choice run's weights and density statistics, a fresh optimiser and step
  {
    const xs = batches(6, 8);
    const src = trainer({ activation: 'mutual' }, 4, kernels);
    src.init(xs[0]);
    steps(src, xs.slice(0, 4));
    const next = trainer({ activation: 'feature', auxZipfCoef: 1 / 32 }, 4, kernels, copyParams(src.params));
    next.restore(src.snapshot(), { optimizer: false });
    out['init-from'] = { steps: steps(next, xs.slice(4)), end: stateTrace(next) };
  }
  return out;
}

import { Flags } from '@oclif/core';
import { isAutoKey, type TrainConfig } from '../sae/config.js';
import { UserError } from '../util/errors.js';
import { KERNEL_NAMES } from '../kernels/index.js';
import { PRECISIONS } from '../kernels/bf16.js';

/** One wording of --precision for every command that has it (the shared flag and train's config flag). */
const PRECISION = 'fp32 | bf16: bf16 = operands of the big GEMMs (the LM’s linear layers and unembedding, the SAE encoder) rounded to bf16, fp32 accumulation; see docs/precision.md';

/**
 * CLI flags for the training config, generated from one table so that every config key has
 * exactly one flag, named in kebab-case. Values are validated by resolveConfig, not here; a key with
 * a fixed set of values also lists them, so that --help shows them and a typo fails as for any flag.
 */
type Kind = 'int' | 'num' | 'str';
const TABLE: Array<[keyof TrainConfig, Kind, string, options?: readonly string[]]> = [
  ['activation', 'str', 'relu | topk | batchtopk | mutual | feature (default topk; jumprelu is inference-only)'],
  ['width', 'int', 'number of SAE features F (default auto: expansion × d)'],
  ['expansion', 'num', 'F = expansion × d when --width is not given (default 8)'],
  ['k', 'int', 'mean active features per token; batch budget M = k·B (default 32)'],
  ['capacities', 'str', 'Feature Choice capacities: zipf | uniform (default zipf)'],
  ['capacityRounding', 'str', 'Feature Choice rounding: carry (shares kept in expectation) | floor (Algorithm 1 as printed) (default carry)'],
  ['zipfAlpha', 'num', 'Zipf exponent α (default 1.0)'],
  ['zipfBeta', 'num', 'Zipf bias β (default 6.8)'],
  ['mMax', 'int', 'Feature Choice cap on tokens per feature per batch (default auto: B, no cap)'],
  ['rankInterval', 'int', 'steps between density re-rankings (default 100)'],
  ['densityEma', 'num', 'EMA decay of running feature densities (default 0.99)'],
  ['batchSize', 'int', 'tokens per batch B (default 1536)'],
  ['steps', 'int', 'optimiser steps of phase 1 (default 10000)'],
  ['lr', 'num', 'learning rate (default auto: 2e-4/sqrt(F/2^14))'],
  ['lrWarmupSteps', 'int', 'linear warm-up steps (default 0)'],
  ['lrDecay', 'str', 'none | linear | cosine over the tail (default linear)'],
  ['lrDecayStart', 'num', 'fraction of the run after which decay starts (default 0.8)'],
  ['beta1', 'num', 'Adam β₁ (default 0.9)'],
  ['beta2', 'num', 'Adam β₂ (default 0.999)'],
  ['eps', 'num', 'Adam ε (default 1e-8)'],
  ['weightDecay', 'num', 'decoupled weight decay on W_enc, W_dec (default 1e-5)'],
  ['maxGradNorm', 'num', 'gradient-norm clip, 0 = off (default 1.0)'],
  ['l1Coef', 'num', 'λ₁ of the relu SAE (default 5)'],
  ['auxK', 'int', 'k_aux of aux_k / aux_zipf (default 512, at most F/2)'],
  ['auxKCoef', 'num', 'aux_k coefficient, 0 = off (default auto: 1/32; 0 for relu and feature)'],
  ['auxZipfCoef', 'num', 'aux_zipf coefficient, 0 = off (default auto: 1/32 for mutual, else 0)'],
  ['deadWindow', 'int', 'tokens without firing before a feature is dead (default auto: min(10M, run/4))'],
  ['nfmCoef', 'num', 'nfm_loss coefficient (default 0)'],
  ['nfmInfCoef', 'num', 'nfm_inf_loss coefficient (default 0)'],
  ['nfmSample', 'int', 'features sampled per step for the NFM losses (default 256)'],
  ['bDecInit', 'str', 'zero | mean (default mean of the first batch)'],
  ['seed', 'int', 'random seed (default 0)'],
  ['shuffleWindow', 'int', 'shuffle-buffer rows (default auto: 16 batches)'],
  ['checkpointEvery', 'int', 'steps between checkpoints (default 1000)'],
  ['logEvery', 'int', 'steps between metrics lines (default 10)'],
  ['expectPreprocessing', 'str', 'require shards with this preprocessing: center_unit_norm | none | dataset_scale | any'],
  // one key of the config (a --config file may set it, --resume compares it), so no default here:
  // an absent flag must leave a resumed run's recorded precision in force
  ['precision', 'str', `${PRECISION}; with --model the LM computes at it too (default fp32; with --resume the run's)`, PRECISIONS],
];

/** Flags that several commands share, described once. */
export const sharedFlags = {
  hook: Flags.string({
    description: 'the hook a foreign SAE (SAELens, sparsify) reads, where its config does not name one; refused when it names another',
  }),
  'allow-no-manifest': Flags.boolean({
    description: 'read a --data folder of .parquet files that has no manifest.json (a hand-made set); without it such a folder counts as an unfinished write and is refused',
  }),
  kernels: Flags.string({
    description: 'hot-path implementation: auto (native when built, else reference) | reference | native | cuda (NVIDIA GPU; not available yet: fails with what is missing, see docs/gpu.md)',
    default: 'auto',
    options: [...KERNEL_NAMES],
  }),
  precision: Flags.string({ description: PRECISION, default: 'fp32', options: [...PRECISIONS] }),
};

export const flagName = (key: string): string => key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

// Numbers are parsed here and range-checked by resolveConfig, so a flag and a config-file key
// are held to the same rules.
export const configFlags = Object.fromEntries(
  TABLE.map(([key, kind, description, options]) => [
    flagName(key),
    kind === 'str'
      ? Flags.string({ description, ...(options ? { options: [...options] } : {}) })
      : Flags.custom<number | 'auto'>({ description, parse: async (s) => parseNumber(s, flagName(key), kind === 'int', isAutoKey(key)) })(),
  ]),
);

function parseNumber(s: string, name: string, int: boolean, auto: boolean): number | 'auto' {
  if (auto && s === 'auto') return 'auto';
  const v = Number(s);
  const what = int ? 'a whole number' : 'a number';
  if (s.trim() === '' || !Number.isFinite(v) || (int && !Number.isInteger(v))) throw new UserError(`--${name} expects ${what}${auto ? ' or auto' : ''}, got "${s}"`);
  return v;
}

/** Flags given on the command line, as a partial config (unset flags are absent). */
export function flagsToConfig(flags: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key] of TABLE) {
    const v = flags[flagName(key)];
    if (v !== undefined) out[key] = v;
  }
  return out;
}

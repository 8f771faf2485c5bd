import { Flags } from '@oclif/core';
import type { TrainConfig } from '../sae/config.js';
import { UserError } from '../util/errors.js';

/**
 * CLI flags for the training config, generated from one table so that every config key has
 * exactly one flag, named in kebab-case. Values are validated by resolveConfig, not here.
 */
type Kind = 'int' | 'num' | 'str';
const TABLE: Array<[keyof TrainConfig, Kind, string]> = [
  ['activation', 'str', 'relu | topk | batchtopk | mutual | feature (jumprelu is inference-only)'],
  ['width', 'int', 'number of SAE features F (default: expansion × d)'],
  ['expansion', 'num', 'F = expansion × d when --width is not given (default 8)'],
  ['k', 'int', 'mean active features per token; batch budget M = k·B (default 32)'],
  ['capacities', 'str', 'Feature Choice capacities: zipf | uniform (default zipf)'],
  ['capacityRounding', 'str', 'Feature Choice rounding: carry (shares kept in expectation) | floor (Algorithm 1 as printed) (default carry)'],
  ['zipfAlpha', 'num', 'Zipf exponent α (default 1.0)'],
  ['zipfBeta', 'num', 'Zipf bias β (default 6.8)'],
  ['mMax', 'int', 'Feature Choice cap per feature (default B)'],
  ['rankInterval', 'int', 'steps between density re-rankings (default 100)'],
  ['densityEma', 'num', 'EMA decay of running feature densities (default 0.99)'],
  ['batchSize', 'int', 'tokens per batch B (default 1536)'],
  ['steps', 'int', 'optimiser steps of phase 1 (default 10000)'],
  ['lr', 'num', 'learning rate (default 2e-4/sqrt(F/2^14))'],
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
  ['auxKCoef', 'num', 'aux_k coefficient (default 1/32; 0 for relu)'],
  ['auxZipfCoef', 'num', 'aux_zipf coefficient (default 1/32 for mutual, else 0)'],
  ['deadWindow', 'int', 'tokens without firing before a feature is dead (default min(10M, run/4))'],
  ['nfmCoef', 'num', 'nfm_loss coefficient (default 0)'],
  ['nfmInfCoef', 'num', 'nfm_inf_loss coefficient (default 0)'],
  ['nfmSample', 'int', 'features sampled per step for the NFM losses (default 256)'],
  ['bDecInit', 'str', 'zero | mean (default mean of the first batch)'],
  ['seed', 'int', 'random seed (default 0)'],
  ['shuffleWindow', 'int', 'shuffle-buffer rows (default 16 batches)'],
  ['checkpointEvery', 'int', 'steps between checkpoints (default 1000)'],
  ['logEvery', 'int', 'steps between metrics lines (default 10)'],
  ['expectPreprocessing', 'str', 'require shards with this preprocessing: center_unit_norm | none | dataset_scale | any'],
];

export const flagName = (key: string): string => key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

export const configFlags = Object.fromEntries(
  TABLE.map(([key, kind, description]) => [
    flagName(key),
    kind === 'str' ? Flags.string({ description }) : kind === 'int' ? Flags.integer({ description }) : Flags.custom<number>({ description, parse: async (s) => parseNumber(s, flagName(key)) })(),
  ]),
);

function parseNumber(s: string, name: string): number {
  const v = Number(s);
  if (s.trim() === '' || !Number.isFinite(v)) throw new UserError(`--${name} expects a number, got "${s}"`);
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

import { describe, expect, it } from 'vitest';
import { resolveConfig, resolveWidth, DEFAULTS } from '../src/sae/config.js';
import { UserError } from '../src/util/errors.js';
import { resumeConfig } from '../src/sae/train.js';

function message(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    expect((e as Error).message).not.toContain('\n');
    return (e as Error).message;
  }
  throw new Error('expected a UserError');
}

describe('training config', () => {
  it('fills defaults from SPEC §8 (AdamW, wd 1e-5, batch 1536)', () => {
    const c = resolveConfig({});
    expect(c.batchSize).toBe(1536);
    expect(c.weightDecay).toBe(1e-5);
    expect(c.beta1).toBe(0.9);
    expect(c.beta2).toBe(0.999);
  });

  it('turns aux_zipf on by default only for mutual, aux_k for every TopK-style selection', () => {
    expect(resolveConfig({ activation: 'mutual' }).auxZipfCoef).toBe(1 / 32);
    expect(resolveConfig({ activation: 'batchtopk' }).auxZipfCoef).toBe(0);
    expect(resolveConfig({ activation: 'topk' }).auxKCoef).toBe(1 / 32);
    expect(resolveConfig({ activation: 'relu' }).auxKCoef).toBe(0);
  });

  it('rejects unknown keys', () => {
    expect(message(() => resolveConfig({ lerning_rate: 1 }))).toMatch(/unknown key "lerning_rate"/);
  });

  it('rejects an unknown activation', () => {
    expect(message(() => resolveConfig({ activation: 'softmax' }))).toMatch(/activation must be one of/);
  });

  it('rejects training the inference-only jumprelu', () => {
    expect(message(() => resolveConfig({ activation: 'jumprelu' }))).toMatch(/inference-only/);
  });

  it('rejects k < 1 and k ≥ F', () => {
    expect(message(() => resolveConfig({ k: 0 }))).toMatch(/k must be ≥ 1/);
    expect(message(() => resolveWidth(resolveConfig({ k: 64, width: 64 }), 8))).toMatch(/k must be < width/);
  });

  it('rejects m_max < 1', () => {
    expect(message(() => resolveConfig({ mMax: -1 }))).toMatch(/mMax/);
  });

  it('rejects non-numbers and non-integers', () => {
    expect(message(() => resolveConfig({ steps: 'many' }))).toMatch(/steps must be a finite number/);
    expect(message(() => resolveConfig({ batchSize: 1.5 }))).toMatch(/batchSize must be an integer/);
  });

  it('rejects unknown keys inside phases', () => {
    expect(message(() => resolveConfig({ phases: [{ activation: 'feature', steps: 5, lr: 1 }] }))).toMatch(/phases\[0\]\.lr/);
  });

  it('lets later parts override earlier ones (file, then flags)', () => {
    expect(resolveConfig({ k: 8 }, { k: 16 }).k).toBe(16);
    expect(resolveConfig({ k: 8 }, { k: undefined }).k).toBe(8);
  });
});

describe('resume config', () => {
  const saved = resolveConfig({ activation: 'mutual', steps: 100 });

  it('allows extending the step budget', () => {
    expect(resumeConfig(saved, { steps: 200 }).steps).toBe(200);
  });

  it('adds a phase when the activation changes (MC → FC as a second command)', () => {
    const c = resumeConfig(saved, { activation: 'feature', steps: 50 });
    expect(c.phases).toEqual([{ activation: 'feature', steps: 50, auxKCoef: 0, auxZipfCoef: 0 }]);
    expect(c.steps).toBe(100);
  });

  it('refuses to change anything else', () => {
    expect(message(() => resumeConfig(saved, { k: DEFAULTS.k + 1 }))).toMatch(/cannot change k when resuming/);
  });
});

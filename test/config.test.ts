import { describe, expect, it } from 'vitest';
import { resolveConfig, resolveWidth, DEFAULTS, allPhases, baseLearningRate, finetunePhase, type TrainConfig } from '../src/sae/config.js';
import { checkpointConfig } from '../src/sae/checkpoint.js';
import { UserError } from '../src/util/errors.js';
import { resumeConfig } from '../src/sae/resume.js';

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
    const m = message(() => resolveConfig({ activation: 'softmax' }));
    expect(m).toMatch(/activation must be one of relu, topk, batchtopk, mutual, feature;/);
  });

  it('rejects training the inference-only jumprelu', () => {
    const m = message(() => resolveConfig({ activation: 'jumprelu' }));
    expect(m).toMatch(/inference-only/);
    expect(m).toMatch(/`sae export`/);
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
  const phased = resolveConfig({ activation: 'mutual', steps: 100, phases: [finetunePhase(40)] });

  it('continues the recorded plan when the original command is repeated', () => {
    const c = resumeConfig(phased, { activation: 'mutual', steps: 100, phases: [finetunePhase(40)] }, 50);
    expect(allPhases(c)).toEqual(allPhases(phased));
  });

  it('keeps recorded later phases when only phase 1 is repeated', () => {
    expect(allPhases(resumeConfig(phased, { activation: 'mutual', steps: 100 }, 50))).toEqual(allPhases(phased));
  });

  it('reads --steps as phase 1’s steps, as its help says, and lengthens an unfinished phase 1', () => {
    const c = resumeConfig(phased, { steps: 150 }, 50);
    expect(c.steps).toBe(150);
    expect(c.phases).toEqual([finetunePhase(40)]);
    expect(resumeConfig(saved, { steps: 200 }, 100).steps).toBe(200);
  });

  it('refuses to change the steps of a finished phase or to end a phase before the checkpoint', () => {
    expect(message(() => resumeConfig(phased, { steps: 150 }, 120))).toMatch(/phase 1 \(mutual\) finished at step 100/);
    expect(message(() => resumeConfig(saved, { steps: 40 }, 60))).toMatch(/phase 1 would end at step 40, before the checkpoint's step 60/);
  });

  it('refuses another activation for a recorded phase, pointing at --append-phase', () => {
    const m = message(() => resumeConfig(saved, { activation: 'feature', steps: 50 }, 100));
    expect(m).toMatch(/phase 1 of the checkpoint's run is mutual, this command asks for feature/);
    expect(m).toMatch(/--append-phase feature:STEPS/);
  });

  it('appends phases on request: the MC → FC fine-tune as a second command', () => {
    const c = resumeConfig(saved, {}, 100, [finetunePhase(50)]);
    expect(c.phases).toEqual([{ activation: 'feature', steps: 50, auxKCoef: 0, auxZipfCoef: 0 }]);
    expect(c.steps).toBe(100);
    expect(resumeConfig(saved, { phases: [finetunePhase(50)] }, 100).phases).toEqual([finetunePhase(50)]);
  });

  it('refuses a plan that drops a recorded phase', () => {
    expect(message(() => resumeConfig(phased, { phases: [] }, 50))).toMatch(/has 2 phases but this command describes 1/);
  });

  it('refuses to change anything else', () => {
    expect(message(() => resumeConfig(saved, { k: DEFAULTS.k + 1 }, 10))).toMatch(/cannot change k when resuming/);
  });

  it('accepts "auto" for a setting that was auto-derived', () => {
    expect(() => resumeConfig(saved, { auxKCoef: 'auto', lr: 'auto' }, 10)).not.toThrow();
  });
});

describe('auto defaults', () => {
  it('derives width and learning rate when they are absent or "auto"', () => {
    expect(resolveWidth(resolveConfig({}), 16)).toBe(8 * 16);
    expect(resolveWidth(resolveConfig({ width: 'auto', expansion: 4 }), 16)).toBe(64);
    expect(baseLearningRate(resolveConfig({ lr: 'auto' }), 2 ** 14)).toBeCloseTo(2e-4, 12);
  });

  it('rejects zero and negative values instead of reading them as the default', () => {
    for (const key of ['width', 'lr', 'mMax', 'deadWindow', 'shuffleWindow']) {
      expect(message(() => resolveConfig({ [key]: 0 }))).toMatch(new RegExp(`${key} must be > 0 \\(omit it, or give "auto"`));
      expect(message(() => resolveConfig({ [key]: -1 }))).toMatch(new RegExp(`${key} must be > 0`));
    }
  });

  it('reads checkpoints written when 0 stood for the default', () => {
    const cfg = { ...resolveConfig({}), width: 0, lr: 0 } as unknown as TrainConfig;
    const c = checkpointConfig({ dir: 'old', cfg: { sae_train: { config: cfg } } } as never);
    expect(c.width).toBe('auto');
    expect(c.lr).toBe('auto');
  });
});

import { UserError } from '../util/errors.js';
import { allPhases, resolveConfig, totalSteps, type PhaseConfig, type TrainConfig } from './config.js';

/** Keys a resumed run may change: they steer logging, not the numbers. */
const RESUMABLE_CHANGES = new Set(['logEvery', 'checkpointEvery']);
/** Keys that make up the phase plan, compared phase by phase rather than as values. */
const PLAN_KEYS = new Set(['activation', 'steps', 'phases']);

/**
 * The config of a resumed run. The request (flags and config file, as given) is read as a phase plan
 * — phase 1 from --activation/--steps, later phases from --finetune-steps or `phases`, each
 * defaulting to the checkpoint's — and compared with the plan the checkpoint records:
 * - the same plan continues (rerunning the original command with --resume just works);
 * - a phase's step count may change while that phase has not finished, never so that it would
 *   end before the checkpoint's step;
 * - phases can be appended (`append`, from --append-phase or --finetune-steps on a one-phase run);
 * - anything else (another activation for an existing phase, a dropped phase, other settings) is
 *   refused with what differs.
 */
export function resumeConfig(saved: TrainConfig, overrides: Record<string, unknown>, step: number, append: PhaseConfig[] = []): TrainConfig {
  const savedPlan = allPhases(saved);
  const req = resolveConfig(saved as unknown as Record<string, unknown>, {
    activation: overrides.activation,
    steps: overrides.steps,
    phases: overrides.phases,
  });
  const plan = [...allPhases(req), ...append];
  let start = 0;
  for (let i = 0; i < Math.max(plan.length, savedPlan.length); i++) {
    const was = savedPlan[i];
    const now = plan[i];
    const n = i + 1;
    if (!now) throw new UserError(`the checkpoint's run has ${savedPlan.length} phases but this command describes ${plan.length}; repeat the run's phases (e.g. its --finetune-steps) to continue it`);
    if (!was) break; // appended phases start after every recorded one
    if (now.activation !== was.activation) {
      const hint = i === 0 ? `; to continue with ${now.activation}, add a phase with --append-phase ${now.activation}:STEPS` : '';
      throw new UserError(`phase ${n} of the checkpoint's run is ${was.activation}, this command asks for ${now.activation}${hint}`);
    }
    if (now.auxKCoef !== was.auxKCoef || now.auxZipfCoef !== was.auxZipfCoef) throw new UserError(`cannot change the aux loss coefficients of phase ${n} when resuming`);
    if (now.steps !== was.steps) {
      const savedEnd = start + was.steps;
      if (step > savedEnd) throw new UserError(`phase ${n} (${was.activation}) finished at step ${savedEnd}; its --steps cannot change (checkpoint at step ${step})`);
      if (start + now.steps < step) throw new UserError(`phase ${n} would end at step ${start + now.steps}, before the checkpoint's step ${step}`);
    }
    start += now.steps;
  }
  // other settings: compared after resolution, so that "auto" matches what it resolved to
  const asked = resolveConfig(saved as unknown as Record<string, unknown>, overrides) as unknown as Record<string, unknown>;
  const was = saved as unknown as Record<string, unknown>;
  for (const k of Object.keys(overrides).filter((k) => !PLAN_KEYS.has(k) && !RESUMABLE_CHANGES.has(k))) {
    if (JSON.stringify(asked[k]) !== JSON.stringify(was[k]))
      throw new UserError(`cannot change ${k} when resuming (checkpoint has ${JSON.stringify(was[k])}, this command ${JSON.stringify(asked[k])}); use --init-from for a new run`);
  }
  return resolveConfig(saved as unknown as Record<string, unknown>, {
    steps: plan[0].steps,
    phases: plan.slice(1),
    logEvery: overrides.logEvery,
    checkpointEvery: overrides.checkpointEvery,
  });
}

/** SPEC §6: 10M tokens as Bricken et al., but never more than a quarter of the run (reported). */
export function autoDeadWindow(cfg: TrainConfig): number {
  if (cfg.deadWindow !== 'auto') return cfg.deadWindow;
  return Math.max(cfg.batchSize, Math.min(10_000_000, Math.floor((totalSteps(cfg) * cfg.batchSize) / 4)));
}

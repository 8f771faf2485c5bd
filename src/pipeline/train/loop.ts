import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import type { Trainer, StepReport } from '../../sae/trainer.js';
import { selectionForCheckpoint } from '../../sae/inference.js';
import type { SpliceSae } from '../../eval/splice.js';
import type { TrainingEvaluator } from '../../eval/periodic.js';
import type { BatchSource } from '../../stream/prefetch.js';
import type { TrainData } from './data.js';
import { checkpointCfgJson, type TrainPlan } from './plan.js';
import type { MetricsLog } from './metrics-log.js';
import type { TrainJobOptions } from './job.js';

/** What the step loop runs on: the job's pieces, opened and restored. */
export interface StepLoop {
  trainer: Trainer;
  plan: TrainPlan;
  data: TrainData;
  stream: BatchSource;
  log: MetricsLog;
  evaluator?: TrainingEvaluator;
  /** write a checkpoint of the run as it stands */
  save: (dir: string) => Promise<void>;
  /** a new run: the first batch initialises the decoder bias */
  fresh: boolean;
  out: string;
  opts: Pick<TrainJobOptions, 'onLog' | 'onStep' | 'onNote' | 'signal' | 'stopAfterSteps'>;
}

export interface StepLoopResult {
  last: StepReport | null;
  /** steps done in this call */
  done: number;
  /** stopped early (signal or stopAfterSteps), with a checkpoint written */
  interrupted: boolean;
}

/**
 * Train to the last step: every logEvery steps a metrics.jsonl line, every evaluator.every steps
 * a measurement, every checkpointEvery steps a checkpoint; an interruption stops after writing one.
 */
export async function stepLoop(loop: StepLoop): Promise<StepLoopResult> {
  const { trainer, plan, data, stream, log, evaluator, opts } = loop;
  const { cfg, totalSteps: total } = plan;
  const x = new Float32Array(cfg.batchSize * plan.d);
  const throughput = tokenRate(trainer.tokens);
  let last: StepReport | null = null;
  let done = 0;
  while (trainer.step < total) {
    if (!(await stream.next(x))) throw new UserError(`${data.label}: ran out of data`);
    if (trainer.step === 0 && loop.fresh) trainer.init(x);
    last = trainer.trainStep(x);
    done++;
    opts.onStep?.(trainer.step, total);
    if (trainer.step % cfg.logEvery === 0 || trainer.step === total) {
      // deadFraction's window travels with it (SPEC §9: every dead count states its window)
      const rec = { ...last, deadWindow: plan.deadWindow, tokensPerSec: throughput(trainer.tokens) };
      log.push(rec);
      opts.onLog?.(rec);
      await log.flush();
    }
    if (evaluator && (trainer.step % evaluator.every === 0 || trainer.step === total)) {
      const r = await evaluator.evaluate(saeAsItStands(loop));
      log.push({ step: trainer.step, kind: evaluator.kind, ...r.record });
      opts.onNote?.(`step ${trainer.step}: ${r.note}`);
      await log.flush();
    }
    const stop = opts.signal?.aborted || (opts.stopAfterSteps !== undefined && done >= opts.stopAfterSteps);
    if (trainer.step % cfg.checkpointEvery === 0 || (stop && trainer.step < total)) {
      await log.flush();
      await loop.save(path.join(loop.out, 'checkpoint'));
    }
    if (stop && trainer.step < total) return { last, done, interrupted: true };
  }
  return { last, done, interrupted: false };
}

/** Tokens per second since the previous call (the first: since the loop started). */
function tokenRate(tokens: number): (tokens: number) => number {
  let tLast = Date.now();
  let tokLast = tokens;
  return (tokensNow) => {
    const now = Date.now();
    const rate = ((tokensNow - tokLast) * 1000) / Math.max(1, now - tLast);
    tLast = now;
    tokLast = tokensNow;
    return rate;
  };
}

/** The SAE as it stands, for an evaluator (the trainer's state is not touched). */
function saeAsItStands({ trainer, plan, data, out }: StepLoop): SpliceSae {
  const activation = trainer.phaseAt(Math.max(0, trainer.step - 1)).phase.activation;
  // the ranking is all the selection reads from the state: no Adam moments off the backend for this
  const ckLike = { dir: out, cfg: checkpointCfgJson(plan, data, trainer.step, activation), params: trainer.params, state: { snapshot: trainer.snapshot({ moments: false }), dataPosition: null } };
  return { label: activation, params: trainer.params, selectionFor: selectionForCheckpoint(ckLike), batchSize: plan.cfg.batchSize, preprocessing: data.meta.preprocessing, scale: data.meta.scale };
}

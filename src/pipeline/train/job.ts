import * as path from 'node:path';
import type { KernelFactory } from '../../kernels/types.js';
import type { TrainingBackendFactory } from '../../sae/backend.js';
import { UserError } from '../../util/errors.js';
import { kernelFactory } from '../../kernels/index.js';
import { writeFileAtomic } from '../../util/atomic.js';
import type { DataPosition } from '../../stream/batch-stream.js';
import { shuffleWindowRows, allPhases } from '../../sae/config.js';
import { Trainer, type StepReport } from '../../sae/trainer.js';
import { checkpointScale, saveCheckpoint } from '../../sae/checkpoint.js';
import type { TrainingEvaluator } from '../../eval/periodic.js';
import { clearOrRefuse, hasCheckpoint, openRunDir, recoverRunDir, type RunDir } from './run-dir.js';
import type { TrainDataSource } from './data.js';
import { checkpointCfgJson, planRun, type PlanRequest, type TrainPlan } from './plan.js';
import { MetricsLog } from './metrics-log.js';
import { stepLoop, type StepLoopResult } from './loop.js';

/** The training job's options, besides where its batches come from and what evaluates it. */
export interface TrainJobOptions extends PlanRequest {
  /** run directory: checkpoint/, final/, metrics.jsonl, summary.json */
  out: string;
  /** start a new run in an `out` that already holds one (its checkpoints, log and summary go) */
  force?: boolean;
  /**
   * kernels of the CPU backend (the default: the reference kernels), at the run's precision
   * (`config.precision`, or the resumed run's): kernelFactory(name, precision). Kernels of another
   * precision are refused rather than recorded wrongly.
   */
  kernels?: KernelFactory;
  /** where the training state lives and steps run (default: the CPU backend over `kernels`); backendFactory(name, precision) */
  backend?: TrainingBackendFactory;
  /** called every logEvery steps with the step's report */
  onLog?: (r: StepReport & { deadWindow: number; tokensPerSec: number }) => void;
  onStep?: (step: number, total: number) => void;
  /** message sink for notes (stderr in the CLI) */
  onNote?: (msg: string) => void;
  /** stop (after writing a checkpoint) once this many steps were done in this call: tests use it to
   * simulate an interruption */
  stopAfterSteps?: number;
  signal?: AbortSignal;
}

export interface TrainSummary {
  out: string;
  final: string | null;
  interrupted: boolean;
  steps: number;
  totalSteps: number;
  tokens: number;
  d: number;
  width: number;
  /** the window of deadFraction: a feature is dead when it has not fired in this many training tokens */
  deadWindow: number;
  activations: string[];
  last: StepReport | null;
  /** features that did not fire in the last deadWindow training tokens */
  deadFraction: number;
  seconds: number;
  tokensPerSec: number;
}

/**
 * Train an SAE on the batches of `source` (SPEC §8), with logs, periodic checkpoints and exact
 * resume, measured every few steps by `evaluator` when one is given. As SAELens' trainer, the job
 * is handed its data and its evaluator; what it owns is the run folder and the step loop.
 */
export async function runTraining(source: TrainDataSource, opts: TrainJobOptions, evaluator?: TrainingEvaluator): Promise<TrainSummary> {
  const note = opts.onNote ?? (() => undefined);
  if (opts.resume && source.notResumable) throw new UserError(source.notResumable);
  if (opts.resume && opts.initFrom) throw new UserError('give --resume or --init-from, not both');
  // the folder is claimed before anything is read, so that a second writer stops at once
  const run = await openRunDir(opts.out, 'sae train');
  try {
    await recoverRunDir(opts.out, note);
    return await trainIn(run, source, opts, evaluator, note);
  } catch (err) {
    await run.abandon();
    throw err;
  } finally {
    await run.release();
  }
}

async function trainIn(run: RunDir, source: TrainDataSource, opts: TrainJobOptions, evaluator: TrainingEvaluator | undefined, note: (msg: string) => void): Promise<TrainSummary> {
  const resume = await checkpointToContinue(run, opts, note);
  // training from the model on dataset_scale continues at the scale its checkpoint records
  const from = resume ?? opts.initFrom;
  const data = await source.open({ scale: from ? await checkpointScale(from) : undefined });
  const plan = await planRun(data, { ...opts, resume });
  if (!resume) {
    const before = await clearOrRefuse(opts.out, !!opts.force);
    // (with --resume the note came from checkpointToContinue)
    if (before === 'restarted' && !opts.resume) note(`${opts.out} has no checkpoint yet: starting from step 0`);
  }
  const { cfg, ck, deadWindow } = plan;
  const kernels = opts.kernels ?? kernelFactory('reference', cfg.precision);
  const trainer = new Trainer({ cfg, d: plan.d, F: plan.width, deadWindow, ...(opts.backend ? { backend: opts.backend } : { kernels }), params: ck?.params });
  // the backend may hold device memory: released however the run ends
  try {
    // the checkpoint records cfg.precision as how the SAE was trained: the kernels must be what computes it
    const computes = trainer.kernels ? (trainer.kernels.precision ?? 'fp32') : cfg.precision;
    if (computes !== cfg.precision) throw new UserError(`the run trains at precision ${cfg.precision} but its kernels (${trainer.kernels!.name}) compute at ${computes}`);
    const total = plan.totalSteps;
    if (deadWindow < 10_000_000 && cfg.deadWindow === 'auto') note(`dead window ${deadWindow} tokens (run has ${total * cfg.batchSize} tokens; 10M is the standard)`);
    // the saved stream position is only meaningful on the very activations it was saved on
    if (resume) data.checkResume(ck?.cfg.sae_train);
    const position = restoreState(trainer, plan, { resume, initFrom: opts.initFrom });
    if (trainer.step >= total) note(`checkpoint is already at step ${trainer.step} of ${total}`);

    const log = new MetricsLog(path.join(opts.out, 'metrics.jsonl'));
    run.logStarted = true;
    await log.truncate(trainer.step);

    const stream = data.batches({ batchSize: cfg.batchSize, windowRows: Math.max(shuffleWindowRows(cfg), cfg.batchSize), seed: cfg.seed }, position);
    const save = async (dir: string) => {
      const activation = trainer.phaseAt(Math.max(0, trainer.step - 1)).phase.activation;
      await saveCheckpoint(dir, checkpointCfgJson(plan, data, trainer.step, activation), trainer.params, { snapshot: trainer.snapshot(), dataPosition: stream.position() });
    };
    const t0 = Date.now();
    let result: StepLoopResult;
    try {
      result = await stepLoop({ trainer, plan, data, stream, log, evaluator, save, fresh: !resume && !opts.initFrom, out: opts.out, opts });
    } finally {
      await stream.close();
    }
    return await finish(trainer, plan, opts.out, log, save, result, t0);
  } finally {
    trainer.backend.dispose();
  }
}

/** The checkpoint the run continues: none when `--resume` names this run's own folder before its first checkpoint. */
async function checkpointToContinue(run: RunDir, opts: TrainJobOptions, note: (msg: string) => void): Promise<string | undefined> {
  const resume = opts.resume;
  if (resume && path.resolve(resume) === path.resolve(opts.out) && !(await hasCheckpoint(opts.out))) {
    if (run.created) throw new UserError(`checkpoint ${resume}: no such directory`);
    // killed before its first checkpoint: nothing to continue, everything to redo
    note(`${opts.out} has no checkpoint yet: starting from step 0`);
    return undefined;
  }
  return resume;
}

/** Load the checkpoint's training state into the trainer; returns where a resumed stream continues. */
function restoreState(trainer: Trainer, { ck }: TrainPlan, from: { resume?: string; initFrom?: string }): DataPosition | undefined {
  if (from.resume && ck?.state) {
    trainer.restore(ck.state.snapshot);
    return ck.state.dataPosition as DataPosition;
  }
  if (from.initFrom && ck?.state) {
    // weights and density statistics (for Zipf ranks and the dying set); a fresh optimiser
    trainer.restore(ck.state.snapshot, { optimizer: false });
  }
  return undefined;
}

/** The final checkpoint and summary.json of a finished run (an interrupted one has its checkpoint already). */
async function finish(trainer: Trainer, plan: TrainPlan, out: string, log: MetricsLog, save: (dir: string) => Promise<void>, r: StepLoopResult, t0: number): Promise<TrainSummary> {
  await log.flush();
  let final: string | null = null;
  if (!r.interrupted) {
    final = path.join(out, 'final');
    await save(final);
  }
  const seconds = (Date.now() - t0) / 1000;
  const dead = new Uint8Array(plan.width);
  const summary: TrainSummary = {
    out,
    final,
    interrupted: r.interrupted,
    steps: trainer.step,
    totalSteps: plan.totalSteps,
    tokens: trainer.tokens,
    d: plan.d,
    width: plan.width,
    deadWindow: plan.deadWindow,
    activations: allPhases(plan.cfg).map((p) => p.activation),
    last: r.last,
    deadFraction: trainer.featureStats().deadMask(plan.deadWindow, dead) / plan.width,
    seconds,
    tokensPerSec: (r.done * plan.cfg.batchSize) / Math.max(seconds, 1e-9),
  };
  if (!r.interrupted) await writeFileAtomic(path.join(out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
  return summary;
}

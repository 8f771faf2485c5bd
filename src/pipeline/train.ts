import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { KernelFactory } from '../kernels/types.js';
import type { TrainingBackendFactory } from '../sae/backend.js';
import { UserError } from '../util/errors.js';
import { describeFsError, writeFileAtomic } from '../util/atomic.js';
import { checkCompatible, openShards, type DataPosition, type ShardSet } from '../store/reader.js';
import { shardSetDigest } from '../store/digest.js';
import { openBatchSource } from '../stream/prefetch.js';
import { PipeBatchSource, firstShard, readAnnouncements } from '../stream/pipe.js';
import type { Readable } from 'node:stream';
import type { HookedTransformer } from '../lm/model.js';
import type { LmTokenizer } from '../lm/tokenizer.js';
import type { RowOptions, RowSource } from '../harvest/rows.js';
import { LiveBatchSource, type LivePosition } from '../stream/live-source.js';
import { spliceEval } from '../eval/splice.js';
import { selectionForCheckpoint } from '../sae/inference.js';
import type { Preprocessing } from '../store/preprocess.js';
import { resolveConfig, resolveWidth, shuffleWindowRows, totalSteps, allPhases, type TrainConfig, type PhaseConfig } from '../sae/config.js';
import { Trainer, type StepReport } from '../sae/trainer.js';
import { architectureName, checkpointConfig, findCheckpoint, loadCheckpoint, saveCheckpoint, type SaeCfgJson } from '../sae/checkpoint.js';
import { autoDeadWindow, resumeConfig } from '../sae/resume.js';
import { clearOrRefuse, hasCheckpoint, openRunDir, recoverRunDir, type RunDir } from './run-dir.js';

export interface TrainOptions {
  /** shard directory or file */
  data: string;
  /** accept a shard directory without manifest.json (hand-made) */
  allowNoManifest?: boolean;
  /** instead of shards: harvest from the host LM into the trainer's window in memory (no disk) */
  live?: LiveData;
  /** with live data: measure splice-eval (SPEC §9) every this many steps on held-out text, logged to metrics.jsonl */
  spliceEvery?: { steps: number; maxTokens: number; corpus: RowSource<unknown> };
  /** with data '-': where the shard announcements come from (default stdin) */
  input?: Readable;
  /** with data '-': when the upstream dies, wait for its folder instead of failing */
  follow?: boolean;
  /** run directory: checkpoint/, final/, metrics.jsonl, summary.json */
  out: string;
  /** partial config (flags and/or a config file), validated by resolveConfig */
  config: Record<string, unknown>;
  /** continue a training checkpoint exactly (or with an extra phase when the activation changes) */
  resume?: string;
  /** start from a checkpoint's weights and density statistics with a fresh optimiser */
  initFrom?: string;
  /** phases added after the configured (or, on resume, the recorded) ones */
  appendPhases?: PhaseConfig[];
  /** start a new run in an `out` that already holds one (its checkpoints, log and summary go) */
  force?: boolean;
  /** kernels of the CPU backend (the default: the reference kernels) and of splice-eval during training */
  kernels?: KernelFactory;
  /** where the training state lives and steps run (default: the CPU backend over `kernels`) */
  backend?: TrainingBackendFactory;
  /** batches decoded ahead in a worker thread (0 = decode in-thread); default 2 */
  prefetch?: number;
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

/** Training straight from the model: what to harvest, and from which corpus. */
export interface LiveData {
  model: HookedTransformer;
  tokenizer: LmTokenizer;
  corpus: RowSource<unknown>;
  rows: RowOptions;
  preprocessing: Preprocessing;
  /** recorded in the checkpoint; a resume must name the same model, hook and corpus */
  description: string;
  modelName: string;
}

function cfgJson(cfg: TrainConfig, d: number, F: number, step: number, deadWindow: number, meta: { hook: string; model: string; preprocessing: string }, data: string, activation: string, digest?: string): SaeCfgJson {
  return {
    architecture: architectureName(activation),
    d_in: d,
    d_sae: F,
    dtype: 'float32',
    hook_name: meta.hook,
    model_name: meta.model,
    normalize_activations: meta.preprocessing,
    apply_b_dec_to_input: true,
    activation_fn_kwargs: activation === 'relu' ? {} : { k: cfg.k },
    format: 'sae-checkpoint/1',
    sae_train: { config: cfg, d, F, step, deadWindow, shards: data, ...(digest ? { shardsDigest: digest } : {}) },
  };
}

/** Stream shards into the trainer (SPEC §8), with logs, periodic checkpoints and exact resume. */
export async function train(opts: TrainOptions): Promise<TrainSummary> {
  const note = opts.onNote ?? (() => undefined);
  if (opts.data === '-' && opts.resume) throw new UserError('a run fed from a pipe cannot resume exactly (a pipe cannot be replayed); train on the upstream’s output folder instead, e.g. with --init-from');
  if (opts.resume && opts.initFrom) throw new UserError('give --resume or --init-from, not both');
  // the folder is claimed before anything is read, so that a second writer stops at once
  const run = await openRunDir(opts.out, 'sae train');
  try {
    await recoverRunDir(opts.out, note);
    return await trainIn(run, opts, note);
  } catch (err) {
    await run.abandon();
    throw err;
  } finally {
    await run.release();
  }
}

async function trainIn(run: RunDir, opts: TrainOptions, note: (msg: string) => void): Promise<TrainSummary> {
  // `--data -`: shards announced on stdin by an upstream stage, trained on as they arrive
  const piped = opts.data === '-';
  let resume = opts.resume;
  if (resume && path.resolve(resume) === path.resolve(opts.out) && !(await hasCheckpoint(opts.out))) {
    if (run.created) throw new UserError(`checkpoint ${resume}: no such directory`);
    // killed before its first checkpoint: nothing to continue, everything to redo
    note(`${opts.out} has no checkpoint yet: starting from step 0`);
    resume = undefined;
  }
  const announced = piped ? readAnnouncements(opts.input ?? process.stdin, { follow: opts.follow }) : null;
  const first = announced ? await firstShard(announced) : null;
  const live = opts.live;
  const set: ShardSet = first
    ? first.set
    : live
      ? { files: [], rows: Infinity, meta: { model: live.modelName, revision: '', hook: live.rows.hooks[0], d: live.model.cfg.dModel, ctx: live.rows.ctx, dtype: 'float32', preprocessing: live.preprocessing, tokenizer: live.tokenizer.digest, dataset: live.description } }
      : await openShards(opts.data, { allowNoManifest: opts.allowNoManifest });
  const d = set.meta.d;
  const dataLabel = live ? live.description : opts.data;
  // shard folders only: a pipe's shards are not all known up front, live data has no files
  const digest = !live && !first ? await shardSetDigest(set) : undefined;

  let cfg: TrainConfig;
  let ck: Awaited<ReturnType<typeof loadCheckpoint>> | undefined;
  if (resume) {
    ck = await loadCheckpoint(await findCheckpoint(resume), { withState: true });
    cfg = resumeConfig(checkpointConfig(ck), opts.config, ck.state?.snapshot.step ?? ck.cfg.sae_train?.step ?? 0, opts.appendPhases);
  } else {
    cfg = resolveConfig(opts.config);
    if (opts.appendPhases?.length) cfg = resolveConfig(opts.config, { phases: [...cfg.phases, ...opts.appendPhases] });
    if (opts.initFrom) ck = await loadCheckpoint(await findCheckpoint(opts.initFrom), { withState: 'if-present' });
  }
  checkCompatible(set.meta, { d: ck ? ck.cfg.d_in : undefined, preprocessing: cfg.expectPreprocessing === 'any' ? undefined : cfg.expectPreprocessing });
  // a checkpoint continues on activations of the kind it was trained on
  if (ck) checkCompatible(set.meta, { hook: ck.cfg.hook_name, preprocessing: ck.cfg.normalize_activations as Preprocessing });
  const F = resolveWidth(cfg, d);
  if (ck && ck.cfg.d_sae !== F && (resume || cfg.width !== 'auto'))
    throw new UserError(`checkpoint ${ck.dir} has width ${ck.cfg.d_sae} but the run asks for ${F}`);
  const width = ck ? ck.cfg.d_sae : F;
  if (cfg.k >= width) throw new UserError(`k must be < width (k=${cfg.k}, width=${width})`);
  if (!piped && set.rows < cfg.batchSize) throw new UserError(`${opts.data} holds ${set.rows} rows, fewer than one batch of ${cfg.batchSize}`);

  // a resumed run keeps the dead window it started with, even when --steps extends it
  const saved = resume ? ck?.cfg.sae_train?.deadWindow : undefined;
  const deadWindow = typeof saved === 'number' && Number.isInteger(saved) && saved > 0 ? saved : autoDeadWindow(cfg);
  if (!resume) {
    const before = await clearOrRefuse(opts.out, !!opts.force);
    // (with --resume the note came above)
    if (before === 'restarted' && !opts.resume) note(`${opts.out} has no checkpoint yet: starting from step 0`);
  }
  const trainer = new Trainer({ cfg, d, F: width, deadWindow, ...(opts.backend ? { backend: opts.backend } : { kernels: opts.kernels }), params: ck?.params });
  // the backend may hold device memory: released however the run ends
  try {
    const total = totalSteps(cfg);
    if (deadWindow < 10_000_000 && cfg.deadWindow === 'auto') note(`dead window ${deadWindow} tokens (run has ${total * cfg.batchSize} tokens; 10M is the standard)`);

    let position: DataPosition | undefined;
    if (live && resume && ck?.cfg.sae_train?.shards !== live.description)
      throw new UserError(`the checkpoint was trained on ${ck?.cfg.sae_train?.shards}; this command harvests ${live.description}`);
    // the saved stream position is only meaningful on the very activations it was saved on
    const was = ck?.cfg.sae_train?.shardsDigest;
    if (resume && was && digest && was !== digest)
      throw new UserError(`${opts.data} holds other activations than the checkpoint was trained on (${ck?.cfg.sae_train?.shards}; contents ${digest} here, ${was} there): resuming would not continue the same stream; use --init-from to train on new data`);
    if (resume && ck?.state) {
      trainer.restore(ck.state.snapshot);
      position = ck.state.dataPosition as DataPosition;
    } else if (opts.initFrom && ck?.state) {
      // weights and density statistics (for Zipf ranks and the dying set); a fresh optimiser
      trainer.restore(ck.state.snapshot, { optimizer: false });
    }
    if (trainer.step >= total) note(`checkpoint is already at step ${trainer.step} of ${total}`);

    const logFile = path.join(opts.out, 'metrics.jsonl');
    run.logStarted = true;
    await truncateLog(logFile, trainer.step);

    const windowRows = shuffleWindowRows(cfg);
    const streamOpts = { batchSize: cfg.batchSize, windowRows: Math.max(windowRows, cfg.batchSize), seed: cfg.seed, loop: true };
    const stream = live
      ? new LiveBatchSource(live.model, live.tokenizer, live.corpus, live.rows, { batchSize: cfg.batchSize, windowRows: streamOpts.windowRows, seed: cfg.seed, preprocessing: live.preprocessing }, position as unknown as LivePosition<unknown> | undefined)
      : announced && first
        ? new PipeBatchSource(announced, first, cfg.batchSize, windowRows, cfg.seed, (all) => openBatchSource(all, { ...streamOpts, windowRows: Math.min(streamOpts.windowRows, all.rows) }, undefined, opts.prefetch ?? 2))
        : openBatchSource(set, streamOpts, position, opts.prefetch ?? 2);
    const x = new Float32Array(cfg.batchSize * d);
    const meta = { hook: set.meta.hook, model: set.meta.model, preprocessing: set.meta.preprocessing };

    const save = async (dir: string) => {
      const act = trainer.phaseAt(Math.max(0, trainer.step - 1)).phase.activation;
      await saveCheckpoint(dir, cfgJson(cfg, d, width, trainer.step, deadWindow, meta, dataLabel, act, digest), trainer.params, {
        snapshot: trainer.snapshot(),
        dataPosition: stream.position(),
      });
    };

    const t0 = Date.now();
    let tLast = t0;
    let tokLast = trainer.tokens;
    let last: StepReport | null = null;
    let done = 0;
    let interrupted = false;
    const logLines: string[] = [];
    const flushLog = async () => {
      if (!logLines.length) return;
      await fs.appendFile(logFile, logLines.join('')).catch((e) => {
        throw describeFsError(e, `writing ${logFile}`);
      });
      logLines.length = 0;
    };

    try {
      await trainLoop();
    } finally {
      await stream.close();
    }

    /** The SAE as it stands, spliced into the model on held-out text (the trainer's state is not touched). */
    async function spliceNow(lv: LiveData, se: NonNullable<TrainOptions['spliceEvery']>) {
      const act = trainer.phaseAt(Math.max(0, trainer.step - 1)).phase.activation;
      // the ranking is all the selection reads from the state: no Adam moments off the backend for this
      const ckLike = { dir: opts.out, cfg: cfgJson(cfg, d, width, trainer.step, deadWindow, meta, dataLabel, act, digest), params: trainer.params, state: { snapshot: trainer.snapshot({ moments: false }), dataPosition: null } };
      const r = await spliceEval({
        model: lv.model,
        tokenizer: lv.tokenizer,
        corpus: se.corpus,
        hook: lv.rows.hooks[0],
        saes: [{ label: act, params: trainer.params, selectionFor: selectionForCheckpoint(ckLike), batchSize: cfg.batchSize, preprocessing: lv.preprocessing }],
        ctx: lv.rows.ctx,
        batch: lv.rows.batch,
        maxTokens: se.maxTokens,
        kernels: opts.kernels,
      });
      const s = r.spliced[0];
      return { tokens: r.tokens, cleanLoss: r.cleanLoss, zeroLoss: r.zeroLoss, loss: s.loss, lossRecovered: s.lossRecovered, kl: s.kl, klScore: s.klScore, specialTokens: r.specialTokens };
    }

    async function trainLoop(): Promise<void> {
      while (trainer.step < total) {
        if (!(await stream.next(x))) throw new UserError(`${dataLabel}: ran out of data`);
        if (trainer.step === 0 && !resume && !opts.initFrom) trainer.init(x);
        last = trainer.trainStep(x);
        done++;
        opts.onStep?.(trainer.step, total);
        if (trainer.step % cfg.logEvery === 0 || trainer.step === total) {
          const now = Date.now();
          const tokensPerSec = ((trainer.tokens - tokLast) * 1000) / Math.max(1, now - tLast);
          tLast = now;
          tokLast = trainer.tokens;
          // deadFraction's window travels with it (SPEC §9: every dead count states its window)
          const rec = { ...last, deadWindow, tokensPerSec };
          logLines.push(JSON.stringify(rec) + '\n');
          opts.onLog?.(rec);
          await flushLog();
        }
        if (live && opts.spliceEvery && (trainer.step % opts.spliceEvery.steps === 0 || trainer.step === total)) {
          const rec = { step: trainer.step, kind: 'splice', ...(await spliceNow(live, opts.spliceEvery)) };
          logLines.push(JSON.stringify(rec) + '\n');
          opts.onNote?.(`step ${trainer.step}: loss recovered ${rec.lossRecovered.toFixed(2)}% (clean ${rec.cleanLoss.toFixed(4)}, spliced ${rec.loss.toFixed(4)}, zero ${rec.zeroLoss.toFixed(4)}) over ${rec.tokens} held-out tokens`);
          await flushLog();
        }
        const stop = opts.signal?.aborted || (opts.stopAfterSteps !== undefined && done >= opts.stopAfterSteps);
        if (trainer.step % cfg.checkpointEvery === 0 || (stop && trainer.step < total)) {
          await flushLog();
          await save(path.join(opts.out, 'checkpoint'));
        }
        if (stop && trainer.step < total) {
          interrupted = true;
          break;
        }
      }
    }
    await flushLog();
    let final: string | null = null;
    if (!interrupted) {
      final = path.join(opts.out, 'final');
      await save(final);
    }
    const seconds = (Date.now() - t0) / 1000;
    const dead = new Uint8Array(width);
    const summary: TrainSummary = {
      out: opts.out,
      final,
      interrupted,
      steps: trainer.step,
      totalSteps: total,
      tokens: trainer.tokens,
      d,
      width,
      deadWindow,
      activations: allPhases(cfg).map((p) => p.activation),
      last,
      deadFraction: trainer.featureStats().deadMask(deadWindow, dead) / width,
      seconds,
      tokensPerSec: (done * cfg.batchSize) / Math.max(seconds, 1e-9),
    };
    if (!interrupted) await writeFileAtomic(path.join(opts.out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
    return summary;
  } finally {
    trainer.backend.dispose();
  }
}

/** On resume, drop log lines past the checkpoint's step so the log reads like one uninterrupted run. */
async function truncateLog(file: string, step: number): Promise<void> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return;
  }
  const keep = text
    .split('\n')
    .filter((l) => l.trim())
    .filter((l) => {
      try {
        return (JSON.parse(l) as { step: number }).step <= step;
      } catch {
        return false;
      }
    });
  await writeFileAtomic(file, keep.map((l) => l + '\n').join(''));
}

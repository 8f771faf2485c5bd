import { promises as fs } from 'node:fs';
import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { Progress, fmtTokens } from '../util/progress.js';
import { train, type LiveData } from '../pipeline/train/train.js';
import { formatStepLog } from '../pipeline/train/log-line.js';
import { openCorpus } from '../corpus/corpus.js';
import { loadModel } from '../lm/load.js';
import { loadTokenizer } from '../lm/tokenizer.js';
import { parseHook } from '../lm/hooks.js';
import { DEFAULT_SCALE_ROWS, type Preprocessing } from '../store/preprocess.js';
import type { RowSource } from '../harvest/rows.js';
import { checkTrainable, finetunePhase, type PhaseConfig } from '../sae/config.js';
import { configFlags, flagsToConfig, sharedFlags } from '../cli/flags.js';
import { kernelFactory, lmKernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { backendFactory } from '../sae/backend.js';
import { checkpointPrecisionAt } from '../sae/checkpoint.js';

/** --append-phase feature:800 → a phase like the paper's phase 2 (no auxiliary losses). */
function parsePhase(spec: string): PhaseConfig {
  const m = /^([a-z]+):(\d+)$/.exec(spec.trim());
  if (!m) throw new UserError(`--append-phase expects ACTIVATION:STEPS (e.g. feature:800), got "${spec}"`);
  const steps = Number(m[2]);
  if (steps < 1) throw new UserError(`--append-phase ${spec}: steps must be ≥ 1`);
  return finetunePhase(steps, checkTrainable(m[1], '--append-phase activation'));
}

export default class Train extends SaeCommand {
  static override description = 'Train a sparse autoencoder on activation shards (SPEC §8): relu, topk, batchtopk, mutual (MC), feature (FC), phased MC→FC';

  static override examples = [
    '<%= config.bin %> train --model gpt2 --hook blocks.6.hook_resid_pre --corpus docs/*.jsonl --out runs/live --activation mutual',
    '<%= config.bin %> train --data shards/ --out runs/mc --activation mutual --k 32 --steps 10000',
    '<%= config.bin %> train --data shards/ --out runs/mcfc --activation mutual --steps 8000 --finetune-steps 2000',
    '<%= config.bin %> train --data shards/ --out runs/mc --resume runs/mc',
  ];

  static override flags = {
    data: Flags.string({ description: 'activation shards (directory or .parquet file), or - for shards announced on stdin by sae harvest / sae shuffle', exactlyOne: ['data', 'model'] }),
    model: Flags.string({ description: 'instead of --data: harvest from this host LM (folder or Hub id) into memory while training, no disk', exactlyOne: ['data', 'model'] }),
    revision: Flags.string({ description: 'with --model: Hub revision of the model' }),
    hook: Flags.string({ description: 'with --model: the hook to train on', default: 'blocks.6.hook_resid_pre' }),
    corpus: Flags.string({ description: 'with --model: corpus files, folders or globs (.txt, .jsonl, .parquet), repeatable (default: the embedded Brown corpus)', multiple: true }),
    'text-field': Flags.string({ description: 'with --model: JSONL field / Parquet column holding the text (default text)' }),
    ctx: Flags.integer({ description: 'with --model: tokens per context, BOS first', default: 64 }),
    'skip-bos': Flags.boolean({ description: 'with --model: leave position 0 (BOS) out' }),
    'lm-batch': Flags.integer({ description: 'with --model: contexts per forward pass', default: 32 }),
    'scale-rows': Flags.integer({
      description: `with --model and --expect-preprocessing dataset_scale: estimate s = sqrt(d)/mean‖x‖ over the first N raw rows of the corpus (default ${DEFAULT_SCALE_ROWS}, as sae harvest), one extra forward pass over them; --resume and --init-from take the checkpoint's s instead`,
    }),
    'eval-every': Flags.integer({ description: 'with --model: splice-eval (loss recovered, KL) every this many steps on the held-out Brown slice, logged to metrics.jsonl' }),
    'eval-tokens': Flags.integer({ description: 'with --eval-every: held-out tokens per measurement', default: 4096 }),
    follow: Flags.boolean({ description: 'with --data -: if the upstream stage dies, wait for its folder to be completed instead of failing' }),
    out: Flags.string({ description: 'run directory (checkpoint/, final/, metrics.jsonl, summary.json)', required: true }),
    config: Flags.string({ description: 'JSON config file (keys as in TrainConfig; flags override it)' }),
    resume: Flags.string({ description: 'continue from a training checkpoint or run directory, bit-exactly, with the phases it recorded (repeating its flags is fine; --steps/--finetune-steps may lengthen an unfinished phase); the --out of a run killed before its first checkpoint starts over from step 0' }),
    'init-from': Flags.string({ description: 'start a new run from a checkpoint’s weights and density statistics' }),
    'finetune-steps': Flags.integer({ description: 'the paper’s phase 2 after phase 1: Feature Choice without auxiliary losses for this many steps' }),
    'append-phase': Flags.string({
      description: 'add a phase ACTIVATION:STEPS after the planned (or, with --resume, the recorded) ones, without auxiliary losses; repeatable',
      multiple: true,
    }),
    force: Flags.boolean({ description: 'start a new run in an --out that already holds one, deleting its checkpoints and log' }),
    json: Flags.boolean({ description: 'print the run summary as JSON on stdout' }),
    quiet: Flags.boolean({ description: 'no progress or log lines on stderr' }),
    prefetch: Flags.integer({ description: 'batches decoded ahead in a worker thread (0 = in the main thread)', default: 2, min: 0 }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
    ...configFlags,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Train);
    let fileCfg: Record<string, unknown> = {};
    if (flags.config) {
      let text: string;
      try {
        text = await fs.readFile(flags.config, 'utf8');
      } catch {
        throw new UserError(`config file ${flags.config}: cannot read`);
      }
      try {
        fileCfg = JSON.parse(text) as Record<string, unknown>;
      } catch {
        throw new UserError(`config file ${flags.config}: not valid JSON`);
      }
      if (typeof fileCfg !== 'object' || fileCfg === null || Array.isArray(fileCfg)) throw new UserError(`config file ${flags.config}: must hold a JSON object`);
    }
    const flagCfg = flagsToConfig(flags as Record<string, unknown>);
    if (flags['finetune-steps'] !== undefined) {
      if (flags['finetune-steps'] < 1) throw new UserError('--finetune-steps must be ≥ 1');
      flagCfg.phases = [finetunePhase(flags['finetune-steps'])];
    }
    const appendPhases = (flags['append-phase'] ?? []).map(parsePhase);
    const config = { ...fileCfg, ...flagCfg };
    // the kernels (and the LM, training from it) are built before the job settles the config: the
    // precision asked for, else a resumed run's own (the job refuses a resume that changes it)
    const recorded = flags.resume && config.precision === undefined ? await checkpointPrecisionAt(flags.resume) : undefined;
    const precision = parsePrecision(config.precision ?? recorded ?? 'fp32');

    const progress = new Progress('train', !flags.quiet);
    if (flags['eval-every'] !== undefined && !flags.model) throw new UserError('--eval-every needs the host LM: give --model');
    if (flags['eval-every'] !== undefined && flags['eval-every'] < 1) throw new UserError('--eval-every must be ≥ 1');
    if (flags['eval-tokens'] < 1) throw new UserError('--eval-tokens must be ≥ 1');
    if (flags['scale-rows'] !== undefined && !flags.model) throw new UserError('--scale-rows applies to training from the model (--model); shards record their own dataset scale');
    const spliceEvery = flags['eval-every'] !== undefined ? { steps: flags['eval-every'], maxTokens: flags['eval-tokens'], corpus: (await openCorpus({ brown: 'heldout' })) as unknown as RowSource<unknown> } : undefined;
    let live: LiveData | undefined;
    if (flags.model) {
      if (flags.ctx < 2) throw new UserError(`--ctx must be at least 2, got ${flags.ctx}`);
      if (flags['lm-batch'] < 1) throw new UserError('--lm-batch must be ≥ 1');
      const corpus = await openCorpus({ inputs: flags.corpus, textField: flags['text-field'] });
      const { model, dir, resolved } = await loadModel(flags.model, { revision: flags.revision, kernels: lmKernelFactory(flags.kernels as KernelName, precision), onProgress: (m) => progress.line(m) });
      parseHook(flags.hook, model.cfg);
      if (flags.ctx > model.cfg.nPositions) throw new UserError(`--ctx ${flags.ctx} is longer than the model's ${model.cfg.nPositions} positions`);
      const tokenizer = await loadTokenizer(dir);
      const rows = { hooks: [flags.hook], ctx: flags.ctx, mode: 'concat' as const, skipBos: flags['skip-bos'], batch: flags['lm-batch'] };
      const name = resolved.repo ?? flags.model;
      const pre = (config.expectPreprocessing && config.expectPreprocessing !== 'any' ? config.expectPreprocessing : 'center_unit_norm') as Preprocessing;
      if (flags['scale-rows'] !== undefined && pre !== 'dataset_scale') throw new UserError('--scale-rows applies to --expect-preprocessing dataset_scale');
      if (flags['scale-rows'] !== undefined && flags['scale-rows'] < 1) throw new UserError('--scale-rows must be ≥ 1');
      live = {
        model,
        tokenizer,
        corpus: corpus as unknown as LiveData['corpus'],
        rows,
        preprocessing: pre,
        ...(flags['scale-rows'] !== undefined ? { scaleRows: flags['scale-rows'] } : {}),
        modelName: name,
        description: `live:${name}@${resolved.commit ?? 'local'} ${flags.hook} ctx ${flags.ctx}${flags['skip-bos'] ? ' no-BOS' : ''} ${corpus.describe()}`,
      };
    }
    const controller = new AbortController();
    const onSigint = () => {
      if (controller.signal.aborted) process.exit(130);
      progress.line('interrupt: writing a checkpoint, press Ctrl-C again to abort');
      controller.abort();
    };
    process.on('SIGINT', onSigint);
    try {
      const summary = await train({
        data: flags.data ?? '',
        live,
        spliceEvery: spliceEvery,
        allowNoManifest: flags['allow-no-manifest'],
        follow: flags.follow,
        out: flags.out,
        config,
        resume: flags.resume,
        appendPhases,
        initFrom: flags['init-from'],
        force: flags.force,
        kernels: kernelFactory(flags.kernels as KernelName, precision),
        backend: backendFactory(flags.kernels as KernelName, precision),
        prefetch: flags.prefetch,
        signal: controller.signal,
        onNote: (m) => progress.line(`note: ${m}`),
        onStep: (s, total) => progress.tick(s, total),
        onLog: (r) => progress.line(formatStepLog(r)),
      });
      progress.done();
      if (flags.json) process.stdout.write(JSON.stringify(summary) + '\n');
      else {
        const l = summary.last;
        if (!flags.quiet)
          this.info(
            summary.interrupted
              ? `interrupted at step ${summary.steps}/${summary.totalSteps}; resume with --resume ${summary.out}`
              : `trained ${summary.activations.join('→')} d=${summary.d} F=${summary.width}${precision !== 'fp32' ? ` at ${precision}` : ''} for ${summary.steps} steps in ${summary.seconds.toFixed(1)}s` +
                  (l ? `: fvu ${l.fvu.toFixed(4)}, L0 ${l.l0.toFixed(1)}, dead ${(100 * summary.deadFraction).toFixed(2)}% (no firing in the last ${fmtTokens(summary.deadWindow)} tokens)` : ''),
          );
        process.stdout.write((summary.final ?? `${summary.out}/checkpoint`) + '\n');
      }
      if (summary.interrupted) this.exit(130);
    } finally {
      process.off('SIGINT', onSigint);
    }
  }
}

import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { sharedFlags } from '../cli/flags.js';
import { UserError } from '../util/errors.js';
import { saveCheckpoint, type SaeCfgJson } from '../sae/checkpoint.js';
import { openSae, type Sae } from '../sae/sae.js';
import { calibrateThresholds, type Calibration } from '../sae/inference.js';
import { phaseOfStep } from '../sae/config.js';
import { FeatureStats } from '../sae/density.js';
import { FORMATS, type ExportSource } from '../sae/formats/index.js';
import { openShards, type ShardSet } from '../store/shard-set.js';
import { kernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { promises as fs } from 'node:fs';
import { pathKind } from '../util/outdir.js';
import { ownsFolder } from '../store/outputs.js';
import { describeFsError } from '../util/atomic.js';
import * as path from 'node:path';

/** Never overwrite the source, a run, or anything that is not one of our exported checkpoints. */
async function checkExportTarget(out: string, source: string, force: boolean): Promise<void> {
  if (path.resolve(out) === path.resolve(source)) throw new UserError('--out must differ from --checkpoint');
  const kind = await pathKind(out);
  if (kind === 'file') throw new UserError(`--out ${out} is an existing file, not a directory; choose another --out`);
  if (kind === 'absent') return;
  const entries = await fs.readdir(out).catch((e) => {
    throw describeFsError(e, `reading ${out}`);
  });
  if (entries.length === 0) return;
  if (!ownsFolder('export', entries)) throw new UserError(`${out} exists and is not an exported checkpoint; choose another --out`);
  if (!force) throw new UserError(`${out} already holds an exported checkpoint; add --force to replace it`);
}

const FORMAT_NAMES = ['sae', 'saelens', 'sparsify'] as const;

/** How the SAE selects at inference: its batch selection (to calibrate), or a rule a foreign format has. */
function activationOf(sae: Sae): string {
  if (sae.threshold) return 'jumprelu';
  if (!sae.trainConfig) return sae.cfg.architecture;
  return phaseOfStep(sae.trainConfig, sae.cfg.sae_train!.step).activation;
}

/** Per-feature density over training (the state's firing counts), when the folder has a training state. */
function trainingDensity(sae: Sae): Float32Array | undefined {
  if (!sae.state) return undefined;
  const stats = FeatureStats.fromState(sae.state.snapshot.stats);
  const tokens = sae.state.snapshot.tokens;
  return tokens > 0 ? Float32Array.from(stats.cumulativeCounts, (c) => c / tokens) : undefined;
}

export default class Export extends SaeCommand {
  static override description =
    'Export an SAE: as a JumpReLU SAE of ours for single-token inference, thresholds calibrated on activation shards (appendix B, SPEC §5; --format sae, the default), or in SAELens\' or sparsify\'s format (--format saelens | sparsify; batch selections go through the same calibration and become SAELens JumpReLU SAEs).';

  static override examples = [
    '<%= config.bin %> export --checkpoint runs/mc/final --data shards/ --out runs/mc/jumprelu',
    '<%= config.bin %> export --checkpoint runs/topk --format saelens --out exports/topk-saelens',
    '<%= config.bin %> export --checkpoint runs/mc --data shards/ --format saelens --out exports/mc-saelens',
  ];

  static override flags = {
    checkpoint: Flags.string({ description: 'the SAE: a checkpoint folder or run directory, a SAELens / sparsify / dictionary_learning folder, or hf:OWNER/REPO[/SUBFOLDER][@REVISION]', required: true }),
    format: Flags.string({
      description: 'sae: our checkpoint with calibrated JumpReLU thresholds; saelens: a folder SAELens ≥ 6 loads (sae_weights.safetensors, cfg.json, sparsity.safetensors); sparsify: a folder sparsify loads (TopK SAEs only)',
      options: [...FORMAT_NAMES],
      default: 'sae',
    }),
    data: Flags.string({ description: 'calibration shards: needed to turn a batch selection (mutual, feature, batchtopk) into thresholds, and for --format sae' }),
    out: Flags.string({ description: 'output folder', required: true }),
    batches: Flags.integer({ description: 'calibration batches', default: 32 }),
    'batch-size': Flags.integer({ description: 'calibration batch size (default: the training batch size)' }),
    force: Flags.boolean({ description: 'replace an earlier export at --out' }),
    thresholds: Flags.string({
      description: 'global: one threshold (BatchTopK style; the default for mutual/batchtopk, whose selection is a per-batch global cut); per-feature: one per feature (the default for feature/topk)',
      options: ['auto', 'global', 'per-feature'],
      default: 'auto',
    }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
    hook: sharedFlags.hook,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Export);
    if (flags.batches < 1) throw new UserError('--batches must be ≥ 1');
    const format = flags.format as (typeof FORMAT_NAMES)[number];
    // an export has no state.json: recognise it before asking for the training state, so the
    // error says what it is rather than what it lacks
    const first = await openSae(flags.checkpoint, { hook: flags.hook });
    if (format === 'sae' && first.threshold) throw new UserError(`checkpoint ${first.dir} is already a JumpReLU export; pass the training checkpoint (or run directory) it came from`);
    const act = activationOf(first);
    // before any calibration: what sparsify cannot express
    if (format === 'sparsify' && act !== 'topk') throw new UserError(`sparsify expresses TopK SAEs only (this one is ${act}); export it with --format saelens`);
    const calibrate = format === 'sae' || !['topk', 'relu', 'jumprelu'].includes(act);
    // calibration needs the training state (Feature Choice's capacities follow its ranking)
    const sae = calibrate && !first.state ? await openSae(first.dir, { withState: true, hook: flags.hook }) : first;
    await checkExportTarget(flags.out, sae.dir, flags.force);
    if (calibrate && !flags.data) throw new UserError(`${act} selects per batch: its export calibrates thresholds on activations; pass --data SHARDS`);
    const set = flags.data ? await openShards(flags.data, { allowNoManifest: flags['allow-no-manifest'] }) : null;
    if (set) sae.checkData(set.meta);
    const cal = calibrate ? await this.calibrate(sae, set!, flags) : null;
    const global = flags.thresholds === 'global' || (flags.thresholds === 'auto' && (act === 'mutual' || act === 'batchtopk'));
    const threshold = cal ? (global ? new Float32Array(sae.F).fill(cal.globalThreshold) : cal.threshold) : sae.threshold;

    if (format === 'sae') {
      const cfg: SaeCfgJson = {
        ...sae.cfg,
        architecture: 'jumprelu',
        activation_fn_kwargs: {},
        calibration: { from: sae.dir, data: flags.data, batches: cal!.batches, batchSize: cal!.batchSize, precision: cal!.precision, global, globalThreshold: cal!.globalThreshold, batchL0: cal!.batchL0 },
      };
      await saveCheckpoint(flags.out, cfg, sae.params, { threshold });
    } else {
      const writer = FORMATS[format]?.write;
      if (!writer) throw new UserError(`--format ${format}: not available in this build`);
      const k = act === 'topk' ? (sae.trainConfig?.k ?? sae.cfg.activation_fn_kwargs?.k) : undefined;
      const src: ExportSource = {
        params: sae.params,
        architecture: act === 'topk' ? 'topk' : act === 'relu' ? 'relu' : 'jumprelu',
        ...(k !== undefined ? { k } : {}),
        ...(threshold && act !== 'topk' && act !== 'relu' ? { threshold } : {}),
        preprocessing: sae.preprocessing,
        ...(sae.scale !== undefined ? { scale: sae.scale } : {}),
        hook: sae.hook,
        model: sae.model,
        // harvest packs every context behind a BOS token (SPEC §1)
        ...(set ? { contextSize: set.meta.ctx, datasetPath: set.meta.dataset, prependBos: true } : {}),
        ...(cal ? { density: cal.density } : trainingDensity(sae) ? { density: trainingDensity(sae)! } : {}),
        trainedPrecision: sae.trainedPrecision,
      };
      await writer(src, flags.out);
    }
    const what = format === 'sae' ? 'JumpReLU SAE' : `${format} ${act === 'topk' || act === 'relu' ? act : 'JumpReLU'} SAE`;
    this.info(`exported ${what}` + (cal ? ` (${global ? 'global' : 'per-feature'} thresholds from ${cal.batches} batch${cal.batches === 1 ? '' : 'es'}; batch L0 ${cal.batchL0.toFixed(2)})` : ''));
    process.stdout.write(flags.out + '\n');
  }

  /** Thresholds for the SAE's batch selection on --data (appendix B), at --precision. */
  private async calibrate(sae: Sae, set: ShardSet, flags: { 'batch-size'?: number; batches: number; kernels: string; precision: string }): Promise<Calibration & { batchSize: number; precision: string }> {
    const batchSize = flags['batch-size'] ?? sae.batchSize;
    if (batchSize < 1) throw new UserError('--batch-size must be ≥ 1');
    // thresholds are calibrated on the affinities the encoder computes at this precision; the
    // checkpoint's own `precision` (how it was trained) is carried over unchanged
    const precision = parsePrecision(flags.precision);
    const cal = await calibrateThresholds(sae.params, set, sae.selection(), {
      batchSize,
      batches: flags.batches,
      kernels: kernelFactory(flags.kernels as KernelName, precision),
    });
    return { ...cal, batchSize, precision };
  }
}

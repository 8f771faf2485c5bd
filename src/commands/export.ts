import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { sharedFlags } from '../cli/flags.js';
import { UserError } from '../util/errors.js';
import { saveCheckpoint, type SaeCfgJson } from '../sae/checkpoint.js';
import { openSae } from '../sae/sae.js';
import { calibrateThresholds } from '../sae/inference.js';
import { openShards } from '../store/shard-set.js';
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

export default class Export extends SaeCommand {
  static override description =
    'Export a Mutual/Feature Choice (or any batch-selection) SAE as a JumpReLU SAE for single-token inference, with thresholds calibrated on activation shards (appendix B, SPEC §5).';

  static override examples = ['<%= config.bin %> export --checkpoint runs/mc/final --data shards/ --out runs/mc/jumprelu'];

  static override flags = {
    checkpoint: Flags.string({ description: 'training checkpoint folder or run directory', required: true }),
    data: Flags.string({ description: 'calibration shards', required: true }),
    out: Flags.string({ description: 'output checkpoint folder', required: true }),
    batches: Flags.integer({ description: 'calibration batches', default: 32 }),
    'batch-size': Flags.integer({ description: 'calibration batch size (default: the training batch size)' }),
    force: Flags.boolean({ description: 'replace an existing exported checkpoint at --out' }),
    thresholds: Flags.string({
      description: 'global: one threshold (BatchTopK style; the default for mutual/batchtopk, whose selection is a per-batch global cut); per-feature: one per feature (the default for feature/topk)',
      options: ['auto', 'global', 'per-feature'],
      default: 'auto',
    }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Export);
    if (flags.batches < 1) throw new UserError('--batches must be ≥ 1');
    // an export has no state.json: recognise it before asking for the training state, so the
    // error says what it is rather than what it lacks
    const first = await openSae(flags.checkpoint);
    if (first.threshold) throw new UserError(`checkpoint ${first.dir} is already a JumpReLU export; pass the training checkpoint (or run directory) it came from`);
    // without its state: loading it as required gives the usual one-line reason
    const sae = first.state ? first : await openSae(first.dir, { withState: true });
    await checkExportTarget(flags.out, sae.dir, flags.force);
    const set = await openShards(flags.data, { allowNoManifest: flags['allow-no-manifest'] });
    sae.checkData(set.meta);
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
    const global = flags.thresholds === 'global' || (flags.thresholds === 'auto' && (sae.cfg.architecture === 'mutual' || sae.cfg.architecture === 'batchtopk'));
    const threshold = global ? new Float32Array(sae.F).fill(cal.globalThreshold) : cal.threshold;
    const cfg: SaeCfgJson = {
      ...sae.cfg,
      architecture: 'jumprelu',
      activation_fn_kwargs: {},
      calibration: { from: sae.dir, data: flags.data, batches: cal.batches, batchSize, precision, global, globalThreshold: cal.globalThreshold, batchL0: cal.batchL0 },
    };
    await saveCheckpoint(flags.out, cfg, sae.params, { threshold });
    this.info(`exported JumpReLU SAE (${global ? 'global' : 'per-feature'} thresholds from ${cal.batches} batch${cal.batches === 1 ? "" : "es"}; batch L0 ${cal.batchL0.toFixed(2)})`);
    process.stdout.write(flags.out + '\n');
  }
}

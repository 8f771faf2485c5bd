import { Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { sharedFlags } from '../cli/flags.js';
import { UserError } from '../util/errors.js';
import { loadCheckpoint, saveCheckpoint, type SaeCfgJson } from '../sae/checkpoint.js';
import { findCheckpoint } from '../sae/checkpoint.js';
import { calibrateThresholds, selectionForCheckpoint } from '../sae/inference.js';
import { checkCompatible, openShards } from '../store/reader.js';
import type { Preprocessing } from '../store/preprocess.js';
import { kernelFactory, type KernelName } from '../kernels/index.js';
import { promises as fs } from 'node:fs';
import { pathKind } from '../util/outdir.js';
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
  const ours = entries.includes('cfg.json') && entries.includes('sae.safetensors') && !entries.includes('state.json');
  if (!ours) throw new UserError(`${out} exists and is not an exported checkpoint; choose another --out`);
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
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Export);
    if (flags.batches < 1) throw new UserError('--batches must be ≥ 1');
    // an export has no state.json: recognise it before asking for the training state, so the
    // error says what it is rather than what it lacks
    const ckDir = await findCheckpoint(flags.checkpoint);
    const first = await loadCheckpoint(ckDir, { withState: 'if-present' });
    if (first.threshold) throw new UserError(`checkpoint ${ckDir} is already a JumpReLU export; pass the training checkpoint (or run directory) it came from`);
    // without its state: loading it as required gives the usual one-line reason
    const ck = first.state ? first : await loadCheckpoint(ckDir, { withState: true });
    await checkExportTarget(flags.out, ck.dir, flags.force);
    const set = await openShards(flags.data, { allowNoManifest: flags['allow-no-manifest'] });
    // the SAE only means something on inputs preprocessed as in training (raw activations give FVU > 1
    // and, for export, thresholds calibrated on the wrong scale)
    checkCompatible(set.meta, { d: ck.cfg.d_in, hook: ck.cfg.hook_name, model: ck.cfg.model_name, preprocessing: ck.cfg.normalize_activations as Preprocessing });
    const batchSize = flags['batch-size'] ?? (ck.cfg.sae_train?.config?.batchSize as number | undefined) ?? 1536;
    if (batchSize < 1) throw new UserError('--batch-size must be ≥ 1');
    const cal = await calibrateThresholds(ck.params, set, selectionForCheckpoint(ck), {
      batchSize,
      batches: flags.batches,
      kernels: kernelFactory(flags.kernels as KernelName),
    });
    const global = flags.thresholds === 'global' || (flags.thresholds === 'auto' && (ck.cfg.architecture === 'mutual' || ck.cfg.architecture === 'batchtopk'));
    const threshold = global ? new Float32Array(ck.cfg.d_sae).fill(cal.globalThreshold) : cal.threshold;
    const cfg: SaeCfgJson = {
      ...ck.cfg,
      architecture: 'jumprelu',
      activation_fn_kwargs: {},
      calibration: { from: ck.dir, data: flags.data, batches: cal.batches, batchSize, global, globalThreshold: cal.globalThreshold, batchL0: cal.batchL0 },
    };
    await saveCheckpoint(flags.out, cfg, ck.params, { threshold });
    this.info(`exported JumpReLU SAE (${global ? 'global' : 'per-feature'} thresholds from ${cal.batches} batch${cal.batches === 1 ? "" : "es"}; batch L0 ${cal.batchL0.toFixed(2)})`);
    process.stdout.write(flags.out + '\n');
  }
}

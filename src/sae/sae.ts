/**
 * The one front door to an SAE on disk: find it (a checkpoint folder, or a run directory's newest
 * checkpoint), load and validate it, and answer what every consumer asks of it — its sizes, hook,
 * model and preprocessing, the selection it runs with, the batch size that selection is meant
 * for, and whether given activations are ones it means anything on.
 *
 * Any format in ./formats/ opens here too (SAELens, sparsify: issue 19), told apart by tensor keys
 * and config fields; a foreign folder becomes the same `Sae`, with the hook and model its config
 * names (or the caller's --hook / --model where it names none).
 */
import type { SaeParams, Selection } from '../kernels/types.js';
import { checkCompatible } from '../store/compat.js';
import type { ShardMeta } from '../store/shard-format.js';
import type { Preprocessing } from '../store/preprocess.js';
import type { Precision } from '../kernels/bf16.js';
import { checkpointConfig, checkpointPrecision, checkpointPreprocessing, findCheckpoint, loadCheckpoint, type LoadedCheckpoint, type SaeCfgJson } from './checkpoint.js';
import { DEFAULTS, type TrainConfig } from './config.js';
import { selectionForCheckpoint } from './inference.js';
import { detectFormat, FORMATS, probeFolder, type SaeFormatName } from './formats/index.js';
import { UserError } from '../util/errors.js';
import { isHubSpec, resolveHubFolder } from '../lm/hub-folder.js';

export interface Sae {
  /** the folder the weights were read from */
  dir: string;
  /** the format that folder is in ('sae': ours) */
  format: SaeFormatName;
  cfg: SaeCfgJson;
  params: SaeParams;
  /** d_in and d_sae */
  d: number;
  F: number;
  hook: string;
  model: string;
  /** how inputs were preprocessed in training (SPEC §3): data must have had the same */
  preprocessing: Preprocessing;
  /** dataset_scale's factor (x' = x · scale), defined iff preprocessing is dataset_scale */
  scale?: number;
  /** the training config, re-validated; null for an SAE that carries none */
  trainConfig: TrainConfig | null;
  /**
   * the precision it was trained at (cfg.json `precision`; fp32 when absent): a record, not a
   * requirement, since the weights are fp32 and any precision evaluates them
   */
  trainedPrecision: Precision;
  /** a JumpReLU export: per-feature thresholds select, per token */
  threshold?: Float32Array;
  /** the training state, when the folder has one and it was asked for (the density ranking lives there) */
  state?: LoadedCheckpoint['state'];
  /**
   * Tokens per batch for batch selections: the training batch size (appendix B: batch inference
   * exactly as in training), or the training default for an SAE without a training config.
   */
  batchSize: number;
  /** a fresh selection source, B → Selection, for one pass over data */
  selection(): (B: number) => Selection;
  /** refuse activations of another width, hook, model, preprocessing or dataset scale than the SAE's */
  checkData(meta: ShardMeta): void;
}

/**
 * Open the SAE at a checkpoint folder or run directory, or a published one by
 * `hf:OWNER/REPO[/SUBFOLDER][@REVISION]` (through the Hub cache, ../lm/hub-folder.ts). withState:
 * 'if-present' (the default) loads the training state when there is one — Feature Choice's
 * capacities follow its density ranking — and true requires it.
 */
export async function openSae(
  pathOrRunDir: string,
  opts: { withState?: boolean | 'if-present'; hook?: string; model?: string } = {},
): Promise<Sae> {
  // a published SAE (hf:OWNER/REPO[/SUBFOLDER][@REVISION]) becomes its folder in the Hub cache
  const local = isHubSpec(pathOrRunDir) ? (await resolveHubFolder(pathOrRunDir)).dir : pathOrRunDir;
  const dir = await findCheckpoint(local);
  const probe = await probeFolder(dir);
  const format = detectFormat(probe);
  if (format === 'sae') return saeFromCheckpoint(await loadCheckpoint(dir, { withState: opts.withState ?? 'if-present' }));
  if (opts.withState === true) throw new UserError(`${dir} is a ${format} folder: it has no training state (pass the run directory it was exported from)`);
  return saeFromCheckpoint(await FORMATS[format]!.load(probe), { format, hook: opts.hook, model: opts.model });
}

/**
 * The Sae of a checkpoint already in memory (a run's final weights, or a trainer's as they stand).
 * hook / model: what the caller says (--hook, --model), for a foreign SAE whose config names none;
 * one that contradicts a config that names its own is refused.
 */
export function saeFromCheckpoint(ck: LoadedCheckpoint, where: { format?: SaeFormatName; hook?: string; model?: string } = {}): Sae {
  const foreign = !!where.format && where.format !== 'sae';
  // the model a foreign config names stays (splice-eval compares it with --model as for ours)
  const cfg = foreign ? { ...ck.cfg, hook_name: pickHook(ck, where.hook), model_name: ck.cfg.model_name || where.model || '' } : ck.cfg;
  const trainConfig = cfg.sae_train ? checkpointConfig(ck) : null;
  const { preprocessing, scale } = checkpointPreprocessing(ck);
  return {
    dir: ck.dir,
    format: where.format ?? 'sae',
    cfg,
    params: ck.params,
    d: cfg.d_in,
    F: cfg.d_sae,
    hook: cfg.hook_name,
    model: cfg.model_name,
    preprocessing,
    ...(scale !== undefined ? { scale } : {}),
    trainConfig,
    trainedPrecision: checkpointPrecision(ck),
    threshold: ck.threshold,
    state: ck.state,
    batchSize: trainConfig?.batchSize ?? DEFAULTS.batchSize,
    selection: () => selectionForCheckpoint(ck),
    // the SAE only means something on inputs preprocessed as in training (raw activations give
    // FVU > 1 and, for export, thresholds calibrated on the wrong scale)
    checkData: (meta) => {
      if (!cfg.hook_name) throw new UserError(`${ck.dir}: its config does not say which hook it reads; pass --hook`);
      // a foreign config that names no model cannot be checked against the shards' model
      checkCompatible(meta, { d: cfg.d_in, hook: cfg.hook_name, ...(cfg.model_name ? { model: cfg.model_name } : {}), preprocessing, scale });
    },
  };
}

/** A foreign SAE's hook: its config's, else the caller's --hook; both given and different is a mistake worth one line. */
function pickHook(ck: LoadedCheckpoint, given: string | undefined): string {
  const own = ck.cfg.hook_name;
  if (!given || given === own) return own;
  // a hook in another library's naming (sparsify's module paths) is what --hook translates
  if (own && /^(blocks\.\d+\.)?hook_|^ln_final\./.test(own)) throw new UserError(`${ck.dir} says it reads ${own}, not ${given}; drop --hook or pass the SAE made for ${given}`);
  return given;
}

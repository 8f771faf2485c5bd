/**
 * The one front door to an SAE on disk: find it (a checkpoint folder, or a run directory's newest
 * checkpoint), load and validate it, and answer what every consumer asks of it — its sizes, hook,
 * model and preprocessing, the selection it runs with, the batch size that selection is meant
 * for, and whether given activations are ones it means anything on.
 *
 * Our checkpoint folder (SPEC §10) is the one format read today; another (SAELens or sparsify
 * folders) plugs in as one more loader that returns the same `Sae`.
 */
import type { SaeParams, Selection } from '../kernels/types.js';
import { checkCompatible } from '../store/compat.js';
import type { ShardMeta } from '../store/shard-format.js';
import type { Preprocessing } from '../store/preprocess.js';
import type { Precision } from '../kernels/bf16.js';
import { checkpointConfig, checkpointPrecision, checkpointPreprocessing, findCheckpoint, loadCheckpoint, type LoadedCheckpoint, type SaeCfgJson } from './checkpoint.js';
import { DEFAULTS, type TrainConfig } from './config.js';
import { selectionForCheckpoint } from './inference.js';

export interface Sae {
  /** the folder the weights were read from */
  dir: string;
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
 * Open the SAE at a checkpoint folder or run directory. withState: 'if-present' (the default) loads
 * the training state when there is one — Feature Choice's capacities follow its density ranking —
 * and true requires it.
 */
export async function openSae(pathOrRunDir: string, opts: { withState?: boolean | 'if-present' } = {}): Promise<Sae> {
  const ck = await loadCheckpoint(await findCheckpoint(pathOrRunDir), { withState: opts.withState ?? 'if-present' });
  return saeFromCheckpoint(ck);
}

/** The Sae of a checkpoint already in memory (a run's final weights, or a trainer's as they stand). */
export function saeFromCheckpoint(ck: LoadedCheckpoint): Sae {
  const { cfg } = ck;
  const trainConfig = cfg.sae_train ? checkpointConfig(ck) : null;
  const { preprocessing, scale } = checkpointPreprocessing(ck);
  return {
    dir: ck.dir,
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
    checkData: (meta) => checkCompatible(meta, { d: cfg.d_in, hook: cfg.hook_name, model: cfg.model_name, preprocessing, scale }),
  };
}

import { UserError } from '../../util/errors.js';
import { checkCompatible } from '../../store/compat.js';
import { resolveConfig, resolveWidth, totalSteps, type TrainConfig, type PhaseConfig } from '../../sae/config.js';
import { architectureName, checkpointConfig, checkpointPreprocessing, findCheckpoint, loadCheckpoint, type LoadedCheckpoint, type SaeCfgJson } from '../../sae/checkpoint.js';
import { autoDeadWindow, resumeConfig } from '../../sae/resume.js';
import type { TrainData } from './data.js';

/** What a training run will do, settled before its folder is touched: config, shapes, the checkpoint it starts from. */
export interface TrainPlan {
  cfg: TrainConfig;
  /** the checkpoint continued (resume) or started from (init-from) */
  ck?: LoadedCheckpoint;
  d: number;
  width: number;
  /** a feature is dead when it has not fired in this many training tokens */
  deadWindow: number;
  totalSteps: number;
}

export interface PlanRequest {
  /** partial config (flags and/or a config file), validated by resolveConfig */
  config: Record<string, unknown>;
  /** the checkpoint to continue exactly */
  resume?: string;
  /** the checkpoint whose weights and density statistics a new run starts from */
  initFrom?: string;
  appendPhases?: PhaseConfig[];
}

/**
 * The run's config (resolved, or the checkpoint's continued with the request's changes), checked
 * against the data: the same d, hook and preprocessing as the checkpoint, a width the checkpoint
 * has, and at least one batch of rows.
 */
export async function planRun(data: TrainData, req: PlanRequest): Promise<TrainPlan> {
  let cfg: TrainConfig;
  let ck: LoadedCheckpoint | undefined;
  if (req.resume) {
    ck = await loadCheckpoint(await findCheckpoint(req.resume), { withState: true });
    cfg = resumeConfig(checkpointConfig(ck), req.config, ck.state?.snapshot.step ?? ck.cfg.sae_train?.step ?? 0, req.appendPhases);
  } else {
    cfg = resolveConfig(req.config);
    if (req.appendPhases?.length) cfg = resolveConfig(req.config, { phases: [...cfg.phases, ...req.appendPhases] });
    if (req.initFrom) ck = await loadCheckpoint(await findCheckpoint(req.initFrom), { withState: 'if-present' });
  }
  const d = data.meta.d;
  checkCompatible(data.meta, { d: ck ? ck.cfg.d_in : undefined, preprocessing: cfg.expectPreprocessing === 'any' ? undefined : cfg.expectPreprocessing });
  // a checkpoint continues on activations of the kind it was trained on, at the same dataset scale
  if (ck) checkCompatible(data.meta, { hook: ck.cfg.hook_name, ...checkpointPreprocessing(ck) });
  const F = resolveWidth(cfg, d);
  if (ck && ck.cfg.d_sae !== F && (req.resume || cfg.width !== 'auto'))
    throw new UserError(`checkpoint ${ck.dir} has width ${ck.cfg.d_sae} but the run asks for ${F}`);
  const width = ck ? ck.cfg.d_sae : F;
  if (cfg.k >= width) throw new UserError(`k must be < width (k=${cfg.k}, width=${width})`);
  // one precision for the LM that computes the rows as the run goes and the SAE that trains on
  // them (stored rows are data: a bf16 harvest trains at fp32 and vice versa)
  if (data.lmPrecision !== undefined && data.lmPrecision !== cfg.precision)
    throw new UserError(`the run trains at precision ${cfg.precision} but the model it harvests from computes at ${data.lmPrecision}: give both the same precision`);
  if (data.rows !== undefined && data.rows < cfg.batchSize) throw new UserError(`${data.label} holds ${data.rows} rows, fewer than one batch of ${cfg.batchSize}`);

  // a resumed run keeps the dead window it started with, even when --steps extends it
  const saved = req.resume ? ck?.cfg.sae_train?.deadWindow : undefined;
  const deadWindow = typeof saved === 'number' && Number.isInteger(saved) && saved > 0 ? saved : autoDeadWindow(cfg);
  return { cfg, ck, d, width, deadWindow, totalSteps: totalSteps(cfg) };
}

/** cfg.json of a checkpoint of this run at `step`, trained last with `activation` (SAELens keys, ours under sae_train). */
export function checkpointCfgJson(plan: TrainPlan, data: TrainData, step: number, activation: string): SaeCfgJson {
  const { cfg, d, width, deadWindow } = plan;
  return {
    architecture: architectureName(activation),
    d_in: d,
    d_sae: width,
    dtype: 'float32',
    precision: cfg.precision,
    hook_name: data.meta.hook,
    model_name: data.meta.model,
    normalize_activations: data.meta.preprocessing,
    ...(data.meta.scale !== undefined ? { dataset_scale: data.meta.scale } : {}),
    apply_b_dec_to_input: true,
    activation_fn_kwargs: activation === 'relu' ? {} : { k: cfg.k },
    format: 'sae-checkpoint/1',
    sae_train: {
      config: cfg,
      d,
      F: width,
      step,
      deadWindow,
      shards: data.label,
      ...(data.digest ? { shardsDigest: data.digest } : {}),
      ...(data.meta.precision !== undefined ? { shardsPrecision: data.meta.precision } : {}),
    },
  };
}

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { SaeParams } from '../kernels/types.js';
import { UserError } from '../util/errors.js';
import { publishDirAtomic, tmpSibling, writeFileAtomic, describeFsError } from '../util/atomic.js';
import { readSafetensors, writeSafetensors, type Tensor } from '../util/safetensors.js';
import { allocParams } from '../kernels/params.js';
import { isPreprocessing, PREPROCESSINGS, type Preprocessing } from '../store/preprocess.js';
import { isPrecision, PRECISIONS, type Precision } from '../kernels/bf16.js';
import { resolveConfig, type TrainConfig } from './config.js';
import type { TrainerSnapshot } from './trainer.js';

/**
 * SAE checkpoint folder (SPEC §10):
 *   sae.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec (+ threshold for JumpReLU)
 *   cfg.json          SAELens-style cfg, with our full training config under "sae_train"
 *   state.safetensors optimiser moments, density statistics, ranking (only in training checkpoints)
 *   state.json        step, tokens, RNG, data position, … (only in training checkpoints)
 * The folder is filled under a temporary name and renamed when complete, so a folder with the final
 * name is never half-written.
 */

export const CHECKPOINT_FORMAT = 'sae-checkpoint/1';

export interface SaeCfgJson {
  architecture: string;
  d_in: number;
  d_sae: number;
  dtype: 'float32';
  hook_name: string;
  model_name: string;
  normalize_activations: string;
  /**
   * With normalize_activations 'dataset_scale' (SAELens' expected_average_only_in), and only then:
   * the factor s the inputs were multiplied by, x' = x · s (recorded in the shards trained on).
   */
  dataset_scale?: number;
  /**
   * The precision the SAE was trained at (docs/precision.md): a record of how it was made, not of
   * how it is stored (the weights are float32) nor of how it must be run; absent (older
   * checkpoints) = fp32.
   */
  precision?: Precision;
  apply_b_dec_to_input: boolean;
  activation_fn_kwargs: Record<string, number>;
  format: string;
  /** present for training checkpoints */
  sae_train?: {
    config: TrainConfig;
    d: number;
    F: number;
    step: number;
    deadWindow: number;
    shards?: string;
    /** shardSetDigest of the shards (absent for live and piped data, and in older checkpoints) */
    shardsDigest?: string;
    /** the precision the activations were computed at (their shards' sae.precision, or the live LM's); absent when they record none */
    shardsPrecision?: Precision;
  };
  /** JumpReLU export: how thresholds were calibrated */
  calibration?: Record<string, unknown>;
}

export interface LoadedCheckpoint {
  dir: string;
  cfg: SaeCfgJson;
  params: SaeParams;
  threshold?: Float32Array;
  state?: { snapshot: TrainerSnapshot; dataPosition: unknown };
}

function f32(shape: number[], data: Float32Array): Tensor {
  return { dtype: 'F32', shape, data };
}

export function transpose(a: Float32Array | Float64Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

export function weightTensors(p: SaeParams, threshold?: Float32Array): Record<string, Tensor> {
  const t: Record<string, Tensor> = {
    W_enc: f32([p.d, p.F], transpose(p.WencT, p.F, p.d)),
    W_dec: f32([p.F, p.d], Float32Array.from(p.Wdec)),
    b_enc: f32([p.F], Float32Array.from(p.bEnc)),
    b_dec: f32([p.d], Float32Array.from(p.bDec)),
  };
  if (threshold) t.threshold = f32([p.F], threshold);
  return t;
}

/** Write a checkpoint folder atomically. `snapshot` makes it resumable. */
export async function saveCheckpoint(
  dir: string,
  cfg: SaeCfgJson,
  params: SaeParams,
  extra?: { snapshot?: TrainerSnapshot; dataPosition?: unknown; threshold?: Float32Array },
): Promise<void> {
  await fs.mkdir(path.dirname(path.resolve(dir)), { recursive: true }).catch((e) => {
    throw describeFsError(e, `creating ${path.dirname(dir)}`);
  });
  const tmp = tmpSibling(dir);
  try {
    await fs.mkdir(tmp, { recursive: true });
    await writeSafetensors(path.join(tmp, 'sae.safetensors'), weightTensors(params, extra?.threshold), { format: 'pt' });
    await writeFileAtomic(path.join(tmp, 'cfg.json'), JSON.stringify(cfg, null, 2) + '\n');
    const s = extra?.snapshot;
    if (s) {
      const tensors: Record<string, Tensor> = {
        order: { dtype: 'I32', shape: [s.order.length], data: s.order },
        dying: { dtype: 'U8', shape: [s.dying.length], data: s.dying },
        capacity_credit: { dtype: 'F64', shape: [s.capacityCredit.length], data: s.capacityCredit },
      };
      s.m.forEach((a, i) => (tensors[`adam_m.${i}`] = f32([a.length], a)));
      s.v.forEach((a, i) => (tensors[`adam_v.${i}`] = f32([a.length], a)));
      await writeSafetensors(path.join(tmp, 'state.safetensors'), tensors);
      const state = {
        format: CHECKPOINT_FORMAT,
        step: s.step,
        tokens: s.tokens,
        rng: s.rng,
        lastRankStep: s.lastRankStep,
        batchCredit: s.batchCredit,
        stats: s.stats,
        dataPosition: extra?.dataPosition ?? null,
        moments: s.m.length,
      };
      await writeFileAtomic(path.join(tmp, 'state.json'), JSON.stringify(state) + '\n');
    }
    await publishDirAtomic(tmp, dir);
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw describeFsError(err, `writing checkpoint ${dir}`);
  }
}

async function readJson(file: string, label: string): Promise<unknown> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new UserError(`${label}: missing ${path.basename(file)}`);
    throw describeFsError(err, `reading ${file}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new UserError(`${label}: ${path.basename(file)} is not valid JSON (truncated?)`);
  }
}

function need(t: Record<string, { shape: number[]; data: unknown }>, name: string, shape: number[], label: string): Float32Array {
  const x = t[name];
  if (!x) throw new UserError(`${label}: tensor ${name} missing`);
  if (x.shape.length !== shape.length || x.shape.some((v, i) => v !== shape[i]))
    throw new UserError(`${label}: tensor ${name} has shape [${x.shape}] but [${shape}] was expected`);
  if (!(x.data instanceof Float32Array)) throw new UserError(`${label}: tensor ${name} must be float32`);
  return x.data;
}

/**
 * Load a checkpoint folder, validating every piece. withState: true requires the training state,
 * 'if-present' loads it when the folder is a training checkpoint (a damaged state is still an error).
 */
export async function loadCheckpoint(dir: string, opts: { withState: boolean | 'if-present' }): Promise<LoadedCheckpoint> {
  const label = `checkpoint ${dir}`;
  const st = await fs.stat(dir).catch(() => null);
  if (!st) throw new UserError(`${label}: no such directory`);
  if (!st.isDirectory()) throw new UserError(`${label}: not a directory`);
  const cfg = (await readJson(path.join(dir, 'cfg.json'), label)) as SaeCfgJson;
  if (typeof cfg !== 'object' || !cfg || !Number.isInteger(cfg.d_in) || !Number.isInteger(cfg.d_sae))
    throw new UserError(`${label}: cfg.json lacks d_in/d_sae`);
  const d = cfg.d_in;
  const F = cfg.d_sae;
  if (d < 1 || F < 1 || d * F > 2 ** 31 - 1) throw new UserError(`${label}: cfg.json has impossible sizes d_in=${d}, d_sae=${F}`);
  const wfile = path.join(dir, 'sae.safetensors');
  if (!(await fs.stat(wfile).catch(() => null))) throw new UserError(`${label}: missing sae.safetensors`);
  const w = (await readSafetensors(wfile)).tensors;
  const params = allocParams(d, F);
  params.WencT.set(transpose(need(w, 'W_enc', [d, F], label), d, F));
  params.Wdec.set(need(w, 'W_dec', [F, d], label));
  params.bEnc.set(need(w, 'b_enc', [F], label));
  params.bDec.set(need(w, 'b_dec', [d], label));
  for (const t of [params.WencT, params.Wdec, params.bEnc, params.bDec])
    for (let i = 0; i < t.length; i++) if (!Number.isFinite(t[i])) throw new UserError(`${label}: weights contain NaN/Inf`);
  const out: LoadedCheckpoint = { dir, cfg, params };
  if (w.threshold) out.threshold = need(w, 'threshold', [F], label);
  if (!opts.withState) return out;
  if (opts.withState === 'if-present' && (!cfg.sae_train || !(await fs.stat(path.join(dir, 'state.json')).catch(() => null)))) return out;

  if (!cfg.sae_train) throw new UserError(`${label}: not a training checkpoint (no sae_train in cfg.json)`);
  const state = (await readJson(path.join(dir, 'state.json'), label)) as Record<string, unknown>;
  if (state.format !== CHECKPOINT_FORMAT) throw new UserError(`${label}: state.json format ${String(state.format)} is not ${CHECKPOINT_FORMAT}`);
  const sfile = path.join(dir, 'state.safetensors');
  if (!(await fs.stat(sfile).catch(() => null))) throw new UserError(`${label}: missing state.safetensors`);
  const s = (await readSafetensors(sfile)).tensors;
  const sizes = [F * d, F, F * d, d];
  const n = Number(state.moments);
  if (n !== sizes.length) throw new UserError(`${label}: state has ${n} moment tensors, expected ${sizes.length}`);
  const m = sizes.map((len, i) => need(s, `adam_m.${i}`, [len], label));
  const v = sizes.map((len, i) => need(s, `adam_v.${i}`, [len], label));
  const order = s.order?.data;
  const dying = s.dying?.data;
  if (!(order instanceof Int32Array) || order.length !== F) throw new UserError(`${label}: state tensor order missing or wrong size`);
  if (!(dying instanceof Uint8Array) || dying.length !== F) throw new UserError(`${label}: state tensor dying missing or wrong size`);
  // Feature Choice credits (SPEC §5 "Rounding"); a checkpoint from before capacityRounding existed floored and has none
  const legacy = (cfg.sae_train.config as unknown as Record<string, unknown>)?.capacityRounding === undefined;
  let capacityCredit = s.capacity_credit?.data;
  if (capacityCredit === undefined && legacy) capacityCredit = new Float64Array(F);
  if (!(capacityCredit instanceof Float64Array) || capacityCredit.length !== F) throw new UserError(`${label}: state tensor capacity_credit missing or wrong size`);
  for (let i = 0; i < F; i++) if (!(Math.abs(capacityCredit[i]) < 1)) throw new UserError(`${label}: state tensor capacity_credit holds ${capacityCredit[i]}, outside (−1, 1)`);
  const batchCredit = state.batchCredit ?? (legacy ? 0 : undefined);
  // a resume must be exact: every piece of state is checked, none is defaulted
  const bad = (what: string): never => {
    throw new UserError(`${label}: state.json has ${what}`);
  };
  const step = state.step;
  if (typeof step !== 'number' || !Number.isInteger(step) || step < 0) bad('no valid step');
  if (step !== cfg.sae_train.step) bad(`step ${step} but cfg.json says ${cfg.sae_train.step}`);
  const tokens = state.tokens;
  if (typeof tokens !== 'number' || !Number.isInteger(tokens) || tokens < 0) bad('no valid token count');
  const lastRankStep = state.lastRankStep;
  if (typeof lastRankStep !== 'number' || !Number.isInteger(lastRankStep) || lastRankStep < 0 || lastRankStep > (step as number)) bad('no valid lastRankStep');
  const rng = state.rng;
  if (!Array.isArray(rng) || rng.length !== 4 || !rng.every((v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32)) bad('no valid RNG state');
  if (typeof state.dataPosition !== 'object' || state.dataPosition === null) bad('no data position');
  if (typeof batchCredit !== 'number' || !Number.isFinite(batchCredit)) bad('no valid batchCredit');
  const stats = state.stats as { F?: unknown } | undefined;
  if (typeof stats !== 'object' || stats === null || stats.F !== F) bad(`density statistics for another width than ${F}`);
  const seen = new Uint8Array(F);
  for (let i = 0; i < F; i++) {
    const j = order[i];
    if (j < 0 || j >= F || seen[j]) bad('a density ranking that is not a permutation');
    seen[j] = 1;
  }
  for (const t of [...m, ...v]) for (let i = 0; i < t.length; i++) if (!Number.isFinite(t[i])) throw new UserError(`${label}: optimiser state contains NaN/Inf`);
  out.state = {
    snapshot: {
      step: step as number,
      tokens: tokens as number,
      rng: rng as TrainerSnapshot['rng'],
      lastRankStep: lastRankStep as number,
      order,
      dying,
      capacityCredit,
      batchCredit: batchCredit as number,
      stats: state.stats as TrainerSnapshot['stats'],
      m,
      v,
    },
    dataPosition: state.dataPosition,
  };
  return out;
}

/**
 * How a checkpoint's inputs are preprocessed (SPEC §3), validated: normalize_activations is one of
 * ours, and dataset_scale comes with its positive factor (recorded iff dataset_scale).
 */
export function checkpointPreprocessing(ck: { dir: string; cfg: SaeCfgJson }): { preprocessing: Preprocessing; scale?: number } {
  const { normalize_activations: pre, dataset_scale: scale } = ck.cfg;
  if (!isPreprocessing(pre)) throw new UserError(`checkpoint ${ck.dir}: cfg.json has normalize_activations ${JSON.stringify(pre)}, not one of ${PREPROCESSINGS.join(', ')}`);
  if (pre !== 'dataset_scale') {
    if (scale !== undefined) throw new UserError(`checkpoint ${ck.dir}: cfg.json has a dataset_scale but normalize_activations ${pre}`);
    return { preprocessing: pre };
  }
  if (typeof scale !== 'number' || !Number.isFinite(scale) || scale <= 0) {
    throw new UserError(`checkpoint ${ck.dir}: normalize_activations is dataset_scale but cfg.json records no positive dataset_scale (got ${JSON.stringify(scale)}); add the sae.scale of the shards it was trained on as dataset_scale`);
  }
  return { preprocessing: pre, scale };
}

/**
 * The dataset scale the checkpoint at a folder or run directory records (undefined unless it was
 * trained on dataset_scale), from its cfg.json alone.
 */
export async function checkpointScale(pathOrRunDir: string): Promise<number | undefined> {
  const dir = await findCheckpoint(pathOrRunDir);
  const cfg = (await readJson(path.join(dir, 'cfg.json'), `checkpoint ${dir}`)) as SaeCfgJson;
  if (typeof cfg !== 'object' || !cfg) throw new UserError(`checkpoint ${dir}: cfg.json is not an object`);
  return checkpointPreprocessing({ dir, cfg }).scale;
}

/**
 * The precision a checkpoint was trained at: cfg.json's `precision`, else its training config's,
 * else fp32 (checkpoints from before precision existed). Only a value that is no precision at all
 * is refused: any precision evaluates any checkpoint.
 */
export function checkpointPrecision(ck: { dir: string; cfg: SaeCfgJson }): Precision {
  const p = ck.cfg.precision ?? (ck.cfg.sae_train?.config as Partial<TrainConfig> | undefined)?.precision ?? 'fp32';
  if (!isPrecision(p)) throw new UserError(`checkpoint ${ck.dir}: cfg.json has precision ${JSON.stringify(p)}, not one of ${PRECISIONS.join(', ')}`);
  return p;
}

/**
 * The precision the checkpoint at a folder or run directory was trained at (its cfg.json alone),
 * or undefined where there is no checkpoint yet (a run killed before its first one).
 */
export async function checkpointPrecisionAt(pathOrRunDir: string): Promise<Precision | undefined> {
  const dir = (await exists(path.join(pathOrRunDir, 'cfg.json'))) ? pathOrRunDir : await runCheckpoint(pathOrRunDir);
  if (!dir) return undefined;
  const cfg = (await readJson(path.join(dir, 'cfg.json'), `checkpoint ${dir}`)) as SaeCfgJson;
  if (typeof cfg !== 'object' || !cfg) throw new UserError(`checkpoint ${dir}: cfg.json is not an object`);
  return checkpointPrecision({ dir, cfg });
}

/** The TrainConfig a training checkpoint was made with, re-validated. */
export function checkpointConfig(ck: LoadedCheckpoint): TrainConfig {
  const c = ck.cfg.sae_train?.config;
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new UserError(`checkpoint ${ck.dir}: cfg.json has no training config`);
  try {
    const raw = { ...(c as unknown as Record<string, unknown>) };
    // checkpoints written before 'auto' existed stored 0 for a derived default
    for (const key of ['width', 'lr', 'mMax', 'deadWindow', 'shuffleWindow']) if (raw[key] === 0) raw[key] = 'auto';
    // checkpoints from before capacityRounding existed were trained with Algorithm 1's floor
    if (raw.capacityRounding === undefined) raw.capacityRounding = 'floor';
    return resolveConfig(raw);
  } catch (err) {
    throw new UserError(`checkpoint ${ck.dir}: ${(err as Error).message}`);
  }
}

export function architectureName(activation: string): string {
  // SAELens names: standard (ReLU + L1), topk, jumprelu; batch-level selections keep our names.
  return activation === 'relu' ? 'standard' : activation;
}

/** Accept a checkpoint folder or a run directory (then its newest checkpoint). */
export async function findCheckpoint(p: string): Promise<string> {
  // cfg.json: ours, SAELens, sparsify; config.json: dictionary_learning (./formats tells them apart)
  if ((await exists(path.join(p, 'cfg.json'))) || (await exists(path.join(p, 'config.json')))) return p;
  const newest = await runCheckpoint(p);
  if (newest) return newest;
  if (!(await exists(p))) throw new UserError(`checkpoint ${p}: no such directory`);
  throw new UserError(`checkpoint ${p}: no cfg.json (not a checkpoint or run directory)`);
}

/** A run directory's newest checkpoint: whichever of checkpoint/ and final/ is further along (final on a tie); null when it has neither. */
export async function runCheckpoint(runDir: string): Promise<string | null> {
  let best: string | null = null;
  let bestStep = -Infinity;
  for (const sub of ['checkpoint', 'final']) {
    const dir = path.join(runDir, sub);
    if (!(await exists(path.join(dir, 'cfg.json')))) continue;
    const step = await stepOf(dir);
    if (step >= bestStep) [best, bestStep] = [dir, step];
  }
  return best;
}

async function exists(p: string): Promise<boolean> {
  return !!(await fs.stat(p).catch(() => null));
}

async function stepOf(dir: string): Promise<number> {
  try {
    const s = JSON.parse(await fs.readFile(path.join(dir, 'state.json'), 'utf8')) as { step?: number };
    return s.step ?? -1;
  } catch {
    return -1;
  }
}

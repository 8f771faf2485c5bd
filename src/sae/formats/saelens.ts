/**
 * SAELens ≥ 6 folders (issue 19 part 1), as SAELens 6.49 (decoderesearch/SAELens; the same layout
 * since 6.18) saves and loads them:
 *   sae_weights.safetensors  W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in],
 *                            + threshold [d_sae] for jumprelu; nothing else (load_state_dict is strict)
 *   cfg.json                 SAEConfig.to_dict(): d_in, d_sae, dtype, device, apply_b_dec_to_input,
 *                            normalize_activations, reshape_activations, metadata, (k,
 *                            rescale_acts_by_decoder_norm for topk), architecture
 *   sparsity.safetensors     `sparsity` = log10(feature density + 1e-10)
 * A load turns its forward into ours exactly (folds in float64, rounded once to float32); an export
 * writes ours so that SAELens' forward computes what ours does (layer_norm: up to its 1e-5 eps).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError, publishDirAtomic, tmpSibling, writeFileAtomic } from '../../util/atomic.js';
import { openSafetensors, writeSafetensors, type Tensor } from '../../util/safetensors.js';
import { toFloat32 } from '../../lm/tensors.js';
import { allocParams } from '../../kernels/params.js';
import { isPrecision } from '../../kernels/bf16.js';
import { CHECKPOINT_FORMAT, transpose, type LoadedCheckpoint, type SaeCfgJson } from '../checkpoint.js';
import type { ExportSource, FolderProbe, SaeFormat } from './types.js';

/** The SAELens release whose layout this implements (written as metadata.sae_lens_version). */
export const SAELENS_VERSION = '6.49.2';
const WEIGHTS = 'sae_weights.safetensors';
const CFG = 'cfg.json';
const SPARSITY = 'sparsity.safetensors';
/** SAELens architecture → ours, and back. */
const ARCH = { standard: 'relu', topk: 'topk', jumprelu: 'jumprelu' } as const;
const SL_ARCH = { relu: 'standard', topk: 'topk', jumprelu: 'jumprelu' } as const;
/** sae_lens/constants.py DTYPE_MAP: the dtypes a cfg may name (the weights are cast to it on load). */
const DTYPES = ['float32', 'float64', 'float16', 'bfloat16', 'torch.float32', 'torch.float64', 'torch.float16', 'torch.bfloat16'];

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v ? v : undefined);
const posInt = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;

interface SlCfg {
  arch: 'relu' | 'topk' | 'jumprelu';
  d: number;
  F: number;
  k?: number;
  applyBDec: boolean;
  rescale: boolean;
  norm: 'none' | 'layer_norm' | 'expected_average_only_in';
  hook: string;
  model: string;
  meta: Obj;
}

/** cfg.json in v6 terms, older cfgs brought forward as SAELens does; one line for anything it cannot be. */
function readCfg(raw: unknown, label: string): SlCfg {
  if (!isObj(raw)) throw new UserError(`${label}: cfg.json is missing or not a JSON object`);
  const meta = isObj(raw.metadata) ? raw.metadata : {};
  // loading/pretrained_sae_loaders.py handle_config_defaulting: no version, or one before 6, is a pre-6 cfg
  const version = str(raw.sae_lens_version) ?? str(meta.sae_lens_version);
  const pre6 = !version || !(parseInt(version, 10) >= 6);
  let arch = raw.architecture ?? (pre6 ? 'standard' : undefined);
  let k = raw.k;
  let norm = raw.normalize_activations ?? 'none';
  if (pre6) {
    // handle_pre_6_0_config: activation_fn topk with activation_fn_kwargs.k is a topk SAE; a boolean normalize_activations is the April update's
    const kw = isObj(raw.activation_fn_kwargs) ? raw.activation_fn_kwargs.k : undefined;
    if ((raw.activation_fn ?? raw.activation_fn_str) === 'topk' && kw != null) [arch, k] = ['topk', kw];
    if (typeof norm === 'boolean') norm = norm ? 'expected_average_only_in' : 'none';
  }
  if (typeof arch !== 'string' || !Object.hasOwn(ARCH, arch)) throw new UserError(`${label}: architecture ${JSON.stringify(arch)} is not one this reads (standard, topk, jumprelu)`);
  const { d_in: d, d_sae: F } = raw;
  if (!posInt(d) || !posInt(F) || d * F > 2 ** 31 - 1) throw new UserError(`${label}: cfg.json has no valid d_in/d_sae (got ${JSON.stringify(d)}, ${JSON.stringify(F)})`);
  if (raw.dtype !== undefined && !DTYPES.includes(raw.dtype as string)) throw new UserError(`${label}: cfg.json dtype ${JSON.stringify(raw.dtype)} is not one of ${DTYPES.slice(0, 4).join(', ')}`);
  const a = ARCH[arch as keyof typeof ARCH];
  if (a === 'topk' && k === undefined) throw new UserError(`${label}: architecture topk but cfg.json has no k`);
  if (a === 'topk' && (!posInt(k) || k > F)) throw new UserError(`${label}: cfg.json k ${JSON.stringify(k)} is not a whole number between 1 and d_sae ${F}`);
  const applyBDec = raw.apply_b_dec_to_input ?? true;
  if (typeof applyBDec !== 'boolean') throw new UserError(`${label}: cfg.json apply_b_dec_to_input is not true or false`);
  // reshape hook_z only flattens [n_heads, d_head] (saes/sae.py turn_on_forward_pass_hook_z_reshaping): the identity on flat rows
  if (!['none', 'hook_z', undefined].includes(raw.reshape_activations as string)) throw new UserError(`${label}: cfg.json reshape_activations ${JSON.stringify(raw.reshape_activations)} is not none or hook_z`);
  if (norm !== 'none' && norm !== 'layer_norm' && norm !== 'expected_average_only_in')
    throw new UserError(`${label}: normalize_activations ${JSON.stringify(norm)} has no preprocessing of ours (none, layer_norm and expected_average_only_in have)`);
  const hook = str(meta.hook_name) ?? str(raw.hook_name) ?? str(raw.hook_point) ?? '';
  const model = str(meta.model_name) ?? str(raw.model_name) ?? '';
  return { arch: a, d, F, ...(a === 'topk' ? { k: k as number } : {}), applyBDec, rescale: a === 'topk' && raw.rescale_acts_by_decoder_norm === true, norm, hook, model, meta };
}

/** Exactly the tensors SAELens' strict load_state_dict takes, each of its shape, widened to float32 and finite. */
async function readWeights(dir: string, c: SlCfg, label: string): Promise<Record<string, Float32Array>> {
  const want: Record<string, number[]> = { W_enc: [c.d, c.F], W_dec: [c.F, c.d], b_enc: [c.F], b_dec: [c.d] };
  if (c.arch === 'jumprelu') want.threshold = [c.F];
  const st = await openSafetensors(path.join(dir, WEIGHTS));
  try {
    for (const name of st.entries.keys())
      if (!Object.hasOwn(want, name) && name !== 'scaling_factor') throw new UserError(`${label}: unexpected tensor ${name} in ${WEIGHTS} (a ${c.arch === 'relu' ? 'standard' : c.arch} SAE holds exactly ${Object.keys(want).join(', ')})`);
    const out: Record<string, Float32Array> = {};
    for (const [name, shape] of Object.entries(want)) {
      const e = st.entries.get(name);
      if (!e) throw new UserError(`${label}: tensor ${name} missing from ${WEIGHTS}`);
      if (e.shape.length !== shape.length || e.shape.some((v, i) => v !== shape[i]))
        throw new UserError(`${label}: tensor ${name} has shape [${e.shape}] but cfg.json (d_in ${c.d}, d_sae ${c.F}) needs [${shape}]`);
      // read_sae_components_from_disk casts every tensor to cfg.dtype: F16/BF16 widen to float32 exactly
      const t = toFloat32(await st.read(name), `${label}: tensor ${name}`);
      if (!t.every(Number.isFinite)) throw new UserError(`${label}: tensor ${name} contains NaN/Inf`);
      out[name] = t;
    }
    // read_sae_components_from_disk drops a scaling_factor of all ones; any other has no v6 meaning
    if (st.entries.has('scaling_factor')) {
      const s = toFloat32(await st.read('scaling_factor'), `${label}: tensor scaling_factor`);
      if (!s.every((v) => Math.abs(v - 1) <= 1e-5 + 1e-8)) throw new UserError(`${label}: tensor scaling_factor is not all ones (a pre-6 finetuning scale SAELens 6 no longer loads)`);
    }
    return out;
  } finally {
    await st.close();
  }
}

/** The dataset scale an expected_average_only_in folder can be read with: a training checkpoint's activation_scaler.json. */
function recordedScale(probe: FolderProbe, c: SlCfg, label: string): number | undefined {
  if (c.norm === 'expected_average_only_in') {
    // training/sae_trainer.py: checkpoints keep the factor in activation_scaler.json; the final SAE has it folded in and says "none"
    const s = (probe.json['activation_scaler.json'] as Obj | undefined)?.scaling_factor;
    if (typeof s === 'number' && Number.isFinite(s) && s > 0) return s;
    throw new UserError(`${label}: normalize_activations expected_average_only_in, but the folder records no scaling factor (activation_scaler.json); SAELens' own load ignores it too, so the weights' input scale is unknown`);
  }
  // our export of dataset_scale folded the scale and said so
  const s = (c.meta.sae_export as Obj | undefined)?.dataset_scale;
  return c.norm === 'none' && typeof s === 'number' && Number.isFinite(s) && s > 0 ? s : undefined;
}

async function load(probe: FolderProbe): Promise<LoadedCheckpoint> {
  const label = `SAELens folder ${probe.dir}`;
  const c = readCfg(probe.json[CFG], label);
  if (!probe.files.includes(WEIGHTS)) throw new UserError(`${label}: missing ${WEIGHTS}`);
  const scale = recordedScale(probe, c, label);
  const w = await readWeights(probe.dir, c, label);
  const { d, F } = c;
  const [We, Wd, be, bd] = [w.W_enc, w.W_dec, w.b_enc, w.b_dec]; // We is d×F: column j is feature j
  if (c.rescale) {
    // saes/topk_sae.py _fold_norm_topk: topk on h·‖W_dec_j‖ and decode with W_dec_j/‖W_dec_j‖ is a unit decoder with the norm in the encoder
    for (let j = 0; j < F; j++) {
      let ss = 0;
      for (let i = 0; i < d; i++) ss += Wd[j * d + i] ** 2;
      const n = Math.max(Math.sqrt(ss), 1e-8);
      be[j] *= n;
      for (let i = 0; i < d; i++) We[i * F + j] *= n;
      for (let i = 0; i < d; i++) Wd[j * d + i] /= n;
    }
  }
  if (!c.applyBDec) {
    // saes/sae.py process_sae_in: without b_dec at the input, x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc)
    for (let j = 0; j < F; j++) {
      let s = be[j];
      for (let i = 0; i < d; i++) s += bd[i] * We[i * F + j];
      be[j] = s;
    }
  }
  // the inverse of write()'s folds: layer_norm's input is √(d−1) times our unit-norm one; a folded dataset scale divides back out
  const f = c.norm === 'layer_norm' ? 1 / Math.sqrt(d - 1) : scale !== undefined && c.norm === 'none' ? Math.fround(scale) : 1;
  if (c.norm === 'layer_norm' && d < 2) throw new UserError(`${label}: layer_norm needs d_in ≥ 2`);
  if (f !== 1) scaleFold(We, Wd, bd, f);
  const params = allocParams(d, F);
  params.WencT.set(transpose(We, d, F));
  params.Wdec.set(Wd);
  params.bEnc.set(be);
  params.bDec.set(bd);
  const pre = c.norm === 'layer_norm' ? 'center_unit_norm' : scale !== undefined ? 'dataset_scale' : 'none';
  const precision = (c.meta.sae_export as Obj | undefined)?.trained_precision;
  const cfg: SaeCfgJson = {
    architecture: c.arch,
    d_in: d,
    d_sae: F,
    dtype: 'float32',
    hook_name: c.hook,
    model_name: c.model,
    normalize_activations: pre,
    ...(scale !== undefined ? { dataset_scale: scale } : {}),
    ...(isPrecision(precision) ? { precision } : {}),
    apply_b_dec_to_input: true,
    activation_fn_kwargs: c.k !== undefined ? { k: c.k } : {},
    format: 'saelens',
  };
  return { dir: probe.dir, cfg, params, ...(w.threshold ? { threshold: w.threshold } : {}) };
}

/**
 * Inputs f times larger: W_enc / f, W_dec · f, b_dec · f (each rounded once). f = 1/s is SAELens'
 * fold_activation_norm_scaling_factor(s) (saes/sae.py); f = √(d−1) is layer_norm's (see write()).
 */
function scaleFold(We: Float32Array, Wd: Float32Array, bd: Float32Array, f: number): void {
  for (let i = 0; i < We.length; i++) We[i] = We[i] / f;
  for (let i = 0; i < Wd.length; i++) Wd[i] = Wd[i] * f;
  for (let i = 0; i < bd.length; i++) bd[i] = bd[i] * f;
}

/**
 * Our SAE as a SAELens folder. Preprocessing: 'none' as is (bit-exact); 'center_unit_norm' as
 * layer_norm, which feeds the SAE (x − μ)/(σ + 1e-5) with σ = ‖x − μ‖/√(d−1) (unbiased std) and
 * returns x̂·σ + μ (saes/sae.py run_time_activation_ln_in/_out): that input is √(d−1)·(ours) up to
 * the eps, so W_enc/√(d−1), b_dec·√(d−1), W_dec·√(d−1) give the same affinities and a
 * reconstruction √(d−1) times ours, which ·σ makes ours ·‖x − μ‖ + μ. 'dataset_scale' s is folded
 * as SAELens' trainer folds its own (fold_activation_norm_scaling_factor) and exported as 'none',
 * since an inference SAE ignores expected_average_only_in (its load_from_disk never rescales).
 */
async function write(src: ExportSource, out: string): Promise<void> {
  const { d, F } = src.params;
  const refuse = (why: string): never => {
    throw new UserError(`cannot export to SAELens: ${why}`);
  };
  if (!Object.hasOwn(SL_ARCH, src.architecture)) refuse(`architecture ${src.architecture} has no SAELens equivalent (relu, topk, jumprelu)`);
  if (src.architecture === 'topk' && !(posInt(src.k) && src.k <= F)) refuse(`topk needs k between 1 and d_sae ${F} (got ${src.k})`);
  if ((src.architecture === 'jumprelu') !== !!src.threshold) refuse(src.threshold ? `a ${src.architecture} SAE has no thresholds` : 'jumprelu needs its thresholds');
  if (src.threshold && (src.threshold.length !== F || !src.threshold.every(Number.isFinite))) refuse(`thresholds must be ${F} finite numbers`);
  if (src.preprocessing === 'center_unit_norm' && d < 2) refuse('center_unit_norm as layer_norm needs d_in ≥ 2');
  if (src.preprocessing === 'dataset_scale' && !(typeof src.scale === 'number' && Number.isFinite(src.scale) && src.scale > 0)) refuse('dataset_scale without a positive scale');
  if (src.density && (src.density.length !== F || !src.density.every((v) => v >= 0 && v <= 1))) refuse(`density must be ${F} fractions in [0, 1]`);
  for (const t of [src.params.WencT, src.params.Wdec, src.params.bEnc, src.params.bDec]) if (!t.every(Number.isFinite)) refuse('the weights contain NaN/Inf');

  const We = transpose(src.params.WencT, F, d);
  const Wd = Float32Array.from(src.params.Wdec);
  const bd = Float32Array.from(src.params.bDec);
  if (src.preprocessing === 'center_unit_norm') scaleFold(We, Wd, bd, Math.sqrt(d - 1));
  if (src.preprocessing === 'dataset_scale') scaleFold(We, Wd, bd, 1 / Math.fround(src.scale!));
  const f32 = (shape: number[], data: Float32Array): Tensor => ({ dtype: 'F32', shape, data });
  const tensors: Record<string, Tensor> = { W_enc: f32([d, F], We), W_dec: f32([F, d], Wd), b_enc: f32([F], Float32Array.from(src.params.bEnc)), b_dec: f32([d], bd) };
  if (src.threshold) tensors.threshold = f32([F], Float32Array.from(src.threshold));
  // SAEConfig.to_dict()'s order: its fields, the subclass's (topk: k, rescale_acts_by_decoder_norm), then architecture
  const cfg: Obj = {
    d_in: d,
    d_sae: F,
    dtype: 'float32',
    device: 'cpu',
    apply_b_dec_to_input: true,
    normalize_activations: src.preprocessing === 'center_unit_norm' ? 'layer_norm' : 'none',
    reshape_activations: 'none',
    metadata: {
      sae_lens_version: SAELENS_VERSION,
      sae_lens_training_version: null, // not trained by SAELens
      model_name: src.model || null,
      hook_name: src.hook || null,
      hook_head_index: null,
      context_size: src.contextSize ?? null,
      prepend_bos: src.prependBos ?? null,
      dataset_path: src.datasetPath ?? null,
      // ours, so that a re-import restores the preprocessing (SAEMetadata keeps unknown keys)
      sae_export: { preprocessing: src.preprocessing, ...(src.preprocessing === 'dataset_scale' ? { dataset_scale: src.scale } : {}), trained_precision: src.trainedPrecision ?? 'fp32' },
    },
    ...(src.architecture === 'topk' ? { k: src.k, rescale_acts_by_decoder_norm: false } : {}),
    architecture: SL_ARCH[src.architecture],
  };

  await fs.mkdir(path.dirname(path.resolve(out)), { recursive: true }).catch((e) => {
    throw describeFsError(e, `creating ${path.dirname(out)}`);
  });
  const tmp = tmpSibling(out);
  try {
    await fs.mkdir(tmp, { recursive: true });
    await writeSafetensors(path.join(tmp, WEIGHTS), tensors, { format: 'pt' });
    await writeFileAtomic(path.join(tmp, CFG), JSON.stringify(cfg, null, 2) + '\n');
    // training/sae_trainer.py _log_feature_sparsity: log10(density + 1e-10), so a dead feature is −10
    if (src.density) await writeSafetensors(path.join(tmp, SPARSITY), { sparsity: f32([F], Float32Array.from(src.density, (p) => Math.log10(p + 1e-10))) }, { format: 'pt' });
    await publishDirAtomic(tmp, out);
  } catch (err) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw describeFsError(err, `writing ${out}`);
  }
}

export const saeLens: SaeFormat = {
  name: 'saelens',
  /** SAELens' weights file with its encoder and decoder, and a cfg with d_in/d_sae (never ours: sae.safetensors, format sae-checkpoint/1). */
  detect(probe) {
    const t = probe.tensors[WEIGHTS];
    const cfg = probe.json[CFG];
    return !!t && 'W_enc' in t && 'W_dec' in t && isObj(cfg) && cfg.format !== CHECKPOINT_FORMAT && posInt(cfg.d_in) && posInt(cfg.d_sae);
  },
  load,
  write,
};

/**
 * EleutherAI sparsify (issue 19 part 2), read from its source at v1.3.0 (github.com/EleutherAI/sparsify,
 * tag v1.3.0; its newest commit differs only in README and CI). A trained run is
 * `<save_dir>/<run_name>/config.json` (the run's TrainConfig, with `model` and the resolved
 * `hookpoints`) and one folder per hookpoint, named after it (`layers.6`, `h.6.mlp`, …; `<hook>/seed<N>`
 * with several seeds), holding `cfg.json` (SparseCoderConfig + d_in) and `sae.safetensors` with
 * exactly encoder.weight [F, d], encoder.bias [F], W_dec [F, d] (not transposed), b_dec [d] (+ W_skip
 * [d, d] with a skip connection). Its forward is ours for TopK: z' = (x − b_dec)·encoder.weightᵀ +
 * encoder.bias, ReLU then TopK, x̂ = Σ z_j W_dec[j] + b_dec, with no input normalisation.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { describeFsError, publishDirAtomic, tmpSibling, writeFileAtomic } from '../../util/atomic.js';
import { openSafetensors, writeSafetensors, type Tensor } from '../../util/safetensors.js';
import { toFloat32 } from '../../lm/tensors.js';
import { allocParams } from '../../kernels/params.js';
import type { LoadedCheckpoint, SaeCfgJson } from '../checkpoint.js';
import type { ExportSource, FolderProbe, SaeFormat } from './types.js';

const WEIGHTS = 'sae.safetensors';
const CFG = 'cfg.json';
/** sparsify's own flags that, when true, make an SAE we cannot run (`signed`: the pre-1.0 `sae` package's TopK on |z'| without ReLU) */
const REFUSED_FLAGS: Record<string, string> = {
  skip_connection: 'has a skip connection (W_skip), which an SAE of ours cannot express',
  transcode: 'is a transcoder (it predicts another activation than its input), not an SAE',
  signed: "is signed (TopK on |z'| without ReLU), which no activation of ours expresses",
};

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * sparsify's hookpoint (a module path of the HF model's base model, hooked at its output) in our
 * TransformerLens names (SPEC §2), where there is one: `layers.N` / `h.N` → blocks.N.hook_resid_post,
 * `….mlp` → hook_mlp_out, `….attn | attention | self_attn` → hook_attn_out.
 */
export function sparsifyHookToOurs(hookpoint: string): string | undefined {
  const m = /^(?:(?:model|transformer|gpt_neox)\.)?(?:layers|h)\.(\d+)(?:\.(mlp|attn|attention|self_attn))?$/.exec(hookpoint);
  if (!m) return undefined;
  return `blocks.${m[1]}.hook_${m[2] === undefined ? 'resid_post' : m[2] === 'mlp' ? 'mlp_out' : 'attn_out'}`;
}

export const sparsify: SaeFormat = {
  name: 'sparsify',

  // sparsify's tensor names in sae.safetensors (our checkpoints use that file name with W_enc) and its cfg fields
  detect(probe: FolderProbe): boolean {
    const t = probe.tensors[WEIGHTS];
    const c = probe.json[CFG];
    if (!t || 'W_enc' in t || !('encoder.weight' in t || 'encoder.bias' in t)) return false;
    return isObj(c) && 'k' in c && 'd_in' in c && ('expansion_factor' in c || 'num_latents' in c);
  },

  async load(probe: FolderProbe): Promise<LoadedCheckpoint> {
    const dir = probe.dir;
    const fail = (why: string): never => {
      throw new UserError(`sparsify SAE ${dir}: ${why}`);
    };
    const c = probe.json[CFG];
    if (!isObj(c)) fail(`${CFG} is missing or not a JSON object`);
    const cfg = c as Obj;
    const int = (key: string, dflt: number | undefined, min: number): number => {
      const v = cfg[key] ?? dflt;
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) fail(`${CFG} has ${key} ${JSON.stringify(v)}, not an integer ≥ ${min}`);
      return v as number;
    };
    // config.py SparseCoderConfig: the defaults of fields a cfg.json leaves out (older releases write fewer)
    const d = int('d_in', undefined, 1);
    const k = int('k', undefined, 1);
    const ef = int('expansion_factor', 32, 0);
    const nl = int('num_latents', 0, 0);
    // sparse_coder.py SparseCoder.__init__: num_latents = cfg.num_latents or d_in * cfg.expansion_factor
    const F = nl || d * ef;
    if (F < 1 || d * F > 2 ** 31 - 1) fail(`${CFG} gives impossible sizes d_in=${d}, num_latents=${F}`);
    // fused_encoder.py FusedEncoder.forward: 'topk' or 'groupmax' (the max of each of k groups of F/k latents)
    const activation = cfg.activation ?? 'topk';
    if (activation !== 'topk') fail(`activation ${JSON.stringify(activation)} is not read: only topk is (an SAE of ours has no groupmax)`);
    for (const flag of ['normalize_decoder', 'multi_topk', ...Object.keys(REFUSED_FLAGS)]) {
      if (cfg[flag] !== undefined && typeof cfg[flag] !== 'boolean') fail(`${CFG} has ${flag} ${JSON.stringify(cfg[flag])}, not true or false`);
      if (cfg[flag] === true && flag in REFUSED_FLAGS) fail(`it ${REFUSED_FLAGS[flag]}`);
    }
    // multi_topk is accepted: it only adds a training loss on a 4k-latent decode (sparse_coder.py forward); encode() selects k
    // torch.topk(preacts, k) in FusedEncoder.forward raises for k > F
    if (k > F) fail(`${CFG} has k=${k}, more than its ${F} latents`);

    const header = probe.tensors[WEIGHTS];
    if (!header) fail(`missing ${WEIGHTS}`);
    if ('W_skip' in header) fail(`it ${REFUSED_FLAGS.skip_connection}`);
    // sparse_coder.py load_from_disk: load_model(strict=True), so exactly these, in these shapes
    const want: Record<string, number[]> = { 'encoder.weight': [F, d], 'encoder.bias': [F], W_dec: [F, d], b_dec: [d] };
    const extra = Object.keys(header).filter((n) => !(n in want));
    if (extra.length) fail(`${WEIGHTS} has tensor${extra.length > 1 ? 's' : ''} ${extra.join(', ')} that sparsify does not save`);
    const sizes = `d_in=${d}, num_latents=${F}${nl ? '' : ` (expansion_factor ${ef})`}`;
    for (const [name, shape] of Object.entries(want)) {
      const h = header[name];
      if (!h) fail(`${WEIGHTS} lacks tensor ${name}`);
      if (h.shape.length !== shape.length || h.shape.some((v, i) => v !== shape[i])) fail(`tensor ${name} has shape [${h.shape}] but ${CFG} (${sizes}) gives [${shape}]`);
      // sparsify saves what it trained in (float32) or what it was cast to (load_from_disk takes the file's dtype)
      if (!['F32', 'F16', 'BF16'].includes(h.dtype)) fail(`tensor ${name} is ${h.dtype}, not F32, F16 or BF16`);
    }

    const params = allocParams(d, F);
    const file = await openSafetensors(path.join(dir, WEIGHTS));
    try {
      // F16 and BF16 widen to float32 exactly
      const read = async (name: string) => toFloat32(await file.read(name), `${dir}/${WEIGHTS}: ${name}`);
      params.WencT.set(await read('encoder.weight')); // nn.Linear weight [F, d]: row j is feature j's encoder direction, our WencT
      params.bEnc.set(await read('encoder.bias'));
      params.Wdec.set(await read('W_dec')); // [F, d] as ours: decode is embedding_bag over W_dec rows (utils.py eager_decode)
      params.bDec.set(await read('b_dec'));
    } finally {
      await file.close();
    }
    for (const [name, t] of [['encoder.weight', params.WencT], ['encoder.bias', params.bEnc], ['W_dec', params.Wdec], ['b_dec', params.bDec]] as const) {
      for (let i = 0; i < t.length; i++) if (!Number.isFinite(t[i])) fail(`tensor ${name} holds NaN or Inf`);
    }
    const { hook, model } = await origin(dir, cfg);
    const out: SaeCfgJson = {
      architecture: 'topk',
      d_in: d,
      d_sae: F,
      dtype: 'float32',
      hook_name: hook,
      model_name: model,
      normalize_activations: 'none',
      apply_b_dec_to_input: true,
      activation_fn_kwargs: { k },
      format: 'sparsify',
    };
    return { dir, cfg: out, params };
  },

  async write(src: ExportSource, out: string): Promise<void> {
    const refuse = (why: string): never => {
      throw new UserError(`cannot export to sparsify: ${why}`);
    };
    const { d, F } = src.params;
    if (src.architecture !== 'topk') refuse(`the SAE is ${src.architecture}, and sparsify's only activations are topk and groupmax (export --format saelens instead)`);
    const k = src.k;
    if (k === undefined || !Number.isInteger(k) || k < 1 || k > F) refuse(`TopK needs an integer k in 1..${F}, got ${k}`);
    if (src.preprocessing === 'center_unit_norm') refuse('its inputs are centred and scaled to unit norm per token, a preprocessing sparsify does not do (export --format saelens folds it into layer_norm)');
    let s = 1;
    if (src.preprocessing === 'dataset_scale') {
      if (src.scale === undefined || !Number.isFinite(src.scale) || src.scale <= 0) refuse(`dataset_scale needs a positive factor, got ${src.scale}`);
      s = src.scale!;
    }
    // dataset_scale folded into the weights: ours is z' = (s·x − b_dec)·W_enc + b_enc, x̂ = (z·W_dec + b_dec)/s.
    // With b_enc/s and b_dec/s sparsify computes z'/s; ReLU and TopK commute with a positive factor,
    // so it selects the same latents at z/s and decodes (z/s)·W_dec + b_dec/s = x̂. W_dec keeps its unit rows.
    const div = (a: ArrayLike<number>): Float32Array => Float32Array.from(a, (v) => (s === 1 ? v : v / s));
    const tensors: Record<string, Tensor> = {
      'encoder.weight': { dtype: 'F32', shape: [F, d], data: Float32Array.from(src.params.WencT) },
      'encoder.bias': { dtype: 'F32', shape: [F], data: div(src.params.bEnc) },
      W_dec: { dtype: 'F32', shape: [F, d], data: Float32Array.from(src.params.Wdec) },
      b_dec: { dtype: 'F32', shape: [d], data: div(src.params.bDec) },
    };
    // config.py SparseCoderConfig's fields in its order, then d_in (sparse_coder.py save_to_disk); num_latents
    // is what sparsify uses, expansion_factor the nearest integer for a reader that looks at it.
    // hook_name / model_name are ours: sparsify's load_from_disk drops extra fields (from_dict(drop_extra_fields=True)).
    const cfg = {
      activation: 'topk',
      expansion_factor: F % d === 0 ? F / d : Math.max(1, Math.round(F / d)),
      normalize_decoder: unitRows(src.params.Wdec, F, d),
      num_latents: F,
      k,
      multi_topk: false,
      skip_connection: false,
      transcode: false,
      d_in: d,
      ...(src.hook ? { hook_name: src.hook } : {}),
      ...(src.model ? { model_name: src.model } : {}),
    };
    await fs.mkdir(path.dirname(path.resolve(out)), { recursive: true }).catch((e) => {
      throw describeFsError(e, `creating ${path.dirname(out)}`);
    });
    const tmp = tmpSibling(out);
    try {
      await fs.mkdir(tmp);
      await writeSafetensors(path.join(tmp, WEIGHTS), tensors);
      await writeFileAtomic(path.join(tmp, CFG), JSON.stringify(cfg) + '\n');
      await publishDirAtomic(tmp, out);
    } catch (err) {
      await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
      throw describeFsError(err, `writing sparsify SAE ${out}`);
    }
  },
};

/**
 * normalize_decoder says sparsify keeps W_dec rows at unit norm while training (sparse_coder.py
 * set_decoder_norm_to_unit_norm); a finetune would renormalise rows that are not, so it is true only
 * when they already are (ours are, SPEC §4).
 */
function unitRows(W: ArrayLike<number>, F: number, d: number): boolean {
  for (let j = 0; j < F; j++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += W[j * d + i] * W[j * d + i];
    if (Math.abs(Math.sqrt(ss) - 1) > 1e-4) return false;
  }
  return true;
}

/**
 * The hook and model: our export's own cfg fields, else sparsify's conventions. The folder is named
 * after its hookpoint (trainer.py _checkpoint: save_to_disk(f"{path}/{name}"), name = hook or
 * hook/seedN), recorded as sparsify names it (a module path, not a hook name of ours: see
 * sparsifyHookToOurs); the run folder's config.json (RunConfig.save_json) names the model.
 */
async function origin(dir: string, cfg: Obj): Promise<{ hook: string; model: string }> {
  let name = path.basename(path.resolve(dir));
  let runDir = path.dirname(path.resolve(dir));
  if (/^seed\d+$/.test(name)) [name, runDir] = [path.basename(runDir), path.dirname(runDir)];
  let run: Obj = {};
  try {
    const v: unknown = JSON.parse(await fs.readFile(path.join(runDir, 'config.json'), 'utf8'));
    if (isObj(v) && isObj(v.sae) && Array.isArray(v.hookpoints)) run = v;
  } catch {
    // no run config (a Hub download, a copied folder): the names stay unknown
  }
  // a folder name is taken as a hookpoint only where the run lists it or it has a layer index
  const named = (Array.isArray(run.hookpoints) && run.hookpoints.includes(name)) || /(^|\.)\d+(\.|$)/.test(name);
  // in our naming where the module path maps unambiguously (layers.6 → blocks.6.hook_resid_post)
  const hook = typeof cfg.hook_name === 'string' ? cfg.hook_name : named ? (sparsifyHookToOurs(name) ?? name) : '';
  const model = typeof cfg.model_name === 'string' ? cfg.model_name : typeof run.model === 'string' ? run.model : '';
  return { hook, model };
}

/**
 * saprmarks/dictionary_learning (issue 19 part 3), read from its source at commit 60ec6bf
 * (2025-08-20, the newest on GitHub's main; the package says 0.1.0). `trainSAE` (training.py) writes
 * `<save_dir>/trainer_N/config.json` = {"trainer": trainer.config, "buffer": data.config} and, at
 * the end, `ae.pt` = torch.save({k: v.cpu() for k, v in ae.state_dict().items()}): a pickle, read
 * here by ../../lm/torch-bin.ts, which executes nothing. Four classes are read, the ones whose
 * inference our selections express; load_state_dict is strict, so each has exactly its keys.
 */
import * as path from 'node:path';
import { UserError } from '../../util/errors.js';
import { readTorchBin } from '../../lm/torch-bin.js';
import { toFloat32, type RawTensor } from '../../lm/tensors.js';
import { allocParams } from '../../kernels/params.js';
import { transpose, type LoadedCheckpoint, type SaeCfgJson } from '../checkpoint.js';
import type { FolderProbe, SaeFormat } from './types.js';

const CONFIG = 'config.json';
const WEIGHTS = 'ae.pt';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Each class's state_dict: key → shape, in terms of d = activation_dim and F = dict_size. */
const KEYS: Record<string, (d: number, F: number) => Record<string, number[]>> = {
  // dictionary.py AutoEncoder: bias, encoder = nn.Linear(d, F) (weight [F, d]), decoder = nn.Linear(F, d, bias=False) (weight [d, F])
  AutoEncoder: (d, F) => ({ bias: [d], 'encoder.weight': [F, d], 'encoder.bias': [F], 'decoder.weight': [d, F] }),
  // trainers/top_k.py AutoEncoderTopK: the same Linears, b_dec, and 0-dim buffers k (int32) and threshold (float32)
  AutoEncoderTopK: (d, F) => ({ 'encoder.weight': [F, d], 'encoder.bias': [F], 'decoder.weight': [d, F], b_dec: [d], k: [], threshold: [] }),
  // trainers/batch_top_k.py BatchTopKSAE: as AutoEncoderTopK
  BatchTopKSAE: (d, F) => ({ 'encoder.weight': [F, d], 'encoder.bias': [F], 'decoder.weight': [d, F], b_dec: [d], k: [], threshold: [] }),
  // dictionary.py JumpReluAutoEncoder: nn.Parameters W_enc [d, F], b_enc, W_dec [F, d], b_dec, threshold [F]
  JumpReluAutoEncoder: (d, F) => ({ W_enc: [d, F], b_enc: [F], W_dec: [F, d], b_dec: [d], threshold: [F] }),
};

/**
 * dictionary_learning's submodule_name is free text its user chose (tests/test_end_to_end.py:
 * `resid_post_layer_3`; the published Pythia set: `resid_3`, `mlp_out_layer3`, `attn_out_layer3`),
 * naming the output (buffer.io 'out') of an HF module: a decoder layer's output is our
 * blocks.L.hook_resid_post, its mlp's / attention's output hook_mlp_out / hook_attn_out (GPT-2 and
 * Pythia alike). Only a name that says its kind and the layer trainer.layer says maps; else ''.
 */
export function dictionaryLearningHook(submodule: unknown, layer: unknown, io: unknown): string {
  if (typeof submodule !== 'string') return '';
  const m = /^(resid(?:_post|_out)?|resid_pre|mlp(?:_out)?|attn(?:_out)?)_?(?:layer)?_?(\d+)$/.exec(submodule);
  if (!m) return '';
  const L = Number(m[2]);
  if (Number.isInteger(layer) && layer !== L) return '';
  // resid_pre is a layer's input (io 'in' on the layer, or 'out' of the layer before); the rest are outputs
  if (m[1] !== 'resid_pre' && io !== undefined && io !== 'out') return '';
  const kind = m[1] === 'resid_pre' ? 'resid_pre' : m[1].startsWith('resid') ? 'resid_post' : m[1].startsWith('mlp') ? 'mlp_out' : 'attn_out';
  return `blocks.${L}.hook_${kind}`;
}

export const dictionaryLearning: SaeFormat = {
  name: 'dictionary_learning',

  // config.json's trainer.dict_class with the sizes every trainer.config writes; ae.pt being a pickle,
  // its keys are checked by load (which also names a missing ae.pt or an unread class in one line)
  detect(probe: FolderProbe): boolean {
    const c = probe.json[CONFIG];
    if (!isObj(c) || !isObj(c.trainer)) return false;
    const t = c.trainer;
    return typeof t.dict_class === 'string' && 'activation_dim' in t && 'dict_size' in t;
  },

  async load(probe: FolderProbe): Promise<LoadedCheckpoint> {
    const dir = probe.dir;
    const fail = (why: string): never => {
      throw new UserError(`dictionary_learning SAE ${dir}: ${why}`);
    };
    const c = probe.json[CONFIG];
    if (!isObj(c) || !isObj(c.trainer)) fail(`${CONFIG} is missing or has no "trainer" object`);
    const conf = c as Obj;
    const tr = conf.trainer as Obj;
    const cls = tr.dict_class;
    if (typeof cls !== 'string' || !Object.hasOwn(KEYS, cls)) {
      fail(`trainer.dict_class ${JSON.stringify(cls)} is not read (only ${Object.keys(KEYS).join(', ')} are)`);
    }
    const int = (v: unknown, what: string): number => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) fail(`${CONFIG} has ${what} ${JSON.stringify(v)}, not a positive integer`);
      return v as number;
    };
    const d = int(tr.activation_dim, 'trainer.activation_dim');
    const F = int(tr.dict_size, 'trainer.dict_size');
    if (d * F > 2 ** 31 - 1) fail(`${CONFIG} gives impossible sizes activation_dim=${d}, dict_size=${F}`);
    if (!probe.files.includes(WEIGHTS)) fail(`missing ${WEIGHTS}`);

    let raw: Record<string, RawTensor>;
    try {
      raw = await readTorchBin(path.join(dir, WEIGHTS));
    } catch (e) {
      if (e instanceof UserError) fail(e.message.split(path.join(dir, WEIGHTS)).join(WEIGHTS));
      throw e;
    }
    const want = KEYS[cls as string](d, F);
    const extra = Object.keys(raw!).filter((k) => !Object.hasOwn(want, k));
    if (extra.length) fail(`${WEIGHTS} has tensor${extra.length > 1 ? 's' : ''} ${extra.join(', ')} that ${cls} does not have`);
    const t: Record<string, Float32Array> = {};
    let k = 0;
    for (const [name, shape] of Object.entries(want)) {
      const r = raw![name];
      if (!r) fail(`${WEIGHTS} lacks tensor ${name} (${cls})`);
      if (r.shape.length !== shape.length || r.shape.some((v, i) => v !== shape[i])) {
        fail(`tensor ${name} has shape [${r.shape}] but ${cls} with activation_dim=${d}, dict_size=${F} (${CONFIG}) has [${shape}]`);
      }
      if (name === 'k') {
        k = intScalar(r, fail);
        continue;
      }
      if (!['F32', 'F16', 'BF16', 'F64'].includes(r.dtype)) fail(`tensor ${name} is ${r.dtype}, not a floating-point tensor`);
      // float32 (what trainSAE saves) is copied bit for bit; F16 and BF16 widen exactly; F64 rounds
      t[name] = toFloat32(r, `${dir}/${WEIGHTS}: ${name}`);
      if (t[name].some((v) => !Number.isFinite(v))) fail(`tensor ${name} holds NaN or Inf`);
    }

    const params = allocParams(d, F);
    const cfg: SaeCfgJson = {
      architecture: 'relu',
      d_in: d,
      d_sae: F,
      dtype: 'float32',
      hook_name: dictionaryLearningHook(tr.submodule_name, tr.layer, isObj(conf.buffer) ? conf.buffer.io : undefined),
      model_name: typeof tr.lm_name === 'string' ? tr.lm_name : '',
      // training.py trainSAE(normalize_activations=True) trains on x / norm_factor but saves ae.pt after
      // ae.scale_biases(norm_factor), which makes the SAE act on raw x (README: "the activations don't
      // need to be scaled during inference"); config.json never records the factor (it is written first,
      // and `trainer.config["norm_factor"] = …` assigns into a property's fresh dict). So inputs are raw.
      normalize_activations: 'none',
      apply_b_dec_to_input: true,
      activation_fn_kwargs: {},
      format: 'dictionary_learning',
    };
    const out: LoadedCheckpoint = { dir, cfg, params };

    if (cls === 'JumpReluAutoEncoder') {
      // dictionary.py JumpReluAutoEncoder.encode: apply_b_dec_to_input is False (set only when loading
      // from SAELens, and not in the state dict), so pre = x @ W_enc + b_enc; f = ReLU(pre · 1[pre > θ]);
      // decode: f @ W_dec + b_dec. Ours subtracts b_dec first, so b_enc' = b_enc + b_dec·W_enc: computed in
      // float64 and rounded once, hence not bit-exact (exact when b_dec = 0). Fires where pre > θ_j and
      // pre > 0, which is our jumprelu selection.
      params.WencT.set(transpose(t.W_enc, d, F));
      params.Wdec.set(t.W_dec);
      params.bDec.set(t.b_dec);
      for (let j = 0; j < F; j++) {
        let s = t.b_enc[j];
        for (let i = 0; i < d; i++) s += t.b_dec[i] * t.W_enc[i * F + j];
        params.bEnc[j] = s;
        if (!Number.isFinite(params.bEnc[j])) fail(`b_enc + b_dec·W_enc overflows float32 for feature ${j}`);
      }
      cfg.architecture = 'jumprelu';
      out.threshold = t.threshold;
      return out;
    }

    // The nn.Linear classes: encoder(x − b) = (x − b)·encoder.weightᵀ + encoder.bias, so encoder.weight
    // [F, d] is our WencT as it stands; decoder(f) = f·decoder.weightᵀ, so W_dec is decoder.weight
    // transposed (exact). Decoder rows are kept as saved: AutoEncoder.from_pretrained's optional
    // normalize_decoder rescales features but not reconstructions, and is not applied here.
    params.WencT.set(t['encoder.weight']);
    params.bEnc.set(t['encoder.bias']);
    params.Wdec.set(transpose(t['decoder.weight'], d, F));
    // AutoEncoder.encode: ReLU(encoder(x − bias)), decode: decoder(f) + bias; the others name it b_dec
    params.bDec.set(cls === 'AutoEncoder' ? t.bias : t.b_dec);
    if (cls === 'AutoEncoder') return out;

    // utils.py load_dictionary passes config's k to from_pretrained, which raises when it differs from the buffer
    if (tr.k !== undefined && tr.k !== k) fail(`${CONFIG} has trainer.k ${JSON.stringify(tr.k)} but the k buffer in ${WEIGHTS} is ${k}`);
    if (k < 1 || k > F) fail(`the k buffer is ${k}, not in 1..${F} (torch.topk needs k ≤ dict_size)`);
    if (cls === 'AutoEncoderTopK') {
      // top_k.py AutoEncoderTopK.encode(use_threshold=False), as forward() calls it: ReLU, then
      // topk(k) per token; the threshold buffer it tracks in training is not used at inference
      cfg.architecture = 'topk';
      cfg.activation_fn_kwargs = { k };
      return out;
    }
    // batch_top_k.py BatchTopKSAE.encode(use_threshold=True), as forward() calls it: r = ReLU(pre),
    // f = r · 1[r > θ] with the one global θ training tracked (TopKTrainer.update_threshold): our jumprelu
    // with θ_j = θ for every feature. Not topk: it never picks k per token at inference. The batch
    // top-k·B of training (use_threshold=False) is not what the saved SAE computes.
    const theta = t.threshold[0];
    if (theta < 0) {
      fail(`its threshold buffer is ${theta}, never calibrated (training ended before threshold_start_step), so BatchTopKSAE.encode would select every positive feature like a plain ReLU; not read`);
    }
    cfg.architecture = 'jumprelu';
    out.threshold = new Float32Array(F).fill(theta);
    return out;
  },
};

/** A 0-dim integer buffer's value (k: torch.tensor(k, dtype=torch.int), saved as IntStorage). */
function intScalar(r: RawTensor, fail: (why: string) => never): number {
  const dv = new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength);
  if (r.dtype === 'I32' && r.bytes.length === 4) return dv.getInt32(0, true);
  if (r.dtype === 'I64' && r.bytes.length === 8) {
    const v = dv.getBigInt64(0, true);
    if (v >= -(2n ** 31n) && v < 2n ** 31n) return Number(v);
  }
  return fail(`the k buffer is ${r.dtype}, not a 32- or 64-bit integer scalar`);
}

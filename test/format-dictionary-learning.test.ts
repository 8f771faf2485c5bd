import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { dictionaryLearning, dictionaryLearningHook } from '../src/sae/formats/dictionary-learning.js';
import { probeFolder } from '../src/sae/formats/probe.js';
import { saeFromCheckpoint } from '../src/sae/sae.js';
import { createReferenceKernels } from '../src/kernels/reference.js';
import { allocCodes } from '../src/kernels/selection.js';
import type { SaeParams } from '../src/kernels/types.js';
import type { LoadedCheckpoint } from '../src/sae/checkpoint.js';
import { Rng } from '../src/util/rng.js';
import { UserError } from '../src/util/errors.js';
import { writeTorchSave, type TorchTensor, type StateDictOptions } from './helpers/torch-pickle.js';

/**
 * dictionary_learning (saprmarks, commit 60ec6bf) folders made here as its trainSAE writes them —
 * config.json {"trainer": trainer.config, "buffer": data.config} and ae.pt = torch.save of the state
 * dict — then loaded, and run through our selection + decode against its forward, re-implemented
 * below in float64 from dictionary.py / trainers/top_k.py / trainers/batch_top_k.py.
 */

const d = 6;
const F = 10; // ≠ d, so a transposed matrix cannot pass for the right one
const K = 3;
const B = 48;
type Cls = 'AutoEncoder' | 'AutoEncoderTopK' | 'BatchTopKSAE' | 'JumpReluAutoEncoder';

let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-dictlearn-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

const f32 = (shape: number[], v: ArrayLike<number>): TorchTensor => ({ dtype: 'F32', shape, data: Float32Array.from(v) });
const rand = (rng: Rng, n: number, s: number) => Float32Array.from({ length: n }, () => rng.normal() * s);

/** A state dict of each class, with the shapes and buffers its source gives it. */
function weights(cls: Cls, seed = 1): Record<string, TorchTensor> {
  const rng = new Rng(seed);
  if (cls === 'JumpReluAutoEncoder') {
    const th = rand(rng, F, 0.2);
    th[0] = -0.3; // a negative θ: dictionary_learning's ReLU still drops pre ≤ 0
    th[1] = 0;
    return {
      W_enc: f32([d, F], rand(rng, d * F, 0.5)),
      b_enc: f32([F], rand(rng, F, 0.2)),
      W_dec: f32([F, d], rand(rng, F * d, 0.5)),
      b_dec: f32([d], rand(rng, d, 0.3)),
      threshold: f32([F], th),
    };
  }
  // decoder.weight deliberately not unit-norm: the import keeps it as saved
  const lin = { 'encoder.weight': f32([F, d], rand(rng, F * d, 0.5)), 'encoder.bias': f32([F], rand(rng, F, 0.2)), 'decoder.weight': f32([d, F], rand(rng, d * F, 0.5)) };
  if (cls === 'AutoEncoder') return { bias: f32([d], rand(rng, d, 0.3)), ...lin };
  return {
    ...lin,
    b_dec: f32([d], rand(rng, d, 0.3)),
    k: { dtype: 'I32', shape: [], data: Int32Array.of(K) },
    threshold: f32([], [cls === 'BatchTopKSAE' ? 0.35 : 0.21]),
  };
}

/** config.json as training.py trainSAE writes it: trainer.config (per class, its source's fields) and buffer.config. */
function config(cls: Cls, patch: Record<string, unknown> = {}): Record<string, unknown> {
  const common = { seed: 0, activation_dim: d, dict_size: F, device: 'cpu', layer: 3, lm_name: 'EleutherAI/pythia-70m-deduped', submodule_name: 'resid_post_layer_3' };
  const trainer: Record<string, unknown> =
    cls === 'AutoEncoder'
      ? { dict_class: cls, trainer_class: 'StandardTrainer', lr: 1e-3, l1_penalty: 0.1, warmup_steps: 1000, resample_steps: null, sparsity_warmup_steps: 2000, steps: 10000, decay_start: null, ...common, wandb_name: 'StandardTrainer' }
      : cls === 'JumpReluAutoEncoder'
        ? { trainer_class: 'JumpReluTrainer', dict_class: cls, lr: 7e-5, steps: 10000, ...common, wandb_name: 'JumpRelu', bandwidth: 0.001, sparsity_penalty: 1, sparsity_warmup_steps: 2000, target_l0: 20 }
        : { trainer_class: cls === 'BatchTopKSAE' ? 'BatchTopKTrainer' : 'TopKTrainer', dict_class: cls, lr: 1e-3, steps: 10000, auxk_alpha: 1 / 32, warmup_steps: 1000, decay_start: null, threshold_beta: 0.999, threshold_start_step: 1000, ...common, k: K, wandb_name: cls };
  Object.assign(trainer, patch);
  return { trainer, buffer: { d_submodule: d, io: 'out', n_ctxs: 3000, ctx_len: 128, refresh_batch_size: 32, out_batch_size: 8192, device: 'cpu' } };
}

let n = 0;
async function folder(cls: Cls, o: { w?: Record<string, TorchTensor>; cfg?: Record<string, unknown>; pickle?: StateDictOptions & { top?: string }; noAe?: boolean } = {}): Promise<string> {
  const dir = path.join(root, `trainer_${n++}`);
  await fs.mkdir(dir);
  await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify(o.cfg ?? config(cls), null, 4));
  if (!o.noAe) await writeTorchSave(path.join(dir, 'ae.pt'), o.w ?? weights(cls), o.pickle);
  return dir;
}

async function load(dir: string): Promise<LoadedCheckpoint> {
  const probe = await probeFolder(dir);
  expect(dictionaryLearning.detect(probe)).toBe(true);
  return dictionaryLearning.load(probe);
}

async function refused(dir: string, re: RegExp): Promise<string> {
  const err = await load(dir).then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserError);
  const msg = (err as Error).message;
  expect(msg).toMatch(re);
  expect(msg).not.toContain('\n');
  expect(msg).toContain(dir);
  return msg;
}

const bits = (a: ArrayLike<number>) => Array.from(new Uint32Array(Float32Array.from(a).buffer));
const arr = (t: TorchTensor) => Array.from(t.data as Float32Array);

/** dictionary_learning's forward, from its source, in float64: codes f (B×F) and x̂ (B×d), plus the smallest margin of any selection decision. */
function theirForward(cls: Cls, w: Record<string, TorchTensor>, x: Float64Array): { f: Float64Array; xhat: Float64Array; margin: number } {
  const g = (k: string) => w[k].data as Float32Array;
  const f = new Float64Array(B * F);
  const xhat = new Float64Array(B * d);
  let margin = Infinity;
  for (let b = 0; b < B; b++) {
    const xb = x.subarray(b * d, (b + 1) * d);
    const row = f.subarray(b * F, (b + 1) * F);
    if (cls === 'JumpReluAutoEncoder') {
      // JumpReluAutoEncoder.encode (apply_b_dec_to_input False): pre = x @ W_enc + b_enc; f = ReLU(pre * (pre > θ))
      for (let j = 0; j < F; j++) {
        let pre = g('b_enc')[j];
        for (let i = 0; i < d; i++) pre += xb[i] * g('W_enc')[i * F + j];
        const th = g('threshold')[j];
        row[j] = Math.max(pre * (pre > th ? 1 : 0), 0);
        margin = Math.min(margin, Math.abs(pre - th), Math.abs(pre));
      }
      // decode: f @ W_dec + b_dec
      for (let i = 0; i < d; i++) {
        let s = g('b_dec')[i];
        for (let j = 0; j < F; j++) s += row[j] * g('W_dec')[j * d + i];
        xhat[b * d + i] = s;
      }
      continue;
    }
    const bias = cls === 'AutoEncoder' ? g('bias') : g('b_dec');
    // ReLU(encoder(x − bias)), encoder = nn.Linear: (x − bias)·weightᵀ + bias
    const post = new Float64Array(F);
    for (let j = 0; j < F; j++) {
      let s = g('encoder.bias')[j];
      for (let i = 0; i < d; i++) s += (xb[i] - bias[i]) * g('encoder.weight')[j * d + i];
      post[j] = Math.max(s, 0);
      margin = Math.min(margin, Math.abs(s));
    }
    if (cls === 'AutoEncoder') row.set(post);
    else if (cls === 'BatchTopKSAE') {
      // encode(use_threshold=True): post * (post > threshold)
      const th = g('threshold')[0];
      for (let j = 0; j < F; j++) {
        row[j] = post[j] * (post[j] > th ? 1 : 0);
        if (post[j] > 0) margin = Math.min(margin, Math.abs(post[j] - th));
      }
    } else {
      // AutoEncoderTopK.encode(use_threshold=False): topk(k) of post, scattered
      const order = Array.from({ length: F }, (_, j) => j).sort((a, c) => post[c] - post[a]);
      for (const j of order.slice(0, K)) row[j] = post[j];
      if (post[order[K]] > 0) margin = Math.min(margin, post[order[K - 1]] - post[order[K]]);
    }
    // decode: decoder(f) + bias, decoder = nn.Linear(F, d, bias=False): f·weightᵀ
    for (let i = 0; i < d; i++) {
      let s = bias[i];
      for (let j = 0; j < F; j++) s += row[j] * g('decoder.weight')[i * F + j];
      xhat[b * d + i] = s;
    }
  }
  return { f, xhat, margin };
}

/** Ours: the loaded SAE's selection and the reference kernels' encode + decode, in the params' float type. */
function ourForward(ck: LoadedCheckpoint, x: Float64Array, wide: boolean): { f: Float64Array; xhat: Float64Array } {
  const sae = saeFromCheckpoint(ck, { format: 'dictionary_learning' });
  const C = wide ? Float64Array : Float32Array;
  const p: SaeParams = { d, F, WencT: C.from(ck.params.WencT), bEnc: C.from(ck.params.bEnc), Wdec: C.from(ck.params.Wdec), bDec: C.from(ck.params.bDec) };
  const k = createReferenceKernels({ d, F, maxB: B });
  const out = { xc: new C(B * d), codes: allocCodes(B, B * F, C), aux: [] };
  k.encodeSelect(p, C.from(x), B, sae.selection()(B), [], out);
  const xhat = new C(B * d);
  k.decode(p, out.codes, xhat, true);
  const f = new Float64Array(B * F);
  for (let b = 0; b < B; b++) for (let e = out.codes.rowPtr[b]; e < out.codes.rowPtr[b + 1]; e++) f[b * F + out.codes.index[e]] = out.codes.value[e];
  return { f, xhat: Float64Array.from(xhat) };
}

function inputs(seed: number): Float64Array {
  const rng = new Rng(seed);
  return Float64Array.from({ length: B * d }, () => Math.fround(rng.normal()));
}

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

describe('dictionary_learning import: each class, its parameters and its forward', () => {
  const CASES: [Cls, string, number][] = [
    ['AutoEncoder', 'relu', 1e-12],
    ['AutoEncoderTopK', 'topk', 1e-12],
    ['BatchTopKSAE', 'jumprelu', 1e-12],
    // b_enc' = b_enc + b_dec·W_enc rounded to float32: within float32's rounding of b_enc'
    ['JumpReluAutoEncoder', 'jumprelu', 1e-6],
  ];
  for (const [cls, arch, tol] of CASES) {
    it(`${cls}: loads as ${arch} and computes dictionary_learning's encode/decode`, async () => {
      const w = weights(cls);
      const ck = await load(await folder(cls, { w }));
      expect(ck.cfg).toMatchObject({
        architecture: arch,
        d_in: d,
        d_sae: F,
        hook_name: 'blocks.3.hook_resid_post',
        model_name: 'EleutherAI/pythia-70m-deduped',
        normalize_activations: 'none',
        apply_b_dec_to_input: true,
        format: 'dictionary_learning',
      });
      expect(ck.cfg.activation_fn_kwargs).toEqual(cls === 'AutoEncoderTopK' ? { k: K } : {});

      // parameters: a relabelling (bit-exact) except JumpReLU's folded b_enc
      const { WencT, bEnc, Wdec, bDec } = ck.params;
      if (cls === 'JumpReluAutoEncoder') {
        const We = arr(w.W_enc);
        expect(bits(WencT)).toEqual(bits(Array.from({ length: F * d }, (_, q) => We[(q % d) * F + Math.floor(q / d)])));
        expect(bits(Wdec)).toEqual(bits(arr(w.W_dec)));
        expect(bits(bDec)).toEqual(bits(arr(w.b_dec)));
        const be = arr(w.b_enc);
        const bd = arr(w.b_dec);
        const want = be.map((v, j) => v + bd.reduce((s, x, i) => s + x * We[i * F + j], 0));
        expect(maxAbsDiff(bEnc, want)).toBeLessThan(1e-6);
        expect(bits(ck.threshold!)).toEqual(bits(arr(w.threshold)));
      } else {
        const Wd = arr(w['decoder.weight']);
        expect(bits(WencT)).toEqual(bits(arr(w['encoder.weight'])));
        expect(bits(bEnc)).toEqual(bits(arr(w['encoder.bias'])));
        expect(bits(Wdec)).toEqual(bits(Array.from({ length: F * d }, (_, q) => Wd[(q % d) * F + Math.floor(q / d)])));
        expect(bits(bDec)).toEqual(bits(arr(cls === 'AutoEncoder' ? w.bias : w.b_dec)));
        if (cls === 'BatchTopKSAE') expect(bits(ck.threshold!)).toEqual(bits(new Array(F).fill(Math.fround(0.35))));
        else expect(ck.threshold).toBeUndefined();
      }

      const x = inputs(7);
      const theirs = theirForward(cls, w, x);
      expect(theirs.margin).toBeGreaterThan(1e-4); // no decision within rounding of its boundary
      const l0 = theirs.f.filter((v) => v > 0).length / B;
      expect(l0).toBeGreaterThan(0.5); // the inputs exercise the selection: some fire …
      expect(l0).toBeLessThan(F - 0.5); // … and some do not
      // float64 params: the same numbers, so the same codes and reconstructions up to summation order
      const wide = ourForward(ck, x, true);
      expect(wide.f.map((v) => (v > 0 ? 1 : 0))).toEqual(theirs.f.map((v) => (v > 0 ? 1 : 0)));
      expect(maxAbsDiff(wide.f, theirs.f)).toBeLessThan(tol);
      expect(maxAbsDiff(wide.xhat, theirs.xhat)).toBeLessThan(tol * 10);
      // as the kernels run it, float32: same selection, reconstructions to float32 rounding
      const narrow = ourForward(ck, x, false);
      expect(narrow.f.map((v) => (v > 0 ? 1 : 0))).toEqual(theirs.f.map((v) => (v > 0 ? 1 : 0)));
      expect(maxAbsDiff(narrow.xhat, theirs.xhat)).toBeLessThan(1e-5);
    });
  }

  it('reads ae.state_dict() saved directly (an OrderedDict with _metadata, archive named after the file)', async () => {
    const w = weights('AutoEncoderTopK', 3);
    const ck = await load(await folder('AutoEncoderTopK', { w, pickle: { root: 'OrderedDict', top: 'ae' } }));
    expect(bits(ck.params.WencT)).toEqual(bits(arr(w['encoder.weight'])));
    expect(ck.cfg.activation_fn_kwargs).toEqual({ k: K });
  });

  it('JumpReLU with b_dec = 0: the fold adds nothing, so b_enc is bit-exact too', async () => {
    const w = weights('JumpReluAutoEncoder', 5);
    w.b_dec = f32([d], new Array(d).fill(0));
    const ck = await load(await folder('JumpReluAutoEncoder', { w }));
    expect(bits(ck.params.bEnc)).toEqual(bits(arr(w.b_enc)));
  });

  it('a k buffer saved as int64 is read', async () => {
    const w = weights('AutoEncoderTopK');
    w.k = { dtype: 'I64', shape: [], data: BigInt64Array.of(2n) };
    const ck = await load(await folder('AutoEncoderTopK', { w, cfg: config('AutoEncoderTopK', { k: 2 }) }));
    expect(ck.cfg.activation_fn_kwargs).toEqual({ k: 2 });
  });
});

describe('dictionary_learning hook names', () => {
  it('maps submodule names that say their kind and layer, and nothing else', () => {
    expect(dictionaryLearningHook('resid_post_layer_3', 3, 'out')).toBe('blocks.3.hook_resid_post');
    expect(dictionaryLearningHook('resid_3', 3, 'out')).toBe('blocks.3.hook_resid_post');
    expect(dictionaryLearningHook('resid_out_layer2', undefined, undefined)).toBe('blocks.2.hook_resid_post');
    expect(dictionaryLearningHook('resid_pre_layer_4', 4, 'in')).toBe('blocks.4.hook_resid_pre');
    expect(dictionaryLearningHook('mlp_out_layer1', 1, 'out')).toBe('blocks.1.hook_mlp_out');
    expect(dictionaryLearningHook('attn_out_layer0', 0, 'out')).toBe('blocks.0.hook_attn_out');
    expect(dictionaryLearningHook('resid_post_layer_3', 4, 'out')).toBe(''); // contradicts trainer.layer
    expect(dictionaryLearningHook('mlp_out_layer1', 1, 'in')).toBe(''); // the MLP's input is no output hook
    expect(dictionaryLearningHook('embed', 0, 'out')).toBe('');
    expect(dictionaryLearningHook(null, 3, 'out')).toBe(''); // the trainers' default submodule_name
    expect(dictionaryLearningHook('my_sae', 3, 'out')).toBe('');
  });

  it("an unmapped submodule leaves hook_name '' (the caller passes --hook); lm_name absent leaves model_name ''", async () => {
    const cfg = config('AutoEncoder', { submodule_name: null, lm_name: undefined });
    const ck = await load(await folder('AutoEncoder', { cfg }));
    expect([ck.cfg.hook_name, ck.cfg.model_name]).toEqual(['', '']);
  });
});

describe('dictionary_learning refusals: one line each', () => {
  it('is not detected without trainer.dict_class', async () => {
    const dir = await folder('AutoEncoder', { cfg: { buffer: {} } });
    expect(dictionaryLearning.detect(await probeFolder(dir))).toBe(false);
  });

  it('missing ae.pt', async () => {
    await refused(await folder('AutoEncoder', { noAe: true }), /missing ae\.pt$/);
  });

  it('a pickle calling os.system: refused at the global, nothing run', async () => {
    const marker = path.join(root, 'pwned');
    const pickle: StateDictOptions = { extraItems: (pk) => pk.str('evil').global('os', 'system').str(`touch ${marker}`).op(0x85).reduce() };
    const msg = await refused(await folder('AutoEncoder', { pickle }), /refusing to load global os\.system/);
    expect(msg).toContain('ae.pt');
    expect(existsSync(marker)).toBe(false);
  });

  it('a pickle reaching builtins.eval through STACK_GLOBAL', async () => {
    const marker = path.join(root, 'pwned-eval');
    const pickle: StateDictOptions = {
      extraItems: (pk) => pk.str('evil').op(0x8c, 8, ...Buffer.from('builtins'), 0x8c, 4, ...Buffer.from('eval'), 0x93).str(`open(${JSON.stringify(marker)}, 'w')`).op(0x85).reduce(),
    };
    await refused(await folder('BatchTopKSAE', { pickle }), /refusing to load global builtins\.eval/);
    expect(existsSync(marker)).toBe(false);
  });

  it('a missing tensor', async () => {
    const w = weights('AutoEncoderTopK');
    delete (w as Record<string, unknown>).b_dec;
    await refused(await folder('AutoEncoderTopK', { w }), /ae\.pt lacks tensor b_dec \(AutoEncoderTopK\)/);
  });

  it('an extra tensor', async () => {
    const w = { ...weights('JumpReluAutoEncoder'), W_skip: f32([d, d], new Array(d * d).fill(0)) };
    await refused(await folder('JumpReluAutoEncoder', { w }), /ae\.pt has tensor W_skip that JumpReluAutoEncoder does not have/);
    const v = { ...weights('AutoEncoder'), constructor: f32([1], [0]) };
    await refused(await folder('AutoEncoder', { w: v }), /ae\.pt has tensor constructor that AutoEncoder does not have/);
  });

  it("another class's keys (a JumpReLU state dict under dict_class AutoEncoder)", async () => {
    await refused(await folder('AutoEncoder', { w: weights('JumpReluAutoEncoder') }), /has tensors W_enc, b_enc, W_dec, b_dec, threshold that AutoEncoder does not have/);
  });

  it('decoder.weight stored [F, d] (not nn.Linear layout)', async () => {
    const w = weights('AutoEncoder');
    w['decoder.weight'] = f32([F, d], w['decoder.weight'].data as Float32Array);
    await refused(await folder('AutoEncoder', { w }), /tensor decoder\.weight has shape \[10,6\] but AutoEncoder with activation_dim=6, dict_size=10 \(config\.json\) has \[6,10\]/);
  });

  it('config sizes contradicting the tensors', async () => {
    await refused(await folder('AutoEncoderTopK', { cfg: config('AutoEncoderTopK', { dict_size: 12 }) }), /encoder\.weight has shape \[10,6\] but .*dict_size=12/);
  });

  it("config's k contradicting the k buffer, and k beyond dict_size", async () => {
    await refused(await folder('BatchTopKSAE', { cfg: config('BatchTopKSAE', { k: 5 }) }), /trainer\.k 5 but the k buffer in ae\.pt is 3/);
    const w = weights('AutoEncoderTopK');
    w.k = { dtype: 'I32', shape: [], data: Int32Array.of(F + 1) };
    await refused(await folder('AutoEncoderTopK', { w, cfg: config('AutoEncoderTopK', { k: F + 1 }) }), /k buffer is 11, not in 1\.\.10/);
  });

  it('an unknown or unread dict_class', async () => {
    await refused(await folder('AutoEncoder', { cfg: config('AutoEncoder', { dict_class: 'toString' }) }), /dict_class "toString" is not read/);
    await refused(await folder('AutoEncoder', { cfg: config('AutoEncoder', { dict_class: 'GatedAutoEncoder' }) }), /trainer\.dict_class "GatedAutoEncoder" is not read \(only AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder are\)/);
  });

  it('NaN or Inf in a weight', async () => {
    const w = weights('AutoEncoder');
    (w['encoder.bias'].data as Float32Array)[4] = NaN;
    await refused(await folder('AutoEncoder', { w }), /tensor encoder\.bias holds NaN or Inf/);
    const v = weights('JumpReluAutoEncoder');
    (v.threshold.data as Float32Array)[2] = Infinity;
    await refused(await folder('JumpReluAutoEncoder', { w: v }), /tensor threshold holds NaN or Inf/);
  });

  it('a BatchTopKSAE whose threshold was never calibrated (-1)', async () => {
    const w = weights('BatchTopKSAE');
    w.threshold = f32([], [-1]);
    await refused(await folder('BatchTopKSAE', { w }), /threshold buffer is -1, never calibrated/);
  });

  it('a non-integer activation_dim', async () => {
    await refused(await folder('AutoEncoder', { cfg: config('AutoEncoder', { activation_dim: '6' }) }), /trainer\.activation_dim "6", not a positive integer/);
  });
});

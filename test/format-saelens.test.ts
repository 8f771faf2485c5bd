import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { saeLens, SAELENS_VERSION } from '../src/sae/formats/saelens.js';
import { probeFolder } from '../src/sae/formats/probe.js';
import type { ExportSource } from '../src/sae/formats/types.js';
import { saveCheckpoint, type SaeCfgJson, type LoadedCheckpoint } from '../src/sae/checkpoint.js';
import { allocParams } from '../src/kernels/params.js';
import { createReferenceKernels } from '../src/kernels/reference.js';
import { allocCodes } from '../src/kernels/selection.js';
import type { SaeParams, Selection } from '../src/kernels/types.js';
import { preprocessRows, unpreprocessRows, type Preprocessing } from '../src/store/preprocess.js';
import { readSafetensors, writeSafetensors, type Tensor } from '../src/util/safetensors.js';
import { UserError } from '../src/util/errors.js';
import { Rng } from '../src/util/rng.js';

type Arch = 'relu' | 'topk' | 'jumprelu';
const D = 32;
const F = 128;
const K = 8;
const B = 48;

let root: string;
let n = 0;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-saelens-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});
const fresh = (): string => path.join(root, `out-${n++}`);

/** A small random SAE: unit decoder rows, encoder near its transpose, biases that leave a fraction of features firing. */
function randomSae(arch: Arch, preprocessing: Preprocessing, seed = 1): ExportSource {
  const rng = new Rng(seed);
  const p = allocParams(D, F);
  for (let j = 0; j < F; j++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += (p.Wdec[j * D + i] = rng.normal()) ** 2;
    for (let i = 0; i < D; i++) p.Wdec[j * D + i] /= Math.sqrt(ss);
    for (let i = 0; i < D; i++) p.WencT[j * D + i] = p.Wdec[j * D + i] + (0.3 * rng.normal()) / Math.sqrt(D);
    p.bEnc[j] = 0.05 * rng.normal() - 0.02;
  }
  for (let i = 0; i < D; i++) p.bDec[i] = 0.1 * rng.normal();
  return {
    params: p,
    architecture: arch,
    ...(arch === 'topk' ? { k: K } : {}),
    ...(arch === 'jumprelu' ? { threshold: Float32Array.from({ length: F }, () => -0.02 + 0.14 * rng.next()) } : {}),
    preprocessing,
    ...(preprocessing === 'dataset_scale' ? { scale: 0.37 } : {}),
    hook: 'blocks.6.hook_resid_post',
    model: 'gpt2',
    contextSize: 128,
    datasetPath: 'brown',
    trainedPrecision: 'fp32',
  };
}

/** Raw activations: per token a random scale and offset on top of a shared mean, as residual streams have. */
function activations(seed = 7): Float32Array {
  const rng = new Rng(seed);
  const mean = Array.from({ length: D }, () => 2 * rng.normal());
  const x = new Float32Array(B * D);
  for (let b = 0; b < B; b++) {
    const s = 0.5 + 4.5 * rng.next();
    const o = rng.normal();
    for (let i = 0; i < D; i++) x[b * D + i] = mean[i] + o + s * rng.normal();
  }
  return x;
}

function selectionOf(arch: string, k?: number, threshold?: Float32Array): Selection {
  return arch === 'topk' ? { kind: 'topk', k: k! } : arch === 'jumprelu' ? { kind: 'jumprelu', threshold: threshold! } : { kind: 'relu' };
}

/** Ours (SPEC §3–5): preprocess, z' = (x' − b_dec)·W_enc + b_enc, select, decode, un-preprocess, with the reference kernels. */
function ours(p: SaeParams, sel: Selection, pre: Preprocessing, scale: number | undefined, x: Float32Array): { recon: Float32Array; active: number[][] } {
  const xp = Float32Array.from(x);
  const mean = new Float32Array(B);
  const norm = new Float32Array(B);
  preprocessRows(xp, B, D, pre, scale, mean, norm);
  const k = createReferenceKernels({ d: D, F, maxB: B });
  const out = { xc: new Float32Array(B * D), codes: allocCodes(B, B * F), aux: [] };
  k.encodeSelect(p, xp, B, sel, [], out);
  const recon = new Float32Array(B * D);
  k.decode(p, out.codes, recon, true);
  unpreprocessRows(recon, B, D, pre, scale, mean, norm);
  const active = Array.from({ length: B }, (_, b) => Array.from(out.codes.index.subarray(out.codes.rowPtr[b], out.codes.rowPtr[b + 1])).sort((a, c) => a - c));
  return { recon, active };
}

/**
 * SAELens' inference forward, re-implemented from its source in float64 on the folder's files:
 * saes/sae.py (run_time_activation_ln_in/_out, process_sae_in), standard_sae.py (ReLU),
 * topk_sae.py (TopK: torch.topk then ReLU; rescale_acts_by_decoder_norm), jumprelu_sae.py
 * (ReLU(h)·(h > ReLU(θ))).
 */
async function saelens(dir: string, x: Float32Array): Promise<{ recon: Float64Array; active: number[][] }> {
  const cfg = JSON.parse(await fs.readFile(path.join(dir, 'cfg.json'), 'utf8'));
  const t = (await readSafetensors(path.join(dir, 'sae_weights.safetensors'))).tensors;
  const [We, Wd, be, bd] = ['W_enc', 'W_dec', 'b_enc', 'b_dec'].map((k) => t[k].data as Float32Array);
  const th = t.threshold?.data as Float32Array | undefined;
  const { d_in: d, d_sae: f } = cfg;
  const dn = Array.from({ length: f }, (_, j) => Math.hypot(...Wd.subarray(j * d, (j + 1) * d)));
  const recon = new Float64Array(B * d);
  const active: number[][] = [];
  for (let b = 0; b < B; b++) {
    let xs = Array.from(x.subarray(b * d, (b + 1) * d));
    let mu = 0;
    let std = 0;
    if (cfg.normalize_activations === 'layer_norm') {
      mu = xs.reduce((a, v) => a + v, 0) / d;
      const xc = xs.map((v) => v - mu);
      std = Math.sqrt(xc.reduce((a, v) => a + v * v, 0) / (d - 1)); // torch.std: unbiased
      xs = xc.map((v) => v / (std + 1e-5));
    } else expect(cfg.normalize_activations).toBe('none');
    const sin = xs.map((v, i) => v - bd[i] * (cfg.apply_b_dec_to_input ? 1 : 0));
    const h = Array.from({ length: f }, (_, j) => {
      let s = be[j];
      for (let i = 0; i < d; i++) s += sin[i] * We[i * f + j];
      return cfg.architecture === 'topk' && cfg.rescale_acts_by_decoder_norm ? s * dn[j] : s;
    });
    let acts: number[];
    if (cfg.architecture === 'standard') acts = h.map((v) => Math.max(v, 0));
    else if (cfg.architecture === 'topk') {
      const top = new Set([...h.keys()].sort((a, c) => h[c] - h[a]).slice(0, cfg.k));
      acts = h.map((v, j) => (top.has(j) ? Math.max(v, 0) : 0));
    } else acts = h.map((v, j) => Math.max(v, 0) * (v > Math.max(th![j], 0) ? 1 : 0));
    const rescale = cfg.architecture === 'topk' && cfg.rescale_acts_by_decoder_norm;
    for (let i = 0; i < d; i++) {
      let s = bd[i];
      for (let j = 0; j < f; j++) if (acts[j] !== 0) s += (rescale ? acts[j] / dn[j] : acts[j]) * Wd[j * d + i];
      recon[b * d + i] = cfg.normalize_activations === 'layer_norm' ? s * std + mu : s;
    }
    active.push(acts.flatMap((v, j) => (v !== 0 ? [j] : [])));
  }
  return { recon, active };
}

function maxRelError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let r = 0; r < B; r++) {
    let num = 0;
    let den = 0;
    for (let i = 0; i < D; i++) {
      num += (a[r * D + i] - b[r * D + i]) ** 2;
      den += b[r * D + i] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / den));
  }
  return worst;
}

const bytes = (a: ArrayLike<number>): Buffer => Buffer.from(Float32Array.from(a).buffer);

async function exported(src: ExportSource): Promise<string> {
  const out = fresh();
  await saeLens.write!(src, out);
  return out;
}

async function load(dir: string): Promise<LoadedCheckpoint> {
  const probe = await probeFolder(dir);
  expect(saeLens.detect(probe)).toBe(true);
  return saeLens.load(probe);
}

describe('SAELens export → import', () => {
  it.each(['relu', 'topk', 'jumprelu'] as const)('round-trips a %s SAE without preprocessing bit-exactly', async (arch) => {
    const src = randomSae(arch, 'none');
    const ck = await load(await exported(src));
    for (const key of ['WencT', 'Wdec', 'bEnc', 'bDec'] as const) expect(bytes(ck.params[key]).equals(bytes(src.params[key]))).toBe(true);
    if (arch === 'jumprelu') expect(bytes(ck.threshold!).equals(bytes(src.threshold!))).toBe(true);
    else expect(ck.threshold).toBeUndefined();
    expect(ck.cfg).toMatchObject({ architecture: arch, d_in: D, d_sae: F, normalize_activations: 'none', hook_name: src.hook, model_name: src.model, format: 'saelens', apply_b_dec_to_input: true });
    expect(ck.cfg.activation_fn_kwargs).toEqual(arch === 'topk' ? { k: K } : {});
  });

  it.each(['center_unit_norm', 'dataset_scale'] as const)('round-trips %s preprocessing within one float32 rounding', async (pre) => {
    const src = randomSae('jumprelu', pre);
    const ck = await load(await exported(src));
    expect(ck.cfg.normalize_activations).toBe(pre);
    expect(ck.cfg.dataset_scale).toBe(src.scale);
    for (const key of ['WencT', 'Wdec', 'bDec'] as const)
      src.params[key].forEach((v, i) => expect(Math.abs(ck.params[key][i] - v)).toBeLessThanOrEqual(2 ** -23 * Math.abs(v)));
    expect(bytes(ck.params.bEnc).equals(bytes(src.params.bEnc))).toBe(true);
    expect(bytes(ck.threshold!).equals(bytes(src.threshold!))).toBe(true);
  });

  it('writes exactly the tensors and cfg fields SAELens 6 saves', async () => {
    const dir = await exported(randomSae('topk', 'center_unit_norm'));
    const t = (await readSafetensors(path.join(dir, 'sae_weights.safetensors'))).tensors;
    expect(Object.fromEntries(Object.entries(t).map(([k, v]) => [k, [v.dtype, v.shape]]))).toEqual({ W_enc: ['F32', [D, F]], W_dec: ['F32', [F, D]], b_enc: ['F32', [F]], b_dec: ['F32', [D]] });
    const cfg = JSON.parse(await fs.readFile(path.join(dir, 'cfg.json'), 'utf8'));
    expect(Object.keys(cfg)).toEqual(['d_in', 'd_sae', 'dtype', 'device', 'apply_b_dec_to_input', 'normalize_activations', 'reshape_activations', 'metadata', 'k', 'rescale_acts_by_decoder_norm', 'architecture']);
    expect(cfg).toMatchObject({ architecture: 'topk', k: K, rescale_acts_by_decoder_norm: false, dtype: 'float32', device: 'cpu', apply_b_dec_to_input: true, normalize_activations: 'layer_norm', reshape_activations: 'none' });
    expect(cfg.metadata).toMatchObject({ sae_lens_version: SAELENS_VERSION, model_name: 'gpt2', hook_name: 'blocks.6.hook_resid_post', hook_head_index: null, context_size: 128, prepend_bos: null, dataset_path: 'brown' });
    expect((await fs.readdir(root)).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('writes sparsity.safetensors as log10 of the feature density, −10 for a dead feature', async () => {
    const density = Float32Array.from({ length: F }, (_, j) => (j === 3 ? 0 : (j + 1) / (2 * F)));
    const dir = await exported({ ...randomSae('relu', 'none'), density });
    const t = (await readSafetensors(path.join(dir, 'sparsity.safetensors'))).tensors;
    expect(Object.keys(t)).toEqual(['sparsity']);
    expect(t.sparsity.shape).toEqual([F]);
    const s = t.sparsity.data as Float32Array;
    expect(s[3]).toBeCloseTo(-10, 5);
    density.forEach((p, j) => j !== 3 && expect(s[j]).toBeCloseTo(Math.log10(p), 5));
  });

  it('tells a SAELens folder from our own checkpoint', async () => {
    const src = randomSae('relu', 'none');
    const mine = fresh();
    const cfg: SaeCfgJson = { architecture: 'relu', d_in: D, d_sae: F, dtype: 'float32', hook_name: 'h', model_name: 'm', normalize_activations: 'none', apply_b_dec_to_input: true, activation_fn_kwargs: {}, format: 'sae-checkpoint/1' };
    await saveCheckpoint(mine, cfg, src.params);
    expect(saeLens.detect(await probeFolder(mine))).toBe(false);
    expect(saeLens.detect(await probeFolder(await exported(src)))).toBe(true);
  });

  it('refuses an SAE SAELens cannot express in one line, writing nothing', async () => {
    const out = fresh();
    const before = await fs.readdir(root);
    await expect(saeLens.write!({ ...randomSae('topk', 'none'), k: undefined }, out)).rejects.toThrow(/^cannot export to SAELens: topk needs k[^\n]*$/);
    await expect(saeLens.write!({ ...randomSae('relu', 'dataset_scale'), scale: undefined }, out)).rejects.toThrow(UserError);
    expect(await fs.readdir(root)).toEqual(before);
  });
});

describe('SAELens semantics', () => {
  const cases = [
    ...(['relu', 'topk', 'jumprelu'] as const).flatMap((a) => [[a, 'center_unit_norm'] as const, [a, 'none'] as const]),
    ['topk', 'dataset_scale'] as const,
  ];
  it.each(cases)('SAELens reconstructs a %s export (%s) as ours does, with the same active features', async (arch, pre) => {
    const src = randomSae(arch, pre);
    const x = activations();
    const mine = ours(src.params, selectionOf(arch, src.k, src.threshold), pre, src.scale, x);
    const theirs = await saelens(await exported(src), x);
    // layer_norm divides by std + 1e-5 on the way in only: a relative difference of ~1e-5/std
    expect(maxRelError(theirs.recon, mine.recon)).toBeLessThan(pre === 'center_unit_norm' ? 1e-4 : 1e-5);
    expect(theirs.active).toEqual(mine.active);
    const l0 = mine.active.reduce((a, r) => a + r.length, 0) / B;
    expect(l0).toBeGreaterThan(1); // the comparison means something
    expect(l0).toBeLessThan(0.75 * F);
  });

  it('a SAELens folder with apply_b_dec_to_input false and rescale_acts_by_decoder_norm loads to the same forward', async () => {
    const src = randomSae('topk', 'none', 3);
    const dir = await exported(src);
    const rng = new Rng(5);
    await rewrite(dir, (t) => {
      for (let j = 0; j < F; j++) for (let i = 0; i < D; i++) (t.W_dec.data as Float32Array)[j * D + i] *= 0.5 + j / F; // decoder rows of unequal norm
      t.b_dec.data = Float32Array.from(t.b_dec.data as Float32Array, () => rng.normal());
    }, (cfg) => Object.assign(cfg, { apply_b_dec_to_input: false, rescale_acts_by_decoder_norm: true }));
    const ck = await load(dir);
    const x = activations(11);
    const mine = ours(ck.params, selectionOf('topk', K), 'none', undefined, x);
    const theirs = await saelens(dir, x);
    expect(maxRelError(theirs.recon, mine.recon)).toBeLessThan(1e-5);
    expect(theirs.active).toEqual(mine.active);
  });
});

/** Rewrite an exported folder's weights and cfg. */
async function rewrite(dir: string, tensors: (t: Record<string, Tensor>) => void, cfg: (c: Record<string, unknown>) => void = () => undefined): Promise<void> {
  const file = path.join(dir, 'sae_weights.safetensors');
  const t = (await readSafetensors(file)).tensors;
  tensors(t);
  await writeSafetensors(file, t);
  const c = JSON.parse(await fs.readFile(path.join(dir, 'cfg.json'), 'utf8'));
  cfg(c);
  await fs.writeFile(path.join(dir, 'cfg.json'), JSON.stringify(c));
}

describe('SAELens import', () => {
  it('reads BF16 weights as the same values in float32', async () => {
    const src = randomSae('relu', 'none');
    for (const t of [src.params.WencT, src.params.Wdec, src.params.bEnc, src.params.bDec]) {
      const u = new Uint32Array(t.buffer, t.byteOffset, t.length);
      for (let i = 0; i < u.length; i++) u[i] &= 0xffff0000; // representable in bf16
    }
    const dir = await exported(src);
    await rewrite(dir, () => undefined, (c) => (c.dtype = 'bfloat16'));
    const t = (await readSafetensors(path.join(dir, 'sae_weights.safetensors'))).tensors;
    // a safetensors file of BF16 tensors: the top halves of the float32 bits
    const names = Object.keys(t).sort();
    let off = 0;
    const header: Record<string, unknown> = {};
    const parts = names.map((k) => {
      const u = new Uint32Array((t[k].data as Float32Array).slice().buffer);
      const h = Uint16Array.from(u, (v) => v >>> 16);
      header[k] = { dtype: 'BF16', shape: t[k].shape, data_offsets: [off, (off += h.byteLength)] };
      return Buffer.from(h.buffer);
    });
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await fs.writeFile(path.join(dir, 'sae_weights.safetensors'), Buffer.concat([len, json, ...parts]));
    const ck = await load(dir);
    for (const key of ['WencT', 'Wdec', 'bEnc', 'bDec'] as const) expect(bytes(ck.params[key]).equals(bytes(src.params[key]))).toBe(true);
  });

  it('reads expected_average_only_in as dataset_scale when a training checkpoint records its factor, and refuses it otherwise', async () => {
    const dir = await exported(randomSae('relu', 'none'));
    await rewrite(dir, () => undefined, (c) => (c.normalize_activations = 'expected_average_only_in'));
    await expect(load(dir)).rejects.toThrow(/^[^\n]*records no scaling factor[^\n]*$/);
    await fs.writeFile(path.join(dir, 'activation_scaler.json'), JSON.stringify({ scaling_factor: 0.25 }));
    const ck = await load(dir);
    expect(ck.cfg).toMatchObject({ normalize_activations: 'dataset_scale', dataset_scale: 0.25 });
  });

  it('reads a pre-6 cfg (top-level hook_point, activation_fn topk) as SAELens brings it forward', async () => {
    const dir = await exported(randomSae('topk', 'none'));
    await fs.writeFile(
      path.join(dir, 'cfg.json'),
      JSON.stringify({ d_in: D, d_sae: F, dtype: 'float32', model_name: 'gpt2-small', hook_point: 'blocks.8.hook_resid_pre', activation_fn_str: 'topk', activation_fn_kwargs: { k: 5 }, normalize_activations: false, apply_b_dec_to_input: true }),
    );
    const ck = await load(dir);
    expect(ck.cfg).toMatchObject({ architecture: 'topk', activation_fn_kwargs: { k: 5 }, hook_name: 'blocks.8.hook_resid_pre', model_name: 'gpt2-small', normalize_activations: 'none' });
  });

  const bad: [string, Arch, (t: Record<string, Tensor>) => void, (c: Record<string, unknown>) => void, RegExp][] = [
    ['a missing tensor', 'relu', (t) => delete t.b_enc, () => undefined, /tensor b_enc missing/],
    ['an extra tensor', 'relu', (t) => (t.W_skip = { dtype: 'F32', shape: [D, D], data: new Float32Array(D * D) }), () => undefined, /unexpected tensor W_skip/],
    ['a tensor of the wrong shape', 'jumprelu', (t) => (t.threshold = { dtype: 'F32', shape: [F - 1], data: new Float32Array(F - 1) }), () => undefined, /tensor threshold has shape \[127\] but cfg.json \(d_in 32, d_sae 128\) needs \[128\]/],
    ['an unknown architecture', 'relu', () => undefined, (c) => (c.architecture = 'gated'), /architecture "gated" is not one this reads/],
    ['a cfg d_sae contradicting the tensors', 'relu', () => undefined, (c) => (c.d_sae = F * 2), /tensor W_enc has shape \[32,128\] but cfg.json \(d_in 32, d_sae 256\)/],
    ['topk without k', 'topk', () => undefined, (c) => delete c.k, /architecture topk but cfg.json has no k/],
    ['NaN in a weight', 'relu', (t) => ((t.W_dec.data as Float32Array)[17] = NaN), () => undefined, /tensor W_dec contains NaN/],
    ['a normalisation with no preprocessing of ours', 'relu', () => undefined, (c) => (c.normalize_activations = 'constant_norm_rescale'), /normalize_activations "constant_norm_rescale"/],
  ];
  it.each(bad)('refuses %s in one line', async (_, arch, tensors, cfg, message) => {
    const dir = await exported(randomSae(arch, 'none'));
    await rewrite(dir, tensors, cfg);
    const err = await load(dir).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).not.toContain('\n');
  });
});

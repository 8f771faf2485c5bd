import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sparsify, sparsifyHookToOurs } from '../src/sae/formats/sparsify.js';
import { probeFolder } from '../src/sae/formats/probe.js';
import type { ExportSource } from '../src/sae/formats/types.js';
import { saveCheckpoint, type SaeCfgJson } from '../src/sae/checkpoint.js';
import { readSafetensors, writeSafetensors, type Tensor } from '../src/util/safetensors.js';
import { UserError } from '../src/util/errors.js';
import { allocParams } from '../src/kernels/params.js';
import { createReferenceKernels } from '../src/kernels/reference.js';
import { allocCodes } from '../src/kernels/selection.js';
import type { SaeParams } from '../src/kernels/types.js';
import { preprocessRows, unpreprocessRows } from '../src/store/preprocess.js';

let root: string;
let n = 0;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-sparsify-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});
/** a fresh empty folder; the SAE goes in `name` inside it */
async function fresh(): Promise<string> {
  const d = path.join(root, `case${n++}`);
  await fs.mkdir(d);
  return d;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u());
}

const d = 8;
const F = 48;
const k = 6;

/** A random SAE with unit decoder rows and an encoder bias positive for only two features. */
function randomSae(seed: number): SaeParams {
  const g = rng(seed);
  const p = allocParams(d, F);
  for (let i = 0; i < F * d; i++) p.WencT[i] = g() / Math.sqrt(d);
  for (let j = 0; j < F; j++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += (p.Wdec[j * d + i] = g()) ** 2;
    for (let i = 0; i < d; i++) p.Wdec[j * d + i] /= Math.sqrt(ss);
    p.bEnc[j] = j < 2 ? 0.5 : -0.05 * Math.abs(g());
  }
  for (let i = 0; i < d; i++) p.bDec[i] = 0.3 * g();
  return p;
}

function source(params: SaeParams, over: Partial<ExportSource> = {}): ExportSource {
  return { params, architecture: 'topk', k, preprocessing: 'none', hook: 'blocks.6.hook_resid_pre', model: 'gpt2', ...over };
}

/** B raw tokens; the last is b_dec itself (in raw units), whose affinities are b_enc: fewer than k positive. */
function tokens(p: SaeParams, B: number, seed: number, scale = 1): Float32Array {
  const g = rng(seed);
  const x = new Float32Array(B * d);
  for (let i = 0; i < (B - 1) * d; i++) x[i] = 2 * g();
  for (let i = 0; i < d; i++) x[(B - 1) * d + i] = p.bDec[i] / scale;
  return x;
}

/** Ours: the SAE's preprocessing, z' = (x − b_dec)·W_enc + b_enc, TopK∘ReLU, decode, back to raw units. */
function ourForward(p: SaeParams, x: Float32Array, B: number, pre: 'none' | 'dataset_scale', scale?: number) {
  const xs = Float32Array.from(x);
  preprocessRows(xs, B, d, pre, scale);
  const kern = createReferenceKernels({ d, F, maxB: B });
  const enc = { xc: new Float32Array(B * d), codes: allocCodes(B, B * k), aux: [] };
  kern.encodeSelect(p, xs, B, { kind: 'topk', k }, [], enc);
  const xhat = new Float32Array(B * d);
  kern.decode(p, enc.codes, xhat, true);
  unpreprocessRows(xhat, B, d, pre, scale);
  const active = [...Array(B)].map((_, b) => [...enc.codes.index.subarray(enc.codes.rowPtr[b], enc.codes.rowPtr[b + 1])].sort((a, c) => a - c));
  return { xhat, active };
}

/**
 * sparsify v1.3's forward, re-implemented in float64 from its source and reading the folder's files
 * directly: sparse_coder.py SparseCoder.__init__ (num_latents = num_latents or d_in·expansion_factor),
 * encode (x − b_dec unless transcode), fused_encoder.py (relu(linear(x, W, b)) then torch.topk(k),
 * which takes k entries, zeros included), decode (Σ acts·W_dec rows + b_dec), forward (+ x·W_skipᵀ).
 */
async function sparsifyForward(dir: string, x: Float32Array, B: number) {
  const cfg = JSON.parse(await fs.readFile(path.join(dir, 'cfg.json'), 'utf8'));
  const t = (await readSafetensors(path.join(dir, 'sae.safetensors'))).tensors;
  const D = cfg.d_in;
  const M = cfg.num_latents || D * cfg.expansion_factor;
  expect(t['encoder.weight'].shape).toEqual([M, D]);
  expect(t.W_dec.shape).toEqual([M, D]);
  const [W, bias, Wd, bd] = [t['encoder.weight'].data, t['encoder.bias'].data, t.W_dec.data, t.b_dec.data] as Float32Array[];
  const xhat = new Float64Array(B * D);
  const active: number[][] = [];
  for (let b = 0; b < B; b++) {
    const xin = [...x.subarray(b * D, (b + 1) * D)].map((v, i) => (cfg.transcode ? v : v - bd[i]));
    const pre = [...Array(M)].map((_, j) => Math.max(0, xin.reduce((s, v, i) => s + v * W[j * D + i], bias[j])));
    const top = [...Array(M).keys()].sort((a, c) => pre[c] - pre[a]).slice(0, cfg.k);
    for (let i = 0; i < D; i++) xhat[b * D + i] = bd[i] + top.reduce((s, j) => s + pre[j] * Wd[j * D + i], 0);
    active.push(top.filter((j) => pre[j] > 0).sort((a, c) => a - c));
  }
  return { xhat, active };
}

async function expectRefusal(p: Promise<unknown>, re: RegExp): Promise<void> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).toMatch(re);
  expect((err as Error).message).not.toContain('\n');
}

/** A sparsify folder as sparsify's save_to_disk writes it, built by hand (not by our writer), with changes. */
async function handMade(dir: string, change: { cfg?: Record<string, unknown>; tensors?: (t: Record<string, Tensor>) => void } = {}): Promise<string> {
  const p = randomSae(7);
  const t: Record<string, Tensor> = {
    'encoder.weight': { dtype: 'F32', shape: [F, d], data: p.WencT as Float32Array },
    'encoder.bias': { dtype: 'F32', shape: [F], data: p.bEnc as Float32Array },
    W_dec: { dtype: 'F32', shape: [F, d], data: p.Wdec as Float32Array },
    b_dec: { dtype: 'F32', shape: [d], data: p.bDec as Float32Array },
  };
  change.tensors?.(t);
  const cfg = { activation: 'topk', expansion_factor: F / d, normalize_decoder: true, num_latents: 0, k, multi_topk: false, skip_connection: false, transcode: false, d_in: d, ...change.cfg };
  await fs.mkdir(dir, { recursive: true });
  await writeSafetensors(path.join(dir, 'sae.safetensors'), t);
  await fs.writeFile(path.join(dir, 'cfg.json'), JSON.stringify(cfg));
  return dir;
}

const load = async (dir: string) => sparsify.load(await probeFolder(dir));

describe('sparsify format', () => {
  it('write then load is bit-identical for a TopK SAE with preprocessing none', async () => {
    const p = randomSae(1);
    const out = path.join(await fresh(), 'export');
    await sparsify.write!(source(p), out);
    const ck = await load(out);
    for (const key of ['WencT', 'bEnc', 'Wdec', 'bDec'] as const) expect(Buffer.from((ck.params[key] as Float32Array).buffer)).toEqual(Buffer.from((p[key] as Float32Array).buffer));
    expect(ck.cfg).toMatchObject({ architecture: 'topk', d_in: d, d_sae: F, activation_fn_kwargs: { k }, normalize_activations: 'none', format: 'sparsify', hook_name: 'blocks.6.hook_resid_pre', model_name: 'gpt2' });
  });

  it('writes sparsify v1.3 cfg.json fields and exactly its four float32 tensors, W_dec [F, d] untransposed', async () => {
    const p = randomSae(2);
    const out = path.join(await fresh(), 'export');
    await sparsify.write!(source(p), out);
    expect((await fs.readdir(out)).sort()).toEqual(['cfg.json', 'sae.safetensors']);
    const cfg = JSON.parse(await fs.readFile(path.join(out, 'cfg.json'), 'utf8'));
    expect(cfg).toEqual({ activation: 'topk', expansion_factor: 6, normalize_decoder: true, num_latents: F, k, multi_topk: false, skip_connection: false, transcode: false, d_in: d, hook_name: 'blocks.6.hook_resid_pre', model_name: 'gpt2' });
    const t = (await readSafetensors(path.join(out, 'sae.safetensors'))).tensors;
    expect(Object.fromEntries(Object.entries(t).map(([name, v]) => [name, [v.dtype, v.shape]]))).toEqual({ 'encoder.weight': ['F32', [F, d]], 'encoder.bias': ['F32', [F]], W_dec: ['F32', [F, d]], b_dec: ['F32', [d]] });
    expect([...t.W_dec.data.subarray(0, d)]).toEqual([...p.Wdec.subarray(0, d)]);
  });

  it("sparsify's forward on the exported folder reconstructs as ours and selects the same latents", async () => {
    const p = randomSae(3);
    const out = path.join(await fresh(), 'export');
    await sparsify.write!(source(p), out);
    const B = 24;
    const x = tokens(p, B, 30);
    const ours = ourForward(p, x, B, 'none');
    const theirs = await sparsifyForward(out, x, B);
    expect(theirs.active).toEqual(ours.active);
    expect(ours.active[B - 1].length).toBeLessThan(k); // b_dec itself: only two positive affinities
    for (let i = 0; i < B * d; i++) expect(Math.abs(theirs.xhat[i] - ours.xhat[i])).toBeLessThan(1e-5 * (1 + Math.abs(ours.xhat[i])));
  });

  it("a dataset_scale SAE exports folded into the weights: sparsify's forward on raw inputs equals ours on scaled inputs, unscaled", async () => {
    const p = randomSae(4);
    const scale = 0.37;
    const out = path.join(await fresh(), 'export');
    await sparsify.write!(source(p, { preprocessing: 'dataset_scale', scale }), out);
    const B = 24;
    const x = tokens(p, B, 40, scale);
    const ours = ourForward(p, x, B, 'dataset_scale', scale);
    const theirs = await sparsifyForward(out, x, B);
    expect(theirs.active).toEqual(ours.active);
    for (let i = 0; i < B * d; i++) expect(Math.abs(theirs.xhat[i] - ours.xhat[i])).toBeLessThan(1e-5 * (1 + Math.abs(ours.xhat[i])));
    const ck = await load(out);
    expect(ck.cfg.normalize_activations).toBe('none');
    expect(JSON.parse(await fs.readFile(path.join(out, 'cfg.json'), 'utf8')).normalize_decoder).toBe(true);
  });

  it('detects a sparsify folder and never our own checkpoint, though both name their weights sae.safetensors', async () => {
    const p = randomSae(5);
    const base = await fresh();
    await sparsify.write!(source(p), path.join(base, 'sp'));
    const cfg: SaeCfgJson = { architecture: 'topk', d_in: d, d_sae: F, dtype: 'float32', hook_name: 'h', model_name: 'm', normalize_activations: 'none', apply_b_dec_to_input: true, activation_fn_kwargs: { k }, format: 'sae-checkpoint/1' };
    await saveCheckpoint(path.join(base, 'ours'), cfg, p);
    expect(sparsify.detect(await probeFolder(path.join(base, 'sp')))).toBe(true);
    expect(sparsify.detect(await probeFolder(path.join(base, 'ours')))).toBe(false);
  });

  it("takes the hook from a run's folder name (in our naming where it maps, else as sparsify names it) and the model from the run's config.json", async () => {
    const run = await fresh();
    await fs.writeFile(path.join(run, 'config.json'), JSON.stringify({ sae: { k }, model: 'EleutherAI/pythia-70m', hookpoints: ['layers.3', 'embed_in'] }));
    expect((await load(await handMade(path.join(run, 'layers.3')))).cfg).toMatchObject({ hook_name: 'blocks.3.hook_resid_post', model_name: 'EleutherAI/pythia-70m' });
    expect((await load(await handMade(path.join(run, 'embed_in', 'seed1')))).cfg).toMatchObject({ hook_name: 'embed_in', model_name: 'EleutherAI/pythia-70m' });
  });

  it('leaves hook and model empty for a folder with no run config and no layer index in its name', async () => {
    expect((await load(await handMade(path.join(await fresh(), 'my_sae')))).cfg).toMatchObject({ hook_name: '', model_name: '' });
  });

  it("reads an older release's cfg.json (no num_latents: expansion_factor gives the width) with bf16 tensors, widened exactly", async () => {
    const dir = path.join(await fresh(), 'layers.0');
    await handMade(dir, { cfg: { activation: undefined, num_latents: undefined, multi_topk: undefined, skip_connection: undefined, transcode: undefined, signed: false } });
    // rewrite the weights as BF16 (top halves of the float32 values), as sparsify saves an SAE cast to bf16
    const t = (await readSafetensors(path.join(dir, 'sae.safetensors'))).tensors;
    const names = Object.keys(t).sort();
    let off = 0;
    const header: Record<string, unknown> = {};
    const parts = names.map((name) => {
      const f = t[name].data as Float32Array;
      const bytes = new Uint8Array(f.length * 2);
      new Uint16Array(bytes.buffer).set(Uint32Array.from(new Uint32Array(f.buffer), (u) => u >>> 16));
      header[name] = { dtype: 'BF16', shape: t[name].shape, data_offsets: [off, (off += bytes.length)] };
      return bytes;
    });
    const json = Buffer.from(JSON.stringify(header).padEnd(Math.ceil(JSON.stringify(header).length / 8) * 8, ' '));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await fs.writeFile(path.join(dir, 'sae.safetensors'), Buffer.concat([len, json, ...parts]));
    const ck = await load(dir);
    expect(ck.cfg.d_sae).toBe(F);
    const want = new Float32Array(new Uint32Array((t.W_dec.data as Float32Array).slice().buffer).map((u) => (u >>> 16) << 16).buffer);
    expect([...ck.params.Wdec]).toEqual([...want]);
  });

  it('accepts multi_topk, a training loss only: the SAE selects k', async () => {
    const ck = await load(await handMade(path.join(await fresh(), 'layers.1'), { cfg: { multi_topk: true } }));
    expect(ck.cfg.activation_fn_kwargs).toEqual({ k });
  });

  it.each([
    ['a ReLU SAE', { architecture: 'relu' as const, k: undefined }, /relu.*topk and groupmax/],
    ['a JumpReLU SAE', { architecture: 'jumprelu' as const, k: undefined, threshold: new Float32Array(F) }, /jumprelu.*topk and groupmax/],
    ['a center_unit_norm SAE', { preprocessing: 'center_unit_norm' as const }, /unit norm per token/],
  ])('refuses to export %s in one line, writing nothing', async (_, over, re) => {
    const base = await fresh();
    await expectRefusal(sparsify.write!(source(randomSae(6), over), path.join(base, 'export')), re);
    expect(await fs.readdir(base)).toEqual([]);
  });

  type Change = (t: Record<string, Tensor>) => void;
  const drop = (name: string): Change => (t) => void delete t[name];
  const put = (name: string, make: (t: Record<string, Tensor>) => Tensor): Change => (t) => void (t[name] = make(t));
  const f32 = (shape: number[]) => (): Tensor => ({ dtype: 'F32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
  it.each([
    ['W_skip with skip_connection', { cfg: { skip_connection: true }, tensors: put('W_skip', f32([d, d])) }, /skip connection/],
    ['a W_skip tensor alone', { tensors: put('W_skip', f32([d, d])) }, /skip connection/],
    ['a transcoder', { cfg: { transcode: true } }, /transcoder/],
    ['a signed SAE', { cfg: { signed: true } }, /signed/],
    ['groupmax', { cfg: { activation: 'groupmax' } }, /groupmax/],
    ['a missing tensor', { tensors: drop('b_dec') }, /lacks tensor b_dec/],
    ['an extra tensor', { tensors: put('threshold', f32([F])) }, /threshold that sparsify does not save/],
    ['a transposed W_dec', { tensors: put('W_dec', (t) => ({ ...t.W_dec, shape: [d, F] })) }, /W_dec has shape \[8,48\] but/],
    ['num_latents contradicting the tensors', { cfg: { num_latents: 2 * F } }, /num_latents=96/],
    ['expansion_factor contradicting the tensors', { cfg: { expansion_factor: 4 } }, /expansion_factor 4/],
    ['k above the number of latents', { cfg: { k: F + 1 } }, /k=49/],
    ['a cfg without k', { cfg: { k: undefined } }, /k undefined/],
    ['NaN in a tensor', { tensors: (t) => void ((t['encoder.bias'].data as Float32Array)[3] = NaN) }, /encoder.bias holds NaN/],
  ])('refuses to load %s in one line', async (_, change, re) => {
    await expectRefusal(load(await handMade(path.join(await fresh(), 'layers.2'), change)), re);
  });

  it("names sparsify's hookpoints in our hook names where they have one", () => {
    expect(['layers.6', 'h.6', 'gpt_neox.layers.6', 'h.0.mlp', 'layers.0.attention', 'embed_tokens'].map(sparsifyHookToOurs)).toEqual([
      'blocks.6.hook_resid_post',
      'blocks.6.hook_resid_post',
      'blocks.6.hook_resid_post',
      'blocks.0.hook_mlp_out',
      'blocks.0.hook_attn_out',
      undefined,
    ]);
  });
});

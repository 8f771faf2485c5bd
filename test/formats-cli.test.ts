import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/util/safetensors.js';
import { transpose } from '../src/sae/checkpoint.js';
import { writeTorchSave } from './helpers/torch-pickle.js';

// SAEs in and out through the CLI (issue 19): `sae export --format saelens | sparsify` writes
// folders those libraries load, and every command that takes --checkpoint reads them back through
// the one front door, giving the numbers of the SAE they came from.

const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const MODEL = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2-brown');
const HOOK = 'blocks.2.hook_resid_pre';
let dir: string;

function sae(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: dir, env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
function ok(r: ReturnType<typeof sae>): string {
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}
function oneLineError(r: ReturnType<typeof sae>, pattern: RegExp): void {
  expect(r.status).not.toBe(0);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(pattern);
}
const evalJson = (checkpoint: string, data: string) => JSON.parse(ok(sae('eval', '--checkpoint', checkpoint, '--data', data)));
const spliceJson = (checkpoint: string) => JSON.parse(ok(sae('splice-eval', '--checkpoint', checkpoint, '--model', MODEL, '--max-tokens', '1500', '--json')));

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-formats-cli-'));
  // per-token normalised activations (the default) and raw ones
  ok(sae('harvest', '--model', MODEL, '--hook', HOOK, '--out', 'acts', '--max-tokens', '20000'));
  ok(sae('harvest', '--model', MODEL, '--hook', HOOK, '--out', 'raw', '--max-tokens', '20000', '--preprocessing', 'none'));
  ok(sae('train', '--data', 'acts', '--out', 'topk', '--activation', 'topk', '--k', '8', '--batch-size', '512', '--steps', '150'));
  ok(sae('train', '--data', 'raw', '--out', 'topk-raw', '--activation', 'topk', '--k', '8', '--batch-size', '512', '--steps', '150'));
  ok(sae('train', '--data', 'acts', '--out', 'mc', '--activation', 'mutual', '--k', '8', '--batch-size', '512', '--steps', '150'));
}, 180_000);

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('SAELens folders', () => {
  it('a TopK SAE exports without calibration data, holding exactly what SAELens loads', async () => {
    ok(sae('export', '--checkpoint', 'topk', '--format', 'saelens', '--out', 'topk-saelens'));
    expect((await fs.readdir(path.join(dir, 'topk-saelens'))).sort()).toEqual(['cfg.json', 'sae_weights.safetensors', 'sparsity.safetensors']);
    const cfg = JSON.parse(await fs.readFile(path.join(dir, 'topk-saelens', 'cfg.json'), 'utf8'));
    expect(cfg).toMatchObject({ architecture: 'topk', k: 8, normalize_activations: 'layer_norm', d_in: 192, metadata: { hook_name: HOOK } });
  }, 60_000);

  it('eval and splice-eval read the export and measure what the run measures (up to the layer_norm eps)', () => {
    const a = evalJson('topk', 'acts');
    const b = evalJson('topk-saelens', 'acts');
    expect(b.l0).toBeCloseTo(a.l0, 6);
    expect(Math.abs(b.fvu - a.fvu) / a.fvu).toBeLessThan(1e-4);
    const sa = spliceJson('topk');
    const sb = spliceJson('topk-saelens');
    expect(Math.abs(sb.spliced[0].loss - sa.spliced[0].loss)).toBeLessThan(1e-4);
  }, 60_000);

  it('a Mutual Choice SAE becomes a SAELens JumpReLU SAE with calibrated thresholds, given --data', async () => {
    oneLineError(sae('export', '--checkpoint', 'mc', '--format', 'saelens', '--out', 'mc-saelens'), /--data/);
    ok(sae('export', '--checkpoint', 'mc', '--format', 'saelens', '--data', 'acts', '--batches', '8', '--out', 'mc-saelens'));
    const cfg = JSON.parse(await fs.readFile(path.join(dir, 'mc-saelens', 'cfg.json'), 'utf8'));
    expect(cfg.architecture).toBe('jumprelu');
    const e = evalJson('mc-saelens', 'acts');
    // the thresholds were calibrated to the batch selection's L0 (k = 8)
    expect(e.l0).toBeGreaterThan(6);
    expect(e.l0).toBeLessThan(10);
  }, 60_000);
});

describe('sparsify folders', () => {
  it('a TopK SAE on raw activations exports and reads back: eval gives the same numbers', async () => {
    ok(sae('export', '--checkpoint', 'topk-raw', '--format', 'sparsify', '--out', 'topk-sparsify'));
    expect((await fs.readdir(path.join(dir, 'topk-sparsify'))).sort()).toEqual(['cfg.json', 'sae.safetensors']);
    const a = evalJson('topk-raw', 'raw');
    const b = evalJson('topk-sparsify', 'raw');
    expect(b.l0).toBe(a.l0);
    // the same weights bit for bit (test/format-sparsify.test.ts); a foreign SAE has no training
    // batch size, so eval sums in batches of another size: equal to float64 summation order
    expect(Math.abs(b.fvu - a.fvu) / a.fvu).toBeLessThan(1e-12);
    // and spliced into the model it names, it changes the loss exactly as the run does
    expect(spliceJson('topk-sparsify').spliced[0].loss).toBeCloseTo(spliceJson('topk-raw').spliced[0].loss, 9);
  }, 60_000);

  it('refuses what sparsify cannot express, in one line, writing nothing', async () => {
    oneLineError(sae('export', '--checkpoint', 'mc', '--format', 'sparsify', '--data', 'acts', '--out', 'mc-sparsify'), /TopK/);
    oneLineError(sae('export', '--checkpoint', 'topk', '--format', 'sparsify', '--out', 'topk-norm-sparsify'), /unit norm per token/);
    for (const d of ['mc-sparsify', 'topk-norm-sparsify']) await expect(fs.stat(path.join(dir, d))).rejects.toThrow();
  }, 60_000);

  it('converts between formats: a sparsify folder exports to SAELens and measures the same', () => {
    ok(sae('export', '--checkpoint', 'topk-sparsify', '--format', 'saelens', '--out', 'sparsify-to-saelens'));
    const a = evalJson('topk-sparsify', 'raw');
    const b = evalJson('sparsify-to-saelens', 'raw');
    expect(b.l0).toBe(a.l0);
    expect(b.fvu).toBe(a.fvu);
  }, 60_000);
});

describe('dictionary_learning folders', () => {
  it('an AutoEncoderTopK trainer folder (config.json + ae.pt) evaluates as the SAE whose weights it holds', async () => {
    // our TopK run's weights under dictionary_learning's names and layouts (trainers/top_k.py)
    const w = (await readSafetensors(path.join(dir, 'topk-raw', 'final', 'sae.safetensors'))).tensors;
    const [d, F] = w.W_enc.shape;
    const f32 = (shape: number[], data: Float32Array) => ({ dtype: 'F32' as const, shape, data });
    const out = path.join(dir, 'dl', 'trainer_0');
    await fs.mkdir(out, { recursive: true });
    await writeTorchSave(path.join(out, 'ae.pt'), {
      'encoder.weight': f32([F, d], transpose(w.W_enc.data as Float32Array, d, F)),
      'encoder.bias': f32([F], w.b_enc.data as Float32Array),
      'decoder.weight': f32([d, F], transpose(w.W_dec.data as Float32Array, F, d)),
      b_dec: f32([d], w.b_dec.data as Float32Array),
      k: { dtype: 'I32', shape: [], data: Int32Array.of(8) },
      threshold: f32([], Float32Array.of(-1)),
    });
    const trainer = { dict_class: 'AutoEncoderTopK', trainer_class: 'TopKTrainer', activation_dim: d, dict_size: F, k: 8, layer: 2, lm_name: MODEL, submodule_name: 'resid_pre_layer_2' };
    await fs.writeFile(path.join(out, 'config.json'), JSON.stringify({ trainer, buffer: { d_submodule: d, io: 'out', ctx_len: 64 } }));
    const a = evalJson('topk-raw', 'raw');
    const b = evalJson(path.join('dl', 'trainer_0'), 'raw');
    expect(b.l0).toBe(a.l0);
    expect(Math.abs(b.fvu - a.fvu) / a.fvu).toBeLessThan(1e-12);
    expect(spliceJson(path.join('dl', 'trainer_0')).spliced[0].loss).toBeCloseTo(spliceJson('topk-raw').spliced[0].loss, 9);
  }, 60_000);
});

it('names what a folder holds when it is no SAE format, in one line', async () => {
  await fs.mkdir(path.join(dir, 'junk'));
  await fs.writeFile(path.join(dir, 'junk', 'cfg.json'), '{"hello": 1}');
  oneLineError(sae('eval', '--checkpoint', 'junk', '--data', 'acts'), /not an SAE in a format this reads/);
}, 60_000);
